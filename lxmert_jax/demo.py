r"""The easy-VQA demo: convert, pretrain, fine-tune, train the baselines, print the paper's table.

  python -m lxmert_jax.main --config=configs/easy_vqa.py --workdir=workdir/easy_vqa
  lxmert-jax-demo --workdir=workdir/easy_vqa          # the same, as a console script

Phases (each timed into results.json; docs/demo.md has measured numbers):

  convert  easy-VQA -> ``<workdir>/data/easy_vqa`` (``tfrecords_tools.easy_vqa``; reused later)
  train    five ``lxmert_jax.train.run`` calls on two lanes, i.e. two processes pinned to one
           core each, so that a 2-core machine trains two models at once:
             lane 0: pretrain (every objective) -> lxmert (fine-tuned from the pretrained params)
             lane 1: scratch (LXMERT w/o pretraining) -> language_only -> image_only
           The baselines read blanked copies of the data, written by lane 1 just before them:
           ``data/language_only`` (every region feature and box set to 0, which after the
           features' centring is the training set's mean region) and ``data/image_only``
           (every question reduced to ``[CLS] [SEP]``).
  report   ``results.json``, ``results.md`` and the table printed at the end; the final LXMERT
           checkpoint, ``vocab.txt`` and ``dataset_info.json`` are published at the top of the
           workdir for ``python -m lxmert_jax.predict --workdir=<workdir>``.

Every finished run records its config and results in ``runs/<name>/demo_run.json``; a rerun
with the same settings reuses it (and the conversion); a run whose settings changed is trained
again from scratch, and so is ``lxmert`` when its pretraining changed.
"""

from __future__ import annotations

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
BASELINES = ("language_only", "image_only")
RUN_RECORD = "demo_run.json"
CONFIG_FILE = "demo_config.json"
TEST_SPLIT = "test"


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
  """The demo's own progress lines (the lanes' parents echo every line tagged ``[demo]``)."""
  logging.info("[demo] " + msg, *args)


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  """JSON-ready form of a config (tuples -> lists), for records and equality checks."""
  return json.loads(config.to_json(sort_keys=True))


def data_dir(workdir: str, name: str) -> str:
  """Directory of the inputs of run ``name`` (the baselines read blanked copies)."""
  sub = name if name in BASELINES else "easy_vqa"
  return os.path.join(workdir, "data", sub)


def run_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "runs", name)


# ------------------------------------------------------------------------------------------------
# Data: the conversion and the blanked copies of the baselines.


