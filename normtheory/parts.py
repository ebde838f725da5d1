"""The part files of a results store: one Parquet file per table and measured seed chunk, never rewritten.

A store's rows live in one folder per table (``DIR/grad_norms/``, ``DIR/hidden_norms/``,
``DIR/ln_jacobian/``, ``DIR/depth_metrics/``; :func:`folder`). Each stored seed chunk
adds one *part* to each folder it has rows for, all named by the chunk's id
(``part-<20-digit ns time>-<8 hex>.parquet``, so names sort in the order they were
written). A part is written to a hidden temporary file (``.part-….tmp``: readers skip
names that start with a dot), fsynced and renamed into place, so it is visible
complete or not at all; the grad-norm part is renamed last and *commits* the chunk.
A part of another table whose id has no grad-norm part belongs to a chunk that was
cut short (an *orphan*): readers ignore it and the next writer removes it.

Columns are typed: cell and label strings dictionary-encoded, integers int64, the
value float64 (``schema.TABLES`` order). Each part's footer holds, under the key
``normtheory``, the JSON ``{"table", "columns", "pairs", "rows"}``: its (cell, seed)
pairs (``columns`` names their fields, ``CELL_COLUMNS`` then ``seed``) and its row
count. These footers are the store's index: which pairs are stored is known
from them without reading any value (:func:`scan`).

A part whose footer is unreadable (a truncated copy), whose columns are not a
layout of its table, that lacks the ``normtheory`` record or whose record disagrees
with the file, or whose pairs repeat those of an earlier part, raises
:class:`~normtheory.schema.StoreError` naming the file.

A column added to ``schema.TABLES`` after a part was written reads as its default
(``CELL_DEFAULTS``), as in the CSV layout (:func:`read`).

References:
  Apache Parquet format specification (parquet.apache.org/docs/file-format);
  Apache Arrow, "Tabular Datasets" (pyarrow.dataset: column projection, filter pushdown).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from normtheory import schema
from normtheory.schema import GRAD_FILE, StoreError

FOOTER_KEY = b"normtheory"
PREFIX, SUFFIX = "part-", ".parquet"
CSV_ID = PREFIX + "0" * 20 + "-csv"  # the part that holds a CSV store's rows once converted (sorts first)
COMPRESSION = "zstd"


def folder(table: str) -> str:
  """The folder of a table (a key of ``schema.TABLES``): its file name without ``.csv``."""
  return table.removesuffix(".csv")


def key_columns() -> tuple[str, ...]:
  """The fields of a stored pair: the cell columns, then ``seed``."""
  return (*schema.CELL_COLUMNS, "seed")


def new_id() -> str:
  """A fresh chunk id: the time in ns (names sort in write order) and 8 random hex digits (unique across hosts)."""
  return f"{PREFIX}{time.time_ns():020d}-{secrets.token_hex(4)}"


def arrow_type(column: str, table: str) -> pa.DataType:
  """The stored type of a column: int64 (``INTEGER_COLUMNS``), float64 (the value), else dictionary-encoded string."""
  if column == schema.TABLES[table][-1]:
    return pa.float64()
  if column in schema.INTEGER_COLUMNS:
    return pa.int64()
  return pa.dictionary(pa.int32(), pa.string())


def arrow_schema(table: str) -> pa.Schema:
  """The Arrow schema of a table's parts (``schema.TABLES[table]`` in order)."""
  return pa.schema([pa.field(c, arrow_type(c, table)) for c in schema.TABLES[table]])


def pairs_of(frame: pd.DataFrame) -> list[tuple]:
  """The distinct (cell, seed) pairs of a table's rows, in order of first appearance."""
  if frame.empty:
    return []
  keys = frame[list(key_columns())].drop_duplicates()
  return [tuple(_python(v) for v in row) for row in keys.itertuples(index=False)]


def _python(value):
  return int(value) if isinstance(value, (int, np.integer)) else str(value)


