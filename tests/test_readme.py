"""The README's two fresh-machine commands stay true: CI runs exactly the test command."""

import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  section = text.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)\n```", section, re.S)
  assert len(blocks) == 2, "README must show exactly two commands: the demo and the tests"
  return [[part.strip() for part in block.split("&&")] for block in blocks]


def test_ci_runs_the_readme_test_command():
  _, test_cmd = _readme_commands()
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci_lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  for step in test_cmd:
    step = step.replace("pip install ", "pip install -q ")
    if step.startswith(". "):
      assert step in ci_lines, f".ci/run lacks the README step {step!r}"
      continue
    assert any(line.startswith(step) for line in ci_lines), f".ci/run lacks {step!r}"


def test_demo_command_names_existing_files():
  demo_cmd, _ = _readme_commands()
  run = shlex.split(demo_cmd[-1])
  assert run[:3] == ["python", "-m", "lxmert_jax.main"]
  config = next(a.split("=", 1)[1] for a in run if a.startswith("--config="))
  assert os.path.exists(os.path.join(ROOT, config.split(":")[0]))
  assert any(a.startswith("--workdir=") for a in run)
