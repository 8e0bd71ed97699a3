"""Orbax checkpoints under ``<workdir>/checkpoints``, the restore order, and loud params loading.

Each step directory holds five items, so a step is self-describing:

  ``params``        the float32 param tree (unreplicated)
  ``train``         ``{'step', 'opt_state'}`` (BertAdam moments; MultiSteps accumulators)
  ``config``        the run's ml_collections config as JSON
  ``model_config``  the ``LxmertConfig`` as JSON
  ``answers``       the answer vocabulary of the QA head (``[]`` if none)

Restore order (``restore_or_initialize``): (1) the latest step under ``<workdir>/checkpoints``
(full state: resume), else (2) ``init_from`` (params only: one of our workdirs / step
directories, or anything ``lxmert_jax.pretrained.load_pretrained`` reads), else (3) fresh init.
Params-only loads are merged into the freshly initialised tree and every missing, unexpected or
reshaped name is listed unless it matches a ``dont_load`` regex.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from orbax.checkpoint import checkpoint_managers

from lxmert_jax import gfile, preemption
from lxmert_jax.models.config import LxmertConfig

PyTree = Any
CHECKPOINT_SUBDIR = "checkpoints"
ITEMS = ("params", "train", "config", "model_config", "answers")
# Names listed per category in error messages before "... and N more".
MAX_LISTED = 30


def checkpoint_dir(workdir: str) -> str:
  """``<workdir>/checkpoints``; a ``gs://`` workdir stays a URL (Orbax writes it via epath)."""
  return os.path.join(gfile.abspath(workdir), CHECKPOINT_SUBDIR)


def _handlers():
  return {
    "params": ocp.StandardCheckpointHandler(),
    "train": ocp.StandardCheckpointHandler(),
    "config": ocp.JsonCheckpointHandler(),
    "model_config": ocp.JsonCheckpointHandler(),
    "answers": ocp.JsonCheckpointHandler(),
  }


