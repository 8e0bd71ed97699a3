"""NLVR2 head: two images per sentence, interleaved rows, concatenated pooled vectors.

The reference is built independently: transformers' backbone on a batch assembled row by row
in the original order (ex0-img0, ex0-img1, ex1-img0, ...), and the original ``logit_fc``
(Linear 2H->2H, GELU, LayerNorm, Linear 2H->2) applied in torch. The weights travel through an
original-format fine-tuned checkpoint (``lxrt_encoder.model.bert.*`` + ``logit_fc.*``).
"""

import jax
import numpy as np
import pytest
import torch
import transformers

from lxmert_jax.models.config import tiny_config
from lxmert_jax.models.tasks import build_model, dummy_inputs, param_shapes
from lxmert_jax.pretrained import load_pretrained

ATOL = 1e-5
CONFIG = tiny_config()
BATCH, SEQ_LEN, NUM_BOXES = 3, 7, 5


def randomize_weights(model, seed):
  """O(1) activations (see test_model_parity.py): Linear N(0, 1/fan_in), biases N(0, 0.2^2),
  LayerNorm scale N(1, 0.2^2), embeddings N(0, 0.5^2)."""
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
      if getattr(module, "bias", None) is not None:
        normal_(module.bias, 0.0, 0.2)
  return model.eval()


def original_nlvr2_head(hidden):
  head = torch.nn.Sequential(
    torch.nn.Linear(2 * hidden, 2 * hidden),
    torch.nn.GELU(),  # exact erf GELU, as the original
    torch.nn.LayerNorm(2 * hidden, eps=1e-12),
    torch.nn.Linear(2 * hidden, 2),
  )
  return randomize_weights(head, 11)


def test_nlvr2_matches_row_by_row_reference(tmp_path):
  torch.manual_seed(7)
  backbone = transformers.LxmertModel(transformers.LxmertConfig(**CONFIG.to_hf_dict()))
  backbone = randomize_weights(backbone, 7)
  head = original_nlvr2_head(CONFIG.hidden_size)
  state = {f"lxrt_encoder.model.bert.{k}": v for k, v in backbone.state_dict().items()}
  state.update({f"logit_fc.{k}": v for k, v in head.state_dict().items()})
  torch.save(state, tmp_path / "BEST.pth")
  model = load_pretrained(tmp_path / "BEST.pth", config=CONFIG)
  assert model.task == "nlvr2"

  rng = np.random.default_rng(1)
  input_ids = rng.integers(1, CONFIG.vocab_size, (BATCH, SEQ_LEN))
  attention_mask = np.ones_like(input_ids)
  attention_mask[0, 4:] = 0
  input_ids[attention_mask == 0] = 0
  feats = rng.normal(size=(BATCH, 2, NUM_BOXES, CONFIG.visual_feat_dim)).astype(np.float32)
  boxes = rng.uniform(size=(BATCH, 2, NUM_BOXES, 4)).astype(np.float32)
  visual_mask = np.ones((BATCH, 2, NUM_BOXES), np.int64)
  visual_mask[1, 1, 2:] = 0  # only the second image of example 1 is padded
  ours = model(input_ids, feats, boxes, attention_mask, visual_attention_mask=visual_mask)

  rows = [(b, i) for b in range(BATCH) for i in range(2)]  # (ex0-img0, ex0-img1, ex1-img0, ...)
  with torch.no_grad():
    out = backbone(
      input_ids=torch.tensor(np.stack([input_ids[b] for b, _ in rows])),
      attention_mask=torch.tensor(np.stack([attention_mask[b] for b, _ in rows])),
      visual_feats=torch.tensor(np.stack([feats[b, i] for b, i in rows])),
      visual_pos=torch.tensor(np.stack([boxes[b, i] for b, i in rows])),
      visual_attention_mask=torch.tensor(np.stack([visual_mask[b, i] for b, i in rows])),
    )
    pooled = out.pooled_output
    pairs = torch.stack([torch.cat([pooled[2 * b], pooled[2 * b + 1]]) for b in range(BATCH)])
    logits = head(pairs).numpy()

  assert ours.logits.shape == (BATCH, 2)
  assert ours.pooled_output.shape == (2 * BATCH, CONFIG.hidden_size)
  assert np.abs(np.asarray(ours.pooled_output) - pooled.numpy()).max() <= ATOL
  assert np.abs(np.asarray(ours.language_output) - out.language_output.numpy()).max() <= ATOL
  assert np.abs(np.asarray(ours.logits) - logits).max() <= ATOL


def test_nlvr2_rejects_single_image_input():
  model = build_model(CONFIG, "nlvr2")
  input_ids, feats, boxes = dummy_inputs(CONFIG, "backbone")
  params = param_shapes(CONFIG, "nlvr2")
  with pytest.raises(ValueError, match=r"\[batch, 2, num_boxes, feat_dim\]"):
    jax.eval_shape(lambda p: model.apply({"params": p}, input_ids, feats, boxes), params)
