"""Feature TSV / npz + task JSONs -> converter CLIs -> shards -> schema.decode_group in tf.data."""

import glob
import json
import os

import numpy as np
import pytest

from lxmert_jax.answers import convert_ans
from lxmert_jax.data.tokenization import WordPieceTokenizer
from tfrecords_tools import gqa, inspect, lxmert_pretrain, nlvr2, synthetic, vqa

# float16 keeps 11 significant bits: relative error <= 2**-11 ~ 4.9e-4 for these magnitudes.
F16_RTOL = 1e-3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """12 images (5 boxes x 11 dims) as TSV and npz, VQA questions on the first 10."""
  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  images = [synthetic.make_image(rng, f"img{i}") for i in range(12)]
  entries = synthetic.vqa_entries(rng, [f"img{i}" for i in range(10)], per_image=2)
  return {
    "root": root,
    "images": {im["img_id"]: im for im in images},
    "entries": entries,
    "tsv": synthetic.write_tsv(str(root / "feats.tsv"), images),
    "npz": synthetic.write_npz_dir(str(root / "npz"), images),
    "vocab": synthetic.write_vocab(str(root / "vocab.txt")),
    "vqa": synthetic.write_json(str(root / "vqa.json"), entries),
    "ans2label": synthetic.write_json(
      str(root / "ans2label.json"), {a: i for i, a in enumerate(synthetic.ANSWERS)}
    ),
  }


def vqa_args(data, out, *extra, features=None):
  return [
    "--features",
    features or data["tsv"],
    "--annotations",
    data["vqa"],
    "--answers",
    data["ans2label"],
    "--vocab",
    data["vocab"],
    "--output_dir",
    str(out),
    "--split",
    "train",
    "--num_shards",
    "3",
    "--num_workers",
    "0",
    *extra,
  ]


def by_image(out, split="train"):
  return {tuple(i.decode() for i in g["img_id"]): g for g in inspect.iter_groups(str(out), split)}


def check_image(group, j, image, rtol):
  np.testing.assert_allclose(group["features"][j], image["features"], rtol=rtol)
  scale = np.array([image["img_w"], image["img_h"]] * 2, np.float64)
  np.testing.assert_allclose(group["boxes"][j], image["boxes"] / scale, rtol=1e-6)
  for key in ("objects_id", "attrs_id"):
    np.testing.assert_array_equal(group[key][j], image[key])
  for key in ("objects_conf", "attrs_conf"):
    np.testing.assert_allclose(group[key][j], image[key], rtol=1e-6)
  assert (group["img_h"][j], group["img_w"][j]) == (image["img_h"], image["img_w"])


@pytest.mark.parametrize("feat_dtype,rtol", [("float16", F16_RTOL), ("float32", 0)])
def test_vqa_tsv_roundtrip(data, tmp_path, feat_dtype, rtol):
  out = tmp_path / "out"
  assert vqa.main(vqa_args(data, out, "--feat_dtype", feat_dtype)) == 0
  tok = WordPieceTokenizer(data["vocab"], 20)
  groups = by_image(out)
  assert sorted(groups) == [(f"img{i}",) for i in range(10)]
  for (img_id,), g in groups.items():
    check_image(g, 0, data["images"][img_id], rtol)
    questions = [e for e in data["entries"] if e["img_id"] == img_id]
    assert [u.decode() for u in g["sent_uid"]] == [str(q["question_id"]) for q in questions]
    for i, q in enumerate(questions):
      assert g["token_ids"][i].tolist() == tok.encode(q["sent"])
      names = [synthetic.ANSWERS[a] for a in g["ans_id"][i]]
      assert dict(zip(names, g["ans_score"][i].tolist(), strict=True)) == pytest.approx(q["label"])
      assert g["answer_type"][i] == ("yes/no", "number", "other").index(q["answer_type"])
      assert g["label"][i] == -1
  info = json.loads((out / "dataset_info.json").read_text())
  split = info["splits"]["train"]
  assert (split["num_groups"], split["num_sentences"], split["images_without_sentences"]) == (
    10,
    20,
    2,
  )
  assert info["feat_dtype"] == feat_dtype and info["answer_vocab"] == synthetic.ANSWERS
  assert json.loads((out / "answers.json").read_text()) == synthetic.ANSWERS
  assert len(glob.glob(str(out / "train.tfrecord-*-of-00003"))) == 3


def test_npz_equals_tsv_and_workers_are_deterministic(data, tmp_path):
  assert vqa.main(vqa_args(data, tmp_path / "tsv")) == 0
  assert vqa.main(vqa_args(data, tmp_path / "npz", features=data["npz"])) == 0
  from_tsv, from_npz = by_image(tmp_path / "tsv"), by_image(tmp_path / "npz")
  assert from_tsv.keys() == from_npz.keys()
  for key, g in from_tsv.items():
    np.testing.assert_array_equal(g["features"], from_npz[key]["features"])
    np.testing.assert_array_equal(g["boxes"], from_npz[key]["boxes"])
  # Two worker processes, tiny chunks: byte-identical shards to the in-process run.
  args = vqa_args(data, tmp_path / "pool")
  args[args.index("--num_workers") + 1] = "2"
  assert vqa.main([*args, "--chunk_size", "3"]) == 0
  for path in sorted(glob.glob(str(tmp_path / "tsv" / "train.tfrecord-*"))):
    other = tmp_path / "pool" / os.path.basename(path)
    assert open(path, "rb").read() == other.read_bytes()


