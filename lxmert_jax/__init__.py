"""lxmert_jax: LXMERT (Tan & Bansal, EMNLP 2019) in JAX/Flax."""

from lxmert_jax.models.config import LxmertConfig

__version__ = "0.1.0"
__all__ = ["LxmertConfig", "__version__"]
