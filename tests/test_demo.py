"""The easy-VQA demo (lxmert_jax/demo.py): blanked baseline data, run configs, the report, and
one reduced end-to-end run (real conversion, two lanes, five trainings, table)."""

import json
import os

import numpy as np
import pytest
from test_pipeline import write_dataset

from configs import easy_vqa as easy_vqa_config
from lxmert_jax import demo
from lxmert_jax.data import schema
from tfrecords_tools import shards


def _read_groups(data_dir, split):
  import tensorflow as tf

  def host(v):  # Ragged fields (tokens, answers) as nested lists, the rest as numpy.
    return v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy()

  info = shards.read_info(data_dir)
  groups = [
    {k: host(v) for k, v in schema.decode_group(r, info["feat_dtype"]).items()}
    for path in shards.find_shards(data_dir, split)
    for r in tf.data.TFRecordDataset(path)
  ]
  # Copies distribute records over their shards in another order: sort by image id.
  return sorted(groups, key=lambda g: g["img_id"].tolist())


def test_blanked_copies_keep_everything_but_the_blanked_modality(tmp_path):
  src, lang, image = (str(tmp_path / d) for d in ("src", "lang", "image"))
  write_dataset(src, "train", num_groups=6, max_tokens=9)
  demo.write_blanked(src, lang, demo.blank_visual, ["train"])
  demo.write_blanked(src, image, demo.blank_question(cls_id=2, sep_id=3), ["train"])
  before = _read_groups(src, "train")
  info = shards.read_info(src)
  for out in (lang, image):
    copy = shards.read_info(out)
    assert copy["splits"]["train"]["num_sentences"] == info["splits"]["train"]["num_sentences"]
    assert copy["answer_vocab"] == info["answer_vocab"] and copy["tokenizer"] == info["tokenizer"]
  for b, lg, im in zip(before, _read_groups(lang, "train"), _read_groups(image, "train")):
    # Language Only: no visual signal at all; the question and the labels are untouched.
    assert not lg["features"].any() and not lg["boxes"].any()
    assert lg["token_ids"] == b["token_ids"]
    np.testing.assert_array_equal(lg["objects_id"], b["objects_id"])
    # Image Only: every question is [CLS] [SEP]; features, answers and types are untouched.
    assert im["token_ids"] == [[2, 3]] * len(b["sent_uid"])
    np.testing.assert_array_equal(im["features"], b["features"])
    assert im["ans_id"] == b["ans_id"]
    np.testing.assert_array_equal(im["answer_type"], b["answer_type"])
  # A finished copy of the same source is reused, not rewritten.
  stamp = os.path.getmtime(os.path.join(lang, schema.INFO_FILE))
  demo.write_blanked(src, lang, demo.blank_visual, ["train"])
  assert os.path.getmtime(os.path.join(lang, schema.INFO_FILE)) == stamp


def test_run_configs_wire_the_table(tmp_path):
  config = easy_vqa_config.get_config()
  configs = demo.run_configs(config, str(tmp_path))
  assert set(configs) == set(demo.RUNS)
  assert configs["pretrain"].task == "pretrain"
  assert configs["lxmert"].init_from == demo.run_dir(str(tmp_path), "pretrain")
  assert not configs["scratch"].init_from

  # LXMERT with and without pretraining: the same fine-tuning recipe and length.
  def strip(c):
    return {k: v for k, v in demo._config_dict(c).items() if k != "init_from"}

  assert strip(configs["lxmert"]) == strip(configs["scratch"])
  for name in demo.BASELINES:
    assert configs[name].data.data_dir.endswith(os.path.join("data", name))
    assert configs[name].total_steps == config.baseline_steps
  # Same model everywhere; the lanes' JSON round trip keeps every run's identity.
  assert len({json.dumps(c.model.to_dict(), sort_keys=True) for c in configs.values()}) == 1
  import ml_collections

  again = demo.run_configs(ml_collections.ConfigDict(json.loads(config.to_json())), str(tmp_path))
  assert all(demo._identity(configs, n) == demo._identity(again, n) for n in demo.RUNS)


