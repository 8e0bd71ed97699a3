"""The easy-VQA pixel detector (lxmert_jax/easy_vqa/regions.py)."""

import collections
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lxmert_jax.easy_vqa import dataset, features, regions

COLORS = dict(zip(regions.ATTR_CLASSES[:8], regions.PALETTE[:8].astype(int).tolist(), strict=True))


def draw_image(shape, color, x, y, size, size2=None, bg=(240, 235, 250)):
  """An easy-VQA-style image drawn like the dataset's generator: 128 px, then 2x bilinear down.

  Returns (image [64, 64, 3] uint8, true extent (x1, y1, x2, y2) in 64-px coordinates).
  """
  im = Image.new("RGB", (128, 128), bg)
  draw = ImageDraw.Draw(im)
  fill = tuple(COLORS[color])
  if shape == "rectangle":
    extent = (x, y, x + size, y + (size2 or size))
    draw.rectangle([(x, y), (x + size, y + (size2 or size))], fill=fill)
  elif shape == "circle":
    extent = (x, y, x + size, y + size)
    draw.ellipse([(x, y), (x + size, y + size)], fill=fill)
  else:  # upward equilateral triangle with its base from (x, y) to (x + size, y)
    top = y - size * math.sin(math.pi / 3)
    extent = (x, top, x + size, y)
    draw.polygon([(x, y), (x + size, y), (x + size / 2, top)], fill=fill)
  small = np.asarray(im.resize((64, 64), resample=Image.BILINEAR))
  return small, np.array(extent) / 2


SYNTHETIC = [
  ("rectangle", "red", 10, 20, 40, 20),
  ("rectangle", "gray", 100, 100, 16, 27),
  ("circle", "blue", 30, 40, 64, None),
  ("circle", "yellow", 0, 0, 16, None),
  ("triangle", "teal", 20, 100, 60, None),
  ("triangle", "black", 70, 40, 18, None),
  ("circle", "brown", 90, 60, 37, None),
  ("triangle", "green", 60, 120, 40, None),
]


@pytest.mark.parametrize("shape, color, x, y, size, size2", SYNTHETIC)
def test_detects_drawn_shapes(shape, color, x, y, size, size2):
  image, extent = draw_image(shape, color, x, y, size, size2)
  det = regions.detect(image)
  assert regions.OBJECT_CLASSES[det.shape_id] == shape
  assert regions.ATTR_CLASSES[det.color_id] == color
  np.testing.assert_allclose(det.background, [240, 235, 250])
  np.testing.assert_allclose(det.foreground, COLORS[color])
  # The box is the shape's drawn extent, up to the half-covered rim pixel on each side.
  assert np.all(np.abs(det.box - extent) <= 1.0), (det.box, extent)
  assert det.shape_probs.max() > 0.5


def _reference_largest_component(mask):
  """Breadth-first search, 8-connectivity; ties -> the component met first in raster order."""
  h, w = mask.shape
  seen = np.zeros_like(mask)
  best = []
  for y0 in range(h):
    for x0 in range(w):
      if mask[y0, x0] and not seen[y0, x0]:
        comp, queue = [], collections.deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
          y, x = queue.popleft()
          comp.append((y, x))
          for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
              v, u = y + dy, x + dx
              if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                seen[v, u] = True
                queue.append((v, u))
        if len(comp) > len(best):
          best = comp
  out = np.zeros_like(mask)
  for y, x in best:
    out[y, x] = True
  return out


def test_largest_component_matches_breadth_first_search():
  rng = np.random.default_rng(0)
  for _ in range(300):
    shape = rng.integers(3, 25, size=2)
    mask = rng.random(shape) < rng.uniform(0.05, 0.7)
    np.testing.assert_array_equal(
      regions._largest_component(mask), _reference_largest_component(mask)
    )


def test_blank_image_has_no_shape_and_background_labels():
  image = np.full((64, 64, 3), 245, np.uint8)
  det = regions.detect(image)
  assert not det.found
  np.testing.assert_array_equal(det.box, [0, 0, 64, 64])
  out = features.extract_regions(image)
  assert np.all(out.objects_id == regions.OBJECT_CLASSES.index("background"))
  assert np.all(out.attrs_id == regions.BACKGROUND_ATTR)
  assert np.all(np.isfinite(out.features))


def test_rejects_bad_images():
  with pytest.raises(ValueError, match="RGB image"):
    regions.detect(np.zeros((64, 64), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    regions.detect(np.zeros((64, 64, 3), np.float32))


def test_box_order_and_prefixes():
  image, _ = draw_image("circle", "red", 30, 30, 40)
  det = regions.detect(image)
  boxes = regions.propose_boxes(det, 64, 64)
  assert boxes.shape == (regions.MAX_BOXES, 4) == (len(regions.BOX_ORDER), 4)
  np.testing.assert_array_equal(boxes[0], det.box)
  np.testing.assert_array_equal(boxes[1], [0, 0, 64, 64])
  assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 64)
  assert np.all(boxes[:, 2:] > boxes[:, :2])
  # Every grid tiles the image exactly.
  for start, n in ((7, 2), (11, 3), (20, 4)):
    grid = boxes[start : start + n * n]
    assert np.isclose(((grid[:, 2] - grid[:, 0]) * (grid[:, 3] - grid[:, 1])).sum(), 64 * 64)
  np.testing.assert_array_equal(regions.propose_boxes(det, 64, 64, 11), boxes[:11])
  with pytest.raises(ValueError, match="num_boxes"):
    regions.propose_boxes(det, 64, 64, 37)


@pytest.fixture(scope="module")
def train_sample():
  split = dataset.load_split("train", max_images=600)
  by_image = split.questions_by_image()
  return [(split.image_paths[i], dataset.image_truth(by_image[i])) for i in sorted(by_image)]


def test_box_zero_contains_every_strong_foreground_pixel(train_sample):
  for path, _ in train_sample[:50]:
    image = features.load_image(path).astype(float)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    diff = np.abs(image - np.median(border, 0)).max(-1)
    far = diff > 0.6 * diff.max()  # pixels more than 60% covered by the shape
    ys, xs = np.nonzero(far)
    x1, y1, x2, y2 = regions.detect(features.load_image(path)).box
    assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2, path


def test_pixel_labels_agree_with_question_truth(train_sample):
  agree, total = collections.Counter(), collections.Counter()
  for path, (shape, color) in train_sample:
    det = regions.detect(features.load_image(path))
    if shape is not None:
      total["shape"] += 1
      agree["shape"] += regions.OBJECT_CLASSES[det.shape_id] == shape
    if color is not None:
      total["color"] += 1
      agree["color"] += regions.ATTR_CLASSES[det.color_id] == color
  assert total["shape"] > 500 and total["color"] > 500
  for kind in ("shape", "color"):
    assert agree[kind] / total[kind] >= 0.99, (kind, agree[kind], total[kind])


def test_region_labels_follow_coverage():
  image, _ = draw_image("triangle", "blue", 40, 80, 40)
  det = regions.detect(image)
  coverage = np.array([1.0, 0.999, 0.5, 0.01, 0.0])
  obj, obj_conf, attr, attr_conf = regions.region_labels(det, coverage)
  names = [regions.OBJECT_CLASSES[i] for i in obj]
  assert names == ["triangle", "triangle", "partial", "background", "background"]
  assert [regions.ATTR_CLASSES[i] for i in attr] == ["blue"] * 3 + ["white"] * 2
  assert np.all((obj_conf > 0) & (obj_conf <= 1)) and np.all((attr_conf > 0) & (attr_conf <= 1))
