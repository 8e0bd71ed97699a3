"""Forward parity of the Flax LXMERT against transformers' PyTorch LXMERT on the same weights.

transformers models with random weights are saved with ``save_pretrained`` (or re-keyed to the
original ``module.bert.*`` names and ``torch.save``d), loaded with ``load_pretrained`` and run on
the same padded batch in eval mode. Tolerance 1e-5 (float32); measured max|diff| is <= 2.1e-6
on every hidden state, output and logit and <= 4.2e-7 on every attention map.

The weights are NOT transformers' init (N(0, 0.02), zero biases, unit LayerNorms): with it every
pre-activation is ~0.1, where tanh-GELU and erf-GELU agree to 1e-6 and a swapped bias is
invisible. ``randomize_weights`` gives O(1) activations and non-trivial biases and LayerNorm
affines, so that such mistakes exceed the tolerance by orders of magnitude.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.lxmert import modeling_lxmert

from lxmert_jax.models.config import tiny_config
from lxmert_jax.models.tasks import build_model, param_shapes
from lxmert_jax.pretrained import LxmertPretrained, load_pretrained

ATOL = 1e-5
BATCH, SEQ_LEN, NUM_BOXES = 3, 7, 5
CONFIG = tiny_config()
HF_CLASSES = {
  "backbone": transformers.LxmertModel,
  "pretraining": transformers.LxmertForPreTraining,
  "qa": transformers.LxmertForQuestionAnswering,
}


def randomize_weights(model, seed):
  """O(1) activations: Linear weights N(0, 1/fan_in), biases N(0, 0.2^2), LayerNorm scale
  N(1, 0.2^2), embeddings N(0, 0.5^2). Tied tables stay tied (same storage)."""
  gen = torch.Generator().manual_seed(seed)

  def normal_(tensor, mean, std):
    tensor.copy_(mean + std * torch.randn(tensor.shape, generator=gen))

  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Linear):
        normal_(module.weight, 0.0, module.in_features**-0.5)
      elif isinstance(module, torch.nn.LayerNorm):
        normal_(module.weight, 1.0, 0.2)
      elif isinstance(module, torch.nn.Embedding):
        normal_(module.weight, 0.0, 0.5)
      if getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
        normal_(module.bias, 0.0, 0.2)  # incl. the bare MLM bias cls.predictions.bias
  return model


def make_hf_model(task, seed):
  torch.manual_seed(seed)
  model = HF_CLASSES[task](transformers.LxmertConfig(**CONFIG.to_hf_dict())).eval()
  return randomize_weights(model, seed)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  attention_mask = np.ones((BATCH, SEQ_LEN), np.int64)
  attention_mask[1, 5:] = 0  # padded text
  attention_mask[2, 3:] = 0
  input_ids = rng.integers(1, CONFIG.vocab_size, (BATCH, SEQ_LEN))
  input_ids[attention_mask == 0] = 0
  visual_attention_mask = np.ones((BATCH, NUM_BOXES), np.int64)
  visual_attention_mask[0, 3:] = 0
  visual_attention_mask[2, 1:] = 0
  return {
    "input_ids": input_ids,
    "attention_mask": attention_mask,
    "token_type_ids": np.zeros_like(input_ids),
    "visual_feats": rng.normal(size=(BATCH, NUM_BOXES, CONFIG.visual_feat_dim)).astype(np.float32),
    "visual_pos": rng.uniform(size=(BATCH, NUM_BOXES, 4)).astype(np.float32),
    "visual_attention_mask": visual_attention_mask,
  }


@pytest.fixture(scope="module")
def hf_models():
  return {task: make_hf_model(task, seed) for seed, task in enumerate(HF_CLASSES)}


@pytest.fixture(scope="module")
def loaded(hf_models, tmp_path_factory):
  out = {}
  for task, model in hf_models.items():
    directory = tmp_path_factory.mktemp(f"hf_{task}")
    model.save_pretrained(directory)
    out[task] = load_pretrained(directory)
    assert out[task].task == task
  return out


class AttentionRecorder:
  """Makes every transformers ``LxmertAttention`` record its probabilities, in call order.

  transformers returns only the language->vision cross map; recording the primitive gives the
  reference for all maps, incl. vision->language and the x-layers' self-attention.
  """

  def __init__(self, model):
    self.names = {id(m): n for n, m in model.named_modules()}
    self.calls = []
    self._original = modeling_lxmert.LxmertAttention.forward

  def __enter__(self):
    recorder, original = self, self._original

    def forward(module, hidden_states, context, attention_mask=None, output_attentions=False):
      out = original(module, hidden_states, context, attention_mask, output_attentions=True)
      recorder.calls.append((recorder.names[id(module)], out[1].detach().numpy()))
      return out if output_attentions else out[:1]

    modeling_lxmert.LxmertAttention.forward = forward
    return self

  def __exit__(self, *exc):
    modeling_lxmert.LxmertAttention.forward = self._original

  def by_name(self):
    grouped = collections.defaultdict(list)
    for name, probs in self.calls:
      grouped[name].append(probs)
    return grouped


def run_hf(model, batch, visual_mask, record=False):
  kwargs = {k: torch.tensor(v) for k, v in batch.items() if k != "visual_attention_mask"}
  if visual_mask:
    kwargs["visual_attention_mask"] = torch.tensor(batch["visual_attention_mask"])
  with torch.no_grad(), AttentionRecorder(model) as recorder:
    out = model(**kwargs, output_hidden_states=True, output_attentions=True)
  return out, (recorder.by_name() if record else None)


def run_ours(loaded_model, batch, visual_mask):
  return loaded_model(
    batch["input_ids"],
    batch["visual_feats"],
    batch["visual_pos"],
    batch["attention_mask"],
    batch["token_type_ids"],
    batch["visual_attention_mask"] if visual_mask else None,
    output_hidden_states=True,
    output_attentions=True,
  )


def max_diff(ours, theirs):
  theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
  ours = np.asarray(ours)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  return float(np.max(np.abs(ours - theirs)))


def assert_backbone_close(ours, theirs, label=""):
  """Compares every backbone field transformers returns (incl. each hidden state and map)."""
  diffs = {}
  for field in (
    "language_hidden_states",
    "vision_hidden_states",
    "language_attentions",
    "vision_attentions",
    "cross_encoder_attentions",
  ):
    assert len(getattr(ours, field)) == len(getattr(theirs, field)), field
    for i, (a, b) in enumerate(zip(getattr(ours, field), getattr(theirs, field))):
      diffs[f"{field}[{i}]"] = max_diff(a, b)
  diffs["language_output"] = max_diff(ours.language_output, theirs.language_hidden_states[-1])
  diffs["vision_output"] = max_diff(ours.vision_output, theirs.vision_hidden_states[-1])
  bad = {k: v for k, v in diffs.items() if not v <= ATOL}
  assert not bad, f"{label}: {bad}"
  return diffs


# Each distinct (model, flags, input structure) costs one XLA compile (seconds on CPU), so the
# visual mask is exercised through the pre-training model and the None path through the others.


def test_backbone_parity(hf_models, loaded, batch):
  theirs, _ = run_hf(hf_models["backbone"], batch, visual_mask=False)
  ours = run_ours(loaded["backbone"], batch, visual_mask=False)
  assert_backbone_close(ours, theirs, "backbone")
  assert max_diff(ours.pooled_output, theirs.pooled_output) <= ATOL
  assert max_diff(ours.language_output, theirs.language_output) <= ATOL
  assert max_diff(ours.vision_output, theirs.vision_output) <= ATOL
  # transformers: l_layers + x_layers language states, r_layers + x_layers vision states.
  assert len(ours.language_hidden_states) == CONFIG.l_layers + CONFIG.x_layers
  assert len(ours.vision_hidden_states) == CONFIG.r_layers + CONFIG.x_layers


def test_every_attention_map(hf_models, loaded, batch):
  """Both cross directions of the shared cross-attention and the x-layers' self-attention."""
  _, recorded = run_hf(hf_models["pretraining"], batch, visual_mask=True, record=True)
  ours = run_ours(loaded["pretraining"], batch, visual_mask=True)
  for k in range(CONFIG.x_layers):
    prefix = f"lxmert.encoder.x_layers.{k}"
    cross = recorded[f"{prefix}.visual_attention.att"]
    assert len(cross) == 2  # one module, called for both directions
    lang_to_vision, vision_to_lang = cross
    assert max_diff(ours.cross_encoder_attentions[k], lang_to_vision) <= ATOL
    assert max_diff(ours.cross_encoder_attentions_vision_to_language[k], vision_to_lang) <= ATOL
    assert (
      max_diff(
        ours.cross_encoder_language_self_attentions[k],
        recorded[f"{prefix}.lang_self_att.self"][0],
      )
      <= ATOL
    )
    assert (
      max_diff(
        ours.cross_encoder_vision_self_attentions[k],
        recorded[f"{prefix}.visn_self_att.self"][0],
      )
      <= ATOL
    )
  assert ours.cross_encoder_attentions_vision_to_language[0].shape == (
    BATCH,
    CONFIG.num_attention_heads,
    NUM_BOXES,
    SEQ_LEN,
  )


