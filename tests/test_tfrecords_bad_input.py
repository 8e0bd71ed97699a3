"""Bad inputs: exit status 1, a message naming file and line/record, and no shards left behind."""

import glob
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from tfrecords_tools import inspect, synthetic, vqa
from tfrecords_tools.tsv_features import format_tsv_line

NUM_IMAGES = 6


@pytest.fixture
def case(tmp_path):
  """Good inputs (6 images, 2 questions each) that each test then breaks in one way."""
  rng = np.random.default_rng(0)
  images = [synthetic.make_image(rng, f"img{i}") for i in range(NUM_IMAGES)]
  entries = synthetic.vqa_entries(rng, [im["img_id"] for im in images], per_image=2)
  return {
    "dir": tmp_path,
    "images": images,
    "entries": entries,
    "lines": [format_tsv_line(**im) for im in images],
    "vocab": synthetic.write_vocab(str(tmp_path / "vocab.txt")),
    "answers": synthetic.write_json(
      str(tmp_path / "ans2label.json"), {a: i for i, a in enumerate(synthetic.ANSWERS)}
    ),
  }


def run(case, *extra, features=None):
  """Writes the (possibly broken) inputs and runs the VQA converter in-process."""
  tsv = case["dir"] / "feats.tsv"
  tsv.write_bytes(b"".join(case["lines"]))
  ann = synthetic.write_json(str(case["dir"] / "vqa.json"), case["entries"])
  out = case["dir"] / "out"
  args = [
    "--features",
    features or str(tsv),
    "--annotations",
    ann,
    "--answers",
    case["answers"],
    "--vocab",
    case["vocab"],
    "--output_dir",
    str(out),
    "--split",
    "train",
    "--num_shards",
    "4",
    "--num_workers",
    "0",
    *extra,
  ]
  return vqa.main(args), out


def leftovers(out):
  return glob.glob(str(out / "*.tfrecord-*"))


def set_field(line: bytes, index: int, value: bytes) -> bytes:
  fields = line.rstrip(b"\n").split(b"\t")
  fields[index] = value
  return b"\t".join(fields) + b"\n"


def with_image(case, i, **changes):
  return format_tsv_line(**{**case["images"][i], **changes})


BROKEN_LINES = {
  "field_count": (
    lambda c: c["lines"][2].replace(b"\t", b"", 1),
    "expected 10 tab-separated fields (img_id, img_h",
  ),
  "bad_base64": (
    lambda c: set_field(c["lines"][2], 9, b"AAAA!!!!"),
    "field 'features' is not valid base64",
  ),
  "feature_size": (
    lambda c: set_field(
      c["lines"][2], 9, format_tsv_line(**c["images"][2]).rstrip().split(b"\t")[9][:-8]
    ),
    "field 'features' has 54 float32 values, not num_boxes (5) x feat_dim",
  ),
  "objects_id_size": (
    lambda c: with_image(c, 2, objects_id=np.zeros(4, np.int64)),
    "field 'objects_id' has 4 int64 values, expected num_boxes (5) x 1",
  ),
  "nan_features": (
    lambda c: with_image(c, 2, features=np.full((5, 11), np.nan, np.float32)),
    "NaN or inf",
  ),
  "box_outside": (
    lambda c: with_image(c, 2, boxes=c["images"][2]["boxes"] + np.float32(1000)),
    "must lie in [0, 1]",
  ),
  "bad_int": (
    lambda c: set_field(c["lines"][2], 1, b"12.5"),
    "field 'img_h' must be a decimal integer",
  ),
  "float16_overflow": (
    lambda c: with_image(c, 2, features=np.full((5, 11), 1e5, np.float32)),
    "use --feat_dtype=float32",
  ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_LINES))
def test_broken_tsv_line(case, capsys, name):
  break_line, message = BROKEN_LINES[name]
  case["lines"][2] = break_line(case)
  code, out = run(case)
  err = capsys.readouterr().err
  assert code == 1 and "feats.tsv:3" in err and message in err, err
  assert leftovers(out) == []


def test_duplicate_image(case, capsys):
  case["lines"].append(case["lines"][1])
  code, out = run(case)
  err = capsys.readouterr().err
  assert (
    code == 1 and "feats.tsv:7: duplicate image id 'img1' (first at" in err and "feats.tsv:2" in err
  )
  assert leftovers(out) == []


def test_unknown_image(case, capsys):
  case["entries"][3]["img_id"] = "COCO_missing_1"
  code, out = run(case)
  err = capsys.readouterr().err
  assert code == 1 and "not found in the features" in err
  assert "'COCO_missing_1' (" in err and "vqa.json: entry 3" in err
  assert leftovers(out) == []


def test_empty_sentence(case, capsys):
  case["entries"][4]["sent"] = "   "
  code, out = run(case)
  err = capsys.readouterr().err
  assert code == 1 and "vqa.json: entry 4" in err and "empty sentence" in err
  assert leftovers(out) == []


