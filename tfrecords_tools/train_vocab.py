"""Trains a BERT-uncased WordPiece vocab.txt from sentences ([PAD]=0, [UNK], [CLS], [SEP], [MASK]).

LXMERT itself uses the 30522-token ``bert-base-uncased`` vocabulary; this tool is for new text
domains or small synthetic tasks. Inputs are text files (one sentence per line) or annotation
JSONs of any converter in this package (their ``sent`` / ``sentf`` sentences are used).

Example::

  python -m tfrecords_tools.train_vocab --input data/vqa/train.json --vocab_size 8000 \\
    --output vocab.txt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from lxmert_jax.data.tokenization import train_vocab
from tfrecords_tools import common


def iter_sentences(path: str) -> Iterator[str]:
  """Sentences of a .json annotation file (``sent`` or ``sentf`` fields) or of a text file."""
  if not path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      yield from (line.strip() for line in f if line.strip())
    return
  for i, entry in enumerate(common.load_json_list(path)):
    if isinstance(entry, dict) and isinstance(entry.get("sent"), str):
      yield entry["sent"]
    elif isinstance(entry, dict) and isinstance(entry.get("sentf"), dict):
      for sents in entry["sentf"].values():
        yield from sents
    else:
      raise common.ConversionError(f"{path}: entry {i} has neither a 'sent' nor a 'sentf' field")


def run(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m tfrecords_tools.train_vocab",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--input", nargs="+", required=True, help="text files and/or JSONs")
  parser.add_argument("--vocab_size", type=int, required=True)
  parser.add_argument("--min_frequency", type=int, default=1)
  parser.add_argument("--output", required=True, help="vocab.txt to write")
  args = parser.parse_args(argv)
  count = [0]

  def sentences():
    for path in args.input:
      for sent in iter_sentences(path):
        count[0] += 1
        yield sent

  tokens = train_vocab(sentences(), args.vocab_size, args.output, args.min_frequency)
  common.log.info("wrote %s: %d tokens from %d sentences", args.output, len(tokens), count[0])


def main(argv=None) -> int:
  return common.cli_main(run, argv)


if __name__ == "__main__":
  sys.exit(main())
