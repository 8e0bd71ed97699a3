"""Pieces shared by every converter CLI: flags, errors, the skip report, JSON loading."""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from lxmert_jax.data import schema

log = logging.getLogger("tfrecords_tools")
# Skipped records listed in dataset_info.json (all of them are counted and logged).
MAX_LISTED = 1000


class ConversionError(Exception):
  """Bad input; the message names the file and record. CLIs print it and exit with status 1."""


class Report:
  """Raises on bad input, or with ``skip_bad`` logs, counts and lists each skipped record."""

  def __init__(self, skip_bad: bool = False):
    self.skip_bad = skip_bad
    self.counts: collections.Counter = collections.Counter()
    self.listed: list[str] = []

  def bad(self, kind: str, message: str, count: int = 1) -> None:
    """Handles one bad record of category ``kind``; ``message`` names its file and record."""
    if not self.skip_bad:
      raise ConversionError(message)
    log.warning("skipped (%s): %s", kind, message)
    self.counts[kind] += count
    if len(self.listed) < MAX_LISTED:
      self.listed.append(message)

  def as_info(self) -> dict:
    return {"skipped": dict(sorted(self.counts.items())), "skipped_records": self.listed}

  def log_summary(self) -> None:
    if self.counts:
      log.warning("skipped in total: %s", dict(sorted(self.counts.items())))


def load_json(path: str):
  """Loads a JSON file; errors name the file (and the position of a syntax error)."""
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: file not found")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConversionError(f"{path}: not valid JSON ({e})") from None


def load_json_list(path: str) -> list:
  data = load_json(path)
  if not isinstance(data, list):
    raise ConversionError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
  return data


def file_provenance(paths: Sequence[str]) -> list[dict]:
  """Path and size of each input (a directory: its .npz count and total size)."""
  out = []
  for path in paths:
    if os.path.isdir(path):
      files = [e for e in os.scandir(path) if e.name.endswith(".npz")]
      out.append(
        {
          "path": os.path.abspath(path),
          "npz_files": len(files),
          "bytes": sum(e.stat().st_size for e in files),
        }
      )
    else:
      out.append({"path": os.path.abspath(path), "bytes": os.path.getsize(path)})
  return out


def sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def tokenizer_info(tokenizer) -> dict:
  """dataset_info.json's ``tokenizer`` block, which training reads to size the word embeddings
  and to mask for MLM: vocab size and hash, sequence length and the special token ids."""
  return {
    "vocab_sha256": sha256(tokenizer.vocab_path),
    "vocab_size": tokenizer.vocab_size,
    "max_seq_length": tokenizer.max_seq_length,
    **{k: getattr(tokenizer, k) for k in ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id")},
  }


def build_parser(prog: str, description: str, example: str, answers_help: str | None):
  """The flags every converter shares; ``example`` is a complete command shown by --help."""
  parser = argparse.ArgumentParser(
    prog=f"python -m tfrecords_tools.{prog}",
    description=f"{description}\n\nexample:\n  {example}",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--features",
    nargs="+",
    required=True,
    help="LXMERT feature TSV files and/or directories of per-image .npz files",
  )
  parser.add_argument(
    "--annotations", nargs="+", required=True, help="annotation JSON files, merged into one split"
  )
  if answers_help:
    parser.add_argument("--answers", required=True, help=answers_help)
  parser.add_argument("--vocab", required=True, help="WordPiece vocab.txt ([PAD] must be id 0)")
  parser.add_argument(
    "--max_seq_length",
    type=int,
    default=20,
    help="tokens per sentence incl. [CLS]/[SEP] (LXMERT: 20)",
  )
  parser.add_argument(
    "--output_dir", required=True, help="directory for shards + dataset_info.json"
  )
  parser.add_argument("--split", required=True, help="split name, e.g. train, minival")
  parser.add_argument(
    "--num_shards",
    type=int,
    default=64,
    help="shards per split; keep it above the largest host count",
  )
  parser.add_argument(
    "--feat_dtype",
    choices=sorted(schema.FEATURE_DTYPES),
    default="float16",
    help="on-disk dtype of the RoI features",
  )
  parser.add_argument(
    "--num_workers",
    type=int,
    default=os.cpu_count(),
    help="decode/encode processes (0 = all in the main process)",
  )
  parser.add_argument("--chunk_size", type=int, default=16, help="images per worker task")
  parser.add_argument(
    "--skip_bad", action="store_true", help="skip, log and count bad records instead of failing"
  )
  return parser


def cli_main(run: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
  """Runs a converter; bad input prints ``error: <message>`` and returns 1."""
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
  try:
    run(argv)
  except (ConversionError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
