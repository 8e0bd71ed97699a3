"""Evaluation loops: run the pmapped eval step over a padded split, aggregate, decode, write files.

Metric sums arrive already ``psum``-ed over devices as ``[sum, count]`` pairs; this module adds
them over batches, turns them into means, names the per-answer-type accuracies of each task, and
maps per-example predictions back to sentence ids (kept on the host: strings never go to
devices) for the submission files of ``lxmert_jax/metrics/submission.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from lxmert_jax import gfile, losses
from lxmert_jax.data import pipeline
from lxmert_jax.metrics import submission

# answer_type indices of the record schema (schema.ANSWER_TYPES: yes/no, number, other).
NUM_ANSWER_TYPES = 3
# Per task: reported breakdown name -> answer_type indices it pools.
ANSWER_TYPE_GROUPS = {
  "vqa": {"yes/no": (0,), "number": (1,), "other": (2,)},
  "gqa": {"binary": (0,), "open": (1, 2)},
  "easy_vqa": {"binary": (0,), "other": (1, 2)},
}
PREDICTION_FILES = {
  "vqa": "{split}_predict.json",
  "gqa": "{split}_predict.json",
  "easy_vqa": "{split}_predict.json",
  "nlvr2": "{split}_predict.csv",
}


@dataclasses.dataclass
class EvalResult:
  """Metrics of one split and the predictions of its real (unpadded) examples.

  Attributes:
    metrics: name -> value (accuracies in [0, 1], losses, ``num_examples``).
    predictions: sentence uid -> predicted label id (QA: answer index; NLVR2: 0/1).
  """

  metrics: dict[str, float]
  predictions: dict[str, int]


def _device_fields(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: v for k, v in batch.items() if k not in pipeline.HOST_KEYS}


def finalize_metrics(task: str, sums: Mapping[str, np.ndarray], weights: Mapping[str, float]):
  """``[sum, count]`` pairs -> means: every objective, the weighted ``loss``, accuracies."""

  def mean(pair):
    return float(pair[0] / pair[1]) if pair[1] > 0 else 0.0

  out = {}
  total = 0.0
  for name, weight in weights.items():
    if name in sums:
      out[f"loss_{name}"] = mean(sums[name])
      total += weight * out[f"loss_{name}"]
  out["loss"] = total
  if "accuracy" in sums:
    out["accuracy"] = mean(sums["accuracy"])
    for group, types in ANSWER_TYPE_GROUPS.get(task, {}).items():
      pooled = sum(sums[f"accuracy_type{t}"] for t in types)
      if pooled[1] > 0:  # Types absent from the data (e.g. GQA stores none) are not reported.
        out[f"accuracy_{group}"] = mean(pooled)
  out["num_examples"] = int(sums["examples"][0])
  return out


def evaluate_split(
  p_eval_step: Callable,
  params,
  data: pipeline.EvalData,
  *,
  rng: jax.Array,
  task: str,
  weights: Mapping[str, float],
  shard: Callable[[dict], dict],
) -> EvalResult:
  """Runs ``p_eval_step`` over every batch of ``data`` and aggregates.

  Args:
    p_eval_step: pmapped ``train.eval_step`` (params, batch, rng) -> outputs.
    params: replicated params.
    data: the split's padded stream (same number of batches on every host).
    rng: base key; batch i uses ``fold_in(rng, i)`` (pretraining corruption at eval).
    task: config.task (names the answer-type breakdown).
    weights: objective -> weight, for the total ``loss``.
    shard: host batch -> device batch (train.py's sharding).

  Raises:
    RuntimeError: when the number of real examples differs from dataset_info.json.
  """
  sums: dict[str, np.ndarray] = {}
  preds, masks, uids = [], [], []
  for i, batch in enumerate(data):
    out = p_eval_step(params, shard(_device_fields(batch)), jax.random.fold_in(rng, i))
    out = jax.device_get(out)
    for name, pair in out["metrics"].items():
      sums[name] = sums.get(name, 0.0) + np.asarray(pair[0], np.float64)  # device 0 = all
    preds.append(np.asarray(out["pred"]).reshape(-1))
    masks.append(np.asarray(batch["example_mask"]).reshape(-1))
    uids.append(np.asarray(batch["sent_uid"]).reshape(-1))
  if not sums:
    raise RuntimeError("the eval split produced no batches")
  metrics = finalize_metrics(task, sums, weights)
  if metrics["num_examples"] != data.num_examples:
    raise RuntimeError(
      f"evaluated {metrics['num_examples']} examples but dataset_info.json counts "
      f"{data.num_examples}: the shards and dataset_info.json disagree (rewrite the split)"
    )
  predictions = _collect_predictions(
    np.concatenate(preds), np.concatenate(masks), np.concatenate(uids)
  )
  return EvalResult(metrics, predictions)


def _collect_predictions(pred: np.ndarray, mask: np.ndarray, uids: np.ndarray) -> dict[str, int]:
  """uid -> prediction over every host's real examples."""
  if jax.process_count() > 1:
    # Hosts hold disjoint examples; gather their predictions (uids travel as fixed-width bytes).
    from jax.experimental import multihost_utils

    width = max(64, max((len(u) for u in uids), default=0))
    codes = np.zeros((len(uids), width), np.uint8)
    for i, u in enumerate(uids):
      codes[i, : len(u)] = np.frombuffer(u[:width], np.uint8)
    gathered = multihost_utils.process_allgather(
      {"pred": pred, "mask": mask, "uid": codes}, tiled=True
    )
    pred, mask = gathered["pred"], gathered["mask"]
    uids = [bytes(row).rstrip(b"\0") for row in gathered["uid"]]
  out = {}
  for p, m, u in zip(pred, mask, uids):
    if m > 0:
      out[u.decode() if isinstance(u, bytes) else str(u)] = int(p)
  return out


def write_prediction_file(
  task: str,
  split: str,
  predictions: Mapping[str, int],
  answers: Sequence[str] | None,
  out_dir: str,
) -> str | None:
  """Writes the split's prediction file in the task's submission format (host 0 only).

  VQA: ``[{"question_id": int, "answer": str}]``; GQA: ``[{"questionId", "prediction"}]``;
  NLVR2: CSV ``identifier,True|False``; easy-VQA: ``[{"question_id": str, "answer": str}]``.

  Returns:
    The path written, or None on other hosts / for pretraining.
  """
  if task not in PREDICTION_FILES or jax.process_index() != 0:
    return None
  gfile.makedirs(out_dir)
  path = os.path.join(out_dir, PREDICTION_FILES[task].format(split=split))
  # The submission writers know local files only: a gs:// workdir gets a local copy uploaded.
  with gfile.staged_locally(path) as local_path:
    if task == "nlvr2":
      submission.write_nlvr2_predictions(predictions, local_path)
      return path
    decoded = {uid: answers[label] for uid, label in predictions.items()}
    if task == "vqa":
      submission.write_vqa_submission(decoded, local_path)
    elif task == "gqa":
      submission.write_gqa_submission(decoded, local_path)
    else:
      rows = [{"question_id": uid, "answer": ans} for uid, ans in decoded.items()]
      tmp = local_path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(rows, f)
      os.replace(tmp, local_path)
  logging.info("Wrote %d predictions of %s to %s", len(predictions), split, path)
  return path


def objective_weights(task: str, pretrain_weights: Mapping[str, float] | None = None):
  """Objective -> weight as the eval total uses them."""
  if task == "pretrain":
    return dict(pretrain_weights or dict.fromkeys(losses.LOSS_NAMES, 1.0))
  return {"nlvr2": 1.0} if task == "nlvr2" else {"qa": 1.0}


def eval_splits(config) -> list[str]:
  return list(pipeline.parse_splits(config.eval.splits)) if config.eval.splits else []


def predict_splits(config) -> list[str]:
  return (
    list(pipeline.parse_splits(config.eval.predict_splits)) if config.eval.predict_splits else []
  )


class Evaluator:
  """Builds each split's padded stream once and evaluates the replicated params on it."""

  def __init__(
    self, config, p_eval_step: Callable, shard: Callable, *, weights, answers, workdir: str, writer
  ):
    """Sets up the evaluation of one run.

    Args:
      config: the run's config (data, eval and task fields).
      p_eval_step: pmapped ``train.eval_step``.
      shard: host batch -> device batch.
      weights: objective -> weight of the total ``loss``.
      answers: answer vocabulary, to decode QA predictions.
      workdir: prediction files go to ``<workdir>/predictions``.
      writer: metric writer for ``eval_<split>/*`` scalars.
    """
    self.config, self.p_eval_step, self.shard = config, p_eval_step, shard
    self.weights, self.answers, self.workdir, self.writer = weights, answers, workdir, writer
    self.layout = pipeline.Layout.from_info(
      config.data.data_dir, config.data.max_seq_length, 2 if config.task == "nlvr2" else 1
    )
    self._data: dict[str, pipeline.EvalData] = {}

  def data(self, split: str) -> pipeline.EvalData:
    if split not in self._data:
      self._data[split] = pipeline.make_eval_dataset(
        self.config.data.data_dir,
        split,
        layout=self.layout,
        global_batch_size=self.config.eval.batch_size,
        threads=self.config.data.threads,
      )
    return self._data[split]

  def __call__(self, params, rng, step: int, *, splits, write_predictions: bool) -> dict:
    results = {}
    for split in splits:
      res = evaluate_split(
        self.p_eval_step,
        params,
        self.data(split),
        rng=rng,
        task=self.config.task,
        weights=self.weights,
        shard=self.shard,
      )
      results[split] = res.metrics
      self.writer.write_scalars(step, {f"eval_{split}/{k}": v for k, v in res.metrics.items()})
      logging.info(
        "[eval %s] step %d: %s",
        split,
        step,
        ", ".join(f"{k} {v:.4f}" for k, v in res.metrics.items()),
      )
      if write_predictions:
        write_prediction_file(
          self.config.task,
          split,
          res.predictions,
          self.answers,
          os.path.join(self.workdir, "predictions"),
        )
    return results
