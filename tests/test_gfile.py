"""Local paths and URLs alike: lxmert_jax.gfile, and data / runs read and written through it.

TensorFlow's in-memory ``ram://`` filesystem stands in for ``gs://``: both are reached only
through ``tf.io.gfile``, so code that works on one works on the other. Everything read from or
written to ``ram://`` is compared with the same thing done on local disk.
"""

import json
import os
import uuid

import numpy as np
import pytest
from test_train import make_dataset, tiny_config

from configs import easy_vqa
from lxmert_jax import checkpoint as ckpt
from lxmert_jax import gfile, step_log, train
from lxmert_jax.data import pipeline
from tfrecords_tools import shards

# Tiny models: XLA's optimisation passes cost far more than they save (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


def ram_dir() -> str:
  # ram:// lives as long as the process: a fresh root per use keeps tests independent.
  return f"ram://lxmert_test_{uuid.uuid4().hex}"


def copy_dir(src: str, dst: str) -> None:
  """Copies the files of the flat directory ``src`` to ``dst`` (like `gcloud storage cp -r`)."""
  gfile.makedirs(dst)
  for name in os.listdir(src):
    gfile.copy(os.path.join(src, name), os.path.join(dst, name), overwrite=True)


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
  return str(tmp_path) if request.param == "local" else ram_dir()


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
  return str(make_dataset(tmp_path_factory.mktemp("gfile")))


@pytest.fixture(scope="module")
def ram_data(local_data):
  url = ram_dir() + "/data"
  copy_dir(local_data, url)
  return url


def test_is_url_and_abspath(tmp_path, monkeypatch):
  for url in ("gs://bucket/x", "ram://x", "s3://b/y", "file:///tmp/x"):
    assert gfile.is_url(url)
    assert gfile.abspath(url) == url
  for local in ("/tmp/x", "data/x", "x", "C:/x", "gs:/bucket"):
    assert not gfile.is_url(local)
  monkeypatch.chdir(tmp_path)
  assert gfile.abspath("run") == str(tmp_path / "run")
  assert ckpt.checkpoint_dir("run") == str(tmp_path / "run" / "checkpoints")
  assert ckpt.checkpoint_dir("gs://bucket/run") == "gs://bucket/run/checkpoints"


def test_file_functions(root):
  d = os.path.join(root, "a", "b")
  assert not gfile.exists(d) and not gfile.isdir(d)
  gfile.makedirs(d)
  gfile.makedirs(d)  # Existing: no error.
  assert gfile.exists(d) and gfile.isdir(d)
  path = os.path.join(d, "f.txt")
  with gfile.open(path, "w") as f:
    f.write("one\n")
  with gfile.open(path, "a") as f:
    f.write("two\n")
  with gfile.open(path) as f:
    assert list(f) == ["one\n", "two\n"]
  assert gfile.exists(path) and not gfile.isdir(path)
  with gfile.open(path + ".tmp", "wb") as f:
    f.write(b"\x00\xffbytes")
  gfile.replace(path + ".tmp", path)  # Overwrites, like os.replace.
  assert not gfile.exists(path + ".tmp")
  with gfile.open(path, "rb") as f:
    assert f.read() == b"\x00\xffbytes"
  other = os.path.join(d, "g.txt")
  gfile.copy(path, other)
  with gfile.open(other, "rb") as f:
    assert f.read() == b"\x00\xffbytes"
  with gfile.open(os.path.join(d, "h.json"), "w") as f:
    f.write("{}")
  assert sorted(gfile.glob(os.path.join(d, "*.txt"))) == [path, other]
  assert gfile.glob(os.path.join(d, "*.csv")) == []
  assert gfile.listdir(os.path.join(root, "a")) == ["b"]
  assert sorted(gfile.listdir(d)) == ["f.txt", "g.txt", "h.json"]


def test_staged_locally_copies_only_on_success(root):
  gfile.makedirs(root)
  path = os.path.join(root, "preds.json")
  with gfile.staged_locally(path) as local:
    assert not gfile.is_url(local)
    assert (local == path) != gfile.is_url(root)  # Local paths are written in place.
    with open(local, "w") as f:
      f.write('["ok"]')
  with gfile.open(path) as f:
    assert json.load(f) == ["ok"]
  if not gfile.is_url(root):
    return  # Local writers make their own files atomic (temporary name + os.replace).
  failed = os.path.join(root, "failed.json")
  with pytest.raises(RuntimeError, match="writer broke"):
    with gfile.staged_locally(failed) as local:
      with open(local, "w") as f:
        f.write("[")
      raise RuntimeError("writer broke")
  assert not gfile.exists(failed)


