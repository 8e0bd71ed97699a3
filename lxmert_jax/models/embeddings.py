"""Input embeddings: WordPiece tokens (``LxmertEmbeddings``) and RoI features (``VisualFeatEncoder``)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.models.config import LxmertConfig
from lxmert_jax.models.layers import Dtype, dense, layer_norm, normal_init

Array = jax.Array


class LxmertEmbeddings(nn.Module):
  """h0 = Dropout(LN(word[ids] + position[0..L-1] + token_type[type_ids])) (spec 1.3).

  The three tables keep transformers' names; ``word_embeddings`` is also the tied MLM decoder.
  ``padding_idx=0`` of the PyTorch tables only affects gradients (spec G3), not the forward pass.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config

    def embed(num, name):
      return nn.Embed(
        num,
        cfg.hidden_size,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        embedding_init=normal_init(cfg),
        name=name,
      )

    self.word_embeddings = embed(cfg.vocab_size, "word_embeddings")
    self.position_embeddings = embed(cfg.max_position_embeddings, "position_embeddings")
    self.token_type_embeddings = embed(cfg.type_vocab_size, "token_type_embeddings")
    self.LayerNorm = layer_norm(cfg, self.dtype)
    self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool = True) -> Array:
    """Embeds token ids.

    Args:
      input_ids: [batch, seq_len] int WordPiece ids.
      token_type_ids: [batch, seq_len] int segment ids (always 0 in LXMERT).
      deterministic: disables dropout.

    Returns:
      [batch, seq_len, hidden].
    """
    seq_len = input_ids.shape[1]
    if seq_len > self.config.max_position_embeddings:
      # A gather past the table end would silently clamp in JAX; PyTorch raises.
      raise ValueError(
        f"input_ids has {seq_len} positions but max_position_embeddings is "
        f"{self.config.max_position_embeddings}"
      )
    position_ids = jnp.arange(seq_len)[None, :]
    embeddings = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(position_ids)
      + self.token_type_embeddings(token_type_ids)
    )
    embeddings = self.LayerNorm(embeddings)
    return self.dropout(embeddings, deterministic=deterministic)


class LxmertVisualFeatureEncoder(nn.Module):
  """v0 = Dropout((LN(fc(feat)) + LN(fc(box))) / 2) (``VisualFeatEncoder``, spec 1.4).

  Lives at ``encoder/visn_fc`` like the original, whose encoder owns it.
  """

  config: LxmertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, visual_feats: Array, visual_pos: Array, deterministic: bool = True) -> Array:
    """Embeds objects.

    Args:
      visual_feats: RoI features [batch, num_boxes, visual_feat_dim].
      visual_pos: boxes (x1, y1, x2, y2) normalised to [0, 1], [batch, num_boxes, 4].
      deterministic: disables dropout.

    Returns:
      [batch, num_boxes, hidden].
    """
    cfg = self.config
    feats = dense(cfg.hidden_size, cfg, self.dtype, "visn_fc")(visual_feats)
    feats = layer_norm(cfg, self.dtype, "visn_layer_norm")(feats)
    boxes = dense(cfg.hidden_size, cfg, self.dtype, "box_fc")(visual_pos)
    boxes = layer_norm(cfg, self.dtype, "box_layer_norm")(boxes)
    output = (feats + boxes) / 2
    return nn.Dropout(cfg.hidden_dropout_prob)(output, deterministic=deterministic)
