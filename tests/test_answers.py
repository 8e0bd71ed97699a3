"""convert_ans, answer-vocabulary files and the QA-head transfer on a toy table."""

import json

import numpy as np
import pytest

from lxmert_jax import answers


@pytest.mark.parametrize(
  "raw, want",
  [
    ("Yes", "yes"),
    ("two", "2"),
    ("Ten.", "10"),
    ("a man", "man"),
    ("The Woman", "woman"),
    ("an apple", "apple"),
    ("the dog.", "dog"),
    ("grey", "gray"),
    ("a the cat", "cat"),  # "a " then "the " are both stripped, in order
    ("the a cat", "a cat"),  # "a " is checked before "the ", so it survives here
    ("3.5", "3.5"),  # only a trailing period goes
    ("", ""),
    ("black, white", "black, white"),
  ],
)
def test_convert_ans(raw, want):
  assert answers.convert_ans(raw) == want


SRC = ["yes", "no", "2", "man", "gray", "dog", "10"]
DST = ["Yes", "two", "a man", "grey", "cat", "The dog.", "", "visilab"]


def test_transfer_answer_head_toy_table():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(6, len(SRC))).astype(np.float32)
  bias = rng.normal(size=(len(SRC),)).astype(np.float32)
  new_kernel, new_bias, carried = answers.transfer_answer_head(kernel, bias, SRC, DST)
  assert new_kernel.shape == (6, len(DST)) and new_bias.shape == (len(DST),)
  # "Yes"->yes(0), "two"->2(2), "a man"->man(3), "grey"->gray(4), "The dog."->dog(5).
  mapping = {0: 0, 1: 2, 2: 3, 3: 4, 5: 5}
  assert carried == 5
  for dst, src in mapping.items():
    np.testing.assert_array_equal(new_kernel[:, dst], kernel[:, src])
    assert new_bias[dst] == bias[src]
  for dst in (4, 6, 7):  # cat, '', visilab: zero, not random init
    assert not new_kernel[:, dst].any() and new_bias[dst] == 0


def test_transfer_answer_head_params_copies_the_rest_verbatim():
  rng = np.random.default_rng(1)
  head = {
    "0": {"kernel": rng.normal(size=(4, 6)), "bias": rng.normal(size=(6,))},
    "2": {"scale": rng.normal(size=(6,)), "bias": rng.normal(size=(6,))},
    "3": {"kernel": rng.normal(size=(6, len(SRC))), "bias": rng.normal(size=(len(SRC),))},
  }
  new, carried = answers.transfer_answer_head_params(head, SRC, DST)
  assert carried == 5
  for name in ("0", "2"):
    for leaf in head[name]:
      np.testing.assert_array_equal(new[name][leaf], head[name][leaf])
  assert new["3"]["kernel"].shape == (6, len(DST))
  with pytest.raises(KeyError, match="logit_fc_3"):
    answers.transfer_answer_head_params(head, SRC, DST, final_layer="logit_fc_3")
  with pytest.raises(ValueError, match="source answers"):
    answers.transfer_answer_head(np.zeros((6, 3)), np.zeros(3), SRC, DST)


def test_vocab_formats_round_trip(tmp_path):
  label2ans = ["", "yes", "no", "2"]  # G21: label 0 is the empty answer, kept in place
  list_path, dict_path = tmp_path / "label2ans.json", tmp_path / "ans2label.json"
  answers.save_answer_vocab(label2ans, list_path)
  answers.save_answer_vocab(label2ans, dict_path, as_dict=True)
  assert json.loads(dict_path.read_text()) == {"": 0, "yes": 1, "no": 2, "2": 3}
  assert answers.load_answer_vocab(list_path) == label2ans
  assert answers.load_answer_vocab(dict_path) == label2ans
  table = [
    {"ans": "yes", "dsets": ["vqa", "gqa"]},
    {"ans": "left", "dsets": ["gqa"]},
    {"ans": "red", "dsets": ["visual7w"]},
  ]
  table_path = tmp_path / "all_ans.json"
  table_path.write_text(json.dumps(table))
  assert answers.load_answer_vocab(table_path) == ["yes", "left", "red"]
  assert answers.load_answer_vocab(table_path, dsets=["vqa"]) == ["yes"]
  assert answers.load_answer_vocab(table_path, dsets=["GQA"]) == ["yes", "left"]


def test_vocab_errors_name_the_file(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"yes": 0, "no": 2}))
  with pytest.raises(ValueError, match="bad.json.*'no' has label 2"):
    answers.load_answer_vocab(bad)
  dup = tmp_path / "dup.json"
  dup.write_text(json.dumps(["yes", "no", "yes"]))
  with pytest.raises(ValueError, match="dup.json.*'yes' appears at labels 0 and 2"):
    answers.load_answer_vocab(dup)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    answers.load_answer_vocab(tmp_path / "missing.json")
  broken = tmp_path / "broken.json"
  broken.write_text("[1,")
  with pytest.raises(ValueError, match="broken.json"):
    answers.load_answer_vocab(broken)
