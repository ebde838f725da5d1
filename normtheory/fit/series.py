"""Per-series orchestration: every fit of a store or frame, per series and per Post/Pre pair, and fits.json.

A *series* is one value of every cell column but d and L (``SERIES_KEYS``);
:func:`fit_frame` fits each with :mod:`normtheory.fit.estimators`, checks it with
:mod:`normtheory.fit.verdicts`, and pairs Post with Pre; :func:`write_fits` stores
the result as ``DIR/fits.json``.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (the two bounds), Lemma 2 (growth of the Pre-LN residual stream),
    Lemma 3 (the LayerNorm Jacobian).
  Su 2022, "Why is Pre Norm worse than Post Norm?" (kexue.fm/archives/9009): the
    effective-depth argument.
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from normtheory import theory
from normtheory.config import ARCHS, default_d_ff
from normtheory.fit.estimators import (
    CI_LEVEL,
    CI_SCOPE,
    _estimates,
    _LeastSquares,
    _negate,
    _power_law,
    _with_C,
    bound_shape_fit,
    ci,
    envelope_fit,
    fit_update_exponent,
    lemma2_law_fit,
    local_exponents,
    paired_bootstrap_means,
    select,
)
from normtheory.fit.readers import _read_optional, read_depth_metrics, read_grad_norms
from normtheory.fit.verdicts import _difference, bound_checks, compare
from normtheory.schema import CELL_COLUMNS, CELL_DEFAULTS, FITS_FILE, HIDDEN_FILE, atomic_write

SERIES_KEYS = tuple(c for c in CELL_COLUMNS if c not in ("d", "L"))
SERIES_DEFAULTS = {"d_ff": "d", **CELL_DEFAULTS}  # d_ff "d": every cell's FFN is d wide


def arch_key(arch: str) -> tuple[int, str]:
  """Sort key of arch names: the library's order (post, pre, ...), then others alphabetically."""
  return (ARCHS.index(arch) if arch in ARCHS else len(ARCHS), arch)


def _with_series_labels(rows: pd.DataFrame) -> pd.DataFrame:
  """``rows`` with a ``label`` column: the d_ff of their series, "d" (every cell at its default width,
  :func:`normtheory.config.default_d_ff`: d, or round(2d/3) for SwiGLU) or a fixed width.

  Within one value of the other series keys, rows whose d_ff differs from that default form
  fixed-width series; rows with d_ff = d form the default series, and a row at
  ``d = d_ff`` of a fixed-width series belongs to it as well (then it appears twice).
  """
  others = [c for c in SERIES_KEYS if c != "d_ff"]
  cells = rows[[*others, "d", "d_ff"]].drop_duplicates()
  labels = []
  for _, group in cells.groupby(others, sort=False):
    own = group["d_ff"] == [default_d_ff(int(d), ffn) for d, ffn in zip(group["d"], group["ffn"])]
    fixed = set(group.loc[~own, "d_ff"])
    default_series = (own & ~group["d"].isin(fixed)).any()
    for cell, is_own in zip(group.itertuples(index=False), own):
      if not is_own or cell.d_ff in fixed:
        labels.append((*cell, str(cell.d_ff)))
      if is_own and default_series:
        labels.append((*cell, "d"))
  return rows.merge(pd.DataFrame(labels, columns=[*others, "d", "d_ff", "label"]), on=[*others, "d", "d_ff"])


def _json_key(key: tuple) -> dict:
  """A series key as JSON values: ints where numeric (d_ff "d" stays a string)."""
  out = {}
  for column, value in zip(SERIES_KEYS, key):
    out[column] = value if isinstance(value, str) and not value.isdigit() else int(value)
  return out


def _extras(entry: dict) -> str:
  """``, key=value`` for every series key of an entry that is not its default (d_ff equal to d is)."""
  out = ""
  for column in SERIES_KEYS[3:]:
    value = entry.get(column, SERIES_DEFAULTS[column])
    default = "sinusoidal" if column == "positions" and entry.get("inputs") == "text" else SERIES_DEFAULTS[column]
    if value != default and not (column == "d_ff" and value == entry.get("d")):
      out += f", {column}={value}"
  return out


