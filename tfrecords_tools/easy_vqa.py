"""Converts easy-VQA (the installed ``easy-vqa`` package) into LXMERT image-group TFRecords.

Example (about 20 s of CPU time, 2 worker processes; nothing is downloaded)::

  python -m tfrecords_tools.easy_vqa --output_dir /tmp/easy_vqa_data --num_shards 8

writes into ``--output_dir``:

  vocab.txt                          WordPiece vocabulary trained on the training questions
  train.tfrecord-0000{0..7}-of-00008 4,000 image groups, 38,575 questions
  test.tfrecord-0000{0..7}-of-00008  1,000 image groups, 9,673 questions
  {train,test}_questions.json        per question: uid, image, text, answer, answer type, topic
  dataset_info.json                  counts, the 13 answers, object/attribute vocabularies and the
                                     feature scaling fitted on train (``easy_vqa.feature_scaling``)

Each record is one image: 36 detector regions (``lxmert_jax.easy_vqa``) with 90-d features,
boxes, object/attribute labels, and all of the image's questions with their answer id (score
1.0) and answer type (``yes/no`` or ``other``). The same train shards serve pretraining (every
question is a sentence; its QA label is known) and fine-tuning.

Running it again with the same settings reuses the existing output (and says so); any other
settings, or ``--force``, rebuild it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from lxmert_jax.data import schema, tokenization
from lxmert_jax.easy_vqa import dataset, features, regions
from tfrecords_tools import common, shards

# Bumped whenever the detector, feature layout or record content changes, so that an existing
# output directory from older code is rebuilt instead of reused. 2: dataset_info.json holds the
# ``tokenizer`` block that training reads.
FORMAT_VERSION = 2
VOCAB_FILE = "vocab.txt"
QUESTIONS_FILE = "{split}_questions.json"
# An upper bound: easy-VQA's 27 words need only 121 WordPieces, and the trainer stops there.
DEFAULT_VOCAB_SIZE = 1000
YES_NO = schema.ANSWER_TYPES.index("yes/no")
OTHER = schema.ANSWER_TYPES.index("other")


def conversion_settings(
  num_shards: int,
  vocab_size: int,
  num_boxes: int,
  max_seq_length: int,
  feat_dtype: str,
  max_images: int | None,
) -> dict:
  """Everything that determines the output; a directory is reused only if these all match."""
  return {
    "format_version": FORMAT_VERSION,
    "num_shards": num_shards,
    "vocab_size": vocab_size,
    "num_boxes": num_boxes,
    "max_seq_length": max_seq_length,
    "feat_dtype": feat_dtype,
    "max_images": max_images,
    "feature_groups": [[name, size] for name, size in features.FEATURE_GROUPS],
  }


def _expected_files(output_dir: str, num_shards: int) -> list[str]:
  files = [os.path.join(output_dir, VOCAB_FILE)]
  for split in dataset.SPLITS:
    files += shards.shard_paths(output_dir, split, num_shards)
    files.append(os.path.join(output_dir, QUESTIONS_FILE.format(split=split)))
  return files


def existing_complete(output_dir: str, settings: dict) -> dict | None:
  """The directory's dataset_info.json if it holds a complete conversion with ``settings``."""
  path = os.path.join(output_dir, schema.INFO_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    info = json.load(f)
  block = info.get("easy_vqa", {})
  if not block.get("complete") or block.get("settings") != settings:
    return None
  if info.get("schema_version") != schema.SCHEMA_VERSION:
    return None
  if not all(os.path.exists(p) for p in _expected_files(output_dir, settings["num_shards"])):
    return None
  return info


def _write_info(output_dir: str, info: dict) -> None:
  path = os.path.join(output_dir, schema.INFO_FILE)
  tmp = path + shards.TMP_SUFFIX
  with open(tmp, "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _start_fresh(output_dir: str, settings: dict) -> None:
  """Replaces an old easy-VQA dataset_info.json by an 'incomplete' one; refuses other data."""
  path = os.path.join(output_dir, schema.INFO_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old.get("dataset") != "easy_vqa":
      raise ValueError(
        f"{path} describes another dataset ({old.get('dataset', 'unknown')!r}); "
        "choose an empty --output_dir for easy-VQA"
      )
    os.remove(path)
  os.makedirs(output_dir, exist_ok=True)
  _write_info(
    output_dir,
    {
      "schema_version": schema.SCHEMA_VERSION,
      "dataset": "easy_vqa",
      "easy_vqa": {"settings": settings, "complete": False},
    },
  )


def _sentences(questions: Sequence[dataset.Question], token_ids, answer_to_id) -> list:
  return [
    schema.Sentence(
      uid=q.uid,
      token_ids=ids,
      answer_ids=[answer_to_id[q.answer]],
      answer_scores=[1.0],
      answer_type=YES_NO if q.is_binary else OTHER,
    )
    for q, ids in zip(questions, token_ids, strict=True)
  ]


def _write_questions(output_dir: str, split: dataset.Split) -> None:
  rows = [
    {
      "uid": q.uid,
      "img_id": str(q.image_id),
      "question": q.text,
      "answer": q.answer,
      "answer_type": "yes/no" if q.is_binary else "other",
      "topic": q.topic,
    }
    for q in split.questions
  ]
  path = os.path.join(output_dir, QUESTIONS_FILE.format(split=split.name))
  with open(path + shards.TMP_SUFFIX, "w") as f:
    json.dump(rows, f)
  os.replace(path + shards.TMP_SUFFIX, path)


def convert_easy_vqa(
  output_dir: str,
  *,
  num_shards: int = 8,
  vocab_size: int = DEFAULT_VOCAB_SIZE,
  num_boxes: int = regions.MAX_BOXES,
  max_seq_length: int = 20,
  feat_dtype: str = "float16",
  workers: int | None = None,
  max_images: int | None = None,
  force: bool = False,
) -> dict:
  """Builds (or reuses) the easy-VQA TFRecords in ``output_dir`` and returns dataset_info.

  Args:
    output_dir: destination directory (created if needed).
    num_shards: shards per split.
    vocab_size: upper bound on the WordPiece vocabulary (easy-VQA needs 121).
    num_boxes: regions per image, a prefix of the detector's fixed box order (1..36).
    max_seq_length: L of the tokenizer; questions have at most 12 tokens incl. [CLS]/[SEP].
    feat_dtype: 'float16' or 'float32' storage of the scaled features.
    workers: feature-extraction processes (default: CPU count).
    max_images: keep only the first N images (by id) of each split and their questions, for
      quick smoke runs; None converts everything.
    force: rebuild even if a complete conversion with the same settings exists.

  Returns:
    The parsed ``dataset_info.json``.

  Raises:
    ValueError: bad settings, or ``output_dir`` holds another dataset's ``dataset_info.json``.
  """
  if not 1 <= num_boxes <= regions.MAX_BOXES:
    raise ValueError(f"num_boxes must be in [1, {regions.MAX_BOXES}], got {num_boxes}")
  if max_images is not None and max_images < 1:
    raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
  settings = conversion_settings(
    num_shards, vocab_size, num_boxes, max_seq_length, feat_dtype, max_images
  )
  if not force:
    info = existing_complete(output_dir, settings)
    if info is not None:
      logging.info("easy-VQA: reusing the complete conversion in %s (same settings)", output_dir)
      return info
  start = time.time()
  _start_fresh(output_dir, settings)
  splits = {name: dataset.load_split(name, max_images) for name in dataset.SPLITS}
  answers = dataset.answer_vocab()
  answer_to_id = {a: i for i, a in enumerate(answers)}

  vocab_path = os.path.join(output_dir, VOCAB_FILE)
  vocab = tokenization.train_vocab(
    [q.text for q in splits["train"].questions], vocab_size, vocab_path
  )
  tokenizer = tokenization.WordPieceTokenizer(vocab_path, max_seq_length)
  logging.info("easy-VQA: trained a %d-token WordPiece vocabulary -> %s", len(vocab), vocab_path)

  raw = {}
  for name, split in splits.items():
    t = time.time()
    ids = sorted(split.image_paths)
    raw[name] = features.extract_files(
      [split.image_paths[i] for i in ids],
      [str(i) for i in ids],
      num_boxes=num_boxes,
      workers=workers,
    )
    logging.info(
      "easy-VQA: %s: detected regions of %d images in %.1f s", name, len(ids), time.time() - t
    )
  # The scaling is fitted on the training split only and applied unchanged to test and to
  # single images at predict time (stored in dataset_info.json).
  scaling = features.FeatureScaling.fit(np.stack([r.features for r in raw["train"]]))

  counts = {}
  for name, split in splits.items():
    by_image = split.questions_by_image()
    no_questions = [img for img, qs in by_image.items() if not qs]
    if no_questions:  # a record needs >= 1 sentence; these images carry no supervision
      logging.warning(
        "easy-VQA: %s: %d images have no questions and get no record: %s",
        name,
        len(no_questions),
        no_questions[:10],
      )
    token_ids = dict(
      zip(split.questions, tokenizer.encode_list([q.text for q in split.questions]), strict=True)
    )
    with shards.ShardedGroupWriter(output_dir, name, num_shards, feat_dtype) as writer:
      for image in raw[name]:
        questions = by_image[int(image.img_id)]
        if not questions:
          continue
        image.features = scaling.apply(image.features)
        sentences = _sentences(questions, [token_ids[q] for q in questions], answer_to_id)
        writer.write([image], sentences)
      writer.info.update(
        answer_vocab=answers,
        num_binary=sum(q.is_binary for q in split.questions),
        num_topic={t: sum(q.topic == t for q in split.questions) for t in dataset.TOPICS},
        images_without_questions=len(no_questions),
      )
    _write_questions(output_dir, split)
    counts[name] = (writer.num_groups, writer.num_sentences)
    logging.info("easy-VQA: %s: wrote %d images, %d questions", name, *counts[name])

  path = os.path.join(output_dir, schema.INFO_FILE)
  with open(path) as f:
    info = json.load(f)
  info.update(
    dataset="easy_vqa",
    answer_vocab=answers,
    vocab_file=VOCAB_FILE,
    vocab_size=len(vocab),
    max_seq_length=max_seq_length,
    object_classes=list(regions.OBJECT_CLASSES),
    attr_classes=list(regions.ATTR_CLASSES),
    # What training reads to size the word embeddings and to mask for MLM, in the block
    # tfrecords_tools/convert.py writes (without it MLM would mask with BERT's id 103).
    tokenizer=common.tokenizer_info(tokenizer),
  )
  info["easy_vqa"] = {
    "settings": settings,
    "complete": True,
    "feature_scaling": scaling.to_dict(),
    "box_order": regions.BOX_ORDER,
    "pretrain_splits": ["train"],
    "questions_file": QUESTIONS_FILE,
    "conversion_seconds": round(time.time() - start, 1),
  }
  _write_info(output_dir, info)
  logging.info(
    "easy-VQA: converted in %.1f s -> %s (train %d/%d, test %d/%d images/questions)",
    time.time() - start,
    output_dir,
    *counts["train"],
    *counts["test"],
  )
  return info


def load_feature_scaling(data_dir: str) -> features.FeatureScaling:
  """The training split's feature scaling stored by :func:`convert_easy_vqa` (for predict)."""
  info = shards.read_info(data_dir)
  if info.get("dataset") != "easy_vqa" or not info.get("easy_vqa", {}).get("complete"):
    raise ValueError(f"{data_dir}/{schema.INFO_FILE} is not a complete easy-VQA conversion")
  return features.FeatureScaling.from_dict(info["easy_vqa"]["feature_scaling"])


def read_questions(data_dir: str, split: str) -> list[dict]:
  """Per-question metadata (uid, img_id, question, answer, answer_type, topic) of a split."""
  path = os.path.join(data_dir, QUESTIONS_FILE.format(split=split))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run python -m tfrecords_tools.easy_vqa first")
  with open(path) as f:
    return json.load(f)


def define_flags() -> None:
  """CLI flags; defined only when run as a script so importing this module adds no flags."""
  flags.DEFINE_string("output_dir", None, "Directory for shards, vocab.txt and dataset_info.json.")
  flags.DEFINE_integer("num_shards", 8, "Shards per split.")
  flags.DEFINE_integer("vocab_size", DEFAULT_VOCAB_SIZE, "Upper bound on the WordPiece vocab.")
  flags.DEFINE_integer("num_boxes", regions.MAX_BOXES, "Regions per image (1..36, fixed order).")
  flags.DEFINE_integer("max_seq_length", 20, "Token sequence length incl. [CLS] and [SEP].")
  flags.DEFINE_enum("feat_dtype", "float16", ["float16", "float32"], "Feature storage dtype.")
  flags.DEFINE_integer("workers", None, "Feature-extraction processes (default: CPU count).")
  flags.DEFINE_integer(
    "max_images", None, "Convert only the first N images per split (smoke runs)."
  )
  flags.DEFINE_bool("force", False, "Rebuild even if a matching conversion exists.")
  flags.mark_flag_as_required("output_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  convert_easy_vqa(
    FLAGS.output_dir,
    num_shards=FLAGS.num_shards,
    vocab_size=FLAGS.vocab_size,
    num_boxes=FLAGS.num_boxes,
    max_seq_length=FLAGS.max_seq_length,
    feat_dtype=FLAGS.feat_dtype,
    workers=FLAGS.workers,
    max_images=FLAGS.max_images,
    force=FLAGS.force,
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
