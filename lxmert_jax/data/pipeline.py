"""tf.data input pipeline: host-sharded image-group shards -> per-sentence examples -> pmap batches.

Records hold one image group and all its sentences (``lxmert_jax/data/schema.py``); this module
explodes each group into one example per sentence *in memory* (the per-sentence examples share
the group's feature tensor until batching), pads text to ``max_seq_length`` and answers to
``schema.MAX_ANSWERS``, and batches to ``[local_devices, per_device_batch, ...]`` numpy arrays.

Training order is a pure function of ``(seed, epoch)``: epoch ``e`` shuffles this host's files
with a stateless shuffle seeded by ``(seed, e)`` and seeds both shuffle buffers with the same
pair. Resuming at ``start_step`` therefore rebuilds the stream from the epoch that step falls in
and skips the examples already consumed inside that epoch (reading at most one epoch of this
host's records), so a resumed run sees exactly the batches an uninterrupted run would have seen.
We chose this over saving tf.data iterator state in the checkpoint: shuffle buffers full of
object features would make every checkpoint hundreds of MB per host.

Evaluation reads every eval file on every host and keeps every ``process_count``-th example, so
each host holds ``ceil(num_examples / process_count)`` or one fewer examples; the number of
batches follows from the ``dataset_info.json`` counts alone and is the same on every host (pmap
collectives would hang otherwise). Missing slots are filled with masked padding examples
(``example_mask == 0``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from lxmert_jax.data import schema
from tfrecords_tools import shards

Batch = dict[str, np.ndarray]
# Host-only fields: strings never go to devices; train.py strips them before sharding.
HOST_KEYS = ("sent_uid",)
# Extra per-example keys beyond schema.BATCH_KEYS. image_index: stable hash of the image id(s),
# used by the in-jit mismatching to avoid pairing a sentence with its own image.
EXTRA_KEYS = ("image_index",)
# Fields whose padding value is -1 ("no label") rather than 0.
_MINUS_ONE_PAD = ("obj_labels", "attr_labels", "answer_ids", "answer_type", "label")


def hide_accelerators_from_tf() -> None:
  """Keeps TensorFlow off GPUs/TPUs so it never grabs accelerator memory meant for JAX."""
  import tensorflow as tf

  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError) as e:  # Already initialised, or no such device type.
      logging.log_first_n(logging.INFO, "tf.config.set_visible_devices([], %s): %s", 2, kind, e)


def parse_splits(splits: str | Sequence[str]) -> tuple[str, ...]:
  """``"train,nominival"`` or a sequence -> ``("train", "nominival")``."""
  if isinstance(splits, str):
    splits = splits.split(",")
  out = tuple(s.strip() for s in splits if s.strip())
  if not out:
    raise ValueError(f"no split names in {splits!r}")
  return out


def num_examples(data_dir: str, splits: str | Sequence[str]) -> int:
  """Sentences (= examples) of ``splits`` according to ``dataset_info.json``."""
  info = shards.read_info(data_dir)
  total = 0
  for split in parse_splits(splits):
    if split not in info.get("splits", {}):
      raise ValueError(
        f"split {split!r} is not in {os.path.join(data_dir, schema.INFO_FILE)} "
        f"(it has {sorted(info.get('splits', {}))})"
      )
    total += int(info["splits"][split]["num_sentences"])
  return total


def local_batch_size(global_batch: int, process_count: int, num_devices: int) -> int:
  """Per-host batch = global / hosts; raises naming the numbers unless it splits evenly."""
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by {process_count} hosts")
  per_host = global_batch // process_count
  if per_host % num_devices:
    raise ValueError(
      f"per-host batch size {per_host} (= {global_batch} / {process_count} hosts) is not "
      f"divisible by the {num_devices} local devices"
    )
  return per_host


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static example shapes: L tokens, G images of N boxes with F features, K answers."""

  max_seq_length: int
  num_images: int
  num_boxes: int
  feat_dim: int
  feat_dtype: str
  max_answers: int = schema.MAX_ANSWERS

  @classmethod
  def from_info(cls, data_dir: str, max_seq_length: int, num_images: int) -> Layout:
    info = shards.read_info(data_dir)
    if max_seq_length < 2:
      raise ValueError(f"max_seq_length must be >= 2 ([CLS] and [SEP]), got {max_seq_length}")
    return cls(
      max_seq_length=max_seq_length,
      num_images=num_images,
      num_boxes=int(info["num_boxes"]),
      feat_dim=int(info["feat_dim"]),
      feat_dtype=info.get("feat_dtype", "float16"),
    )


