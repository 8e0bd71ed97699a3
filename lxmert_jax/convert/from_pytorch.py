"""PyTorch LXMERT state dicts (transformers or original airsplay/lxmert) -> Flax params.

Reads ``.pth``/``.bin`` only through ``torch.load(weights_only=True)`` (no arbitrary unpickling)
and ``.safetensors`` through ``safetensors.numpy``. Every problem (missing, unexpected or
wrong-shape weight) is collected and raised once; intentionally dropped keys are reported.

CLI (original checkpoint -> Orbax params + lxmert_config.json)::

  python -m lxmert_jax.convert.from_pytorch --input Epoch20_LXRT.pth --output lxmert_orbax
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

from lxmert_jax.convert import param_map
from lxmert_jax.models.config import LxmertConfig
from lxmert_jax.models.tasks import param_shapes


class WeightLoadError(ValueError):
  """A checkpoint does not fit the model; the message lists every offending name."""


@dataclasses.dataclass
class LoadReport:
  """What a load did: where from, which task/config, and every key it deliberately dropped."""

  source: str
  source_format: str  # 'transformers' | 'original' | 'orbax'
  task: str
  config_source: str  # 'given' | 'config.json' | 'lxmert_config.json' | 'inferred from shapes'
  num_params: int = 0
  dropped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, reason)
  notes: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    lines = [
      f"loaded {self.num_params:,} parameters for task {self.task!r} from {self.source} "
      f"({self.source_format} format; config {self.config_source})"
    ]
    lines += [f"  dropped {key}: {reason}" for key, reason in self.dropped]
    lines += [f"  note: {note}" for note in self.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading files


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A ``torch.save``d state dict -> {key: numpy array}, refusing anything but tensors."""
  import torch  # only needed for .pth/.bin files

  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise WeightLoadError(
      f"{path}: refused to load: the file holds pickled Python objects that are not plain "
      f"tensors, and only weights-only loading is allowed ({first_line})"
    ) from None
  except RuntimeError as e:
    raise WeightLoadError(f"{path}: not a readable PyTorch checkpoint: {e}") from None
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise WeightLoadError(
      f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}"
    )
  state, bad = {}, []
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      bad.append(f"{key} ({type(value).__name__})")
      continue
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float64:
      value = value.float()  # numpy has no bfloat16; float16 -> float32 is exact
    state[str(key)] = value.numpy()
  if bad:
    raise WeightLoadError(f"{path}: entries that are not tensors: {', '.join(bad)}")
  return state


def read_safetensors_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  try:
    return dict(load_file(os.fspath(path)))
  except Exception as e:  # safetensors raises its own error types for corrupt headers
    raise WeightLoadError(f"{path}: not a readable safetensors file: {e}") from None


def read_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """``.safetensors`` via safetensors.numpy; anything else (``.pth``, ``.bin``, ``.pt``) via torch."""
  if os.fspath(path).endswith(".safetensors"):
    return read_safetensors_file(path)
  return read_torch_file(path)


# --------------------------------------------------------------------------- key names

# Original-code prefixes -> canonical (transformers LxmertForPreTraining) prefixes.
_PREFIX_RENAMES = (
  ("lxrt_encoder.model.bert.", param_map.BACKBONE_PREFIX),  # fine-tuned BEST.pth / LAST.pth
  ("bert.", param_map.BACKBONE_PREFIX),  # pre-training *_LXRT.pth
  ("logit_fc.", "answer_head.logit_fc."),  # fine-tuned task head (VQA / GQA / NLVR2)
)
# transformers LxmertModel saves the backbone without prefix.
_BARE_BACKBONE = ("embeddings.", "encoder.", "pooler.")


def canonicalize_keys(
  state: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]], str, dict[str, str]]:
  """Renames any supported key style to the canonical names of ``param_map``.

  Returns:
    (canonical state, dropped [(original key, reason)], source format 'original'|'transformers',
    canonical key -> original key).
  """
  canonical, dropped, original, origin = {}, [], False, {}
  for key, value in state.items():
    parts = key.split(".")
    if "module" in parts:  # nn.DataParallel wrapper, anywhere (also lxrt_encoder.model.module.bert)
      parts = [p for p in parts if p != "module"]
      original = True
    name = ".".join(parts)
    for old, new in _PREFIX_RENAMES:
      if name.startswith(old):
        name = new + name[len(old) :]
        original = True
        break
    else:
      if name.startswith(_BARE_BACKBONE):
        name = param_map.BACKBONE_PREFIX + name
    if name.endswith("position_ids"):
      dropped.append((key, "index buffer, not a parameter"))
      continue
    if name in canonical:
      raise WeightLoadError(f"two checkpoint keys map to the same weight {name!r} (one is {key!r})")
    canonical[name] = value
    origin[name] = key
  return canonical, dropped, "original" if original else "transformers", origin


