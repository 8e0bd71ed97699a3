"""Transformer building blocks shared by LXMERT's three encoders (BERT names and semantics).

Every block is post-LN BERT as in the original code (airsplay/lxmert ``src/lxrt/modeling.py``)
and transformers' ``modeling_lxmert.py``; module and parameter names mirror transformers so that
weight conversion is a short rename table (``lxmert_jax/convert/param_map.py``).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.models.config import LxmertConfig

Array = jax.Array
Dtype = jnp.dtype

# Additive bias for masked keys. transformers uses finfo(dtype).min (the original code -10000);
# both give exp(.) == 0 in float32. We add it in float32 (scores are upcast before the mask and
# softmax), so finfo(float32).min never overflows even when the matmuls run in bfloat16, and a
# fully masked row still softmaxes to a uniform distribution instead of NaN.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def normal_init(config: LxmertConfig):
  """Plain (not truncated) N(0, initializer_range) as in ``init_bert_weights``."""
  return nn.initializers.normal(stddev=config.initializer_range)


def dense(features: int, config: LxmertConfig, dtype: Dtype, name: str) -> nn.Dense:
  """A ``torch.nn.Linear`` equivalent: kernel N(0, 0.02), bias 0, float32 params."""
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=normal_init(config),
    bias_init=nn.initializers.zeros,
    name=name,
  )


def layer_norm(config: LxmertConfig, dtype: Dtype, name: str = "LayerNorm") -> nn.LayerNorm:
  """``torch.nn.LayerNorm(eps=1e-12)``.

  Two-pass variance (``use_fast_variance=False``): E[(x - E[x])^2] like PyTorch, instead of
  E[x^2] - E[x]^2, whose cancellation error would otherwise dominate the parity budget. Statistics
  are computed in float32 whatever ``dtype`` is.
  """
  return nn.LayerNorm(
    epsilon=config.layer_norm_eps,
    use_fast_variance=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def gelu(x: Array) -> Array:
  """Exact erf GELU (spec G1); Flax's default tanh approximation differs by ~1e-3."""
  return nn.gelu(x, approximate=False)


def make_attention_bias(mask: Array | None) -> Array | None:
  """[batch, keys] 1/0 mask -> additive float32 bias [batch, 1, 1, keys] (None stays None)."""
  if mask is None:
    return None
  mask = jnp.asarray(mask, jnp.float32)
  return ((1.0 - mask) * MASK_VALUE)[:, None, None, :]


class LxmertAttention(nn.Module):
  """Multi-head attention primitive without output projection (``BertAttention``).

  Scores are divided by sqrt(head_dim) after the Q.K^T matmul (as the original, spec G6), the
  additive mask is applied, softmax runs in float32, and dropout acts on the probabilities.
  Written with explicit einsums rather than ``jax.nn.dot_product_attention`` because the latter
  cannot return the attention probabilities that ``output_attentions`` needs.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    hidden_states: Array,
    context: Array,
    attention_bias: Array | None,
    deterministic: bool = True,
  ) -> tuple[Array, Array]:
    """Attends from ``hidden_states`` to ``context``.

    Args:
      hidden_states: queries [batch, q_len, hidden].
      context: keys and values [batch, kv_len, hidden].
      attention_bias: additive float32 bias [batch, 1, 1, kv_len] or None.
      deterministic: disables dropout on the attention probabilities.

    Returns:
      context_layer [batch, q_len, hidden] (head h in channels h*dh..(h+1)*dh-1) and
      attention_probs [batch, heads, q_len, kv_len] (after dropout, like transformers).
    """
    cfg = self.config
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim

    def split_heads(x):  # [B, T, H] -> [B, T, heads, dh]; channel c -> head c // dh
      return x.reshape(x.shape[:-1] + (heads, head_dim))

    query = split_heads(dense(cfg.hidden_size, cfg, self.dtype, "query")(hidden_states))
    key = split_heads(dense(cfg.hidden_size, cfg, self.dtype, "key")(context))
    value = split_heads(dense(cfg.hidden_size, cfg, self.dtype, "value")(context))

    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)
    scores = scores.astype(jnp.float32)
    if attention_bias is not None:
      scores = scores + attention_bias
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)

    context_layer = jnp.einsum("bhqk,bkhd->bqhd", probs, value)
    context_layer = context_layer.reshape(context_layer.shape[:-2] + (cfg.hidden_size,))
    return context_layer, probs


class LxmertAttentionOutput(nn.Module):
  """Output projection, dropout, residual, post-LN (``BertAttOutput``)."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array, input_tensor: Array, deterministic: bool = True):
    """[batch, len, hidden] x2 -> [batch, len, hidden]."""
    cfg = self.config
    hidden_states = dense(cfg.hidden_size, cfg, self.dtype, "dense")(hidden_states)
    hidden_states = nn.Dropout(cfg.hidden_dropout_prob)(hidden_states, deterministic=deterministic)
    return layer_norm(cfg, self.dtype)(hidden_states + input_tensor)


