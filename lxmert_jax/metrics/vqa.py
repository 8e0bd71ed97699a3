"""VQA accuracy: the official 10-annotator metric and the original's soft-score evaluator.

The official metric (GT-Vision-Lab ``vqaEval.py``, reimplemented from its documented
behaviour), per question:

1. The prediction: newlines/tabs -> spaces, strip, :func:`process_punctuation`, then
   :func:`process_digit_article`.
2. The 10 human answers are compared verbatim when all 10 are identical; when annotators
   disagree each is passed through :func:`process_punctuation` only (the official script does
   NOT apply the digit/article step to the ground truth).
3. For each annotator i, acc_i = min(1, #{j != i : gt_j == prediction} / 3); the question's
   accuracy is the mean of the 10 acc_i. With k matching annotators out of 10 this is
   (k * min((k - 1) / 3, 1) + (10 - k) * min(k / 3, 1)) / 10, i.e. 0.3 k for k <= 3, 1 above.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

# Replaced by '' if it touches a space (or the text has a digit,digit comma), else by ' '.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@")
_PUNCT += ("`", ",", "?", "!")
# A comma between two digits ("1,000") switches every punctuation mark to deletion.
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# A period not followed by a digit is deleted ("3.5" keeps its point). The official
# pattern's look-behind is mistyped as a look-ahead, so a preceding digit does not matter.
_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (= 32) as ``count``: at most 32 periods are removed.
_PERIOD_MAX_COUNT = 32
NUMBER_WORDS = {
  "none": "0",
  "zero": "0",
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
}
ARTICLES = frozenset({"a", "an", "the"})
# The official contraction table as "written-without-apostrophe -> canonical" pairs. Keys with
# capitals (Im, Ive, Id've, I'dve) can never match because words are lowercased first;
# "somebody'd" -> "somebodyd" is reversed in the official table and kept as is.
_CONTRACTIONS_TEXT = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's
howd how'd|howll how'll|hows how's|Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't
itd it'd|itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't
mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've
neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at
'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll
somebodys somebody's|someoned someone'd|someoned've someone'd've|someone'dve someone'd've
someonell someone'll|someones someone's|somethingd something'd|somethingd've something'd've
something'dve something'd've|somethingll something'll|thats that's|thered there'd
thered've there'd've|there'dve there'd've|therere there're|theres there's|theyd they'd
theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll
whatre what're|whats what's|whatve what've|whens when's|whered where'd|wheres where's
whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've
wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll
y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd
youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(
  item.split() for item in _CONTRACTIONS_TEXT.replace("\n", "|").split("|") if item.strip()
)
ANSWER_TYPES = ("yes/no", "number", "other")


def process_punctuation(text: str) -> str:
  """The official punctuation step: delete or space out marks, then drop bare periods."""
  out = text
  delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
  for p in _PUNCT:
    # Decisions look at the ORIGINAL text, replacements apply to the running output.
    if delete_all or (p + " " in text) or (" " + p in text):
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, count=_PERIOD_MAX_COUNT)


def process_digit_article(text: str) -> str:
  """The official word step: lowercase, number words -> digits, drop articles, contractions."""
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
  return " ".join(words)


def normalize_prediction(answer: str) -> str:
  """Full official normalisation of a predicted answer."""
  answer = answer.replace("\n", " ").replace("\t", " ").strip()
  return process_digit_article(process_punctuation(answer))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
  """Official accuracy of one prediction against the human answers (usually 10), in [0, 1]."""
  if not gt_answers:
    raise ValueError("a VQA question needs at least one ground-truth answer")
  pred = normalize_prediction(prediction)
  gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in gt_answers]
  if len(set(gts)) > 1:
    gts = [process_punctuation(a) for a in gts]
  matches = sum(a == pred for a in gts)
  total = 0.0
  for a in gts:
    others = matches - (a == pred)  # leave annotator i out
    total += min(1.0, others / 3.0)
  return total / len(gts)


class VQAAccuracy:
  """Host-side accumulator of the official VQA metric with the per-answer-type breakdown."""

  def __init__(self):
    self._sum = defaultdict(float)
    self._count = defaultdict(int)
    self.per_question: dict = {}

  def add(
    self,
    question_id,
    prediction: str,
    gt_answers: Sequence[str],
    answer_type: str | int | None = None,
  ) -> float:
    """Scores one question.

    Args:
      question_id: any hashable id; each question may be scored once.
      prediction: the predicted answer string.
      gt_answers: the human answers (10 in VQA v2).
      answer_type: 'yes/no', 'number' or 'other', or the record schema's index into
        ``ANSWER_TYPES`` (-1 / None = unknown: counted in 'overall' only).
    """
    if question_id in self.per_question:
      raise ValueError(f"question {question_id!r} scored twice")
    if answer_type is not None and not isinstance(answer_type, str):
      answer_type = ANSWER_TYPES[int(answer_type)] if int(answer_type) >= 0 else None
    acc = vqa_accuracy(prediction, gt_answers)
    self.per_question[question_id] = acc
    for key in ("overall", answer_type):
      if key is not None:
        self._sum[key] += acc
        self._count[key] += 1
    return acc

  def result(self) -> dict[str, float]:
    """``{'overall': acc, <answer type>: acc, ..., 'count': n}``, accuracies in [0, 1]."""
    out = {k: self._sum[k] / self._count[k] for k in self._count}
    out["count"] = self._count["overall"]
    return out


def soft_scores(
  pred_labels: np.ndarray, answer_ids: np.ndarray, answer_scores: np.ndarray
) -> np.ndarray:
  """Per-example soft score of the predicted label (``VQAEvaluator.evaluate`` of the original).

  score = target score of the predicted label if it is among the example's answers, else 0.
  Uses only array operators, so it also runs on jax arrays inside a jitted eval step.

  Args:
    pred_labels: [batch] argmax labels.
    answer_ids: [batch, K] answer ids, -1 = padding.
    answer_scores: [batch, K] soft scores.

  Returns:
    [batch] scores.
  """
  hit = (answer_ids == pred_labels[:, None]) & (answer_ids >= 0)
  return (hit * answer_scores).max(axis=-1)


class SoftScoreAccuracy:
  """Host-side accumulator of the original's soft-score accuracy (mean of label[pred])."""

  def __init__(self):
    self.total = 0.0
    self.count = 0

  def add_batch(
    self,
    pred_labels: np.ndarray,
    answer_ids: np.ndarray,
    answer_scores: np.ndarray,
    example_mask: np.ndarray | None = None,
  ) -> None:
    scores = soft_scores(np.asarray(pred_labels), np.asarray(answer_ids), np.asarray(answer_scores))
    weights = np.ones_like(scores) if example_mask is None else np.asarray(example_mask, float)
    self.total += float(np.sum(scores * weights))
    self.count += int(np.sum(weights))

  def add(self, prediction: str, label: Mapping[str, float]) -> float:
    """One question by answer string: ``label`` maps answer -> soft score."""
    score = float(label.get(prediction, 0.0))
    self.total += score
    self.count += 1
    return score

  def result(self) -> float:
    return self.total / self.count if self.count else 0.0