def make_manager(
  directory: str,
  *,
  max_to_keep: int = 2,
  best_metric: str | None = None,
  best_mode: str = "max",
  async_save: bool = True,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the ``max_to_keep`` latest steps plus the best one.

  Args:
    directory: the ``checkpoints`` directory (see :func:`checkpoint_dir`).
    max_to_keep: latest steps kept.
    best_metric: key of the metrics passed to :func:`save_checkpoint` that ranks steps; the
      best step is kept in addition to the latest ones. None = keep only the latest.
    best_mode: 'max' or 'min'.
    async_save: write in a background thread (call ``wait_until_finished`` before exiting).
    read_only: never write or delete (used to read ``init_from`` checkpoints).
  """
  if best_mode not in ("max", "min"):
    raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
  policies = [checkpoint_managers.LatestN(n=max_to_keep)]
  if best_metric:
    policies.append(
      checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[best_metric],
        reverse=best_mode == "min",  # BestN keeps the largest after sorting.
        n=1,
        keep_checkpoints_without_metrics=False,
      )
    )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
    enable_async_checkpointing=async_save,
    read_only=read_only,
    create=not read_only,
  )
  return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())


def _global(tree: PyTree) -> PyTree:
  """Host-local replicated arrays -> global arrays, as Orbax needs on several hosts."""
  if jax.process_count() == 1:
    return tree
  # The state arrives unreplicated (one local device per host, equal on every host): put a
  # copy on each local device and declare it replicated over all devices of all hosts.
  # (ocp.utils.fully_replicated_host_local_array_to_global_array takes one pmap-replicated
  # array, not a tree of single-device ones.)
  sharding = jax.sharding.NamedSharding(
    jax.sharding.Mesh(np.array(jax.devices()), ("hosts",)), jax.sharding.PartitionSpec()
  )

  def to_global(x):
    x = jax.numpy.asarray(x)
    return jax.make_array_from_single_device_arrays(
      x.shape, sharding, [jax.device_put(x, d) for d in jax.local_devices()]
    )

  return jax.tree.map(to_global, tree)


def save_checkpoint(
  mngr: ocp.CheckpointManager,
  step: int,
  state,
  *,
  config: Mapping[str, Any],
  model_config: LxmertConfig,
  answers: Sequence[str] = (),
  metrics: Mapping[str, float] | None = None,
) -> None:
  """Saves the unreplicated ``state`` (a TrainState) and the run's configs at ``step``.

  The call returns once the arrays are copied to host memory; writing continues in the
  background when the manager is async.
  """
  config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  args = ocp.args.Composite(
    params=ocp.args.StandardSave(_global(state.params)),
    train=ocp.args.StandardSave(_global({"step": state.step, "opt_state": state.opt_state})),
    config=ocp.args.JsonSave(json.loads(json.dumps(config_dict, default=_json_default))),
    model_config=ocp.args.JsonSave(model_config.to_dict()),
    answers=ocp.args.JsonSave(list(answers)),
  )
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  mngr.save(step, args=args, metrics=metrics)


def _json_default(value):
  if isinstance(value, tuple | set):
    return list(value)
  if isinstance(value, np.generic):
    return value.item()
  return str(value)


def _shape_tree(tree: PyTree) -> dict[str, tuple[int, ...]]:
  flat = traverse_util.flatten_dict(_to_dict(tree), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _to_dict(tree: PyTree) -> dict:
  if hasattr(tree, "unfreeze"):
    tree = tree.unfreeze()
  return dict(tree)


def _listed(names: Sequence[str]) -> str:
  names = list(names)
  extra = len(names) - MAX_LISTED
  shown = "\n    ".join(str(n) for n in names[:MAX_LISTED])
  return shown + (f"\n    ... and {extra} more" if extra > 0 else "")


@dataclasses.dataclass
class TreeDiff:
  """Differences of a param tree against the expected one (paths joined with '/')."""

  missing: list[str]
  unexpected: list[str]
  mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

  def describe(self) -> str:
    parts = []
    if self.mismatched:
      rows = [f"{p}: expected {e}, got {g}" for p, e, g in self.mismatched]
      parts.append(f"  mismatched shapes ({len(rows)}):\n    {_listed(rows)}")
    if self.missing:
      parts.append(f"  missing ({len(self.missing)}):\n    {_listed(self.missing)}")
    if self.unexpected:
      parts.append(f"  unexpected ({len(self.unexpected)}):\n    {_listed(self.unexpected)}")
    return "\n".join(parts)


def diff_trees(expected: Mapping[str, tuple], got: Mapping[str, tuple]) -> TreeDiff:
  """Compares two flat ``path -> shape`` maps."""
  return TreeDiff(
    missing=sorted(set(expected) - set(got)),
    unexpected=sorted(set(got) - set(expected)),
    mismatched=[
      (k, expected[k], got[k])
      for k in sorted(expected)
      if k in got and tuple(expected[k]) != tuple(got[k])
    ],
  )


def _saved_shapes(mngr: ocp.CheckpointManager, step: int) -> dict[str, tuple[int, ...]]:
  meta = mngr.item_metadata(step)["params"]
  tree = getattr(meta, "tree", meta)
  flat = traverse_util.flatten_dict(_to_dict(tree), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _config_diff(saved: Mapping[str, Any] | None, model_config: LxmertConfig) -> str:
  if not saved:
    return ""
  current = model_config.to_dict()
  rows = [
    f"{k}: checkpoint {saved.get(k)!r}, config {current[k]!r}"
    for k in sorted(current)
    if k in saved and saved[k] != current[k]
  ]
  return ("\n  model config differences:\n    " + "\n    ".join(rows)) if rows else ""


def _single_device(abstract: PyTree) -> PyTree:
  # Restore everything onto the first local device; train.py replicates afterwards.
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def restore_checkpoint(mngr: ocp.CheckpointManager, step: int, abstract_state, model_config):
  """Restores the full TrainState of ``step`` into the structure of ``abstract_state``.

  Raises:
    ValueError: listing (path, expected shape, got shape) when the checkpoint was written for
      another model config.
  """
  where = os.path.join(str(mngr.directory), str(step))
  diff = diff_trees(_shape_tree(abstract_state.params), _saved_shapes(mngr, step))
  if diff.missing or diff.unexpected or diff.mismatched:
    saved_config = mngr.restore(step, args=ocp.args.Composite(model_config=ocp.args.JsonRestore()))
    raise ValueError(
      f"checkpoint {where} does not fit this model (was it written with another model "
      f"config?):\n{diff.describe()}{_config_diff(saved_config.model_config, model_config)}"
    )
  train_abstract = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
  restored = mngr.restore(
    step,
    args=ocp.args.Composite(
      params=ocp.args.StandardRestore(_single_device(abstract_state.params)),
      train=ocp.args.StandardRestore(_single_device(train_abstract)),
    ),
  )
  logging.info("Restored the full train state from %s.", where)
  return abstract_state.replace(
    params=restored.params, step=restored.train["step"], opt_state=restored.train["opt_state"]
  )


# ------------------------------------------------------------------------------------------------
# Params-only loading (init_from).


@dataclasses.dataclass
class LoadedParams:
  """Params read from ``init_from``, with what is known about them.

  Attributes:
    params: nested dict of numpy arrays.
    model_config: the config they were written with, if known.
    answers: the answer vocabulary of their QA head (label order), if known.
    source: human-readable origin for logs.
  """

  params: dict
  model_config: LxmertConfig | None = None
  answers: list[str] | None = None
  source: str = ""


def find_checkpoint_step(path: str) -> tuple[str, int] | None:
  """Resolves one of our workdirs / checkpoints dirs / step dirs to (checkpoints dir, step).

  Returns None if ``path`` (local or ``gs://``) is not an Orbax checkpoint written by this module.
  """
  path = gfile.abspath(path).rstrip("/") or "/"
  if not gfile.isdir(path):
    return None
  if gfile.isdir(os.path.join(path, "params")) and os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  for directory in (os.path.join(path, CHECKPOINT_SUBDIR), path):
    steps = (
      [int(d) for d in gfile.listdir(directory) if d.isdigit()] if gfile.isdir(directory) else []
    )
    steps = [s for s in steps if gfile.isdir(os.path.join(directory, str(s), "params"))]
    if steps:
      return directory, max(steps)
  return None


def load_checkpoint_params(directory: str, step: int) -> LoadedParams:
  """Params, model config and answers of one of our steps, as host numpy arrays."""
  mngr = make_manager(directory, read_only=True, async_save=False)
  meta = mngr.item_metadata(step)["params"]
  tree = getattr(meta, "tree", meta)
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
  restored = mngr.restore(
    step,
    args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract),
      model_config=ocp.args.JsonRestore(),
      answers=ocp.args.JsonRestore(),
    ),
  )
  mngr.close()
  return LoadedParams(
    params=jax.tree.map(np.asarray, _to_dict(restored.params)),
    model_config=LxmertConfig.from_dict(restored.model_config, strict=False),
    answers=list(restored.answers) or None,
    source=f"{directory}/{step}",
  )


def load_params(path: str, task_model: str, model_config: LxmertConfig) -> LoadedParams:
  """Reads ``init_from``: one of our checkpoints, else ``pretrained.load_pretrained``.

  Args:
    path: workdir, checkpoints dir or step dir of ours; a transformers LXMERT directory; an
      original ``*_LXRT.pth`` / fine-tuned ``BEST.pth``.
    task_model: ``lxmert_jax.models.tasks`` family whose param layout is wanted.
    model_config: the run's model config (external formats need no config of their own).
  """
  found = find_checkpoint_step(path)
  if found is not None:
    return load_checkpoint_params(*found)
  if not gfile.exists(path):
    raise FileNotFoundError(f"config.init_from={path!r} does not exist")
  from lxmert_jax import pretrained

  return pretrained_adapter(pretrained, path, task_model, model_config)


def pretrained_adapter(pretrained, path: str, task_model: str, model_config: LxmertConfig):
  """Calls ``pretrained.load_pretrained`` and wraps its result as :class:`LoadedParams`."""
  result = pretrained.load_pretrained(path, task=task_model)
  params = getattr(result, "params", result)
  loaded_config = getattr(result, "config", None)
  answers = getattr(result, "answers", None) or getattr(result, "label2ans", None)
  return LoadedParams(
    params=jax.tree.map(np.asarray, _to_dict(params)),
    model_config=loaded_config,
    answers=list(answers) if answers else None,
    source=path,
  )


def merge_params(init: PyTree, loaded: PyTree, dont_load: Sequence[str] = (), source: str = ""):
  """Copies ``loaded`` into ``init`` (big_vision's ``merge_params``), loudly.

  Params of ``init`` matching a ``dont_load`` regex (full match on the '/'-joined path) keep
  their initial value. Every other param must be present in ``loaded`` with the same shape;
  names of ``loaded`` that ``init`` lacks are listed in a warning (e.g. pretraining heads when
  fine-tuning).

  Raises:
    ValueError: listing the missing params and (path, expected shape, got shape) mismatches.
  """
  patterns = [re.compile(p) for p in dont_load]

  def skip(name):
    return any(p.fullmatch(name) for p in patterns)

  flat_init = traverse_util.flatten_dict(_to_dict(init), sep="/")
  flat_loaded = traverse_util.flatten_dict(_to_dict(loaded), sep="/")
  kept = sorted(k for k in flat_init if skip(k))
  diff = diff_trees(
    {k: tuple(v.shape) for k, v in flat_init.items() if not skip(k)},
    {k: tuple(np.shape(v)) for k, v in flat_loaded.items() if not skip(k)},
  )
  if diff.missing or diff.mismatched:
    raise ValueError(
      f"cannot initialise from {source or 'the loaded params'}:\n"
      f"{TreeDiff(diff.missing, [], diff.mismatched).describe()}\n"
      "(add regexes of params that should keep their fresh init to config.dont_load)"
    )
  if diff.unexpected:
    logging.warning(
      "Params in %s that this model does not use (%d):\n    %s",
      source,
      len(diff.unexpected),
      _listed(diff.unexpected),
    )
  if kept:
    logging.warning(
      "Params kept at their fresh init (config.dont_load) (%d):\n    %s", len(kept), _listed(kept)
    )
  merged = {
    k: v if skip(k) else np.asarray(flat_loaded[k]).astype(v.dtype) for k, v in flat_init.items()
  }
  logging.info(
    "Initialised %d of %d params from %s.", len(flat_init) - len(kept), len(flat_init), source
  )
  return traverse_util.unflatten_dict(merged, sep="/")


def restore_or_initialize(
  mngr: ocp.CheckpointManager,
  abstract_state,
  init_fn: Callable[[], Any],
  *,
  model_config: LxmertConfig,
  load_init_params: Callable[[], LoadedParams] | None = None,
  adapt: Callable[[LoadedParams], dict] | None = None,
  dont_load: Sequence[str] = (),
):
  """The restore order: latest step in ``mngr``, else ``load_init_params()``, else fresh.

  Args:
    mngr: the run's manager (``<workdir>/checkpoints``).
    abstract_state: ``jax.eval_shape`` of the TrainState.
    init_fn: builds a fresh TrainState.
    model_config: the run's model config (for mismatch messages).
    load_init_params: returns the params-only initialisation (init_from or in-memory), or None.
    adapt: maps the loaded params to this task's layout (e.g. QA-head transfer) before merging.
    dont_load: regexes of params that keep their fresh init.

  Returns:
    ``(state, source)`` with ``source`` one of 'checkpoint', 'init_from', 'fresh'.
  """
  # Newest readable step; damaged ones are moved aside with a warning (preemption.py).
  restored = preemption.restore_latest_valid(
    mngr, lambda step: restore_checkpoint(mngr, step, abstract_state, model_config)
  )
  if restored is not None:
    return restored, "checkpoint"
  state = init_fn()
  if load_init_params is None:
    logging.info("No checkpoint in %s and no init_from: fresh init.", mngr.directory)
    return state, "fresh"
  loaded = load_init_params()
  params = adapt(loaded) if adapt is not None else loaded.params
  merged = merge_params(jax.device_get(state.params), params, dont_load, loaded.source)
  return state.replace(params=jax.device_put(merged, jax.local_devices()[0])), "init_from"


def init_params_loader(init_params, init_from: str, family: str, model_config: LxmertConfig):
  """The params-only source of the restore order: in-memory params, else ``init_from``.

  Args:
    init_params: None, a :class:`LoadedParams`, an object with ``params`` / ``model_config`` /
      ``answers`` (``train.TrainResult``), or a bare param tree.
    init_from: ``config.init_from`` ('' = none).
    family: ``lxmert_jax.models.tasks`` family of the run (for external checkpoints).
    model_config: the run's model config.

  Returns:
    A function returning :class:`LoadedParams`, or None when there is nothing to load.
  """
  if init_params is None and not init_from:
    return None

  def load() -> LoadedParams:
    if isinstance(init_params, LoadedParams):
      return init_params
    if hasattr(init_params, "params") and hasattr(init_params, "model_config"):
      answers = list(getattr(init_params, "answers", None) or []) or None
      return LoadedParams(init_params.params, init_params.model_config, answers, "in-memory params")
    if init_params is not None:
      return LoadedParams(init_params, None, None, "in-memory params")
    return load_params(init_from, family, model_config)

  return load


def qa_head_adapter(*, transfer: bool, answers: Sequence[str], init_answers: str = ""):
  """Maps loaded params to the run's layout before merging (the ``adapt`` of the restore order).

  A bare backbone tree (transformers ``LxmertModel``) is put under ``lxmert``. With ``transfer``
  the QA head is rebuilt answer by answer for ``answers`` (original ``load_lxmert_qa``): the
  source answer table comes from the checkpoint, else from the ``init_answers`` JSON file.
  """

  def adapt(loaded: LoadedParams) -> dict:
    from lxmert_jax import answers as answers_lib

    params = dict(loaded.params)
    if "lxmert" not in params:
      params = {"lxmert": params}
    head = params.get("answer_head")
    if not (transfer and answers and head):
      return params
    src_answers = loaded.answers
    if src_answers is None and init_answers:
      src_answers = answers_lib.load_answer_vocab(init_answers)
    if src_answers is None:
      raise ValueError(
        f"config.transfer_answer_head needs the answer table of {loaded.source}; set "
        "config.init_answers to it (e.g. all_ans.json of the original pretraining data)"
      )
    new_fc, carried = answers_lib.transfer_answer_head_params(
      head["logit_fc"], src_answers, answers, final_layer="3"
    )
    logging.info(
      "QA head: %d of %d answers transferred from the %d-answer head of %s.",
      carried,
      len(answers),
      len(src_answers),
      loaded.source,
    )
    params["answer_head"] = {"logit_fc": new_fc}
    return params

  return adapt
