"""``<workdir>/losses.jsonl``: the training loss of every step, exact across kills and resumes.

One JSON line ``{"step": s, "loss": x}`` per train step, written by host 0 only. A run that
resumes from the checkpoint of step ``k`` first rewrites the file to its lines with
``step <= k`` (atomically: temp file + rename), so lines a killed run wrote after its last
checkpoint, and a line torn by the kill, are dropped before the resumed run logs those steps
again. The file of a run killed and resumed any number of times therefore equals the file of a
run that never stopped (``tests/test_faults.py`` checks it). The workdir may be local or a
``gs://`` URL (``lxmert_jax.gfile``); on GCS each append rewrites the object, which holds one
short line per step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import logging

from lxmert_jax import gfile

FILE_NAME = "losses.jsonl"


def read(path: str) -> list[dict]:
  """The complete lines of a losses file; a torn last line (killed mid-write) is left out."""
  if not gfile.exists(path):
    return []
  rows = []
  with gfile.open(path) as f:
    for number, line in enumerate(f, 1):
      try:
        row = json.loads(line)
        rows.append({"step": int(row["step"]), "loss": float(row["loss"])})
      except (ValueError, KeyError, TypeError):
        logging.warning(
          "%s line %d is incomplete (a run was killed while writing it); "
          "dropping it and every line after it.",
          path,
          number,
        )
        break
  return rows


class StepLog:
  """Appends per-step losses to ``<workdir>/losses.jsonl`` (a no-op on hosts other than 0)."""

  def __init__(self, workdir: str, start_step: int, *, primary: bool = True):
    """Truncates the file to the steps up to ``start_step`` (the restored checkpoint).

    Args:
      workdir: the run's workdir.
      start_step: the step training resumes from (0 for a fresh run).
      primary: whether this process writes (``jax.process_index() == 0``).
    """
    self.path = os.path.join(workdir, FILE_NAME)
    self.primary = primary
    self.last_step = start_step
    if not primary:
      return
    kept = [r for r in read(self.path) if r["step"] <= start_step]
    steps = [r["step"] for r in kept]
    if start_step and steps != list(range(1, start_step + 1)):
      logging.warning(
        "%s does not hold every step up to the restored step %d (it has %d "
        "lines); the per-step loss record of this run is incomplete.",
        self.path,
        start_step,
        len(steps),
      )
    tmp = self.path + ".tmp"
    with gfile.open(tmp, "w") as f:
      f.write("".join(_line(r["step"], r["loss"]) for r in kept))  # GFile has no writelines.
    gfile.replace(tmp, self.path)

  def append(self, steps: Sequence[int], step_losses: Sequence[float]) -> None:
    """Writes one line per step (steps are taken in increasing order, each once)."""
    if not self.primary or not steps:
      return
    with gfile.open(self.path, "a") as f:
      f.write("".join(_line(s, x) for s, x in zip(steps, step_losses)))
      f.flush()
    self.last_step = steps[-1]


def _line(step: int, loss: float) -> str:
  # repr-exact floats: resumed and uninterrupted runs are compared for equality.
  return json.dumps({"step": int(step), "loss": float(loss)}) + "\n"