def hf_pretraining_reference(model, batch, visual_mask):
  out, _ = run_hf(model, batch, visual_mask)
  with torch.no_grad():
    visual = model.obj_predict_head(out.vision_hidden_states[-1])
    pooled = model.lxmert.pooler(out.language_hidden_states[-1])
  return out, visual, pooled


def assert_pretraining_close(ours, theirs, visual, pooled):
  diffs = assert_backbone_close(ours, theirs, "pretraining")
  diffs.update(
    pooled_output=max_diff(ours.pooled_output, pooled),
    prediction_logits=max_diff(ours.prediction_logits, theirs.prediction_logits),
    cross_relationship_score=max_diff(
      ours.cross_relationship_score, theirs.cross_relationship_score
    ),
    question_answering_score=max_diff(
      ours.question_answering_score, theirs.question_answering_score
    ),
    obj_logits=max_diff(ours.obj_logits, visual["obj"]),
    attr_logits=max_diff(ours.attr_logits, visual["attr"]),
    feat_output=max_diff(ours.feat_output, visual["feat"]),
  )
  bad = {k: v for k, v in diffs.items() if not v <= ATOL}
  assert not bad, bad


def test_pretraining_parity_with_visual_mask(hf_models, loaded, batch):
  theirs, visual, pooled = hf_pretraining_reference(hf_models["pretraining"], batch, True)
  ours = run_ours(loaded["pretraining"], batch, True)
  assert ours.prediction_logits.shape == (BATCH, SEQ_LEN, CONFIG.vocab_size)
  assert ours.obj_logits.shape == (BATCH, NUM_BOXES, CONFIG.num_object_labels)
  assert_pretraining_close(ours, theirs, visual, pooled)