def infer_task(canonical: Mapping[str, np.ndarray]) -> str:
  """'pretraining' if MLM/object heads exist, else 'qa'/'nlvr2' by answer-head width, else 'backbone'."""
  groups = {param_map.head_group_of(k) for k in canonical} - {None}
  if groups & {"cls", "obj_predict_head"}:
    return "pretraining"
  if "answer_head" in groups:
    first = canonical.get("answer_head.logit_fc.0.weight")
    words = canonical.get("lxmert.embeddings.word_embeddings.weight")
    if first is not None and words is not None and first.shape[1] == 2 * words.shape[1]:
      return "nlvr2"  # the NLVR2 head reads two concatenated pooled vectors
    return "qa"
  return "backbone"


def _num_layers(canonical: Mapping[str, Any], stack: str) -> int:
  pattern = re.compile(rf"^lxmert\.encoder\.{stack}\.(\d+)\.")
  indices = [int(m.group(1)) for k in canonical if (m := pattern.match(k))]
  return max(indices) + 1 if indices else 0


def infer_config(
  canonical: Mapping[str, np.ndarray], task: str, base: LxmertConfig | None = None
) -> LxmertConfig:
  """Reads every size that the tensor shapes determine; the rest comes from ``base`` (LXMERT-base).

  The head count is not visible in the shapes: it is taken from ``base`` and only trusted when
  the hidden size equals ``base``'s. The shapes are checked in full afterwards by the conversion.
  """
  base = base or LxmertConfig()
  shape = {k: v.shape for k, v in canonical.items()}
  p = param_map.BACKBONE_PREFIX

  def get(key, dim):
    return shape[key][dim] if key in shape else None

  sizes = {
    "vocab_size": get(p + "embeddings.word_embeddings.weight", 0),
    "hidden_size": get(p + "embeddings.word_embeddings.weight", 1),
    "max_position_embeddings": get(p + "embeddings.position_embeddings.weight", 0),
    "type_vocab_size": get(p + "embeddings.token_type_embeddings.weight", 0),
    "visual_feat_dim": get(p + "encoder.visn_fc.visn_fc.weight", 1),
    "visual_pos_dim": get(p + "encoder.visn_fc.box_fc.weight", 1),
    "num_object_labels": get("obj_predict_head.decoder_dict.obj.weight", 0),
    "num_attr_labels": get("obj_predict_head.decoder_dict.attr.weight", 0),
  }
  if task in ("pretraining", "qa"):
    sizes["num_qa_labels"] = get("answer_head.logit_fc.3.weight", 0)
  intermediate = [
    v[0]
    for k, v in shape.items()
    if k.endswith(("intermediate.dense.weight", "_inter.dense.weight"))
  ]
  sizes["intermediate_size"] = intermediate[0] if intermediate else None
  for field, stack in (("l_layers", "layer"), ("r_layers", "r_layers"), ("x_layers", "x_layers")):
    sizes[field] = _num_layers(canonical, stack)
  sizes = {k: int(v) for k, v in sizes.items() if v is not None}
  if sizes.get("hidden_size", base.hidden_size) != base.hidden_size:
    raise WeightLoadError(
      f"checkpoint hidden size is {sizes['hidden_size']} but the number of attention heads cannot "
      f"be read from weights; pass config= (an LxmertConfig, dict or config.json path; "
      f"--config on the command line)"
    )
  return base.replace(**sizes)


# --------------------------------------------------------------------------- conversion


