"""Weight conversion between PyTorch LXMERT checkpoints (transformers / original) and Flax params."""

from lxmert_jax.convert.from_pytorch import (
  LoadReport,
  WeightLoadError,
  convert_state_dict,
  read_state_dict_file,
)
from lxmert_jax.convert.param_map import TASKS, param_table
from lxmert_jax.convert.to_hf import params_to_hf_state_dict, save_pretrained_hf

__all__ = [
  "TASKS",
  "LoadReport",
  "WeightLoadError",
  "convert_state_dict",
  "param_table",
  "params_to_hf_state_dict",
  "read_state_dict_file",
  "save_pretrained_hf",
]
