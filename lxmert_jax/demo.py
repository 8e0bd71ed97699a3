r"""The easy-VQA demo: convert, pretrain, fine-tune, train the baselines, print the paper's table.

  python -m lxmert_jax.main --config=configs/easy_vqa.py --workdir=workdir/easy_vqa
  lxmert-jax-demo --workdir=workdir/easy_vqa          # the same, as a console script

Phases (each timed; see docs/demo.md for measured numbers):

  convert   easy-VQA -> ``<workdir>/data/easy_vqa`` (tfrecords_tools.easy_vqa; reused later)
  blank     the baselines' inputs: ``data/language_only`` (every region feature and box set to
            zero, i.e. the training-set mean region after the feature centring) and
            ``data/image_only`` (every question reduced to ``[CLS] [SEP]``)
  train     five ``lxmert_jax.train.run`` calls on two lanes (processes pinned to one core
            each, so a 2-core machine trains two models at once):
              lane 0: pretrain (all objectives) -> lxmert (fine-tune from the pretrained params)
              lane 1: scratch (LXMERT w/o pretraining) -> language_only -> image_only
  report    ``results.json``, ``results.md`` and the table printed at the end.

Every finished run records its config and results in ``runs/<name>/demo_run.json``; a rerun
with the same settings reuses it (and the conversion), a changed run is trained again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import ml_collections
from absl import logging

# Runs of the demo, in the order each lane trains them.
LANES = (("pretrain", "lxmert"), ("scratch", "language_only", "image_only"))
RUNS = tuple(name for lane in LANES for name in lane)
# Rows of the table (the paper's order) and the run behind each.
TABLE_ROWS = (
  ("image_only", "Image Only"),
  ("language_only", "Language Only"),
  ("scratch", "LXMERT w/o pretraining"),
  ("lxmert", "LXMERT"),
)
# Columns of the table: eval metric of lxmert_jax.evaluate -> header.
TABLE_COLUMNS = (
  ("accuracy_binary", "Binary (yes/no)"),
  ("accuracy_other", "Other"),
  ("accuracy", "Accuracy"),
)
DATA_SUBDIR = "data"
RUNS_SUBDIR = "runs"
LOGS_SUBDIR = "logs"
RUN_RECORD = "demo_run.json"
CONFIG_FILE = "demo_config.json"
EASY_VQA = "easy_vqa"
# Files the predictor needs at the top of the workdir (lxmert_jax.inference.workdir_files).
ANSWERS_FILE = "answers.json"
VOCAB_FILE = "vocab.txt"
INFO_FILE = "dataset_info.json"


# ------------------------------------------------------------------------------------------------
# Small helpers.


def _fmt_secs(secs: float) -> str:
  secs = int(round(max(secs, 0.0)))
  return f"{secs // 60}m{secs % 60:02d}s"


def _write_json(path: str, data) -> None:
  """Atomic JSON write: readers never see half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _say(msg: str, *args) -> None:
  """Progress lines for the console (absl's INFO is on in lxmert_jax.main)."""
  logging.info("[demo] " + msg, *args)


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  """JSON-ready form of a config (tuples -> lists), for records and equality checks."""
  return json.loads(config.to_json(sort_keys=True))


# ------------------------------------------------------------------------------------------------
# Phase: data (conversion + blanked copies for the baselines).


def data_dirs(workdir: str) -> dict[str, str]:
  """Data directory of each run's inputs."""
  root = os.path.join(workdir, DATA_SUBDIR)
  full = os.path.join(root, EASY_VQA)
  return {
    "pretrain": full,
    "lxmert": full,
    "scratch": full,
    "language_only": os.path.join(root, "language_only"),
    "image_only": os.path.join(root, "image_only"),
  }


