"""lxmert_jax: LXMERT (Tan & Bansal, EMNLP 2019) in JAX/Flax.

Load published or own weights and run them::

  import lxmert_jax
  model = lxmert_jax.load_pretrained("lxmert-base")   # a transformers save_pretrained directory
  out = model(input_ids, visual_feats, visual_pos, attention_mask=attention_mask)
  out.pooled_output                                    # [batch, hidden]
"""

import importlib

__version__ = "0.1.0"

# Resolved on first use, so that `python -m lxmert_jax.main` and the data tools can set XLA and
# TensorFlow flags before JAX is imported.
_LAZY = {
  "LxmertConfig": "lxmert_jax.models.config",
  "LxmertPretrained": "lxmert_jax.pretrained",
  "load_pretrained": "lxmert_jax.pretrained",
  "save_pretrained_hf": "lxmert_jax.pretrained",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'lxmert_jax' has no attribute {name!r}")