def test_lane_environment_is_one_single_threaded_device(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
  env = demo.lane_env(threads=1)
  assert "device_count" not in env["XLA_FLAGS"] and "--xla_foo=1" in env["XLA_FLAGS"]
  assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
  assert env["TF_NUM_INTRAOP_THREADS"] == "1"
  cores = demo.lane_cores(2, 1)
  assert cores == [None, None] or (len(cores[0] | cores[1]) == 2 and not cores[0] & cores[1])


def _fake_records():
  accuracy = {"image_only": 0.3, "language_only": 0.4, "scratch": 0.9, "lxmert": 0.95}
  records = {}
  for name in demo.RUNS:
    acc = accuracy.get(name)
    test = (
      {}
      if acc is None
      else {"accuracy": acc, "accuracy_binary": acc - 0.01, "accuracy_other": acc + 0.01}
    )
    records[name] = {
      "results": {"eval": {"test": test}, "train": {"loss": 0.1}},
      "steps": 10,
      "batch_size": 4,
      "elapsed_seconds": 61.0,
    }
  return records


def test_report_has_the_papers_shape(tmp_path):
  info = {
    "splits": {
      "train": {"num_images": 8, "num_sentences": 80},
      "test": {"num_images": 2, "num_sentences": 19},
    }
  }
  results = demo.build_results(
    easy_vqa_config.get_config("tiny"),
    str(tmp_path),
    _fake_records(),
    {"convert": 5.0, "train": 70.0},
    info,
  )
  assert results["rows"] == ["Image Only", "Language Only", "LXMERT w/o pretraining", "LXMERT"]
  assert results["columns"] == ["Binary (yes/no)", "Other", "Accuracy"]
  assert results["table"]["LXMERT"] == {"Binary (yes/no)": 94.0, "Other": 96.0, "Accuracy": 95.0}
  table = demo.format_table(results).splitlines()
  assert table[0] == "| Method | Binary (yes/no) | Other | Accuracy |"
  assert table[2] == "| Image Only | 29.00 | 31.00 | 30.00 |"
  assert table[-1] == "| LXMERT | 94.00 | 96.00 | 95.00 |"
  md = demo.format_markdown(results)
  assert "| LXMERT pretraining (every objective) | 10 x 4 | 1m01s | - | - |" in md
  assert "convert 0m05s, train 1m10s" in md


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
  """Reduced demo: 120 images per split, 3 boxes, hidden 32, two lanes, a few hundred steps."""
  config = easy_vqa_config.get_config("tiny")
  config.lanes.count = 2
  config.lanes.status_every_secs = 5
  config.finetune.total_steps = 150
  config.finetune.eval.every_steps = 0
  config.finetune.optim.learning_rate = 1e-3
  config.pretrain.total_steps = 50
  config.baseline_steps = 50
  workdir = str(tmp_path / "demo")
  results = demo.run_demo(config, workdir)

  assert set(results) >= {
    "table",
    "rows",
    "columns",
    "runs",
    "elapsed_seconds",
    "final_checkpoint",
    "data",
    "config",
  }
  assert set(results["elapsed_seconds"]) >= {"convert", "train", "report", "total", *demo.RUNS}
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["table"] == results["table"]
  md = open(os.path.join(workdir, "results.md")).read()
  assert demo.format_table(results) in md
  for row in results["rows"]:
    assert set(results["table"][row]) == set(results["columns"])
    assert all(0 <= v <= 100 for v in results["table"][row].values())
  assert results["data"]["test"]["images"] == 120
  table = results["table"]
  assert table["LXMERT"]["Accuracy"] > table["Language Only"]["Accuracy"]
  # What lxmert_jax.predict --workdir reads: final checkpoint, vocabulary, feature scaling.
  assert os.path.isdir(os.path.join(results["final_checkpoint"], "params"))
  for name in ("vocab.txt", "dataset_info.json"):
    assert os.path.isfile(os.path.join(workdir, name))
  # Both lanes logged their runs; a second call reuses everything it can.
  for lane in (0, 1):
    assert "[demo]" in open(os.path.join(workdir, "logs", f"lane{lane}.log")).read()
  again = demo.run_demo(config, workdir)
  assert again["table"] == results["table"]
  assert again["elapsed_seconds"]["train"] < results["elapsed_seconds"]["train"]
