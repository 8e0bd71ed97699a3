"""GQA accuracy: exact string match, split into binary and open questions (spec section 4.2).

Binary/open rule, in order of preference:

1. An explicit ``'binary'``/``'open'`` type is used as given.
2. A GQA structural type follows the official ``eval.py``: ``'query'`` is open, every other
   structural type (``verify``, ``logical``, ``choose``, ``compare``) is binary. So "choose"
   questions ("red or blue?") are binary although their answers are not yes/no.
3. Our record schema's ``answer_type`` index: 0 (``'yes/no'``) is binary, 1 and 2 are open.
4. Without any type (-1 or None), binary iff the gold answer is "yes" or "no". This misfiles
   "choose" questions as open; prefer storing the structural type.
"""

from __future__ import annotations

from collections import defaultdict

GQA_STRUCTURAL_TYPES = frozenset({"query", "verify", "logical", "choose", "compare"})


def gqa_question_kind(answer: str, question_type: str | int | None = None) -> str:
  """``'binary'`` or ``'open'`` for one question (module docstring gives the rule)."""
  if isinstance(question_type, str):
    if question_type in ("binary", "open"):
      return question_type
    if question_type in GQA_STRUCTURAL_TYPES:
      return "open" if question_type == "query" else "binary"
    raise ValueError(
      f"unknown GQA question type {question_type!r}; expected binary/open or one of "
      f"{sorted(GQA_STRUCTURAL_TYPES)}"
    )
  if question_type is not None and int(question_type) >= 0:
    return "binary" if int(question_type) == 0 else "open"
  return "binary" if answer in ("yes", "no") else "open"


class GQAAccuracy:
  """Host-side accumulator: exact match (the original's ``{answer: 1.0}`` label dict)."""

  def __init__(self):
    self._sum = defaultdict(float)
    self._count = defaultdict(int)

  def add(self, prediction: str, answer: str, question_type: str | int | None = None) -> float:
    """Scores one question; returns 1.0 or 0.0."""
    score = float(prediction == answer)
    for key in ("overall", gqa_question_kind(answer, question_type)):
      self._sum[key] += score
      self._count[key] += 1
    return score

  def result(self) -> dict[str, float]:
    """``{'overall', 'binary', 'open'}`` accuracies in [0, 1] (present keys only) + 'count'."""
    out = {k: self._sum[k] / self._count[k] for k in self._count}
    out["count"] = self._count["overall"]
    return out
