"""Test setup: 8 fake CPU devices, set before JAX or TensorFlow (which imports JAX) loads."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest  # noqa: E402  (after the environment above)


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA without most optimisation passes, for a whole module (``pytestmark =
  pytest.mark.usefixtures("fast_compiles")``): the tiny models of those tests compile far slower
  than they run, and the passes do not change the values the tests check."""
  import jax

  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