def test_question_answering_parity(hf_models, loaded, batch):
  theirs, _ = run_hf(hf_models["qa"], batch, visual_mask=False)
  ours = run_ours(loaded["qa"], batch, visual_mask=False)
  assert_backbone_close(ours, theirs, "qa")
  assert ours.question_answering_score.shape == (BATCH, CONFIG.num_qa_labels)
  assert max_diff(ours.question_answering_score, theirs.question_answering_score) <= ATOL


def original_state_dict(hf_pretraining):
  """transformers LxmertForPreTraining weights under the original code's DataParallel names."""
  state = collections.OrderedDict()
  for key, value in hf_pretraining.state_dict().items():  # incl. the tied decoder weight
    if key.startswith("lxmert."):
      key = "bert." + key[len("lxmert.") :]
    state["module." + key] = value.clone()
  return state


def test_original_pth_parity(hf_models, batch, tmp_path):
  path = tmp_path / "Epoch20_LXRT.pth"
  torch.save(original_state_dict(hf_models["pretraining"]), path)
  ours = load_pretrained(path, config=CONFIG)
  assert ours.task == "pretraining"
  assert ours.load_report.source_format == "original"
  assert (
    "module.cls.predictions.decoder.weight",
    "tied to lxmert.embeddings.word_embeddings.weight",
  ) in (ours.load_report.dropped)
  theirs, visual, pooled = hf_pretraining_reference(hf_models["pretraining"], batch, True)
  assert_pretraining_close(run_ours(ours, batch, True), theirs, visual, pooled)


