"""The join of a plan (annotations) with streamed features into sharded image-group records.

Workers decode feature records and, for one-image groups, encode the whole record, so the main
process only writes bytes. Images of multi-image groups (NLVR2 pairs) come back decoded and wait
in the main process until their partner arrives. Afterwards, groups whose images never appeared
are an error (or counted under ``--skip_bad``), and images without sentences are counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import numpy as np

from lxmert_jax.data import schema
from lxmert_jax.data.tokenization import WordPieceTokenizer
from tfrecords_tools import common, features_io, shards
from tfrecords_tools.common import ConversionError, Report, file_provenance, log
from tfrecords_tools.plan import Plan

ANSWERS_FILE = "answers.json"
# Image ids listed in messages and dataset_info.json for "not found" / "unused" images.
MAX_NAMED = 5
LOG_EVERY_S = 30.0

_STATE: dict = {}  # Set in each worker by _init_worker (inherited on fork, pickled otherwise).


def _init_worker(plan: Plan, feat_dtype: str) -> None:
  _STATE.update(plan=plan, feat_dtype=feat_dtype)


def _convert_chunk(chunk) -> tuple[int, list[tuple]]:
  """Worker: decodes a chunk and encodes its one-image groups.

  Returns:
    ``(input_bytes, results)``, each result one of ``("bad", where, message, img_id|None)``,
    ``("unused", where, img_id)``, ``("record", where, img_id, group, bytes, n_sent, N, F)`` or
    ``("image", where, ImageFeatures)`` (features already in the on-disk dtype).
  """
  plan, feat_dtype = _STATE["plan"], _STATE["feat_dtype"]
  dtype = schema.FEATURE_DTYPES[feat_dtype]
  results = []
  for where, image in features_io.decode_chunk(chunk):
    if isinstance(image, Exception):
      results.append(("bad", where, str(image), getattr(image, "img_id", None)))
      continue
    keys = plan.image_groups.get(image.img_id)
    if not keys:
      results.append(("unused", where, image.img_id))
      continue
    n, f = image.features.shape
    group = plan.groups[keys[0]]
    try:
      if len(keys) == 1 and len(group.img_ids) == 1:
        record = schema.encode_group([image], group.sentences, feat_dtype)
        results.append(("record", where, image.img_id, keys[0], record, group.num_sentences, n, f))
      else:
        # Cast here (halves what travels back for float16) and catch float16 overflow early.
        features = image.features.astype(dtype)
        if not np.all(np.isfinite(features)):
          raise ValueError(
            f"image {image.img_id!r}: features overflow {feat_dtype} (|x| > 65504); "
            "use --feat_dtype=float32"
          )
        results.append(("image", where, dataclasses.replace(image, features=features)))
    except ValueError as e:
      results.append(("bad", where, f"{where}: {e}", image.img_id))
  return features_io.chunk_nbytes(chunk), results


@dataclasses.dataclass
class _Progress:
  input_bytes: int = 0
  images_seen: int = 0
  unused: int = 0
  unused_ids: list = dataclasses.field(default_factory=list)
  max_pending: int = 0


class _Join:
  """Main-process side: duplicate checks, pairing of multi-image groups, writing."""

  def __init__(self, plan: Plan, writer: shards.ShardedGroupWriter, report: Report, feat_dtype):
    self.plan, self.writer, self.report, self.feat_dtype = plan, writer, report, feat_dtype
    self.seen: dict[str, str] = {}  # img_id -> where it was first seen
    self.bad_images: set[str] = set()
    self.written: set[str] = set()
    self.failed: set[str] = set()  # Multi-image groups that could not be encoded.
    self.pending: dict[str, schema.ImageFeatures] = {}
    self.progress = _Progress()

  def _write(self, where, record, img_ids, group, n_sent, n, f):
    try:
      self.writer.write_serialized(
        record, img_ids=img_ids, num_sentences=n_sent, num_boxes=n, feat_dim=f
      )
    except ValueError as e:
      self.report.bad("image_records", f"{where}: {e}")
      self.bad_images.update(img_ids)
      self.failed.add(group)
      return
    self.written.add(group)

  def handle(self, result: tuple) -> None:
    kind, where = result[0], result[1]
    if kind == "bad":
      self.report.bad("image_records", result[2])
      if result[3] is not None:
        self._fail(result[3])
      return
    img_id = result[2] if kind != "image" else result[2].img_id
    if img_id in self.seen:
      self.report.bad(
        "duplicate_images", f"{where}: duplicate image id {img_id!r} (first at {self.seen[img_id]})"
      )
      return
    self.seen[img_id] = where
    self.progress.images_seen += 1
    if kind == "unused":
      self.progress.unused += 1
      if len(self.progress.unused_ids) < MAX_NAMED:
        self.progress.unused_ids.append(img_id)
    elif kind == "record":
      _, _, img_id, group, record, n_sent, n, f = result
      self._write(where, record, [img_id], group, n_sent, n, f)
    else:
      self._add_pending(where, result[2])

  def _add_pending(self, where: str, image: schema.ImageFeatures) -> None:
    self.pending[image.img_id] = image
    self.progress.max_pending = max(self.progress.max_pending, len(self.pending))
    for key in self.plan.image_groups[image.img_id]:
      group = self.plan.groups[key]
      if key in self.written or key in self.failed:
        continue
      if not all(i in self.pending for i in group.img_ids):
        continue
      images = [self.pending[i] for i in group.img_ids]
      try:
        record = schema.encode_group(images, group.sentences, self.feat_dtype)
      except ValueError as e:
        self.report.bad("image_records", f"{where}: {e}")
        self.bad_images.update(group.img_ids)
        self.failed.add(key)  # Its images need not wait for it any longer.
        continue
      n, f = images[0].features.shape
      self._write(where, record, list(group.img_ids), key, group.num_sentences, n, f)
    self._release(image.img_id)

  def _fail(self, img_id: str) -> None:
    """Marks a bad image's groups as failed, so partners waiting for it are released."""
    self.bad_images.add(img_id)
    for key in self.plan.image_groups.get(img_id, ()):
      if key not in self.written:
        self.failed.add(key)
    self._release(img_id)

  def _release(self, img_id: str) -> None:
    """Drops pending images of ``img_id``'s groups once none of their groups needs them."""
    touched = {
      i for key in self.plan.image_groups.get(img_id, ()) for i in self.plan.groups[key].img_ids
    }
    for other in touched:
      done = (k in self.written or k in self.failed for k in self.plan.image_groups[other])
      if other in self.pending and all(done):
        del self.pending[other]

  def finish(self, feature_paths: Sequence[str]) -> dict:
    """Checks that every annotated group was written; returns counts for dataset_info.json."""
    missing, skipped_sentences = [], 0
    for key, group in self.plan.groups.items():
      if key in self.written:
        continue
      if key in self.failed or any(i in self.bad_images for i in group.img_ids):
        skipped_sentences += group.num_sentences  # Already reported with the bad record.
      else:
        missing.append((key, group))
    if skipped_sentences:
      self.report.counts["sentences_of_skipped_images"] += skipped_sentences
    if missing:
      absent = [i for _, g in missing for i in g.img_ids if i not in self.seen]
      named = ", ".join(
        f"{i!r} ({g.where})"
        for _, g in missing[:MAX_NAMED]
        for i in g.img_ids
        if i not in self.seen
      )
      num_sentences = sum(g.num_sentences for _, g in missing)
      message = (
        f"{len(missing)} annotated image groups ({num_sentences} sentences) refer to "
        f"{len(set(absent))} images not found in the features {list(feature_paths)}: {named}"
      )
      if not self.report.skip_bad:
        raise ConversionError(message)
      for _, group in missing:
        log.warning(
          "skipped (sentences_without_image): %s images %s not found (%d sentences)",
          group.where,
          list(group.img_ids),
          group.num_sentences,
        )
      self.report.counts["sentences_without_image"] += num_sentences
      self.report.listed.append(message)
    p = self.progress
    if p.unused:
      log.warning(
        "%d of %d images in the features have no sentences in this split (not written), e.g. %s",
        p.unused,
        p.images_seen,
        p.unused_ids,
      )
    return {
      "images_in_features": p.images_seen,
      "images_without_sentences": p.unused,
      "images_without_sentences_examples": p.unused_ids,
      "max_pending_images": p.max_pending,
      "input_bytes": p.input_bytes,
    }


