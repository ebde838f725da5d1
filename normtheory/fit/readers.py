"""The store's tables as the fits read them: through :mod:`normtheory.store` only.

Each reader names the file it needs and refuses a store without it (or returns
None for the optional tables), so a fit never runs on a table that was not written.
"""

from __future__ import annotations

import pathlib

import pandas as pd

from normtheory import store
from normtheory.schema import DEPTH_FILE, GRAD_FILE, HIDDEN_FILE, LN_JACOBIAN_FILE


def _read(results_dir, filename: str) -> pd.DataFrame:
  """A store table (a key of ``schema.TABLES``) that must exist, read by :mod:`normtheory.store`."""
  path = pathlib.Path(results_dir) / filename
  if not path.parent.is_dir():
    raise FileNotFoundError(f"no results directory {path.parent}")
  if not path.is_file():
    raise FileNotFoundError(f"missing {path} (the sweep writes it)")
  return store.read_table(results_dir, filename)


def read_grad_norms(results_dir) -> pd.DataFrame:
  """``DIR/grad_norms.csv`` as a frame; FileNotFoundError / ValueError if absent or malformed."""
  return _read(results_dir, GRAD_FILE)


def read_hidden_norms(results_dir) -> pd.DataFrame:
  """``DIR/hidden_norms.csv`` as a frame; FileNotFoundError / ValueError if absent or malformed."""
  return _read(results_dir, HIDDEN_FILE)


def _read_optional(results_dir, filename: str) -> pd.DataFrame | None:
  if not (pathlib.Path(results_dir) / filename).is_file():
    return None
  return _read(results_dir, filename)


def read_depth_metrics(results_dir) -> pd.DataFrame | None:
  """``DIR/depth_metrics.csv`` as a frame, or None if the store has none (runs without depth metrics)."""
  return _read_optional(results_dir, DEPTH_FILE)


def read_ln_jacobian(results_dir) -> pd.DataFrame | None:
  """``DIR/ln_jacobian.csv`` as a frame, or None if the store has none (stores written before it existed)."""
  return _read_optional(results_dir, LN_JACOBIAN_FILE)
