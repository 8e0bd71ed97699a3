"""The one on-disk schema for LXMERT TFRecords, shared by every writer and reader.

A record is an *image group*: the object features of one image (VQA, GQA, pretraining) or of an
image pair (NLVR2), stored once, together with every sentence that refers to that group.
Features are therefore never copied per sentence: LXMERT's pretraining corpus has ~9.18M
sentences over ~180K images, and per-sentence copies of 36x2048 features would exceed a
terabyte. The input pipeline explodes a group into one example per sentence in memory.

Record layout (``tf.train.Example`` features; G = images in the group, N = boxes per image,
F = feature dim, S = sentences, T = total tokens, A = total answers):

  ``img_id``         bytes  [G]        image ids (NLVR2: img0, img1)
  ``img_h``/``img_w`` int64 [G]        original image size in pixels
  ``num_boxes``      int64  [1]        N (the same for every image of the group)
  ``feat_dim``       int64  [1]        F
  ``features``       bytes  [1]        raw little-endian float16/float32, G*N*F values
  ``boxes``          float  [G*N*4]    (x1/w, y1/h, x2/w, y2/h), spec section 5.2 (NOT x,y,w,h)
  ``objects_id``     int64  [G*N]      detector object class (0-based, -1 = none)
  ``objects_conf``   float  [G*N]      its confidence (weights the object-label loss)
  ``attrs_id``       int64  [G*N]      detector attribute class (0-based, -1 = none)
  ``attrs_conf``     float  [G*N]      its confidence (weights the attribute loss)
  ``sent_uid``       bytes  [S]        sentence / question id, as text
  ``sent_len``       int64  [S]        tokens per sentence (row lengths into ``token_ids``)
  ``token_ids``      int64  [T]        WordPiece ids incl. [CLS] ... [SEP], unpadded
  ``answer_type``    int64  [S]        ANSWER_TYPES index, -1 if unknown
  ``label``          int64  [S]        NLVR2 label (0/1), -1 elsewhere
  ``ans_len``        int64  [S]        answers per sentence (row lengths into ``ans_id``)
  ``ans_id``         int64  [A]        answer-vocabulary ids
  ``ans_score``      float  [A]        soft scores in [0, 1]

Beside the shards, ``dataset_info.json`` (see :data:`INFO_FILE`) records the schema version,
counts, the answer vocabulary and the provenance of the conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

SCHEMA_VERSION = 1
INFO_FILE = "dataset_info.json"
SHARD_PATTERN = "{split}.tfrecord-{index:05d}-of-{count:05d}"
# VQA's answer types; GQA uses only the first as "binary" and the last as "open".
ANSWER_TYPES = ("yes/no", "number", "other")
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}
# The original code asserts normalised boxes lie in [-1e-5, 1 + 1e-5] (spec section 5.2).
BOX_TOLERANCE = 1e-5


@dataclasses.dataclass
class ImageFeatures:
  """Detector output for one image, boxes already normalised to [0, 1].

  Attributes:
    img_id: image identifier (e.g. ``COCO_val2014_000000131089``).
    img_h: image height in pixels.
    img_w: image width in pixels.
    features: [num_boxes, feat_dim] RoI features.
    boxes: [num_boxes, 4] (x1/w, y1/h, x2/w, y2/h).
    objects_id: [num_boxes] object class ids (-1 where unknown).
    objects_conf: [num_boxes] object confidences (0 where unknown).
    attrs_id: [num_boxes] attribute class ids (-1 where unknown).
    attrs_conf: [num_boxes] attribute confidences (0 where unknown).
  """

  img_id: str
  img_h: int
  img_w: int
  features: np.ndarray
  boxes: np.ndarray
  objects_id: np.ndarray
  objects_conf: np.ndarray
  attrs_id: np.ndarray
  attrs_conf: np.ndarray

  @property
  def num_boxes(self) -> int:
    return int(self.features.shape[0])


@dataclasses.dataclass
class Sentence:
  """One sentence (caption, question or statement) about an image group.

  Attributes:
    uid: sentence or question id, kept as text (VQA ints, GQA strings, NLVR2 identifiers).
    token_ids: WordPiece ids including [CLS] and [SEP], unpadded.
    answer_ids: answer-vocabulary ids (empty for captions and unlabeled test questions).
    answer_scores: soft score per answer id, in [0, 1].
    answer_type: index into :data:`ANSWER_TYPES`, or -1.
    label: NLVR2 truth label (0/1), or -1.
  """

  uid: str
  token_ids: Sequence[int]
  answer_ids: Sequence[int] = ()
  answer_scores: Sequence[float] = ()
  answer_type: int = -1
  label: int = -1


def normalize_boxes(boxes: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
  """Pixel (x1, y1, x2, y2) boxes [N, 4] -> LXMERT's normalised corners [N, 4] float32."""
  boxes = np.asarray(boxes, np.float64)
  scale = np.array([img_w, img_h, img_w, img_h], np.float64)
  return (boxes / scale).astype(np.float32)


