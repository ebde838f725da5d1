"""The results store: typed Parquet parts plus meta.json, appended chunk by chunk, resumable.

Layout of a store directory (the contract other tools read; columns in
:mod:`normtheory.schema`, where ``CELL`` is ``arch,loss,d,L,n,d_ff,batch,attention,heads,inputs``;
the files of each table in :mod:`normtheory.parts`):

* ``grad_norms/part-*.parquet``: ``CELL,seed,layer,param,grad_norm`` (layers 1..L; text
  inputs add the token embedding as ``param = E, layer = 0``)
* ``hidden_norms/part-*.parquet``: ``CELL,seed,layer,sq_norm``: ``||x_l||²/n`` of the state
  entering layer l = 1..L, and ``layer = L + 1`` the state leaving the last layer
  (before any final LN); over all B·n rows of a sample (stores written before this
  row existed hold layers 1..L only)
* ``ln_jacobian/part-*.parquet``: ``CELL,seed,layer,ln,value``: the LN Jacobian's spectral
  norm ``1/sqrt(var + eps)`` averaged over the rows at the input of layer l's k-th
  LayerNorm (``ln = k``, forward order); the final LayerNorm is ``layer = L + 1, ln = 1``
* ``depth_metrics/part-*.parquet`` (only from runs with depth metrics):
  ``CELL,seed,layer,metric,value`` (:mod:`normtheory.depth_metrics`)
* ``meta.json``: the store's fixed settings (dtype, eps, base seed, PRNG, vocab,
  tied; a setting missing from an older store reads as its default), one
  entry per run (argv, package versions, JAX backend and device kind) and one per
  stored chunk (its cells, seeds, wall time and part id).
* ``fits.json``: the fits of :mod:`normtheory.fit` (written by the sweep and
  ``fit.write_fits``).

* ``.lock``: only while a sweep writes the store (:class:`StoreLock`).
* ``parts/process-p/``: only while a ``--distributed`` run is unfinished: the rows
  process p measured, each a store of this layout (:mod:`normtheory.distributed`).

Every folder reads as one table in pandas, polars, DuckDB or R
(``pd.read_parquet("DIR/grad_norms")``); :func:`load` reads all of it into
:class:`Frames`, the same container :func:`normtheory.measure_grid` returns without a
store, and :func:`read` reads one table's selected columns and rows (the fits and
figures read only what they use). :func:`export_csv` writes the older CSV layout.

**Appending.** Each stored chunk of seeds adds one part per table and rewrites
nothing that is stored: parts appear by atomic rename, the grad-norm part last,
so a (cell, seed) counts as stored once its grad-norm part is in place, and a kill
loses at most the chunk being written. Pairs already stored are never written
twice: a chunk's rows of a stored (cell, seed) are dropped (the samples of a pair
are fixed by the store's settings, so the stored rows describe the same samples).
Which pairs are stored is read from the parts' footers, not from their values.

**Stores written before Parquet** hold ``grad_norms.csv``, ``hidden_norms.csv``,
``ln_jacobian.csv``, ``depth_metrics.csv`` (same columns). They load, resume and
report as before, with the same refusals (:func:`normtheory.schema.read_table`).
The first write converts them: each CSV becomes the part ``parts.CSV_ID`` of its
table, grad norms last; once that grad-norm part is in place the CSVs are ignored
and deleted (a kill before that leaves the CSV store as it was: the next write
converts again).

A *cell* is one value of the cell columns; settings that are not columns are
fixed per store, so two runs with a different dtype or base seed cannot mix rows
that nobody could tell apart. A store is opened only if every file can be trusted: a
CSV table that :func:`normtheory.schema.read_table` refuses, a part that
:func:`normtheory.parts.scan` refuses (unreadable, another layout, pairs stored
twice), a meta.json that is not JSON or has no "settings", tables without a
meta.json, or other settings raise :class:`~normtheory.schema.StoreError` before
anything is written. A writer holds :class:`StoreLock` (``DIR/.lock``) so that two
sweeps never interleave their writes.
"""

from __future__ import annotations

import errno
import functools
import json
import operator
import os
from collections.abc import Mapping, Sequence
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

try:
  import fcntl
