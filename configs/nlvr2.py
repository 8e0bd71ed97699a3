r"""python -m lxmert_jax.main --config=configs/nlvr2.py --workdir=/tmp/lxmert_nlvr2 \
    --config.data.data_dir=data/tfrecords/nlvr2 --config.init_from=/path/to/Epoch20_LXRT.pth

Fine-tune LXMERT on NLVR2 (spec sections 3.2-3.4; original run/nlvr2_finetune.bash).

Settings: train on train, validate on valid (dev); batch 32, BertAdam lr 5e-5 with 10% warm-up,
clip 5.0, 4 epochs, L = 20. Each example pairs one statement with two images; the head reads
concat(pooled(img0), pooled(img1)) [B, 1536] and is trained from scratch with 2-way softmax CE
(the original's code; the paper says sigmoid BCE). Only the backbone is loaded (--loadLXMERT).
Expected: dev accuracy 74.9 (paper; README 74.0-74.5), Test-P 74.5.

``:tiny`` (CPU): tiny model, 20 steps, sizes read from the data.
"""

from configs import common
from configs.vqa import finetune_config


def get_config(arg=None):
  """NLVR2 fine-tuning config; ``arg`` = comma list of ``tiny``, ``data_dir=...``."""
  arg = common.parse_arg(arg, tiny=False, data_dir="data/tfrecords/nlvr2")
  config = finetune_config(
    arg,
    task="nlvr2",
    num_answers=None,
    lr=5e-5,
    train_splits="train",
    eval_splits="valid",
    predict_splits="test",
    eval_batch_size=512,
    transfer_answer_head=False,
  )
  # --loadLXMERT: only the backbone comes from init_from; the 2-way head over [img0; img1] starts
  # fresh. Set --config.dont_load='()' to load an NLVR2-fine-tuned init_from with its head.
  config.dont_load = ("answer_head/.*",)
  return config