def convert(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Converts easy-VQA once into ``<workdir>/data/easy_vqa``; returns its dataset_info.json."""
  from tfrecords_tools import easy_vqa as easy_vqa_tool

  c = config.convert
  directory = data_dir(workdir, "scratch")
  return easy_vqa_tool.convert_easy_vqa(
    directory,
    num_shards=c.num_shards,
    num_boxes=c.num_boxes,
    max_seq_length=config.finetune.data.max_seq_length,
    workers=c.workers or None,
    max_images=c.max_images or None,
  )


def blank_visual(feature) -> None:
  """Language Only: every region feature and box becomes 0 (the centred mean region)."""
  raw = feature["features"].bytes_list.value[0]
  feature["features"].bytes_list.value[0] = bytes(len(raw))
  boxes = feature["boxes"].float_list.value
  boxes[:] = [0.0] * len(boxes)


def blank_question(cls_id: int, sep_id: int) -> Callable:
  """Image Only: every question becomes ``[CLS] [SEP]`` (answers and types are kept)."""

  def blank(feature) -> None:
    num_sentences = len(feature["sent_len"].int64_list.value)
    feature["sent_len"].int64_list.value[:] = [2] * num_sentences
    feature["token_ids"].int64_list.value[:] = [cls_id, sep_id] * num_sentences

  return blank


def write_blanked(src_dir: str, dst_dir: str, blank: Callable, splits: Sequence[str]) -> None:
  """Copies the shards of ``splits`` with ``blank(feature_map)`` applied to every record.

  The copy's dataset_info.json is the source's (counts rewritten by the writer) plus
  ``demo_blanked_from``, which names the source conversion; a matching copy is reused.
  """
  import tensorflow as tf

  from tfrecords_tools import shards

  src_info = shards.read_info(src_dir)
  stamp = {"source": os.path.abspath(src_dir), "conversion": src_info.get("easy_vqa")}
  if shards.read_raw_info(dst_dir).get("demo_blanked_from") == stamp:
    return
  shutil.rmtree(dst_dir, ignore_errors=True)
  os.makedirs(dst_dir)
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
      counts = ("num_shards", "num_groups", "num_images", "num_sentences", "written_at", "command")
      writer.info.update({k: v for k, v in src_info["splits"][split].items() if k not in counts})
  info = shards.read_raw_info(dst_dir)
  info.update({k: v for k, v in src_info.items() if k != "splits"}, demo_blanked_from=stamp)
  shards.write_info(dst_dir, info)  # Written last: a copy without the stamp is redone.


def prepare_baseline_data(workdir: str, name: str) -> None:
  """Writes (or reuses) the blanked copy that baseline ``name`` trains and is tested on."""
  from lxmert_jax.data.tokenization import WordPieceTokenizer
  from tfrecords_tools import shards

  src = data_dir(workdir, "scratch")
  if name == "language_only":
    blank = blank_visual
  else:
    info = shards.read_info(src)
    vocab = WordPieceTokenizer(os.path.join(src, info.get("vocab_file", "vocab.txt")))
    blank = blank_question(vocab.cls_id, vocab.sep_id)
  write_blanked(src, data_dir(workdir, name), blank, ("train", TEST_SPLIT))


# ------------------------------------------------------------------------------------------------
# Runs.


def run_configs(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The complete ``lxmert_jax.train.run`` config of every run (model, data, seed, length)."""
  out = {}
  for name in RUNS:
    base = config.pretrain if name == "pretrain" else config.finetune
    run = ml_collections.ConfigDict(base.to_dict())
    run.model = ml_collections.ConfigDict(config.model.to_dict())
    run.seed = config.seed
    run.data.data_dir = data_dir(workdir, name)
    if config.lanes.count > 1:  # A lane owns `threads` cores: no tf.data pool bigger than that.
      run.data.threads = config.lanes.threads
    if name == "scratch":
      run.total_steps = config.scratch_steps
    elif name in BASELINES:
      run.total_steps = config.baseline_steps
    elif name == "lxmert":
      # Params only, from pretraining's final checkpoint. Same 13 answers in the same order,
      # so the pretrained QA head carries over as is; the pretraining-only heads are dropped.
      run.init_from = run_dir(workdir, "pretrain")
    out[name] = run
  return out


def _identity(configs: Mapping, name: str) -> dict:
  """What a run's result depends on: its config, and for ``lxmert`` its pretraining's."""
  ident = {"config": _config_dict(configs[name])}
  if name == "lxmert":
    ident["pretrain"] = _identity(configs, "pretrain")
  return ident


def finished_record(workdir: str, configs: Mapping, name: str) -> dict | None:
  """The record of a finished run with exactly these settings, else None."""
  path = os.path.join(run_dir(workdir, name), RUN_RECORD)
  if not os.path.exists(path):
    return None
  record = _read_json(path)
  return record if record.get("identity") == _identity(configs, name) else None


def train_one(name: str, configs: Mapping, workdir: str) -> dict:
  """Trains (or reuses) run ``name``; returns its record (results, steps, elapsed seconds)."""
  from lxmert_jax import train

  record = finished_record(workdir, configs, name)
  if record is not None:
    _say("%s: reusing the finished run in %s", name, run_dir(workdir, name))
    return record
  config = configs[name]
  directory = run_dir(workdir, name)
  shutil.rmtree(directory, ignore_errors=True)  # Other settings or unfinished: start over.
  start = time.time()
  if name in BASELINES:
    prepare_baseline_data(workdir, name)
  prepared = time.time() - start
  _say(
    "%s: start, %d steps of %d examples -> %s",
    name,
    config.total_steps,
    config.batch_size,
    directory,
  )
  metrics = train.train_and_evaluate(config, directory)
  elapsed = time.time() - start
  record = {
    "name": name,
    "identity": _identity(configs, name),
    "results": metrics,
    "steps": int(config.total_steps),
    "batch_size": int(config.batch_size),
    "elapsed_seconds": round(elapsed, 1),
    "data_seconds": round(prepared, 1),
  }
  _write_json(os.path.join(directory, RUN_RECORD), record)
  accuracy = metrics.get("eval", {}).get(TEST_SPLIT, {}).get("accuracy")
  _say(
    "%s: done in %s%s",
    name,
    _fmt_secs(elapsed),
    "" if accuracy is None else f", test accuracy {100 * accuracy:.2f}%",
  )
  return record


def enable_compilation_cache(workdir: str) -> None:
  """Persistent XLA cache: identical programs compile once (eval steps of the fine-tuning runs,
  the other lane's programs, reruns of the demo)."""
  import jax

  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "cache", "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def train_lane(lane: int, configs: Mapping, workdir: str) -> dict[str, dict]:
  enable_compilation_cache(workdir)
  return {name: train_one(name, configs, workdir) for name in LANES[lane]}


# ------------------------------------------------------------------------------------------------
# Lanes: child processes pinned to their own cores, echoed with an overall ETA.


def lane_env(threads: int) -> dict[str, str]:
  """Environment of a lane process: one CPU device with ``threads`` XLA and TF threads."""
  env = dict(os.environ)
  # One device per lane: a fake host device count (test harnesses set one) would only split
  # the lane's small batches further.
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  if threads == 1:
    flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  env["XLA_FLAGS"] = flags.strip()
  for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    env[var] = str(threads)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def lane_cores(lanes: int, threads: int) -> list[set[int] | None]:
  """Disjoint core sets, one per lane; no pinning when the machine has too few cores."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if len(cores) < lanes * threads:
    return [None] * lanes
  return [set(cores[i * threads : (i + 1) * threads]) for i in range(lanes)]


# Lines of a lane that reach the console: the demo's own, progress, evaluations and errors.
_ECHO = re.compile(r"\[demo\]|\] step \d+/\d+|\[eval |Error|error:|Traceback|^\s+File ")
_STEP = re.compile(r"\] step (\d+)/(\d+) .*\| ([\d.]+) ms/step")
_START = re.compile(r"\[demo\] (\w+): start")


class LaneProcess:
  """One lane as a child process: log file, echo to the console, progress for the ETA."""

  def __init__(self, lane: int, workdir: str, threads: int, cores: set[int] | None, steps):
    self.lane, self.steps = lane, steps  # steps: run name -> total steps.
    log_dir = os.path.join(workdir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    self.log_path = os.path.join(log_dir, f"lane{lane}.log")
    self.log = open(self.log_path, "w")
    self.run, self.step, self.ms_per_step = None, 0, None
    cmd = [sys.executable, "-m", "lxmert_jax.demo", f"--workdir={workdir}", f"--lane={lane}"]
    self.proc = subprocess.Popen(
      cmd,
      env=lane_env(threads),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      bufsize=1,
    )
    if cores is not None:
      os.sched_setaffinity(self.proc.pid, cores)  # Before the child builds its thread pools.
    self.thread = threading.Thread(target=self._echo, daemon=True)
    self.thread.start()

  def _echo(self) -> None:
    for line in self.proc.stdout:
      self.log.write(line)
      self.log.flush()
      if m := _START.search(line):
        self.run, self.step = m.group(1), 0
      if m := _STEP.search(line):
        self.step, self.ms_per_step = int(m.group(1)), float(m.group(3))
      if _ECHO.search(line):
        sys.stderr.write(f"lane {self.lane} | {line}")
        sys.stderr.flush()

  def remaining_seconds(self) -> float | None:
    """Seconds this lane still needs at its current step time (None before its first step).

    Runs not started yet are costed at the current step time; pretraining steps cost a bit
    more than fine-tuning ones, so the estimate is rough until the last run of the lane.
    """
    if self.ms_per_step is None or self.run not in LANES[self.lane]:
      return None
    if self.proc.poll() is not None:
      return 0.0
    todo = LANES[self.lane][LANES[self.lane].index(self.run) :]
    steps = sum(self.steps[n] for n in todo) - self.step
    return steps * self.ms_per_step / 1000

  def wait(self) -> int:
    code = self.proc.wait()
    self.thread.join()
    self.log.close()
    return code


def _run_lanes(config, workdir: str, configs: Mapping, start: float) -> None:
  _write_json(os.path.join(workdir, CONFIG_FILE), _config_dict(config))
  threads = config.lanes.threads
  cores = lane_cores(len(LANES), threads)
  steps = {name: int(c.total_steps) for name, c in configs.items()}
  lanes = [LaneProcess(i, workdir, threads, cores[i], steps) for i in range(len(LANES))]
  _say(
    "training on %d lanes side by side (cores %s); full logs in %s",
    len(lanes),
    [sorted(c) if c else "any" for c in cores],
    os.path.join(workdir, "logs"),
  )
  while any(lane.proc.poll() is None for lane in lanes):
    time.sleep(1.0)
    if int(time.time() - start) % config.lanes.status_every_secs == 0:
      left = [lane.remaining_seconds() for lane in lanes]
      eta = "" if None in left else f", about {_fmt_secs(max(left))} of training left"
      status = "; ".join(
        f"lane {x.lane}: {x.run or 'starting'} {x.step}/{steps.get(x.run, 0)}" for x in lanes
      )
      _say("elapsed %s | %s%s", _fmt_secs(time.time() - start), status, eta)
  codes = [lane.wait() for lane in lanes]
  failed = [
    f"lane {i} (exit {code}, log {lanes[i].log_path})" for i, code in enumerate(codes) if code
  ]
  if failed:
    raise RuntimeError(f"training failed in {', '.join(failed)}")


def train_all(config: ml_collections.ConfigDict, workdir: str, start: float) -> dict[str, dict]:
  """The train phase: every run, on two lanes or (``lanes.count=1``) in this process."""
  configs = run_configs(config, workdir)
  if config.lanes.count not in (1, len(LANES)):
    raise ValueError(f"config.lanes.count must be 1 or {len(LANES)}, got {config.lanes.count}")
  if config.lanes.count == 1 or _has_accelerator():
    for lane in range(len(LANES)):
      train_lane(lane, configs, workdir)
  else:
    _run_lanes(config, workdir, configs, start)
  records = {name: finished_record(workdir, configs, name) for name in RUNS}
  missing = [name for name, record in records.items() if record is None]
  if missing:
    raise RuntimeError(f"runs {missing} finished without {RUN_RECORD} in {workdir}/runs/")
  return records


def _has_accelerator() -> bool:
  """Lanes split CPU cores; with a GPU/TPU the runs go one after another in this process."""
  import jax

  return jax.default_backend() != "cpu"


# ------------------------------------------------------------------------------------------------
# Report.


def topic_accuracies(workdir: str, name: str) -> dict[str, float]:
  """Test accuracy per question topic (shape / color) from run ``name``'s predictions."""
  from tfrecords_tools import easy_vqa as easy_vqa_tool

  path = os.path.join(run_dir(workdir, name), "predictions", f"{TEST_SPLIT}_predict.json")
  if not os.path.exists(path):
    return {}
  questions = easy_vqa_tool.read_questions(data_dir(workdir, "scratch"), TEST_SPLIT)
  truth = {q["uid"]: q for q in questions}
  hits: dict[str, list[bool]] = {}
  for row in _read_json(path):
    q = truth[row["question_id"]]
    hits.setdefault(q["topic"], []).append(row["answer"] == q["answer"])
  return {f"accuracy_{topic}": sum(h) / len(h) for topic, h in sorted(hits.items())}


def build_results(config, workdir: str, records: Mapping, phases: Mapping, info: Mapping) -> dict:
  """results.json: the table, every run's metrics and budget, the elapsed time per phase."""
  runs = {}
  for name in RUNS:
    record = records[name]
    test = dict(record["results"].get("eval", {}).get(TEST_SPLIT, {}))
    test.update(topic_accuracies(workdir, name))
    runs[name] = {
      "test": test,
      "train": record["results"].get("train", {}),
      "steps": record["steps"],
      "batch_size": record["batch_size"],
      "elapsed_seconds": record["elapsed_seconds"],
      "directory": run_dir(workdir, name),
    }
  table = {
    label: {header: round(100 * runs[name]["test"][key], 2) for key, header in TABLE_COLUMNS}
    for name, label in TABLE_ROWS
  }
  splits = info["splits"]
  return {
    "table": table,
    "rows": [label for _, label in TABLE_ROWS],
    "columns": [header for _, header in TABLE_COLUMNS],
    "runs": runs,
    "elapsed_seconds": {k: round(v, 1) for k, v in phases.items()},
    "final_checkpoint": final_checkpoint(workdir),
    "data": {
      split: {"images": splits[split]["num_images"], "questions": splits[split]["num_sentences"]}
      for split in ("train", TEST_SPLIT)
    },
    "config": _config_dict(config),
  }


def format_table(results: Mapping) -> str:
  """The paper-shaped table (accuracies in %) as Markdown."""
  cols = results["columns"]
  lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
  for row in results["rows"]:
    cells = " | ".join(f"{results['table'][row][c]:.2f}" for c in cols)
    lines.append(f"| {row} | {cells} |")
  return "\n".join(lines)


def format_markdown(results: Mapping) -> str:
  """results.md: the table, each run's budget and topic accuracies, time per phase."""
  runs, data = results["runs"], results["data"]
  labels = dict(TABLE_ROWS, pretrain="LXMERT pretraining (every objective)")
  out = [
    "# LXMERT on easy-VQA",
    "",
    f"Test split: {data[TEST_SPLIT]['questions']:,} questions about {data[TEST_SPLIT]['images']:,}"
    f" images. Training: {data['train']['questions']:,} questions about "
    f"{data['train']['images']:,} images. Accuracy in %.",
    "",
    format_table(results),
    "",
    "| Run | Steps x batch | Time | Shape questions | Color questions |",
    "|---|---:|---:|---:|---:|",
  ]
  for name in RUNS:
    r = runs[name]
    topics = [
      f"{100 * r['test'][k]:.2f}" if k in r["test"] else "-"
      for k in ("accuracy_shape", "accuracy_color")
    ]
    out.append(
      f"| {labels[name]} | {r['steps']} x {r['batch_size']} | "
      f"{_fmt_secs(r['elapsed_seconds'])} | {' | '.join(topics)} |"
    )
  elapsed = ", ".join(f"{k} {_fmt_secs(v)}" for k, v in results["elapsed_seconds"].items())
  out += [
    "",
    f"Elapsed: {elapsed}. Run times include compilation, evaluation and (baselines) writing "
    "their blanked data; the two lanes run side by side.",
    "",
    "Language Only sees no region features or boxes, Image Only no question words. Both get a "
    "shorter run than LXMERT: they learn their answer prior and stop improving within it.",
    "",
    f"Final checkpoint: `{results['final_checkpoint']}`",
    "",
  ]
  return "\n".join(out)


def final_checkpoint(workdir: str) -> str:
  from lxmert_jax import checkpoint as ckpt

  found = ckpt.find_checkpoint_step(workdir)
  return "" if found is None else os.path.join(found[0], str(found[1]))


def publish_final(workdir: str) -> None:
  """Puts what ``python -m lxmert_jax.predict --workdir`` reads at the top of the workdir:

  ``checkpoints/<step>`` (LXMERT's final fine-tuned checkpoint, with its answer vocabulary),
  ``vocab.txt`` and ``dataset_info.json`` (box count and feature scaling) of the conversion.
  """
  src = os.path.join(run_dir(workdir, "lxmert"), "checkpoints")
  dst = os.path.join(workdir, "checkpoints")
  shutil.rmtree(dst, ignore_errors=True)
  shutil.copytree(src, dst)
  data = data_dir(workdir, "lxmert")
  for name in ("vocab.txt", "dataset_info.json"):
    shutil.copy(os.path.join(data, name), os.path.join(workdir, name))


# ------------------------------------------------------------------------------------------------
# The demo.


def run_demo(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every phase in ``workdir``; returns results.json's contents (the table is printed)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  phases = {}

  def timed(phase: str, fn, *args):
    _say("phase %s ...", phase)
    t = time.time()
    out = fn(*args)
    phases[phase] = time.time() - t
    _say(
      "phase %s done in %s (demo elapsed %s)",
      phase,
      _fmt_secs(phases[phase]),
      _fmt_secs(time.time() - start),
    )
    return out

  info = timed("convert", convert, config, workdir)
  records = timed("train", train_all, config, workdir, start)
  timed("report", publish_final, workdir)
  phases.update({name: records[name]["elapsed_seconds"] for name in RUNS})
  phases["total"] = time.time() - start
  results = build_results(config, workdir, records, phases, info)
  _write_json(os.path.join(workdir, "results.json"), results)
  markdown = format_markdown(results)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown)
  print("\n" + markdown, flush=True)
  return results


def _lane_main(workdir: str, lane: int) -> None:
  """A lane process: trains ``LANES[lane]`` with the config its parent wrote."""
  config = ml_collections.ConfigDict(_read_json(os.path.join(workdir, CONFIG_FILE)))
  train_lane(lane, run_configs(config, workdir), workdir)


def run() -> None:
  """Console script ``lxmert-jax-demo``: ``--workdir`` (required), ``--config`` (optional)."""
  from absl import app, flags
  from ml_collections import config_flags

  import configs.easy_vqa

  config_flags.DEFINE_config_file(
    "config", configs.easy_vqa.__file__, "Demo config file.", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Directory for data, runs and results.", required=True)
  flags.DEFINE_integer("lane", -1, "Internal: train one lane of a running demo.")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    workdir = os.path.abspath(flags.FLAGS.workdir)
    if flags.FLAGS.lane >= 0:
      _lane_main(workdir, flags.FLAGS.lane)
    else:
      run_demo(flags.FLAGS.config, workdir)

  app.run(main)


if __name__ == "__main__":
  run()
