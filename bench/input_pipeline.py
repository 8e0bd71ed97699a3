"""Input pipeline throughput: shards on disk -> device-ready pmap batches, per host core.

Synthetic shards are written with ``tfrecords_tools.shards.ShardedGroupWriter`` at base size
(36 boxes x 2048 float16 features per image, as the converters write them) with the original
pretraining data's ratio of sentences per image (9.18M pairs over 180K images ~ 51), then read
with ``lxmert_jax.data.pipeline.make_train_dataset`` (interleave, parse, explode groups into
examples, two shuffle buffers, batch, reshape to [devices, per_device, ...]) and placed on the
devices with ``lxmert_jax.train.shard_batch``. The tf.data private thread pool is set to 1 thread
and to all cores; per-core throughput is what one host core sustains.

From it and an accelerator's step rate we get the host cores one chip needs:

  cores per chip = (chip examples/s) / (examples/s per host core).

The chip rate comes from ``--chip_examples_per_sec`` (e.g. the device benchmark's JSON) or is
estimated from the analytic FLOP count at an assumed MFU of an H100's dense bf16 peak.

  python -m bench.input_pipeline          # ~2 min
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from bench import common

# Original pretraining data: 9.18M sentence-image pairs over 180K images (spec 2.7, paper 3.2).
SENTENCES_PER_IMAGE = round(9.18e6 / 180e3)
H100_BF16_DENSE_FLOPS = 989e12  # NVIDIA H100 SXM datasheet, dense (no sparsity).
ASSUMED_MFU = 0.35


def write_shards(out_dir: str, num_groups: int, sentences: int, num_boxes: int, feat_dim: int):
  """Writes ``num_groups`` random image groups into 8 shards; returns bytes on disk."""
  from lxmert_jax.data import schema
  from tfrecords_tools.shards import ShardedGroupWriter

  rng = np.random.default_rng(0)
  with ShardedGroupWriter(out_dir, "train", num_shards=8, feat_dtype="float16") as writer:
    for g in range(num_groups):
      corners = np.sort(rng.uniform(0, 1, (num_boxes, 2, 2)), axis=1)
      image = schema.ImageFeatures(
        img_id=f"img{g:06d}",
        img_h=480,
        img_w=640,
        features=rng.uniform(0, 3, (num_boxes, feat_dim)).astype(np.float32),
        boxes=corners.reshape(num_boxes, 4).astype(np.float32),  # (x1, y1, x2, y2)
        objects_id=rng.integers(0, 1600, num_boxes),
        objects_conf=rng.uniform(0, 1, num_boxes),
        attrs_id=rng.integers(0, 400, num_boxes),
        attrs_conf=rng.uniform(0, 1, num_boxes),
      )
      sents = [
        schema.Sentence(
          uid=f"{g}_{s}",
          token_ids=[101, *rng.integers(1000, 30000, rng.integers(4, 19)).tolist(), 102],
          answer_ids=[int(rng.integers(0, 9500))],
          answer_scores=[1.0],
          answer_type=0,
        )
        for s in range(sentences)
      ]
      writer.write([image], sents)
  return sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))


def measure(data_dir: str, threads: int, batch: int, num_batches: int, warmup: int) -> dict:
  """Examples/s of the train stream including the host->device transfer."""
  import jax

  from lxmert_jax import train
  from lxmert_jax.data import pipeline

  layout = pipeline.Layout.from_info(data_dir, max_seq_length=20, num_images=1)
  ds = pipeline.make_train_dataset(
    data_dir,
    "train",
    layout=layout,
    global_batch_size=batch,
    seed=0,
    threads=threads,
    shuffle_buffer_examples=min(2048, 4 * batch),
  )
  it = pipeline.train_iterator(ds)
  for _ in range(warmup):  # Fills the shuffle buffers and tf.data's autotuner.
    jax.block_until_ready(train.shard_batch(next(it)))
  start = time.perf_counter()
  for _ in range(num_batches):
    jax.block_until_ready(train.shard_batch(next(it)))
  seconds = time.perf_counter() - start
  return {
    "threads": threads,
    "batch": batch,
    "batches": num_batches,
    "seconds": seconds,
    "examples_per_sec": num_batches * batch / seconds,
  }


def chip_rate_estimate(mfu: float) -> dict:
  """Examples/s of one H100 at ``mfu`` of its dense bf16 peak, from the analytic FLOP count."""
  from lxmert_jax.models.config import LxmertConfig

  try:
    from lxmert_jax import flops

    per_example = float(flops.train_step_flops(LxmertConfig(), 20, 36, 1))
    source = "lxmert_jax.flops.train_step_flops"
  except ImportError:
    per_example, source = 35.0e9, "hand count (lxmert_jax.flops unavailable)"
  return {
    "examples_per_sec": mfu * H100_BF16_DENSE_FLOPS / per_example,
    "flops_per_example": per_example,
    "flops_source": source,
    "assumed_mfu": mfu,
    "peak_flops": H100_BF16_DENSE_FLOPS,
  }


def main(argv=None):
  parser = common.base_parser(__doc__.splitlines()[0], "bench/results/input_pipeline.json")
  parser.add_argument("--batch", type=int, default=256, help="host batch (global batch, 1 host)")
  parser.add_argument("--num_batches", type=int, default=20)
  parser.add_argument("--groups", type=int, default=64, help="image groups written")
  parser.add_argument("--chip_examples_per_sec", type=float, default=None)
  parser.add_argument("--data_dir", default=None, help="reuse shards here instead of writing")
  args = parser.parse_args(argv)
  pipeline_threads = sorted({1, os.cpu_count() or 1})
  if args.tiny:
    args.batch, args.num_batches, args.groups, args.warmup = 8, 3, 4, 1
    num_boxes, feat_dim, sentences = 4, 16, 5
  else:
    num_boxes, feat_dim, sentences = 36, 2048, SENTENCES_PER_IMAGE

  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    start = time.perf_counter()
    disk_bytes = None
    if args.data_dir is None:
      disk_bytes = write_shards(data_dir, args.groups, sentences, num_boxes, feat_dim)
    write_seconds = time.perf_counter() - start
    runs = [
      measure(data_dir, t, args.batch, args.num_batches, args.warmup) for t in pipeline_threads
    ]
  per_core = max(r["examples_per_sec"] / r["threads"] for r in runs)
  one_thread = runs[0]["examples_per_sec"]
  chip = (
    {"examples_per_sec": args.chip_examples_per_sec, "source": "--chip_examples_per_sec"}
    if args.chip_examples_per_sec
    else chip_rate_estimate(ASSUMED_MFU)
  )
  cores_needed = chip["examples_per_sec"] / one_thread
  rows = [
    (r["threads"], r["batch"], r["examples_per_sec"], r["examples_per_sec"] / r["threads"])
    for r in runs
  ]
  table = common.format_table(
    ["tf.data threads", "batch", "examples/s", "examples/s per thread"], rows
  )
  table += (
    f"\n\nOne accelerator chip at {chip['examples_per_sec']:.0f} examples/s needs "
    f"{cores_needed:.1f} host cores at {one_thread:.0f} examples/s per core."
  )
  payload = {
    "benchmark": "input_pipeline",
    "layout": {"num_boxes": num_boxes, "feat_dim": feat_dim, "feat_dtype": "float16"},
    "sentences_per_image": sentences,
    "groups_written": args.groups,
    "disk_bytes": disk_bytes,
    "write_seconds": write_seconds,
    "runs": runs,
    "examples_per_sec_per_core": one_thread,
    "best_examples_per_sec_per_thread": per_core,
    "chip": chip,
    "host_cores_per_chip": cores_needed,
  }
  common.report(payload, table, args.json)


if __name__ == "__main__":
  main()
