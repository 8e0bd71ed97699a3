"""Analytic matmul FLOP counts of LXMERT (for MFU and throughput reports).

Convention: a [m, k] x [k, n] matmul costs 2*m*k*n FLOPs. Every dense layer, both attention
matmuls (Q.K^T scores and probs.V context, all heads) and the tied MLM decoder are counted;
elementwise work (LayerNorm, GELU, softmax, residuals, dropout) and embedding gathers are not.
A training step counts the backward pass as 2x the forward (gradients w.r.t. activations and
weights), i.e. 3x forward in total; it slightly overcounts the first layers, whose input
gradients are never needed.
"""

from __future__ import annotations

from lxmert_jax.models.config import LxmertConfig


def _matmul(m: int, k: int, n: int) -> int:
  return 2 * m * k * n


def _attention(config: LxmertConfig, batch: int, q_len: int, kv_len: int) -> int:
  """Q/K/V projections, scores, context and the output dense of one attention sub-layer."""
  h = config.hidden_size
  return (
    _matmul(batch * q_len, h, h)  # query
    + 2 * _matmul(batch * kv_len, h, h)  # key, value
    + _matmul(batch * q_len, h, kv_len)  # scores, all heads: heads * dh = h
    + _matmul(batch * q_len, kv_len, h)  # context
    + _matmul(batch * q_len, h, h)  # attention output dense
  )


def _ffn(config: LxmertConfig, batch: int, length: int) -> int:
  h, inner = config.hidden_size, config.intermediate_size
  return _matmul(batch * length, h, inner) + _matmul(batch * length, inner, h)


def backbone_flops(
  config: LxmertConfig, seq_len: int, num_boxes: int, batch: int
) -> dict[str, int]:
  """Forward FLOPs of the backbone by part (keys: visual_embedding, language_layers,
  object_layers, cross_layers, pooler)."""
  b, length, n, h = batch, seq_len, num_boxes, config.hidden_size
  bert_layer_l = _attention(config, b, length, length) + _ffn(config, b, length)
  bert_layer_n = _attention(config, b, n, n) + _ffn(config, b, n)
  cross_layer = (
    _attention(config, b, length, n)  # language -> vision (shared module, first call)
    + _attention(config, b, n, length)  # vision -> language (same module, second call)
    + bert_layer_l  # lang_self_att + lang FFN
    + bert_layer_n  # visn_self_att + visn FFN
  )
  return {
    "visual_embedding": _matmul(b * n, config.visual_feat_dim, h)
    + _matmul(b * n, config.visual_pos_dim, h),
    "language_layers": config.l_layers * bert_layer_l,
    "object_layers": config.r_layers * bert_layer_n,
    "cross_layers": config.x_layers * cross_layer,
    "pooler": _matmul(b, h, h),
  }


def head_flops(
  config: LxmertConfig, seq_len: int, num_boxes: int, batch: int, task: str
) -> dict[str, int]:
  """Forward FLOPs of the heads of ``task`` ('backbone', 'pretraining', 'qa' or 'nlvr2')."""
  b, length, n, h = batch, seq_len, num_boxes, config.hidden_size
  answer = _matmul(b, h, 2 * h) + _matmul(b, 2 * h, config.num_qa_labels)
  if task == "backbone":
    return {}
  if task == "qa":
    return {"answer_head": answer}
  if task == "nlvr2":  # `batch` examples, each two pooled vectors wide
    return {"nlvr2_head": _matmul(b, 2 * h, 2 * h) + _matmul(b, 2 * h, 2)}
  if task == "pretraining":
    visual_out = config.num_object_labels + config.num_attr_labels + config.visual_feat_dim
    return {
      "mlm_head": _matmul(b * length, h, h) + _matmul(b * length, h, config.vocab_size),
      "matching_head": _matmul(b, h, 2),
      "object_head": _matmul(b * n, h, h) + _matmul(b * n, h, visual_out),
      "answer_head": answer,
    }
  raise ValueError(f"unknown task {task!r}")


def forward_flops(
  config: LxmertConfig, seq_len: int, num_boxes: int, batch: int, task: str = "pretraining"
) -> int:
  """Matmul FLOPs of one forward pass over ``batch`` examples (NLVR2: two images each)."""
  rows = 2 * batch if task == "nlvr2" else batch
  parts = backbone_flops(config, seq_len, num_boxes, rows)
  parts.update(head_flops(config, seq_len, num_boxes, batch, task))
  return sum(parts.values())


def train_step_flops(
  config: LxmertConfig, seq_len: int, num_boxes: int, batch: int, task: str = "pretraining"
) -> int:
  """Forward + backward (2x forward) matmul FLOPs of one training step."""
  return 3 * forward_flops(config, seq_len, num_boxes, batch, task)
