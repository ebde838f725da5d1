"""Multi-host sweeps: every process measures its share of the seeds on its own devices.

Launch the same command on every host with ``--distributed``; JAX reads the
cluster from the environment (``jax.distributed.initialize()``: Cloud TPU slices
and Slurm are detected; elsewhere set ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``). Process p takes the seeds s with
``s % process_count == p``, shards them over its local devices (the engine's
mesh), and writes only its own rows, to ``DIR/parts/process-p``. After a barrier,
process 0 merges every part into ``DIR``. A sample depends only on (base key,
seed), so the merged store equals a single-host run's.

References:
  JAX documentation, "Multi-process environments" (``jax.distributed``).
"""

from __future__ import annotations

from pathlib import Path

import jax
from jax.experimental import multihost_utils

from normtheory import store


def initialize() -> None:
  """Join the cluster described by the environment (see the module docstring)."""
  jax.distributed.initialize()


def my_seeds(n_seeds: int) -> set[int]:
  """The seeds this process measures: ``s % process_count == process_index``."""
  return {s for s in range(n_seeds) if s % jax.process_count() == jax.process_index()}


def part_dir(out_dir: str | Path, process: int | None = None) -> Path:
  """Where process ``process`` (default: this one) writes its rows."""
  return Path(out_dir) / "parts" / f"process-{jax.process_index() if process is None else process}"


def barrier(name: str) -> None:
  """Wait until every process reaches this point."""
  multihost_utils.sync_global_devices(name)


def merge_parts(out_dir: str | Path, settings: dict) -> store.ResultsStore:
  """Process 0: fold every ``DIR/parts/process-*`` store into ``DIR`` (rows replaced per (cell, seed))."""
  target = store.ResultsStore(out_dir, settings)
  for part in sorted((Path(out_dir) / "parts").glob("process-*")):
    target.absorb(store.ResultsStore(part, settings))
  return target
