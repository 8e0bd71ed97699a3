"""Region features for easy-VQA images: one layout for every box, scaled per feature group.

Each of the detector's boxes (``regions.propose_boxes``) gets the same ``FEATURE_DIM`` vector,
computed from the pixels inside it. The layout is a concatenation of groups:

  ``mask``      64  8x8 area-averaged crop of the shape's soft matte (what the region looks like)
  ``rgb``        9  mean shape RGB inside the region, mean region RGB, image background RGB (/255)
  ``color_hist`` 9  share of the region's pixels nearest to each ``regions.ATTR_CLASSES`` colour
                    (the background tint counts as ``white``)
  ``geometry``   8  fill ratio, share of the shape inside, shape centroid x/y and spread x/y
                    (relative to the region), box aspect w/(w+h), box area / image area

Groups have very different sizes and natural variances; fed raw, the 64 mask values swamp the
rest (and a model then learns colour long before shape). :class:`FeatureScaling` therefore
centres every dimension and divides each group by one scalar so that every group has total
variance 1 (sum of its per-dimension variances) over all regions of the training split. One
scalar per group keeps the relative scale inside a group (mask cells stay comparable); centring
makes LXMERT's all-zero masked feature (spec section 2.3) equal the average region.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

from lxmert_jax.data import schema
from lxmert_jax.easy_vqa import regions

MASK_SIZE = 8
FEATURE_GROUPS = (
  ("mask", MASK_SIZE * MASK_SIZE),
  ("rgb", 9),
  ("color_hist", len(regions.ATTR_CLASSES)),
  ("geometry", 8),
)
FEATURE_DIM = sum(size for _, size in FEATURE_GROUPS)
# A region needs this much shape alpha (in pixels) for its shape centroid/spread to be
# meaningful; below it they are set to the region centre and zero spread.
MIN_MASS = 0.5


def group_slices() -> dict[str, slice]:
  """Group name -> its slice of the feature vector."""
  out, start = {}, 0
  for name, size in FEATURE_GROUPS:
    out[name] = slice(start, start + size)
    start += size
  return out


def _integral(maps: np.ndarray) -> np.ndarray:
  """Integral image [H+1, W+1, K] of per-pixel maps [H, W, K], zero on the top/left edge."""
  h, w = maps.shape[:2]
  out = np.zeros((h + 1, w + 1) + maps.shape[2:])
  out[1:, 1:] = maps.cumsum(0).cumsum(1)
  return out


def _lookup(integral: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """The integral image at fractional points x, y [...] -> [..., K].

  Pixels are constant squares, so the continuous integral is bilinear inside each pixel and
  bilinear interpolation of the integer-corner table is exact.
  """
  h, w = integral.shape[0] - 1, integral.shape[1] - 1
  x0 = np.clip(np.floor(x).astype(np.int64), 0, w - 1)
  y0 = np.clip(np.floor(y).astype(np.int64), 0, h - 1)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  return (
    integral[y0, x0] * (1 - fx) * (1 - fy)
    + integral[y0, x0 + 1] * fx * (1 - fy)
    + integral[y0 + 1, x0] * (1 - fx) * fy
    + integral[y0 + 1, x0 + 1] * fx * fy
  )


def _box_sums(integral: np.ndarray, x1, y1, x2, y2) -> np.ndarray:
  """Exact integrals [..., K] of the maps over boxes with fractional corners [...]."""
  return (
    _lookup(integral, x2, y2)
    - _lookup(integral, x1, y2)
    - _lookup(integral, x2, y1)
    + _lookup(integral, x1, y1)
  )


def raw_region_features(
  image: np.ndarray, det: regions.Detection, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Unscaled features of pixel boxes in one image.

  Args:
    image: [H, W, 3] uint8.
    det: ``regions.detect(image)``.
    boxes: [N, 4] pixel boxes (x1, y1, x2, y2), fractional allowed.

  Returns:
    ``(features [N, FEATURE_DIM] float32, coverage [N])`` where coverage is the share of the
    shape's core pixels (``det.core``) inside each box (0 when the image has no shape).
  """
  rgb = regions.as_rgb(image)
  h, w = rgb.shape[:2]
  n = len(boxes)
  alpha = det.alpha
  x1, y1, x2, y2 = boxes.T
  area = np.maximum((x2 - x1) * (y2 - y1), 1e-12)

  # Nearest colour per pixel, with the image's own tint standing in for "white" so that a
  # pastel background is never mistaken for a shape colour.
  palette = regions.PALETTE.copy()
  palette[regions.BACKGROUND_ATTR] = det.background
  # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every c, so it drops out.
  nearest = ((palette**2).sum(-1) - 2 * rgb @ palette.T).argmin(-1)
  px, py = (
    np.broadcast_to(np.arange(w) + 0.5, (h, w)),
    np.broadcast_to(np.arange(h)[:, None] + 0.5, (h, w)),
  )
  # Every statistic is an exact area integral over (fractional) boxes, read from integral
  # images of one [H, W, K] stack of per-pixel maps: no BLAS calls, whose thread pools made
  # extraction 4x more expensive on a busy machine, and O(H W K + N K) work.
  maps = np.concatenate(
    [
      alpha[..., None],
      det.core[..., None],
      alpha[..., None] * rgb,
      rgb,
      np.eye(len(palette))[nearest],
      np.stack([alpha * px, alpha * py, alpha * px**2, alpha * py**2], axis=-1),
    ],
    axis=-1,
  )
  sums = _box_sums(_integral(maps), x1, y1, x2, y2)  # [N, K]
  mass, core, shape_rgb_sum, rgb_sum, hist_sum, moments = np.split(
    sums, [1, 2, 5, 8, 8 + len(palette)], 1
  )
  mass, core = mass[:, 0], core[:, 0]  # [N] shape alpha mass and core pixels inside each box

  # The mask crop: mean alpha over each cell of an 8x8 grid laid over the box.
  t = np.linspace(0, 1, MASK_SIZE + 1)
  ex = x1[:, None] + (x2 - x1)[:, None] * t  # [N, 9] cell edges
  ey = y1[:, None] + (y2 - y1)[:, None] * t
  corners = _lookup(_integral(alpha[..., None]), ex[:, None, :], ey[:, :, None])[..., 0]
  cells = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]
  cell_area = np.maximum(np.diff(ey)[:, :, None] * np.diff(ex)[:, None, :], 1e-12)
  mask = (cells / cell_area).reshape(n, -1)

  has_shape = mass >= MIN_MASS
  safe_mass = np.maximum(mass, 1e-12)
  shape_rgb = np.where(has_shape[:, None], shape_rgb_sum / safe_mass[:, None], det.background)
  mean_rgb = rgb_sum / area[:, None]
  rgb_feats = np.concatenate(
    [shape_rgb, mean_rgb, np.broadcast_to(det.background, mean_rgb.shape)], axis=1
  )
  color_hist = hist_sum / area[:, None]

  total = det.core.sum()
  coverage = core / total if total > 0 else np.zeros(n)
  bw, bh = np.maximum(x2 - x1, 1e-12), np.maximum(y2 - y1, 1e-12)
  # Centroid and spread of the shape inside the region, in region units (0..1).
  mx, my, mxx, myy = (moments / safe_mass[:, None]).T
  sx = np.sqrt(np.maximum(mxx - mx**2, 0)) / bw
  sy = np.sqrt(np.maximum(myy - my**2, 0)) / bh
  geometry = np.stack(
    [
      mass / area,
      coverage,
      np.where(has_shape, (mx - x1) / bw, 0.5),
      np.where(has_shape, (my - y1) / bh, 0.5),
      np.where(has_shape, sx, 0.0),
      np.where(has_shape, sy, 0.0),
      bw / (bw + bh),
      area / (h * w),
    ],
    axis=1,
  )
  feats = np.concatenate([mask, rgb_feats / 255.0, color_hist, geometry], axis=1)
  return feats.astype(np.float32), coverage