def convert(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Converts easy-VQA into ``<workdir>/data/easy_vqa`` (reused when the settings match)."""
  from tfrecords_tools import easy_vqa as easy_vqa_tool

  c = config.convert
  return easy_vqa_tool.convert_easy_vqa(
    data_dirs(workdir)["scratch"],
    num_shards=c.num_shards,
    num_boxes=c.num_boxes,
    max_seq_length=config.finetune.data.max_seq_length,
    workers=c.workers or None,
    max_images=c.max_images or None,
  )


def _blank_visual(feature) -> None:
  """Language Only: every region's features and box become 0 (the centred mean region)."""
  raw = feature["features"].bytes_list.value[0]
  feature["features"].bytes_list.value[0] = bytes(len(raw))
  boxes = feature["boxes"].float_list.value
  boxes[:] = [0.0] * len(boxes)


def _blank_question(cls_id: int, sep_id: int):
  """Image Only: every question becomes ``[CLS] [SEP]`` (answers and types are kept)."""

  def blank(feature) -> None:
    num_sentences = len(feature["sent_len"].int64_list.value)
    feature["sent_len"].int64_list.value[:] = [2] * num_sentences
    feature["token_ids"].int64_list.value[:] = [cls_id, sep_id] * num_sentences

  return blank


def write_blanked(src_dir: str, dst_dir: str, blank: Callable, splits: Sequence[str]) -> None:
  """Copies the shards of ``splits`` with ``blank`` applied to every record.

  ``dataset_info.json`` is copied except the split entries, which the writer rewrites; a
  finished copy carries ``demo_blanked_from`` (the source's conversion settings) and is reused.
  """
  import tensorflow as tf

  from tfrecords_tools import shards

  src_info = shards.read_info(src_dir)
  stamp = {"source": os.path.abspath(src_dir), "settings": src_info.get(EASY_VQA, {}).get("settings")}
  if os.path.exists(os.path.join(dst_dir, INFO_FILE)):
    if shards.read_raw_info(dst_dir).get("demo_blanked_from") == stamp:
      return
    shutil.rmtree(dst_dir)
  os.makedirs(dst_dir, exist_ok=True)
  top = {k: v for k, v in src_info.items() if k != "splits"}
  for split in splits:
    files = shards.find_shards(src_dir, split)
    with shards.ShardedGroupWriter(dst_dir, split, len(files), src_info["feat_dtype"]) as writer:
      for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        blank(feature)
        writer.write_serialized(
          example.SerializeToString(),
          img_ids=[b.decode() for b in feature["img_id"].bytes_list.value],
          num_sentences=len(feature["sent_len"].int64_list.value),
          num_boxes=int(feature["num_boxes"].int64_list.value[0]),
          feat_dim=int(feature["feat_dim"].int64_list.value[0]),
        )
      extra = {k: v for k, v in src_info["splits"][split].items()
               if k not in ("num_shards", "num_groups", "num_images", "num_sentences",
                            "written_at", "command")}
      writer.info.update(extra)
  info = shards.read_raw_info(dst_dir)
  info.update(top, demo_blanked_from=stamp)
  shards.write_info(dst_dir, info)


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The convert and blank phases; returns dataset_info.json of the conversion."""
  dirs = data_dirs(workdir)
  info = convert(config, workdir)
  tok = _tokenizer_ids(info, dirs["scratch"])
  splits = ("train", "test")
  write_blanked(dirs["scratch"], dirs["language_only"], _blank_visual, splits)
  write_blanked(dirs["scratch"], dirs["image_only"], _blank_question(tok["cls_id"], tok["sep_id"]),
                splits)
  return info


def _tokenizer_ids(info: Mapping, data_dir: str) -> dict:
  """[CLS]/[SEP] ids: from dataset_info.json, else from the conversion's vocab.txt."""
  tok = dict(info.get("tokenizer", {}))
  if "cls_id" not in tok or "sep_id" not in tok:
    from lxmert_jax.data.tokenization import WordPieceTokenizer

    vocab = WordPieceTokenizer(os.path.join(data_dir, info.get("vocab_file", VOCAB_FILE)))
    tok.update(cls_id=vocab.cls_id, sep_id=vocab.sep_id)
  return tok


# ------------------------------------------------------------------------------------------------
# Phase: train (run configs, lanes).


def run_configs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """The ``lxmert_jax.train.run`` config of every run, complete (model, data_dir, seed)."""
  dirs = data_dirs(workdir)
  out = {}
  for name in RUNS:
    base = config.pretrain if name == "pretrain" else config.finetune
    run = ml_collections.ConfigDict(copy.deepcopy(base.to_dict()))
    run.model = ml_collections.ConfigDict(config.model.to_dict())
    run.seed = config.seed
    run.data.data_dir = dirs[name]
    if name == "scratch":
      run.total_steps = config.scratch_steps
    elif name in ("language_only", "image_only"):
      run.total_steps = config.baseline_steps
    elif name == "lxmert":
      # Params only from the pretraining run's final checkpoint; the QA head carries over as
      # is (same 13 answers in the same order), the pretraining-only heads are dropped.
      run.init_from = run_dir(workdir, "pretrain")
    out[name] = run
  return out


def run_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, RUNS_SUBDIR, name)


