"""Load LXMERT weights from any supported checkpoint into a ready-to-call Flax model.

Supported sources (see docs/checkpoints.md):
  * a transformers ``save_pretrained`` directory (config.json + model.safetensors or
    pytorch_model.bin) of LxmertModel / LxmertForPreTraining / LxmertForQuestionAnswering;
  * an original airsplay/lxmert file: ``*_LXRT.pth`` (pre-training) or ``BEST.pth``/``LAST.pth``
    (VQA / GQA / NLVR2 fine-tuning), with or without the DataParallel ``module.`` prefix;
  * this project's Orbax checkpoints: a params directory written by :func:`save_params_orbax`,
    an Orbax CheckpointManager step directory ``<workdir>/checkpoints/<step>/``, the manager
    root (latest step) or the workdir, with ``lxmert_config.json`` beside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from lxmert_jax.convert import param_map
from lxmert_jax.convert.from_pytorch import (
  LoadReport,
  WeightLoadError,
  convert_state_dict,
  read_state_dict_file,
)
from lxmert_jax.convert.to_hf import save_pretrained_hf
from lxmert_jax.models.config import LxmertConfig
from lxmert_jax.models.tasks import build_model, param_shapes

CONFIG_FILE = "lxmert_config.json"
PARAMS_ITEM = "params"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

__all__ = [
  "CONFIG_FILE",
  "LxmertPretrained",
  "load_params_from_orbax",
  "load_pretrained",
  "save_params_orbax",
  "save_pretrained_hf",
]


def _apply(
  model: nn.Module,
  params,
  input_ids,
  visual_feats,
  visual_pos,
  attention_mask,
  token_type_ids,
  visual_attention_mask,
  output_hidden_states: bool,
  output_attentions: bool,
):
  return model.apply(
    {"params": params},
    input_ids,
    visual_feats,
    visual_pos,
    attention_mask,
    token_type_ids,
    visual_attention_mask,
    deterministic=True,
    output_hidden_states=output_hidden_states,
    output_attentions=output_attentions,
  )


# One jitted function for every model: jit caches one executable per (model, flags, shapes).
# Linen modules hash by their fields (config, dtype), so equal models share compilations.
_jitted_apply = jax.jit(
  _apply, static_argnames=("model", "output_hidden_states", "output_attentions")
)


@dataclasses.dataclass(eq=False)
class LxmertPretrained:
  """Flax LXMERT with loaded weights.

  Attributes:
    config: the model sizes.
    params: float32 param tree of ``model`` (see ``convert/param_map.py`` for the names).
    task: 'backbone' | 'pretraining' | 'qa' | 'nlvr2'.
    dtype: compute dtype of ``model`` (params stay float32).
    load_report: where the weights came from and what was deliberately dropped.
  """

  config: LxmertConfig
  params: Any
  task: str = "backbone"
  dtype: Any = jnp.float32
  load_report: LoadReport | None = None

  def __post_init__(self):
    if self.task not in param_map.TASKS:
      raise ValueError(f"unknown task {self.task!r}; expected one of {param_map.TASKS}")

  @property
  def model(self) -> nn.Module:
    """The Linen module (``LxmertModel``, ``LxmertForPreTraining``, ... per ``task``)."""
    return build_model(self.config, self.task, self.dtype)

  def __call__(
    self,
    input_ids,
    visual_feats,
    visual_pos,
    attention_mask=None,
    token_type_ids=None,
    visual_attention_mask=None,
    *,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ):
    """Runs the model in eval mode (no dropout); numpy or jax inputs.

    Args:
      input_ids: [batch, seq_len] ints.
      visual_feats: [batch, num_boxes, feat_dim] ([batch, 2, num_boxes, feat_dim] for nlvr2).
      visual_pos: [batch, num_boxes, 4] ([batch, 2, num_boxes, 4] for nlvr2).
      attention_mask: [batch, seq_len] or None.
      token_type_ids: [batch, seq_len] or None.
      visual_attention_mask: [batch, num_boxes] ([batch, 2, num_boxes] for nlvr2) or None.
      output_hidden_states: fill the hidden-state tuples.
      output_attentions: fill the attention tuples.

    Returns:
      The task's output dataclass (``models/outputs.py``).
    """

    def arr(x, dtype):
      return None if x is None else jnp.asarray(x, dtype)

    return _jitted_apply(
      self.model,
      self.params,
      arr(input_ids, jnp.int32),
      arr(visual_feats, jnp.float32),
      arr(visual_pos, jnp.float32),
      arr(attention_mask, jnp.int32),
      arr(token_type_ids, jnp.int32),
      arr(visual_attention_mask, jnp.int32),
      output_hidden_states=output_hidden_states,
      output_attentions=output_attentions,
    )


# --------------------------------------------------------------------------- Orbax


def save_params_orbax(obj: LxmertPretrained, directory: str | os.PathLike) -> Path:
  """Writes ``directory/params`` (Orbax PyTree) and ``directory/lxmert_config.json``.

  ``load_pretrained(directory)`` reads it back; the task follows from the param tree.
  """
  import orbax.checkpoint as ocp

  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(np.asarray, obj.params)
  ocp.PyTreeCheckpointer().save(directory / PARAMS_ITEM, params)
  (directory / CONFIG_FILE).write_text(json.dumps(obj.config.to_dict(), indent=2) + "\n")
  return directory


def _is_orbax_item(path: Path) -> bool:
  return path.is_dir() and any(
    (path / name).exists() for name in ("_METADATA", "manifest.ocdbt", "_sharding", "checkpoint")
  )


def _latest_step_dir(root: Path) -> Path | None:
  # Finished CheckpointManager steps are plain integer names; in-progress saves carry a suffix.
  steps = [int(c.name) for c in root.iterdir() if c.is_dir() and c.name.isdigit()]
  return root / str(max(steps)) if steps else None


def _looks_like_params(tree: Any) -> bool:
  return isinstance(tree, dict) and (
    "lxmert" in tree or {"embeddings", "encoder", "pooler"} <= set(tree)
  )


def _find_params_path(tree: Any, depth: int = 3) -> tuple[str, ...] | None:
  """Key path to the LXMERT params inside a restored tree (params itself, state['params'], ...)."""
  if _looks_like_params(tree):
    return ()
  if not isinstance(tree, dict) or depth == 0:
    return None
  keys = sorted(tree, key=lambda k: (k != "params", str(k)))  # prefer a 'params' entry
  for key in keys:
    sub = _find_params_path(tree[key], depth - 1)
    if sub is not None:
      return (key,) + sub
  return None


def _orbax_items(path: Path) -> tuple[list[Path], Path]:
  """Candidate PyTree item directories for ``path`` and the directory they belong to."""
  if _is_orbax_item(path):
    return [path], path.parent
  if (path / "checkpoints").is_dir() and not any(_is_orbax_item(c) for c in path.iterdir()):
    path = path / "checkpoints"  # a training workdir
  step = _latest_step_dir(path)
  if step is not None and not any(_is_orbax_item(c) for c in path.iterdir() if c.is_dir()):
    path = step  # a CheckpointManager root: take the latest step
  items = sorted(
    (c for c in path.iterdir() if _is_orbax_item(c)),
    key=lambda c: (c.name not in ("params", "state", "default"), c.name),
  )
  return items, path


def load_params_from_orbax(path: str | os.PathLike) -> tuple[dict, Path]:
  """Restores LXMERT params (only them, not optimizer state) from an Orbax checkpoint.

  Args:
    path: a PyTree item directory, a step directory (``.../checkpoints/<step>``), a
      CheckpointManager root (latest step is used) or a workdir containing ``checkpoints/``.

  Returns:
    (params as nested dict of numpy arrays, the item directory they came from).
  """
  import orbax.checkpoint as ocp

  path = Path(path).absolute()
  if not path.is_dir():
    raise FileNotFoundError(f"Orbax checkpoint directory not found: {path}")
  items, _ = _orbax_items(path)
  if not items:
    raise WeightLoadError(f"{path}: no Orbax checkpoint (item, step or manager directory) found")
  checkpointer = ocp.PyTreeCheckpointer()
  for item in items:
    tree = checkpointer.metadata(item).item_metadata.tree
    where = _find_params_path(tree)
    if where is None:
      continue
    # Restore only the params subtree (partial restore), as host numpy arrays.
    subtree = tree
    for key in where:
      subtree = subtree[key]
    target = subtree
    for key in reversed(where):
      target = {key: target}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = checkpointer.restore(
      item,
      args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
    )
    for key in where:
      restored = restored[key]
    return restored, item
  raise WeightLoadError(
    f"{path}: no LXMERT params (a tree with 'lxmert' or 'embeddings'/'encoder'/'pooler') in "
    f"{[str(i) for i in items]}"
  )


def _orbax_config(item: Path) -> tuple[LxmertConfig, str] | None:
  for directory in (item, item.parent, item.parent.parent, item.parent.parent.parent):
    candidate = directory / CONFIG_FILE
    if candidate.is_file():
      return LxmertConfig.from_json(candidate), str(candidate)
  return None


def _task_of_params(params: dict, config: LxmertConfig) -> str:
  if "lxmert" not in params:
    return "backbone"
  if "cls" in params or "obj_predict_head" in params:
    return "pretraining"
  if "answer_head" in params:
    kernel = params["answer_head"]["logit_fc"]["0"]["kernel"]
    return "nlvr2" if kernel.shape[0] == 2 * config.hidden_size else "qa"
  return "backbone"


def _check_params(params: dict, config: LxmertConfig, task: str, source: str) -> dict:
  """Raises one WeightLoadError listing every missing, unexpected or wrong-shape param."""
  expected = traverse_util.flatten_dict(param_shapes(config, task))
  flat = traverse_util.flatten_dict(params)
  if task == "backbone" and "lxmert" in params:
    flat = {k[1:]: v for k, v in flat.items() if k[0] == "lxmert"}
  problems = [
    f"  missing {'/'.join(k)} {list(v.shape)}" for k, v in expected.items() if k not in flat
  ]
  problems += [
    f"  wrong shape {'/'.join(k)}: checkpoint {list(np.shape(flat[k]))}, model expects {list(v.shape)}"
    for k, v in expected.items()
    if k in flat and tuple(np.shape(flat[k])) != tuple(v.shape)
  ]
  problems += [f"  unexpected {'/'.join(k)}" for k in flat if k not in expected]
  if problems:
    raise WeightLoadError(
      f"{source} does not fit the LXMERT {task!r} model:\n" + "\n".join(problems)
    )
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()})


def _load_orbax(path: Path, config, task, dtype) -> LxmertPretrained:
  params, item = load_params_from_orbax(path)
  if config is not None:
    config, config_source = LxmertConfig.coerce(config), "given"
  else:
    found = _orbax_config(item)
    if found is None:
      raise WeightLoadError(
        f"{item}: no {CONFIG_FILE} found in it or up to three directories above; pass config="
      )
    config, config_source = found
  saved_task = _task_of_params(params, config)
  task = task or saved_task
  dropped = []
  if task != saved_task:
    if task == "backbone" or (saved_task == "pretraining" and task == "qa"):
      keep = {"lxmert"} | set(param_map.TASK_HEADS[task])
      dropped = [(k, f"not part of task {task!r}") for k in sorted(params) if k not in keep]
      params = {k: v for k, v in params.items() if k in keep}
  params = _check_params(params, config, task, str(item))
  report = LoadReport(
    source=str(item),
    source_format="orbax",
    task=task,
    config_source=config_source,
    num_params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
    dropped=dropped,
  )
  logging.info("%s", report)
  return LxmertPretrained(config, params, task, dtype, report)


# --------------------------------------------------------------------------- transformers / .pth


def _read_hf_weights(directory: Path) -> tuple[dict[str, np.ndarray], str]:
  if (directory / "model.safetensors").is_file():
    path = directory / "model.safetensors"
    return read_state_dict_file(path), str(path)
  index = directory / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state = {}
    for shard in shards:
      state.update(read_state_dict_file(directory / shard))
    return state, str(index)
  path = directory / "pytorch_model.bin"
  return read_state_dict_file(path), str(path)


def load_pretrained(
  path: str | os.PathLike,
  *,
  config: Any = None,
  dtype: Any = jnp.float32,
  task: str | None = None,
) -> LxmertPretrained:
  """Loads LXMERT weights into a callable Flax model.

  Args:
    path: a transformers directory, an original ``.pth`` (or ``.bin``/``.safetensors``) file,
      or an Orbax checkpoint (params directory, step directory, manager root or workdir).
    config: ``LxmertConfig``, dict, transformers ``LxmertConfig`` or config.json path. None:
      transformers directories use their config.json, Orbax checkpoints their
      lxmert_config.json, and bare ``.pth`` files LXMERT-base with every size that the shapes
      reveal (layer counts, vocab, answer count, ...) read from them and checked.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); params stay float32.
    task: 'backbone' | 'pretraining' | 'qa' | 'nlvr2'; None = what the checkpoint holds.
      Heads not used by the task are dropped and listed in ``load_report``.

  Returns:
    ``LxmertPretrained`` (``.config``, ``.params``, ``.model``, ``.task``, ``.load_report``).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    WeightLoadError: refused pickle, or missing / unexpected / wrong-shape weights (all listed).
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"LXMERT checkpoint not found: {path}")
  if path.is_dir():
    if (path / "config.json").is_file() and any((path / f).is_file() for f in HF_WEIGHT_FILES):
      state, source = _read_hf_weights(path)
      config_source = "given" if config is not None else "config.json"
      config = config if config is not None else LxmertConfig.coerce(str(path / "config.json"))
    else:
      return _load_orbax(path, config, task, dtype)
  else:
    state, source, config_source = read_state_dict_file(path), str(path), None
  params, config, report = convert_state_dict(
    state, config=config, task=task, source=source, config_source=config_source
  )
  return LxmertPretrained(config, params, report.task, dtype, report)
