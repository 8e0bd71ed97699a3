"""Reads object features stored as one ``.npz`` file per image (the image id is the file stem).

Arrays in each file (N = boxes, F = feature dim):

  ``features``     [N, F]  float   RoI features
  ``boxes``        [N, 4]  float   (x1, y1, x2, y2) in pixels of the original image
  ``img_h``/``img_w`` []   int     image size in pixels
  ``objects_id``   [N]     int     optional; detector object class, -1 if absent
  ``objects_conf`` [N]     float   optional; its confidence, 0 if absent
  ``attrs_id``     [N]     int     optional; detector attribute class, -1 if absent
  ``attrs_conf``   [N]     float   optional; its confidence, 0 if absent

Files are opened with ``allow_pickle=False``: an ``.npz`` holding Python objects is rejected,
never unpickled.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator

import numpy as np

from lxmert_jax.data import schema
from tfrecords_tools.tsv_features import FeatureError

REQUIRED = ("features", "boxes", "img_h", "img_w")
OPTIONAL = {"objects_id": -1, "objects_conf": 0.0, "attrs_id": -1, "attrs_conf": 0.0}


def _scalar_int(value: np.ndarray, name: str, where: str) -> int:
  value = np.asarray(value)
  if value.size != 1 or not np.issubdtype(value.dtype, np.number):
    raise FeatureError(f"{where}: {name!r} must be one number, got {value.dtype} {value.shape}")
  return int(value.reshape(()))


def load_npz(path: str) -> schema.ImageFeatures:
  """Loads one per-image ``.npz`` file into :class:`schema.ImageFeatures` (boxes normalised).

  Raises:
    FeatureError: naming the file: unreadable or not an npz, missing arrays, wrong shapes,
      non-finite values, or boxes outside the image.
  """
  try:
    return _load_npz(path)
  except FeatureError as e:
    e.img_id = os.path.splitext(os.path.basename(path))[0]
    raise


def _load_npz(path: str) -> schema.ImageFeatures:
  img_id = os.path.splitext(os.path.basename(path))[0]
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {name: npz[name] for name in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise FeatureError(f"{path}: cannot read as an .npz file ({type(e).__name__}: {e})") from None
  missing = [name for name in REQUIRED if name not in arrays]
  if missing:
    raise FeatureError(f"{path}: missing arrays {missing} (found {sorted(arrays)})")
  features = arrays["features"]
  if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
    raise FeatureError(
      f"{path}: 'features' must be a float [num_boxes, feat_dim] array, got {features.dtype} "
      f"{features.shape}"
    )
  n = features.shape[0]
  boxes = np.asarray(arrays["boxes"], np.float64)
  if boxes.shape != (n, 4):
    raise FeatureError(f"{path}: 'boxes' must have shape ({n}, 4), got {boxes.shape}")
  img_h = _scalar_int(arrays["img_h"], "img_h", path)
  img_w = _scalar_int(arrays["img_w"], "img_w", path)
  if img_h <= 0 or img_w <= 0:
    raise FeatureError(f"{path}: image size must be positive, got h={img_h} w={img_w}")
  extra = {}
  for name, fill in OPTIONAL.items():
    dtype = np.int64 if isinstance(fill, int) else np.float32
    value = np.asarray(arrays.get(name, np.full([n], fill)))
    if value.shape != (n,):
      raise FeatureError(f"{path}: {name!r} must have shape ({n},), got {value.shape}")
    extra[name] = value.astype(dtype)
  image = schema.ImageFeatures(
    img_id=img_id,
    img_h=img_h,
    img_w=img_w,
    features=features.astype(np.float32, copy=False),
    boxes=schema.normalize_boxes(boxes, img_h, img_w),
    **extra,
  )
  try:
    schema.validate_image(image)
  except ValueError as e:
    raise FeatureError(f"{path}: {e}") from None
  return image


def list_npz(directory: str) -> list[str]:
  """The ``*.npz`` files of ``directory``, sorted by name; raises if there are none."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"feature directory {directory} not found")
  paths = sorted(
    os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".npz")
  )
  if not paths:
    raise FileNotFoundError(f"no .npz files in {directory}")
  return paths


def iter_npz_features(directory: str, skip_bad: bool = False) -> Iterator[schema.ImageFeatures]:
  """Streams the images of a directory of ``.npz`` files in file-name order (one file in memory).

  Raises:
    FeatureError: naming the file and the problem (unless ``skip_bad``).
  """
  for path in list_npz(directory):
    try:
      yield load_npz(path)
    except FeatureError:
      if not skip_bad:
        raise