def _run_identity(configs: Mapping[str, ml_collections.ConfigDict], name: str) -> dict:
  """What a run's result depends on: its config, and its parent's identity (lxmert)."""
  ident = {"config": _config_dict(configs[name])}
  if name == "lxmert":
    ident["parent"] = _run_identity(configs, "pretrain")
  return ident


def reusable_record(workdir: str, configs, name: str) -> dict | None:
  """The finished run's record when its identity matches, else None."""
  path = os.path.join(run_dir(workdir, name), RUN_RECORD)
  if not os.path.exists(path):
    return None
  record = _read_json(path)
  return record if record.get("identity") == _run_identity(configs, name) else None


def train_one(name: str, configs, workdir: str) -> dict:
  """Trains (or reuses) one run; returns its record (results, elapsed seconds)."""
  from lxmert_jax import train

  record = reusable_record(workdir, configs, name)
  if record is not None:
    _say("%s: reusing the finished run in %s", name, run_dir(workdir, name))
    return record
  directory = run_dir(workdir, name)
  if os.path.exists(directory):  # A different or unfinished run: start it over.
    shutil.rmtree(directory)
  config = configs[name]
  _say("%s: start (%d steps of %d examples) -> %s", name, config.total_steps, config.batch_size,
       directory)
  start = time.time()
  metrics = train.train_and_evaluate(config, directory)
  elapsed = time.time() - start
  record = {"name": name, "identity": _run_identity(configs, name), "results": metrics,
            "elapsed_seconds": round(elapsed, 1), "steps": int(config.total_steps),
            "batch_size": int(config.batch_size)}
  _write_json(os.path.join(directory, RUN_RECORD), record)
  _say("%s: done in %s", name, _fmt_secs(elapsed))
  return record


def train_lane(lane: int, configs, workdir: str) -> dict[str, dict]:
  return {name: train_one(name, configs, workdir) for name in LANES[lane]}


