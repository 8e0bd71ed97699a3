"""Pictures of one ``Prediction``: cross-attention on the image, on the question, and the answers.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so it works under
the Agg backend (scripts, CI) and shows inline when it is the last value of a notebook cell.
``save(fig, path)`` writes a PNG.

Attention conventions (``lxmert_jax.inference.AttentionMaps``): ``language_to_vision[layer,
head, t, n]`` is how much token t attends to box n in the cross-modality layer ``layer``;
``vision_to_language[layer, head, n, t]`` the reverse. ``head=None`` averages over heads.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
from matplotlib import cm, colors, patches, patheffects
from matplotlib.figure import Figure

from lxmert_jax.inference import Prediction

# Boxes: light (weak) to dark (strong), so weak boxes fade into easy-VQA's light backgrounds.
BOX_CMAP = "magma_r"
# Bars.
BAR_COLOR = "#3b6ea8"
# Boxes annotated with their index and weight (the rest are only coloured).
NUM_LABELLED_BOXES = 3


def _maps(pred: Prediction):
  if pred.attentions is None:
    raise ValueError(
      "this prediction has no attention maps: call predict(..., output_attentions=True)"
    )
  return pred.attentions


def _pick(maps: np.ndarray, layer: int, head: int | None) -> np.ndarray:
  """[layers, heads, q, k] -> [q, k] of one layer, one head or the mean over heads."""
  num_layers, num_heads = maps.shape[:2]
  if not -num_layers <= layer < num_layers:
    raise ValueError(f"layer {layer} out of range: the cross-modality encoder has {num_layers}")
  if head is None:
    return maps[layer].mean(axis=0)
  if not -num_heads <= head < num_heads:
    raise ValueError(f"head {head} out of range: each layer has {num_heads} heads")
  return maps[layer, head]


def token_index(pred: Prediction, token: int | str) -> int:
  """Position of ``token`` in ``pred.tokens``: an index, or a WordPiece string (first match)."""
  if isinstance(token, str):
    lowered = [t.lower() for t in pred.tokens]
    if token.lower() not in lowered:
      raise ValueError(f"token {token!r} is not in the question's tokens {pred.tokens}")
    return lowered.index(token.lower())
  if not -len(pred.tokens) <= token < len(pred.tokens):
    raise ValueError(f"token index {token} out of range for {len(pred.tokens)} tokens")
  return token % len(pred.tokens)


def _describe(layer: int, head: int | None, num_layers: int) -> str:
  # Counted from 1 for readers, with the 0-based param name that the layer argument counts.
  heads = "mean over heads" if head is None else f"head {head}"
  index = layer % num_layers
  return f"x-layer {index + 1} of {num_layers} (x_layers_{index}), {heads}"


def box_attention(
  pred: Prediction, *, layer: int = -1, head: int | None = None, token: int | str = 0
) -> np.ndarray:
  """Language->vision attention of one token over the boxes: [N], sums to 1."""
  return _pick(_maps(pred).language_to_vision, layer, head)[token_index(pred, token)]


def token_attention(
  pred: Prediction, *, layer: int = -1, head: int | None = None, box: int | None = None
) -> np.ndarray:
  """Vision->language attention of one box (or the mean over boxes) over the tokens: [T]."""
  att = _pick(_maps(pred).vision_to_language, layer, head)
  if box is None:
    return att.mean(axis=0)
  if not -att.shape[0] <= box < att.shape[0]:
    raise ValueError(f"box {box} out of range for {att.shape[0]} boxes")
  return att[box]


def _load_image(path: str | os.PathLike) -> np.ndarray:
  from PIL import Image

  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def _new_axes(ax, figsize):
  if ax is not None:
    return ax.figure, ax
  fig = Figure(figsize=figsize, layout="constrained")
  return fig, fig.add_subplot()


def plot_box_attention(
  pred: Prediction,
  image: np.ndarray | str | os.PathLike | None = None,
  *,
  layer: int = -1,
  head: int | None = None,
  token: int | str = 0,
  ax=None,
) -> Figure:
  """The image with every box outlined in the colour of how much ``token`` attends to it.

  Args:
    pred: a prediction made with ``output_attentions=True``.
    image: [H, W, 3] uint8 pixels or an image file; None draws the boxes on an empty unit square.
    layer: cross-modality layer (negative counts from the last).
    head: attention head, or None for the mean over heads.
    token: the attending token, by index into ``pred.tokens`` or by string; 0 is [CLS], whose
      final state feeds the answer head.
    ax: draw into these axes instead of a new figure.
  """
  weights = box_attention(pred, layer=layer, head=head, token=token)
  t = token_index(pred, token)
  fig, ax = _new_axes(ax, (5.2, 4.4))
  if isinstance(image, str | os.PathLike):
    image = _load_image(image)
  if image is not None:
    h, w = np.asarray(image).shape[:2]
    ax.imshow(image, interpolation="nearest", extent=(0, w, h, 0))
  else:
    h = w = 1
    ax.set_facecolor("0.92")
  ax.set_xlim(0, w)
  ax.set_ylim(h, 0)
  # Min-max colours: a nearly uniform map (an untrained model, an early layer) still shows its
  # ranking; the colourbar's range and the uniform level in its label keep the scale honest.
  lo, hi = float(weights.min()), float(weights.max())
  norm = colors.Normalize(vmin=lo if hi > lo else 0.0, vmax=max(hi, 1e-9))
  cmap = matplotlib.colormaps[BOX_CMAP]
  scale = np.array([w, h, w, h])
  # Weakest first so the strongest boxes are drawn on top. Outlines only: a fill would tint the
  # very object the question asks about. Weak boxes fade (thin, translucent) so that a grid of
  # overlapping proposals does not hide the few boxes the token attends to.
  for n in np.argsort(weights, kind="stable"):
    x1, y1, x2, y2 = pred.boxes[n] * scale
    strength = float(norm(weights[n]))
    width = 0.6 + 2.6 * strength
    ax.add_patch(
      patches.Rectangle(
        (x1, y1),
        x2 - x1,
        y2 - y1,
        fill=False,
        edgecolor=cmap(strength),
        alpha=0.3 + 0.7 * strength,
        linewidth=width,
        # A white halo keeps strong outlines visible on dark and saturated shapes alike.
        path_effects=[patheffects.withStroke(linewidth=width + 1.2, foreground="white")]
        if strength >= 0.5
        else None,
      )
    )
  # The strongest boxes get their index at the top-left corner (small, haloed: easy-VQA boxes
  # are small and nested) and their weights under the image, where they cannot hide anything.
  strongest = np.argsort(-weights, kind="stable")[:NUM_LABELLED_BOXES]
  halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
  for n in strongest:
    x1, y1 = pred.boxes[n, :2] * scale[:2]
    ax.annotate(
      f"#{n}",
      (x1, y1),
      xytext=(1, 1),
      textcoords="offset points",
      va="bottom",
      fontsize=7,
      color="black",
      path_effects=halo,
      annotation_clip=False,
    )
  ax.set_xlabel("strongest: " + ",  ".join(f"#{n} {weights[n]:.3f}" for n in strongest), fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])
  num_layers = _maps(pred).language_to_vision.shape[0]
  ax.set_title(
    f"language→vision: {pred.tokens[t]!r} over {len(weights)} boxes\n"
    f"{_describe(layer, head, num_layers)}",
    fontsize=9,
  )
  fig.colorbar(
    cm.ScalarMappable(norm=norm, cmap=cmap),
    ax=ax,
    label=f"attention weight (uniform = {1 / len(weights):.3f})",
    shrink=0.85,
  )
  return fig


def plot_token_attention(
  pred: Prediction, *, layer: int = -1, head: int | None = None, box: int | None = None, ax=None
) -> Figure:
  """Bar chart of the vision->language attention over the question's tokens.

  Args:
    pred: a prediction made with ``output_attentions=True``.
    layer: cross-modality layer (negative counts from the last).
    head: attention head, or None for the mean over heads.
    box: the attending box index, or None for the mean over boxes.
    ax: draw into these axes instead of a new figure.
  """
  weights = token_attention(pred, layer=layer, head=head, box=box)
  fig, ax = _new_axes(ax, (max(4.0, 0.45 * len(weights) + 1.5), 3.4))
  x = np.arange(len(weights))
  ax.bar(x, weights, color=BAR_COLOR, edgecolor="black", linewidth=0.5)
  ax.set_xticks(x, pred.tokens, rotation=60, ha="right", fontsize=9)
  ax.set_xlim(-0.6, len(weights) - 0.4)
  ax.set_ylabel("attention weight")
  ax.grid(axis="y", alpha=0.3)
  who = "mean over boxes" if box is None else f"box #{box}"
  num_layers = _maps(pred).vision_to_language.shape[0]
  ax.set_title(
    f"vision→language: {who} over the question\n{_describe(layer, head, num_layers)}", fontsize=9
  )
  return fig


def plot_answers(pred: Prediction, *, ax=None) -> Figure:
  """Horizontal bar chart of the top-k answers' probabilities, best on top."""
  fig, ax = _new_axes(ax, (4.6, 0.45 * len(pred.top) + 1.4))
  probs = [a.prob for a in pred.top]
  y = np.arange(len(probs))
  ax.barh(y, probs, color=BAR_COLOR, edgecolor="black", linewidth=0.5)
  ax.set_yticks(y, [a.text or "''" for a in pred.top], fontsize=9)
  ax.invert_yaxis()
  ax.set_xlim(0, 1.12)
  ax.set_xlabel(f"probability ({pred.probability})")
  for yi, p in zip(y, probs):
    ax.text(min(p, 1.0) + 0.01, yi, f"{p:.3f}", va="center", fontsize=8)
  ax.set_title(f"Q: {pred.question}\nA: {pred.answer}", fontsize=9)
  return fig