def _bytes(values):
  import tensorflow as tf

  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values):
  import tensorflow as tf

  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
  import tensorflow as tf

  return tf.train.Feature(
    float_list=tf.train.FloatList(value=np.asarray(values, np.float32).reshape(-1))
  )


def validate_image(image: ImageFeatures, feat_dim: int | None = None) -> None:
  """Raises ValueError naming the image and the field if ``image`` breaks the schema."""
  where = f"image {image.img_id!r}"
  feats = np.asarray(image.features)
  if feats.ndim != 2:
    raise ValueError(f"{where}: features must be [num_boxes, feat_dim], got shape {feats.shape}")
  n, f = feats.shape
  if feat_dim is not None and f != feat_dim:
    raise ValueError(f"{where}: feature dim {f} differs from the dataset's {feat_dim}")
  if not np.all(np.isfinite(feats)):
    raise ValueError(f"{where}: features contain NaN or inf")
  if image.img_h <= 0 or image.img_w <= 0:
    raise ValueError(f"{where}: image size must be positive, got h={image.img_h} w={image.img_w}")
  boxes = np.asarray(image.boxes)
  if boxes.shape != (n, 4):
    raise ValueError(f"{where}: boxes must have shape ({n}, 4), got {boxes.shape}")
  if not np.all(np.isfinite(boxes)):
    raise ValueError(f"{where}: boxes contain NaN or inf")
  lo, hi = -BOX_TOLERANCE, 1 + BOX_TOLERANCE
  if boxes.min() < lo or boxes.max() > hi:
    raise ValueError(
      f"{where}: normalised boxes must lie in [0, 1] (box outside the {image.img_w}x"
      f"{image.img_h} image), got range [{boxes.min():.4f}, {boxes.max():.4f}]"
    )
  if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
    raise ValueError(f"{where}: boxes must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")
  for name in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
    value = np.asarray(getattr(image, name))
    if value.shape != (n,):
      raise ValueError(f"{where}: {name} must have shape ({n},), got {value.shape}")


def validate_sentence(sentence: Sentence, where: str = "") -> None:
  """Raises ValueError naming the sentence if it breaks the schema."""
  where = f"{where}sentence {sentence.uid!r}"
  if len(sentence.token_ids) < 2:
    raise ValueError(f"{where}: empty sentence (needs at least [CLS] and [SEP])")
  if len(sentence.answer_ids) != len(sentence.answer_scores):
    raise ValueError(
      f"{where}: {len(sentence.answer_ids)} answer ids but {len(sentence.answer_scores)} scores"
    )


