"""Flax Linen modules of LXMERT: three encoders, pooler and task heads."""

from lxmert_jax.models.config import LxmertConfig, tiny_config
from lxmert_jax.models.lxmert import LxmertModel
from lxmert_jax.models.tasks import (
  LxmertForNLVR2,
  LxmertForPreTraining,
  LxmertForQuestionAnswering,
  build_model,
)

__all__ = [
  "LxmertConfig",
  "LxmertForNLVR2",
  "LxmertForPreTraining",
  "LxmertForQuestionAnswering",
  "LxmertModel",
  "build_model",
  "tiny_config",
]
