"""Region features, their scaling and probes (lxmert_jax/easy_vqa/{features,probe}.py)."""

import numpy as np
import pytest
from PIL import Image

from lxmert_jax.data import schema
from lxmert_jax.easy_vqa import dataset, features, probe, regions


@pytest.fixture(scope="module")
def sample():
  """Raw features and question truth of the first 600 train and 250 test images."""
  out = {}
  for name, n in (("train", 600), ("test", 250)):
    split = dataset.load_split(name, max_images=n)
    by_image = split.questions_by_image()
    ids = sorted(by_image)
    feats = features.extract_files(
      [split.image_paths[i] for i in ids], [str(i) for i in ids], workers=1
    )
    out[name] = (feats, [dataset.image_truth(by_image[i]) for i in ids], split)
  return out


def test_layout_and_schema(sample):
  feats, _, _ = sample["train"]
  image = feats[0]
  assert image.features.shape == (regions.MAX_BOXES, features.FEATURE_DIM) == (36, 90)
  assert image.features.dtype == np.float32
  assert (image.img_id, image.img_h, image.img_w) == ("0", 64, 64)
  schema.validate_image(image, feat_dim=features.FEATURE_DIM)
  np.testing.assert_allclose(image.boxes[1], [0, 0, 1, 1])
  slices = features.group_slices()
  assert slices["geometry"].stop == features.FEATURE_DIM


def test_deterministic_and_path_equals_array(sample):
  _, _, split = sample["train"]
  path = split.image_paths[3]
  a = features.extract_regions(path)
  b = features.extract_regions(path)
  c = features.extract_regions(features.load_image(path), img_id="3")
  assert a.img_id == "3"
  for x in (b, c):
    for field in ("features", "boxes", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
      np.testing.assert_array_equal(getattr(a, field), getattr(x, field))


def test_workers_give_the_same_features(sample):
  _, _, split = sample["test"]
  ids = sorted(split.image_paths)[:8]
  paths = [split.image_paths[i] for i in ids]
  serial = features.extract_files(paths, [str(i) for i in ids], workers=1)
  parallel = features.extract_files(paths, [str(i) for i in ids], workers=2, chunk_size=3)
  for s, p in zip(serial, parallel, strict=True):
    assert s.img_id == p.img_id
    # Workers run one BLAS thread; a different thread count may reorder float sums.
    np.testing.assert_allclose(s.features, p.features, rtol=1e-6, atol=1e-7)


def test_rgba_png_file(tmp_path, sample):
  _, _, split = sample["train"]
  rgb = features.load_image(split.image_paths[0])
  path = tmp_path / "shape.png"
  Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(path)
  out = features.extract_regions(str(path))
  assert out.img_id == "shape"
  np.testing.assert_array_equal(out.features, features.extract_regions(rgb).features)
  with pytest.raises(FileNotFoundError, match="missing.png"):
    features.extract_regions(str(tmp_path / "missing.png"))


def test_mask_crop_is_an_area_average():
  # A matte with known values; the whole-image box's 8x8 crop must equal 8x8 block means.
  rng = np.random.default_rng(0)
  alpha = rng.random((64, 64))
  det = regions.Detection(
    background=np.full(3, 240.0),
    foreground=np.array([255.0, 0, 0]),
    alpha=alpha,
    core=alpha >= 0.5,
    box=np.array([0.0, 0, 64, 64]),
    shape_probs=np.full(3, 1 / 3),
    color_probs=np.full(8, 1 / 8),
  )
  image = np.full((64, 64, 3), 240, np.uint8)
  boxes = np.array([[0, 0, 64, 64], [8, 16, 24, 48], [0.5, 0, 1.5, 1]])
  feats, coverage = features.raw_region_features(image, det, boxes)
  mask = features.group_slices()["mask"]
  np.testing.assert_allclose(
    feats[0, mask].reshape(8, 8), alpha.reshape(8, 8, 8, 8).mean((1, 3)), rtol=1e-5
  )
  np.testing.assert_allclose(
    feats[1, mask].reshape(8, 8), alpha[16:48, 8:24].reshape(8, 4, 8, 2).mean((1, 3)), rtol=1e-5
  )
  # A box straddling two pixels: the left crop half samples one, the right half the other.
  expected = np.tile(np.repeat([alpha[0, 0], alpha[0, 1]], 4), 8)
  np.testing.assert_allclose(feats[2, mask], expected, rtol=1e-5)
  np.testing.assert_allclose(coverage[0], 1.0)
  geometry = feats[:, features.group_slices()["geometry"]]
  np.testing.assert_allclose(geometry[0, 0], alpha.mean(), rtol=1e-5)  # fill ratio
  np.testing.assert_allclose(geometry[2, 0], (alpha[0, 0] + alpha[0, 1]) / 2, rtol=1e-5)
  np.testing.assert_allclose(geometry[1, 6:], [16 / 48, 16 * 32 / 64**2], rtol=1e-5)


def test_scaling_gives_unit_variance_per_group(sample):
  train = np.stack([f.features for f in sample["train"][0]])
  scaling = features.FeatureScaling.fit(train)
  scaled = scaling.apply(train).reshape(-1, features.FEATURE_DIM).astype(np.float64)
  np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-4)
  for name, sl in features.group_slices().items():
    np.testing.assert_allclose(scaled[:, sl].var(0).sum(), 1.0, rtol=1e-4, err_msg=name)
  # Held-out images land near unit variance too (same distribution).
  test = scaling.apply(np.stack([f.features for f in sample["test"][0]])).reshape(-1, 90)
  for name, sl in features.group_slices().items():
    assert 0.8 < test[:, sl].var(0).sum() < 1.25, name
  restored = features.FeatureScaling.from_dict(scaling.to_dict())
  np.testing.assert_array_equal(restored.apply(train[:2]), scaling.apply(train[:2]))
  bad = dict(scaling.to_dict(), groups=[["mask", 64]])
  with pytest.raises(ValueError, match="re-run the easy-VQA conversion"):
    features.FeatureScaling.from_dict(bad)
  with pytest.raises(ValueError, match="feature dim"):
    scaling.apply(np.zeros((2, 5)))


def _probe_data(sample, kind, view):
  names = dataset.SHAPES if kind == 0 else dataset.COLORS
  out = []
  for split in ("train", "test"):
    feats, truth, _ = sample[split]
    keep = [i for i, t in enumerate(truth) if t[kind] is not None]
    x = np.stack([view(feats[i].features) for i in keep])
    out += [x, np.array([names.index(truth[i][kind]) for i in keep])]
  return out


def test_linear_probe_reads_shape_and_colour_from_region_zero(sample):
  for kind in (0, 1):
    x_train, y_train, x_test, y_test = _probe_data(sample, kind, lambda f: f[0])
    assert len(y_test) > 200
    assert probe.linear_probe(x_train, y_train, x_test, y_test) >= 0.98, kind


def test_shape_is_not_linear_in_the_whole_image_box(sample):
  # Contrast that shows the probe can fail: the whole-image box blurs the shape into an 8x8
  # thumbnail mixed with position, and a linear probe reads shape far worse from it.
  x_train, y_train, x_test, y_test = _probe_data(sample, 0, lambda f: f[1])
  assert probe.linear_probe(x_train, y_train, x_test, y_test) < 0.9
