"""Flax Linen modules of LXMERT: three encoders, pooler and task heads."""

from lxmert_jax.models.config import LxmertConfig, tiny_config

__all__ = ["LxmertConfig", "tiny_config"]
