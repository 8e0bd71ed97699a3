"""Preemption and damaged checkpoints: stop cleanly on SIGTERM, never restore a broken step.

Stopping. A preempted machine gets SIGTERM some seconds before it is killed. The training loop
asks :func:`reached` after every step; it is True once

  * Orbax / JAX's preemption service reports a sync point
    (``CheckpointManager.reached_preemption``): on multi-host runs (``jax.distributed``
    initialised) JAX's coordination service catches SIGTERM on any host and picks one step at
    which every host returns True, so all hosts save the same step and stop together;
  * or, without that service (one process), our own SIGTERM handler has fired.

The loop then saves the current step, waits for the write to finish and returns; the process
exits with status 0 and the same command resumes from that step. A second SIGTERM while the
first is being handled restores the default action (the process dies at once).

Restoring. Orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it only
once every host has finished (atomic finalize), so a step killed mid-write is never listed and
never restored. A step that is listed but cannot be read (damaged storage, deleted files) is
renamed to ``<step>.corrupt`` with a warning naming it, and the previous step is restored.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from absl import logging

_requested = threading.Event()
_previous_handler = None
_installed = False
# Errors of restore_checkpoint that mean "another model config", not damage: never fall back.
_CONFIG_ERROR_TEXT = "does not fit this model"
CORRUPT_SUFFIX = ".corrupt"


def _on_sigterm(signum, frame) -> None:
  del frame
  if _requested.is_set():  # Second signal: give up on the clean stop.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return
  logging.warning("SIGTERM received: saving a checkpoint after the current step, then exiting.")
  _requested.set()


def _jax_preemption_service_active() -> bool:
  """True when JAX's coordination service (jax.distributed) handles SIGTERM itself."""
  import jax

  if jax.process_count() == 1:
    return False
  try:
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


def install() -> None:
  """Installs the SIGTERM handler for one training loop and clears any earlier request.

  Without effect off the main thread (Python allows handlers only there) and when JAX's
  preemption service already turns SIGTERM into a synchronised preemption step.
  """
  global _previous_handler, _installed
  _requested.clear()
  if _installed or _jax_preemption_service_active():
    return
  if threading.current_thread() is not threading.main_thread():
    logging.info("Training loop off the main thread: SIGTERM is not handled.")
    return
  _previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
  _installed = True


def uninstall() -> None:
  """Puts back the SIGTERM handler that :func:`install` replaced."""
  global _previous_handler, _installed
  if _installed:
    signal.signal(signal.SIGTERM, _previous_handler or signal.SIG_DFL)
  _previous_handler, _installed = None, False


def request() -> None:
  """Asks the running loop to save and stop, as SIGTERM does (tests, notebooks)."""
  _requested.set()


def requested() -> bool:
  return _requested.is_set()


def reached(mngr, step: int) -> bool:
  """Whether the loop must save ``step`` and stop; the same answer on every host.

  Args:
    mngr: the run's ``orbax.checkpoint.CheckpointManager``.
    step: the step just taken.
  """
  if mngr.reached_preemption(step):  # Synchronised by JAX across hosts.
    return True
  local = _requested.is_set()
  import jax

  if jax.process_count() == 1:
    return local
  # Our own handler on several hosts (no JAX preemption service): agree on the same step.
  import numpy as np
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
  return bool(np.max(flags))


def restore_latest_valid(mngr, restore: Callable[[int], object]):
  """Restores the newest readable step, moving damaged newer steps aside.

  Args:
    mngr: the run's ``CheckpointManager``.
    restore: restores one step (``checkpoint.restore_checkpoint`` bound to the abstract state).

  Returns:
    The restored state, or None when the manager has no step.

  Raises:
    ValueError: the checkpoint was written for another model config (never a fallback).
    RuntimeError: no step can be read; names every step tried and its error.
  """
  failures = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return restore(step)
    except Exception as e:  # noqa: BLE001 - any read error means "damaged"; see below.
      if isinstance(e, ValueError) and _CONFIG_ERROR_TEXT in str(e):
        raise
      where = os.path.join(str(mngr.directory), str(step))
      failures.append(f"{where}: {type(e).__name__}: {e}")
      logging.warning(
        "Checkpoint %s cannot be restored (%s: %s); moving it to %s%s and "
        "trying the previous step.",
        where,
        type(e).__name__,
        e,
        where,
        CORRUPT_SUFFIX,
      )
      _move_aside(mngr, step)
  if failures:
    raise RuntimeError(
      "no checkpoint in {} can be restored:\n  {}".format(mngr.directory, "\n  ".join(failures))
    )
  return None


def _move_aside(mngr, step: int) -> None:
  """Renames a damaged step so it is neither listed nor in the way of a new save of ``step``."""
  import jax
  from etils import epath  # Orbax's path type: local and gs:// alike.

  src = epath.Path(mngr.directory) / str(step)
  if jax.process_index() == 0 and src.exists():
    dst, n = src.parent / f"{step}{CORRUPT_SUFFIX}", 1
    while dst.exists():
      dst, n = src.parent / f"{step}{CORRUPT_SUFFIX}{n}", n + 1
    src.rename(dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"lxmert_jax_move_aside_{step}")
  mngr.reload()
