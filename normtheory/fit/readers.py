"""The store's tables as the fits read them: through :mod:`normtheory.store` only, selection pushed into the read.

Each reader names the table it needs and refuses a store without it (or returns
None for the optional tables), so a fit never runs on a table that was not written.
``where`` (a ``pyarrow.compute`` expression) selects the rows to read: the Parquet
scan reads only those (:func:`normtheory.store.read`), so a fit of a 10⁷-row store
holds only the rows it uses.
"""

from __future__ import annotations

import pathlib

import pandas as pd

from normtheory import parts, store
from normtheory.schema import DEPTH_FILE, GRAD_FILE, HIDDEN_FILE, LN_JACOBIAN_FILE


def _read(results_dir, filename: str, where=None) -> pd.DataFrame:
  """A store table (a key of ``schema.TABLES``) that must exist, only the rows ``where`` selects."""
  path = pathlib.Path(results_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"no results directory {path}")
  contents = store.Contents(path)
  if not contents.has(filename):
    raise FileNotFoundError(f"missing {path / parts.folder(filename)} (the sweep writes it)")
  return contents.read(filename, where=where)


def read_grad_norms(results_dir, where=None) -> pd.DataFrame:
  """The store's grad-norm table (only the rows ``where`` selects); FileNotFoundError / ValueError if absent or malformed."""
  return _read(results_dir, GRAD_FILE, where)


def read_hidden_norms(results_dir, where=None) -> pd.DataFrame:
  """The store's hidden-norm table (only the rows ``where`` selects); FileNotFoundError / ValueError if absent or malformed."""
  return _read(results_dir, HIDDEN_FILE, where)


def _read_optional(results_dir, filename: str, where=None) -> pd.DataFrame | None:
  if not store.Contents(results_dir).has(filename):
    return None
  return _read(results_dir, filename, where)


def read_depth_metrics(results_dir, where=None) -> pd.DataFrame | None:
  """The store's depth-metric table, or None if the store has none (runs without depth metrics)."""
  return _read_optional(results_dir, DEPTH_FILE, where)


def read_ln_jacobian(results_dir, where=None) -> pd.DataFrame | None:
  """The store's LN-Jacobian table, or None if the store has none (stores written before it existed)."""
  return _read_optional(results_dir, LN_JACOBIAN_FILE, where)
