"""Metrics vs hand-worked cases: official VQA accuracy, soft score, GQA split, NLVR2."""

import csv
import json

import numpy as np
import pytest

from lxmert_jax import metrics
from lxmert_jax.metrics import vqa


@pytest.mark.parametrize(
  "k, want",
  [
    # Leave-one-out mean (k*min((k-1)/3,1) + (10-k)*min(k/3,1)) / 10, worked by hand:
    (0, 0.0),  # nobody agrees
    (1, 0.3),  # (1*0 + 9*1/3) / 10 = 3/10
    (2, 0.6),  # (2*1/3 + 8*2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
    (3, 0.9),  # (3*2/3 + 7*1) / 10 = 9/10 (NOT 1.0: the 3 agreeing subsets see only 2 matches)
    (4, 1.0),  # (4*1 + 6*1) / 10
    (10, 1.0),
  ],
)
def test_leave_one_out_accuracy(k, want):
  gts = ["cat"] * k + [f"other{i}" for i in range(10 - k)]
  assert vqa.vqa_accuracy("cat", gts) == pytest.approx(want, abs=1e-12)
  # The naive min(k/3, 1) overstates k = 3 (1.0 instead of 0.9).
  assert (min(k / 3, 1) == want) == (k not in (1, 2, 3))


def test_normalisation_examples():
  assert vqa.vqa_accuracy("two", ["2"] * 10) == 1.0  # number word -> digit
  assert vqa.vqa_accuracy("a dog", ["dog"] * 10) == 1.0  # article dropped
  assert vqa.vqa_accuracy("Dog.", ["dog"] * 10) == 1.0  # lowercase, bare period dropped
  assert vqa.vqa_accuracy("  dont\n", ["don't"] * 10) == 1.0  # contraction table
  # Disagreeing annotators get the punctuation step: "dog." -> "dog" (4 -> 1.0).
  assert vqa.vqa_accuracy("dog", ["dog."] * 4 + ["cat"] * 6) == 1.0
  # Unanimous answers are compared verbatim, and the digit step never touches the ground
  # truth: "two" predicted -> "2" != "two".
  assert vqa.vqa_accuracy("two", ["two"] * 10) == 0.0
  assert vqa.normalize_prediction("Two Dogs!") == "2 dogs"
  assert vqa.process_punctuation("yes, it is") == "yes it is"  # ", " -> mark deleted
  assert vqa.process_punctuation("hello-world") == "hello world"  # inner mark -> space
  assert vqa.process_punctuation("1,000 (approx)") == "1000 approx"  # digit,digit -> delete all
  assert vqa.process_punctuation("3.5 m.") == "3.5 m"  # a period before a digit stays
  assert vqa.process_digit_article("The man's hat") == "man's hat"  # apostrophes stay
  assert vqa.process_digit_article("none of the ten") == "0 of 10"


def test_vqa_accumulator_per_answer_type():
  acc = metrics.VQAAccuracy()
  acc.add(1, "yes", ["yes"] * 10, "yes/no")  # 1.0
  acc.add(2, "no", ["yes"] * 8 + ["no"] * 2, "yes/no")  # 0.6
  acc.add(3, "3", ["three"] * 4 + ["3"] * 6, "number")  # gt digits untouched: 6 match -> 1.0
  acc.add(4, "red", ["blue"] * 10, 2)  # schema index 2 = 'other'; 0.0
  acc.add(5, "blue", ["blue"] * 10, -1)  # unknown type: overall only; 1.0
  result = acc.result()
  assert result["count"] == 5
  assert result["overall"] == pytest.approx((1.0 + 0.6 + 1.0 + 0.0 + 1.0) / 5)
  assert result["yes/no"] == pytest.approx(0.8)
  assert result["number"] == pytest.approx(1.0)
  assert result["other"] == pytest.approx(0.0)
  with pytest.raises(ValueError, match="scored twice"):
    acc.add(4, "red", ["red"], "other")