def write_part(directory: str | os.PathLike, table: str, part_id: str, frame: pd.DataFrame) -> Path:
  """Write ``frame`` (columns ``schema.TABLES[table]``) as the part ``part_id`` of ``table``: atomically.

  Returns:
    the part's path, ``DIR/<folder(table)>/<part_id>.parquet``.
  """
  target = Path(directory) / folder(table)
  target.mkdir(parents=True, exist_ok=True)
  frame = frame[list(schema.TABLES[table])]
  arrow = pa.Table.from_pandas(frame, schema=arrow_schema(table), preserve_index=False)
  record = {"table": table, "columns": list(key_columns()), "pairs": [list(p) for p in pairs_of(frame)],
            "rows": len(frame)}
  arrow = arrow.replace_schema_metadata({FOOTER_KEY: json.dumps(record)})
  return write_arrow(target / f"{part_id}{SUFFIX}", arrow)


def write_arrow(path: str | os.PathLike, arrow: pa.Table) -> Path:
  """Write an Arrow table as the Parquet file ``path``, atomically: a hidden temporary file beside it
  (``.NAME.tmp``), fsynced, then renamed, so ``path`` appears complete or not at all."""
  path = Path(path)
  tmp = path.parent / f".{path.name}.tmp"
  try:
    pq.write_table(arrow, tmp, compression=COMPRESSION)
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


class Part(NamedTuple):
  """One part file, as its footer describes it."""

  path: Path
  table: str
  id: str  # the chunk id (the file name without .parquet)
  pairs: frozenset[tuple]  # its (cell, seed) pairs, in ``key_columns()`` order (added columns at their default)
  rows: int
  columns: tuple[str, ...]  # the columns the file has (older parts lack columns added since)


def read_footer(path: Path, table: str) -> Part:
  """The :class:`Part` of a file; StoreError naming it if its footer, layout or record cannot be trusted."""
  try:
    meta = pq.read_metadata(path)
    file_schema = meta.schema.to_arrow_schema()
  except (OSError, pa.ArrowException) as error:
    raise StoreError(f"{path}: not a readable Parquet part ({str(error).splitlines()[0]})") from None
  columns = tuple(file_schema.names)
  expected = schema.TABLES[table]
  if [c for c in columns if c not in expected] or [c for c in expected if c not in columns and c not in schema.CELL_DEFAULTS]:
    raise StoreError(f"{path}: columns are {','.join(columns)}, expected {','.join(expected)}")
  for column in columns:
    stored, wanted = file_schema.field(column).type, arrow_type(column, table)
    if stored != wanted and not (pa.types.is_dictionary(wanted) and pa.types.is_string(stored)):
      raise StoreError(f"{path}: column {column} is {stored}, expected {wanted}")
  try:
    record = json.loads((file_schema.metadata or {})[FOOTER_KEY])
    names, rows = record["columns"], int(record["rows"])
    pairs = [dict(zip(names, p, strict=True)) for p in record["pairs"]]
  except (KeyError, TypeError, ValueError) as error:
    raise StoreError(f"{path}: no readable normtheory record in its footer ({type(error).__name__}); "
                     "not a part written by normtheory") from None
  if rows != meta.num_rows:
    raise StoreError(f"{path}: holds {meta.num_rows} rows, its footer record says {rows}")
  unknown = [c for c in names if c not in key_columns()]
  if unknown:
    raise StoreError(f"{path}: its footer record names unknown key columns {', '.join(unknown)}")
  defaults = schema.CELL_DEFAULTS
  keys = frozenset(tuple(p.get(c, defaults.get(c)) for c in key_columns()) for p in pairs)
  if len(keys) != len(pairs) or any(None in k for k in keys):
    raise StoreError(f"{path}: its footer record repeats a (cell, seed) pair or lacks a key column")
  return Part(path, table, path.name.removesuffix(SUFFIX), keys, rows, columns)


