"""Answer vocabularies: ``convert_ans``, load/save, and the pretraining-to-task QA-head transfer.

Spec sections 2.5 (answer table) and 3.5 (``load_lxmert_qa``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# AnswerTable.ANS_CONVERT of the original (spec section 2.5). "a man"/"the man" can never fire
# after the article stripping above them; kept so the table reads like the original.
ANS_CONVERT = {
  "a man": "man",
  "the man": "man",
  "a woman": "woman",
  "the woman": "woman",
  "one": "1",
  "two": "2",
  "three": "3",
  "four": "4",
  "five": "5",
  "six": "6",
  "seven": "7",
  "eight": "8",
  "nine": "9",
  "ten": "10",
  "grey": "gray",
}


def convert_ans(ans: str) -> str:
  """Normalises an answer string the way the pretraining answer table does.

  Lowercase; drop ONE trailing '.'; strip a leading "a ", then "an ", then "the " (each checked
  once, in that order); then map number words one..ten to digits and "grey" to "gray".
  """
  if not ans:
    return ""
  ans = ans.lower()
  if ans[-1] == ".":
    ans = ans[:-1].strip()
  for article in ("a ", "an ", "the "):
    if ans.startswith(article):
      ans = ans[len(article) :].strip()
  return ANS_CONVERT.get(ans, ans)


def _read_json(path: str | os.PathLike) -> Any:
  if not os.path.exists(path):
    raise FileNotFoundError(f"answer vocabulary not found: {path}")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e


def label2ans_from_ans2label(ans2label: Mapping[str, int], where: str = "ans2label") -> list[str]:
  """Inverts ``{answer: label}`` into the label-ordered list, checking labels are 0..n-1."""
  label2ans: list[str | None] = [None] * len(ans2label)
  for ans, label in ans2label.items():
    if not isinstance(label, int) or not 0 <= label < len(ans2label):
      raise ValueError(
        f"{where}: answer {ans!r} has label {label!r}, expected 0..{len(ans2label) - 1}"
      )
    if label2ans[label] is not None:
      raise ValueError(f"{where}: label {label} used by {label2ans[label]!r} and {ans!r}")
    label2ans[label] = ans
  return label2ans  # type: ignore[return-value]


def ans2label_from_label2ans(label2ans: Sequence[str], where: str = "label2ans") -> dict[str, int]:
  """``{answer: label}`` from the label-ordered list, rejecting duplicate answers."""
  ans2label: dict[str, int] = {}
  for label, ans in enumerate(label2ans):
    if not isinstance(ans, str):
      raise ValueError(f"{where}: label {label} is {ans!r}, expected a string")
    if ans in ans2label:
      raise ValueError(f"{where}: answer {ans!r} appears at labels {ans2label[ans]} and {label}")
    ans2label[ans] = label
  return ans2label


def load_answer_vocab(path: str | os.PathLike, dsets: Iterable[str] | None = None) -> list[str]:
  """Loads an answer vocabulary as a label-ordered list (label2ans).

  Accepts the three formats of the original data: a JSON list of strings
  (``trainval_label2ans.json``), a JSON object answer -> label (``trainval_ans2label.json``),
  or the pretraining table ``all_ans.json`` (list of ``{"ans": str, "dsets": [...]}``), which
  ``dsets`` can restrict like ``--qaSets`` (answers used by any of the given datasets).
  Row order is kept verbatim (G21: VQA label 0 is the empty answer).
  """
  data = _read_json(path)
  where = str(path)
  if isinstance(data, dict):
    vocab = label2ans_from_ans2label(data, where)
  elif isinstance(data, list) and all(isinstance(a, dict) for a in data):
    wanted = None if dsets is None else {d.lower().strip() for d in dsets}
    vocab = []
    for i, entry in enumerate(data):
      if "ans" not in entry:
        raise ValueError(f"{where}: entry {i} lacks 'ans': {entry!r}")
      if wanted is None or wanted & set(entry.get("dsets", ())):
        vocab.append(entry["ans"])
  elif isinstance(data, list):
    vocab = list(data)
  else:
    raise ValueError(f"{where}: expected a JSON list or object, got {type(data).__name__}")
  ans2label_from_label2ans(vocab, where)  # validates strings and uniqueness
  return vocab


def save_answer_vocab(label2ans: Sequence[str], path: str | os.PathLike, *, as_dict=False) -> None:
  """Writes label2ans as a JSON list, or as an ans2label object when ``as_dict``.

  Written to a temporary file first so a failure never leaves a half-written vocabulary.
  """
  ans2label = ans2label_from_label2ans(label2ans, str(path))
  payload = ans2label if as_dict else list(label2ans)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f)
  os.replace(tmp, path)


def transfer_answer_head(
  src_kernel: np.ndarray,
  src_bias: np.ndarray,
  src_answers: Sequence[str],
  dst_answers: Sequence[str],
  *,
  convert: Callable[[str], str] = convert_ans,
) -> tuple[np.ndarray, np.ndarray, int]:
  """Rebuilds the last answer-head layer for a new answer vocabulary (``load_lxmert_qa``).

  For each fine-tuning label j with answer a: if ``convert(a)`` is in the pretraining table
  at index k, column j <- column k and bias j <- bias k; otherwise column j and bias j are
  ZERO (not random init). transformers' ``resize_num_qa_labels`` instead keeps the first N
  rows whatever their strings (G10).

  Args:
    src_kernel: [2H, A_src] Flax kernel (in, out) of the pretraining head's last dense.
    src_bias: [A_src].
    src_answers: the A_src pretraining answers (label order).
    dst_answers: the A_dst fine-tuning answers (label2ans).
    convert: normalisation applied to each fine-tuning answer before lookup.

  Returns:
    ``(kernel [2H, A_dst], bias [A_dst], n_carried)``.
  """
  src_kernel, src_bias = np.asarray(src_kernel), np.asarray(src_bias)
  if src_kernel.ndim != 2 or src_kernel.shape[1] != len(src_answers):
    raise ValueError(
      f"source kernel shape {src_kernel.shape} does not match {len(src_answers)} source answers"
    )
  if src_bias.shape != (len(src_answers),):
    raise ValueError(f"source bias shape {src_bias.shape}, expected ({len(src_answers)},)")
  src_index = {ans: k for k, ans in enumerate(src_answers)}
  kernel = np.zeros((src_kernel.shape[0], len(dst_answers)), src_kernel.dtype)
  bias = np.zeros((len(dst_answers),), src_bias.dtype)
  carried = 0
  for j, ans in enumerate(dst_answers):
    k = src_index.get(convert(ans))
    if k is not None:
      kernel[:, j] = src_kernel[:, k]
      bias[j] = src_bias[k]
      carried += 1
  return kernel, bias, carried


def transfer_answer_head_params(
  src_head: Mapping[str, Any],
  src_answers: Sequence[str],
  dst_answers: Sequence[str],
  *,
  final_layer: str = "3",
  convert: Callable[[str], str] = convert_ans,
) -> tuple[dict[str, Any], int]:
  """Answer-head params for a new vocabulary from the pretraining head's params.

  Every sub-module except ``final_layer`` (the 768->1536 dense and the LayerNorm) is copied
  verbatim; ``final_layer``'s ``kernel``/``bias`` are rebuilt by :func:`transfer_answer_head`.

  Args:
    src_head: the ``logit_fc`` params of the pretraining answer head, named by the original
      ``nn.Sequential`` indices as in ``lxmert_jax.models.heads.LxmertAnswerLogitFC``:
      ``{'0': {'kernel', 'bias'}, '2': {'scale', 'bias'}, '3': {'kernel', 'bias'}}``
      (i.e. ``params['answer_head']['logit_fc']``).
    src_answers, dst_answers, convert: see :func:`transfer_answer_head`.
    final_layer: key of the last dense in ``src_head``.

  Returns:
    ``(new head params as numpy arrays, n_carried)``.
  """
  if final_layer not in src_head:
    raise KeyError(f"answer head has no {final_layer!r}; has {sorted(src_head)}")
  last = src_head[final_layer]
  kernel, bias, carried = transfer_answer_head(
    last["kernel"], last["bias"], src_answers, dst_answers, convert=convert
  )
  new_head = {
    name: {k: np.array(v) for k, v in module.items()}
    for name, module in src_head.items()
    if name != final_layer
  }
  new_head[final_layer] = {"kernel": kernel, "bias": bias}
  return new_head, carried
