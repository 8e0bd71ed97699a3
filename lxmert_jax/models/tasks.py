"""Full task models: pre-training (all heads), question answering (VQA/GQA), NLVR2."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.models.config import LxmertConfig
from lxmert_jax.models.heads import (
  LxmertPreTrainingHeads,
  LxmertVisualAnswerHead,
  LxmertVisualObjHead,
)
from lxmert_jax.models.layers import Dtype
from lxmert_jax.models.lxmert import LxmertModel
from lxmert_jax.models.outputs import (
  LxmertForNLVR2Output,
  LxmertForPreTrainingOutput,
  LxmertForQuestionAnsweringOutput,
  LxmertModelOutput,
)

Array = jax.Array


def _backbone_fields(output: LxmertModelOutput) -> dict:
  return {name: getattr(output, name) for name in LxmertModelOutput.__dataclass_fields__}


class LxmertForPreTraining(nn.Module):
  """Backbone ``lxmert`` plus ``cls`` (MLM + matching), ``obj_predict_head`` and ``answer_head``.

  The MLM decoder is tied to ``lxmert/embeddings/word_embeddings/embedding``. Its logits are
  computed at every position unless ``mlm_positions`` names the few that have a label (training
  needs no others; the decoder is ~8% of a base-size train step at every position).
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    self.lxmert = LxmertModel(self.config, self.dtype)
    self.cls = LxmertPreTrainingHeads(self.config, self.dtype)
    self.obj_predict_head = LxmertVisualObjHead(self.config, self.dtype)
    self.answer_head = LxmertVisualAnswerHead(self.config, self.config.num_qa_labels, self.dtype)

  def __call__(
    self,
    input_ids: Array,
    visual_feats: Array,
    visual_pos: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    visual_attention_mask: Array | None = None,
    *,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    mlm_positions: Array | None = None,
  ) -> LxmertForPreTrainingOutput:
    """Same inputs as ``LxmertModel.__call__``; returns backbone fields plus every head output.

    Args:
      mlm_positions: optional [K] int32 flat indices into the ``batch * seq_len`` language
        positions; ``prediction_logits`` is then [K, vocab] (the decoder runs only there)
        instead of [batch, seq_len, vocab]. None: every position.
    """
    out = self.lxmert(
      input_ids,
      visual_feats,
      visual_pos,
      attention_mask,
      token_type_ids,
      visual_attention_mask,
      deterministic=deterministic,
      output_hidden_states=output_hidden_states,
      output_attentions=output_attentions,
    )
    prediction_logits, cross_relationship_score = self.pretraining_heads(
      out.language_output, out.pooled_output, mlm_positions
    )
    visual = self.obj_predict_head(out.vision_output)
    return LxmertForPreTrainingOutput(
      **_backbone_fields(out),
      prediction_logits=prediction_logits,
      cross_relationship_score=cross_relationship_score,
      question_answering_score=self.answer_head(out.pooled_output),
      obj_logits=visual["obj"],
      attr_logits=visual["attr"],
      feat_output=visual["feat"],
    )

  def pretraining_heads(
    self, language_output: Array, pooled_output: Array, mlm_positions: Array | None = None
  ) -> tuple[Array, Array]:
    """``cls`` on backbone outputs: MLM and matching logits.

    Also callable on its own (``model.apply(variables, language_output, pooled_output,
    method='pretraining_heads')``), e.g. to decode every position after a forward pass that
    decoded only some.

    Args:
      language_output: [batch, seq_len, hidden].
      pooled_output: [batch, hidden].
      mlm_positions: optional [K] flat indices into ``batch * seq_len``.

    Returns:
      ``(prediction_logits, cross_relationship_score)``: [batch, seq_len, vocab] (or [K, vocab]
      with ``mlm_positions``) and [batch, 2].
    """
    if mlm_positions is not None:
      language_output = language_output.reshape(-1, language_output.shape[-1])[mlm_positions]
    word_embeddings = self.lxmert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    return self.cls(language_output, pooled_output, word_embeddings)


