"""LXMERT pretraining JSON (spec section 5.3) + object features -> image-group TFRecords.

Input entries: ``{img_id, sentf: {source: [sentence, ...]}, labelf: {qa_source: [{answer:
score}, ...]}}`` with ``labelf[s]`` aligned to ``sentf[s]``. Every (image, source, index) becomes
one sentence with uid ``<img_id>_<source>_<idx:03d>``, as in the original ``make_uid``. Answers
of QA sources are normalised (``convert_ans``) and pruned to the 9500-answer table
``all_ans.json`` (answer id = list index), exactly as ``LXMERTDataset.__init__`` does; captions
(sources without ``labelf``) have no answers.

Example (the LXMERT download layout)::

  python -m tfrecords_tools.lxmert_pretrain \\
    --features data/mscoco_imgfeat/train2014_obj36.tsv data/mscoco_imgfeat/val2014_obj36.tsv \\
      data/vg_gqa_imgfeat/vg_gqa_obj36.tsv \\
    --annotations data/lxmert/mscoco_train.json data/lxmert/mscoco_nominival.json \\
      data/lxmert/vgnococo.json \\
    --answers data/lxmert/all_ans.json --vocab vocab.txt \\
    --output_dir data/tfrecords/pretrain --split train
"""

from __future__ import annotations

import collections
import numbers
import sys

from lxmert_jax.answers import convert_ans, load_answer_vocab
from lxmert_jax.data.tokenization import WordPieceTokenizer
from tfrecords_tools import common, convert, plan

EXAMPLE = (
  "python -m tfrecords_tools.lxmert_pretrain --features data/mscoco_imgfeat/val2014_obj36.tsv "
  "--annotations data/lxmert/mscoco_minival.json --answers data/lxmert/all_ans.json "
  "--vocab vocab.txt --output_dir data/tfrecords/pretrain --split minival"
)


def normalize_label(label: dict, ans2id: dict[str, int]) -> dict[str, float]:
  """Applies the original in-place relabelling loop of ``LXMERTDataset.__init__``.

  Keys are visited in their original order; a converted answer overwrites an existing entry of
  the same name (so "a man": 0.3 after "man": 0.9 leaves "man": 0.3), unused answers are removed.
  """
  label = dict(label)
  for ans in list(label):
    new_ans = convert_ans(ans)
    if new_ans in ans2id:
      if ans != new_ans:
        label[new_ans] = label.pop(ans)
    else:
      label.pop(ans)
  return label


def _is_label(label) -> bool:
  return isinstance(label, dict) and all(
    isinstance(v, numbers.Real) and 0.0 <= v <= 1.0 for v in label.values()
  )


def pretrain_rows(paths, ans2id, report, stats) -> list[plan.RawSentence]:
  rows = []
  for path in paths:
    for i, datum in enumerate(common.load_json_list(path)):
      where = f"{path}: entry {i}"
      if (
        not isinstance(datum, dict)
        or not isinstance(datum.get("sentf"), dict)
        or "img_id" not in datum
      ):
        report.bad("sentences", f"{where}: needs img_id and a sentf dict")
        continue
      img_id = str(datum["img_id"])
      labelf = datum.get("labelf") or {}
      for source, sents in datum["sentf"].items():
        labels = labelf.get(source)
        if labels is not None and len(labels) != len(sents):
          report.bad(
            "sentences",
            f"{where} (img_id {img_id!r}): labelf[{source!r}] has {len(labels)} entries but "
            f"sentf[{source!r}] has {len(sents)} sentences",
            count=len(sents),
          )
          continue
        for idx, sent in enumerate(sents):
          ids, scores = [], []
          if labels is not None:
            label = labels[idx]
            if not _is_label(label):
              report.bad(
                "sentences",
                f"{where} (img_id {img_id!r}): labelf[{source!r}][{idx}] must map answers to "
                f"scores in [0, 1], got {label!r}",
              )
              continue
            stats["answers_before_pruning"] += len(label)
            for ans, score in normalize_label(label, ans2id).items():
              ids.append(ans2id[ans])
              scores.append(float(score))
            stats["answers_kept"] += len(ids)
          stats[f"sentences_{source}"] += 1
          rows.append(
            plan.RawSentence(
              group=img_id,
              img_ids=(img_id,),
              text=sent,
              uid=f"{img_id}_{source}_{idx:03d}",
              where=f"{where} (img_id {img_id!r}, sentf[{source!r}][{idx}])",
              answer_ids=ids,
              answer_scores=scores,
            )
          )
  return rows


def run(argv=None):
  parser = common.build_parser(
    "lxmert_pretrain",
    __doc__.split("\n\n")[0],
    EXAMPLE,
    answers_help="all_ans.json, the 9500-answer table (list of {ans, dsets})",
  )
  parser.add_argument(
    "--qa_sets",
    help="comma-separated datasets (vqa,gqa,visual7w): keep only their answers, like the "
    "original --qaSets (default: all 9500)",
  )
  args = parser.parse_args(argv)
  report = common.Report(args.skip_bad)
  tokenizer = WordPieceTokenizer(args.vocab, args.max_seq_length)
  answers = load_answer_vocab(args.answers, args.qa_sets.split(",") if args.qa_sets else None)
  stats = collections.Counter()
  rows = pretrain_rows(args.annotations, {a: i for i, a in enumerate(answers)}, report, stats)
  group_plan = plan.build_plan(rows, tokenizer, report)
  convert.run_conversion(
    args,
    group_plan,
    tokenizer,
    report,
    task="lxmert_pretrain",
    answer_vocab=answers,
    split_info={"annotation_counts": dict(sorted(stats.items()))},
  )


def main(argv=None) -> int:
  return common.cli_main(run, argv)


if __name__ == "__main__":
  sys.exit(main())
