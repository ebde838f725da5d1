"""The results store: tidy CSVs plus meta.json, written atomically, resumable.

Layout of a store directory (the contract other tools read; columns in
:mod:`normtheory.schema`, where ``CELL`` is ``arch,loss,d,L,n,d_ff,batch,attention,heads,inputs``):

* ``grad_norms.csv``: ``CELL,seed,layer,param,grad_norm``
* ``hidden_norms.csv``: ``CELL,seed,layer,sq_norm``
* ``depth_metrics.csv`` (only from runs with depth metrics):
  ``CELL,seed,layer,metric,value`` (:mod:`normtheory.depth_metrics`)
* ``meta.json``: the store's fixed settings (dtype, eps, base seed, PRNG, ...), one
  entry per run (argv, package versions, JAX backend and device kind) and one per
  measured pass (its cells, seeds and wall time).
* ``fits.json``: the fits of :mod:`normtheory.fit` (written by the sweep and
  ``fit.write_fits``).

:func:`load` reads all of it into :class:`Frames`, the same container
:func:`normtheory.measure_grid` returns without a store.

A *cell* is one value of the cell columns; settings that are not CSV columns are
fixed per store, so two runs with a different dtype or base seed cannot mix rows
that nobody could tell apart. Every write replaces a file by ``os.replace`` of a
complete temporary file (depth metrics and hidden norms first, grad norms last,
meta.json after), so a crash or Ctrl-C leaves either the old or the new file, never
a partial row, and a (cell, seed) counts as stored only once its grad-norm rows are
in place. A remeasured pair replaces its rows in the files the pass writes; the
samples of a (cell, seed) are fixed by the store's settings, so rows it keeps in
the other files (depth metrics from an earlier run) still describe the same samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from normtheory.schema import (
    CELL_COLUMNS,
    DEPTH_FILE,
    FITS_FILE,
    GRAD_FILE,
    HIDDEN_FILE,
    LN_JACOBIAN_FILE,
    META_FILE,
    TABLES,
    StoreError,
    atomic_write,
    cell_key,
    empty_table,
    read_table,
)

if TYPE_CHECKING:
  from normtheory.measure import GradNorms

# The field of Frames that holds each table of a store.
FRAME_TABLES = {"grad": GRAD_FILE, "hidden": HIDDEN_FILE, "depth": DEPTH_FILE, "ln_jacobian": LN_JACOBIAN_FILE}


class Frames(NamedTuple):
  """The tidy tables of a grid of cells (a store on disk, or measured in memory).

  Every table has exactly the columns of ``schema.TABLES`` and is empty (with those
  columns) when nothing was measured for it.

  Attributes:
    grad: ``grad_norms.csv``: one row per (cell, seed, layer, param).
    hidden: ``hidden_norms.csv``: one row per (cell, seed, layer).
    depth: ``depth_metrics.csv``: one row per (cell, seed, layer, metric).
    ln_jacobian: ``ln_jacobian.csv``: one row per (cell, seed, layer, ln).
    meta: the store's ``meta.json`` (None when there is none).
    fits: the store's ``fits.json`` (None when there is none).
  """

  grad: pd.DataFrame
  hidden: pd.DataFrame
  depth: pd.DataFrame
  ln_jacobian: pd.DataFrame
  meta: dict[str, Any] | None = None
  fits: dict[str, Any] | None = None

  @classmethod
  def from_tables(
      cls, tables: Mapping[str, pd.DataFrame], meta: dict | None = None, fits: dict | None = None
  ) -> Frames:
    """Frames from ``{file name: frame}``; a table not given is empty."""
    unknown = set(tables) - set(FRAME_TABLES.values())
    if unknown:
      raise ValueError(f"Frames has no field for {', '.join(sorted(unknown))}")
    frames = {field: tables.get(name, empty_table(name)) for field, name in FRAME_TABLES.items()}
    return cls(**frames, meta=meta, fits=fits)


def concat_tables(results: Sequence[GradNorms]) -> dict[str, pd.DataFrame]:
  """The tables of several measured cells (:meth:`GradNorms.tables`), each concatenated over the cells."""
  parts: dict[str, list[pd.DataFrame]] = {}
  for r in results:
    for name, frame in r.tables().items():
      parts.setdefault(name, []).append(frame)
  return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
  """A store's JSON file as a dict, None if absent; ``StoreError`` naming the file if it is not JSON."""
  path = Path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise StoreError(f"{path}: not valid JSON ({error})") from None


def load(out_dir: str | os.PathLike) -> Frames:
  """Every table of a results store, with its meta.json and fits.json.

  Example:
    >>> import normtheory as nt
    >>> frames = nt.load("results/grad_scaling")  # doctest: +SKIP
    >>> nt.fit.fit_frame(frames.grad)  # doctest: +SKIP

  Args:
    out_dir: the store directory (``--out`` of the sweep).

  Returns:
    :class:`Frames`; tables the store lacks are empty. Stores written before a
    column existed load with its default (:func:`normtheory.schema.read_table`).

  Raises:
    FileNotFoundError: ``out_dir`` is not a directory.
    StoreError: a file cannot be read or has a header of no known layout.
  """
  path = Path(out_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"no results directory {path}")
  tables = {name: read_table(path, name) for name in FRAME_TABLES.values()}
  return Frames.from_tables(tables, meta=read_json(path / META_FILE), fits=read_json(path / FITS_FILE))


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

  def __init__(self, out_dir: str | os.PathLike, settings: dict[str, Any]):
    self.path = Path(out_dir)
    self.settings = dict(settings)
    meta_path = self.path / META_FILE
    self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"settings": self.settings, "runs": [], "passes": []}
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

  def append(self, results: Sequence[GradNorms], wall_time_s: float, depth: pd.DataFrame | None = None) -> None:
    """Add measured cells (replacing any rows with the same cell and seed) and record the pass.

    Args:
      results: one :class:`normtheory.GradNorms` per measured cell.
      wall_time_s: the pass's wall time, for meta.json.
      depth: the same cells' depth-metric rows (columns ``depth_metrics.COLUMNS``), if measured.
    """
    new = concat_tables(results) | ({} if depth is None else {DEPTH_FILE: depth})
    self.path.mkdir(parents=True, exist_ok=True)
    for name in sorted(new, key=lambda name: name == GRAD_FILE):  # grad norms last: they mark a (cell, seed) as stored
      self.tables[name] = _replace_rows(self.tables[name], new[name])
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
    for name in (DEPTH_FILE, HIDDEN_FILE, GRAD_FILE):  # grad norms last: they mark a (cell, seed) as stored
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
