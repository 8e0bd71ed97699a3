"""``LxmertConfig``: every size of the LXMERT model, with LXMERT-base defaults."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

# transformers' LxmertConfig names that we do not model (they only steer transformers' own
# pretraining wrapper or generic PretrainedConfig behaviour).
_HF_ONLY_FIELDS = {
  "task_matched",
  "task_mask_lm",
  "task_obj_predict",
  "task_qa",
  "visual_obj_loss",
  "visual_attr_loss",
  "visual_feat_loss",
  "num_hidden_layers",
  "model_type",
  "architectures",
  "transformers_version",
  "torch_dtype",
  "dtype",
  "pad_token_id",
}


@dataclasses.dataclass(frozen=True)
class LxmertConfig:
  """Sizes of the LXMERT backbone and its heads (defaults: LXMERT-base, spec section 1.1).

  Field names follow transformers' ``LxmertConfig`` so a ``config.json`` maps one to one.
  """

  # WordPiece vocabulary size (bert-base-uncased).
  vocab_size: int = 30522
  # Hidden size H of every stream.
  hidden_size: int = 768
  # Attention heads; hidden_size must be divisible by it.
  num_attention_heads: int = 12
  # FFN inner size I.
  intermediate_size: int = 3072
  # Language (l), object-relationship (r) and cross-modality (x) layer counts.
  l_layers: int = 9
  r_layers: int = 5
  x_layers: int = 5
  # Dropout on hidden states and on attention probabilities.
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  # Position and token-type table sizes.
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  # Std of the plain (not truncated) normal initialiser.
  initializer_range: float = 0.02
  # LayerNorm epsilon everywhere (the original code's 1e-12, not Flax's 1e-6).
  layer_norm_eps: float = 1e-12
  # Only exact (erf) GELU exists in LXMERT; kept as a field for config.json round trips.
  hidden_act: str = "gelu"
  # Visual input: RoI feature dim and box dim (x1, y1, x2, y2).
  visual_feat_dim: int = 2048
  visual_pos_dim: int = 4
  # Pretraining head sizes: QA answers, object classes, attribute classes.
  num_qa_labels: int = 9500
  num_object_labels: int = 1600
  num_attr_labels: int = 400
  # Weight of each visual loss: the original code's 1/0.15 (transformers: 6.67).
  visual_loss_normalizer: float = 1 / 0.15
  # Rematerialise each encoder layer in the backward pass (saves activation memory).
  remat: bool = False

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"hidden_size={self.hidden_size} is not divisible by "
        f"num_attention_heads={self.num_attention_heads}"
      )
    if self.hidden_act != "gelu":
      raise ValueError(f"LXMERT uses exact GELU only; got hidden_act={self.hidden_act!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **changes) -> LxmertConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any], *, strict: bool = True) -> LxmertConfig:
    """Builds a config from our field names or a transformers ``config.json`` dict.

    Args:
      values: field -> value. transformers-only fields are ignored.
      strict: raise on keys that are neither our fields nor known transformers fields.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    unknown = sorted(set(values) - names - _HF_ONLY_FIELDS)
    if strict and unknown:
      raise ValueError(f"unknown LxmertConfig fields: {unknown}")
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> LxmertConfig:
    with open(path) as f:
      return cls.from_dict(json.load(f), strict=False)

  @classmethod
  def coerce(cls, config: Any) -> LxmertConfig:
    """Accepts an ``LxmertConfig``, a dict, a transformers ``LxmertConfig`` or a config.json path."""
    if config is None:
      return cls()
    if isinstance(config, cls):
      return config
    if isinstance(config, Mapping):
      return cls.from_dict(config, strict=False)
    if isinstance(config, str | os.PathLike):
      if not os.path.exists(config):
        raise FileNotFoundError(f"config file not found: {config}")
      return cls.from_json(config)
    if hasattr(config, "to_dict"):  # transformers.LxmertConfig
      return cls.from_dict(config.to_dict(), strict=False)
    raise TypeError(f"cannot build an LxmertConfig from {type(config).__name__}")

  def to_hf_dict(self) -> dict[str, Any]:
    """The ``config.json`` contents that transformers' ``LxmertConfig`` reads."""
    d = self.to_dict()
    d.pop("remat")
    d["model_type"] = "lxmert"
    d["num_hidden_layers"] = {
      "vision": self.r_layers,
      "cross_encoder": self.x_layers,
      "language": self.l_layers,
    }
    return d


def tiny_config(**overrides) -> LxmertConfig:
  """Odd, distinct sizes so that transposes and head splits show up in parity tests."""
  base = dict(
    vocab_size=99,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=37,
    l_layers=2,
    r_layers=1,
    x_layers=2,
    visual_feat_dim=11,
    num_qa_labels=13,
    num_object_labels=17,
    num_attr_labels=7,
    max_position_embeddings=64,
  )
  base.update(overrides)
  return LxmertConfig(**base)