@dataclasses.dataclass(frozen=True)
class FeatureScaling:
  """Per-dimension centring plus one scale per feature group.

  Attributes:
    mean: [FEATURE_DIM] training-split mean of every dimension.
    group_scale: group name -> scalar s_g; scaled = (raw - mean) / s_g on the group's slice.
  """

  mean: np.ndarray
  group_scale: Mapping[str, float]

  @classmethod
  def fit(cls, features: np.ndarray) -> FeatureScaling:
    """Fits on raw features [..., FEATURE_DIM] (all regions of the training split)."""
    flat = np.asarray(features, np.float64).reshape(-1, FEATURE_DIM)
    mean = flat.mean(axis=0)
    var = flat.var(axis=0)
    scale = {}
    for name, sl in group_slices().items():
      total = float(var[sl].sum())
      if total <= 0:
        raise ValueError(f"feature group {name!r} is constant on the training split")
      scale[name] = float(np.sqrt(total))
    return cls(mean=mean.astype(np.float32), group_scale=scale)

  def apply(self, features: np.ndarray) -> np.ndarray:
    """Scales raw features [..., FEATURE_DIM] -> float32 of the same shape."""
    features = np.asarray(features, np.float32)
    if features.shape[-1] != FEATURE_DIM:
      raise ValueError(f"expected feature dim {FEATURE_DIM}, got {features.shape[-1]}")
    div = np.empty(FEATURE_DIM, np.float32)
    for name, sl in group_slices().items():
      div[sl] = self.group_scale[name]
    return (features - self.mean) / div

  def to_dict(self) -> dict:
    """JSON-ready form, stored in dataset_info.json under ``easy_vqa.feature_scaling``."""
    return {
      "groups": [[name, size] for name, size in FEATURE_GROUPS],
      "mean": [float(v) for v in self.mean],
      "group_scale": dict(self.group_scale),
    }

  @classmethod
  def from_dict(cls, d: Mapping) -> FeatureScaling:
    """Inverse of :meth:`to_dict`; raises if the stored layout differs from this code's."""
    groups = [tuple(g) for g in d["groups"]]
    if groups != list(FEATURE_GROUPS):
      raise ValueError(
        f"stored feature groups {groups} differ from this code's {list(FEATURE_GROUPS)}: "
        "re-run the easy-VQA conversion"
      )
    return cls(mean=np.asarray(d["mean"], np.float32), group_scale=dict(d["group_scale"]))