def _lane_env(threads: int) -> dict[str, str]:
  """Environment of a lane process: one CPU device, ``threads`` XLA/TF threads."""
  env = dict(os.environ)
  # Each lane is its own single-device JAX process (a test harness' fake device count would
  # only split its small batches further).
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  if threads == 1:
    flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  env["XLA_FLAGS"] = flags.strip()
  for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    env[var] = str(threads)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _lane_cores(lanes: int, threads: int) -> list[set[int] | None]:
  """Disjoint core sets per lane, or no pinning when the machine has too few cores."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if len(cores) < lanes * threads:
    return [None] * lanes
  return [set(cores[i * threads:(i + 1) * threads]) for i in range(lanes)]


class _LaneProcess:
  """One lane as a child process; its log lines are echoed with a ``lane i`` prefix."""

  def __init__(self, lane: int, workdir: str, threads: int, cores: set[int] | None):
    self.lane = lane
    log_dir = os.path.join(workdir, LOGS_SUBDIR)
    os.makedirs(log_dir, exist_ok=True)
    self.log = open(os.path.join(log_dir, f"lane{lane}.log"), "w")
    cmd = [sys.executable, "-m", "lxmert_jax.demo", f"--workdir={workdir}", f"--lane={lane}"]
    self.proc = subprocess.Popen(cmd, env=_lane_env(threads), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1)
    if cores is not None:
      os.sched_setaffinity(self.proc.pid, cores)  # Before the child starts any thread pool.
    self.thread = threading.Thread(target=self._echo, daemon=True)
    self.thread.start()

  def _echo(self) -> None:
    for line in self.proc.stdout:
      self.log.write(line)
      self.log.flush()
      if _is_progress(line):
        sys.stderr.write(f"lane {self.lane} | {line}")
        sys.stderr.flush()

  def wait(self) -> int:
    code = self.proc.wait()
    self.thread.join()
    self.log.close()
    return code


# Lines of a lane worth echoing: progress, evaluations, the demo's own lines, errors.
_PROGRESS = re.compile(r"\[demo\]|\] step \d+/\d+|\[eval |Error|error|Traceback|^\s+File ")


def _is_progress(line: str) -> bool:
  return bool(_PROGRESS.search(line))


def train_all(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """The train phase: every run, on ``config.lanes.count`` lanes (1 = in this process)."""
  configs = run_configs(config, workdir)
  lanes = config.lanes.count
  if lanes not in (1, len(LANES)):
    raise ValueError(f"config.lanes.count must be 1 or {len(LANES)}, got {lanes}")
  if lanes == 1 or _has_accelerator():
    return {name: rec for lane in range(len(LANES)) for name, rec in
            train_lane(lane, configs, workdir).items()}
  _write_json(os.path.join(workdir, CONFIG_FILE), _config_dict(config))
  cores = _lane_cores(lanes, config.lanes.threads)
  _say("training on %d lanes side by side (cores %s); logs in %s/", lanes,
       [sorted(c) if c else "any" for c in cores], os.path.join(workdir, LOGS_SUBDIR))
  procs = [_LaneProcess(i, workdir, config.lanes.threads, cores[i]) for i in range(lanes)]
  codes = [p.wait() for p in procs]
  failed = [i for i, code in enumerate(codes) if code]
  if failed:
    raise RuntimeError(f"lane(s) {failed} failed (exit codes {[codes[i] for i in failed]}); see "
                       f"{os.path.join(workdir, LOGS_SUBDIR)}/lane<i>.log")
  records = {}
  for name in RUNS:
    record = reusable_record(workdir, configs, name)
    if record is None:
      raise RuntimeError(f"lane finished but {run_dir(workdir, name)}/{RUN_RECORD} is missing")
    records[name] = record
  return records


def _has_accelerator() -> bool:
  """Lanes pin CPU cores; on a GPU/TPU host the runs go one after another instead."""
  import jax

  return jax.default_backend() != "cpu"


# ------------------------------------------------------------------------------------------------
# Phase: report.


def topic_accuracies(data_dir: str, predictions_path: str) -> dict[str, float]:
  """Accuracy per question topic (shape / color) from a run's test predictions."""
  from tfrecords_tools import easy_vqa as easy_vqa_tool

  questions = {q["uid"]: q for q in easy_vqa_tool.read_questions(data_dir, "test")}
  hits: dict[str, list[int]] = {}
  for row in _read_json(predictions_path):
    q = questions[row["question_id"]]
    hits.setdefault(q["topic"], []).append(int(row["answer"] == q["answer"]))
  return {f"accuracy_{topic}": sum(h) / len(h) for topic, h in sorted(hits.items())}


def build_results(config, workdir: str, records: Mapping[str, dict], phases: Mapping[str, float],
                  info: Mapping) -> dict:
  """results.json: the table, every run's metrics and budget, elapsed time per phase."""
  runs = {}
  for name, record in records.items():
    test = dict(record["results"].get("eval", {}).get("test", {}))
    pred = os.path.join(run_dir(workdir, name), "predictions", "test_predict.json")
    if name != "pretrain" and os.path.exists(pred):
      test.update(topic_accuracies(data_dirs(workdir)["scratch"], pred))
    runs[name] = {"test": test, "train": record["results"].get("train", {}),
                  "steps": record["steps"], "batch_size": record["batch_size"],
                  "elapsed_seconds": record["elapsed_seconds"]}
  table = {label: {header: 100 * runs[name]["test"][key] for key, header in TABLE_COLUMNS}
           for name, label in TABLE_ROWS}
  return {
    "table": table,
    "columns": [header for _, header in TABLE_COLUMNS],
    "rows": [label for _, label in TABLE_ROWS],
    "runs": runs,
    "elapsed_seconds": {k: round(v, 1) for k, v in phases.items()},
    "final_checkpoint": os.path.join(workdir, "checkpoints"),
    "data": {"train_questions": info["splits"]["train"]["num_sentences"],
             "test_questions": info["splits"]["test"]["num_sentences"],
             "train_images": info["splits"]["train"]["num_images"],
             "test_images": info["splits"]["test"]["num_images"]},
    "config": _config_dict(config),
  }


def format_table(results: Mapping) -> str:
  """The paper-shaped table as Markdown (accuracies in %)."""
  cols = results["columns"]
  lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
  for row in results["rows"]:
    lines.append(f"| {row} | " + " | ".join(f"{results['table'][row][c]:.2f}" for c in cols) + " |")
  return "\n".join(lines)


