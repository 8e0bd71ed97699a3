"""Prediction files in the formats the VQA, GQA and NLVR2 servers expect (spec section 4).

Each writer goes through a temporary file and an atomic rename, so a crash never leaves a
half-written submission.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


def _atomic_write(path: str | os.PathLike, write) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w", newline="") as f:
    write(f)
  os.replace(tmp, path)


def write_vqa_submission(predictions: Mapping, path: str | os.PathLike) -> None:
  """``[{"question_id": int, "answer": str}, ...]`` from question_id -> answer."""
  rows = []
  for qid, answer in predictions.items():
    try:
      qid = int(qid)
    except (TypeError, ValueError) as e:
      raise ValueError(f"VQA question_id must be an integer, got {qid!r}") from e
    rows.append({"question_id": qid, "answer": str(answer)})
  _atomic_write(path, lambda f: json.dump(rows, f))


def write_gqa_submission(predictions: Mapping, path: str | os.PathLike) -> None:
  """``[{"questionId": str, "prediction": str}, ...]`` from questionId -> answer."""
  rows = [{"questionId": str(qid), "prediction": str(ans)} for qid, ans in predictions.items()]
  _atomic_write(path, lambda f: json.dump(rows, f))


def write_nlvr2_predictions(predictions: Mapping, path: str | os.PathLike) -> None:
  """CSV without header, one ``identifier,True|False`` line per example (1 -> True)."""
  lines = []
  for identifier, pred in predictions.items():
    if int(pred) not in (0, 1):
      raise ValueError(f"NLVR2 prediction for {identifier!r} must be 0/1 or bool, got {pred!r}")
    if "," in str(identifier):
      raise ValueError(f"NLVR2 identifier {identifier!r} contains a comma")
    lines.append(f"{identifier},{bool(int(pred))}\n")
  _atomic_write(path, lambda f: f.writelines(lines))