class Index(NamedTuple):
  """What :func:`scan` finds in a store directory."""

  parts: dict[str, list[Part]]  # table -> its committed parts, in id order
  orphans: list[Path]  # parts of chunks without a grad-norm part, and temporary files: the next writer removes them

  def pairs(self) -> frozenset[tuple]:
    """Every stored (cell, seed) pair (those of the committed grad-norm parts)."""
    return frozenset().union(*(p.pairs for p in self.parts[GRAD_FILE]))

  def ids(self) -> list[str]:
    """The committed chunk ids, in order."""
    return [p.id for p in self.parts[GRAD_FILE]]


def scan(directory: str | os.PathLike) -> Index:
  """Read every part's footer (no values) and check the parts against each other.

  Raises:
    StoreError: naming the file: an unreadable part (:func:`read_footer`), a grad-norm
      part whose pairs repeat an earlier part's, or another table's part with pairs
      outside its chunk's.
  """
  directory = Path(directory)
  found = {table: [] for table in schema.TABLES}
  orphans = []
  for table in schema.TABLES:
    path = directory / folder(table)
    if not path.is_dir():
      continue
    for entry in sorted(path.iterdir()):
      if entry.name.startswith("."):
        orphans += [entry] if entry.name.endswith(".tmp") else []
      elif entry.name.endswith(SUFFIX):
        found[table].append(read_footer(entry, table))
  committed = {p.id: p for p in found[GRAD_FILE]}
  seen: dict[tuple, Path] = {}
  for part in found[GRAD_FILE]:
    repeated = [k for k in part.pairs if k in seen]
    if repeated:
      raise StoreError(f"{part.path}: repeats {len(repeated)} (cell, seed) pairs stored in {seen[repeated[0]]}"
                       f" (e.g. {dict(zip(key_columns(), repeated[0]))}); remove one of the two files")
    seen |= dict.fromkeys(part.pairs, part.path)
  parts = {GRAD_FILE: found[GRAD_FILE]}
  for table in schema.TABLES:
    if table == GRAD_FILE:
      continue
    parts[table] = []
    for part in found[table]:
      chunk = committed.get(part.id)
      if chunk is None:
        orphans.append(part.path)
      elif not part.pairs <= chunk.pairs:
        raise StoreError(f"{part.path}: holds (cell, seed) pairs that its chunk's {chunk.path.name} does not")
      else:
        parts[table].append(part)
  return Index(parts, orphans)


def plain(table: pa.Table) -> pa.Table:
  """``table`` with its string columns (dictionary-encoded or not) as ``large_string``: what pandas' ``str``
  dtype holds, so the conversion to pandas copies no string."""
  strings = lambda t: pa.types.is_dictionary(t) or pa.types.is_string(t)  # noqa: E731
  columns = [c.cast(pa.large_string()) if strings(c.type) else c for c in table.columns]
  return pa.Table.from_arrays(columns, names=table.column_names)


def _with_defaults(rows: pa.Table, table: str) -> pa.Table:
  """An older part's rows with the columns added since at their default (``CELL_DEFAULTS``), in table order."""
  for column in schema.TABLES[table]:
    if column not in rows.column_names:
      kind = pa.int64() if column in schema.INTEGER_COLUMNS else pa.large_string()
      rows = rows.append_column(column, pa.array([schema.CELL_DEFAULTS[column]] * len(rows), kind))
  return rows.select(list(schema.TABLES[table]))