def encode_group(
  images: Sequence[ImageFeatures], sentences: Sequence[Sentence], feat_dtype: str = "float16"
) -> bytes:
  """Serialises one image group (1 or 2 images) and its sentences to a tf.train.Example.

  Raises:
    ValueError: naming the image or sentence and the field that breaks the schema.
  """
  import tensorflow as tf

  if feat_dtype not in FEATURE_DTYPES:
    raise ValueError(f"feat_dtype must be one of {sorted(FEATURE_DTYPES)}, got {feat_dtype!r}")
  if not images:
    raise ValueError("an image group needs at least one image")
  if not sentences:
    raise ValueError(f"image group {[i.img_id for i in images]} has no sentences")
  feat_dim = int(np.asarray(images[0].features).shape[-1])
  num_boxes = images[0].num_boxes
  for image in images:
    validate_image(image, feat_dim)
    if image.num_boxes != num_boxes:
      raise ValueError(
        f"image {image.img_id!r}: {image.num_boxes} boxes, but its group has {num_boxes}"
      )
  for sentence in sentences:
    validate_sentence(sentence, where=f"image {images[0].img_id!r}: ")

  features = np.concatenate([np.asarray(i.features) for i in images]).astype(
    np.dtype(FEATURE_DTYPES[feat_dtype]).newbyteorder("<")
  )
  if not np.all(np.isfinite(features)):
    raise ValueError(
      f"image {images[0].img_id!r}: features overflow {feat_dtype} (|x| > 65504); "
      "use --feat_dtype=float32"
    )

  def cat(name):
    return np.concatenate([np.asarray(getattr(i, name)).reshape(-1) for i in images])

  feature = {
    "img_id": _bytes(i.img_id.encode() for i in images),
    "img_h": _ints(i.img_h for i in images),
    "img_w": _ints(i.img_w for i in images),
    "num_boxes": _ints([num_boxes]),
    "feat_dim": _ints([feat_dim]),
    "features": _bytes([features.tobytes()]),
    "boxes": _floats(np.concatenate([np.asarray(i.boxes) for i in images])),
    "objects_id": _ints(cat("objects_id")),
    "objects_conf": _floats(cat("objects_conf")),
    "attrs_id": _ints(cat("attrs_id")),
    "attrs_conf": _floats(cat("attrs_conf")),
    "sent_uid": _bytes(s.uid.encode() for s in sentences),
    "sent_len": _ints(len(s.token_ids) for s in sentences),
    "token_ids": _ints(t for s in sentences for t in s.token_ids),
    "answer_type": _ints(s.answer_type for s in sentences),
    "label": _ints(s.label for s in sentences),
    "ans_len": _ints(len(s.answer_ids) for s in sentences),
    "ans_id": _ints(a for s in sentences for a in s.answer_ids),
    "ans_score": _floats([a for s in sentences for a in s.answer_scores]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec():
  """The ``tf.io.parse_single_example`` spec of an image-group record."""
  import tensorflow as tf

  var = tf.io.VarLenFeature
  return {
    "img_id": var(tf.string),
    "img_h": var(tf.int64),
    "img_w": var(tf.int64),
    "num_boxes": tf.io.FixedLenFeature([1], tf.int64),
    "feat_dim": tf.io.FixedLenFeature([1], tf.int64),
    "features": tf.io.FixedLenFeature([], tf.string),
    "boxes": var(tf.float32),
    "objects_id": var(tf.int64),
    "objects_conf": var(tf.float32),
    "attrs_id": var(tf.int64),
    "attrs_conf": var(tf.float32),
    "sent_uid": var(tf.string),
    "sent_len": var(tf.int64),
    "token_ids": var(tf.int64),
    "answer_type": var(tf.int64),
    "label": var(tf.int64),
    "ans_len": var(tf.int64),
    "ans_id": var(tf.int64),
    "ans_score": var(tf.float32),
  }


def decode_group(serialized, feat_dtype: str = "float16"):
  """Parses one serialized image group into tensors (graph-safe, usable in ``tf.data.map``).

  Returns:
    A dict with ``img_id`` [G] string, ``features`` [G, N, F] float32, ``boxes`` [G, N, 4],
    ``objects_id``/``attrs_id`` [G, N] int32, ``objects_conf``/``attrs_conf`` [G, N] float32,
    ``sent_uid`` [S] string, ``token_ids`` ragged [S, (len)] int32, ``answer_type``/``label``
    [S] int32, ``ans_id`` ragged [S, (k)] int32 and ``ans_score`` ragged [S, (k)] float32.
  """
  import tensorflow as tf

  ex = tf.io.parse_single_example(serialized, feature_spec())
  dense = {
    k: tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v for k, v in ex.items()
  }
  n = tf.cast(dense["num_boxes"][0], tf.int32)
  f = tf.cast(dense["feat_dim"][0], tf.int32)
  feats = tf.io.decode_raw(dense["features"], FEATURE_DTYPES[feat_dtype], little_endian=True)
  feats = tf.reshape(tf.cast(feats, tf.float32), [-1, n, f])

  def per_box(x, dtype):
    return tf.reshape(tf.cast(x, dtype), [-1, n])

  return {
    "img_id": dense["img_id"],
    "img_h": tf.cast(dense["img_h"], tf.int32),
    "img_w": tf.cast(dense["img_w"], tf.int32),
    "features": feats,
    "boxes": tf.reshape(dense["boxes"], [-1, n, 4]),
    "objects_id": per_box(dense["objects_id"], tf.int32),
    "objects_conf": per_box(dense["objects_conf"], tf.float32),
    "attrs_id": per_box(dense["attrs_id"], tf.int32),
    "attrs_conf": per_box(dense["attrs_conf"], tf.float32),
    "sent_uid": dense["sent_uid"],
    "token_ids": tf.RaggedTensor.from_row_lengths(
      tf.cast(dense["token_ids"], tf.int32), dense["sent_len"]
    ),
    "answer_type": tf.cast(dense["answer_type"], tf.int32),
    "label": tf.cast(dense["label"], tf.int32),
    "ans_id": tf.RaggedTensor.from_row_lengths(
      tf.cast(dense["ans_id"], tf.int32), dense["ans_len"]
    ),
    "ans_score": tf.RaggedTensor.from_row_lengths(dense["ans_score"], dense["ans_len"]),
  }


# Keys of one model-ready example after the pipeline explodes and pads a group
# (B = batch, L = max_seq_length, N = boxes, F = feat dim, K = MAX_ANSWERS):
#   input_ids, attention_mask, token_type_ids  int32   [B, L]
#   visual_feats                               float32 [B, N, F]   ([B, 2, N, F] for NLVR2)
#   visual_pos                                 float32 [B, N, 4]   ([B, 2, N, 4] for NLVR2)
#   obj_labels, attr_labels                    int32   [B, N]      (-1 = no label)
#   obj_confs, attr_confs                      float32 [B, N]
#   answer_ids                                 int32   [B, K]      (-1 = padding)
#   answer_scores                              float32 [B, K]
#   answer_type, label                         int32   [B]
#   example_mask                               float32 [B]         (0 = eval padding)
#   image_index                                int32   [B]         (stable hash of the image id;
#                                                                   keeps mismatched pairs off
#                                                                   sentences of the same image)
MAX_ANSWERS = 10
BATCH_KEYS = (
  "input_ids",
  "attention_mask",
  "token_type_ids",
  "visual_feats",
  "visual_pos",
  "obj_labels",
  "obj_confs",
  "attr_labels",
  "attr_confs",
  "answer_ids",
  "answer_scores",
  "answer_type",
  "label",
  "example_mask",
  "image_index",
)