def test_bfloat16_compute_close_to_float32(loaded, batch):
  """bf16 matmuls (params float32). Measured max|diff| on this batch: ~0.036 on the MLM logits (values up to ~3.3),
  ~0.03 on LayerNorm-scaled outputs; tolerance 0.1 absolute leaves a 3x margin, while a wrong
  layer gives O(1) differences."""
  fp32 = loaded["pretraining"]
  bf16 = LxmertPretrained(fp32.config, fp32.params, fp32.task, jnp.bfloat16)
  ref = run_ours(fp32, batch, True)
  out = run_ours(bf16, batch, True)
  assert out.language_output.dtype == jnp.bfloat16
  for field in (
    "language_output",
    "vision_output",
    "pooled_output",
    "prediction_logits",
    "cross_relationship_score",
    "question_answering_score",
    "obj_logits",
    "attr_logits",
    "feat_output",
  ):
    diff = max_diff(np.asarray(getattr(out, field), np.float32), np.asarray(getattr(ref, field)))
    assert diff <= 0.1, (field, diff)


def small_backbone(batch, **overrides):
  """One language layer (same LxmertLayer class as the object layers) and one cross layer."""
  config = CONFIG.replace(l_layers=1, r_layers=0, x_layers=1, **overrides)
  rng = np.random.default_rng(3)
  params = jax.tree.map(
    lambda s: rng.normal(0.0, 0.2, s.shape).astype(np.float32), param_shapes(config, "backbone")
  )
  args = (batch["input_ids"], batch["visual_feats"], batch["visual_pos"], batch["attention_mask"])
  return config, params, args


def test_remat_wraps_every_layer(batch):
  """``config.remat`` keeps the param tree and puts each layer under ``jax.checkpoint`` (the
  ``remat`` primitive); traced only, since equal gradients are JAX's guarantee and compiling two
  gradients would cost the most time of this file."""
  config, params, args = small_backbone(batch)

  def loss(params, model):
    out = model.apply(
      {"params": params}, *args, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    return jnp.sum(out.pooled_output**2)

  plain, remat = build_model(config), build_model(config.replace(remat=True))
  assert jax.tree.structure(param_shapes(config.replace(remat=True), "backbone")) == (
    jax.tree.structure(param_shapes(config, "backbone"))
  )
  jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, remat))
  assert jaxpr.count("remat") == config.l_layers + config.x_layers  # one per layer
  assert "remat" not in str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, plain))


def test_dropout_is_active_and_seeded(batch):
  config, params, args = small_backbone(batch)
  model = build_model(config)

  @jax.jit
  def pooled(params, dropout_rng):
    out = model.apply({"params": params}, *args, deterministic=False, rngs={"dropout": dropout_rng})
    return out.pooled_output

  first = pooled(params, jax.random.key(1, impl="rbg"))
  np.testing.assert_array_equal(pooled(params, jax.random.key(1, impl="rbg")), first)
  assert np.abs(pooled(params, jax.random.key(2, impl="rbg")) - first).max() > 1e-3
