"""The results store: tidy CSVs plus meta.json, written atomically, resumable.

Layout of a store directory (the contract other tools read; columns in
:mod:`normtheory.schema`, where ``CELL`` is ``arch,loss,d,L,n,d_ff,batch,attention,heads,inputs``):

* ``grad_norms.csv``: ``CELL,seed,layer,param,grad_norm`` (layers 1..L; text inputs
  add the token embedding as ``param = E, layer = 0``)
* ``hidden_norms.csv``: ``CELL,seed,layer,sq_norm``: ``||x_l||²/n`` of the state
  entering layer l = 1..L, and ``layer = L + 1`` the state leaving the last layer
  (before any final LN); over all B·n rows of a sample (stores written before this
  row existed hold layers 1..L only)
* ``ln_jacobian.csv``: ``CELL,seed,layer,ln,value``: the LN Jacobian's spectral norm
  ``1/sqrt(var + eps)`` averaged over the rows at the input of layer l's k-th
  LayerNorm (``ln = k``, forward order); the final LayerNorm is ``layer = L + 1, ln = 1``
* ``depth_metrics.csv`` (only from runs with depth metrics):
  ``CELL,seed,layer,metric,value`` (:mod:`normtheory.depth_metrics`)
* ``meta.json``: the store's fixed settings (dtype, eps, base seed, PRNG, vocab,
  tied; a setting missing from an older store reads as its default), one
  entry per run (argv, package versions, JAX backend and device kind) and one per
  measured pass (its cells, seeds and wall time).

A *cell* is one value of the cell columns; settings that are not CSV columns are
fixed per store, so two runs with a different dtype or base seed cannot mix rows
that nobody could tell apart. Every write replaces a file by ``os.replace`` of a
complete temporary file (depth metrics, hidden norms, LN Jacobians first, grad norms last,
meta.json after), so a crash or Ctrl-C leaves either the old or the new file, never
a partial row, and a (cell, seed) counts as stored only once its grad-norm rows are
in place. A remeasured pair replaces its rows in the files the pass writes; the
samples of a (cell, seed) are fixed by the store's settings, so rows it keeps in
the other files (depth metrics from an earlier run) still describe the same samples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from normtheory.schema import (
    CELL_COLUMNS,
    DEPTH_FILE,
    GRAD_FILE,
    HIDDEN_FILE,
    LN_JACOBIAN_FILE,
    META_FILE,
    SETTING_DEFAULTS,
    TABLES,
    StoreError,
    atomic_write,
    cell_key,
    read_table,
)


def check_writable(out_dir: str | os.PathLike) -> None:
  """Raise StoreError unless ``out_dir`` exists as a writable directory or can be created."""
  path = Path(out_dir).resolve()
  probe = path
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
    raise StoreError(f"--out {out_dir}: not a writable directory")


class ResultsStore:
  """A results directory with fixed settings, opened for appending.

  Args:
    out_dir: the directory (created on the first write).
    settings: the store-level settings of this run; must equal those already stored.
  """

  def __init__(self, out_dir: str | os.PathLike, settings: dict):
    self.path = Path(out_dir)
    self.settings = dict(settings)
    meta_path = self.path / META_FILE
    self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"settings": self.settings, "runs": [], "passes": []}
    self.meta["settings"] = {k: v for k, v in SETTING_DEFAULTS.items() if k in self.settings} | self.meta["settings"]
    if self.meta["settings"] != self.settings:
      diff = {k: (self.meta["settings"].get(k), v) for k, v in self.settings.items() if self.meta["settings"].get(k) != v}
      raise StoreError(f"--out {out_dir} holds results with other settings (stored, asked): {diff}; use another --out")
    self.tables = {name: read_table(self.path, name) for name in TABLES}

  @property
  def grad(self) -> pd.DataFrame:
    """The stored grad-norm rows."""
    return self.tables[GRAD_FILE]

  def stored_seeds(self) -> dict[tuple, set[int]]:
    """cell tuple -> the seeds whose grad-norm rows are stored."""
    if self.grad.empty:
      return {}
    pairs = self.grad[[*CELL_COLUMNS, "seed"]].drop_duplicates()
    out: dict[tuple, set[int]] = {}
    for row in pairs.itertuples(index=False):
      out.setdefault(tuple(row[:-1]), set()).add(int(row[-1]))
    return out

  def start_run(self, run_info: dict) -> None:
    """Record one invocation (argv, versions, backend) in meta.json."""
    self.meta["runs"].append(run_info)
    self._write_meta()

  def append(self, results: list, wall_time_s: float, depth: pd.DataFrame | None = None) -> None:
    """Add measured cells (replacing any rows with the same cell and seed) and record the pass.

    Args:
      results: one :class:`normtheory.GradNorms` per measured cell.
      wall_time_s: the pass's wall time, for meta.json.
      depth: the same cells' depth-metric rows (columns ``depth_metrics.COLUMNS``), if measured.
    """
    new = {} if depth is None else {DEPTH_FILE: [depth]}
    new |= {HIDDEN_FILE: [r.hidden_frame() for r in results],
            LN_JACOBIAN_FILE: [r.ln_jacobian_frame() for r in results],
            GRAD_FILE: [r.to_frame() for r in results]}
    self.path.mkdir(parents=True, exist_ok=True)
    for name, frames in new.items():  # grad norms last: they mark a (cell, seed) as stored
      self.tables[name] = _replace_rows(self.tables[name], pd.concat(frames, ignore_index=True))
      atomic_write(self.path / name, self.tables[name].to_csv(index=False))
    self.meta["passes"].append({
        "cells": [dict(zip(CELL_COLUMNS, cell_key(r.config))) | {"seeds": [int(s) for s in r.seeds]} for r in results],
        "wall_time_s": round(wall_time_s, 4),
        "depth_metrics": depth is not None,
    })
    self._write_meta()

  def absorb(self, other: "ResultsStore") -> None:
    """Fold another store's rows (and its runs, passes and problems) into this one."""
    self.path.mkdir(parents=True, exist_ok=True)
    for name in (DEPTH_FILE, HIDDEN_FILE, LN_JACOBIAN_FILE, GRAD_FILE):  # grad norms last: they mark a (cell, seed) as stored
      if not other.tables[name].empty:
        self.tables[name] = _replace_rows(self.tables[name], other.tables[name])
        atomic_write(self.path / name, self.tables[name].to_csv(index=False))
    for key in ("runs", "passes", "problems"):
      self.meta.setdefault(key, []).extend(other.meta.get(key, []))
    self._write_meta()

  def record_problem(self, problem: dict) -> None:
    """Note a failed pass or non-finite values in meta.json (under "problems")."""
    self.meta.setdefault("problems", []).append(problem)
    self._write_meta()

  def _write_meta(self) -> None:
    self.path.mkdir(parents=True, exist_ok=True)
    atomic_write(self.path / META_FILE, json.dumps(self.meta, indent=1) + "\n")


def _replace_rows(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
  """``old`` without the (cell, seed) pairs present in ``new``, then ``new``."""
  if old.empty:
    return new.reset_index(drop=True)
  keys = [*CELL_COLUMNS, "seed"]
  incoming = pd.MultiIndex.from_frame(new[keys].drop_duplicates())
  keep = ~pd.MultiIndex.from_frame(old[keys]).isin(incoming)
  return pd.concat([old[keep], new], ignore_index=True)