def plot_prediction(
  pred: Prediction,
  image: np.ndarray | str | os.PathLike | None = None,
  *,
  layer: int = -1,
  head: int | None = None,
  token: int | str = 0,
  box: int | str | None = "top",
) -> Figure:
  """One figure with the three views side by side: boxes, tokens, answers (see above).

  ``box="top"`` (default) shows, in the token panel, the box that ``token`` attends to most, so
  the two attention panels read as one path: the token looks at that box, which looks back at
  these words. ``box=None`` averages over boxes; an int picks one.
  """
  strongest = box == "top"
  if strongest:
    box = int(np.argmax(box_attention(pred, layer=layer, head=head, token=token)))
  num_tokens = len(pred.tokens)
  widths = [6.0, max(4.0, 0.45 * num_tokens), 4.5]
  fig = Figure(figsize=(sum(widths), 4.6), layout="constrained")
  axes = fig.subplots(1, 3, width_ratios=widths)
  plot_box_attention(pred, image, layer=layer, head=head, token=token, ax=axes[0])
  plot_token_attention(pred, layer=layer, head=head, box=box, ax=axes[1])
  if strongest:
    title = axes[1].get_title()
    who = pred.tokens[token_index(pred, token)]
    axes[1].set_title(
      title.replace(f"box #{box}", f"box #{box} (strongest for {who!r})", 1), fontsize=9
    )
  plot_answers(pred, ax=axes[2])
  return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> str:
  """Writes ``fig`` as a PNG (creating the folder) and returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, format="png")
  return path
