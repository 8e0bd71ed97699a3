"""Multi-host start-up: ``jax.distributed.initialize`` before JAX touches a backend.

* TPU VM pods (``gcloud compute tpus tpu-vm ssh --worker=all``): detected from the TPU VM
  environment; ``jax.distributed.initialize()`` reads coordinator, process count and id from
  the TPU metadata, so every worker runs the same command.
* Elsewhere (GPU clusters, CPU tests): ``--coordinator_address=HOST:PORT --num_processes=P
  --process_id=I`` on every process (all three, or none = one process).
* Multi-process CPU runs use gloo collectives (``jax_cpu_collectives_implementation``).

After start-up, hosts other than 0 log warnings and errors only; metrics, ``results.json``,
``losses.jsonl`` and prediction files are written by host 0, checkpoints by Orbax (each host
writes its own shards of the arrays, host 0 the metadata, then one atomic rename).
"""

from __future__ import annotations

import os

from absl import flags, logging

COORDINATOR_ADDRESS = flags.DEFINE_string(
  "coordinator_address",
  None,
  "HOST:PORT of process 0's coordination service for a multi-process run outside TPU VMs "
  "(with --num_processes and --process_id).",
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process, 0 .. num_processes - 1.")

# Variables of the TPU VM runtime environment (set on every worker of a TPU VM slice).
_TPU_VM_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "TPU_ACCELERATOR_TYPE")


def on_tpu_vm() -> bool:
  """True on a Cloud TPU VM (where ``jax.distributed.initialize()`` needs no arguments)."""
  return any(os.environ.get(k) for k in _TPU_VM_ENV) or os.path.exists("/dev/accel0")


def _is_initialized() -> bool:
  from jax._src import distributed

  return distributed.global_state.client is not None


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Starts ``jax.distributed`` when this is a multi-process run; idempotent.

  Args:
    coordinator_address: ``HOST:PORT`` of process 0 (explicit mode).
    num_processes: number of processes (explicit mode).
    process_id: this process's index (explicit mode).

  Returns:
    True when ``jax.distributed`` is initialised (now or before), False for one process.

  Raises:
    ValueError: only some of the three explicit settings are given, or they are inconsistent.
  """
  import jax

  explicit = (coordinator_address, num_processes, process_id)
  if _is_initialized():
    return True
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError(
        "--coordinator_address, --num_processes and --process_id go together; got "
        f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
        f"process_id={process_id!r}"
      )
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
    if num_processes == 1:
      return False
    _use_gloo_on_cpu()
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif on_tpu_vm():
    # One-host slices (v4-8 ...) need no coordination service but are harmless with it.
    jax.distributed.initialize()
  else:
    return False
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def _use_gloo_on_cpu() -> None:
  """Cross-process collectives on the CPU backend need gloo (the jax 0.10 default)."""
  import jax

  platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
  if platforms.startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize_from_flags() -> bool:
  """:func:`initialize` with ``--coordinator_address/--num_processes/--process_id``."""
  return initialize(COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value)


def quiet_other_hosts() -> None:
  """Hosts other than 0 log warnings and errors only (host 0 speaks for the run)."""
  import jax

  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)


def is_primary() -> bool:
  import jax

  return jax.process_index() == 0
