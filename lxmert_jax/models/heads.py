"""Task heads: MLM (tied decoder), image-text matching, object labels/features, answers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.models.config import LxmertConfig
from lxmert_jax.models.layers import Dtype, dense, gelu, layer_norm

Array = jax.Array


class LxmertPredictionHeadTransform(nn.Module):
  """dense H->H, exact GELU, LN (``BertPredictionHeadTransform``); no dropout."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array) -> Array:
    """[..., hidden] -> [..., hidden]."""
    cfg = self.config
    hidden_states = gelu(dense(cfg.hidden_size, cfg, self.dtype, "dense")(hidden_states))
    return layer_norm(cfg, self.dtype)(hidden_states)


class LxmertLMPredictionHead(nn.Module):
  """MLM head (``cls/predictions``): transform, then logits = t . E^T + bias.

  E is the word-embedding table, passed in (tied, as in the original and transformers) rather
  than copied into a decoder kernel; only the bias [vocab] is a parameter of this module.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array, word_embeddings: Array) -> Array:
    """Language stream [batch, seq_len, hidden], table [vocab, hidden] -> [batch, seq_len, vocab]."""
    cfg = self.config
    hidden_states = LxmertPredictionHeadTransform(cfg, self.dtype, name="transform")(hidden_states)
    bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), jnp.float32)
    # Same contraction as nn.Embed.attend.
    logits = jnp.dot(hidden_states, jnp.asarray(word_embeddings, self.dtype).T)
    return logits + jnp.asarray(bias, self.dtype)


class LxmertPreTrainingHeads(nn.Module):
  """``cls``: ``predictions`` (MLM) and ``seq_relationship`` (matching, 2 logits)."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, sequence_output: Array, pooled_output: Array, word_embeddings: Array
  ) -> tuple[Array, Array]:
    """Returns MLM logits [batch, seq_len, vocab] and matching logits [batch, 2]."""
    prediction_scores = LxmertLMPredictionHead(self.config, self.dtype, name="predictions")(
      sequence_output, word_embeddings
    )
    seq_relationship = dense(2, self.config, self.dtype, "seq_relationship")(pooled_output)
    return prediction_scores, seq_relationship


class LxmertVisualObjDecoders(nn.Module):
  """``decoder_dict``: one dense layer per visual target (``obj``, ``attr``, ``feat``)."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array) -> dict[str, Array]:
    cfg = self.config
    return {
      "obj": dense(cfg.num_object_labels, cfg, self.dtype, "obj")(hidden_states),
      "attr": dense(cfg.num_attr_labels, cfg, self.dtype, "attr")(hidden_states),
      "feat": dense(cfg.visual_feat_dim, cfg, self.dtype, "feat")(hidden_states),
    }


class LxmertVisualObjHead(nn.Module):
  """``obj_predict_head``: shared transform, then the three decoders (``BertVisualObjHead``).

  All three targets always exist, as in the original code (transformers can switch some off).
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, vision_output: Array) -> dict[str, Array]:
    """[batch, num_boxes, hidden] -> {'obj': [B, N, num_object_labels],
    'attr': [B, N, num_attr_labels], 'feat': [B, N, visual_feat_dim]}."""
    hidden_states = LxmertPredictionHeadTransform(self.config, self.dtype, name="transform")(
      vision_output
    )
    return LxmertVisualObjDecoders(self.config, self.dtype, name="decoder_dict")(hidden_states)


class LxmertAnswerLogitFC(nn.Module):
  """``logit_fc``: the ``nn.Sequential`` (0: dense ->2H, 1: GELU, 2: LN, 3: dense ->labels).

  Submodule names are the Sequential indices so the tree matches the checkpoints' keys.
  """

  config: LxmertConfig
  num_labels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array) -> Array:
    cfg = self.config
    hidden_states = gelu(dense(2 * cfg.hidden_size, cfg, self.dtype, "0")(hidden_states))
    hidden_states = layer_norm(cfg, self.dtype, "2")(hidden_states)
    return dense(self.num_labels, cfg, self.dtype, "3")(hidden_states)


class LxmertVisualAnswerHead(nn.Module):
  """``answer_head`` (``BertVisualAnswerHead``): logit_fc on the pooled vector.

  The input width is taken from the input: H for QA heads, 2H for the NLVR2 head (which reads
  two concatenated pooled vectors, spec 3.2); the inner width is 2H in both cases.
  """

  config: LxmertConfig
  num_labels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled_output: Array) -> Array:
    """[batch, hidden or 2*hidden] -> [batch, num_labels]."""
    return LxmertAnswerLogitFC(self.config, self.num_labels, self.dtype, name="logit_fc")(
      pooled_output
    )
