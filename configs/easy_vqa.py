r"""python -m lxmert_jax.main --config=configs/easy_vqa.py --workdir=workdir/easy_vqa

easy-VQA: the CPU-sized end-to-end demo (convert -> pretrain -> fine-tune -> baselines).

The command above runs the whole demo (``lxmert_jax/demo.py``). The two training runs it is made of can also be
launched on their own, on data converted with
``python -m tfrecords_tools.easy_vqa --output_dir data/easy_vqa``:

  python -m lxmert_jax.main --config=configs/easy_vqa.py:pretrain --workdir=/tmp/evqa_pre
  python -m lxmert_jax.main --config=configs/easy_vqa.py:finetune --workdir=/tmp/evqa_ft \
    --config.init_from=/tmp/evqa_pre

easy-VQA has 13 answers (yes/no plus shapes and colours), 4,000 train / 1,000 test images with
38,575 / 9,673 questions; a 36-region detector gives 90-d features per region. Fine-tuning
follows VQA: BCE on the soft targets times the number of answers, accuracy reported overall and
split into Binary (yes/no) and Other. ``:tiny`` shrinks everything to a smoke test.
"""

import ml_collections

from configs import common, pretrain
from configs.vqa import finetune_config

# Object and attribute classes of lxmert_jax/easy_vqa/regions.py (OBJECT_CLASSES, ATTR_CLASSES).
NUM_OBJECT_CLASSES = 5
NUM_ATTR_CLASSES = 9
NUM_ANSWERS = 13


def model_group(tiny: bool) -> ml_collections.ConfigDict:
  """A small LXMERT for 64x64 synthetic images; sizes of the data are read from it (0)."""
  if tiny:
    model = common.model_config(True)
  else:
    model = common.model_config(
      False,
      hidden_size=128,
      num_attention_heads=4,
      intermediate_size=512,
      l_layers=2,
      r_layers=1,
      x_layers=2,
      max_position_embeddings=64,
    )
  # 0 = from dataset_info.json: the trained WordPiece vocabulary and the 90-d region features.
  model.vocab_size = 0
  model.visual_feat_dim = 0
  model.num_qa_labels = NUM_ANSWERS
  model.num_object_labels = NUM_OBJECT_CLASSES
  model.num_attr_labels = NUM_ATTR_CLASSES
  return model


def pretrain_run(arg) -> ml_collections.ConfigDict:
  """Pretraining on the train questions (every objective; QA labels are the answers)."""
  config = pretrain.get_config("tiny" if arg.tiny else None)
  config.data.data_dir = arg.data_dir
  config.data.train_splits = "train"
  config.eval.splits = "test"
  config.model = model_group(arg.tiny)
  config.data.max_seq_length = 20
  config.batch_size = 64
  config.num_epochs = 4.0
  config.optim.learning_rate = 2e-4
  config.eval.batch_size = 512
  config.checkpoint.every_steps = 1000
  config.log_every_steps = 100
  config.profile_steps = 0
  if arg.tiny:
    common.tiny_overrides(config)
  return config


def finetune_run(arg) -> ml_collections.ConfigDict:
  """Fine-tuning on easy-VQA's 13 answers, evaluated on the test split."""
  config = finetune_config(
    arg,
    task="easy_vqa",
    num_answers=NUM_ANSWERS,
    lr=1e-4,
    train_splits="train",
    eval_splits="test",
    predict_splits="",
    eval_batch_size=512,
  )
  config.model = model_group(arg.tiny)
  config.data.max_seq_length = 20
  config.batch_size = 32
  config.num_epochs = 2.0
  config.log_every_steps = 100
  config.profile_steps = 0
  if arg.tiny:
    common.tiny_overrides(config)
    config.model.num_qa_labels = NUM_ANSWERS
  return config


def get_config(arg=None):
  """``arg``: '' (the demo), 'pretrain' or 'finetune' (one run), plus 'tiny', 'data_dir=...'."""
  arg = common.parse_arg(arg, tiny=False, pretrain=False, finetune=False, data_dir="data/easy_vqa")
  if arg.pretrain:
    return pretrain_run(arg)
  if arg.finetune:
    return finetune_run(arg)
  config = ml_collections.ConfigDict()
  # The demo: lxmert_jax.main hands the whole config to lxmert_jax.demo.
  config.mode = "demo"
  config.task = "easy_vqa"
  # Seed of every run of the demo.
  config.seed = 9595
  # The shared model of every run (pretraining, fine-tuning, baselines).
  config.model = model_group(arg.tiny)
  config.convert = ml_collections.ConfigDict()
  # Shards per split, regions per image, feature-extraction workers (0 = CPU count).
  config.convert.num_shards = 8
  config.convert.num_boxes = 36
  config.convert.workers = 0
  # Convert only the first N images of each split (0 = all; tiny runs use a few).
  config.convert.max_images = 200 if arg.tiny else 0
  # The runs (their data_dir, model, seed and init_from are set by the demo).
  config.pretrain = pretrain_run(arg)
  config.finetune = finetune_run(arg)
  # Steps of "LXMERT w/o pretraining" (same schedule as fine-tuning, from a fresh init) ...
  config.scratch_steps = 20 if arg.tiny else 2400
  # ... and of the Language Only / Image Only baselines.
  config.baseline_steps = 20 if arg.tiny else 2400
  config.lanes = ml_collections.ConfigDict()
  # Training processes run side by side (1 or 2) and XLA/TF threads of each.
  config.lanes.count = 1 if arg.tiny else 2
  config.lanes.threads = 1
  return config