def format_markdown(results: Mapping) -> str:
  """results.md: the table, each run's budget, elapsed time per phase."""
  runs, el = results["runs"], results["elapsed_seconds"]
  d = results["data"]
  out = [
    "# LXMERT on easy-VQA", "",
    f"Test split: {d['test_questions']:,} questions on {d['test_images']:,} images; trained on "
    f"{d['train_questions']:,} questions on {d['train_images']:,} images.", "",
    format_table(results), "",
    "| Run | Steps x batch | Train time | Shape acc. | Color acc. |", "|---|---:|---:|---:|---:|",
  ]
  labels = dict(TABLE_ROWS, pretrain="LXMERT pretraining (all objectives)")
  for name in RUNS:
    r = runs[name]
    shape, color = (f"{100 * r['test'][k]:.2f}" if k in r["test"] else "-"
                    for k in ("accuracy_shape", "accuracy_color"))
    out.append(f"| {labels[name]} | {r['steps']} x {r['batch_size']} | "
               f"{_fmt_secs(r['elapsed_seconds'])} | {shape} | {color} |")
  out += ["", "Elapsed per phase: " + ", ".join(f"{k} {_fmt_secs(v)}" for k, v in el.items()), "",
          "The baselines get a shorter run than LXMERT: their accuracy is the answer prior of "
          "what they see, and it stops improving within their budget.", ""]
  return "\n".join(out)


def publish_final(workdir: str, info: Mapping) -> None:
  """Puts what ``lxmert_jax.predict --workdir`` needs at the top of the workdir.

  ``checkpoints/`` (LXMERT's final fine-tuned checkpoint), ``vocab.txt``, ``answers.json`` and
  ``dataset_info.json`` (feature scaling, box count) of the conversion.
  """
  src = os.path.join(run_dir(workdir, "lxmert"), "checkpoints")
  dst = os.path.join(workdir, "checkpoints")
  if os.path.exists(dst):
    shutil.rmtree(dst)
  shutil.copytree(src, dst)
  data_dir = data_dirs(workdir)["lxmert"]
  shutil.copy(os.path.join(data_dir, info.get("vocab_file", VOCAB_FILE)),
              os.path.join(workdir, VOCAB_FILE))
  shutil.copy(os.path.join(data_dir, INFO_FILE), os.path.join(workdir, INFO_FILE))
  _write_json(os.path.join(workdir, ANSWERS_FILE), list(info["answer_vocab"]))


# ------------------------------------------------------------------------------------------------
# The demo.


def run_demo(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every phase in ``workdir``; returns results.json's contents (also printed)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  phases = {}

  def timed(phase: str, fn, *args):
    _say("phase %s ...", phase)
    t = time.time()
    out = fn(*args)
    phases[phase] = time.time() - t
    _say("phase %s done in %s (demo elapsed %s)", phase, _fmt_secs(phases[phase]),
         _fmt_secs(time.time() - start))
    return out

  info = timed("convert", convert, config, workdir)
  timed("blank", prepare_data, config, workdir)
  records = timed("train", train_all, config, workdir)
  for name, record in records.items():
    phases[name] = record["elapsed_seconds"]
  timed("report", publish_final, workdir, info)
  phases["total"] = time.time() - start
  results = build_results(config, workdir, records, phases, info)
  _write_json(os.path.join(workdir, "results.json"), results)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(format_markdown(results))
  print("\n" + format_markdown(results), flush=True)
  return results


def _lane_main(workdir: str, lane: int) -> None:
  """A lane process: the runs of ``LANES[lane]`` with the orchestrator's config."""
  config = ml_collections.ConfigDict(_read_json(os.path.join(workdir, CONFIG_FILE)))
  train_lane(lane, run_configs(config, workdir), workdir)


def run() -> None:
  """Console script ``lxmert-jax-demo``: ``--workdir`` (required), ``--config`` (optional)."""
  from absl import app, flags
  from ml_collections import config_flags

  import configs.easy_vqa

  config_flags.DEFINE_config_file("config", configs.easy_vqa.__file__, "Demo config.")
  flags.DEFINE_string("workdir", None, "Directory for data, runs and results.", required=True)
  flags.DEFINE_integer("lane", -1, "Internal: run one training lane of an ongoing demo.")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    if flags.FLAGS.lane >= 0:
      _lane_main(os.path.abspath(flags.FLAGS.workdir), flags.FLAGS.lane)
    else:
      run_demo(flags.FLAGS.config, flags.FLAGS.workdir)

  app.run(main)


if __name__ == "__main__":
  run()