def _truncate_and_pad(token_ids, max_len: int):
  """Ragged [S, (len)] ids -> ([S, L] ids, [S, L] mask); long rows keep their last id ([SEP]).

  The original builds ``[CLS] + pieces[:L-2] + [SEP]`` (spec 5.7); rows stored longer than L are
  cut the same way, i.e. the first L-1 ids followed by the stored last id.
  """
  import tensorflow as tf

  lengths = tf.cast(token_ids.row_lengths(), tf.int32)
  dense = token_ids.to_tensor(default_value=0)
  dense = tf.pad(dense, [[0, 0], [0, tf.maximum(0, max_len - tf.shape(dense)[1])]])
  pos = tf.broadcast_to(tf.range(max_len)[None, :], [tf.shape(dense)[0], max_len])
  cut = (pos == max_len - 1) & (lengths[:, None] > max_len)
  pos = tf.where(cut, lengths[:, None] - 1, pos)
  ids = tf.gather(dense, pos, batch_dims=1)
  mask = tf.sequence_mask(tf.minimum(lengths, max_len), max_len, dtype=tf.int32)
  return ids * mask, mask


def _explode(group, layout: Layout, keep_uid: bool):
  """One decoded image group -> a dataset with one model-ready example per sentence."""
  import tensorflow as tf

  g, n, f, k = layout.num_images, layout.num_boxes, layout.feat_dim, layout.max_answers
  checks = [
    tf.debugging.assert_equal(
      tf.shape(group["features"]),
      [g, n, f],
      message=f"record features must be [images={g}, boxes={n}, feat_dim={f}] (from the task and "
      "dataset_info.json); a record of another shape was found",
    ),
    tf.debugging.assert_less_equal(
      group["ans_id"].row_lengths(),
      tf.constant(k, tf.int64),
      message=f"a sentence has more than MAX_ANSWERS={k} answers",
    ),
  ]
  with tf.control_dependencies(checks):  # The checks run before any reshape below.
    input_ids, attention_mask = _truncate_and_pad(group["token_ids"], layout.max_seq_length)

    def per_image(x, shape):  # Static [G, N, ...]; -> [N, ...] for single images.
      x = tf.ensure_shape(x, shape)
      return x[0] if g == 1 else x

    image_key = tf.strings.reduce_join(group["img_id"], separator="|")
    shared = {
      "visual_feats": per_image(group["features"], [g, n, f]),
      "visual_pos": per_image(group["boxes"], [g, n, 4]),
      "obj_labels": per_image(group["objects_id"], [g, n]),
      "obj_confs": per_image(group["objects_conf"], [g, n]),
      "attr_labels": per_image(group["attrs_id"], [g, n]),
      "attr_confs": per_image(group["attrs_conf"], [g, n]),
      "image_index": tf.cast(tf.strings.to_hash_bucket_fast(image_key, 2**31 - 1), tf.int32),
    }
    per_sentence = {
      "input_ids": input_ids,
      "attention_mask": attention_mask,
      "answer_ids": group["ans_id"].to_tensor(default_value=-1, shape=[None, k]),
      "answer_scores": group["ans_score"].to_tensor(default_value=0.0, shape=[None, k]),
      "answer_type": group["answer_type"],
      "label": group["label"],
    }
  if keep_uid:
    per_sentence["sent_uid"] = group["sent_uid"]

  def add_shared(example):
    # The shared tensors are captured, not copied, until batching stacks them.
    example = dict(example, **shared)
    example["token_type_ids"] = tf.zeros_like(example["input_ids"])
    example["example_mask"] = tf.constant(1.0, tf.float32)
    return example

  return tf.data.Dataset.from_tensor_slices(per_sentence).map(add_shared)


