"""easy-VQA -> TFRecord conversion (tfrecords_tools/easy_vqa.py)."""

import collections
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from lxmert_jax.data import schema, tokenization
from lxmert_jax.easy_vqa import dataset, features, regions
from tfrecords_tools import easy_vqa as convert
from tfrecords_tools import shards

SMALL = 30  # images per split in the quick conversion


def read_groups(data_dir, split):
  import tensorflow as tf

  info = shards.read_info(data_dir)
  groups = []
  for path in shards.find_shards(data_dir, split):
    for record in tf.data.TFRecordDataset(path):
      g = schema.decode_group(record, info["feat_dtype"])
      groups.append({k: v.numpy() if hasattr(v, "numpy") else v for k, v in g.items()})
  return groups


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("easy_vqa"))
  info = convert.convert_easy_vqa(out, num_shards=2, max_images=SMALL, workers=1)
  return out, info


def test_small_conversion_counts_and_info(small):
  out, info = small
  assert info == shards.read_info(out)
  assert info["dataset"] == "easy_vqa" and info["easy_vqa"]["complete"]
  assert info["answer_vocab"] == dataset.answer_vocab()
  assert (info["feat_dim"], info["num_boxes"]) == (features.FEATURE_DIM, regions.MAX_BOXES)
  assert info["object_classes"] == list(regions.OBJECT_CLASSES)
  assert info["attr_classes"] == list(regions.ATTR_CLASSES)
  for split in dataset.SPLITS:
    expected = dataset.load_split(split, max_images=SMALL)
    meta = info["splits"][split]
    assert meta["num_groups"] == meta["num_images"] == SMALL
    assert meta["num_sentences"] == len(expected.questions)
    assert meta["num_binary"] == sum(q.is_binary for q in expected.questions)
    assert len(shards.find_shards(out, split)) == 2
    assert len(convert.read_questions(out, split)) == len(expected.questions)
  with open(os.path.join(out, convert.VOCAB_FILE)) as f:
    assert sum(1 for _ in f) == info["vocab_size"]


def test_conversion_alone_sizes_the_model_and_the_mlm_mask(small):
  """Training straight from the converter's output (docs/demo.md 'One run at a time') reads
  the vocabulary size and the [MASK] id from the tokenizer block the converter writes."""
  from configs import easy_vqa
  from lxmert_jax import train_state

  out, info = small
  tokenizer = tokenization.WordPieceTokenizer(os.path.join(out, convert.VOCAB_FILE))
  block = info["tokenizer"]
  assert block["vocab_size"] == tokenizer.vocab_size == info["vocab_size"]
  for name in ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id"):
    assert block[name] == getattr(tokenizer, name)
  assert tokenizer.convert_ids_to_tokens([block["mask_id"]]) == ["[MASK]"]
  config = easy_vqa.get_config(f"pretrain,data_dir={out}")
  assert train_state.resolve_model_config(config, info).vocab_size == tokenizer.vocab_size


def test_conversion_without_tokenizer_block_is_rebuilt(small, tmp_path):
  """A conversion written before the tokenizer block existed (format version 1) is not reused
  as complete."""
  out, info = small
  settings = info["easy_vqa"]["settings"]
  assert convert.existing_complete(out, settings) is not None
  copy = tmp_path / "old"
  copy.mkdir()
  for name in os.listdir(out):
    os.symlink(os.path.join(out, name), copy / name)
  os.remove(copy / schema.INFO_FILE)
  old = {k: v for k, v in info.items() if k != "tokenizer"}
  old["easy_vqa"] = {**info["easy_vqa"], "settings": {**settings, "format_version": 1}}
  (copy / schema.INFO_FILE).write_text(json.dumps(old))
  assert convert.existing_complete(str(copy), settings) is None


