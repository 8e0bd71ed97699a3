"""The notebooks are committed without outputs and run top to bottom in their tiny setting."""

import json
import os
import re
import sys

import nbformat
import pytest

NOTEBOOK_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks"
)
NOTEBOOKS = ("quickstart.ipynb", "finetune.ipynb")
# Per notebook, on a 2-core CPU in the tiny setting (they take well under this).
TIMEOUT_S = 900


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
  nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, f"{name} has no code cells"
  for i, cell in enumerate(code):
    assert cell.outputs == [], f"{name}: code cell {i} has stored outputs"
    assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
  assert "widgets" not in nb.metadata, f"{name}: stored widget state"


def _kernel_spec_dir(root) -> str:
  """A kernelspec that starts ipykernel under this very interpreter (whatever is on PATH)."""
  spec = root / "kernels" / "lxmert-test"
  spec.mkdir(parents=True)
  argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  (spec / "kernel.json").write_text(
    json.dumps({"argv": argv, "display_name": "lxmert-test", "language": "python"})
  )
  return str(root)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_tiny_mode(name, tmp_path, monkeypatch):
  from nbclient import NotebookClient

  monkeypatch.setenv("JUPYTER_PATH", _kernel_spec_dir(tmp_path / "jupyter"))
  monkeypatch.setenv("LXMERT_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("LXMERT_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  # The kernel sees the machine as a user would: conftest's 8 fake CPU devices are for pmap tests.
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("XLA_FLAGS", flags.strip())
  nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
  client = NotebookClient(
    nb,
    kernel_name="lxmert-test",
    timeout=TIMEOUT_S,
    resources={"metadata": {"path": NOTEBOOK_DIR}},
  )
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  # Every figure the notebook promises was drawn.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 2, f"{name} showed {len(images)} figures"
