"""Cross-modality layer (``LXRTXLayer``, spec 1.7): bi-directional cross-attention, then
per-modality self-attention and FFN."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.models.config import LxmertConfig
from lxmert_jax.models.layers import (
  Dtype,
  LxmertCrossAttentionLayer,
  LxmertIntermediate,
  LxmertOutput,
  LxmertSelfAttentionLayer,
)

Array = jax.Array


class LxmertXLayer(nn.Module):
  """One cross-modality layer.

  Order (original code; the author found cross->self more stable than self->cross):
    1. cross-attention in both directions, both computed from the layer's *input* streams;
    2. self-attention per modality (``lang_self_att``, ``visn_self_att``);
    3. FFN per modality (``lang_inter``/``lang_output``, ``visn_inter``/``visn_output``).

  Both cross directions use ONE module, ``visual_attention`` (same Q/K/V, output dense and LN):
  the original author deleted the separate ``lang_attention`` because sharing was ~0.5% better,
  and kept the now misleading name. It is created once here and called twice.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    lang_feats: Array,
    lang_bias: Array | None,
    visual_feats: Array,
    visual_bias: Array | None,
    deterministic: bool = True,
    output_attentions: bool = False,
  ) -> tuple[Array, Array, dict[str, Array] | None]:
    """Runs one layer.

    Args:
      lang_feats: [batch, seq_len, hidden].
      lang_bias: additive language mask [batch, 1, 1, seq_len] or None.
      visual_feats: [batch, num_boxes, hidden].
      visual_bias: additive object mask [batch, 1, 1, num_boxes] or None.
      deterministic: disables dropout.
      output_attentions: also return the four attention maps.

    Returns:
      (lang_output [batch, seq_len, hidden], visual_output [batch, num_boxes, hidden], attentions)
      where attentions is None or a dict with ``lang_to_vision`` [batch, heads, seq_len, num_boxes],
      ``vision_to_lang`` [batch, heads, num_boxes, seq_len], ``lang_self`` and ``visn_self``.
    """
    cfg, dtype = self.config, self.dtype
    visual_attention = LxmertCrossAttentionLayer(cfg, dtype, name="visual_attention")
    # Both directions read the pre-update streams (lang_feats, visual_feats).
    lang_att, lang_to_vision = visual_attention(
      lang_feats, visual_feats, visual_bias, deterministic
    )
    visn_att, vision_to_lang = visual_attention(visual_feats, lang_feats, lang_bias, deterministic)

    lang_att, lang_self = LxmertSelfAttentionLayer(cfg, dtype, name="lang_self_att")(
      lang_att, lang_bias, deterministic
    )
    visn_att, visn_self = LxmertSelfAttentionLayer(cfg, dtype, name="visn_self_att")(
      visn_att, visual_bias, deterministic
    )

    lang_inter = LxmertIntermediate(cfg, dtype, name="lang_inter")(lang_att)
    visn_inter = LxmertIntermediate(cfg, dtype, name="visn_inter")(visn_att)
    lang_output = LxmertOutput(cfg, dtype, name="lang_output")(lang_inter, lang_att, deterministic)
    visn_output = LxmertOutput(cfg, dtype, name="visn_output")(visn_inter, visn_att, deterministic)

    attentions = None
    if output_attentions:
      attentions = {
        "lang_to_vision": lang_to_vision,
        "vision_to_lang": vision_to_lang,
        "lang_self": lang_self,
        "visn_self": visn_self,
      }
    return lang_output, visn_output, attentions