def test_records_hold_questions_answers_and_scaled_features(small):
  out, info = small
  tokenizer = tokenization.WordPieceTokenizer(os.path.join(out, convert.VOCAB_FILE))
  scaling = convert.load_feature_scaling(out)
  split = dataset.load_split("test", max_images=SMALL)
  by_uid = {q.uid: q for q in split.questions}
  groups = read_groups(out, "test")
  assert sorted(int(g["img_id"][0]) for g in groups) == list(range(SMALL))
  seen = 0
  for g in groups:
    img_id = g["img_id"][0].decode()
    expected = features.extract_regions(split.image_paths[int(img_id)], scaling=scaling)
    # Stored as float16: equal to the scaled float32 features up to half-precision rounding.
    np.testing.assert_allclose(g["features"][0], expected.features, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(g["boxes"][0], expected.boxes, atol=1e-6)
    np.testing.assert_array_equal(g["objects_id"][0], expected.objects_id)
    np.testing.assert_array_equal(g["attrs_id"][0], expected.attrs_id)
    for i, uid in enumerate(g["sent_uid"]):
      q = by_uid[uid.decode()]
      seen += 1
      assert str(q.image_id) == img_id
      np.testing.assert_array_equal(g["token_ids"][i], tokenizer.encode(q.text))
      assert tokenizer.decode(g["token_ids"][i]).replace(" ", "") == q.text.replace(" ", "")
      assert [info["answer_vocab"][a] for a in g["ans_id"][i]] == [q.answer]
      np.testing.assert_array_equal(g["ans_score"][i], [1.0])
      assert schema.ANSWER_TYPES[g["answer_type"][i]] == ("yes/no" if q.is_binary else "other")
      assert g["label"][i] == -1
  assert seen == len(split.questions)


def test_reuse_rebuild_and_refusal(small, tmp_path, caplog):
  out, info = small
  shard = shards.find_shards(out, "train")[0]
  mtime = os.path.getmtime(shard)
  caplog.set_level(logging.INFO)
  again = convert.convert_easy_vqa(out, num_shards=2, max_images=SMALL, workers=1)
  assert again == info and os.path.getmtime(shard) == mtime
  assert any("reusing the complete conversion" in r.getMessage() for r in caplog.records)
  # Different settings rebuild (and old shards of another count disappear).
  other = str(tmp_path / "other")
  convert.convert_easy_vqa(other, num_shards=2, max_images=3, num_boxes=11, workers=1)
  rebuilt = convert.convert_easy_vqa(other, num_shards=1, max_images=3, num_boxes=11, workers=1)
  assert rebuilt["num_boxes"] == 11 and rebuilt["easy_vqa"]["settings"]["num_shards"] == 1
  assert len(shards.find_shards(other, "test")) == 1
  # An incomplete conversion (interrupted) is not reused.
  path = os.path.join(other, schema.INFO_FILE)
  with open(path) as f:
    meta = json.load(f)
  meta["easy_vqa"]["complete"] = False
  with open(path, "w") as f:
    json.dump(meta, f)
  settings = meta["easy_vqa"]["settings"]
  assert convert.existing_complete(other, settings) is None
  # A directory holding another dataset is never overwritten.
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / schema.INFO_FILE).write_text(json.dumps({"schema_version": 1, "dataset": "vqa"}))
  with pytest.raises(ValueError, match="another dataset"):
    convert.convert_easy_vqa(str(foreign), max_images=2, workers=1)
  with pytest.raises(ValueError, match="num_boxes"):
    convert.convert_easy_vqa(str(tmp_path / "x"), num_boxes=0)


def test_cli_help_and_bad_flag():
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", "tfrecords_tools.easy_vqa", *args],
      capture_output=True,
      text=True,
      env=env,
      cwd=os.path.dirname(os.path.dirname(__file__)),
    )

  helped = run("--help")  # absl exits 1 after printing help; the text is what matters
  assert "python -m tfrecords_tools.easy_vqa --output_dir" in helped.stdout
  bad = run("--output_dir=/tmp/unused_easy_vqa", "--num_boxes=40")
  assert bad.returncode != 0 and "num_boxes must be in [1, 36]" in bad.stderr


@pytest.mark.slow
def test_full_conversion_counts_and_label_agreement(tmp_path):
  out = str(tmp_path / "full")
  info = convert.convert_easy_vqa(out, num_shards=4)
  expected = {"train": (4000, 38575, 28407), "test": (1000, 9673, 7136)}
  for split, (images, questions, binary) in expected.items():
    meta = info["splits"][split]
    assert (meta["num_images"], meta["num_sentences"], meta["num_binary"]) == (
      images,
      questions,
      binary,
    )
  # Region 0's object/attribute labels (from pixels) against the questions' truth, all images.
  import tensorflow as tf

  agree, total = collections.Counter(), collections.Counter()
  for split in dataset.SPLITS:
    by_image = dataset.load_split(split).questions_by_image()
    records = tf.data.TFRecordDataset(shards.find_shards(out, split)).map(schema.decode_group)
    # Graph-mode map: decoding 5,000 records eagerly one by one takes minutes on 2 cores.
    region0 = records.map(lambda g: (g["img_id"][0], g["objects_id"][0, 0], g["attrs_id"][0, 0]))
    for img_id, obj, attr in region0.as_numpy_iterator():
      shape, color = dataset.image_truth(by_image[int(img_id)])
      if shape is not None:
        total["shape"] += 1
        agree["shape"] += regions.OBJECT_CLASSES[obj] == shape
      if color is not None:
        total["color"] += 1
        agree["color"] += regions.ATTR_CLASSES[attr] == color
  assert total["shape"] > 4700 and total["color"] > 4500
  for kind in ("shape", "color"):
    assert agree[kind] / total[kind] >= 0.99, (kind, agree[kind], total[kind])