def _shape_str(shape) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def state_dict_to_params(
  canonical: Mapping[str, np.ndarray],
  config: LxmertConfig,
  task: str,
  source: str = "checkpoint",
  origin: Mapping[str, str] | None = None,
) -> tuple[dict, list[tuple[str, str]], list[str]]:
  """Canonical torch state -> Flax params for ``build_model(config, task)``.

  ``origin`` (canonical -> checkpoint key) lets messages name keys as the checkpoint spells them.

  Returns:
    (params nested dict of float32 numpy arrays, dropped [(key, reason)], notes).

  Raises:
    WeightLoadError: listing every missing, unexpected and wrong-shape weight.
  """
  table = param_map.param_table(config, task)
  expected = traverse_util.flatten_dict(param_shapes(config, task))
  table_paths = {m.flax_path for m in table}
  if table_paths != set(expected):  # programming error: the table and the modules disagree
    raise AssertionError(
      f"param_map table and model tree differ: only in table {sorted(table_paths - set(expected))}, "
      f"only in model {sorted(set(expected) - table_paths)}"
    )

  origin = origin or {}

  def named(key):
    return key if origin.get(key, key) == key else f"{origin[key]} (= {key})"

  flat, missing, wrong, dropped, notes = {}, [], [], [], []
  for m in table:
    want = m.torch_shape(expected[m.flax_path].shape)
    if m.torch_key not in canonical:
      missing.append(f"  {m.torch_key} (expected shape {_shape_str(want)})")
      continue
    array = np.asarray(canonical[m.torch_key])
    if tuple(array.shape) != want:
      wrong.append(
        f"  {named(m.torch_key)}: checkpoint shape {_shape_str(array.shape)}, "
        f"model expects {_shape_str(want)}"
      )
      continue
    flat[m.flax_path] = np.asarray(m.to_flax(array), np.float32)

  known = {m.torch_key for m in table}
  unexpected = []
  for key in sorted(set(canonical) - known):
    group = param_map.head_group_of(key)
    if key == param_map.TIED_DECODER_KEY:
      words = canonical.get(param_map.BACKBONE_PREFIX + "embeddings.word_embeddings.weight")
      dropped.append((key, "tied to lxmert.embeddings.word_embeddings.weight"))
      if words is not None and (
        words.shape != canonical[key].shape or not np.array_equal(words, canonical[key])
      ):
        notes.append(
          f"{key} differs from the word embeddings; the tied table was used (as transformers does)"
        )
    elif group is not None and group not in param_map.TASK_HEADS[task]:
      dropped.append((key, f"{group} head is not part of task {task!r}"))
    else:
      unexpected.append(f"  {named(key)} (shape {_shape_str(canonical[key].shape)})")

  if missing or wrong or unexpected:
    parts = [f"{source} does not fit the LXMERT {task!r} model ({_config_summary(config)}):"]
    if missing:
      parts += [f"missing weights ({len(missing)}):", *missing]
    if wrong:
      parts += [f"wrong-shape weights ({len(wrong)}):", *wrong]
    if unexpected:
      parts += [f"unexpected weights ({len(unexpected)}):", *unexpected]
    raise WeightLoadError("\n".join(parts))
  return traverse_util.unflatten_dict(flat), dropped, notes


def _config_summary(config: LxmertConfig) -> str:
  return (
    f"hidden {config.hidden_size}, layers l/r/x {config.l_layers}/{config.r_layers}/"
    f"{config.x_layers}, vocab {config.vocab_size}, num_qa_labels {config.num_qa_labels}"
  )


def convert_state_dict(
  state: Mapping[str, np.ndarray],
  *,
  config: Any = None,
  task: str | None = None,
  source: str = "checkpoint",
  config_source: str | None = None,
) -> tuple[dict, LxmertConfig, LoadReport]:
  """Any supported PyTorch state dict -> (Flax params, config, report).

  Args:
    state: torch key -> array (transformers, original pre-training or fine-tuned names).
    config: anything ``LxmertConfig.coerce`` accepts; None infers sizes from the shapes.
    task: 'backbone' | 'pretraining' | 'qa' | 'nlvr2'; None infers it from the heads present.
      Heads the task does not use are dropped and reported.
    source: name used in messages (usually the file path).
    config_source: how ``config`` was obtained, for the report.
  """
  canonical, dropped, source_format, origin = canonicalize_keys(state)
  task = task or infer_task(canonical)
  if task not in param_map.TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {param_map.TASKS}")
  if config is None:
    config, config_source = infer_config(canonical, task), "inferred from shapes"
  else:
    config, config_source = LxmertConfig.coerce(config), config_source or "given"
  params, more_dropped, notes = state_dict_to_params(canonical, config, task, source, origin)
  report = LoadReport(
    source=source,
    source_format=source_format,
    task=task,
    config_source=config_source,
    num_params=sum(int(np.prod(x.shape)) for x in traverse_util.flatten_dict(params).values()),
    # Report dropped keys under the names the checkpoint used.
    dropped=dropped + [(origin.get(key, key), reason) for key, reason in more_dropped],
    notes=notes,
  )
  logging.info("%s", report)
  return params, config, report


def main(argv: list[str] | None = None) -> None:
  """Converts a PyTorch checkpoint into this project's Orbax params directory."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--input", required=True, help="*.pth, *.bin, *.safetensors or a transformers directory"
  )
  parser.add_argument(
    "--output", required=True, help="new directory for Orbax params + lxmert_config.json"
  )
  parser.add_argument(
    "--task", default=None, choices=param_map.TASKS, help="default: inferred from the heads"
  )
  parser.add_argument("--config", default=None, help="config.json (default: inferred from shapes)")
  args = parser.parse_args(argv)

  from lxmert_jax.pretrained import load_pretrained, save_params_orbax

  if os.path.exists(args.output):
    raise SystemExit(f"error: --output {args.output} already exists")
  try:
    loaded = load_pretrained(args.input, config=args.config, task=args.task)
  except (ValueError, FileNotFoundError) as e:  # WeightLoadError is a ValueError; under
    # `python -m` this module runs as __main__, so its own WeightLoadError class is a copy.
    raise SystemExit(f"error: {e}") from None
  save_params_orbax(loaded, args.output)
  print(loaded.load_report)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
