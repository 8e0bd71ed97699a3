"""Flax params -> a transformers ``save_pretrained`` directory (config.json + model.safetensors).

Written with ``safetensors.numpy``: exporting needs neither torch nor transformers. The result
loads with ``LxmertModel`` / ``LxmertForPreTraining`` / ``LxmertForQuestionAnswering``
``.from_pretrained(directory)`` with no missing and no unexpected keys.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from lxmert_jax.convert import param_map
from lxmert_jax.models.config import LxmertConfig

HF_ARCHITECTURES = {
  "backbone": "LxmertModel",
  "pretraining": "LxmertForPreTraining",
  "qa": "LxmertForQuestionAnswering",
}
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def params_to_hf_state_dict(
  params: Mapping, config: LxmertConfig, task: str
) -> dict[str, np.ndarray]:
  """Flax params of ``build_model(config, task)`` -> transformers state dict (float32 numpy).

  ``backbone`` gives ``LxmertModel`` names (no ``lxmert.`` prefix). The tied MLM decoder
  (``cls.predictions.decoder.weight``) is omitted, as transformers' own ``save_pretrained`` does.
  """
  if task not in HF_ARCHITECTURES:
    raise ValueError(
      f"task {task!r} has no transformers class (transformers ships LxmertModel, "
      f"LxmertForPreTraining and LxmertForQuestionAnswering only)"
    )
  flat = traverse_util.flatten_dict(dict(params))
  table = param_map.param_table(config, task)
  missing = ["/".join(m.flax_path) for m in table if m.flax_path not in flat]
  extra = sorted("/".join(p) for p in set(flat) - {m.flax_path for m in table})
  if missing or extra:
    raise ValueError(
      f"params do not match the {task!r} model: missing {missing}, unexpected {extra}"
    )
  state = {}
  for m in table:
    key = m.torch_key
    if task == "backbone":
      key = key[len(param_map.BACKBONE_PREFIX) :]
    state[key] = m.to_torch(np.asarray(flat[m.flax_path], np.float32))
  return state


def hf_config_dict(config: LxmertConfig, task: str) -> dict[str, Any]:
  """transformers ``config.json`` contents for ``task``."""
  d = config.to_hf_dict()
  d["architectures"] = [HF_ARCHITECTURES[task]]
  return d


def _atomic_write(path: str, write) -> None:
  # Write beside the target then rename, so a crash never leaves a half-written file.
  fd, tmp = tempfile.mkstemp(
    dir=os.path.dirname(path), prefix=".tmp-", suffix=os.path.basename(path)
  )
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_pretrained_hf(obj: Any, directory: str | os.PathLike) -> str:
  """Writes ``directory/config.json`` and ``directory/model.safetensors`` for transformers.

  Args:
    obj: anything with ``.params``, ``.config`` (LxmertConfig) and ``.task`` ('backbone',
      'pretraining' or 'qa'), e.g. what ``lxmert_jax.pretrained.load_pretrained`` returns.
    directory: created if needed.

  Returns:
    The directory path.
  """
  from safetensors.numpy import save_file

  config = LxmertConfig.coerce(obj.config)
  state = params_to_hf_state_dict(obj.params, config, obj.task)
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  # transformers refuses safetensors files whose metadata lacks the framework tag.
  _atomic_write(
    os.path.join(directory, WEIGHTS_NAME), lambda p: save_file(state, p, metadata={"format": "pt"})
  )

  def write_config(p):
    with open(p, "w") as f:
      json.dump(hf_config_dict(config, obj.task), f, indent=2, sort_keys=True)
      f.write("\n")

  _atomic_write(os.path.join(directory, CONFIG_NAME), write_config)
  return directory
