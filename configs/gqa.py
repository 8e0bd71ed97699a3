r"""python -m lxmert_jax.main --config=configs/gqa.py --workdir=/tmp/lxmert_gqa \
    --config.data.data_dir=data/tfrecords/gqa --config.init_from=/path/to/Epoch20_LXRT.pth \
    --config.init_answers=/path/to/all_ans.json

Fine-tune LXMERT on GQA (spec sections 3.2-3.5; original run/gqa_finetune.bash).

Settings: train on train+valid (split "train" of docs/data.md), evaluate on testdev; batch 32, BertAdam lr 1e-5 with 10%
warm-up, clip 5.0, 4 epochs, L = 20. Loss: BCE-with-logits on one-hot targets times 1842
(``--config.qa_loss=mce``: the original's ``--mceLoss``, softmax CE times 1842). QA head
transferred by answer string (1736 of 1842 rows). Expected: testdev 60.0 (paper; local evaluator
59.8-60.1), test-std 60.3.

``:tiny`` (CPU): tiny model, 20 steps, sizes read from the data.
"""

from configs import common
from configs.vqa import finetune_config


def get_config(arg=None):
  """GQA fine-tuning config; ``arg`` = comma list of ``tiny``, ``data_dir=...``."""
  arg = common.parse_arg(arg, tiny=False, data_dir="data/tfrecords/gqa")
  return finetune_config(
    arg,
    task="gqa",
    num_answers=1842,
    lr=1e-5,
    train_splits="train",
    eval_splits="testdev",
    predict_splits="submit",
    eval_batch_size=512,
  )
