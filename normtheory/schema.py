"""The results tables: one home for their columns, cells, tidy frames and atomic writes.

Every table normtheory stores is *tidy* (one row per measurement) and starts with
the columns of the model's **cell**, the :class:`normtheory.Config` fields that
change the numbers and vary within one store::

  arch, loss, d, L, n, d_ff, batch, attention, heads, inputs, norm, ffn, causal, positions

followed by the sample (``seed``), where in the model (``layer``, and ``param``,
``metric`` or ``ln``) and the measured value. Settings that are not columns
(dtype, eps, base seed, PRNG, vocab, tied, alpha0) are fixed per store (``meta.json``).

The CSV layout is a contract that other tools read: columns are only ever added,
never renamed or dropped. A store written before a column existed still loads:
:func:`read_table` fills the column with its default (``CELL_DEFAULTS``, the value
every older run measured with; ``DERIVED_DEFAULTS`` where that value followed from
another column).

Producers build frames with :func:`tidy_frame` and write files with
:func:`atomic_write`; consumers read them with :func:`read_table`. Nothing here
imports the compute modules: they import this.

References:
  Wickham 2014, "Tidy Data", Journal of Statistical Software 59(10).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

CELL_COLUMNS = ("arch", "loss", "d", "L", "n", "d_ff", "batch", "attention", "heads", "inputs",
                "norm", "ffn", "causal", "positions")
# Value of each column added after the first stores were written, as those stores measured it.
CELL_DEFAULTS = {"batch": 1, "attention": "uniform", "heads": 1, "inputs": "gaussian",
                 "norm": "layernorm", "ffn": "relu", "causal": 0, "positions": "none"}
# Columns whose value in older stores follows from another column: positions was
# "sinusoidal" wherever inputs were text (the code text embeddings always carried).
DERIVED_DEFAULTS = {"positions": ("inputs", {"text": "sinusoidal"})}
# Columns that hold integers (every other key column holds a non-empty string); causal is 0 or 1.
INTEGER_COLUMNS = frozenset({"d", "L", "n", "d_ff", "batch", "heads", "causal", "seed", "layer", "ln"})
# Value of each store setting (meta.json "settings") added after the first stores were
# written, as those stores measured it: a meta.json without the key means this value.
# conditional_draws: "shared" (Config.conditional_draws) or None: explicit weights, or conditional
# weights drawn per architecture (every conditional store written before the setting).
SETTING_DEFAULTS = {"tied": False, "alpha0": 0.5, "weights": "explicit", "conditional_draws": None}

GRAD_FILE = "grad_norms.csv"
HIDDEN_FILE = "hidden_norms.csv"
DEPTH_FILE = "depth_metrics.csv"
LN_JACOBIAN_FILE = "ln_jacobian.csv"
META_FILE = "meta.json"
FITS_FILE = "fits.json"
# normtheory.probe's table of a user's model: the user names its cell columns (then d, L),
# so its full header is checked per store rather than listed in TABLES.
PROBE_FILE = "probe_norms.csv"
PROBE_COLUMNS = ("seed", "path", "layer", "param", "grad_norm", "loss", "nonfinite")
PROBE_OPTIONAL_COLUMNS = ("sq_norm",)  # present when the loss function returns residual-stream taps

TABLES: dict[str, tuple[str, ...]] = {
    GRAD_FILE: (*CELL_COLUMNS, "seed", "layer", "param", "grad_norm"),
    HIDDEN_FILE: (*CELL_COLUMNS, "seed", "layer", "sq_norm"),
    DEPTH_FILE: (*CELL_COLUMNS, "seed", "layer", "metric", "value"),
    LN_JACOBIAN_FILE: (*CELL_COLUMNS, "seed", "layer", "ln", "value"),
}
GRAD_COLUMNS = TABLES[GRAD_FILE]
HIDDEN_COLUMNS = TABLES[HIDDEN_FILE]
DEPTH_COLUMNS = TABLES[DEPTH_FILE]
LN_JACOBIAN_COLUMNS = TABLES[LN_JACOBIAN_FILE]


_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then restored
os.umask(_UMASK)


class StoreError(ValueError):
  """A store cannot be used as asked (unreadable file, other settings, unwritable directory, ...)."""


def cell_of(cfg) -> dict:
  """The cell columns of a model, ``{column: value}`` in ``CELL_COLUMNS`` order.

  Args:
    cfg: a :class:`normtheory.Config` (any object with those attributes); a bool field
      (``causal``) is stored as 0 or 1.
  """
  value = lambda v: int(v) if isinstance(v, bool) else v
  return {column: value(getattr(cfg, column)) for column in CELL_COLUMNS}


def cell_key(cfg) -> tuple:
  """``tuple(cell_of(cfg).values())``: the cell as a hashable key."""
  return tuple(cell_of(cfg).values())


def tidy_frame(
    table: str,
    cell: Mapping,
    seeds_S: Sequence[int],
    layers_K: Sequence[int],
    values: Mapping[str, np.ndarray] | np.ndarray,
    label_column: str | None = None,
) -> pd.DataFrame:
  """One tidy table, one row per (label, seed, layer), in the column order of ``table``.

  Example:
    >>> f = tidy_frame(HIDDEN_FILE, {"arch": "pre"}, [0, 1], [1, 2, 3], np.ones((2, 3)))
    >>> len(f), list(f.columns[-3:])
    (6, ['seed', 'layer', 'sq_norm'])

  Args:
    table: a key of ``TABLES``; its last column receives the values.
    cell: the cell columns (``cell_of(cfg)``); columns of ``table`` absent from it
      get ``CELL_DEFAULTS`` (a column with no default must be given).
    seeds_S: the seed index of each row of the value arrays.
    layers_K: the layer index of each column of the value arrays.
    values: a ``(S, K)`` array, or label -> ``(S, K)`` array with ``label_column``.
    label_column: the column naming the label (``param``, ``metric``, ``ln``).

  Returns:
    DataFrame with exactly the columns ``TABLES[table]``.
  """
  columns = TABLES[table]
  seeds_S, layers_K = np.asarray(seeds_S), np.asarray(layers_K)
  S, K = len(seeds_S), len(layers_K)
  labelled = values if label_column is not None else {None: values}
  constants = {c: cell.get(c, CELL_DEFAULTS.get(c)) for c in CELL_COLUMNS if c in columns}
  missing = [c for c, v in constants.items() if v is None]
  if missing:
    raise ValueError(f"tidy_frame: cell lacks {', '.join(missing)}")
  frames = []
  for label, value_SxK in labelled.items():
    value_SxK = np.asarray(value_SxK, np.float64)
    if value_SxK.shape != (S, K):
      raise ValueError(f"tidy_frame: values for {label!r} have shape {value_SxK.shape}, expected {(S, K)}")
    rows = {**constants, "seed": np.repeat(seeds_S, K), "layer": np.tile(layers_K, S)}
    if label_column is not None:
      rows[label_column] = label
    rows[columns[-1]] = value_SxK.reshape(-1)
    frames.append(pd.DataFrame(rows))
  if not frames:
    return empty_table(table)
  return pd.concat(frames, ignore_index=True)[list(columns)]


def empty_table(table: str) -> pd.DataFrame:
  """A frame with the columns of ``table`` and no rows."""
  return pd.DataFrame(columns=list(TABLES[table]))


def atomic_write(path: str | os.PathLike, text: str | bytes) -> None:
  """Replace ``path`` by ``text`` (str or bytes) atomically: a complete temporary file, fsync, ``os.replace``.

  A crash or Ctrl-C at any point leaves either the old file or the new one, never a
  partial file; the temporary file is removed on failure. The new file keeps the old
  one's permissions (a new file gets the umask's, as ``open`` would give it).
  """
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
    with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def with_defaults(frame: pd.DataFrame, table: str, source: str = "frame") -> pd.DataFrame:
  """``frame`` in the layout of ``table``, older layouts upgraded with ``CELL_DEFAULTS``.

  Raises:
    StoreError: a column is neither in ``table`` nor a defaultable cell column, or
      one of ``table``'s columns is missing and has no default.
  """
  columns = TABLES[table]
  unknown = [c for c in frame.columns if c not in columns]
  missing = [c for c in columns if c not in frame.columns]
  if unknown or any(c not in CELL_DEFAULTS for c in missing):
    raise StoreError(f"{source}: header is {','.join(map(str, frame.columns))}, expected {','.join(columns)}")
  if missing:
    frame = frame.assign(**{c: CELL_DEFAULTS[c] for c in missing})
    for c in missing:
      if c in DERIVED_DEFAULTS:
        source_column, values = DERIVED_DEFAULTS[c]
        frame[c] = frame[source_column].map(values).fillna(CELL_DEFAULTS[c])
  return frame[list(columns)]


def read_table(out_dir: str | os.PathLike, table: str = GRAD_FILE) -> pd.DataFrame:
  """One table of a store as a typed DataFrame (empty, with the right columns, if the file is absent).

  Older layouts are upgraded (:func:`with_defaults`); anything that cannot be trusted
  is refused rather than guessed: an empty or non-UTF-8 file, a last line without its
  line end (a truncated copy), a line with another number of fields than the header,
  a key field that is empty or, in an integer column (``INTEGER_COLUMNS``), not an
  integer, a value that is not a number, or two rows with the same key. The value
  column (the last) may hold NaN or inf: non-finite measurements are stored as measured.

  Args:
    out_dir: the store directory.
    table: a key of ``TABLES``.

  Returns:
    DataFrame with the columns ``TABLES[table]``; integer columns int64, the value float64.

  Raises:
    StoreError: naming the file and the problem (with its line number where there is one).
  """
  path = Path(out_dir) / table
  if not path.exists():
    return empty_table(table)
  data = path.read_bytes()
  _check_fields(data, path)
  try:
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, UnicodeDecodeError) as error:
    raise StoreError(f"{path}: not a readable CSV ({type(error).__name__}: {str(error).splitlines()[0]})") from None
  return _typed(with_defaults(frame, table, str(path)), path)


def _check_fields(data: bytes, path: Path) -> None:
  """Refuse an empty file, a truncated last line, or a line whose field count differs from the header's."""
  if not data.strip():
    raise StoreError(f"{path}: empty file (not even a header)")
  if not data.endswith(b"\n"):
    raise StoreError(f"{path}: truncated (the last line has no line end)")
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise StoreError(f"{path}: not UTF-8 text (byte {error.start})") from None
  byte_N = np.frombuffer(data, np.uint8)
  ends = np.flatnonzero(byte_N == ord("\n"))
  commas_before = np.concatenate([[0], np.cumsum(byte_N == ord(","))])
  commas_per_line = np.diff(np.concatenate([[0], commas_before[ends]]))
  bad = np.flatnonzero(commas_per_line != commas_per_line[0])
  if bad.size:
    line = int(bad[0])
    raise StoreError(f"{path}: line {line + 1} has {commas_per_line[line] + 1} fields, the header {commas_per_line[0] + 1}")


