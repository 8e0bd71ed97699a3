"""Writes image-group records into N shards atomically, with ``dataset_info.json`` beside them.

Shards are written under temporary names and renamed only when every record has been written,
so an interrupted or failed conversion leaves nothing that a reader would accept.

Readers (:func:`find_shards`, :func:`read_info`, :func:`read_raw_info`) take local paths and
``gs://`` URLs alike (``lxmert_jax.gfile``). Writers write to local disk only: a conversion
renames many shards and rewrites ``dataset_info.json`` in place, which is cheap and atomic
locally; copy the finished directory to a bucket with ``gcloud storage cp -r``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

from lxmert_jax import gfile
from lxmert_jax.data import schema

TMP_SUFFIX = ".incomplete"


def shard_paths(out_dir: str, split: str, num_shards: int) -> list[str]:
  return [
    os.path.join(out_dir, schema.SHARD_PATTERN.format(split=split, index=i, count=num_shards))
    for i in range(num_shards)
  ]


def _local_output(out_dir: str) -> None:
  """Raises for a URL ``out_dir``: the writers below write to local disk only."""
  if gfile.is_url(out_dir):
    raise ValueError(
      f"cannot write shards to {out_dir}: tfrecords_tools writes to a local directory only; "
      f"write to a local --output_dir, then copy its files with `gcloud storage cp -r "
      f"'LOCAL_DIR/*' {out_dir}/` (training reads {out_dir} directly)"
    )


def find_shards(data_dir: str, split: str) -> list[str]:
  """Lists the complete shards of ``split`` in ``data_dir`` (local or URL), sorted; raises if
  there are none."""
  paths = sorted(gfile.glob(os.path.join(data_dir, f"{split}.tfrecord-*-of-*")))
  paths = [p for p in paths if not p.endswith(TMP_SUFFIX)]
  if not paths:
    raise FileNotFoundError(
      f"no shards of split {split!r} in {data_dir} (expected {split}.tfrecord-*)"
    )
  return paths


class ShardedGroupWriter:
  """Round-robins encoded image groups over ``num_shards`` TFRecord files.

  Usage::

    with ShardedGroupWriter(out_dir, "train", num_shards=64) as writer:
      writer.write(images, sentences)
      writer.info.update(answer_vocab=[...])   # merged into dataset_info.json

  On an exception inside the ``with`` block every temporary shard is deleted and no
  ``dataset_info.json`` entry is written for the split.
  """

  def __init__(self, out_dir: str, split: str, num_shards: int = 64, feat_dtype: str = "float16"):
    import tensorflow as tf

    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if feat_dtype not in schema.FEATURE_DTYPES:
      raise ValueError(f"feat_dtype must be one of {sorted(schema.FEATURE_DTYPES)}")
    _local_output(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir, self.split, self.feat_dtype = out_dir, split, feat_dtype
    self.final_paths = shard_paths(out_dir, split, num_shards)
    for stale in gfile.glob(os.path.join(out_dir, f"{split}.tfrecord-*")):
      os.remove(stale)  # Old shards of this split (maybe another shard count) would mix in.
    info = read_raw_info(out_dir)
    if split in info.get("splits", {}):
      # Its shards are gone, so its counts must go too (a failed rewrite leaves no split at all).
      del info["splits"][split]
      write_info(out_dir, info)
    self._writers = [tf.io.TFRecordWriter(p + TMP_SUFFIX) for p in self.final_paths]
    self.num_groups = self.num_images = self.num_sentences = 0
    self.feat_dim = self.num_boxes = None
    self.info: dict = {}  # Merged into this split's entry of dataset_info.json.
    self.top_info: dict = {}  # Merged into the top level; must agree with the other splits.
    self._closed = False

  def write(self, images: Sequence[schema.ImageFeatures], sentences: Sequence[schema.Sentence]):
    record = schema.encode_group(images, sentences, self.feat_dtype)
    self.write_serialized(
      record,
      img_ids=[i.img_id for i in images],
      num_sentences=len(sentences),
      num_boxes=images[0].num_boxes,
      feat_dim=int(images[0].features.shape[1]),
    )

  def write_serialized(
    self,
    record: bytes,
    *,
    img_ids: Sequence[str],
    num_sentences: int,
    num_boxes: int,
    feat_dim: int,
  ):
    """Writes a group already encoded by :func:`schema.encode_group` (e.g. in a worker process)."""
    if self.feat_dim is None:
      self.feat_dim, self.num_boxes = int(feat_dim), int(num_boxes)
    elif (feat_dim, num_boxes) != (self.feat_dim, self.num_boxes):
      raise ValueError(
        f"image {img_ids[0]!r}: {num_boxes} boxes x {feat_dim} "
        f"dims, but earlier images have {self.num_boxes} x {self.feat_dim}"
      )
    self._writers[self.num_groups % len(self._writers)].write(record)
    self.num_groups += 1
    self.num_images += len(img_ids)
    self.num_sentences += num_sentences

  def abort(self):
    for w in self._writers:
      w.close()
    for p in self.final_paths:
      if os.path.exists(p + TMP_SUFFIX):
        os.remove(p + TMP_SUFFIX)
    self._closed = True

  def close(self):
    """Renames the shards into place and merges this split into ``dataset_info.json``."""
    if self._closed:
      return
    for w in self._writers:
      w.close()
    if self.num_groups == 0:
      self.abort()
      raise ValueError(f"split {self.split!r}: no records were written")
    top = {
      "schema_version": schema.SCHEMA_VERSION,
      "feat_dtype": self.feat_dtype,
      "feat_dim": self.feat_dim,
      "num_boxes": self.num_boxes,
      **self.top_info,
    }
    split = {
      "num_shards": len(self.final_paths),
      "num_groups": self.num_groups,
      "num_images": self.num_images,
      "num_sentences": self.num_sentences,
      "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "command": " ".join(sys.argv),
      **self.info,
    }
    try:
      # Checked before the rename: a split that disagrees with its directory must not appear.
      merged = merge_info(read_raw_info(self.out_dir), top, split, self.split, self.out_dir)
    except Exception:
      self.abort()
      raise
    for p in self.final_paths:
      os.replace(p + TMP_SUFFIX, p)
    self._closed = True
    write_info(self.out_dir, merged)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.close()
    else:
      self.abort()
    return False


def read_info(data_dir: str) -> dict:
  """Loads ``dataset_info.json`` (local or URL); raises with the path if it is missing or from
  another schema."""
  path = os.path.join(data_dir, schema.INFO_FILE)
  if not gfile.exists(path):
    raise FileNotFoundError(
      f"{path} not found: is {data_dir} a directory written by tfrecords_tools?"
    )
  with gfile.open(path) as f:
    info = json.load(f)
  version = info.get("schema_version")
  if version != schema.SCHEMA_VERSION:
    raise ValueError(f"{path}: schema version {version}, this code reads {schema.SCHEMA_VERSION}")
  return info


def read_raw_info(out_dir: str) -> dict:
  """Loads ``dataset_info.json`` (local or URL) as it is, or ``{}`` if there is none yet."""
  path = os.path.join(out_dir, schema.INFO_FILE)
  if not gfile.exists(path):
    return {}
  with gfile.open(path) as f:
    return json.load(f)


def merge_info(info: dict, top: dict, split: dict, split_name: str, out_dir: str = "") -> dict:
  """Returns ``info`` with ``top`` merged in and ``splits[split_name] = split``.

  Raises:
    ValueError: if a top-level value (feature dim, answer vocabulary, ...) differs from the one
      the directory's other splits were written with.
  """
  info = dict(info)
  for key, value in top.items():
    if key in info and info[key] != value and key != "schema_version":

      def shown(v):
        return repr(v) if len(repr(v)) < 200 else f"{repr(v)[:200]}..."

      raise ValueError(
        f"{os.path.join(out_dir, schema.INFO_FILE)}: split {split_name!r} has {key}="
        f"{shown(value)} but the directory has {shown(info[key])}"
      )
    info[key] = value
  info["splits"] = {**info.get("splits", {}), split_name: split}
  return info


def write_info(out_dir: str, info: dict) -> None:
  """Writes ``dataset_info.json`` atomically (temporary name, then rename); local only."""
  _local_output(out_dir)
  path = os.path.join(out_dir, schema.INFO_FILE)
  tmp = path + TMP_SUFFIX
  with open(tmp, "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def update_info(out_dir: str, top: dict, split: dict, split_name: str) -> None:
  """Merges ``top`` and ``splits[split_name] = split`` into dataset_info.json (atomic replace)."""
  write_info(out_dir, merge_info(read_raw_info(out_dir), top, split, split_name, out_dir))
