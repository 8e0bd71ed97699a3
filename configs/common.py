"""Pieces shared by every config: the argument parser, the model group and the base layout.

Restore order for every run (``lxmert_jax/checkpoint.py``): (1) the latest checkpoint under
``<workdir>/checkpoints`` (resume), else (2) ``config.init_from`` (params only: one of our
workdirs or checkpoint steps, a transformers LXMERT directory, or an original ``*_LXRT.pth``),
else (3) a fresh random init.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from lxmert_jax.models.config import LxmertConfig, tiny_config

TASKS = ("pretrain", "vqa", "gqa", "nlvr2", "easy_vqa")
MODES = ("pretrain", "finetune", "eval", "demo")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """``"tiny,data_dir=/x"`` -> ConfigDict(tiny=True, data_dir="/x") over ``defaults``.

  Bare words set booleans; ``key=value`` pairs take the type of the default (big_vision's
  ``configs/common.py:parse_arg``).
  """
  out = ml_collections.ConfigDict(defaults)
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    key, sep, value = part.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    if not sep:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(defaults[key])(value)
  return out


def model_config(tiny: bool, **overrides) -> ml_collections.ConfigDict:
  """``config.model``: every ``LxmertConfig`` field plus the compute ``dtype``.

  ``visual_feat_dim`` and ``num_qa_labels`` may be 0, meaning "from dataset_info.json" (feature
  dim, answer vocabulary size); any other value must agree with the data.
  """
  base = tiny_config() if tiny else LxmertConfig()
  model = ml_collections.ConfigDict(dataclasses.asdict(base.replace(**overrides)))
  # Compute dtype: 'float32', or 'bfloat16' (params and optimizer state stay float32).
  model.dtype = "float32"
  return model


def base_config(tiny: bool) -> ml_collections.ConfigDict:
  """Fields every run has; the task configs override a few of them."""
  config = ml_collections.ConfigDict()
  # 'pretrain', 'finetune', 'eval' (metrics + prediction files only), or 'demo' (easy_vqa.py).
  config.mode = "pretrain"
  # 'pretrain', 'vqa', 'gqa', 'nlvr2' or 'easy_vqa'.
  config.task = "pretrain"
  # Seed of parameter init, dropout, corruption and data order (the original's 9595).
  config.seed = 9595
  # Examples per optimizer update over all hosts and devices.
  config.batch_size = 256
  # Training length in passes over the train splits (drop_last), converted once to steps.
  config.num_epochs = 20.0
  # Training length in optimizer updates; overrides num_epochs when set.
  config.total_steps = config_dict.placeholder(int)
  # Progress line and TensorBoard scalars every this many steps.
  config.log_every_steps = 100
  # Steps traced by clu's Profile hook on host 0 (0 = no profile).
  config.profile_steps = 5
  # Params-only initialisation when the workdir has no checkpoint ('' = fresh init).
  config.init_from = ""
  # Answer table (JSON) of init_from's QA head when it does not carry one (e.g. all_ans.json).
  config.init_answers = ""
  # Regexes of param paths ('lxmert/encoder/...') that may stay at their init when loading.
  config.dont_load = ()
  # Rebuild the QA head row by row from init_from's answer table (original load_lxmert_qa).
  config.transfer_answer_head = False

  config.model = model_config(tiny)

  config.data = ml_collections.ConfigDict()
  # Directory with the shards and dataset_info.json written by tfrecords_tools.
  config.data.data_dir = ""
  # Comma-separated splits concatenated for training.
  config.data.train_splits = "train"
  # Token sequence length L incl. [CLS]/[SEP] (20 in every original script).
  config.data.max_seq_length = 20
  # Records (image groups) in the group-level shuffle buffer (bounds host memory).
  config.data.shuffle_buffer_groups = 1024
  # Per-sentence examples in the example-level shuffle buffer (bounds host memory).
  config.data.shuffle_buffer_examples = 4096
  # Shard files read concurrently.
  config.data.cycle_length = 8
  # tf.data private thread pool size (0 = TensorFlow's default).
  config.data.threads = 16
  # Batches staged on the devices ahead of the step.
  config.data.prefetch_to_device = 2

  config.optim = ml_collections.ConfigDict()
  # Peak learning rate of BertAdam's warm-up-then-linear-decay schedule.
  config.optim.learning_rate = 1e-4
  # Fraction of total steps spent warming up (0.05 pretraining, 0.1 fine-tuning).
  config.optim.warmup_fraction = 0.05
  # Decoupled weight decay, applied to every parameter as in the original.
  config.optim.weight_decay = 0.01
  # Global-norm gradient clipping (1.0 pretraining, 5.0 fine-tuning).
  config.optim.max_grad_norm = 1.0
  # Adam's moment bias correction; the original BertAdam has none (its first updates are ~3x
  # larger, which peak rates near 1e-3 do not survive).
  config.optim.bias_correction = False
  # Micro-batches accumulated per update (optax.MultiSteps); batch_size is split between them.
  config.optim.grad_accum_steps = 1

  config.eval = ml_collections.ConfigDict()
  # Comma-separated splits evaluated during and after training ('' = none).
  config.eval.splits = ""
  # Comma-separated splits without labels for which only prediction files are written.
  config.eval.predict_splits = ""
  # Examples per eval step over all hosts (padded with masked examples).
  config.eval.batch_size = 1024
  # Evaluate every this many epochs (converted once to steps) ...
  config.eval.every_epochs = 1.0
  # ... or every this many steps, which overrides every_epochs when set.
  config.eval.every_steps = config_dict.placeholder(int)
  # Metric (of the first eval split) that selects the best checkpoint, and its direction.
  config.eval.best_metric = "loss"
  config.eval.best_mode = "min"
  # Write per-example predictions (submission format) for every evaluated split.
  config.eval.write_predictions = True

  config.checkpoint = ml_collections.ConfigDict()
  # Save every this many steps (and always at the end of training).
  config.checkpoint.every_steps = 5000
  # Most recent checkpoints kept; the best one by eval.best_metric is kept as well.
  config.checkpoint.max_to_keep = 2
  # Write checkpoints in a background thread.
  config.checkpoint.async_save = True
  return config


def tiny_overrides(config: ml_collections.ConfigDict) -> None:
  """Shrinks batch and schedule to a CPU debugging run (model size is set by model_config).

  The data-dependent sizes become 0 = "read from dataset_info.json" and the splits become
  train / test, so a tiny run works on any small converted dataset (e.g. easy-VQA).
  """
  config.model.visual_feat_dim = 0
  config.model.num_qa_labels = 0
  config.batch_size = 16
  config.total_steps = 20
  config.log_every_steps = 5
  config.eval.batch_size = 32
  config.eval.every_steps = 10
  config.checkpoint.every_steps = 10
  config.data.shuffle_buffer_groups = 64
  config.data.shuffle_buffer_examples = 128
  config.data.threads = 0
  config.data.max_seq_length = 12
  config.model.vocab_size = 0
  config.data.train_splits = "train"
  config.eval.splits = "test"
  config.eval.predict_splits = ""
  config.profile_steps = 0
