"""``pretraining_losses`` vs transformers' ``LxmertForPreTraining`` loss on its own logits.

A tiny random transformers model runs in eval mode with labels; our losses are computed from
the logits it produced (converted to jnp) and compared term by term and in total. Per-task
reference values come from transformers' own loss code, run with one kind of label at a time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lxmert_jax import losses  # noqa: E402

B, L, N, F = 3, 7, 5, 11


@pytest.fixture(scope="module")
def hf_case():
  torch.manual_seed(0)
  config = transformers.LxmertConfig(
    vocab_size=99,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=37,
    l_layers=1,
    x_layers=1,
    r_layers=1,
    visual_feat_dim=F,
    num_qa_labels=13,
    num_object_labels=17,
    num_attr_labels=7,
  )
  model = transformers.LxmertForPreTraining(config).eval()
  g = torch.Generator().manual_seed(1)
  inputs = dict(
    input_ids=torch.randint(0, 99, (B, L), generator=g),
    attention_mask=torch.tensor([[1] * L, [1] * 5 + [0] * 2, [1] * 4 + [0] * 3]),
    token_type_ids=torch.zeros(B, L, dtype=torch.long),
    visual_feats=torch.randn(B, N, F, generator=g),
    visual_pos=torch.rand(B, N, 4, generator=g),
  )
  lm = torch.randint(0, 99, (B, L), generator=g)
  lm[torch.rand(B, L, generator=g) < 0.6] = -100
  lm[0, 1] = 5
  labels = dict(
    labels=lm,
    matched_label=torch.tensor([1, 0, 1]),
    obj_labels={
      "obj": (torch.randint(0, 17, (B, N), generator=g), torch.rand(B, N, generator=g)),
      "attr": (torch.randint(0, 7, (B, N), generator=g), torch.rand(B, N, generator=g)),
      "feat": (torch.randn(B, N, F, generator=g), (torch.rand(B, N, generator=g) < 0.4).float()),
    },
    ans=torch.tensor([4, -100, 12]),
  )
  labels["obj_labels"]["obj"][0][1, 2] = -100  # an ignored box label still counts in the mean

  captured = {}
  model.obj_predict_head.register_forward_hook(lambda m, i, o: captured.update(o))
  with torch.no_grad():
    out = model(**inputs, **labels)
  return model, inputs, labels, out, captured


def _to_jnp(t):
  return jnp.asarray(t.detach().numpy())


def _ours(out, captured, labels, **kwargs):
  outputs = {
    "prediction_logits": _to_jnp(out.prediction_logits),
    "cross_relationship_score": _to_jnp(out.cross_relationship_score),
    "question_answering_score": _to_jnp(out.question_answering_score),
    "obj_logits": _to_jnp(captured["obj"]),
    "attr_logits": _to_jnp(captured["attr"]),
    "feat_output": _to_jnp(captured["feat"]),
  }
  ol = labels["obj_labels"]
  targets = {
    "lm_labels": _to_jnp(labels["labels"]),
    "matched_label": _to_jnp(labels["matched_label"]),
    "obj_labels": _to_jnp(ol["obj"][0]),
    "obj_confs": _to_jnp(ol["obj"][1]),
    "attr_labels": _to_jnp(ol["attr"][0]),
    "attr_confs": _to_jnp(ol["attr"][1]),
    "feat_targets": _to_jnp(ol["feat"][0]),
    "feat_mask": _to_jnp(ol["feat"][1]),
    "ans": _to_jnp(labels["ans"]),
  }
  fn = jax.jit(lambda o, t: losses.pretraining_losses(o, t, **kwargs))
  return fn(outputs, targets)


def _hf_task_losses(model, inputs, labels):
  """transformers' own loss, one task at a time (its visual-loss dict narrowed to one key)."""
  full_visual = dict(model.visual_losses)
  per = {}
  with torch.no_grad():
    per["mlm"] = model(**inputs, labels=labels["labels"]).loss
    per["matched"] = model(**inputs, matched_label=labels["matched_label"]).loss
    per["qa"] = model(**inputs, ans=labels["ans"]).loss
    try:
      for key in ("obj", "attr", "feat"):
        model.visual_losses = {key: full_visual[key]}
        per[key] = model(**inputs, obj_labels=labels["obj_labels"]).loss
    finally:
      model.visual_losses = full_visual
  return {k: float(v) for k, v in per.items()}


def test_transformers_semantics_reproduce_transformers_loss(hf_case):
  model, inputs, labels, out, captured = hf_case
  total, per = _ours(out, captured, labels, semantics="transformers")
  hf_per = _hf_task_losses(model, inputs, labels)
  diffs = {k: abs(float(losses.safe_mean(*per[k])) - hf_per[k]) for k in hf_per}
  diffs["total"] = abs(float(total) - float(out.loss))
  assert max(diffs.values()) <= 1e-5, diffs
  # The per-task references add up to transformers' total.
  np.testing.assert_allclose(sum(hf_per.values()), float(out.loss), rtol=1e-6)