def _decode_and_explode(ds, layout: Layout, keep_uid: bool):
  """Serialized groups -> examples; parsing (the costly part) runs in parallel, in order."""
  import tensorflow as tf

  ds = ds.map(
    lambda r: schema.decode_group(r, layout.feat_dtype),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  return ds.flat_map(lambda group: _explode(group, layout, keep_uid))


def _options(threads: int):
  import tensorflow as tf

  options = tf.data.Options()
  options.deterministic = True
  # As big_vision's TPU-host options: a private pool so tf.data does not fight XLA's threads.
  if threads > 0:
    options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return options


def _to_device_layout(ds, num_devices: int):
  """[per_host, ...] -> [num_devices, per_device, ...] (a reshape, no copy)."""
  import tensorflow as tf

  def reshape(batch):
    return {key: tf.reshape(x, [num_devices, -1, *x.shape[1:]]) for key, x in batch.items()}

  return ds.map(reshape)


def host_files(data_dir: str, splits: Sequence[str], process_index: int, process_count: int):
  """This host's shard files: every ``process_count``-th of the sorted list of all splits."""
  files = sorted(f for split in parse_splits(splits) for f in shards.find_shards(data_dir, split))
  if len(files) < process_count:
    raise ValueError(
      f"{len(files)} shard files for splits {list(parse_splits(splits))} in {data_dir}, fewer "
      f"than the {process_count} hosts; rewrite the data with --num_shards >= {process_count}"
    )
  return files[process_index::process_count]


def count_examples(files: Sequence[str]) -> int:
  """Counts sentences by parsing only ``sent_len`` (one read of ``files``)."""
  import tensorflow as tf

  spec = {"sent_len": tf.io.VarLenFeature(tf.int64)}
  ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=tf.data.AUTOTUNE)
  ds = ds.map(lambda r: tf.size(tf.io.parse_single_example(r, spec)["sent_len"].values))
  return int(ds.reduce(np.int32(0), lambda a, b: a + b))


