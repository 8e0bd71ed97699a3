"""The PyTorch side of the side-by-side benchmark: transformers' ``LxmertForPreTraining``.

The train step is what a PyTorch user of transformers would write for LXMERT pretraining:
forward with every label (MLM, matching, obj/attr CE, feature regression, QA), backward,
global-norm clipping at 1.0 (the original pretraining clip) and ``torch.optim.AdamW`` with the
original hyper-parameters (lr 1e-4, eps 1e-6, weight decay 0.01). Inference runs the backbone
and every pretraining head (MLM logits at all positions, matching, QA and the object head),
which is the same work as our model's ``__call__``; transformers' ``forward`` skips the object
head without labels, so it is called explicitly.

bf16: ``torch.autocast('cpu', torch.bfloat16)`` around forward and loss (weights stay float32),
which sends the matmuls to oneDNN's bf16 kernels (AVX512_BF16 here; AMX on CPUs that have it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import numpy as np

from lxmert_jax.models.config import LxmertConfig

HF_IGNORE = -100  # transformers' CrossEntropyLoss default; the synthetic batch uses -1.


def build(config: LxmertConfig, seed: int = 0, fused_adamw: bool = False):
  """Random-init transformers ``LxmertForPreTraining`` and its AdamW optimizer."""
  import torch
  import transformers

  torch.manual_seed(seed)
  hf_config = transformers.LxmertConfig(**config.to_hf_dict())
  model = transformers.LxmertForPreTraining(hf_config)
  optimizer = torch.optim.AdamW(
    model.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01, fused=fused_adamw or None
  )
  return model, optimizer


def to_torch(targets: Mapping[str, np.ndarray]) -> dict:
  """Our synthetic batch (ignore index -1) -> transformers' keyword arguments (-100)."""
  import torch

  t = {k: torch.from_numpy(np.asarray(v)) for k, v in targets.items()}

  def ignore(x):
    return torch.where(x == -1, HF_IGNORE, x).long()

  return {
    "inputs": {
      "input_ids": t["input_ids"].long(),
      "visual_feats": t["visual_feats"],
      "visual_pos": t["visual_pos"],
      "attention_mask": t["attention_mask"].long(),
      "token_type_ids": t["token_type_ids"].long(),
    },
    "labels": {
      "labels": ignore(t["lm_labels"]),
      "matched_label": t["matched_label"].long(),
      "ans": ignore(t["ans"]),
      "obj_labels": {
        "obj": (ignore(t["obj_labels"]), t["obj_confs"]),
        "attr": (ignore(t["attr_labels"]), t["attr_confs"]),
        "feat": (t["feat_targets"], t["feat_mask"]),
      },
    },
  }


def _autocast(dtype: str):
  import torch

  if dtype == "bfloat16":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  if dtype != "float32":
    raise ValueError(f"compute dtype must be float32 or bfloat16, got {dtype!r}")
  return contextlib.nullcontext()


def make_train_step(model, optimizer, batch: Mapping, dtype: str = "float32", clip: float = 1.0):
  """A zero-argument callable running one full pretraining update; returns the loss (float)."""
  import torch

  model.train()  # Dropout on, as in pretraining.
  params = [p for p in model.parameters() if p.requires_grad]

  def step() -> float:
    optimizer.zero_grad(set_to_none=True)
    with _autocast(dtype):
      loss = model(**batch["inputs"], **batch["labels"]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return loss.item()  # Synchronises nothing extra on CPU; keeps the value observable.

  return step


def make_forward(model, batch: Mapping, dtype: str = "float32") -> Callable[[], object]:
  """A zero-argument callable running inference with every pretraining head."""
  import torch

  model.eval()

  def forward():
    with torch.inference_mode(), _autocast(dtype):
      out = model.lxmert(**batch["inputs"])
      lang, visn, pooled = out.language_output, out.vision_output, out.pooled_output
      mlm, matched = model.cls(lang, pooled)
      return mlm, matched, model.answer_head(pooled), model.obj_predict_head(visn)

  return forward