def test_original_semantics_equal_transformers_with_original_constants(hf_case):
  """Original = transformers with ignore index -1 and normaliser 1/0.15 (G8, G9)."""
  model, inputs, labels, out, captured = hf_case
  model.visual_loss_normalizer = 1 / 0.15
  try:
    with torch.no_grad():
      hf_total = float(model(**inputs, **labels).loss)
  finally:
    model.visual_loss_normalizer = model.config.visual_loss_normalizer

  def to_minus1(t):
    return torch.where(t == -100, torch.full_like(t, -1), t)

  ol = labels["obj_labels"]
  original_labels = dict(
    labels=to_minus1(labels["labels"]),
    matched_label=labels["matched_label"],
    obj_labels={
      "obj": (to_minus1(ol["obj"][0]), ol["obj"][1]),
      "attr": (to_minus1(ol["attr"][0]), ol["attr"][1]),
      "feat": ol["feat"],
    },
    ans=to_minus1(labels["ans"]),
  )
  total, _ = _ours(out, captured, original_labels, semantics="original")
  assert abs(float(total) - hf_total) <= 1e-5
  # And the transformers default 6.67 differs measurably from 1/0.15.
  total_hf_semantics, _ = _ours(out, captured, labels, semantics="transformers")
  assert abs(float(total_hf_semantics) - hf_total) > 1e-4


def test_whole_chain_through_our_model(hf_case, tmp_path):
  """Our corruption -> our Flax model (loaded from transformers' weights) -> our losses equals
  transformers' loss on the same corrupted batch and labels."""
  from lxmert_jax.corruption import corrupt_pretraining_batch
  from lxmert_jax.pretrained import load_pretrained

  model, inputs, _, _, _ = hf_case
  model.save_pretrained(tmp_path)
  ours = load_pretrained(tmp_path)
  batch = {k: jnp.asarray(v.numpy()) for k, v in inputs.items()}
  batch["input_ids"] = batch["input_ids"].at[:, 0].set(1)  # [CLS] = 1, [SEP] = 2 here
  batch["image_index"] = jnp.arange(B, dtype=jnp.int32)
  batch["answer_ids"] = jnp.array([[3, 5], [-1, -1], [12, -1]])
  batch["answer_scores"] = jnp.array([[0.6, 0.3], [0.0, 0.0], [1.0, 0.0]])
  g = np.random.default_rng(0)
  batch.update(
    obj_labels=jnp.asarray(g.integers(0, 17, (B, N))),
    obj_confs=jnp.asarray(g.random((B, N)), jnp.float32),
    attr_labels=jnp.asarray(g.integers(0, 7, (B, N))),
    attr_confs=jnp.asarray(g.random((B, N)), jnp.float32),
  )
  corrupt = jax.jit(
    lambda rng, b: corrupt_pretraining_batch(
      rng,
      b,
      vocab_size=99,
      mask_token_id=4,
      special_token_ids=(0, 1, 2),
      word_mask_rate=0.5,
      obj_mask_rate=0.5,
      ignore_index=-100,
    )
  )
  corrupted = corrupt(jax.random.PRNGKey(5), batch)
  corrupted["lm_labels"] = corrupted["lm_labels"].at[0, 1].set(7)  # >= 1 MLM label
  outputs = ours(
    *(corrupted[k] for k in ("input_ids", "visual_feats", "visual_pos")),
    corrupted["attention_mask"],
    corrupted["token_type_ids"],
  )
  total, per = jax.jit(lambda o, c: losses.pretraining_losses(o, c, semantics="transformers"))(
    outputs, corrupted
  )

  t = lambda k, dtype=None: torch.from_numpy(np.array(corrupted[k], dtype=dtype))  # noqa: E731
  with torch.no_grad():
    hf = model(
      input_ids=t("input_ids", np.int64),
      visual_feats=t("visual_feats", np.float32),
      visual_pos=t("visual_pos", np.float32),
      attention_mask=t("attention_mask", np.int64),
      token_type_ids=t("token_type_ids", np.int64),
      labels=t("lm_labels", np.int64),
      matched_label=t("matched_label", np.int64),
      obj_labels={
        "obj": (t("obj_labels", np.int64), t("obj_confs", np.float32)),
        "attr": (t("attr_labels", np.int64), t("attr_confs", np.float32)),
        "feat": (t("feat_targets", np.float32), t("feat_mask", np.float32)),
      },
      ans=t("ans", np.int64),
    )
  diff = abs(float(total) - float(hf.loss))
  assert diff <= 1e-5 * max(1.0, float(hf.loss)), (float(total), float(hf.loss))
  assert set(per) == set(losses.LOSS_NAMES)
