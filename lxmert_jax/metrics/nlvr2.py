"""NLVR2 accuracy and consistency (spec section 4.3).

Consistency follows ``lil-lab/nlvr``'s ``nlvr2/eval/metrics.py``: an identifier
``split-setId-pairIdx-sentIdx`` (e.g. ``dev-850-0-1``) is grouped with its third dash field
(the image-pair index) blanked, so all image pairs judged against the same sentence form one
group; consistency is the fraction of groups whose examples are all correct.
"""

from __future__ import annotations

from collections import defaultdict


def consistency_group(identifier: str) -> str:
  """``'dev-850-0-1'`` -> ``'dev-850--1'``: the key shared by one sentence's image pairs."""
  parts = identifier.split("-")
  if len(parts) < 3:
    raise ValueError(
      f"NLVR2 identifier {identifier!r} needs dash-separated fields "
      "split-setId-pairIdx-sentIdx (the third one is blanked)"
    )
  parts[2] = ""
  return "-".join(parts)


class NLVR2Accuracy:
  """Host-side accumulator of NLVR2 accuracy and consistency."""

  def __init__(self):
    self.correct: dict[str, bool] = {}

  def add(self, identifier: str, prediction: int | bool, label: int | bool) -> bool:
    """Scores one example; ``prediction``/``label`` are 1/True or 0/False."""
    if identifier in self.correct:
      raise ValueError(f"NLVR2 example {identifier!r} scored twice")
    consistency_group(identifier)  # validates the identifier early
    self.correct[identifier] = bool(prediction) == bool(label)
    return self.correct[identifier]

  def result(self) -> dict[str, float]:
    """``{'accuracy', 'consistency', 'count', 'groups'}``, rates in [0, 1]."""
    if not self.correct:
      return {"accuracy": 0.0, "consistency": 0.0, "count": 0, "groups": 0}
    groups: dict[str, bool] = defaultdict(lambda: True)
    for identifier, ok in self.correct.items():
      key = consistency_group(identifier)
      groups[key] = groups[key] and ok
    return {
      "accuracy": sum(self.correct.values()) / len(self.correct),
      "consistency": sum(groups.values()) / len(groups),
      "count": len(self.correct),
      "groups": len(groups),
    }
