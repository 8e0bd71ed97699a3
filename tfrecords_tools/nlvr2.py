"""NLVR2 (LXMERT's JSON, spec section 5.6) + object features -> image-pair TFRecords.

Input entries: ``{identifier ("train-10171-0-0"), img0, img1, label (0/1), sent, uid}``. A group
is an image pair: key = the identifier without its last (sentence) field, images (img0, img1) in
that order, holding every statement about the pair. The sentence id is the ``identifier``, the
key of NLVR2's prediction files. There is no answer vocabulary; ``label`` is 1 for "True".

Example (the LXMERT download layout)::

  python -m tfrecords_tools.nlvr2 \\
    --features data/nlvr2_imgfeat/train_obj36.tsv --annotations data/nlvr2/train.json \\
    --vocab vocab.txt --output_dir data/tfrecords/nlvr2 --split train
"""

from __future__ import annotations

import collections
import sys

from lxmert_jax.data.tokenization import WordPieceTokenizer
from tfrecords_tools import common, convert, plan

EXAMPLE = (
  "python -m tfrecords_tools.nlvr2 --features data/nlvr2_imgfeat/valid_obj36.tsv "
  "--annotations data/nlvr2/valid.json --vocab vocab.txt "
  "--output_dir data/tfrecords/nlvr2 --split valid"
)
LABEL_NAMES = ["False", "True"]


def nlvr2_rows(paths, report, stats) -> list[plan.RawSentence]:
  rows = []
  for path in paths:
    for i, entry in enumerate(common.load_json_list(path)):
      where = f"{path}: entry {i}"
      needed = ("identifier", "img0", "img1", "sent")
      if not isinstance(entry, dict) or any(k not in entry for k in needed):
        report.bad("sentences", f"{where}: needs the keys {', '.join(needed)}")
        continue
      identifier = str(entry["identifier"])
      where = f"{where} (identifier {identifier!r})"
      label = entry.get("label")
      if label is None:
        label = -1
      elif label in (0, 1) and not isinstance(label, float):
        label = int(label)
      else:
        report.bad("sentences", f"{where}: label must be 0 or 1, got {label!r}")
        continue
      stats[f"label_{label}"] += 1
      rows.append(
        plan.RawSentence(
          # "train-10171-0-3" -> pair "train-10171-0": the statements of one image pair.
          group=identifier.rsplit("-", 1)[0],
          img_ids=(str(entry["img0"]), str(entry["img1"])),
          text=entry["sent"],
          uid=identifier,
          where=where,
          label=label,
        )
      )
  return rows


def run(argv=None):
  parser = common.build_parser("nlvr2", __doc__.split("\n\n")[0], EXAMPLE, answers_help=None)
  args = parser.parse_args(argv)
  report = common.Report(args.skip_bad)
  tokenizer = WordPieceTokenizer(args.vocab, args.max_seq_length)
  stats = collections.Counter()
  rows = nlvr2_rows(args.annotations, report, stats)
  group_plan = plan.build_plan(rows, tokenizer, report)
  convert.run_conversion(
    args,
    group_plan,
    tokenizer,
    report,
    task="nlvr2",
    answer_vocab=None,
    split_info={"annotation_counts": dict(sorted(stats.items()))},
    top_info={"label_names": LABEL_NAMES},
  )


def main(argv=None) -> int:
  return common.cli_main(run, argv)


if __name__ == "__main__":
  sys.exit(main())