def test_help_shows_an_example(capsys):
  with pytest.raises(SystemExit):
    vqa.main(["--help"])
  assert "python -m tfrecords_tools.vqa --features" in capsys.readouterr().out


def test_gqa(data, tmp_path):
  entries = [
    {
      "question_id": "02930152",
      "img_id": "img3",
      "sent": "Is the dog left?",
      "label": {"yes": 1.0},
    },
    {"question_id": "02930153", "img_id": "img3", "sent": "What is red?", "label": {"cat": 1.0}},
    {"question_id": "0293x", "img_id": "img5", "sent": "What is it?"},  # submit.json: no label
  ]
  path = synthetic.write_json(str(tmp_path / "gqa.json"), entries)
  answers = synthetic.write_json(str(tmp_path / "label2ans.json"), ["yes", "no", "cat"])
  out = tmp_path / "out"
  args = [
    "--features",
    data["tsv"],
    "--annotations",
    path,
    "--answers",
    answers,
    "--vocab",
    data["vocab"],
    "--output_dir",
    str(out),
    "--split",
    "testdev",
    "--num_shards",
    "2",
    "--num_workers",
    "0",
  ]
  assert gqa.main(args) == 0
  groups = by_image(out, "testdev")
  g = groups[("img3",)]
  assert [u.decode() for u in g["sent_uid"]] == ["02930152", "02930153"]
  assert [a.tolist() for a in g["ans_id"]] == [[0], [2]]
  assert g["answer_type"].tolist() == [-1, -1]
  assert groups[("img5",)]["ans_id"][0].size == 0


def test_convert_ans_matches_the_original_table():
  cases = {
    "A Man.": "man",
    "the woman": "woman",
    "Two": "2",
    "grey": "gray",
    "an apple": "apple",
    "The Cat.": "cat",
    "": "",
    "a the dog": "dog",
    "ten.": "10",
    "yes": "yes",
  }
  for raw, expected in cases.items():
    assert convert_ans(raw) == expected, raw


def test_lxmert_pretrain(data, tmp_path):
  corpus = [
    {
      "img_id": "img1",
      "sentf": {"mscoco": ["A man with a dog.", "Two cats."], "vqa": ["What is it?", "How many?"]},
      "labelf": {"vqa": [{"A Man.": 0.3, "man": 0.9, "zebra": 1.0}, {"two": 1.0, "ten": 0.3}]},
    },
    {"img_id": "img2", "sentf": {"vg": ["red table"]}, "labelf": {}},
  ]
  table = [
    {"ans": "man", "dsets": ["vqa"]},
    {"ans": "2", "dsets": ["vqa", "gqa"]},
    {"ans": "10", "dsets": ["visual7w"]},
  ]
  out = tmp_path / "out"
  args = [
    "--features",
    data["tsv"],
    "--annotations",
    synthetic.write_json(str(tmp_path / "mscoco_train.json"), corpus),
    "--answers",
    synthetic.write_json(str(tmp_path / "all_ans.json"), table),
    "--vocab",
    data["vocab"],
    "--output_dir",
    str(out),
    "--split",
    "train",
    "--num_shards",
    "2",
    "--num_workers",
    "0",
  ]
  assert lxmert_pretrain.main(args) == 0
  groups = by_image(out)
  g = groups[("img1",)]
  assert [u.decode() for u in g["sent_uid"]] == [
    "img1_mscoco_000",
    "img1_mscoco_001",
    "img1_vqa_000",
    "img1_vqa_001",
  ]
  # Captions have no answers; "A Man." -> "man" overwrites man's 0.9 (original loop order).
  assert [a.tolist() for a in g["ans_id"]] == [[], [], [0], [1, 2]]
  assert [s.tolist() for s in g["ans_score"]][2:] == [
    pytest.approx([0.3]),
    pytest.approx([1.0, 0.3]),
  ]
  assert [u.decode() for u in groups[("img2",)]["sent_uid"]] == ["img2_vg_000"]
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["answer_vocab"] == ["man", "2", "10"]
  assert info["splits"]["train"]["annotation_counts"]["sentences_mscoco"] == 2
  # --qa_sets keeps the answers of the named datasets only, renumbered (original --qaSets).
  args[args.index("--output_dir") + 1] = str(tmp_path / "gqa_only")
  assert lxmert_pretrain.main([*args, "--qa_sets", "gqa"]) == 0
  g = by_image(tmp_path / "gqa_only")[("img1",)]
  assert [a.tolist() for a in g["ans_id"]] == [[], [], [], [0]]