def test_unreadable_npz(case, capsys):
  npz = synthetic.write_npz_dir(str(case["dir"] / "npz"), case["images"])
  (case["dir"] / "npz" / "img3.npz").write_bytes(b"not a zip file")
  code, out = run(case, features=npz)
  err = capsys.readouterr().err
  assert code == 1 and "img3.npz: cannot read as an .npz file" in err
  assert leftovers(out) == []


def test_failed_rewrite_removes_old_shards(case, capsys):
  code, out = run(case)
  assert code == 0 and len(leftovers(out)) == 4
  case["lines"][0] = case["lines"][0][:100]
  code, out = run(case)
  assert code == 1 and leftovers(out) == []
  assert "train" not in json.loads((out / "dataset_info.json").read_text())["splits"]


def test_skip_bad_counts_and_logs(case, caplog):
  case["lines"][1] = b"img1\t5\n"  # wrong field count
  case["lines"][2] = with_image(case, 2, features=np.full((5, 11), np.inf, np.float32))
  case["lines"].append(case["lines"][4])  # duplicate img4
  case["entries"][0]["sent"] = ""  # empty sentence of img0
  case["entries"][10]["img_id"] = "missing_a"
  case["entries"][11]["img_id"] = "missing_b"
  with caplog.at_level(logging.WARNING, logger="tfrecords_tools"):
    code, out = run(case, "--skip_bad")
  assert code == 0
  split = json.loads((out / "dataset_info.json").read_text())["splits"]["train"]
  assert split["skipped"] == {
    "duplicate_images": 1,
    "image_records": 2,
    "sentences": 1,
    "sentences_of_skipped_images": 2,  # img2's questions; img1's show up as without image
    "sentences_without_image": 4,  # img1's two + missing_a + missing_b
  }
  assert len(split["skipped_records"]) == 4 + 1  # 4 records + the missing-images summary
  skipped_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped (")]
  assert any("feats.tsv:2" in m for m in skipped_lines) and any(
    "feats.tsv:7" in m for m in skipped_lines
  )
  # img0 keeps its second question; img3..img5 are intact, img5 lost its two questions.
  assert (split["num_groups"], split["num_sentences"]) == (3, 5)
  assert inspect.main(["--data_dir", str(out), "--split", "train", "--validate"]) == 0


def test_cli_exit_status_in_a_subprocess(case):
  case["lines"][2] = set_field(case["lines"][2], 8, b"@@@@")
  tsv = case["dir"] / "feats.tsv"
  tsv.write_bytes(b"".join(case["lines"]))
  ann = synthetic.write_json(str(case["dir"] / "vqa.json"), case["entries"])
  cmd = [
    sys.executable,
    "-m",
    "tfrecords_tools.vqa",
    "--features",
    str(tsv),
    "--annotations",
    ann,
    "--answers",
    case["answers"],
    "--vocab",
    case["vocab"],
    "--output_dir",
    str(case["dir"] / "out"),
    "--split",
    "train",
    "--num_workers",
    "2",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert "feats.tsv:3 (image 'img2'): field 'boxes' is not valid base64" in proc.stderr
  assert leftovers(case["dir"] / "out") == []


def test_missing_feature_file(case, capsys):
  code, out = run(case, features=str(case["dir"] / "nope.tsv"))
  assert code == 1 and "feature sources not found" in capsys.readouterr().err
  assert leftovers(out) == []


def test_nlvr2_pair_with_a_bad_image(tmp_path, capsys):
  from tfrecords_tools import nlvr2

  rng = np.random.default_rng(2)
  ids = ["dev-1-0-img0", "dev-1-0-img1", "dev-2-0-img0", "dev-2-0-img1"]
  images = [synthetic.make_image(rng, i) for i in ids]
  images[1]["features"] = np.full((5, 11), np.nan, np.float32)
  tsv = synthetic.write_tsv(str(tmp_path / "pairs.tsv"), images)
  entries = [
    {
      "identifier": f"dev-{k}-0-0",
      "img0": f"dev-{k}-0-img0",
      "img1": f"dev-{k}-0-img1",
      "label": 1,
      "sent": "Two dogs.",
    }
    for k in (1, 2)
  ]
  ann = synthetic.write_json(str(tmp_path / "dev.json"), entries)
  vocab = synthetic.write_vocab(str(tmp_path / "vocab.txt"))
  out = tmp_path / "out"
  args = [
    "--features",
    tsv,
    "--annotations",
    ann,
    "--vocab",
    vocab,
    "--output_dir",
    str(out),
    "--split",
    "valid",
    "--num_shards",
    "2",
    "--num_workers",
    "0",
  ]
  assert nlvr2.main(args) == 1
  assert "pairs.tsv:2" in capsys.readouterr().err and leftovers(out) == []
  assert nlvr2.main([*args, "--skip_bad"]) == 0
  split = json.loads((out / "dataset_info.json").read_text())["splits"]["valid"]
  assert split["skipped"] == {"image_records": 1, "sentences_of_skipped_images": 1}
  assert (split["num_groups"], split["num_images"], split["max_pending_images"]) == (1, 2, 2)
