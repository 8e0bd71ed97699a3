"""easy-VQA question loading, topics and per-image truth (lxmert_jax/easy_vqa/dataset.py)."""

import collections

import pytest

from lxmert_jax.easy_vqa import dataset


@pytest.fixture(scope="module")
def splits():
  return {name: dataset.load_split(name) for name in dataset.SPLITS}


def test_counts_match_the_package_readme(splits):
  # Numbers from easy_vqa/data/README.md: images, questions, yes/no questions, answers.
  expected = {"train": (4000, 38575, 28407), "test": (1000, 9673, 7136)}
  for name, (images, questions, binary) in expected.items():
    split = splits[name]
    assert len(split.image_paths) == images
    assert len(split.questions) == questions
    assert sum(q.is_binary for q in split.questions) == binary
    assert len({q.uid for q in split.questions}) == questions
  assert len(dataset.answer_vocab()) == 13
  assert set(dataset.answer_vocab()) == {*dataset.SHAPES, *dataset.COLORS, "yes", "no"}


def test_every_question_has_a_topic_and_other_answers_match_it(splits):
  for split in splits.values():
    for q in split.questions:
      topic = q.topic
      if not q.is_binary:  # a wh-question's answer is of the kind it asks for
        assert q.answer in (dataset.SHAPES if topic == "shape" else dataset.COLORS), q


@pytest.mark.parametrize(
  "text, topic",
  [
    ("what shape is in the image?", "shape"),
    ("what is the teal shape?", "shape"),
    ("what color is the circle?", "color"),
    ("what is the color of the shape?", "color"),
    ("is there a triangle in the image?", "shape"),
    ("is no red shape present?", "color"),
    ("does the image not contain a rectangle?", "shape"),
    ("is a gray shape present?", "color"),
  ],
)
def test_question_topic(text, topic):
  assert dataset.question_topic(text) == topic


def test_unknown_template_raises():
  with pytest.raises(ValueError, match="not an easy-VQA question template"):
    dataset.question_topic("how many shapes are there?")


def _q(text, answer):
  return dataset.Question("x", text, answer, 0)


def test_image_truth_uses_answers_presuppositions_and_elimination():
  assert dataset.image_truth([_q("what color is the circle?", "red")]) == ("circle", "red")
  eliminated = [
    _q("is there a circle?", "no"),
    _q("is there not a triangle?", "yes"),
    _q("is no blue shape present?", "yes"),
  ]
  assert dataset.image_truth(eliminated) == ("rectangle", None)
  with pytest.raises(ValueError, match="contradicting shape"):
    dataset.image_truth([_q("is there a circle?", "yes"), _q("is there a triangle?", "yes")])


def test_image_truth_known_image(splits):
  # Image 0 of train is a blue rectangle (its questions say so; see the PNG).
  truth = dataset.image_truth(splits["train"].questions_by_image()[0])
  assert truth == ("rectangle", "blue")


def test_truth_is_known_for_most_images(splits):
  counts = collections.Counter()
  for qs in splits["train"].questions_by_image().values():
    shape, color = dataset.image_truth(qs)
    counts["shape"] += shape is not None
    counts["color"] += color is not None
  assert counts["shape"] > 3800 and counts["color"] > 3700


def test_max_images_keeps_lowest_ids_and_their_questions():
  split = dataset.load_split("test", max_images=5)
  assert sorted(split.image_paths) == [0, 1, 2, 3, 4]
  assert split.questions and all(q.image_id < 5 for q in split.questions)
  with pytest.raises(ValueError, match="split must be one of"):
    dataset.load_split("val")