def test_nlvr2_pairs(data, tmp_path):
  rng = np.random.default_rng(1)
  ids = ["dev-1-0-img0", "dev-1-0-img1", "dev-2-1-img0", "dev-2-1-img1"]
  images = {i: synthetic.make_image(rng, i) for i in ids}
  # Partners far apart and in mixed order, as nothing guarantees adjacency in real files.
  tsv = synthetic.write_tsv(
    str(tmp_path / "nlvr2.tsv"), [images[i] for i in (ids[1], ids[2], ids[0], ids[3])]
  )
  entries = [
    {
      "identifier": "dev-1-0-0",
      "img0": ids[0],
      "img1": ids[1],
      "label": 1,
      "sent": "Both dogs sit.",
      "uid": "nlvr2_dev_0",
    },
    {
      "identifier": "dev-1-0-1",
      "img0": ids[0],
      "img1": ids[1],
      "label": 0,
      "sent": "No dog.",
      "uid": "nlvr2_dev_1",
    },
    {
      "identifier": "dev-2-1-0",
      "img0": ids[2],
      "img1": ids[3],
      "label": 0,
      "sent": "Two cats.",
      "uid": "nlvr2_dev_2",
    },
  ]
  out = tmp_path / "out"
  args = [
    "--features",
    tsv,
    "--annotations",
    synthetic.write_json(str(tmp_path / "dev.json"), entries),
    "--vocab",
    data["vocab"],
    "--output_dir",
    str(out),
    "--split",
    "valid",
    "--num_shards",
    "2",
    "--num_workers",
    "0",
  ]
  assert nlvr2.main(args) == 0
  groups = by_image(out, "valid")
  assert sorted(groups) == [(ids[0], ids[1]), (ids[2], ids[3])]
  g = groups[(ids[0], ids[1])]
  assert g["features"].shape == (2, 5, 11)
  for j in range(2):
    check_image(g, j, images[ids[j]], F16_RTOL)
  assert [u.decode() for u in g["sent_uid"]] == ["dev-1-0-0", "dev-1-0-1"]
  assert g["label"].tolist() == [1, 0]
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["label_names"] == ["False", "True"] and info["splits"]["valid"]["num_images"] == 4
  assert inspect.main(["--data_dir", str(out), "--split", "valid", "--validate"]) == 0


def test_inspect_validates_and_prints(data, tmp_path, capsys):
  out = tmp_path / "out"
  assert vqa.main(vqa_args(data, out)) == 0
  assert inspect.main(["--data_dir", str(out), "--split", "train", "--validate"]) == 0
  assert "OK" in capsys.readouterr().out
  assert (
    inspect.main(
      ["--data_dir", str(out), "--split", "train", "--num", "2", "--vocab", data["vocab"]]
    )
    == 0
  )
  printed = capsys.readouterr().out
  assert printed.count("== train.tfrecord") == 2 and "[CLS]" in printed and "answers" in printed

  # A flipped byte inside the second shard breaks its CRC: the shard and record are named.
  shard = sorted(glob.glob(str(out / "train.tfrecord-*")))[1]
  raw = bytearray(open(shard, "rb").read())
  raw[len(raw) // 2] ^= 0xFF
  open(shard, "wb").write(bytes(raw))
  assert inspect.main(["--data_dir", str(out), "--split", "train", "--validate"]) == 1
  err = capsys.readouterr().err
  assert os.path.basename(shard) in err and "record " in err


def test_inspect_checks_counts(data, tmp_path, capsys):
  out = tmp_path / "out"
  assert vqa.main(vqa_args(data, out)) == 0
  info = json.loads((out / "dataset_info.json").read_text())
  info["splits"]["train"]["num_sentences"] += 1
  (out / "dataset_info.json").write_text(json.dumps(info))
  assert inspect.main(["--data_dir", str(out), "--split", "train", "--validate"]) == 1
  assert "num_sentences=20, dataset_info.json says 21" in capsys.readouterr().err


def test_streaming_readers(data, tmp_path):
  from tfrecords_tools import features_io
  from tfrecords_tools.npz_features import iter_npz_features
  from tfrecords_tools.tsv_features import FeatureError, iter_tsv_features

  for reader in (iter_tsv_features(data["tsv"]), iter_npz_features(data["npz"])):
    images = {im.img_id: im for im in reader}
    assert len(images) == 12
    for img_id, image in images.items():
      np.testing.assert_array_equal(image.features, data["images"][img_id]["features"])
  both = list(features_io.iter_features([data["tsv"], data["npz"]], num_workers=2, chunk_size=5))
  assert [im.img_id for im in both[:12]] == [f"img{i}" for i in range(12)] and len(both) == 24
  lines = open(data["tsv"], "rb").readlines()
  bad = tmp_path / "bad.tsv"
  bad.write_bytes(b"".join(lines[:4]) + b"\n" + lines[4].replace(b"\t", b" ", 1))
  with pytest.raises(FeatureError, match=r"bad.tsv:6: expected 10 tab-separated"):
    list(iter_tsv_features(str(bad)))  # the blank line 5 is skipped but counted
  assert len(list(iter_tsv_features(str(bad), skip_bad=True))) == 4
