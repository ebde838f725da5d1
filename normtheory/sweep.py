"""Run a grid of cells into a results store, or into memory: plan, measure, append, summarise.

Cells that share (loss, d) form one *pass*: the engine measures all their
architectures and depths from one forward pass per architecture, drawing each
layer's weights once for all of them (:func:`normtheory.engine.measure_archs`). Only the
(cell, seed) pairs missing from the store are measured, so an interrupted sweep
resumes with the same command and a larger ``--seeds`` adds just the new seeds.
With ``depth=True`` each pass also computes the effective-depth metrics
(:func:`normtheory.depth_metrics.depth_metrics`) of its cells, on the same samples
(same base key and seeds), and stores them with the gradient norms.

:func:`measure_grid` runs the same passes for a notebook, with no store, and returns
the tidy tables (:class:`normtheory.store.Frames`).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd

from normtheory import depth_metrics, engine
from normtheory.config import Config, default_d_ff
from normtheory.measure import GradNorms, as_key, check_chunk, seed_indices
from normtheory.schema import CELL_COLUMNS, DEPTH_FILE, cell_key
from normtheory.store import Frames, ResultsStore, concat_tables


@dataclasses.dataclass(frozen=True)
class Pass:
  """One engine call: a (loss, d) family, its architectures, depths and seeds.

  The engine draws each layer's weights once for every depth-independent
  architecture of the pass (:func:`normtheory.engine.measure_archs`).
  """

  base: Config  # the model with arch and L replaced by each of ``archs`` and ``depths``
  archs: tuple[str, ...]
  depths: tuple[int, ...]
  seeds: tuple[int, ...]
  cells: frozenset[tuple[str, int]]  # the (arch, L) cells to store: those missing a seed


@dataclasses.dataclass
class Failure:
  """A pass that raised: its cells are not stored; the sweep goes on."""

  cells: list[tuple]
  error: str


class Plan(NamedTuple):
  """What a sweep has left to do."""

  passes: list[Pass]  # the engine calls that complete the grid
  complete: int  # cells that already hold every wanted seed


def plan(
    base: Config,
    archs: Sequence[str],
    losses: Sequence[str],
    widths: Sequence[int],
    depths: Sequence[int],
    seeds: Iterable[int],
    stored: Mapping[tuple, set[int]],
    d_ff: int | None = None,
) -> Plan:
  """The passes needed to complete the grid, and the number of cells already complete.

  Args:
    base: a Config carrying the shared fields (n, eps, dtype, vocab, batch, ...); its
      arch, loss, d, L and d_ff are replaced by the grid's.
    archs, losses, widths, depths: the grid axes.
    seeds: the seed indices wanted in every cell.
    stored: cell tuple -> stored seeds (``ResultsStore.stored_seeds``).
    d_ff: the FFN width of every cell; None: each cell's :func:`normtheory.config.default_d_ff`
      (d, Theorem 1's d×d; round(2d/3) for SwiGLU).

  Returns:
    :class:`Plan`.

  Raises:
    ValueError: a cell is not a valid :class:`normtheory.Config`.
  """
  wanted = set(seeds)
  passes, complete = [], 0
  for loss, d in itertools.product(losses, widths):
    family = dataclasses.replace(base, loss=loss, d=d, d_ff=default_d_ff(d, base.ffn) if d_ff is None else d_ff)
    cells, seeds = set(), set()
    for arch, L in itertools.product(archs, depths):
      missing = wanted - stored.get(cell_key(dataclasses.replace(family, arch=arch, L=L)), set())
      if missing:
        cells.add((arch, L))
        seeds |= missing
      else:
        complete += 1
    if cells:
      pass_archs = tuple(a for a in archs if any(c[0] == a for c in cells))
      pass_depths = tuple(sorted({L for _, L in cells}))
      passes.append(Pass(family, pass_archs, pass_depths, tuple(sorted(seeds)), frozenset(cells)))
  return Plan(passes, complete)


def _out_of_memory(error: Exception) -> bool:
  return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


def run_pass(
    p: Pass, base_key: jax.Array, chunk: int | None, warn: Callable[[str], None] = print,
    max_memory: int | None = None, redraw: bool = False,
) -> list[GradNorms]:
  """Measure one pass; one GradNorms per cell of ``p.cells``.

  ``chunk``, ``max_memory`` and ``redraw`` are :func:`normtheory.engine.measure_archs`'s.
  An out-of-memory error halves the memory budget and the seed chunk and retries
  (saying so through ``warn``) until a call of one seed that keeps no weights fails too.
  """
  seeds_S = np.asarray(p.seeds)
  chunk = None if chunk is None else min(chunk, len(seeds_S))
  budget = engine.default_max_memory(p.base.weights) if max_memory is None else max_memory
  while True:
    plans = [plan for _, plan in engine.plan_passes(p.base, p.archs, p.depths, len(seeds_S), budget, chunk, redraw)]
    try:
      by_arch = engine.measure_archs(p.base, p.archs, p.depths, seeds_S, base_key, chunk, max_memory=budget,
                                     redraw=redraw)
      break
    except Exception as error:  # noqa: BLE001 - only out-of-memory is retried
      if not _out_of_memory(error) or all(plan.chunk == 1 and not plan.kept_layers for plan in plans):
        raise
      seeds_per_call = max(plan.chunk for plan in plans)
      chunk = max(1, seeds_per_call // 2)
      budget //= 2
      warn(f"out of memory with {seeds_per_call} seeds per call ({p.base.loss}, d={p.base.d}); "
           f"retrying with {chunk} and a memory budget of {budget / 2**30:.3g} GiB")
  return [
      GradNorms.from_depth_result(dataclasses.replace(p.base, arch=arch, L=L), seeds_S, by_arch[arch][L])
      for arch in p.archs
      for L in p.depths
      if (arch, L) in p.cells
  ]


def nonfinite(results: Sequence[GradNorms]) -> list[str]:
  """One line per cell with a NaN or inf grad norm or hidden-state norm: where, and how many."""
  lines = []
  for r in results:
    c = r.config
    bad = {name: int((~np.isfinite(g)).sum()) for name, g in r.grad_norm.items()}
    bad["sq_norm"] = int((~np.isfinite(r.sq_norm)).sum())
    bad = {k: v for k, v in bad.items() if v}
    if bad:
      lines.append(f"non-finite values in {c.arch} loss={c.loss} d={c.d} L={c.L}: " + ", ".join(f"{k} x{v}" for k, v in bad.items()))
  return lines


def pass_depth_metrics(results: Sequence[GradNorms], base_key: jax.Array) -> pd.DataFrame:
  """Effective-depth metrics of the measured cells, on the same samples (same base key and seeds).

  Returns:
    tidy frame, columns ``depth_metrics.COLUMNS``, one row per (cell, seed, layer, metric).
  """
  by_model = {}  # the cells of one model but for L (and their seeds): one call, one pass where the depths share it
  for r in results:
    by_model.setdefault((dataclasses.replace(r.config, L=1), tuple(r.seeds)), []).append(r.config.L)
  frames = [depth_metrics.depth_metrics_of_depths(cfg, depths, list(seeds), base_key)
            for (cfg, seeds), depths in by_model.items()]
  return pd.concat(frames, ignore_index=True)


def memory_shortfall(passes: Sequence[Pass], max_memory: int) -> int:
  """The bytes a call of ``max_memory`` bytes lacks to run the smallest call of some pass (one seed
  per device, no weights kept); 0 when every pass fits."""
  smallest = max((jax.local_device_count() * engine.seed_bytes(p.base, p.archs, p.depths).fixed for p in passes),
                 default=0)
  return max(0, smallest - max_memory)


def seed_chunks(p: Pass, chunk: int | None, max_memory: int | None = None, redraw: bool = False) -> list[tuple[int, ...]]:
  """The seed chunks a pass is measured and stored in: as many seeds as the engine measures per call.

  A seed's numbers do not depend on the seeds measured with it (:mod:`normtheory.engine`),
  so storing chunk by chunk changes no number.

  Args:
    p: the pass.
    chunk, max_memory, redraw: as in :func:`run_pass`.
  """
  budget = engine.default_max_memory(p.base.weights) if max_memory is None else max_memory
  plans = engine.plan_passes(p.base, p.archs, p.depths, len(p.seeds), budget,
                             None if chunk is None else min(chunk, len(p.seeds)), redraw)
  size = max(plan.chunk for _, plan in plans)
  return [p.seeds[start : start + size] for start in range(0, len(p.seeds), size)]


def run(
    passes: Sequence[Pass],
    store: ResultsStore,
    base_key: jax.Array,
    chunk: int | None,
    on_cells: Callable[[int], None] = lambda k: None,
    depth: bool = False,
    warn: Callable[[str], None] = print,
    max_memory: int | None = None,
    redraw: bool = False,
) -> list[Failure]:
  """Measure every pass, storing each seed chunk as it finishes; ``on_cells(k)`` after each pass of k cells.

  Each chunk of seeds (:func:`seed_chunks`) is appended to the store as soon as it is
  measured, so an interrupted pass loses at most the chunk in flight and the same
  command resumes from the stored chunks. A chunk that raises is recorded and the
  rest of its pass skipped, so every other pass is still measured and stored;
  non-finite norms are stored as measured (never dropped or averaged away), reported
  through ``warn`` and listed in meta.json. Once no later pass has a pass's width, its
  compiled programs are dropped (:func:`jax.clear_caches`), so a sweep over many widths
  holds the programs of one at a time.

  Args:
    passes: from :func:`plan`.
    store: the results store to append to.
    base_key: the base PRNG key (seed s samples from ``fold_in(base_key, s)``).
    chunk: seeds per compiled engine call (None: from the memory budget).
    on_cells: progress callback.
    depth: also compute and store the effective-depth metrics of every measured cell.
    warn: where warnings go (out-of-memory retries, non-finite values, failures).
    max_memory: bytes one engine call may hold (None: the engine's default, from free memory).
    redraw: draw the weights again in the backward pass instead of keeping them (same numbers).

  Returns:
    the passes that failed.
  """
  failures = []
  for i, p in enumerate(passes):
    if i and all(q.base.d != passes[i - 1].base.d for q in passes[i:]):
      jax.clear_caches()  # no later pass runs the last width's programs: free them (~90 MB each, conditional)
    for seeds in seed_chunks(p, chunk, max_memory, redraw):
      start = time.perf_counter()
      try:
        results = run_pass(dataclasses.replace(p, seeds=seeds), base_key, chunk, warn, max_memory, redraw)
        metrics = pass_depth_metrics(results, base_key) if depth else None
      except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
        cells = sorted((arch, p.base.loss, p.base.d, L) for arch, L in p.cells)
        failures.append(Failure(cells, f"{type(error).__name__}: {error}"))
        warn(f"failed: {len(cells)} cells of loss={p.base.loss} d={p.base.d}: {failures[-1].error.splitlines()[0]}")
        store.record_problem({"failed_cells": cells, "error": failures[-1].error})
        break
      for line in nonfinite(results):
        warn(line)
        store.record_problem({"nonfinite": line})
      store.append(results, time.perf_counter() - start, metrics)
    else:  # every chunk stored
      on_cells(len(p.cells))
  return failures


def _axis(values, name: str) -> tuple:
  """One grid axis as a tuple of distinct values in the given order (a bare value is an axis of one)."""
  values = (values,) if isinstance(values, (str, int, np.integer)) else tuple(values)
  if not values:
    raise ValueError(f"measure_grid: {name} is empty")
  return tuple(dict.fromkeys(values))


def measure_grid(
    archs: str | Sequence[str],
    widths: int | Sequence[int],
    depths: int | Sequence[int],
    seeds: int | Sequence[int] = 8,
    key: int | jax.Array = 0,
    chunk: int | None = None,
    with_depth_metrics: bool = False,
    **config,
) -> Frames:
  """Exact gradient norms of every (arch, d, L) cell of a grid, as tidy tables, without a store.

  The same passes as the sweep CLI (:func:`plan`, :func:`run_pass`): cells that share
  d share one forward pass over all depths and one weight draw per layer for all
  architectures (:func:`normtheory.engine.measure_archs`), so the values equal the
  CLI's for the same base key and seeds, and :func:`normtheory.grad_norms` per cell to
  float rounding (the pass batches the cotangents of several depths).

  Example:
    >>> import normtheory as nt
    >>> frames = nt.measure_grid(["post", "pre"], [16], [1, 2, 4], seeds=3, n=4)
    >>> len(frames.grad)  # 2 archs x (1 + 2 + 4) layers x 3 seeds x 6 weights
    252

  Args:
    archs: architecture names (``normtheory.ARCHS``), or one name.
    widths: model widths d, or one.
    depths: numbers of layers L, or one.
    seeds: number of samples (indices 0..seeds-1) or explicit seed indices.
    key: base PRNG key, or an int seed for a ``prng.DEFAULT_PRNG`` key; sample s draws
      everything from ``fold_in(key, s)``.
    chunk: seeds per compiled call (memory knob; results do not depend on it).
    with_depth_metrics: also measure the effective-depth metrics of every cell
      (``frames.depth``; L+1 forward passes per cell).
    **config: every other :class:`normtheory.Config` field (n, loss, d_ff, eps, dtype,
      batch, ...), shared by all cells; ``d_ff`` None (default) means d in each cell.

  Returns:
    :class:`normtheory.store.Frames` with the tables of every cell (``meta`` and
    ``fits`` are None). Non-finite values are kept as measured and reported with a
    ``RuntimeWarning``.

  Raises:
    ValueError: a bad axis, seed list, chunk or Config field; ``arch``, ``d`` or ``L``
      given as a config field instead of an axis.
  """
  axes_in_config = sorted({"arch", "d", "L"} & set(config))
  if axes_in_config:
    raise ValueError(f"measure_grid: give {', '.join(axes_in_config)} as the archs/widths/depths axes, not as config")
  d_ff = config.pop("d_ff", None)
  base = Config(**config)
  chunk = check_chunk(chunk)
  seeds_S = seed_indices(seeds)
  base_key = as_key(key)
  passes, _ = plan(base, _axis(archs, "archs"), (base.loss,), _axis(widths, "widths"), _axis(depths, "depths"),
                   seeds_S, {}, d_ff=d_ff)
  warn = lambda line: warnings.warn(line, RuntimeWarning, stacklevel=3)
  results, depth = [], []
  for p in passes:
    measured = run_pass(p, base_key, chunk, warn)
    results += measured
    if with_depth_metrics:
      depth.append(pass_depth_metrics(measured, base_key))
  for line in nonfinite(results):
    warn(line)
  tables = concat_tables(results) | ({DEPTH_FILE: pd.concat(depth, ignore_index=True)} if depth else {})
  return Frames.from_tables(tables)


def summary_table(grad: pd.DataFrame) -> pd.DataFrame:
  """Last-layer ||dL/dW2|| as "mean ± std" over seeds: one row per cell without L, one column per L.

  A cell with any NaN/inf value shows "NON-FINITE xk" instead of a mean.

  Args:
    grad: the store's grad-norm table.
  """
  last = grad[(grad["param"] == "W2") & (grad["layer"] == grad["L"])]
  last = last.assign(bad=~np.isfinite(last["grad_norm"]))
  stats = last.groupby(list(CELL_COLUMNS)).agg(mean=("grad_norm", "mean"), std=("grad_norm", "std"), bad=("bad", "sum"))
  stats = stats.reset_index()
  stats["value"] = [
      f"NON-FINITE x{b}" if b else f"{m:.4g} ± {s:.2g}"
      for m, s, b in zip(stats["mean"], stats["std"].fillna(0.0), stats["bad"])
  ]
  return stats.pivot(index=[c for c in CELL_COLUMNS if c != "L"], columns="L", values="value")
