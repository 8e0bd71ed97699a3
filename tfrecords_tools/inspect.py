"""Prints decoded image groups of a converted split, or validates every record (``--validate``).

Examples::

  python -m tfrecords_tools.inspect --data_dir data/tfrecords/vqa --split minival --num 3 \\
    --vocab vocab.txt
  python -m tfrecords_tools.inspect --data_dir data/tfrecords/vqa --split minival --validate

``--validate`` parses every record with :func:`schema.decode_group` and checks it against
``dataset_info.json`` (feature shape and dtype, finite values, boxes in [0, 1], [CLS]/[SEP]
framing and lengths, token/answer ids in range, scores in [0, 1], labels and answer types) and the
split's counts. On the first failure it prints the shard and record index and exits with 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from lxmert_jax.data import schema
from tfrecords_tools import shards


class ValidationError(Exception):
  pass


def _records(paths, feat_dtype):
  """Yields ``(shard, index, decoded numpy dict)``; TF read/parse errors name the record."""
  import tensorflow as tf

  for path in paths:
    ds = tf.data.TFRecordDataset(path).map(lambda r: schema.decode_group(r, feat_dtype))
    it = iter(ds)
    index = 0
    while True:
      try:
        group = next(it)
      except StopIteration:
        break
      except (tf.errors.OpError, ValueError) as e:
        message = getattr(e, "message", str(e)).splitlines()[0]
        raise ValidationError(f"{path}: record {index}: cannot read/parse ({message})") from None
      # Ragged fields stay RaggedTensors (rows read with to_list); the rest become numpy.
      yield (
        path,
        index,
        {k: v if isinstance(v, tf.RaggedTensor) else v.numpy() for k, v in group.items()},
      )
      index += 1


def iter_groups(data_dir: str, split: str):
  """Yields every decoded group of a split as a dict (ragged fields as lists of numpy rows)."""
  info = shards.read_info(data_dir)
  for _, _, group in _records(shards.find_shards(data_dir, split), info["feat_dtype"]):
    yield {k: _ragged(v) for k, v in group.items()}


def _ragged(value):
  return [np.asarray(row) for row in value.to_list()] if hasattr(value, "to_list") else value


def check_group(g: dict, info: dict) -> None:
  """Raises ValidationError describing the first way ``g`` breaks the schema or ``info``."""
  tok, n, f = info.get("tokenizer", {}), info["num_boxes"], info["feat_dim"]
  feats = g["features"]
  if feats.shape[1:] != (n, f):
    raise ValidationError(f"features shape {feats.shape}, expected [G, {n}, {f}]")
  num_images = feats.shape[0]
  if len(g["img_id"]) != num_images or g["boxes"].shape != (num_images, n, 4):
    raise ValidationError(
      f"{len(g['img_id'])} img_ids / boxes {g['boxes'].shape} for {num_images} images"
    )
  if not np.all(np.isfinite(feats)):
    raise ValidationError("features contain NaN or inf")
  lo, hi = -schema.BOX_TOLERANCE, 1 + schema.BOX_TOLERANCE
  if g["boxes"].min() < lo or g["boxes"].max() > hi:
    raise ValidationError(f"boxes outside [0, 1]: [{g['boxes'].min()}, {g['boxes'].max()}]")
  tokens, ans_ids, ans_scores = (_ragged(g[k]) for k in ("token_ids", "ans_id", "ans_score"))
  if not tokens:
    raise ValidationError("no sentences")
  vocab_size, max_len = tok.get("vocab_size"), tok.get("max_seq_length")
  for i, row in enumerate(tokens):
    where = f"sentence {i} ({g['sent_uid'][i].decode()!r})"
    if len(row) < 2 or (max_len and len(row) > max_len):
      raise ValidationError(f"{where}: {len(row)} tokens, expected 2..{max_len}")
    if "cls_id" in tok and (row[0] != tok["cls_id"] or row[-1] != tok["sep_id"]):
      raise ValidationError(f"{where}: not framed by [CLS] ... [SEP]: {row.tolist()}")
    if vocab_size and (row.min() < 0 or row.max() >= vocab_size):
      raise ValidationError(f"{where}: token id outside [0, {vocab_size})")
  num_answers = info.get("num_answers", 0)
  for i, (ids, scores) in enumerate(zip(ans_ids, ans_scores, strict=True)):
    if len(ids) and (ids.min() < 0 or ids.max() >= num_answers):
      raise ValidationError(f"sentence {i}: answer id outside [0, {num_answers})")
    if len(scores) and (scores.min() < 0 or scores.max() > 1):
      raise ValidationError(f"sentence {i}: answer score outside [0, 1]")
  if not np.all((g["answer_type"] >= -1) & (g["answer_type"] < len(schema.ANSWER_TYPES))):
    raise ValidationError(f"answer_type outside [-1, {len(schema.ANSWER_TYPES)})")
  if not np.all(np.isin(g["label"], (-1, 0, 1))):
    raise ValidationError(f"label not in (-1, 0, 1): {g['label']}")


def validate(data_dir: str, split: str) -> dict:
  """Checks every record of ``split`` and its counts; returns the counts found."""
  info = shards.read_info(data_dir)
  if split not in info.get("splits", {}):
    raise ValidationError(f"{data_dir}: dataset_info.json has no split {split!r}")
  expected = info["splits"][split]
  paths = shards.find_shards(data_dir, split)
  if len(paths) != expected["num_shards"]:
    raise ValidationError(
      f"{data_dir}: {len(paths)} shards of {split!r}, dataset_info.json says {expected['num_shards']}"
    )
  counts = {"num_groups": 0, "num_images": 0, "num_sentences": 0}
  for path, index, group in _records(paths, info["feat_dtype"]):
    try:
      check_group(group, info)
    except ValidationError as e:
      raise ValidationError(f"{path}: record {index}: {e}") from None
    counts["num_groups"] += 1
    counts["num_images"] += len(group["img_id"])
    counts["num_sentences"] += len(group["sent_uid"])
  for key, value in counts.items():
    if value != expected[key]:
      raise ValidationError(
        f"{data_dir}: split {split!r} has {key}={value}, dataset_info.json says {expected[key]}"
      )
  return counts


def show(data_dir: str, split: str, num: int, vocab: str | None) -> None:
  info = shards.read_info(data_dir)
  answers = info.get("answer_vocab")
  tokenizer = None
  if vocab:
    from lxmert_jax.data.tokenization import WordPieceTokenizer

    tokenizer = WordPieceTokenizer(vocab)
  print(
    f"{data_dir} split {split!r}: {info['splits'][split]['num_groups']} groups, "
    f"{info['splits'][split]['num_sentences']} sentences; task {info.get('task')}, "
    f"features {info['num_boxes']} x {info['feat_dim']} {info['feat_dtype']}"
  )
  for count, (path, index, g) in enumerate(
    _records(shards.find_shards(data_dir, split), info["feat_dtype"])
  ):
    if count >= num:
      break
    print(f"\n== {os.path.basename(path)} record {index}")
    for j, img_id in enumerate(g["img_id"]):
      f, b = g["features"][j], g["boxes"][j]
      print(
        f"  image {img_id.decode()} ({g['img_h'][j]}x{g['img_w'][j]} px): features {f.shape} "
        f"mean {f.mean():.4f} std {f.std():.4f} min {f.min():.4f} max {f.max():.4f}; boxes "
        f"in [{b.min():.3f}, {b.max():.3f}]; objects {g['objects_id'][j][:5].tolist()}..."
      )
    tokens, ans_ids, ans_scores = (_ragged(g[k]) for k in ("token_ids", "ans_id", "ans_score"))
    for i, uid in enumerate(g["sent_uid"]):
      text = tokenizer.convert_ids_to_tokens(tokens[i]) if tokenizer else tokens[i].tolist()
      line = f"  sentence {uid.decode()}: {' '.join(text) if tokenizer else text}"
      if len(ans_ids[i]):
        named = [
          f"{answers[a] if answers else a!r}={s:.2f}"
          for a, s in zip(ans_ids[i], ans_scores[i], strict=True)
        ]
        line += f" | answers {', '.join(named)}"
      if g["answer_type"][i] >= 0:
        line += f" | type {schema.ANSWER_TYPES[g['answer_type'][i]]}"
      if g["label"][i] >= 0:
        line += f" | label {g['label'][i]}"
      print(line)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m tfrecords_tools.inspect",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--split", required=True)
  parser.add_argument("--num", type=int, default=3, help="groups to print")
  parser.add_argument("--vocab", help="vocab.txt to print tokens instead of ids")
  parser.add_argument("--validate", action="store_true", help="check every record, print counts")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    if args.validate:
      counts = validate(args.data_dir, args.split)
      print(
        f"OK {args.data_dir} split {args.split!r}: {counts['num_groups']} groups, "
        f"{counts['num_images']} images, {counts['num_sentences']} sentences"
      )
    else:
      show(args.data_dir, args.split, args.num, args.vocab)
  except (ValidationError, OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
