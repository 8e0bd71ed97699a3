"""VQA v2 (LXMERT's JSON, spec section 5.4) + object features -> image-group TFRecords.

Input entries: ``{answer_type, img_id, label: {answer: soft score}, question_id, question_type,
sent}`` (test has no ``label``). Answers are mapped through ``trainval_ans2label.json`` (3129
answers; id 0 is the empty answer ''), soft scores are kept; answers outside the vocabulary are
dropped and counted (LXMERT's JSONs are already filtered, so the count is normally 0).

Example (the LXMERT download layout)::

  python -m tfrecords_tools.vqa \\
    --features data/mscoco_imgfeat/train2014_obj36.tsv data/mscoco_imgfeat/val2014_obj36.tsv \\
    --annotations data/vqa/train.json data/vqa/nominival.json \\
    --answers data/vqa/trainval_ans2label.json --vocab vocab.txt \\
    --output_dir data/tfrecords/vqa --split train
"""

from __future__ import annotations

import collections
import numbers
import sys

from lxmert_jax.answers import load_answer_vocab
from lxmert_jax.data import schema
from lxmert_jax.data.tokenization import WordPieceTokenizer
from tfrecords_tools import common, convert, plan

EXAMPLE = (
  "python -m tfrecords_tools.vqa --features data/mscoco_imgfeat/val2014_obj36.tsv "
  "--annotations data/vqa/minival.json --answers data/vqa/trainval_ans2label.json "
  "--vocab vocab.txt --output_dir data/tfrecords/vqa --split minival"
)


def qa_rows(
  paths,
  ans2id: dict[str, int],
  report: common.Report,
  stats: collections.Counter,
  *,
  with_answer_type: bool,
) -> list[plan.RawSentence]:
  """Reads VQA- or GQA-style QA entries (``img_id``, ``sent``, ``question_id``, ``label``)."""
  rows = []
  for path in paths:
    for i, entry in enumerate(common.load_json_list(path)):
      where = f"{path}: entry {i}"
      if not isinstance(entry, dict) or any(
        k not in entry for k in ("img_id", "sent", "question_id")
      ):
        report.bad("sentences", f"{where}: needs the keys img_id, sent and question_id")
        continue
      where = f"{where} (question_id {entry['question_id']!r})"
      label = entry.get("label") or {}
      if not isinstance(label, dict):
        report.bad("sentences", f"{where}: label must be a dict answer -> score")
        continue
      ids, scores = [], []
      for ans, score in label.items():
        if not isinstance(score, numbers.Real) or not 0.0 <= score <= 1.0:
          report.bad("sentences", f"{where}: answer {ans!r} has score {score!r}, expected [0, 1]")
          break
        if ans not in ans2id:
          stats["answers_not_in_vocab"] += 1
          continue
        ids.append(ans2id[ans])
        scores.append(float(score))
      else:
        answer_type = -1
        if with_answer_type and entry.get("answer_type") is not None:
          if entry["answer_type"] not in schema.ANSWER_TYPES:
            report.bad(
              "sentences",
              f"{where}: answer_type {entry['answer_type']!r} not in {schema.ANSWER_TYPES}",
            )
            continue
          answer_type = schema.ANSWER_TYPES.index(entry["answer_type"])
        img_id = str(entry["img_id"])
        stats["questions_with_label" if label else "questions_without_label"] += 1
        rows.append(
          plan.RawSentence(
            group=img_id,
            img_ids=(img_id,),
            text=entry["sent"],
            uid=str(entry["question_id"]),
            where=where,
            answer_ids=ids,
            answer_scores=scores,
            answer_type=answer_type,
          )
        )
  return rows


def convert_qa(argv, *, task: str, prog: str, description: str, example: str, answer_type: bool):
  """Shared main of the VQA and GQA converters."""
  parser = common.build_parser(
    prog,
    description,
    example,
    answers_help="trainval_ans2label.json (dict answer -> id) or trainval_label2ans.json (list)",
  )
  args = parser.parse_args(argv)
  report = common.Report(args.skip_bad)
  tokenizer = WordPieceTokenizer(args.vocab, args.max_seq_length)
  label2ans = load_answer_vocab(args.answers)
  stats = collections.Counter()
  rows = qa_rows(
    args.annotations,
    {a: i for i, a in enumerate(label2ans)},
    report,
    stats,
    with_answer_type=answer_type,
  )
  if stats["answers_not_in_vocab"]:
    common.log.warning(
      "%d answers are not in %s and were dropped", stats["answers_not_in_vocab"], args.answers
    )
  group_plan = plan.build_plan(rows, tokenizer, report)
  convert.run_conversion(
    args,
    group_plan,
    tokenizer,
    report,
    task=task,
    answer_vocab=label2ans,
    split_info={"annotation_counts": dict(stats)},
  )


def run(argv=None):
  convert_qa(
    argv,
    task="vqa",
    prog="vqa",
    description=__doc__.split("\n\n")[0],
    example=EXAMPLE,
    answer_type=True,
  )


def main(argv=None) -> int:
  return common.cli_main(run, argv)


if __name__ == "__main__":
  sys.exit(main())
