r"""python -m lxmert_jax.main --config=configs/vqa.py --workdir=/tmp/lxmert_vqa \
    --config.data.data_dir=data/tfrecords/vqa --config.init_from=/path/to/Epoch20_LXRT.pth \
    --config.init_answers=/path/to/all_ans.json

Fine-tune LXMERT on VQA v2 (spec sections 3.2-3.5; original run/vqa_finetune.bash).

Settings: train on train+nominival (split "train" of docs/data.md), validate on minival; batch 32, BertAdam lr 5e-5 with 10%
warm-up, clip 5.0, 4 epochs, L = 20. Loss: BCE-with-logits on soft scores times 3129. The QA
head is rebuilt from the pretrained 9500-answer head by answer string (load_lxmert_qa: 3124 of
3129 rows transferred). Expected: minival accuracy 69.9 (paper Table 3; README 69.7-70.2),
test-dev 72.4 with the released Epoch20 weights.

``:tiny`` (CPU): tiny model, 20 steps, sizes read from the data.
"""

from configs import common


def get_config(arg=None):
  """VQA fine-tuning config; ``arg`` = comma list of ``tiny``, ``data_dir=...``."""
  arg = common.parse_arg(arg, tiny=False, data_dir="data/tfrecords/vqa")
  return finetune_config(
    arg,
    task="vqa",
    num_answers=3129,
    lr=5e-5,
    train_splits="train",
    eval_splits="minival",
    predict_splits="test",
    eval_batch_size=1024,
  )


def finetune_config(
  arg,
  *,
  task,
  num_answers,
  lr,
  train_splits,
  eval_splits,
  predict_splits,
  eval_batch_size,
  transfer_answer_head=True,
):
  """The fine-tuning recipe shared by VQA, GQA, NLVR2 and easy-VQA (spec section 3.4)."""
  config = common.base_config(arg.tiny)
  config.mode = "finetune"
  config.task = task
  config.data.data_dir = arg.data_dir
  config.data.train_splits = train_splits
  config.batch_size = 32
  config.num_epochs = 4.0
  config.optim.learning_rate = lr
  config.optim.warmup_fraction = 0.1
  config.optim.max_grad_norm = 5.0
  if num_answers is not None:  # NLVR2 has a 2-way head of its own instead.
    config.model.num_qa_labels = num_answers
    # 'bce': sigmoid BCE on the soft scores x A (the original's VQA/GQA loss); 'mce': softmax
    # CE on the best answer x A (the original's GQA --mceLoss).
    config.qa_loss = "bce"
  config.transfer_answer_head = transfer_answer_head
  config.eval.splits = eval_splits
  config.eval.predict_splits = predict_splits
  config.eval.batch_size = eval_batch_size
  config.eval.best_metric = "accuracy"
  config.eval.best_mode = "max"
  config.checkpoint.every_steps = 2000
  if arg.tiny:
    common.tiny_overrides(config)
  return config
