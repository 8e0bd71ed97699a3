"""The explicit Flax <-> PyTorch name table for LXMERT weights (spec 6).

Torch names are *canonical*: transformers' ``LxmertForPreTraining`` names, i.e. the backbone under
``lxmert.`` and the heads as ``cls.*``, ``obj_predict_head.*``, ``answer_head.logit_fc.{0,2,3}.*``.
``from_pytorch.canonicalize_keys`` maps every supported source (transformers ``LxmertModel``
without prefix, original ``module.bert.*``, fine-tuned ``lxrt_encoder.model.bert.*`` +
``logit_fc.*``) onto these names; the NLVR2 ``logit_fc`` also becomes ``answer_head.logit_fc``.

Flax paths are the param tree of ``models.tasks.build_model(config, task)``: the backbone sits
under ``lxmert/`` for every task except ``backbone`` (whose tree *is* the backbone).

Transforms (per module kind):
  dense      kernel [in, out] <-> weight [out, in] (transposed); bias <-> bias
  layer_norm scale <-> weight; bias <-> bias
  embedding  embedding [num, hidden] <-> weight (unchanged)
  param      a bare parameter, copied (only ``cls.predictions.bias``)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lxmert_jax.models.config import LxmertConfig

DENSE, LAYER_NORM, EMBEDDING, PARAM = "dense", "layer_norm", "embedding", "param"
TRANSPOSE, COPY = "transpose", "copy"

# kind -> ((flax leaf, torch leaf, transform), ...)
LEAVES = {
  DENSE: (("kernel", "weight", TRANSPOSE), ("bias", "bias", COPY)),
  LAYER_NORM: (("scale", "weight", COPY), ("bias", "bias", COPY)),
  EMBEDDING: (("embedding", "weight", COPY),),
  PARAM: ((None, None, COPY),),
}

# ---- Backbone: (flax module path, torch module path, kind), relative to the backbone root. ----
EMBEDDINGS = (
  ("embeddings/word_embeddings", "embeddings.word_embeddings", EMBEDDING),
  ("embeddings/position_embeddings", "embeddings.position_embeddings", EMBEDDING),
  ("embeddings/token_type_embeddings", "embeddings.token_type_embeddings", EMBEDDING),
  ("embeddings/LayerNorm", "embeddings.LayerNorm", LAYER_NORM),
)
VISUAL_FEATURE_ENCODER = (
  ("encoder/visn_fc/visn_fc", "encoder.visn_fc.visn_fc", DENSE),
  ("encoder/visn_fc/visn_layer_norm", "encoder.visn_fc.visn_layer_norm", LAYER_NORM),
  ("encoder/visn_fc/box_fc", "encoder.visn_fc.box_fc", DENSE),
  ("encoder/visn_fc/box_layer_norm", "encoder.visn_fc.box_layer_norm", LAYER_NORM),
)


def _attention_sublayer(prefix: str, att: str) -> tuple[tuple[str, str, str], ...]:
  """A self-attention (``att='self'``) or cross-attention (``att='att'``) sub-layer."""
  return (
    (f"{prefix}/{att}/query", f"{prefix}.{att}.query", DENSE),
    (f"{prefix}/{att}/key", f"{prefix}.{att}.key", DENSE),
    (f"{prefix}/{att}/value", f"{prefix}.{att}.value", DENSE),
    (f"{prefix}/output/dense", f"{prefix}.output.dense", DENSE),
    (f"{prefix}/output/LayerNorm", f"{prefix}.output.LayerNorm", LAYER_NORM),
  )


# One BertLayer: language layers `layer.{i}` and object-relationship layers `r_layers.{i}`.
BERT_LAYER = (
  *_attention_sublayer("attention", "self"),
  ("intermediate/dense", "intermediate.dense", DENSE),
  ("output/dense", "output.dense", DENSE),
  ("output/LayerNorm", "output.LayerNorm", LAYER_NORM),
)
# One cross-modality layer `x_layers.{k}`: ONE shared cross-attention, two self-attentions, two FFNs.
X_LAYER = (
  *_attention_sublayer("visual_attention", "att"),
  *_attention_sublayer("lang_self_att", "self"),
  *_attention_sublayer("visn_self_att", "self"),
  ("lang_inter/dense", "lang_inter.dense", DENSE),
  ("lang_output/dense", "lang_output.dense", DENSE),
  ("lang_output/LayerNorm", "lang_output.LayerNorm", LAYER_NORM),
  ("visn_inter/dense", "visn_inter.dense", DENSE),
  ("visn_output/dense", "visn_output.dense", DENSE),
  ("visn_output/LayerNorm", "visn_output.LayerNorm", LAYER_NORM),
)
POOLER = (("pooler/dense", "pooler.dense", DENSE),)

# ---- Heads: absolute paths (they sit beside `lxmert`). ----
PRETRAINING_HEADS = (  # `cls`: MLM (decoder tied to the word embeddings) and matching
  ("cls/predictions/bias", "cls.predictions.bias", PARAM),
  ("cls/predictions/transform/dense", "cls.predictions.transform.dense", DENSE),
  ("cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm", LAYER_NORM),
  ("cls/seq_relationship", "cls.seq_relationship", DENSE),
)
OBJECT_HEAD = (
  ("obj_predict_head/transform/dense", "obj_predict_head.transform.dense", DENSE),
  ("obj_predict_head/transform/LayerNorm", "obj_predict_head.transform.LayerNorm", LAYER_NORM),
  ("obj_predict_head/decoder_dict/obj", "obj_predict_head.decoder_dict.obj", DENSE),
  ("obj_predict_head/decoder_dict/attr", "obj_predict_head.decoder_dict.attr", DENSE),
  ("obj_predict_head/decoder_dict/feat", "obj_predict_head.decoder_dict.feat", DENSE),
)
ANSWER_HEAD = (  # nn.Sequential indices: 0 dense, 1 GELU (no params), 2 LayerNorm, 3 dense
  ("answer_head/logit_fc/0", "answer_head.logit_fc.0", DENSE),
  ("answer_head/logit_fc/2", "answer_head.logit_fc.2", LAYER_NORM),
  ("answer_head/logit_fc/3", "answer_head.logit_fc.3", DENSE),
)

# Head groups by canonical torch prefix, and which groups each task has.
HEAD_GROUPS = {
  "cls": PRETRAINING_HEADS,
  "obj_predict_head": OBJECT_HEAD,
  "answer_head": ANSWER_HEAD,
}
TASK_HEADS = {
  "backbone": (),
  "pretraining": ("cls", "obj_predict_head", "answer_head"),
  "qa": ("answer_head",),
  "nlvr2": ("answer_head",),
}
TASKS = tuple(TASK_HEADS)
BACKBONE_PREFIX = "lxmert."
# Tied duplicate of lxmert.embeddings.word_embeddings.weight in PyTorch state dicts.
TIED_DECODER_KEY = "cls.predictions.decoder.weight"


@dataclasses.dataclass(frozen=True)
class ParamMapping:
  """One parameter: Flax path (tuple of names) <-> canonical torch key, and the transform."""

  flax_path: tuple[str, ...]
  torch_key: str
  transform: str

  def to_flax(self, array: np.ndarray) -> np.ndarray:
    return array.T if self.transform == TRANSPOSE else array

  def to_torch(self, array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.T if self.transform == TRANSPOSE else array)

  def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(flax_shape)) if self.transform == TRANSPOSE else tuple(flax_shape)


def backbone_modules(config: LxmertConfig) -> list[tuple[str, str, str]]:
  """(flax module path, torch module path, kind) for the backbone, relative to its root."""
  modules = [*EMBEDDINGS, *VISUAL_FEATURE_ENCODER]
  for stack, torch_stack, count, block in (
    ("layer", "layer", config.l_layers, BERT_LAYER),
    ("r_layers", "r_layers", config.r_layers, BERT_LAYER),
    ("x_layers", "x_layers", config.x_layers, X_LAYER),
  ):
    for i in range(count):
      for flax_sub, torch_sub, kind in block:
        modules.append(
          (f"encoder/{stack}_{i}/{flax_sub}", f"encoder.{torch_stack}.{i}.{torch_sub}", kind)
        )
  modules.extend(POOLER)
  return modules


def param_table(config: LxmertConfig, task: str) -> list[ParamMapping]:
  """Every parameter of ``build_model(config, task)`` with its canonical torch key."""
  if task not in TASK_HEADS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  flax_root = () if task == "backbone" else ("lxmert",)
  modules = [
    (flax_root + tuple(f.split("/")), BACKBONE_PREFIX + t, kind)
    for f, t, kind in backbone_modules(config)
  ]
  for group in TASK_HEADS[task]:
    modules.extend((tuple(f.split("/")), t, kind) for f, t, kind in HEAD_GROUPS[group])

  table = []
  for flax_path, torch_module, kind in modules:
    for flax_leaf, torch_leaf, transform in LEAVES[kind]:
      if flax_leaf is None:
        table.append(ParamMapping(flax_path, torch_module, transform))
      else:
        table.append(
          ParamMapping(flax_path + (flax_leaf,), f"{torch_module}.{torch_leaf}", transform)
        )
  return table


def head_group_of(torch_key: str) -> str | None:
  """The head group a canonical key belongs to, or None for backbone/unknown keys."""
  for group in HEAD_GROUPS:
    if torch_key.startswith(group + "."):
      return group
  return None
