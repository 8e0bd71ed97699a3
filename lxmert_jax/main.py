r"""Command line: pretrain, fine-tune or evaluate LXMERT from an ml_collections config.

  python -m lxmert_jax.main --config=configs/vqa.py --workdir=/tmp/lxmert_vqa \
    --config.data.data_dir=data/tfrecords/vqa --config.init_from=/path/to/Epoch20_LXRT.pth

Any config field can be overridden with ``--config.<group>.<field>=value``; ``--config=FILE:ARG``
passes ARG to the file's ``get_config`` (e.g. ``configs/pretrain.py:tiny``). Final metrics go to
``<workdir>/results.json``; TensorBoard scalars and checkpoints to ``<workdir>``.
``configs/easy_vqa.py`` (mode 'demo') runs the easy-VQA demo (lxmert_jax/demo.py).
"""

import os
import sys

# Before jax/tensorflow load: TF must not claim accelerators, and its C++ INFO lines are noise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lxmert_jax import distributed  # noqa: E402  (--coordinator_address/--num_processes/...)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string(
  "workdir", None, "Directory (local or gs://) for checkpoints, TensorBoard logs and results."
)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required")
  logging.set_verbosity(logging.INFO)
  config = FLAGS.config

  from lxmert_jax.data import pipeline

  pipeline.hide_accelerators_from_tf()
  distributed.initialize_from_flags()  # Before any JAX backend call; no-op for one process.
  distributed.quiet_other_hosts()
  import jax

  logging.info(
    "JAX: %d processes, %d devices (%d local): %s",
    jax.process_count(),
    jax.device_count(),
    jax.local_device_count(),
    jax.devices(),
  )
  if config.get("mode") == "demo":
    from lxmert_jax import demo

    demo.run_demo(config, FLAGS.workdir)
    return
  from lxmert_jax import train

  results = train.train_and_evaluate(config, FLAGS.workdir)
  logging.info("Results: %s", results.get("eval", results))


def _main_with_clear_errors(argv) -> None:
  """Config and data errors end the run with one line and exit status 1, not a traceback."""
  try:
    main(argv)
  except (ValueError, OSError, KeyError, FloatingPointError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    # One write, starting on a fresh line: background threads (a checkpoint writer that hit
    # the same fault) may still be printing, and must not glue their text to this line.
    sys.stderr.write(f"\nerror: {e}\n")
    sys.stderr.flush()
    sys.exit(1)


def run() -> None:
  """Console script ``lxmert-jax``."""
  app.run(_main_with_clear_errors)


if __name__ == "__main__":
  run()
