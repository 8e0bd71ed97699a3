"""Synthetic inputs in the original formats (feature TSV / npz, vocab, task JSONs).

Used by the tests and by ``bench/convert_tsv.py``; nothing here is needed to convert real data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np

from lxmert_jax.data.tokenization import SPECIAL_TOKENS
from tfrecords_tools.tsv_features import format_tsv_line

WORDS = (
  "what color is the man woman dog cat shirt left of right wearing are there how many "
  "people in picture image both images contain exactly two animals a on table red blue green "
  "yes no 1 2 3 sitting standing near"
).split()
ANSWERS = ["", "yes", "no", "1", "2", "3", "red", "blue", "green", "man", "dog", "cat", "gray"]


def write_vocab(path: str, extra: Iterable[str] = ()) -> str:
  """Writes a small BERT-style vocab.txt: specials, WORDS, punctuation, letters and ## letters."""
  letters = list("abcdefghijklmnopqrstuvwxyz")
  tokens = list(SPECIAL_TOKENS) + WORDS + list("?.,!'-") + letters
  tokens += ["##" + c for c in letters] + [t for t in extra if t not in WORDS]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(t + "\n" for t in dict.fromkeys(tokens))
  return path


def make_image(rng: np.random.Generator, img_id: str, num_boxes: int = 5, feat_dim: int = 11):
  """A random image in pixel coordinates (keys as ``format_tsv_line`` and the npz files)."""
  img_h, img_w = int(rng.integers(100, 640)), int(rng.integers(100, 640))
  xy = rng.uniform(0, 0.5, (num_boxes, 2))
  wh = rng.uniform(0.05, 0.5, (num_boxes, 2))
  corners = np.concatenate([xy, xy + wh], axis=1)
  boxes = (corners * np.array([img_w, img_h, img_w, img_h])).astype(np.float32)
  return {
    "img_id": img_id,
    "img_h": img_h,
    "img_w": img_w,
    "boxes": boxes,
    "features": rng.gamma(1.0, 1.0, (num_boxes, feat_dim)).astype(np.float32),
    "objects_id": rng.integers(0, 1600, num_boxes).astype(np.int64),
    "objects_conf": rng.uniform(0.2, 1.0, num_boxes).astype(np.float32),
    "attrs_id": rng.integers(0, 400, num_boxes).astype(np.int64),
    "attrs_conf": rng.uniform(0.0, 1.0, num_boxes).astype(np.float32),
  }


def write_tsv(path: str, images: Iterable[dict]) -> str:
  with open(path, "wb") as f:
    for image in images:
      f.write(format_tsv_line(**image))
  return path


def write_npz_dir(directory: str, images: Iterable[dict]) -> str:
  os.makedirs(directory, exist_ok=True)
  for image in images:
    arrays = {k: v for k, v in image.items() if k != "img_id"}
    np.savez(os.path.join(directory, image["img_id"] + ".npz"), **arrays)
  return directory


def make_sentence(rng: np.random.Generator, min_words: int = 3, max_words: int = 12) -> str:
  words = rng.choice(WORDS, int(rng.integers(min_words, max_words + 1)))
  return " ".join(words).capitalize() + "?"


def vqa_entries(rng, img_ids, per_image: int = 2, answers=ANSWERS) -> list[dict]:
  """LXMERT-style VQA entries (spec section 5.4) with soft scores from VQA's 0.3k rule."""
  entries = []
  for img_id in img_ids:
    for _ in range(per_image):
      picks = rng.choice(len(answers), int(rng.integers(1, 4)), replace=False)
      label = {answers[i]: round(min(1.0, 0.3 * int(rng.integers(1, 5))), 1) for i in picks}
      entries.append(
        {
          "answer_type": str(rng.choice(["yes/no", "number", "other"])),
          "img_id": img_id,
          "label": label,
          "question_id": len(entries) + 1000,
          "question_type": "what",
          "sent": make_sentence(rng),
        }
      )
  return entries


def write_json(path: str, data) -> str:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f)
  return path