class LxmertForQuestionAnswering(nn.Module):
  """Backbone ``lxmert`` plus ``answer_head`` with ``config.num_qa_labels`` outputs
  (9500 pre-training, 3129 VQA, 1842 GQA)."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    self.lxmert = LxmertModel(self.config, self.dtype)
    self.answer_head = LxmertVisualAnswerHead(self.config, self.config.num_qa_labels, self.dtype)

  def __call__(
    self,
    input_ids: Array,
    visual_feats: Array,
    visual_pos: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    visual_attention_mask: Array | None = None,
    *,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> LxmertForQuestionAnsweringOutput:
    """Same inputs as ``LxmertModel.__call__``; adds ``question_answering_score`` [B, Q]."""
    out = self.lxmert(
      input_ids,
      visual_feats,
      visual_pos,
      attention_mask,
      token_type_ids,
      visual_attention_mask,
      deterministic=deterministic,
      output_hidden_states=output_hidden_states,
      output_attentions=output_attentions,
    )
    return LxmertForQuestionAnsweringOutput(
      **_backbone_fields(out), question_answering_score=self.answer_head(out.pooled_output)
    )


class LxmertForNLVR2(nn.Module):
  """NLVR2 model (original ``NLVR2Model``): one sentence, two images, 2-way classifier.

  Each example becomes two backbone rows (img0, img1) with the same sentence; the two pooled
  vectors are concatenated (img0 first) and fed to ``answer_head/logit_fc`` (2H -> 2H, GELU, LN,
  2H -> 2). The original stores that head as top-level ``logit_fc``; the paper's sigmoid/BCE is
  not what the code does (it is a 2-way softmax, spec G11).
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    self.lxmert = LxmertModel(self.config, self.dtype)
    self.answer_head = LxmertVisualAnswerHead(self.config, 2, self.dtype)

  def __call__(
    self,
    input_ids: Array,
    visual_feats: Array,
    visual_pos: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    visual_attention_mask: Array | None = None,
    *,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> LxmertForNLVR2Output:
    """Classifies sentence-image-pair examples.

    Args:
      input_ids: [batch, seq_len].
      visual_feats: [batch, 2, num_boxes, visual_feat_dim].
      visual_pos: [batch, 2, num_boxes, 4].
      attention_mask: [batch, seq_len] or None.
      token_type_ids: [batch, seq_len] or None.
      visual_attention_mask: [batch, 2, num_boxes] or None.
      deterministic, output_hidden_states, output_attentions: as ``LxmertModel``.

    Returns:
      ``LxmertForNLVR2Output``; ``logits`` [batch, 2] (index 1 = "true"), backbone fields over
      the 2*batch interleaved rows.
    """
    if visual_feats.ndim != 4 or visual_feats.shape[1] != 2:
      raise ValueError(
        f"NLVR2 visual_feats must be [batch, 2, num_boxes, feat_dim]; got {visual_feats.shape}"
      )
    batch = input_ids.shape[0]

    def pair_rows(x):  # [B, 2, ...] -> [2B, ...] as (ex0-img0, ex0-img1, ex1-img0, ...)
      return None if x is None else jnp.reshape(x, (2 * batch,) + x.shape[2:])

    def repeat_sentence(x):  # [B, L] -> [2B, L] in the same interleaved order
      return None if x is None else jnp.repeat(x, 2, axis=0)

    out = self.lxmert(
      repeat_sentence(input_ids),
      pair_rows(visual_feats),
      pair_rows(visual_pos),
      repeat_sentence(attention_mask),
      repeat_sentence(token_type_ids),
      pair_rows(visual_attention_mask),
      deterministic=deterministic,
      output_hidden_states=output_hidden_states,
      output_attentions=output_attentions,
    )
    pooled_pairs = out.pooled_output.reshape(batch, 2 * self.config.hidden_size)
    return LxmertForNLVR2Output(**_backbone_fields(out), logits=self.answer_head(pooled_pairs))


TASK_MODELS = {
  "backbone": LxmertModel,
  "pretraining": LxmertForPreTraining,
  "qa": LxmertForQuestionAnswering,
  "nlvr2": LxmertForNLVR2,
}


def build_model(config: LxmertConfig, task: str = "backbone", dtype: Dtype = jnp.float32):
  """The Linen module for ``task`` in {'backbone', 'pretraining', 'qa', 'nlvr2'}."""
  if task not in TASK_MODELS:
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_MODELS)}")
  return TASK_MODELS[task](config, dtype)


def dummy_inputs(
  config: LxmertConfig, task: str = "backbone", seq_len: int = 4, num_boxes: int = 3
):
  """Minimal (input_ids, visual_feats, visual_pos) for ``init`` / ``jax.eval_shape``."""
  images = (1, 2) if task == "nlvr2" else (1,)
  return (
    jnp.zeros((1, seq_len), jnp.int32),
    jnp.zeros(images + (num_boxes, config.visual_feat_dim), jnp.float32),
    jnp.zeros(images + (num_boxes, config.visual_pos_dim), jnp.float32),
  )


def init_params(config: LxmertConfig, task: str, rng: jax.Array) -> dict:
  """Fresh float32 params for ``task`` (N(0, 0.02) weights, zero biases, unit LN scales)."""
  return build_model(config, task).init(rng, *dummy_inputs(config, task))["params"]


@functools.lru_cache(maxsize=32)
def param_shapes(config: LxmertConfig, task: str) -> dict:
  """The param tree of ``task`` as ``jax.ShapeDtypeStruct`` leaves, without allocating.

  Cached (tracing the model takes a moment); treat the returned tree as read-only.
  """
  return jax.eval_shape(lambda: init_params(config, task, jax.random.key(0)))
