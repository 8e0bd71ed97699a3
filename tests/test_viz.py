"""viz: one patch per box coloured by its weight, one bar per token / answer, PNGs on disk."""

import matplotlib
import numpy as np
import pytest
from matplotlib import patches

from lxmert_jax import viz
from lxmert_jax.inference import Answer, AttentionMaps, Prediction

TOKENS = ["[CLS]", "what", "color", "is", "the", "shape", "?", "[SEP]"]
LAYERS, HEADS, N = 2, 3, 6


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def pred():
  rng = np.random.default_rng(0)
  t = len(TOKENS)
  x1y1 = rng.uniform(0, 0.5, size=(N, 2))
  boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0.1, 0.5, size=(N, 2))], 1)
  maps = AttentionMaps(
    language=_softmax(rng.normal(size=(1, HEADS, t, t))),
    vision=_softmax(rng.normal(size=(1, HEADS, N, N))),
    language_to_vision=_softmax(3 * rng.normal(size=(LAYERS, HEADS, t, N))),
    vision_to_language=_softmax(3 * rng.normal(size=(LAYERS, HEADS, N, t))),
  )
  top = [
    Answer(a, p, np.log(p / (1 - p)), i)
    for i, (a, p) in enumerate([("red", 0.9), ("blue", 0.2), ("", 0.05)])
  ]
  return Prediction("what color is the shape?", TOKENS, top, np.zeros(3), boxes, "sigmoid", maps)


def _rectangles(ax):
  return [p for p in ax.patches if isinstance(p, patches.Rectangle)]


def test_box_attention_colours_every_box_by_its_weight(pred):
  image = np.full((40, 60, 3), 230, np.uint8)
  fig = viz.plot_box_attention(pred, image, layer=0, head=1, token="color")
  ax, cbar_ax = fig.axes
  weights = pred.attentions.language_to_vision[0, 1, 2]
  rects = _rectangles(ax)
  assert len(rects) == N
  # Drawn weakest first; each outline's colour is the colormap at its min-max scaled weight.
  order = np.argsort(weights, kind="stable")
  cmap = matplotlib.colormaps[viz.BOX_CMAP]
  for rect, n in zip(rects, order):
    want = cmap((weights[n] - weights.min()) / (weights.max() - weights.min()))[:3]
    np.testing.assert_allclose(rect.get_edgecolor()[:3], want, atol=1e-6)
    x1, y1, x2, y2 = pred.boxes[n] * [60, 40, 60, 40]
    np.testing.assert_allclose(rect.get_xy(), (x1, y1), atol=1e-9)
    np.testing.assert_allclose((rect.get_width(), rect.get_height()), (x2 - x1, y2 - y1), atol=1e-9)
  assert "'color'" in ax.get_title() and "x-layer 1 of 2 (x_layers_0), head 1" in ax.get_title()
  assert cbar_ax.get_ylabel() == f"attention weight (uniform = {1 / N:.3f})"
  # The strongest boxes are numbered on the image, their weights listed under it.
  top = order[::-1][: viz.NUM_LABELLED_BOXES]
  assert [t.get_text() for t in ax.texts] == [f"#{n}" for n in top]
  assert ax.get_xlabel() == "strongest: " + ",  ".join(f"#{n} {weights[n]:.3f}" for n in top)


def test_box_attention_mean_over_heads_without_image(pred):
  weights = viz.box_attention(pred, layer=-1, token=0)
  np.testing.assert_allclose(weights, pred.attentions.language_to_vision[-1, :, 0].mean(0))
  fig = viz.plot_box_attention(pred)
  assert len(_rectangles(fig.axes[0])) == N
  assert "mean over heads" in fig.axes[0].get_title()


def test_token_attention_bars(pred):
  fig = viz.plot_token_attention(pred, layer=1, box=4)
  ax = fig.axes[0]
  bars = _rectangles(ax)
  assert len(bars) == len(TOKENS)
  want = pred.attentions.vision_to_language[1, :, 4].mean(0)
  np.testing.assert_allclose([b.get_height() for b in bars], want, atol=1e-12)
  assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
  mean = viz.token_attention(pred)
  np.testing.assert_allclose(mean, pred.attentions.vision_to_language[-1].mean(0).mean(0))


def test_answer_bars(pred):
  ax = viz.plot_answers(pred).axes[0]
  bars = _rectangles(ax)
  assert [b.get_width() for b in bars] == [0.9, 0.2, 0.05]
  # The empty answer (VQA label 0) stays visible as ''.
  assert [t.get_text() for t in ax.get_yticklabels()] == ["red", "blue", "''"]
  assert "sigmoid" in ax.get_xlabel()


def test_combined_figure_saves_png(pred, tmp_path):
  from PIL import Image

  image_path = tmp_path / "image.png"
  Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image_path)
  fig = viz.plot_prediction(pred, str(image_path), token="shape")
  assert len(fig.axes) == 4  # boxes, tokens, answers, colourbar
  boxes_ax, tokens_ax = fig.axes[:2]
  assert len(_rectangles(boxes_ax)) == N and len(_rectangles(tokens_ax)) == len(TOKENS)
  assert boxes_ax.get_images()[0].get_array().shape[:2] == (32, 48)
  # By default the token panel shows the box that 'shape' attends to most.
  top = int(np.argmax(viz.box_attention(pred, token="shape")))
  want = viz.token_attention(pred, box=top)
  np.testing.assert_allclose([b.get_height() for b in _rectangles(tokens_ax)], want)
  assert f"box #{top} (strongest for 'shape')" in tokens_ax.get_title()
  path = viz.save(fig, tmp_path / "sub" / "attention.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_selections_raise(pred):
  with pytest.raises(ValueError, match=r"token 'dog' is not in the question's tokens \['\[CLS\]'"):
    viz.box_attention(pred, token="dog")
  with pytest.raises(ValueError, match="layer 2 out of range: the cross-modality encoder has 2"):
    viz.box_attention(pred, layer=2)
  with pytest.raises(ValueError, match="head 3 out of range"):
    viz.token_attention(pred, head=3)
  with pytest.raises(ValueError, match="box 6 out of range for 6 boxes"):
    viz.token_attention(pred, box=6)
  with pytest.raises(ValueError, match="token index 8 out of range"):
    viz.box_attention(pred, token=8)
  bare = Prediction(pred.question, TOKENS, pred.top, pred.logits, pred.boxes, "sigmoid")
  with pytest.raises(ValueError, match="output_attentions=True"):
    viz.plot_prediction(bare)
