r"""python -m lxmert_jax.main --config=configs/easy_vqa.py --workdir=workdir/easy_vqa

easy-VQA: the CPU-sized end-to-end demo (convert -> pretrain -> fine-tune -> baselines -> table),
orchestrated by ``lxmert_jax/demo.py``; docs/demo.md has the measured table and times. It is
sized for a 2-core CPU machine: two lanes (processes) train side by side, one core each.

The two training runs it is made of can also be launched on their own, on data converted with
``python -m tfrecords_tools.easy_vqa --output_dir data/easy_vqa --num_boxes 3``:

  python -m lxmert_jax.main --config=configs/easy_vqa.py:pretrain --workdir=/tmp/evqa_pre
  python -m lxmert_jax.main --config=configs/easy_vqa.py:finetune --workdir=/tmp/evqa_ft \
    --config.init_from=/tmp/evqa_pre

easy-VQA has 13 answers (yes/no plus shapes and colours), 4,000 train / 1,000 test images with
38,575 / 9,673 questions; the pixel detector (``lxmert_jax/easy_vqa``) gives 90-d features per
region. Fine-tuning follows VQA: BCE on the soft targets times the number of answers, accuracy
reported overall and split into Binary (yes/no) and Other. ``:tiny`` shrinks everything to a
smoke test whose numbers mean nothing.
"""

import ml_collections

from configs import common, pretrain
from configs.vqa import finetune_config

# Object and attribute classes of lxmert_jax/easy_vqa/regions.py (OBJECT_CLASSES, ATTR_CLASSES).
NUM_OBJECT_CLASSES = 5
NUM_ATTR_CLASSES = 9
NUM_ANSWERS = 13
# Regions per image: the detector's first 3 boxes (the shape, the whole image, the shape with
# context). They hold everything the questions ask about; the other 33 are parts and grid
# cells. 3 instead of 36 boxes makes a step ~3x cheaper on CPU.
NUM_BOXES = 3
# easy-VQA questions have at most 12 WordPieces with [CLS] and [SEP].
MAX_SEQ_LENGTH = 12


def model_group(tiny: bool) -> ml_collections.ConfigDict:
  """A small LXMERT (layers l/r/x = 2/1/2, hidden 128); data sizes are read from the data (0)."""
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
      max_position_embeddings=32,
      # No dropout. "is there a <colour> shape?" compares the colour word with the shape's
      # colour. With dropout 0.1 the named colour was 1% of the variance at [CLS] (21% without)
      # and the comparison was still unlearned after 10,000 steps; without dropout, pretrained
      # models learn it between steps 2,000 and 4,000 on every seed tried (docs/demo.md).
      hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0,
    )
  # 0 = from dataset_info.json: the trained WordPiece vocabulary and the 90-d region features.
  model.vocab_size = 0
  model.visual_feat_dim = 0
  model.num_qa_labels = NUM_ANSWERS
  model.num_object_labels = NUM_OBJECT_CLASSES
  model.num_attr_labels = NUM_ATTR_CLASSES
  return model


def _small_data(config: ml_collections.ConfigDict) -> None:
  """Input and bookkeeping settings of every easy-VQA run (small data, CPU)."""
  config.data.max_seq_length = MAX_SEQ_LENGTH
  config.data.shuffle_buffer_groups = 1024
  config.data.shuffle_buffer_examples = 4096
  config.data.threads = 2
  config.eval.batch_size = 512
  config.log_every_steps = 100
  config.profile_steps = 0
  # One checkpoint at the end (the runs are minutes long).
  config.checkpoint.every_steps = 100_000
  config.checkpoint.max_to_keep = 1
  config.checkpoint.async_save = False


def pretrain_run(arg) -> ml_collections.ConfigDict:
  """Pretraining on the train images and questions (every objective; QA labels = answers)."""
  config = pretrain.get_config("tiny" if arg.tiny else None)
  config.data.data_dir = arg.data_dir
  config.data.train_splits = "train"
  config.eval.splits = ""
  config.model = model_group(arg.tiny)
  _small_data(config)
  config.batch_size = 32
  config.total_steps = 1000
  config.optim.learning_rate = 1e-4
  if arg.tiny:
    common.tiny_overrides(config)
    config.model.num_qa_labels = NUM_ANSWERS
    config.eval.splits = ""
  return config


def finetune_run(arg) -> ml_collections.ConfigDict:
  """Fine-tuning on easy-VQA's 13 answers, evaluated on the test split."""
  config = finetune_config(
    arg,
    task="easy_vqa",
    num_answers=NUM_ANSWERS,
    lr=2e-4,
    train_splits="train",
    eval_splits="test",
    predict_splits="",
    eval_batch_size=512,
  )
  config.model = model_group(arg.tiny)
  _small_data(config)
  config.batch_size = 32
  # Pretrained models learn the colour comparison between steps 2,000 and 4,000 (docs/demo.md).
  config.total_steps = 5000
  # Evaluate at the end only (the demo's table); set e.g. 500 to follow accuracy vs steps.
  config.eval.every_steps = 0
  # Pretraining used the same 13 answers in the same order: its QA head is copied as is.
  config.transfer_answer_head = False
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
  # Seed of every run of the demo (init, dropout, corruption, data order).
  config.seed = 9595
  # The one model of every row of the table; the demo copies it into each run.
  config.model = model_group(arg.tiny)

  config.convert = ml_collections.ConfigDict()
  # Shards per split, regions per image (a prefix of the detector's box order, 1..36).
  config.convert.num_shards = 8
  config.convert.num_boxes = NUM_BOXES
  # Feature-extraction processes (0 = CPU count).
  config.convert.workers = 0
  # Convert only the first N images of each split (0 = all).
  config.convert.max_images = 0

  # The runs; the demo sets their model, seed, data_dir, length and init_from.
  config.pretrain = pretrain_run(arg)
  config.finetune = finetune_run(arg)
  # Steps of "LXMERT w/o pretraining": the fine-tuning recipe from a fresh init ...
  config.scratch_steps = config.finetune.get_ref("total_steps")
  # ... and of the Language Only / Image Only baselines, which reach their answer prior and
  # stop improving long before that.
  config.baseline_steps = 600

  config.lanes = ml_collections.ConfigDict()
  # Training processes side by side: 2 (lane 0 pretrain -> LXMERT; lane 1 the rest) or 1.
  config.lanes.count = 2
  # XLA, TF and tf.data threads of each lane (each lane is pinned to that many cores).
  config.lanes.threads = 1
  # Seconds between the demo's status lines (lanes, steps, training time left).
  config.lanes.status_every_secs = 30

  if arg.tiny:
    config.convert.max_images = 120
    config.convert.num_shards = 2
    config.convert.workers = 1
    config.baseline_steps = 20
    config.lanes.count = 1
  return config