def _typed(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
  """``frame`` (string fields, a table's columns) with typed columns; StoreError at the first bad field."""
  keys, value = list(frame.columns[:-1]), frame.columns[-1]
  out = {}

  def refuse(column: str, bad_R: np.ndarray, what: str):
    row = int(np.flatnonzero(bad_R)[0])
    raise StoreError(f"{path}: line {row + 2}, column {column}: {what} ({frame[column].iloc[row]!r})")

  for column in keys:
    text = frame[column].astype(str)
    if column in INTEGER_COLUMNS:
      number = pd.to_numeric(text, errors="coerce")
      bad = (~np.isfinite(number.astype(np.float64)) | (number != number.round())).to_numpy()
      if bad.any():
        refuse(column, bad, "not an integer")
      out[column] = number.astype(np.int64)
    else:
      bad = (text.str.strip() == "").to_numpy()
      if bad.any():
        refuse(column, bad, "empty")
      out[column] = text
  text = frame[value].astype(str).str.strip()
  number = pd.to_numeric(text.where(text != "", "nan"), errors="coerce")
  bad = (number.isna() & ~text.str.lower().isin(["", "nan"])).to_numpy()
  if bad.any():
    refuse(value, bad, "not a number")
  out[value] = number.astype(np.float64)
  typed = pd.DataFrame(out)
  repeated = typed.duplicated(keys).to_numpy()
  if repeated.any():
    row = int(np.flatnonzero(repeated)[0])
    raise StoreError(f"{path}: line {row + 2} repeats the key ({','.join(keys)}) of an earlier row"
                     f" ({int(repeated.sum())} such rows)")
  return typed