def test_soft_score_evaluator():
  pred = np.array([2, 0, 5, 1])
  ids = np.array([[2, 7, -1], [3, -1, -1], [-1, -1, -1], [4, 1, 0]])
  scores = np.array([[0.9, 0.3, 0.0], [1.0, 0, 0], [0, 0, 0], [0.3, 0.6, 1.0]])
  np.testing.assert_allclose(vqa.soft_scores(pred, ids, scores), [0.9, 0.0, 0.0, 0.6])
  acc = metrics.SoftScoreAccuracy()
  acc.add_batch(pred, ids, scores, example_mask=np.array([1, 1, 1, 0]))
  assert acc.result() == pytest.approx(0.9 / 3)
  acc2 = metrics.SoftScoreAccuracy()
  acc2.add("cat", {"cat": 0.6, "dog": 1.0})
  acc2.add("bird", {"cat": 0.6})
  assert acc2.result() == pytest.approx(0.3)


def test_gqa_accuracy_binary_open_split():
  acc = metrics.GQAAccuracy()
  acc.add("yes", "yes", "verify")  # binary, right
  acc.add("red", "blue", "choose")  # binary (official: only "query" is open), wrong
  acc.add("table", "table", "query")  # open, right
  acc.add("no", "yes", None)  # no type: yes/no answer -> binary, wrong
  acc.add("cup", "cup", -1)  # no type: open, right
  acc.add("left", "left", 0)  # schema answer_type 0 ('yes/no') -> binary, right
  acc.add("2", "3", 1)  # schema answer_type 1 ('number') -> open, wrong
  result = acc.result()
  assert result["count"] == 7
  assert result["overall"] == pytest.approx(4 / 7)
  assert result["binary"] == pytest.approx(2 / 4)
  assert result["open"] == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="unknown GQA question type"):
    acc.add("a", "a", "weird")


def test_nlvr2_accuracy_and_consistency():
  acc = metrics.NLVR2Accuracy()
  acc.add("dev-1-0-0", 1, 1)
  acc.add("dev-1-1-0", 0, 1)  # wrong: breaks group dev-1--0
  acc.add("dev-1-2-0", True, True)
  acc.add("dev-1-0-1", 0, 0)  # group dev-1--1
  acc.add("dev-2-0-0", 1, 1)  # group dev-2--0
  result = acc.result()
  assert result["accuracy"] == pytest.approx(4 / 5)
  assert result["groups"] == 3
  assert result["consistency"] == pytest.approx(2 / 3)
  assert metrics.consistency_group("test1-850-3-1") == "test1-850--1"
  with pytest.raises(ValueError, match="dash-separated"):
    acc.add("dev1", 1, 1)


def test_submission_writers(tmp_path):
  vqa_path, gqa_path, nlvr_path = tmp_path / "v.json", tmp_path / "g.json", tmp_path / "n.csv"
  metrics.write_vqa_submission({"42": "yes", 7: "2"}, vqa_path)
  assert json.loads(vqa_path.read_text()) == [
    {"question_id": 42, "answer": "yes"},
    {"question_id": 7, "answer": "2"},
  ]
  metrics.write_gqa_submission({"201307251": "table", 5: "no"}, gqa_path)
  assert json.loads(gqa_path.read_text()) == [
    {"questionId": "201307251", "prediction": "table"},
    {"questionId": "5", "prediction": "no"},
  ]
  metrics.write_nlvr2_predictions({"test1-0-1-0": 1, "test1-0-0-0": False}, nlvr_path)
  assert nlvr_path.read_text() == "test1-0-1-0,True\ntest1-0-0-0,False\n"
  with open(nlvr_path) as f:
    assert list(csv.reader(f)) == [["test1-0-1-0", "True"], ["test1-0-0-0", "False"]]
  with pytest.raises(ValueError, match="integer"):
    metrics.write_vqa_submission({"q1": "yes"}, tmp_path / "bad.json")
  assert not (tmp_path / "bad.json").exists()
  with pytest.raises(ValueError, match="0/1"):
    metrics.write_nlvr2_predictions({"dev-0-0-0": 2}, tmp_path / "bad.csv")