except ImportError:  # not POSIX: the owner record alone decides
  fcntl = None

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from normtheory import parts, schema
from normtheory.schema import (
    CELL_COLUMNS,
    DEPTH_FILE,
    FITS_FILE,
    GRAD_FILE,
    HIDDEN_FILE,
    LN_JACOBIAN_FILE,
    META_FILE,
    SETTING_DEFAULTS,
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
    grad: ``grad_norms``: one row per (cell, seed, layer, param).
    hidden: ``hidden_norms``: one row per (cell, seed, layer).
    depth: ``depth_metrics``: one row per (cell, seed, layer, metric).
    ln_jacobian: ``ln_jacobian``: one row per (cell, seed, layer, ln).
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
    return json.loads(path.read_bytes())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise StoreError(f"{path}: not JSON ({error})") from None


class Contents:
  """The rows a store directory holds: CSV tables of the older layout (until converted) and committed parts.

  Opening reads every part's footer (:func:`normtheory.parts.scan`); no part's values
  are read until :meth:`read`. A CSV table of an unconverted store is read (with the
  refusals of :func:`normtheory.schema.read_table`) once, when first needed, or all of
  them at once by :meth:`check`.

  Args:
    out_dir: the store directory (need not exist: then it holds nothing).

  Raises:
    StoreError: naming the file that cannot be trusted, or a CSV table whose pairs a part repeats.
  """

  def __init__(self, out_dir: str | os.PathLike):
    self.path = Path(out_dir)
    self.index = parts.scan(self.path)
    self.converted = parts.CSV_ID in self.index.ids()
    present = [name for name in schema.TABLES if (self.path / name).exists()]
    self.leftover_csv = [self.path / name for name in present] if self.converted else []
    self.csv_tables = [] if self.converted else present
    self._csv: dict[str, pd.DataFrame] = {}
    if GRAD_FILE in self.csv_tables and self.index.parts[GRAD_FILE]:
      for part in self.index.parts[GRAD_FILE]:
        repeated = part.pairs & self.csv_pairs()
        if repeated:
          raise StoreError(f"{part.path}: repeats {len(repeated)} (cell, seed) pairs stored in {self.path / GRAD_FILE}")

  def csv(self, table: str) -> pd.DataFrame:
    """A CSV table of an unconverted store (read once)."""
    if table not in self._csv:
      self._csv[table] = read_table(self.path, table)
    return self._csv[table]

  def check(self) -> None:
    """Read every CSV table of an unconverted store, so that one that cannot be trusted is refused now."""
    for table in self.csv_tables:
      self.csv(table)

  def csv_pairs(self) -> frozenset[tuple]:
    """The (cell, seed) pairs of an unconverted store's grad_norms.csv."""
    return frozenset(parts.pairs_of(self.csv(GRAD_FILE))) if GRAD_FILE in self.csv_tables else frozenset()

  def pairs(self) -> frozenset[tuple]:
    """Every stored (cell, seed) pair, in ``parts.key_columns()`` order."""
    return self.csv_pairs() | self.index.pairs()

  def has(self, table: str) -> bool:
    """Whether the store holds the table (a CSV file or any part of it)."""
    return table in self.csv_tables or bool(self.index.parts[table])

  def read(self, table: str, columns: Sequence[str] | None = None, where: pc.Expression | None = None) -> pd.DataFrame:
    """One table's rows (CSV rows first, then the parts in write order): only ``columns``, only the rows ``where``
    selects (a ``pyarrow.compute`` expression), as :func:`read` describes."""
    return self._read(table, self.index.parts[table], columns, where)

  def cells(self, table: str) -> frozenset[tuple]:
    """The cells (``CELL_COLUMNS`` tuples) that a table holds rows of: from the parts' footers (and the rows
    of an unconverted CSV table)."""
    csv = parts.pairs_of(self.csv(table)) if table in self.csv_tables else []
    return frozenset(pair[:-1] for pair in [*csv, *(p for part in self.index.parts[table] for p in part.pairs)])

  def read_cell(self, table: str, cell: tuple, columns: Sequence[str] | None = None,
                where: pc.Expression | None = None) -> pd.DataFrame:
    """One cell's rows of a table (a ``CELL_COLUMNS`` tuple, as :meth:`cells` gives it), as :meth:`read` reads
    them (same order), opening only the parts whose footers hold the cell. The selection tests only the cell
    columns in which the table's cells differ (every row belongs to one of them), so the scan decodes those."""
    cells = self.cells(table)
    varying = [c for k, c in enumerate(CELL_COLUMNS) if any(other[k] != cell[k] for other in cells)]
    selected = cell_selection(cell, varying) if where is None else cell_selection(cell, varying) & where
    holding = [part for part in self.index.parts[table] if any(pair[:-1] == cell for pair in part.pairs)]
    return self._read(table, holding, columns, selected)

  def _read(self, table: str, table_parts: Sequence[parts.Part], columns: Sequence[str] | None,
            where: pc.Expression | None) -> pd.DataFrame:
    pieces = []
    if table in self.csv_tables:
      csv = parts.plain(pa.Table.from_pandas(self.csv(table), preserve_index=False))
      pieces.append((csv if where is None else csv.filter(where)).select(list(columns or schema.TABLES[table])))
    if table_parts or not pieces:
      pieces.append(parts.read(table_parts, table, columns, where))
    return parts.to_frame(parts.compact(pieces))


def cell_selection(cell: tuple, columns: Sequence[str] = CELL_COLUMNS) -> pc.Expression:
  """The selection of one cell's rows (a ``CELL_COLUMNS`` tuple) by its values in ``columns`` (default all)."""
  values = dict(zip(CELL_COLUMNS, cell, strict=True))
  return functools.reduce(operator.and_, (pc.field(c) == values[c] for c in columns), pc.scalar(True))


def last_layer(param: str = "W2") -> pc.Expression:
  """The selection of one weight's grad-norm rows at the last layer ``layer = L`` (Theorem 1's quantity for W2)."""
  return (pc.field("param") == param) & (pc.field("layer") == pc.field("L"))


def read(out_dir: str | os.PathLike, table: str, columns: Sequence[str] | None = None,
         where: pc.Expression | None = None) -> pd.DataFrame:
  """One table of a store, reading only the columns and rows asked for (pushed into the Parquet scan).

  Example:
    >>> import pyarrow.compute as pc
    >>> last_w2 = read("results/run", GRAD_FILE,  # doctest: +SKIP
    ...                where=(pc.field("param") == "W2") & (pc.field("layer") == pc.field("L")))

  Args:
    out_dir: the store directory.
    table: a key of ``schema.TABLES``.
    columns: the columns to return (default all, in table order).
    where: a ``pyarrow.compute`` expression over the table's columns; None: every row.

  Returns:
    DataFrame with the typed columns of :func:`normtheory.schema.read_table` (strings ``str``,
    integers int64, the value float64); a table the store lacks reads as empty.

  Raises:
    FileNotFoundError: ``out_dir`` is not a directory.
    StoreError: a file cannot be trusted (:class:`Contents`).
  """
  path = Path(out_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"no results directory {path}")
  return Contents(path).read(table, columns, where)


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
    column existed load with its default (``schema.CELL_DEFAULTS``), CSV stores as
    :func:`normtheory.schema.read_table` reads them.

  Raises:
    FileNotFoundError: ``out_dir`` is not a directory.
    StoreError: a file cannot be read or has a layout of no known version.
  """
  path = Path(out_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"no results directory {path}")
  contents = Contents(path)
  tables = {name: contents.read(name) for name in FRAME_TABLES.values() if contents.has(name)}
  return Frames.from_tables(tables, meta=read_json(path / META_FILE), fits=read_json(path / FITS_FILE))


def export_csv(out_dir: str | os.PathLike, csv_dir: str | os.PathLike) -> list[Path]:
  """Write a store in the CSV layout (one ``<table>.csv`` per table, meta.json, fits.json), e.g. for a spreadsheet.

  One line from a shell::

    python -c "import normtheory as nt; nt.export_csv('results/run', 'results/run_csv')"

  The result is a store of the older layout: it loads, resumes and reports like the
  original (its first write converts it back to parts).

  Args:
    out_dir: the store.
    csv_dir: where the CSVs go (created; files of the same name are replaced atomically).

  Returns:
    the files written.
  """
  frames = load(out_dir)
  target = Path(csv_dir)
  target.mkdir(parents=True, exist_ok=True)
  written = []
  for field, name in FRAME_TABLES.items():
    frame = getattr(frames, field)
    if not frame.empty:
      atomic_write(target / name, frame.to_csv(index=False))
      written.append(target / name)
  for name, value in ((META_FILE, frames.meta), (FITS_FILE, frames.fits)):
    if value is not None:
      atomic_write(target / name, (Path(out_dir) / name).read_bytes())
      written.append(target / name)
  return written


def check_writable(out_dir: str | os.PathLike) -> None:
  """Raise StoreError unless ``out_dir`` exists as a writable directory or can be created."""
  path = Path(out_dir).resolve()
  probe = path
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
    raise StoreError(f"--out {out_dir}: not a writable directory")


LOCK_FILE = ".lock"


class StoreLock:
  """An exclusive lock on a store directory, so that two sweeps never interleave their writes.

  The lock is the file ``DIR/.lock`` (created with ``O_CREAT | O_EXCL``) holding the
  owner's pid, host and start time, and an ``flock`` on it held for the owner's
  lifetime. The kernel drops the flock when the owner dies, however it dies, so the
  lock file of a dead owner is stale and the next sweep takes it over. Where the file
  system has no flock, the owner record decides: stale when its host is this host and
  its pid is not running. Release (also on exceptions and Ctrl-C, as a context
  manager) removes the file, and the directories that acquiring created if they are
  left empty.

  Example:
    >>> with StoreLock("results/run") as lock:  # doctest: +SKIP
    ...   ...  # write the store

  Args:
    out_dir: the store directory (created if missing).
  """

  def __init__(self, out_dir: str | os.PathLike):
    self.dir = Path(out_dir)
    self.path = self.dir / LOCK_FILE
    self._fd: int | None = None
    self._created: list[Path] = []

  def acquire(self) -> "StoreLock":
    """Take the lock; StoreError naming the owner if a live process holds it."""
    missing = [p for p in [self.dir, *self.dir.parents] if not p.exists()]
    try:
      self.dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise StoreError(f"{self.dir}: cannot create the directory ({error.strerror})") from None
    self._created = missing
    for _ in range(10):  # retried only when the file is replaced between open and lock
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fresh = True
      except FileExistsError:
        try:
          fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
          continue
        fresh = False
      except OSError as error:
        self._remove_created()
        raise StoreError(f"{self.path}: cannot create the lock file ({error.strerror})") from None
      if not self._lock(fd, fresh):
        owner = _read_record(fd)
        os.close(fd)
        self._remove_created()
        raise StoreError(f"{self.dir} is being written by another sweep ({_describe_owner(owner)}, lock file {self.path});"
                         " wait for it to finish or use another --out")
      if not _same_file(fd, self.path):
        os.close(fd)
        continue
      record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, (json.dumps(record) + "\n").encode())
      os.fsync(fd)
      self._fd = fd
      return self
    self._remove_created()
    raise StoreError(f"{self.path}: the lock file keeps changing; is another sweep starting on {self.dir}?")

  def release(self) -> None:
    """Give the lock up: remove the lock file, then empty directories that acquire created."""
    if self._fd is None:
      return
    if _same_file(self._fd, self.path):
      self.path.unlink()
    os.close(self._fd)
    self._fd = None
    self._remove_created()

  @property
  def held(self) -> bool:
    """Whether this object holds the lock."""
    return self._fd is not None

  def __enter__(self) -> "StoreLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  def _lock(self, fd: int, fresh: bool) -> bool:
    """Whether this process may own the lock file open as ``fd`` (``fresh``: it just created it)."""
    try:
      if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
      return False
    except OSError as error:  # no flock on this file system: judge the owner record
      if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
    return fresh or _stale(_read_record(fd))

  def _remove_created(self) -> None:
    for directory in self._created:  # innermost first
      try:
        directory.rmdir()
      except OSError:
        break
    self._created = []


def _read_record(fd: int) -> str:
  os.lseek(fd, 0, os.SEEK_SET)
  return os.read(fd, 4096).decode("utf-8", "replace").strip()


def _same_file(fd: int, path: Path) -> bool:
  try:
    return os.stat(path).st_ino == os.fstat(fd).st_ino
  except FileNotFoundError:
    return False


def _owner(text: str) -> dict:
  try:
    owner = json.loads(text)
  except json.JSONDecodeError:
    return {}
  return owner if isinstance(owner, dict) else {}


def _describe_owner(text: str) -> str:
  owner = _owner(text)
  if "pid" not in owner:
    return "owner not yet recorded"
  return f"pid {owner['pid']} on {owner.get('host', '?')} since {owner.get('since', '?')}"


def _stale(text: str) -> bool:
  """Whether an owner record names a process of this host that is not running."""
  owner = _owner(text)
  if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
    return False
  try:
    os.kill(owner["pid"], 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False
  return False


def read_meta(out_dir: str | os.PathLike) -> dict | None:
  """``DIR/meta.json`` as a dict (None if absent); StoreError if it is not JSON or has no "settings" object."""
  path = Path(out_dir) / META_FILE
  meta = read_json(path)
  if meta is None:
    return None
  if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
    raise StoreError(f"{path}: no \"settings\" object (not a normtheory meta.json)")
  for key in ("runs", "passes", "problems"):
    if not isinstance(meta.setdefault(key, []), list):
      raise StoreError(f"{path}: \"{key}\" is not a list")
  return meta


class ResultsStore:
  """A results directory with fixed settings, opened for appending.

  Opening checks every file (the parts' footers, the CSV tables of an older store,
  meta.json) and reads no part's values; nothing is written until ``start_run`` or
  ``append``. Hold a :class:`StoreLock` on the directory while writing.

  Args:
    out_dir: the directory (created on the first write).
    settings: the store-level settings of this run; must equal those already stored.
    defaults: the value a setting had before it was recorded (``SETTING_DEFAULTS``):
      a meta.json without the key counts as having this value.

  Raises:
    StoreError: a file of the store cannot be trusted, or the store has other settings.
  """

  def __init__(self, out_dir: str | os.PathLike, settings: dict[str, Any], defaults: dict[str, Any] = SETTING_DEFAULTS):
    self.path = Path(out_dir)
    self.settings = dict(defaults) | dict(settings)
    meta = read_meta(self.path)
    self.contents = Contents(self.path)
    self.contents.check()
    present = [name for name in schema.TABLES if self.contents.has(name)]
    if meta is None and present:
      raise StoreError(f"{self.path / META_FILE}: missing, so the settings of the rows in {present[0]} are unknown")
    self.meta = meta if meta is not None else {"settings": {}, "runs": [], "passes": []}
    stored = dict(defaults) | self.meta["settings"] if meta is not None else self.settings
    if stored != self.settings:
      diff = {k: (stored.get(k), self.settings.get(k)) for k in stored.keys() | self.settings.keys()
              if stored.get(k) != self.settings.get(k)}
      raise StoreError(f"--out {out_dir} holds results with other settings (stored, asked): {diff}; use another --out")
    self.meta["settings"] = self.settings
    self._prepared = False

  def read(self, table: str = GRAD_FILE, columns: Sequence[str] | None = None,
           where: pc.Expression | None = None) -> pd.DataFrame:
    """One stored table, only ``columns`` and the rows ``where`` selects (:func:`read`)."""
    return self.contents.read(table, columns, where)

  def stored_seeds(self) -> dict[tuple, set[int]]:
    """cell tuple -> the seeds whose grad-norm rows are stored (from the parts' footers)."""
    out: dict[tuple, set[int]] = {}
    for *cell, seed in self.contents.pairs():
      out.setdefault(tuple(cell), set()).add(int(seed))
    return out

  def start_run(self, run_info: dict) -> None:
    """Record one invocation (argv, versions, backend) in meta.json."""
    self.meta["runs"].append(run_info)
    self._write_meta()

  def append(self, results: Sequence[GradNorms], wall_time_s: float, depth: pd.DataFrame | None = None) -> None:
    """Store one chunk of measured cells as new parts (pairs already stored are left out) and record it.

    Args:
      results: one :class:`normtheory.GradNorms` per measured cell.
      wall_time_s: the chunk's wall time, for meta.json.
      depth: the same cells' depth-metric rows (columns ``depth_metrics.COLUMNS``), if measured.
    """
    new = concat_tables(results) | ({} if depth is None else {DEPTH_FILE: depth})
    part_id = self.write_chunk(new)
    self.meta["passes"].append({
        "cells": [dict(zip(CELL_COLUMNS, cell_key(r.config))) | {"seeds": [int(s) for s in r.seeds]} for r in results],
        "wall_time_s": round(wall_time_s, 4),
        "depth_metrics": depth is not None,
        "part": part_id,
    })
    self._write_meta()

  def absorb(self, other: "ResultsStore") -> None:
    """Move another store's rows (and its runs, passes and problems) into this one.

    A chunk of ``other`` whose pairs are not stored here moves by renaming its parts
    (grad norms last), so nothing is copied; one that shares pairs with this store is
    written anew without them. ``other``'s CSV tables (an older part store) are
    written as one new chunk.
    """
    self._prepare()
    if other.contents.csv_tables:
      self.write_chunk({table: other.contents.csv(table) for table in other.contents.csv_tables})
    by_id = {}
    for table, table_parts in other.contents.index.parts.items():
      for part in table_parts:
        by_id.setdefault(part.id, {})[table] = part
    for part_id in other.contents.index.ids():
      chunk = by_id[part_id]
      if chunk[GRAD_FILE].pairs & self.contents.pairs():
        self.write_chunk({table: parts.to_frame(parts.read([part], table)) for table, part in chunk.items()})
        parts.remove(p.path for p in chunk.values())
        continue
      for table in sorted(chunk, key=lambda name: name == GRAD_FILE):  # grad norms last: they commit the chunk
        target = self.path / parts.folder(table) / chunk[table].path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(chunk[table].path, target)
    self.contents = Contents(self.path)  # the moved parts, with any an interrupted merge had moved before
    for key in ("runs", "passes", "problems"):
      self.meta.setdefault(key, []).extend(other.meta.get(key, []))
    self._write_meta()

  def record_problem(self, problem: dict) -> None:
    """Note a failed pass or non-finite values in meta.json (under "problems")."""
    self.meta.setdefault("problems", []).append(problem)
    self._write_meta()

  def write_chunk(self, tables: Mapping[str, pd.DataFrame]) -> str | None:
    """Store one chunk's tables (``{table: frame}``) as new parts, grad norms last, leaving out the rows of
    pairs already stored; returns the chunk's id (None: nothing new, nothing written). ``append`` is this
    plus the chunk's record in meta.json."""
    self._prepare()
    stored = self.contents.pairs()
    new = {name: _without_pairs(frame, stored) for name, frame in tables.items()}
    new = {name: frame for name, frame in new.items() if not frame.empty}
    if not new:
      return None
    part_id = parts.new_id()
    new.setdefault(GRAD_FILE, empty_table(GRAD_FILE))
    written = {}
    for name in sorted(new, key=lambda name: name == GRAD_FILE):  # grad norms last: they commit the chunk
      written[name] = parts.read_footer(parts.write_part(self.path, name, part_id, new[name]), name)
    self._add_parts(written)
    return part_id

  def _add_parts(self, written: Mapping[str, parts.Part]) -> None:
    for name, part in written.items():
      self.contents.index.parts[name].append(part)

  def _prepare(self) -> None:
    """Before the first table write: meta.json (no table is ever without its settings), the orphans of
    chunks cut short removed (but not those of a chunk whose grad-norm part still waits in
    ``DIR/parts/process-*``: a merge cut short moved them, the next merge commits them), and a CSV store
    converted to parts (grad norms last, then the CSVs deleted)."""
    if self._prepared:
      return
    self._ensure_meta()
    merging = {p.name for p in self.path.glob(f"parts/process-*/{parts.folder(GRAD_FILE)}/*{parts.SUFFIX}")}
    parts.remove([p for p in self.contents.index.orphans if p.name not in merging] + self.contents.leftover_csv)
    csv = self.contents.csv_tables
    if csv:
      for name in sorted(csv, key=lambda name: name == GRAD_FILE):
        parts.write_part(self.path, name, parts.CSV_ID, self.contents.csv(name))
      if GRAD_FILE not in csv:
        parts.write_part(self.path, GRAD_FILE, parts.CSV_ID, empty_table(GRAD_FILE))
      parts.remove(self.path / name for name in csv)
    self.contents = Contents(self.path)
    self._prepared = True

  def _ensure_meta(self) -> None:
    """meta.json before any table, so that no table is ever stored without its settings."""
    if not (self.path / META_FILE).exists():
      self._write_meta()

  def _write_meta(self) -> None:
    self.path.mkdir(parents=True, exist_ok=True)
    atomic_write(self.path / META_FILE, json.dumps(self.meta, indent=1) + "\n")


def _without_pairs(frame: pd.DataFrame, stored: frozenset[tuple]) -> pd.DataFrame:
  """``frame`` without the rows of (cell, seed) pairs in ``stored``."""
  if frame.empty or not stored:
    return frame.reset_index(drop=True)
  keys = list(parts.key_columns())
  have = pd.MultiIndex.from_tuples(sorted(stored, key=str), names=keys)
  keep = ~pd.MultiIndex.from_frame(frame[keys]).isin(have)
  return frame[keep].reset_index(drop=True)
