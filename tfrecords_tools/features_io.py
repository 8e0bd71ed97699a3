"""Feature sources (TSV files or ``.npz`` directories) as chunks, and an ordered, bounded pool.

A conversion streams its feature files once. The main process reads raw chunks (TSV lines or
``.npz`` paths), worker processes decode and encode them, and results come back in input order
(so shard contents are deterministic). At most ``max_inflight`` chunks are read ahead, which keeps
memory independent of the input size: ``multiprocessing.Pool.imap`` would instead read the whole
input as fast as it can and queue it.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

from lxmert_jax.data import schema
from tfrecords_tools import npz_features, tsv_features

# A chunk is ("tsv", path, [(line_number, line), ...]) or ("npz", directory, [file, ...]).
Chunk = tuple


def iter_chunks(paths: Sequence[str], chunk_size: int = 16) -> Iterator[Chunk]:
  """Yields raw chunks of every feature source in ``paths``, in order.

  Args:
    paths: TSV files (one image per line) and/or directories of per-image ``.npz`` files.
    chunk_size: images per chunk (16 TSV lines of 36 x 2048 features are ~6.5 MB).
  """
  for path in paths:
    if os.path.isdir(path):
      files = npz_features.list_npz(path)
      for start in range(0, len(files), chunk_size):
        yield ("npz", path, files[start : start + chunk_size])
    elif os.path.isfile(path):
      for lines in tsv_features.iter_tsv_lines(path, chunk_size):
        yield ("tsv", path, lines)
    else:
      raise FileNotFoundError(
        f"feature source {path} not found (expected a .tsv file or a directory)"
      )


def decode_chunk(chunk: Chunk) -> Iterator[tuple[str, schema.ImageFeatures | Exception]]:
  """Yields ``(where, image or FeatureError)`` per record of a chunk; ``where`` is file[:line]."""
  kind, path, items = chunk
  for item in items:
    if kind == "tsv":
      lineno, line = item
      where = f"{path}:{lineno}"
      try:
        yield where, tsv_features.parse_tsv_line(line, where)
      except tsv_features.FeatureError as e:
        yield where, e
    else:
      try:
        yield item, npz_features.load_npz(item)
      except tsv_features.FeatureError as e:
        yield item, e


def chunk_nbytes(chunk: Chunk) -> int:
  """Input bytes a chunk stands for (for MB/s reports)."""
  kind, _, items = chunk
  if kind == "tsv":
    return sum(len(line) for _, line in items)
  return sum(os.path.getsize(p) for p in items)


def iter_features(
  paths: Sequence[str], num_workers: int = 0, chunk_size: int = 16
) -> Iterator[schema.ImageFeatures]:
  """Streams decoded images of several sources in order; raises on the first bad record."""
  with OrderedPool(num_workers) as pool:
    for results in pool.imap(_decode_all, iter_chunks(paths, chunk_size)):
      for _, image in results:
        if isinstance(image, Exception):
          raise image
        yield image


def _decode_all(chunk: Chunk) -> list:
  return list(decode_chunk(chunk))


class OrderedPool:
  """``imap`` over worker processes with results in input order and bounded read-ahead.

  With ``num_workers=0`` everything runs in the calling process (debugging, tiny inputs).
  The pool is created in ``__init__`` (fork start method where available, so workers share the
  parent's annotation tables copy-on-write instead of receiving pickles), before the caller
  opens any TFRecord writer.

  Args:
    num_workers: worker processes; 0 = inline.
    initializer: called once in every worker (and inline) with ``initargs``.
    max_inflight: chunks submitted but not yet consumed (default 2 per worker).
  """

  def __init__(
    self,
    num_workers: int,
    initializer: Callable | None = None,
    initargs: tuple = (),
    max_inflight: int | None = None,
  ):
    self.num_workers = max(0, int(num_workers))
    self.max_inflight = max_inflight or 2 * max(1, self.num_workers)
    self._pool = None
    if self.num_workers == 0:
      if initializer is not None:
        initializer(*initargs)
      return
    # The Rust tokenizer's thread pool would warn after a fork; workers never tokenise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    self._pool = ctx.Pool(self.num_workers, initializer, initargs)

  def imap(self, fn: Callable, items: Iterable) -> Iterator:
    if self._pool is None:
      yield from map(fn, items)
      return
    pending = collections.deque()
    for item in items:
      pending.append(self._pool.apply_async(fn, (item,)))
      if len(pending) >= self.max_inflight:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()

  def close(self):
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False