def _write_answers(out_dir: str, answer_vocab: list[str] | None, check_only: bool) -> None:
  """Writes (or, with ``check_only``, verifies) ``answers.json`` beside the shards."""
  if answer_vocab is None:
    return
  path = os.path.join(out_dir, ANSWERS_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      existing = json.load(f)
    if existing != answer_vocab:
      raise ConversionError(
        f"{path} holds a different answer vocabulary ({len(existing)} answers, this split "
        f"{len(answer_vocab)}); write this split to another --output_dir"
      )
    return
  if not check_only:
    tmp = path + shards.TMP_SUFFIX
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(answer_vocab, f, ensure_ascii=False, indent=0)
    os.replace(tmp, path)


def run_conversion(
  args,
  plan: Plan,
  tokenizer: WordPieceTokenizer,
  report: Report,
  *,
  task: str,
  answer_vocab: list[str] | None,
  split_info: dict,
  top_info: dict | None = None,
) -> dict:
  """Streams ``args.features`` once and writes the groups of ``plan`` as shards of ``args.split``.

  Returns:
    The split's entry of dataset_info.json.
  """
  top = {
    "task": task,
    "tokenizer": common.tokenizer_info(tokenizer),
    **(top_info or {}),
  }
  if answer_vocab is not None:
    top.update(answer_vocab=answer_vocab, num_answers=len(answer_vocab))
  missing = [p for p in args.features if not os.path.exists(p)]
  if missing:
    raise ConversionError(f"feature sources not found: {missing}")
  # Fail before hours of streaming if this split cannot join the directory's other splits.
  pre = {"feat_dtype": args.feat_dtype, **top}
  shards.merge_info(shards.read_raw_info(args.output_dir), pre, {}, args.split, args.output_dir)
  _write_answers(args.output_dir, answer_vocab, check_only=True)

  # Import TensorFlow (5 s here) before the fork so workers inherit it rather than each paying.
  import tensorflow  # noqa: F401

  start = last_log = time.time()
  with features_io.OrderedPool(args.num_workers, _init_worker, (plan, args.feat_dtype)) as pool:
    writer = shards.ShardedGroupWriter(
      args.output_dir, args.split, args.num_shards, args.feat_dtype
    )
    join = _Join(plan, writer, report, args.feat_dtype)
    try:
      chunks = features_io.iter_chunks(args.features, args.chunk_size)
      for nbytes, results in pool.imap(_convert_chunk, chunks):
        join.progress.input_bytes += nbytes
        for result in results:
          join.handle(result)
        if time.time() - last_log > LOG_EVERY_S:
          last_log = time.time()
          log.info(
            "%d images, %d groups written, %.1f MB/s",
            join.progress.images_seen,
            writer.num_groups,
            join.progress.input_bytes / 1e6 / (last_log - start),
          )
      counts = join.finish(args.features)
      writer.top_info.update(top)
      writer.info.update(
        task=task,
        inputs={
          "features": file_provenance(args.features),
          "annotations": file_provenance(args.annotations),
          **({"answers": os.path.abspath(args.answers)} if getattr(args, "answers", None) else {}),
        },
        **counts,
        **split_info,
        **report.as_info(),
        seconds=round(time.time() - start, 1),
      )
    except BaseException:
      writer.abort()
      raise
    writer.close()
  _write_answers(args.output_dir, answer_vocab, check_only=False)
  report.log_summary()
  elapsed = time.time() - start
  log.info(
    "wrote %s/%s: %d groups, %d images, %d sentences in %d shards (%.1f MB/s over %.0f s)",
    args.output_dir,
    args.split,
    writer.num_groups,
    writer.num_images,
    writer.num_sentences,
    args.num_shards,
    join.progress.input_bytes / 1e6 / max(elapsed, 1e-9),
    elapsed,
  )
  return writer.info
