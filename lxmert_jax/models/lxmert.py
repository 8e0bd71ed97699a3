"""LXMERT backbone: embeddings, the three encoders (language, object, cross-modality), pooler."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.models.config import LxmertConfig
from lxmert_jax.models.cross_encoder import LxmertXLayer
from lxmert_jax.models.embeddings import LxmertEmbeddings, LxmertVisualFeatureEncoder
from lxmert_jax.models.layers import Dtype, LxmertLayer, LxmertPooler, make_attention_bias
from lxmert_jax.models.outputs import LxmertModelOutput

Array = jax.Array


# Rematerialisation (config.remat) trades one extra forward per layer in the backward pass for
# not storing the layer's activations. static_argnums count ``self`` as 0 and mark the
# (deterministic, output_attentions) flags, which steer Python control flow.
_RematLxmertLayer = nn.remat(LxmertLayer, static_argnums=(3, 4))
_RematLxmertXLayer = nn.remat(LxmertXLayer, static_argnums=(5, 6))


class LxmertEncoder(nn.Module):
  """``LXRTEncoder``: visual embedding, then language (``layer_i``), object-relationship
  (``r_layers_i``) and cross-modality (``x_layers_i``) stacks.

  The language and object stacks are independent single-modality BERT stacks; only the x-layers
  mix the streams. Names stay flat (``encoder/layer_0``, not nested per stack) to mirror the
  original and transformers checkpoints.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    lang_feats: Array,
    lang_bias: Array | None,
    visual_feats: Array,
    visual_pos: Array,
    visual_bias: Array | None,
    deterministic: bool = True,
    output_attentions: bool = False,
  ) -> dict:
    """Runs the three encoders.

    Args:
      lang_feats: embedded text [batch, seq_len, hidden].
      lang_bias: additive text mask [batch, 1, 1, seq_len] or None.
      visual_feats: RoI features [batch, num_boxes, visual_feat_dim].
      visual_pos: boxes [batch, num_boxes, 4].
      visual_bias: additive object mask [batch, 1, 1, num_boxes] or None.
      deterministic: disables dropout.
      output_attentions: collect attention maps.

    Returns:
      dict with ``lang``/``visn`` final streams, ``lang_states``/``visn_states`` tuples (transformers
      order) and, if requested, attention tuples.
    """
    cfg, dtype = self.config, self.dtype
    bert_layer = _RematLxmertLayer if cfg.remat else LxmertLayer
    x_layer = _RematLxmertXLayer if cfg.remat else LxmertXLayer

    visn = LxmertVisualFeatureEncoder(cfg, dtype, name="visn_fc")(
      visual_feats, visual_pos, deterministic
    )
    lang = lang_feats
    lang_states, visn_states = [], []
    attn = {k: [] for k in ("lang", "visn", "lang_to_vision", "vision_to_lang", "xl", "xv")}

    for i in range(cfg.l_layers):
      lang, probs = bert_layer(cfg, dtype, name=f"layer_{i}")(
        lang, lang_bias, deterministic, output_attentions
      )
      lang_states.append(lang)
      attn["lang"].append(probs)
    for i in range(cfg.r_layers):
      visn, probs = bert_layer(cfg, dtype, name=f"r_layers_{i}")(
        visn, visual_bias, deterministic, output_attentions
      )
      visn_states.append(visn)
      attn["visn"].append(probs)
    for i in range(cfg.x_layers):
      lang, visn, x_attn = x_layer(cfg, dtype, name=f"x_layers_{i}")(
        lang, lang_bias, visn, visual_bias, deterministic, output_attentions
      )
      lang_states.append(lang)
      visn_states.append(visn)
      if output_attentions:
        attn["lang_to_vision"].append(x_attn["lang_to_vision"])
        attn["vision_to_lang"].append(x_attn["vision_to_lang"])
        attn["xl"].append(x_attn["lang_self"])
        attn["xv"].append(x_attn["visn_self"])

    return {
      "lang": lang,
      "visn": visn,
      "lang_states": tuple(lang_states),
      "visn_states": tuple(visn_states),
      "attentions": {k: tuple(v) for k, v in attn.items()} if output_attentions else None,
    }


class LxmertModel(nn.Module):
  """LXMERT backbone (transformers ``LxmertModel``; original ``LXRTModel``).

  Params: ``embeddings``, ``encoder`` (``visn_fc``, ``layer_i``, ``r_layers_i``, ``x_layers_i``),
  ``pooler``. ``dtype`` is the compute dtype; parameters are always float32.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    self.embeddings = LxmertEmbeddings(self.config, self.dtype)
    self.encoder = LxmertEncoder(self.config, self.dtype)
    self.pooler = LxmertPooler(self.config, self.dtype)

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
  ) -> LxmertModelOutput:
    """Encodes a batch of (sentence, image) pairs.

    Args:
      input_ids: [batch, seq_len] int WordPiece ids ([CLS] first).
      visual_feats: [batch, num_boxes, visual_feat_dim] RoI features.
      visual_pos: [batch, num_boxes, 4] normalised boxes (x1, y1, x2, y2).
      attention_mask: [batch, seq_len] 1 = token, 0 = padding; None = all tokens.
      token_type_ids: [batch, seq_len]; None = zeros (LXMERT never uses segment 1).
      visual_attention_mask: [batch, num_boxes] 1 = box, 0 = padding; None (the original code's
        only case) = no object masking.
      deterministic: disables dropout (needs rng ``'dropout'`` when False).
      output_hidden_states: fill the ``*_hidden_states`` fields.
      output_attentions: fill the attention fields.

    Returns:
      ``LxmertModelOutput``.
    """
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    visual_feats = jnp.asarray(visual_feats, self.dtype)
    visual_pos = jnp.asarray(visual_pos, self.dtype)
    # A None text mask equals an all-ones mask (transformers' default); skipping the add is exact.
    lang_bias = make_attention_bias(attention_mask)
    visual_bias = make_attention_bias(visual_attention_mask)

    embedding_output = self.embeddings(input_ids, token_type_ids, deterministic)
    enc = self.encoder(
      embedding_output,
      lang_bias,
      visual_feats,
      visual_pos,
      visual_bias,
      deterministic,
      output_attentions,
    )
    pooled_output = self.pooler(enc["lang"])

    attn = enc["attentions"]
    return LxmertModelOutput(
      language_output=enc["lang"],
      vision_output=enc["visn"],
      pooled_output=pooled_output,
      language_hidden_states=enc["lang_states"] if output_hidden_states else None,
      vision_hidden_states=enc["visn_states"] if output_hidden_states else None,
      language_attentions=attn["lang"] if output_attentions else None,
      vision_attentions=attn["visn"] if output_attentions else None,
      cross_encoder_attentions=attn["lang_to_vision"] if output_attentions else None,
      cross_encoder_attentions_vision_to_language=(
        attn["vision_to_lang"] if output_attentions else None
      ),
      cross_encoder_language_self_attentions=attn["xl"] if output_attentions else None,
      cross_encoder_vision_self_attentions=attn["xv"] if output_attentions else None,
    )