def test_data_dir_on_url_reads_like_local(local_data, ram_data):
  for split in ("train", "test"):
    local, remote = shards.find_shards(local_data, split), shards.find_shards(ram_data, split)
    assert len(local) == 4 and all(p.startswith(ram_data + "/") for p in remote)
    assert [os.path.basename(p) for p in remote] == [os.path.basename(p) for p in local]
  assert shards.read_info(ram_data) == shards.read_info(local_data)
  assert shards.read_raw_info(ram_data) == shards.read_raw_info(local_data)
  assert pipeline.num_examples(ram_data, "train,test") == pipeline.num_examples(
    local_data, "train,test"
  )
  config = tiny_config(easy_vqa, local_data, "finetune,tiny")
  layouts = [
    pipeline.Layout.from_info(d, config.data.max_seq_length, 1) for d in (local_data, ram_data)
  ]
  assert layouts[0] == layouts[1]
  topology = dict(num_devices=8, process_index=0, process_count=1)
  evals = [
    list(pipeline.make_eval_dataset(d, "test", layout=layouts[0], global_batch_size=16, **topology))
    for d in (local_data, ram_data)
  ]
  trains = []
  for d in (local_data, ram_data):
    ds = pipeline.make_train_dataset(
      d, "train", layout=layouts[0], global_batch_size=16, seed=3, start_step=1, **topology
    )
    it = pipeline.train_iterator(ds)
    trains.append([next(it) for _ in range(3)])  # Over an epoch boundary (12 groups, 1-4 each).
  for local, remote in (evals, trains):
    assert len(local) == len(remote) > 0
    for a, b in zip(local, remote):
      assert sorted(a) == sorted(b)
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert np.any(evals[0][0]["input_ids"]) and np.any(trains[0][0]["visual_feats"])


def test_url_errors_name_the_url(ram_data, tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"no shards of split 'val' in ram://.*/data"):
    shards.find_shards(ram_data, "val")
  empty = ram_dir()
  gfile.makedirs(empty)
  with pytest.raises(FileNotFoundError, match=rf"{empty}/dataset_info.json not found"):
    shards.read_info(empty)
  config = tiny_config(easy_vqa, ram_data, "finetune,tiny")
  train.validate_config(config)  # A URL directory is accepted...
  config.data.data_dir = empty + "/missing"
  with pytest.raises(FileNotFoundError, match=r"data_dir='ram://.*/missing' is not a directory"):
    train.validate_config(config)  # ... a missing one is named.
  # Converters write locally only: they stop before touching the URL or the local disk.
  monkeypatch.chdir(tmp_path)
  out = ram_dir() + "/out"
  with pytest.raises(ValueError, match=rf"cannot write shards to {out}.*gcloud storage cp -r"):
    shards.ShardedGroupWriter(out, "train", num_shards=2)
  with pytest.raises(ValueError, match="gcloud storage cp -r"):
    shards.write_info(out, {"schema_version": 1})
  assert not gfile.exists(out) and os.listdir(tmp_path) == []


def test_step_log_on_url_truncates_and_appends():
  workdir = ram_dir()
  gfile.makedirs(workdir)
  log = step_log.StepLog(workdir, 0)
  log.append([1, 2], [0.5, 0.25])
  log.append([3], [0.125])
  path = os.path.join(workdir, step_log.FILE_NAME)
  assert step_log.read(path) == [
    {"step": 1, "loss": 0.5},
    {"step": 2, "loss": 0.25},
    {"step": 3, "loss": 0.125},
  ]
  step_log.StepLog(workdir, 2)  # Resumed from step 2: step 3 goes.
  assert [r["step"] for r in step_log.read(path)] == [1, 2]
  assert not gfile.exists(path + ".tmp")


def test_training_with_data_and_workdir_on_url(local_data, ram_data, tmp_path, monkeypatch):
  """A run reading ram:// data into a ram:// workdir equals the same run on local disk.

  Orbax cannot write ram://: etils.epath (Orbax's path type) knows gs://, s3://, az:// and
  hf:// only, and TensorStore, which writes the arrays, has no driver for TensorFlow's
  in-memory filesystem. The URL run therefore keeps its checkpoints in a local directory;
  everything else of its workdir (TensorBoard events, results.json, losses.jsonl, prediction
  files) goes to ram://. Orbax reaches gs:// through epath and TensorStore's GCS driver.
  """

  def run(data_dir, workdir):
    # One step (each one costs seconds of compiling here) with a non-zero learning rate.
    config = tiny_config(easy_vqa, data_dir, "finetune,tiny", total_steps=1)
    config.optim.warmup_fraction = 0.0
    config.eval.predict_splits = "test"
    return train.train_and_evaluate(config, workdir)

  local_work = str(tmp_path / "local")
  expected = run(local_data, local_work)
  url_work = ram_dir() + "/run"
  local_ckpt = str(tmp_path / "url_run_checkpoints")
  real_checkpoint_dir = ckpt.checkpoint_dir
  monkeypatch.setattr(
    ckpt, "checkpoint_dir", lambda w: local_ckpt if w == url_work else real_checkpoint_dir(w)
  )
  got = run(ram_data, url_work)
  assert got["step"] == expected["step"] == 1 and expected["train"]["learning_rate"] > 0
  assert got["eval"] == expected["eval"] and got["eval"]["test"]["num_examples"] > 0
  for key in ("loss", "loss_qa", "accuracy", "grad_norm", "param_norm"):
    assert got["train"][key] == expected["train"][key], key
  with gfile.open(os.path.join(url_work, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(got))
  url_losses = step_log.read(os.path.join(url_work, step_log.FILE_NAME))
  assert [r["step"] for r in url_losses] == [1]
  assert url_losses == step_log.read(os.path.join(local_work, step_log.FILE_NAME))
  name = os.path.join("predictions", "test_predict.json")
  with gfile.open(os.path.join(url_work, name)) as f, open(os.path.join(local_work, name)) as g:
    assert f.read() == g.read()
  assert gfile.glob(os.path.join(url_work, "events.out.tfevents.*"))
  assert not gfile.glob(os.path.join(url_work, "*.tmp"))
  assert os.path.isdir(os.path.join(local_ckpt, "1", "params"))