class LxmertSelfAttentionLayer(nn.Module):
  """Self-attention sub-layer (``BertSelfattLayer``): submodules ``self`` and ``output``."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array, attention_bias: Array | None, deterministic=True):
    """[batch, len, hidden] -> ([batch, len, hidden], probs [batch, heads, len, len])."""
    context, probs = LxmertAttention(self.config, self.dtype, name="self")(
      hidden_states, hidden_states, attention_bias, deterministic
    )
    output = LxmertAttentionOutput(self.config, self.dtype, name="output")(
      context, hidden_states, deterministic
    )
    return output, probs


class LxmertCrossAttentionLayer(nn.Module):
  """Cross-attention sub-layer (``BertCrossattLayer``): submodules ``att`` and ``output``.

  The residual is the query stream.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    hidden_states: Array,
    context: Array,
    context_bias: Array | None,
    deterministic: bool = True,
  ) -> tuple[Array, Array]:
    """Queries [batch, q_len, hidden], context [batch, kv_len, hidden].

    Returns:
      [batch, q_len, hidden] and probs [batch, heads, q_len, kv_len].
    """
    attended, probs = LxmertAttention(self.config, self.dtype, name="att")(
      hidden_states, context, context_bias, deterministic
    )
    output = LxmertAttentionOutput(self.config, self.dtype, name="output")(
      attended, hidden_states, deterministic
    )
    return output, probs


class LxmertIntermediate(nn.Module):
  """FFN first half (``BertIntermediate``): dense H->I then exact GELU; no dropout here."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array) -> Array:
    """[batch, len, hidden] -> [batch, len, intermediate]."""
    cfg = self.config
    return gelu(dense(cfg.intermediate_size, cfg, self.dtype, "dense")(hidden_states))


class LxmertOutput(nn.Module):
  """FFN second half (``BertOutput``): dense I->H, dropout, residual, post-LN."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array, input_tensor: Array, deterministic: bool = True):
    """[batch, len, intermediate], residual [batch, len, hidden] -> [batch, len, hidden]."""
    cfg = self.config
    hidden_states = dense(cfg.hidden_size, cfg, self.dtype, "dense")(hidden_states)
    hidden_states = nn.Dropout(cfg.hidden_dropout_prob)(hidden_states, deterministic=deterministic)
    return layer_norm(cfg, self.dtype)(hidden_states + input_tensor)


class LxmertLayer(nn.Module):
  """``BertLayer``: self-attention sub-layer then FFN.

  Used for the language layers (``encoder/layer_i``) and the object-relationship layers
  (``encoder/r_layers_i``); the two stacks have separate weights.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    hidden_states: Array,
    attention_bias: Array | None,
    deterministic: bool = True,
    output_attentions: bool = False,
  ) -> tuple[Array, Array | None]:
    """[batch, len, hidden] -> ([batch, len, hidden], probs [batch, heads, len, len] or None).

    Arguments are positional-friendly so that ``nn.remat`` can mark the two flags static.
    """
    attention_output, probs = LxmertSelfAttentionLayer(self.config, self.dtype, name="attention")(
      hidden_states, attention_bias, deterministic
    )
    intermediate = LxmertIntermediate(self.config, self.dtype, name="intermediate")(
      attention_output
    )
    layer_output = LxmertOutput(self.config, self.dtype, name="output")(
      intermediate, attention_output, deterministic
    )
    return layer_output, (probs if output_attentions else None)


class LxmertPooler(nn.Module):
  """pooled = tanh(dense(h[:, 0])): the [CLS] position of the final language stream."""

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden_states: Array) -> Array:
    """[batch, len, hidden] -> [batch, hidden]."""
    cfg = self.config
    return jnp.tanh(dense(cfg.hidden_size, cfg, self.dtype, "dense")(hidden_states[:, 0]))