def read(parts: Sequence[Part], table: str, columns: Sequence[str] | None = None,
         where: pc.Expression | None = None) -> pa.Table:
  """The rows of some parts of one table, reading only ``columns`` and the rows ``where`` selects.

  Parts in the current layout are read as one ``pyarrow.dataset`` with the projection
  and the filter pushed into the scan; an older part (without a column added since) is
  streamed batch by batch, its missing columns filled with their default before the
  filter, so memory stays that of the selected rows.

  Args:
    parts: from :func:`scan` (all of one table).
    table: their table (a key of ``schema.TABLES``).
    columns: the columns to return (default all, in table order).
    where: a ``pyarrow.compute`` expression over the table's columns (e.g.
      ``pc.field("param") == "W2"``); None: every row.

  Returns:
    an Arrow table with plain (not dictionary) string columns.
  """
  full = list(schema.TABLES[table])
  columns = full if columns is None else list(columns)
  current = [str(p.path) for p in parts if p.columns == tuple(full)]
  pieces = []
  if current:  # batch by batch, each decoded at once: the peak stays near the selected rows' own size
    dataset = ds.dataset(current, schema=arrow_schema(table), format="parquet")
    scan = dataset.scanner(columns=columns, filter=where, batch_size=1 << 18, batch_readahead=2, fragment_readahead=1)
    pieces += [plain(pa.Table.from_batches([batch])) for batch in scan.to_batches()]
  for part in (p for p in parts if p.columns != tuple(full)):
    for batch in pq.ParquetFile(part.path).iter_batches(batch_size=1 << 20):
      rows = _with_defaults(plain(pa.Table.from_batches([batch])), table)
      pieces.append((rows if where is None else rows.filter(where)).select(columns))
  if not pieces:
    return plain(arrow_schema(table).empty_table()).select(columns)
  return compact(pieces)


def compact(pieces: list[pa.Table]) -> pa.Table:
  """The tables of ``pieces`` (same columns) as one, consuming the list: each numeric column becomes one
  contiguous array (so pandas takes it without a copy), one column at a time, so the peak memory is the
  result plus one column; string columns stay chunked (pandas' ``str`` arrays take chunks as they are)."""
  names = pieces[0].column_names
  columns = {name: [t.column(name) for t in pieces] for name in names}
  pieces.clear()
  out = []
  for name in names:
    column = columns.pop(name)
    kind = column[0].type
    chunks = [chunk for part in column for chunk in part.chunks]
    del column
    contiguous = chunks and not pa.types.is_large_string(kind)
    merged = pa.chunked_array([pa.concat_arrays(chunks)] if contiguous else chunks, kind)
    del chunks
    out.append(merged)
  return pa.Table.from_arrays(out, names=names)


def to_frame(arrow: pa.Table) -> pd.DataFrame:
  """An Arrow table of a store as the pandas frame :func:`normtheory.schema.read_table` gives (``str``,
  int64, float64 columns, a RangeIndex). Consumes ``arrow``: pandas takes its buffers (without a copy
  where a column is one contiguous array, as :func:`compact` leaves them)."""
  return plain(arrow).to_pandas(split_blocks=True, self_destruct=True)


def write_frame(directory: str | os.PathLike, frame: pd.DataFrame) -> Path:
  """Add ``frame`` (any columns: a table whose layout its writer owns, e.g. the probe's) as a new part of the
  folder ``directory``, atomically (:func:`write_arrow`); returns its path."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  return write_arrow(directory / f"{new_id()}{SUFFIX}", pa.Table.from_pandas(frame, preserve_index=False))


def read_frames(directory: str | os.PathLike) -> pd.DataFrame | None:
  """Every part of a folder that :func:`write_frame` fills, in write order, as one frame (None: no part).

  Raises:
    StoreError: naming the part that cannot be read or whose columns differ from the first part's.
  """
  paths = sorted(Path(directory).glob(f"{PREFIX}*{SUFFIX}")) if Path(directory).is_dir() else []
  if not paths:
    return None
  tables = []
  for path in paths:
    try:
      tables.append(pq.read_table(path))
    except (OSError, pa.ArrowException) as error:
      raise StoreError(f"{path}: not a readable Parquet part ({str(error).splitlines()[0]})") from None
    if tables[-1].schema.names != tables[0].schema.names:
      raise StoreError(f"{path}: columns are {','.join(tables[-1].schema.names)}, those of {paths[0].name} are "
                       f"{','.join(tables[0].schema.names)}")
  try:
    return to_frame(pa.concat_tables(tables, promote_options="permissive"))
  except pa.ArrowException as error:
    raise StoreError(f"{directory}: parts of different column types ({str(error).splitlines()[0]})") from None


def remove(paths: Iterable[Path]) -> None:
  """Delete files (orphans, merged parts); a file already gone is fine."""
  for path in paths:
    Path(path).unlink(missing_ok=True)