def series_name(entry: dict) -> str:
  """``arch (loss=..., n=...[, other non-default keys])`` of a series or ratio entry."""
  head = f"{entry['arch']} " if "arch" in entry else ""
  return f"{head}(loss={entry['loss']}, n={entry['n']}{_extras(entry)})"


class _Table(NamedTuple):
  """Every cell of one fitted quantity: its keys, seed means, finite seeds and paired replicates."""

  cells: pd.DataFrame  # quantity, SERIES_KEYS, d, L (one row per column)
  mean_C: np.ndarray
  n_seeds_C: np.ndarray
  boot_BxC: np.ndarray

  def part(self, quantity: str, key: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(d_C, L_C, mean_C, n_seeds_C, boot_BxC) of one quantity of one series, cells sorted by (d, L)."""
    mask = (self.cells["quantity"] == quantity).to_numpy() & (self.n_seeds_C > 0)
    for column, value in zip(SERIES_KEYS, key):
      mask = mask & (self.cells[column] == value).to_numpy()
    c = np.flatnonzero(mask)
    return (self.cells["d"].to_numpy(np.float64)[c], self.cells["L"].to_numpy(np.float64)[c], self.mean_C[c],
            self.n_seeds_C[c], self.boot_BxC[:, c])


def _paired_table(long: pd.DataFrame, n_boot: int, seed: int) -> _Table:
  """One column per (quantity, series, d, L), one row per seed; the paired replicates of every column's mean."""
  columns = ["quantity", *SERIES_KEYS, "d", "L"]
  if long.duplicated([*columns, "seed"]).any():
    raise ValueError("several rows share (d, L, seed) within a series; filter the frame first")
  groups = long.groupby(columns, sort=True)
  wide = long.assign(column=groups.ngroup()).pivot(index="seed", columns="column", values="value")
  cells = groups.size().index.to_frame(index=False)
  values_SxC = wide.to_numpy(np.float64)
  finite_SxC = np.isfinite(values_SxC)
  n_seeds_C = finite_SxC.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_C = np.where(finite_SxC, values_SxC, 0.0).sum(axis=0) / n_seeds_C
  boot_BxC = paired_bootstrap_means(values_SxC, n_boot, np.random.default_rng(seed))
  return _Table(cells, mean_C, n_seeds_C, boot_BxC)


def fit_frame(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0, param: str = "W2",
              layer: int | None = None, hidden: pd.DataFrame | None = None) -> dict:
  """Every fit of one weight's gradient norm, per series, as a JSON-serialisable dict.

  Args:
    frame: tidy gradient-norm table, columns ``schema.GRAD_COLUMNS``.
    n_boot: bootstrap replicates (shared by every series: paired).
    seed: seed of the resampling generator (fits are deterministic given it).
    param: which weight ("W2" for Theorem 1).
    layer: which 1-based layer; None means the last layer L of each model.
    hidden: the hidden-norm table (``schema.HIDDEN_COLUMNS``); its ``layer = L + 1``
      rows (Pre-LN's state entering the final LayerNorm) feed Lemma 2's checks.

  Returns:
    ``{"meta", "series", "ratios"}``. Each series has its keys (``SERIES_KEYS``),
    ``cells`` (d, L, n_seeds, mean, and the mean field's value where it predicts
    one), ``bound_shape``, ``power_law``, ``envelope``, ``local_exponents``,
    ``checks`` (the theorem's one-sided claims: :func:`one_sided_check`),
    ``tightness`` (alpha and gamma against the theorem, the mean field and a linear-loss
    baseline), ``mean_field`` (its fit on the same cells, or the reason it has none)
    and, for Pre-LN with hidden norms, ``lemma2_band``. Each ratio entry (Post and
    Pre with the same other keys) has ``cells`` (ratio g_post/g_pre), ``power_law``,
    ``beta`` (``g_post/g_pre ∝ L^β``), ``tightness``, ``lemma2_ratio`` (or
    ``lemma2_ratio_note``) and ``lemma2_law`` where it converges. Every estimate
    is ``{"value": x, "ci": [lo, hi]}``.
  """
  if n_boot < 2:
    raise ValueError(f"n_boot must be >= 2, got {n_boot!r}")
  rows = select(frame, param, layer)
  finite = np.isfinite(rows["grad_norm"].to_numpy(np.float64))
  rows = rows[finite]  # NaN/inf rows are left out of every fit, and counted in meta
  if rows.empty:
    raise ValueError(f"no finite rows with param={param!r} at layer {'L' if layer is None else layer}")
  if not (rows["grad_norm"] > 0).all():
    raise ValueError(f"log-log fits need positive norms; {param} has zeros (W_Q, W_K are zero at init)")
  theorem = param == "W2" and layer is None  # Theorem 1 speaks of the last layer's W2 only
  rows = _with_series_labels(rows)
  q_rows = _final_states(rows, hidden)
  rows = rows.assign(d_ff=rows.pop("label"))
  long = [rows.assign(quantity="g", value=rows["grad_norm"])]
  if q_rows is not None:
    long.append(q_rows)
  table = _paired_table(pd.concat(long, ignore_index=True)[["quantity", *SERIES_KEYS, "d", "L", "seed", "value"]],
                        n_boot, seed)
  keys = sorted({tuple(k) for k in rows[list(SERIES_KEYS)].itertuples(index=False)},
                key=lambda k: (arch_key(k[0]), *map(str, k[1:])))
  series, fitted = [], {}
  for key in keys:
    entry, fitted[key] = _series_entry(key, table, theorem, q_rows is not None)
    series.append(entry)
  for key, entry in zip(keys, series):
    _linear_baseline(entry, key, fitted)
  ratios = [_ratio_entry(key, fitted[key], fitted[("pre", *key[1:])], table, theorem, hidden)
            for key in keys if key[0] == "post" and ("pre", *key[1:]) in fitted]
  meta = {"param": param, "layer": "L" if layer is None else int(layer), "n_boot": n_boot, "seed": seed,
          "ci": CI_LEVEL, "ci_covers": CI_SCOPE, "theorem": theorem, "dropped_nonfinite": int((~finite).sum())}
  return {"meta": meta, "series": series, "ratios": [r for r in ratios if r is not None]}


def _final_states(rows: pd.DataFrame, hidden: pd.DataFrame | None) -> pd.DataFrame | None:
  """Pre-LN's ``q_{L+1} = sq_norm/d`` at ``layer = L + 1`` of the cells in ``rows`` (with their d_ff series
  ``label``), as quantity "q"; None if there is none."""
  if hidden is None:
    return None
  q = hidden[(hidden["arch"] == "pre") & (hidden["layer"] == hidden["L"] + 1)]
  q = q.merge(rows[[*CELL_COLUMNS, "label"]].drop_duplicates(), on=list(CELL_COLUMNS))
  if q.empty:
    return None
  return q.assign(d_ff=q["label"], quantity="q", value=q["sq_norm"] / q["d"])


class _Fitted(NamedTuple):
  """What the ratio and baseline comparisons reuse of a fitted series."""

  d_C: np.ndarray
  L_C: np.ndarray
  g_C: np.ndarray
  boot_BxC: np.ndarray
  power: _LeastSquares
  entry: dict


def _series_entry(key: tuple, table: _Table, theorem: bool, has_q: bool) -> tuple[dict, _Fitted]:
  arch = key[0]
  d_C, L_C, g_C, n_C, g_BxC = table.part("g", key)
  power_ls = _power_law(d_C, L_C, g_C, g_BxC)
  power = _with_C(_estimates(power_ls))
  envelope = envelope_fit(d_C, L_C, g_C, g_BxC, arch)
  cells = [{"d": int(d), "L": int(L), "n_seeds": int(n), "mean": float(g)} for d, L, n, g in zip(d_C, L_C, n_C, g_C)]
  entry = {**_json_key(key), "cells": cells, "bound_shape": bound_shape_fit(d_C, L_C, g_C, g_BxC),
           "power_law": power, "envelope": envelope, "local_exponents": local_exponents(d_C, L_C, g_C, g_BxC),
           "checks": bound_checks(arch, d_C, power, envelope) if theorem else []}
  if theorem:
    entry["mean_field"], mf_C = _mean_field_fit(entry, d_C, L_C)
    if mf_C is not None:
      for cell, value in zip(cells, mf_C):
        cell["mean_field"] = float(value)
      for step, mf_step in zip(entry["local_exponents"], local_exponents(d_C, L_C, mf_C, mf_C[None])):
        step["mean_field"] = mf_step["gamma"]["value"]
    entry["tightness"] = _tightness(arch, d_C, L_C, power, power_ls, entry["mean_field"])
    if arch == "pre":
      entry["lemma2_band"] = _lemma2_band(key, table) if has_q else None
  return entry, _Fitted(d_C, L_C, g_C, g_BxC, power_ls, entry)


def _mean_field_fit(entry: dict, d_C: np.ndarray, L_C: np.ndarray) -> tuple[dict, np.ndarray | None]:
  """The mean field's power law on the series' own cells, or the reason it has none."""
  gap = theory.mean_field_gap(entry)
  if gap is not None:
    return {"note": gap}, None
  n = entry["n"]
  mf_C = np.empty_like(d_C)
  for d in np.unique(d_C):
    at = d_C == d
    d_ff = default_d_ff(int(d), entry.get("ffn", "relu")) if entry["d_ff"] == "d" else entry["d_ff"]
    mf_C[at] = theory.last_layer_w2_curve(entry["arch"], int(d), L_C[at].astype(int), n, d_ff, **theory.block_of(entry))
  fit = _power_law(d_C, L_C, mf_C, mf_C[None])
  return {name: float(fit.point[name]) for name in ("alpha", "gamma") if name in fit.point}, mf_C


def _tightness(arch: str, d_C, L_C, power: dict, power_ls: _LeastSquares, mean_field: dict) -> list[dict]:
  """α and γ against the theorem's exponents and the mean field's fit on the same cells."""
  out = []
  for name in ("gamma", "alpha"):
    if name not in power:
      continue
    grid = L_C if name == "gamma" else d_C
    item = {"name": name, "value": power[name]["value"], "ci": power[name]["ci"],
            "over": [int(grid.min()), int(grid.max())]}
    if arch in theory.THEOREM_GAMMA:
      expected = ([theory.THEOREM_GAMMA[arch]] * 2 if name == "gamma"
                  else [1.0, theory.bound_d_exponent(d_C.min(), d_C.max())])
      item["theorem"] = {"expected": expected, **compare(power[name], *expected)}
    if name in mean_field:
      item["mean_field"] = _difference(power[name], power_ls.boot[name], mean_field[name], mean_field[name])
    out.append(item)
  return out


def _linear_baseline(entry: dict, key: tuple, fitted: dict) -> None:
  """For a loss other than linear: α and γ minus those of the linear-loss series on the same cells (paired)."""
  base = fitted.get((key[0], "linear", *key[2:]))
  if key[1] == "linear" or base is None or "tightness" not in entry:
    return
  own = fitted[key]
  if not (np.array_equal(own.d_C, base.d_C) and np.array_equal(own.L_C, base.L_C)):
    return
  for item in entry["tightness"]:
    name = item["name"]
    item["linear_baseline"] = _difference(item, own.power.boot[name], base.power.point[name], base.power.boot[name])


def _lemma2_band(key: tuple, table: _Table) -> dict | None:
  """Pre-LN's measured ``q_{L+1}`` per cell against Lemma 2's ``[1 + L/2, 1 + 3L/2]``."""
  d_C, L_C, q_C, _, q_BxC = table.part("q", key)
  if not q_C.size:
    return None
  lower_C, upper_C = theory.pre_sq_norm_bounds(1, L_C)
  cells = []
  for c, (d, L) in enumerate(zip(d_C, L_C)):
    q = ci(q_C[c], q_BxC[:, c])
    lo, hi = q["ci"]
    status = "inside" if lower_C[c] <= lo and hi <= upper_C[c] else "outside" if hi < lower_C[c] or lo > upper_C[c] \
        else "at an edge"
    position = (q_C[c] - lower_C[c]) / (upper_C[c] - lower_C[c])
    cells.append({"d": int(d), "L": int(L), "q": q, "band": [float(lower_C[c]), float(upper_C[c])],
                  "position": float(position), "status": status})
  return {"cells": cells}


def _ratio_entry(key: tuple, post: _Fitted, pre: _Fitted, table: _Table, theorem: bool,
                 hidden: pd.DataFrame | None) -> dict | None:
  """Post/Pre on the cells both have: √L exponent, Lemma 2's ratio check and law (None if < 2 depths)."""
  cells = sorted(set(zip(post.d_C, post.L_C)) & set(zip(pre.d_C, pre.L_C)))
  if len({L for _, L in cells}) < 2:
    return None
  i_post, i_pre = ([list(zip(s.d_C, s.L_C)).index(c) for c in cells] for s in (post, pre))
  d_C, L_C = np.array([c[0] for c in cells]), np.array([c[1] for c in cells])
  post_C, pre_C = post.g_C[i_post], pre.g_C[i_pre]
  post_BxC, pre_BxC = post.boot_BxC[:, i_post], pre.boot_BxC[:, i_pre]
  r_C, r_BxC = post_C / pre_C, post_BxC / pre_BxC
  power_ls = _power_law(d_C, L_C, r_C, r_BxC)
  power = _with_C(_estimates(power_ls))
  beta = _negate(power["gamma"])
  entry = {**{k: v for k, v in _json_key(key).items() if k != "arch"},
           "cells": [{"d": int(d), "L": int(L), "ratio": float(r)} for d, L, r in zip(d_C, L_C, r_C)],
           "power_law": power, "beta": beta}
  if theorem:
    item = {"name": "beta", **beta, "over": [int(L_C.min()), int(L_C.max())],
            "theorem": {"expected": [0.5, 0.5], **compare(beta, 0.5)}}
    mf = [c.get("mean_field") for c in post.entry["cells"]], [c.get("mean_field") for c in pre.entry["cells"]]
    if None not in mf[0] and None not in mf[1]:
      mf_C = np.array(mf[0])[i_post] / np.array(mf[1])[i_pre]
      beta_mf = -float(_power_law(d_C, L_C, mf_C, mf_C[None]).point["gamma"])
      item["mean_field"] = _difference(beta, -power_ls.boot["gamma"], beta_mf, beta_mf)
    entry["tightness"] = [item]
    q_part = table.part("q", ("pre", *key[1:]))
    if q_part[2].size:
      entry["lemma2_ratio"] = _lemma2_ratio(d_C, L_C, 1 / r_C, 1 / r_BxC, q_part)
    else:
      entry["lemma2_ratio_note"] = ("no hidden norms given" if hidden is None else
                                    "hidden_norms.csv has no layer L+1 (the state after the last layer) for pre: "
                                    "a store written before that row existed")
  law = lemma2_law_fit(L_C, pre_C, post_C, pre_BxC, post_BxC)
  if law is not None:
    entry["lemma2_law"] = law
  return entry


def _lemma2_ratio(d_C, L_C, ratio_C, ratio_BxC, q_part) -> dict:
  """Measured ``g_pre/g_post`` against ``√(3/(2 q_{L+1}))`` from the measured q, per cell (paired replicates)."""
  q_index = {(d, L): c for c, (d, L) in enumerate(zip(q_part[0], q_part[1]))}
  cells = []
  for c, (d, L) in enumerate(zip(d_C, L_C)):
    if (d, L) not in q_index:
      continue
    k = q_index[d, L]
    predicted, predicted_B = theory.pre_post_ratio(q_part[2][k]), theory.pre_post_ratio(q_part[4][:, k])
    over = ci(ratio_C[c] / predicted, ratio_BxC[:, c] / predicted_B)
    cells.append({"d": int(d), "L": int(L), "measured": ci(ratio_C[c], ratio_BxC[:, c]),
                  "predicted": ci(predicted, predicted_B), "measured_over_predicted": over,
                  "agrees": bool(over["ci"][0] <= 1.0 <= over["ci"][1])})
  return {"cells": cells}


def effective_depth_fits(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> list[dict]:
  """``rel_update ∝ l^(−κ)`` over the layers of every model in a depth-metric table.

  Args:
    frame: tidy depth-metric table (columns ``schema.DEPTH_COLUMNS``).
    n_boot: bootstrap replicates (over seeds) per model.
    seed: seed of the bootstrap generator.

  Returns:
    One entry per model with at least two layers, sorted by arch then cell: its cell
    columns, ``n_seeds``, ``kappa`` (``{"value", "ci"}``), ``r2``, ``kappa_mean_field``
    (the same fit of :func:`normtheory.theory.mean_field`'s curve; None where it has no
    model of the cell) and ``expected`` (the effective-depth argument's κ,
    ``theory.EFFECTIVE_DEPTH_KAPPA``: ½ for Pre-LN, 0 for Post-LN, else None).
  """
  metric = "rel_update"
  rows = frame[(frame["metric"] == metric) & (frame["L"] >= 2)]
  out = []
  for cell, part in rows.groupby(list(CELL_COLUMNS), sort=False):
    cell = {k: (v if isinstance(v, str) else int(v)) for k, v in zip(CELL_COLUMNS, cell)}
    f = fit_update_exponent(part, cell["arch"], metric, n_boot=n_boot, key=seed)
    kappa_mf = None
    if theory.mean_field_gap(cell, gradient=False) is None:
      layer_L = np.arange(1, cell["L"] + 1, dtype=np.float64)
      curve_L = theory.mean_field(cell["arch"], cell["d"], cell["L"], cell["n"], cell["d_ff"], **theory.block_of(cell))[metric]
      kappa_mf = float(_power_law(np.ones_like(layer_L), layer_L, curve_L, curve_L[None]).point["gamma"])
    out.append({**cell, "metric": metric, "n_seeds": int(part["seed"].nunique()),
                "kappa": {"value": f.kappa, "ci": list(f.ci)}, "r2": f.r2, "kappa_mean_field": kappa_mf,
                "expected": theory.EFFECTIVE_DEPTH_KAPPA.get(cell["arch"])})
  return sorted(out, key=lambda e: (arch_key(e["arch"]), *(str(e[k]) for k in CELL_COLUMNS[1:])))


def fit_store(results_dir, n_boot: int = 1000, seed: int = 0, param: str = "W2", layer: int | None = None) -> dict:
  """:func:`fit_frame` of the store's grad norms with its hidden norms (same arguments and result), plus
  ``effective_depth`` (:func:`effective_depth_fits`) if the store has depth metrics.

  Only the rows the fits use are read (the selection is pushed into the read): ``param`` at the
  fitted layer, Pre-LN's hidden norms at ``layer = L + 1``, and the ``rel_update`` depth metrics."""
  at = pc.field("L") if layer is None else layer
  grad = read_grad_norms(results_dir, (pc.field("param") == param) & (pc.field("layer") == at))
  hidden = _read_optional(results_dir, HIDDEN_FILE, (pc.field("arch") == "pre") & (pc.field("layer") == pc.field("L") + 1))
  fits = fit_frame(grad, n_boot=n_boot, seed=seed, param=param, layer=layer, hidden=hidden)
  fits["meta"]["results_dir"] = str(results_dir)
  depth = read_depth_metrics(results_dir, pc.field("metric") == "rel_update")
  if depth is not None:
    fits["effective_depth"] = effective_depth_fits(depth, n_boot=n_boot, seed=seed)
  return fits


def write_fits(
    results_dir, n_boot: int = 1000, seed: int = 0, param: str = "W2", layer: int | None = None
) -> dict:
  """Fit the store and write ``DIR/fits.json`` atomically; returns the fits dict."""
  fits = fit_store(results_dir, n_boot=n_boot, seed=seed, param=param, layer=layer)
  atomic_write(pathlib.Path(results_dir) / FITS_FILE, json.dumps(fits, indent=1, allow_nan=False))
  return fits