def make_train_dataset(
  data_dir: str,
  splits: str | Sequence[str],
  *,
  layout: Layout,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  shuffle_buffer_groups: int = 512,
  shuffle_buffer_examples: int = 2048,
  cycle_length: int = 8,
  threads: int = 16,
  num_devices: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
):
  """Infinite, shuffled training stream of this host, starting at global step ``start_step``.

  Host memory is bounded by the two shuffle buffers: about ``shuffle_buffer_groups`` serialized
  records plus ``shuffle_buffer_examples`` examples (each pointing at its group's decoded
  features), independent of the dataset size.

  Args:
    data_dir: directory with the shards and ``dataset_info.json``.
    splits: split names (``"train,nominival"``) whose shards are concatenated.
    layout: static shapes (``Layout.from_info``).
    global_batch_size: examples per step over all hosts.
    seed: data seed; the order is a pure function of ``(seed, epoch)``.
    start_step: steps already taken (resume): skips ``start_step * per_host_batch`` examples.
    shuffle_buffer_groups: records in the group-level shuffle buffer.
    shuffle_buffer_examples: examples in the example-level shuffle buffer.
    cycle_length: files read concurrently by the interleave.
    threads: tf.data private thread pool size (0 = TF default).
    num_devices: local devices (default ``jax.local_device_count()``).
    process_index: this host (default ``jax.process_index()``).
    process_count: hosts (default ``jax.process_count()``).

  Returns:
    A ``tf.data.Dataset`` of dicts with leading dims ``[num_devices, per_device_batch]``.
  """
  import tensorflow as tf

  num_devices, process_index, process_count = _topology(num_devices, process_index, process_count)
  per_host = local_batch_size(global_batch_size, process_count, num_devices)
  files = host_files(data_dir, splits, process_index, process_count)
  if process_count == 1:
    host_examples = num_examples(data_dir, splits)
  else:  # dataset_info.json counts splits, not shards: count this host's files once.
    host_examples = count_examples(files) if start_step else 1
  consumed = start_step * per_host
  start_epoch, offset = divmod(consumed, host_examples)
  files_t = tf.constant(files)

  def epoch_dataset(epoch):
    # Seeds derive from (seed, epoch) only, so epoch e is identical however we got to it.
    pair = tf.stack([tf.constant(seed, tf.int64), epoch])
    order = tf.random.experimental.stateless_shuffle(files_t, seed=pair)
    ds = tf.data.Dataset.from_tensor_slices(order)
    ds = ds.interleave(
      tf.data.TFRecordDataset,
      cycle_length=min(cycle_length, len(files)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
    ds = ds.shuffle(shuffle_buffer_groups, seed=pair[0] * 1_000_003 + 2 * epoch)
    ds = _decode_and_explode(ds, layout, keep_uid=False)
    return ds.shuffle(shuffle_buffer_examples, seed=pair[0] * 1_000_003 + 2 * epoch + 1)

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_dataset)
  ds = ds.skip(offset).batch(per_host, drop_remainder=True)
  ds = _to_device_layout(ds, num_devices).prefetch(tf.data.AUTOTUNE)
  logging.info(
    "Train data: %d files of %s on host %d/%d, %d examples/epoch on this host, batch %d/host; "
    "starting at step %d (epoch %d, example %d).",
    len(files),
    splits,
    process_index,
    process_count,
    host_examples,
    per_host,
    start_step,
    start_epoch,
    offset,
  )
  return ds.with_options(_options(threads))


@dataclasses.dataclass
class EvalData:
  """A finite, padded eval stream: the same ``num_batches`` on every host.

  Attributes:
    dataset: tf.data.Dataset of dicts ``[num_devices, per_device, ...]`` incl. ``sent_uid``.
    num_batches: batches per host (equal on all hosts).
    num_examples: real examples over all hosts (the rest is masked padding).
  """

  dataset: object
  num_batches: int
  num_examples: int

  def __iter__(self) -> Iterator[Batch]:
    return iter(self.dataset.as_numpy_iterator())


def _padding_example(element_spec):
  import tensorflow as tf

  def pad(key, spec):
    value = -1 if key in _MINUS_ONE_PAD else 0
    if spec.dtype == tf.string:
      return tf.fill(spec.shape, "")
    return tf.fill(spec.shape, tf.cast(value, spec.dtype))

  return {key: pad(key, spec) for key, spec in element_spec.items()}


def make_eval_dataset(
  data_dir: str,
  splits: str | Sequence[str],
  *,
  layout: Layout,
  global_batch_size: int,
  threads: int = 16,
  num_devices: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> EvalData:
  """Every example of ``splits`` exactly once over all hosts, in file order, mask-padded.

  Returns:
    ``EvalData`` whose batches carry ``example_mask`` (0 on padding) and host-side ``sent_uid``.
  """
  import tensorflow as tf

  num_devices, process_index, process_count = _topology(num_devices, process_index, process_count)
  per_host = local_batch_size(global_batch_size, process_count, num_devices)
  total = num_examples(data_dir, splits)
  num_batches = math.ceil(math.ceil(total / process_count) / per_host)
  files = sorted(f for split in parse_splits(splits) for f in shards.find_shards(data_dir, split))
  ds = tf.data.TFRecordDataset(
    files
  )  # Sequential: the example order must be the same on all hosts.
  ds = _decode_and_explode(ds, layout, keep_uid=True)
  if process_count > 1:
    ds = ds.enumerate().filter(lambda i, _: i % process_count == process_index)
    ds = ds.map(lambda _, ex: ex)
  padding = tf.data.Dataset.from_tensors(_padding_example(ds.element_spec)).repeat()
  ds = ds.concatenate(padding).take(num_batches * per_host).batch(per_host, drop_remainder=True)
  ds = _to_device_layout(ds, num_devices).prefetch(tf.data.AUTOTUNE)
  return EvalData(ds.with_options(_options(threads)), num_batches, total)


def _topology(num_devices, process_index, process_count):
  if None in (num_devices, process_index, process_count):
    import jax

    num_devices = jax.local_device_count() if num_devices is None else num_devices
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return num_devices, process_index, process_count


def train_iterator(dataset) -> Iterator[Batch]:
  """Numpy batches of a train dataset (``make_train_dataset``)."""
  return iter(dataset.as_numpy_iterator())


def steps_per_epoch(data_dir: str, splits: str | Sequence[str], global_batch_size: int) -> int:
  """Full batches per pass over ``splits`` (the original's drop_last loaders)."""
  steps = num_examples(data_dir, splits) // global_batch_size
  if steps == 0:
    raise ValueError(
      f"splits {splits!r} of {data_dir} have fewer examples than one batch of {global_batch_size}"
    )
  return steps
