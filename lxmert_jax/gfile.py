"""File functions that take local paths and ``gs://`` URLs alike (any ``tf.io.gfile`` scheme).

Training reads its data directory and writes its workdir through these helpers, so
``--config.data.data_dir=gs://BUCKET/tfrecords/vqa`` and ``--workdir=gs://BUCKET/runs/vqa``
work on pods without copying or mounting anything.

Local paths go to Python's own functions (``open``, ``os.replace``, ``glob.glob``, ...), so
local behaviour is exactly what it was before; paths with a scheme (``gs://``, ``s3://``,
``ram://``, ...) go to ``tf.io.gfile``. TensorFlow is imported only when a URL is used:
importing it costs seconds, and callers such as the tests set XLA flags before JAX or
TensorFlow loads.

On GCS an object becomes visible only once it is completely written, and a rename is a copy
and a delete, so "write a temporary name, then :func:`replace`" still never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import builtins
import contextlib
import glob as _glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

# RFC 3986 scheme followed by '://': 'gs://bucket/x', 'ram://x', 's3://...'.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _tf_gfile():
  import tensorflow as tf

  return tf.io.gfile


def is_url(path: str | os.PathLike) -> bool:
  """Whether ``path`` has a scheme (``gs://``, ``ram://``, ...) rather than being local."""
  return bool(_URL.match(os.fspath(path)))


def abspath(path: str | os.PathLike) -> str:
  """``os.path.abspath`` for local paths; URLs are already absolute and are left as they are."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def exists(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _tf_gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _tf_gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def makedirs(path: str | os.PathLike) -> None:
  """Creates ``path`` and its parents; no error if it exists."""
  path = os.fspath(path)
  if is_url(path):
    _tf_gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def glob(pattern: str | os.PathLike) -> list[str]:
  """Paths matching ``pattern`` (``*``, ``?``, ``[...]``), unsorted as the backend returns them."""
  pattern = os.fspath(pattern)
  return list(_tf_gfile().glob(pattern)) if is_url(pattern) else _glob.glob(pattern)


def listdir(path: str | os.PathLike) -> list[str]:
  """Entry names of directory ``path``.

  GCS lists subdirectories with a trailing '/' (local listings have none); it is stripped so
  names compare equal on both.
  """
  path = os.fspath(path)
  if not is_url(path):
    return os.listdir(path)
  return [name.rstrip("/") for name in _tf_gfile().listdir(path)]


def open(path: str | os.PathLike, mode: str = "r", encoding: str | None = None):  # noqa: A001
  """A file object for ``path`` (text or binary ``mode``: r, w, a, rb, wb, ab).

  URLs are read and written as UTF-8 text (``tf.io.gfile.GFile``); ``encoding`` is passed to
  Python's ``open`` for local paths.
  """
  path = os.fspath(path)
  if not is_url(path):
    return builtins.open(path, mode, encoding=encoding)
  if encoding is not None and encoding.lower().replace("-", "") != "utf8":
    raise ValueError(f"{path}: only UTF-8 text is supported on URLs, not {encoding!r}")
  return _tf_gfile().GFile(path, mode)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Renames ``src`` to ``dst``, overwriting ``dst`` (``os.replace``, atomic on local disks)."""
  src, dst = os.fspath(src), os.fspath(dst)
  if is_url(src) or is_url(dst):
    _tf_gfile().rename(src, dst, overwrite=True)
  else:
    os.replace(src, dst)


def copy(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> None:
  """Copies the file ``src`` to ``dst`` (either may be local or a URL)."""
  src, dst = os.fspath(src), os.fspath(dst)
  if is_url(src) or is_url(dst):
    _tf_gfile().copy(src, dst, overwrite=overwrite)
    return
  if not overwrite and os.path.exists(dst):
    raise FileExistsError(f"{dst} exists")
  shutil.copyfile(src, dst)


@contextlib.contextmanager
def staged_locally(path: str | os.PathLike) -> Iterator[str]:
  """Yields a local path to write ``path`` through; copies it to ``path`` if that is a URL.

  For writers that only know local files (e.g. ``metrics.submission``). A local ``path`` is
  yielded as it is. For a URL the file is written in a temporary local directory and copied
  to the URL only when the ``with`` block succeeds, so a failed write leaves nothing there.
  """
  path = os.fspath(path)
  if not is_url(path):
    yield path
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, os.path.basename(path) or "file")
    yield local
    copy(local, path, overwrite=True)
