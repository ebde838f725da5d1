"""Run a grid of cells into a results store: plan, measure, append, summarise.

Cells that share (arch, loss, d) form one *pass*: the engine measures all their
depths from one forward pass (:func:`normtheory.engine.measure_depths`). Only the
(cell, seed) pairs missing from the store are measured, so an interrupted sweep
resumes with the same command and a larger ``--seeds`` adds just the new seeds.
With ``depth=True`` each pass also computes the effective-depth metrics
(:func:`normtheory.depth_metrics.depth_metrics`) of its cells, on the same samples
(same base key and seeds), and stores them with the gradient norms.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from normtheory import depth_metrics, engine
from normtheory.config import Config
from normtheory.measure import GradNorms
from normtheory.store import CELL_COLUMNS, ResultsStore


@dataclasses.dataclass(frozen=True)
class Pass:
  """One engine call: a model family, the depths and the seeds to measure."""

  base: Config  # the model with L replaced by each of ``depths``
  depths: tuple[int, ...]
  seeds: tuple[int, ...]


def plan(
    base: Config, archs, losses, widths, depths, n_seeds: int, stored: dict[tuple, set[int]]
) -> tuple[list[Pass], int]:
  """The passes needed to complete the grid, and the number of cells already complete.

  Args:
    base: a Config carrying the shared fields (n, eps, dtype, vocab, d_ff or None for d).
    archs, losses, widths, depths: the grid axes.
    n_seeds: seeds 0..n_seeds-1 are wanted in every cell.
    stored: cell tuple -> stored seeds (``ResultsStore.stored_seeds``).
  """
  wanted = set(range(n_seeds))
  passes, complete = [], 0
  d_ff_given = base.d_ff if base.d_ff != base.d else None
  for arch, loss, d in itertools.product(archs, losses, widths):
    family = dataclasses.replace(base, arch=arch, loss=loss, d=d, d_ff=d_ff_given or d)
    missing_depths, missing_seeds = [], set()
    for L in depths:
      missing = wanted - stored.get((arch, loss, d, L, family.n, family.d_ff), set())
      if missing:
        missing_depths.append(L)
        missing_seeds |= missing
      else:
        complete += 1
    if missing_depths:
      passes.append(Pass(family, tuple(missing_depths), tuple(sorted(missing_seeds))))
  return passes, complete


def run_pass(p: Pass, base_key, chunk: int | None) -> list[GradNorms]:
  """Measure one pass; one GradNorms per depth."""
  seeds_S = np.asarray(p.seeds)
  by_depth = engine.measure_depths(p.base, p.depths, seeds_S, base_key, chunk)
  return [
      GradNorms.from_depth_result(dataclasses.replace(p.base, L=L), seeds_S, by_depth[L]) for L in p.depths
  ]


def pass_depth_metrics(p: Pass, base_key) -> pd.DataFrame:
  """Effective-depth metrics of every cell of one pass, on the samples :func:`run_pass` measures.

  Returns:
    tidy frame, columns ``depth_metrics.COLUMNS``, one row per (depth, seed, layer, metric).
  """
  frames = [depth_metrics.depth_metrics(dataclasses.replace(p.base, L=L), p.seeds, base_key) for L in p.depths]
  return pd.concat(frames, ignore_index=True)


def run(
    passes: list[Pass],
    store: ResultsStore,
    base_key,
    chunk: int | None,
    on_cells: Callable[[int], None] = lambda k: None,
    depth: bool = False,
) -> None:
  """Measure every pass and append it to the store; ``on_cells(k)`` after each pass of k cells.

  Args:
    passes: from :func:`plan`.
    store: the results store to append to.
    base_key: the base PRNG key (seed s samples from ``fold_in(base_key, s)``).
    chunk: seeds per compiled engine call.
    on_cells: progress callback.
    depth: also compute and store the effective-depth metrics of every measured cell.
  """
  for p in passes:
    start = time.perf_counter()
    results = run_pass(p, base_key, chunk)
    metrics = pass_depth_metrics(p, base_key) if depth else None
    store.append(results, time.perf_counter() - start, metrics)
    on_cells(len(p.depths))


def summary_table(grad: pd.DataFrame, cells: set[tuple] | None = None) -> pd.DataFrame:
  """Last-layer ||dL/dW2|| as "mean ± std" over seeds: one row per (arch, loss, d, n, d_ff), one column per L.

  Args:
    grad: the store's grad-norm table.
    cells: restrict to these cell tuples (default: all).
  """
  last = grad[(grad["param"] == "W2") & (grad["layer"] == grad["L"])]
  if cells is not None:
    last = last[pd.MultiIndex.from_frame(last[CELL_COLUMNS]).isin(list(cells))]
  stats = last.groupby(CELL_COLUMNS)["grad_norm"].agg(["mean", "std"]).reset_index()
  stats["value"] = [f"{m:.4g} ± {s:.2g}" for m, s in zip(stats["mean"], stats["std"].fillna(0.0))]
  return stats.pivot(index=["arch", "loss", "d", "n", "d_ff"], columns="L", values="value")
