r"""python -m lxmert_jax.main --config=configs/pretrain.py --workdir=/tmp/lxmert_pretrain \
    --config.data.data_dir=data/tfrecords/pretrain

LXMERT pretraining (spec sections 2.2-2.7): MLM + matching + object labels/features + QA.

CPU smoke run (tiny model, 20 steps; feature dim and answer table are read from the data):

  python -m lxmert_jax.main --config=configs/pretrain.py:tiny --workdir=/tmp/lxmert_tiny \
    --config.data.data_dir=data/easy_vqa

GitHub-recipe settings: batch 256, BertAdam lr 1e-4 with 5% warm-up and linear decay, weight
decay 0.01 on every parameter, clip 1.0, 20 epochs, L = 20 tokens, N = 36 boxes, 15% word and
object masking, 50% mismatched pairs, every task weighted 1 from the first step. The paper
instead trains QA only in the second half with weight 2: ``--config.pretrain.qa_start_epoch=10
--config.pretrain.weights.qa=2``. Original train splits: mscoco_train, mscoco_nominival,
vgnococo; valid: mscoco_minival. Original epoch-1 losses for orientation (spec 2.7): train
MLM 2.92 / matched 0.43 / obj 1.60 / attr 1.20 / feat 0.30 / QA 3.20 (total 9.65).

Restore order: latest checkpoint in the workdir, else ``config.init_from`` (params only),
else fresh init (the original pretrains ``--fromScratch``).
"""

from configs import common


def get_config(arg=None):
  """Pretraining config; ``arg`` = comma list of ``tiny``, ``data_dir=...``."""
  arg = common.parse_arg(arg, tiny=False, data_dir="data/tfrecords/pretrain")
  config = common.base_config(arg.tiny)
  config.mode = "pretrain"
  config.task = "pretrain"
  config.data.data_dir = arg.data_dir
  # As docs/data.md writes them: train = mscoco_train + mscoco_nominival + vgnococo.
  config.data.train_splits = "train"
  config.eval.splits = "minival"
  # Original validation batch (single GPU); corruption at eval is random as in the original.
  config.eval.batch_size = 512
  config.eval.best_metric = "loss"
  config.eval.best_mode = "min"
  config.eval.write_predictions = False

  config.pretrain = pretrain_group()
  if arg.tiny:
    common.tiny_overrides(config)
  return config


def pretrain_group():
  """``config.pretrain``: objectives, their weights and the corruption rates."""
  import ml_collections

  group = ml_collections.ConfigDict()
  # Weight of each objective in the total (absent or 0 = not computed).
  group.weights = ml_collections.ConfigDict(
    dict(mlm=1.0, matched=1.0, obj=1.0, attr=1.0, feat=1.0, qa=1.0)
  )
  # QA loss counts from this epoch on (0 = GitHub recipe; the paper used 10 of 20).
  group.qa_start_epoch = 0.0
  # Probability that a WordPiece (never [CLS]/[SEP]/padding) is selected for MLM.
  group.word_mask_rate = 0.15
  # Probability that a box is selected for feature masking.
  group.obj_mask_rate = 0.15
  # Probability that a sentence is paired with another image (matching negative).
  group.mismatch_prob = 0.5
  # Loss conventions: 'original' (ignore -1, visual x 1/0.15) or 'transformers' (-100, 6.67).
  group.semantics = "original"
  return group
