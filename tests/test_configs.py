"""Every config file loads, locks, documents its launch command and builds its model."""

import dataclasses
import importlib
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from lxmert_jax import train
from lxmert_jax import train_state as ts
from lxmert_jax.models import tasks
from lxmert_jax.models.config import LxmertConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
  "pretrain": ("", "tiny"),
  "vqa": ("", "tiny"),
  "gqa": ("", "tiny"),
  "nlvr2": ("", "tiny"),
  "easy_vqa": ("", "tiny", "pretrain", "finetune", "finetune,tiny"),
}
# Stand-ins for the sizes that configs leave to dataset_info.json (0).
FROM_DATA = {"vocab_size": 99, "visual_feat_dim": 11, "num_qa_labels": 13}


def _run_configs(config):
  """The run configs inside ``config`` (the demo config nests its runs)."""
  if config.mode == "demo":
    return [config.pretrain, config.finetune]
  return [config]


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in CONFIGS.items() for a in args])
def test_config_loads_and_builds_model(name, arg):
  module = importlib.import_module(f"configs.{name}")
  assert module.__doc__.lstrip().startswith("python -m lxmert_jax.main --config=configs/")
  config = module.get_config(arg or None)
  assert isinstance(config, ml_collections.ConfigDict)
  config.lock()  # What --config's lock_config does: overriding an unknown field fails.
  with pytest.raises(AttributeError):
    config.not_a_field = 1
  for run in _run_configs(config):
    assert run.mode in train.MODES and run.task in ts.TASK_MODELS
    fields = {k: v for k, v in run.model.to_dict().items() if k != "dtype"}
    fields.update({k: v for k, v in FROM_DATA.items() if fields[k] == 0})
    model_config = LxmertConfig.from_dict(fields)
    assert set(fields) == {f.name for f in dataclasses.fields(LxmertConfig)}
    family = ts.TASK_MODELS[run.task]
    shapes = tasks.param_shapes(model_config, family)  # jax.eval_shape: nothing allocated
    assert "lxmert" in shapes
    if run.task in ts.QA_TASKS:
      assert shapes["answer_head"]["logit_fc"]["3"]["kernel"].shape[1] == model_config.num_qa_labels
    assert run.batch_size % run.optim.grad_accum_steps == 0
    if run.total_steps is None:
      assert run.num_epochs > 0
    if "tiny" in arg:
      assert model_config.hidden_size <= 64 and run.total_steps <= 50


def test_paper_settings():
  pre = importlib.import_module("configs.pretrain").get_config()
  assert (pre.batch_size, pre.optim.learning_rate, pre.optim.warmup_fraction) == (256, 1e-4, 0.05)
  assert (pre.num_epochs, pre.data.max_seq_length, pre.optim.max_grad_norm) == (20, 20, 1.0)
  assert pre.model.to_dict() == {**dataclasses.asdict(LxmertConfig()), "dtype": "float32"}
  expected = {"vqa": (5e-5, 3129), "gqa": (1e-5, 1842), "nlvr2": (5e-5, 9500)}
  for name, (lr, answers) in expected.items():
    config = importlib.import_module(f"configs.{name}").get_config()
    assert (config.batch_size, config.num_epochs, config.optim.max_grad_norm) == (32, 4, 5.0)
    assert (config.optim.learning_rate, config.optim.warmup_fraction) == (lr, 0.1)
    assert config.model.num_qa_labels == answers
  assert importlib.import_module("configs.nlvr2").get_config().dont_load == ("answer_head/.*",)


def test_cli_reports_bad_config_and_exits_nonzero(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "lxmert_jax.main",
    "--config=configs/vqa.py:tiny",
    f"--workdir={tmp_path}",
    f"--config.data.data_dir={tmp_path / 'nowhere'}",
  ]
  out = subprocess.run(
    cmd,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert out.returncode == 1
  assert "config.data.data_dir=" in out.stderr and "is not a directory" in out.stderr
  assert "Traceback" not in out.stderr
  cmd[-1] = "--config.no_such_field=1"
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "no_such_field" in out.stderr


def test_cli_error_is_one_write_on_its_own_line(monkeypatch):
  """Background threads (a failing checkpoint writer) may still print when the run stops: the
  error must be one write that starts a fresh line, so it cannot be glued to their text."""
  from lxmert_jax import main as cli

  writes = []

  class Recorder:
    def write(self, text):
      writes.append(text)

    def flush(self):
      pass

  def failing_main(argv):
    raise OSError("[Errno 27] File too large")

  monkeypatch.setattr(cli, "main", failing_main)
  monkeypatch.setattr(sys, "stderr", Recorder())
  with pytest.raises(SystemExit) as exit_info:
    cli._main_with_clear_errors(["lxmert_jax.main"])
  assert exit_info.value.code == 1
  assert writes == ["\nerror: [Errno 27] File too large\n"]


def test_validate_config_names_the_numbers(tmp_path):
  config = importlib.import_module("configs.vqa").get_config("tiny")
  config.data.data_dir = str(tmp_path)
  config.batch_size = 20
  config.optim.grad_accum_steps = 3
  with pytest.raises(ValueError, match="batch_size=20 is not divisible by .*grad_accum_steps=3"):
    train.validate_config(config)
  config.optim.grad_accum_steps = 1
  config.mode = "pretrain"
  with pytest.raises(ValueError, match="mode 'pretrain' goes with task 'pretrain'"):
    train.validate_config(config)
  assert jax.device_count() == 8  # tests/conftest.py's fake devices