def load_image(path: str) -> np.ndarray:
  """Reads an image file as [H, W, 3] uint8 RGB (palette, grey or RGBA PNGs are converted)."""
  from PIL import Image

  if not os.path.isfile(path):
    raise FileNotFoundError(f"image {path} not found")
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def extract_regions(
  image: np.ndarray | str,
  img_id: str | None = None,
  *,
  num_boxes: int = regions.MAX_BOXES,
  scaling: FeatureScaling | None = None,
) -> schema.ImageFeatures:
  """Detector output for one easy-VQA-style image, in the record schema.

  Args:
    image: [H, W, 3] uint8 RGB array, or a path to an image file (PNG).
    img_id: id to store; defaults to the file stem for paths, "image" for arrays.
    num_boxes: boxes to keep, a prefix of ``regions.propose_boxes``'s fixed order (1..36).
    scaling: the training split's :class:`FeatureScaling` (from dataset_info.json); None
      returns raw, unscaled features (used while fitting the scaling).

  Returns:
    ``schema.ImageFeatures`` with features [num_boxes, FEATURE_DIM] float32, boxes
    [num_boxes, 4] normalised (x1/w, y1/h, x2/w, y2/h), object and attribute labels [num_boxes].
  """
  if isinstance(image, str | os.PathLike):
    if img_id is None:
      img_id = os.path.splitext(os.path.basename(image))[0]
    image = load_image(os.fspath(image))
  image = np.asarray(image)
  det = regions.detect(image)
  h, w = image.shape[:2]
  boxes = regions.propose_boxes(det, h, w, num_boxes)
  feats, coverage = raw_region_features(image, det, boxes)
  if scaling is not None:
    feats = scaling.apply(feats)
  objects_id, objects_conf, attrs_id, attrs_conf = regions.region_labels(det, coverage)
  return schema.ImageFeatures(
    img_id=img_id or "image",
    img_h=h,
    img_w=w,
    features=feats,
    boxes=schema.normalize_boxes(boxes, h, w),
    objects_id=objects_id,
    objects_conf=objects_conf,
    attrs_id=attrs_id,
    attrs_conf=attrs_conf,
  )


_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _extract_chunk(args) -> list[schema.ImageFeatures]:
  paths, img_ids, num_boxes = args
  return [extract_regions(p, i, num_boxes=num_boxes) for p, i in zip(paths, img_ids, strict=True)]


def extract_files(
  paths: list[str],
  img_ids: list[str],
  *,
  num_boxes: int = regions.MAX_BOXES,
  workers: int | None = None,
  chunk_size: int = 200,
) -> list[schema.ImageFeatures]:
  """Raw (unscaled) :func:`extract_regions` over many files, in order, on ``workers`` processes.

  Workers are spawned, not forked: the caller may already run JAX or TensorFlow threads, which
  a fork would copy mid-operation. As with any spawn pool, a calling *script* must guard its
  entry point with ``if __name__ == "__main__":``. ``workers`` defaults to the CPU count;
  1 runs in-process.

  Args:
    paths: image files; img_ids: the id stored for each.
    num_boxes: boxes per image (see :func:`extract_regions`).
    workers: processes.
    chunk_size: images per task.

  Returns:
    One unscaled ``schema.ImageFeatures`` per path, in order.
  """
  workers = workers or os.cpu_count() or 1
  chunks = [
    (paths[i : i + chunk_size], img_ids[i : i + chunk_size], num_boxes)
    for i in range(0, len(paths), chunk_size)
  ]
  if workers <= 1 or len(chunks) <= 1:
    return [r for c in chunks for r in _extract_chunk(c)]
  import multiprocessing

  # One BLAS thread per worker: the per-image arrays are tiny, the processes already use every
  # core, and idle OpenBLAS threads spin (matmul-based box sums cost 4x the CPU time with them
  # on a busy 2-core machine). Spawned workers read these when they import numpy.
  saved = {k: os.environ.get(k) for k in _BLAS_THREAD_VARS}
  os.environ.update({k: "1" for k in _BLAS_THREAD_VARS})
  try:
    with multiprocessing.get_context("spawn").Pool(min(workers, len(chunks))) as pool:
      return [r for part in pool.imap(_extract_chunk, chunks) for r in part]
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
