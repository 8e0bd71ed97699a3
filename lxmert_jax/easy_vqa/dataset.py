"""easy-VQA splits from the installed ``easy_vqa`` package: questions, answers, images, types.

easy-VQA (PyPI ``easy-vqa``) has 4,000 train / 1,000 test 64x64 RGB PNGs, each with one shape
(circle, rectangle or triangle) in one of 8 colours on a light background, and 38,575 / 9,673
template questions over 13 answers. Every question is about the shape, the colour or both; the
templates are fixed, so :func:`question_topic` parses them exactly and :func:`image_truth`
recovers each image's (shape, colour) from its questions. That truth is used only to *measure*
the pixel detector (tests, probes, diagnostics), never as a label in the records.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

SPLITS = ("train", "test")
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("black", "gray", "red", "green", "blue", "yellow", "teal", "brown")
# Question topics, for per-topic diagnostics beside the Binary / Other / Accuracy table.
TOPICS = ("shape", "color")
BINARY_ANSWERS = ("yes", "no")

_SHAPE = "|".join(SHAPES)
_COLOR = "|".join(COLORS)
# The 24 templates of easy-VQA's generator, as (regex, asks, negated): ``asks`` is what a
# wh-question asks for; yes/no templates are negated ("is there not a ...") or not.
_TEMPLATES = (
  (r"what shape (?:is in the image|is present|does the image contain)\?", "shape", False),
  (rf"what is the (?P<color>{_COLOR}) shape\?", "shape", False),
  (rf"what (?:color is|is the color of) the (?:(?P<shape>{_SHAPE})|shape)\?", "color", False),
  (
    rf"(?:is there a|does the image contain a|is a) (?:(?P<shape>{_SHAPE})|(?P<color>{_COLOR}) "
    rf"shape)(?: in the image)?(?: present)?\?",
    None,
    False,
  ),
  (
    rf"(?:is there not a|does the image not contain a|is no) (?:(?P<shape>{_SHAPE})|"
    rf"(?P<color>{_COLOR}) shape)(?: in the image)?(?: present)?\?",
    None,
    True,
  ),
)
_COMPILED = tuple((re.compile(p), asks, neg) for p, asks, neg in _TEMPLATES)


@dataclasses.dataclass(frozen=True)
class Question:
  """One easy-VQA question.

  Attributes:
    uid: ``"<split>_<index>"``, the question's position in the package's list.
    text: the question as the package gives it (lower case, ends with '?').
    answer: one of the 13 answers.
    image_id: integer image id (the PNG's stem).
  """

  uid: str
  text: str
  answer: str
  image_id: int

  @property
  def is_binary(self) -> bool:
    """True for yes/no questions (the "Binary" column of the results table)."""
    return self.answer in BINARY_ANSWERS

  @property
  def topic(self) -> str:
    """'shape' or 'color': what the question is about (see :func:`question_topic`)."""
    return question_topic(self.text)


@dataclasses.dataclass(frozen=True)
class Split:
  """One easy-VQA split.

  Attributes:
    name: 'train' or 'test'.
    questions: every question, in the package's order.
    image_paths: image id -> PNG path (every image of the split, with or without questions).
  """

  name: str
  questions: tuple[Question, ...]
  image_paths: dict[int, str]

  def questions_by_image(self) -> dict[int, list[Question]]:
    """Image id -> its questions in package order; images without questions map to []."""
    by_image: dict[int, list[Question]] = {i: [] for i in self.image_paths}
    for q in self.questions:
      by_image[q.image_id].append(q)
    return by_image


def _package():
  try:
    import easy_vqa
  except ImportError as e:  # pragma: no cover - the package is a hard dependency
    raise ImportError("the 'easy-vqa' package is required: pip install easy-vqa") from e
  return easy_vqa


def answer_vocab() -> list[str]:
  """The 13 answers in the package's order (``easy_vqa.get_answers()``); id = list index."""
  return list(_package().get_answers())


def load_split(name: str, max_images: int | None = None) -> Split:
  """Reads one split from the installed package.

  Args:
    name: 'train' or 'test'.
    max_images: keep only the ``max_images`` lowest image ids and their questions (smoke runs).

  Raises:
    ValueError: unknown split name, or a question whose image or answer the package lacks.
  """
  if name not in SPLITS:
    raise ValueError(f"easy-VQA split must be one of {SPLITS}, got {name!r}")
  pkg = _package()
  texts, answers, image_ids = getattr(pkg, f"get_{name}_questions")()
  paths = dict(getattr(pkg, f"get_{name}_image_paths")())
  if max_images is not None:
    paths = {i: paths[i] for i in sorted(paths)[:max_images]}
  vocab = set(answer_vocab())
  questions = []
  for i, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids, strict=True)):
    if max_images is not None and image_id not in paths:
      continue  # the question's image was cut by max_images
    if image_id not in paths:
      raise ValueError(
        f"easy-VQA {name} question {i} ({text!r}) refers to missing image {image_id}"
      )
    if answer not in vocab:
      raise ValueError(f"easy-VQA {name} question {i} ({text!r}) has unknown answer {answer!r}")
    questions.append(Question(f"{name}_{i}", text, answer, int(image_id)))
  return Split(name, tuple(questions), paths)


def _parse(text: str):
  for pattern, asks, negated in _COMPILED:
    m = pattern.fullmatch(text.strip())
    if m:
      return m.groupdict().get("shape"), m.groupdict().get("color"), asks, negated
  raise ValueError(f"not an easy-VQA question template: {text!r}")


def question_topic(text: str) -> str:
  """What a question is about: 'shape' or 'color'.

  A wh-question is about what it asks ("what is the red shape?" -> shape); a yes/no question is
  about the attribute it names ("is there a red shape?" -> color, "is there a circle?" -> shape).

  Raises:
    ValueError: if ``text`` is not one of easy-VQA's 24 templates.
  """
  shape, color, asks, _ = _parse(text)
  if asks is not None:
    return asks
  return "shape" if shape is not None else "color"


def image_truth(questions: Sequence[Question]) -> tuple[str | None, str | None]:
  """Recovers an image's (shape, colour) from its questions; None where they do not tell.

  Uses answers of wh-questions, the presuppositions they carry ("what color is the circle?"
  implies a circle), positive yes/no answers, and elimination over negative ones.

  Raises:
    ValueError: if the questions contradict each other.
  """
  known: dict[str, set[str]] = {"shape": set(), "color": set()}
  excluded: dict[str, set[str]] = {"shape": set(), "color": set()}
  for q in questions:
    shape, color, asks, negated = _parse(q.text)
    if asks is not None:  # wh-question: the answer and any named attribute are true
      known[asks].add(q.answer)
      if shape is not None:
        known["shape"].add(shape)
      if color is not None:
        known["color"].add(color)
      continue
    kind, value = ("shape", shape) if shape is not None else ("color", color)
    present = (q.answer == "yes") != negated
    (known if present else excluded)[kind].add(value)
  result = []
  for kind, names in (("shape", SHAPES), ("color", COLORS)):
    if len(known[kind]) > 1 or known[kind] & excluded[kind]:
      raise ValueError(f"contradicting {kind} answers for image {questions[0].image_id}")
    remaining = [n for n in names if n not in excluded[kind]]
    if known[kind]:
      result.append(next(iter(known[kind])))
    elif len(remaining) == 1:
      result.append(remaining[0])
    else:
      result.append(None)
  return result[0], result[1]
