"""GQA (LXMERT's balanced JSON, spec section 5.5) + object features -> image-group TFRecords.

Input entries: ``{question_id (str), img_id, sent, label: {answer: 1.0}}`` (``submit.json`` has
no ``label``). Answers are mapped through GQA's ``trainval_ans2label.json`` (1842 answers).
LXMERT's GQA JSONs carry no question type, so ``answer_type`` is -1 for every question.

Example (the LXMERT download layout)::

  python -m tfrecords_tools.gqa \\
    --features data/vg_gqa_imgfeat/vg_gqa_obj36.tsv \\
    --annotations data/gqa/train.json data/gqa/valid.json \\
    --answers data/gqa/trainval_ans2label.json --vocab vocab.txt \\
    --output_dir data/tfrecords/gqa --split train
"""

from __future__ import annotations

import sys

from tfrecords_tools import common
from tfrecords_tools.vqa import convert_qa

EXAMPLE = (
  "python -m tfrecords_tools.gqa --features data/vg_gqa_imgfeat/gqa_testdev_obj36.tsv "
  "--annotations data/gqa/testdev.json --answers data/gqa/trainval_ans2label.json "
  "--vocab vocab.txt --output_dir data/tfrecords/gqa --split testdev"
)


def run(argv=None):
  convert_qa(
    argv,
    task="gqa",
    prog="gqa",
    description=__doc__.split("\n\n")[0],
    example=EXAMPLE,
    answer_type=False,
  )


def main(argv=None) -> int:
  return common.cli_main(run, argv)


if __name__ == "__main__":
  sys.exit(main())
