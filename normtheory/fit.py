"""Fits of measured gradient norms against Theorem 1's bounds, with bootstrap CIs.

Input is the tidy table of the results store (``DIR/grad_norms.csv``, one row per
seed, layer and weight). The fitted quantity is one weight's gradient norm at one
layer, by default ``g = ||dLoss/dW2||_F`` at the last layer ``l = L``, in every
(d, L) cell of a *series* (one arch, loss and sequence length n). Per series:

* bound shape   ``g = C · d √(ln d) · L^(−γ)``  (fit ln C and γ; Post γ = 0, Pre γ = ½);
* power law     ``g = C · d^α · L^(−γ)``         (log-log least squares);
* envelopes     ``max g / (d √ln d)`` and ``max g / (d √(ln d / L))`` over the grid,
  and the slopes of ``ln(g / shape)`` in ln L and ln d (no trend: the O() holds);

and per (loss, n) with both Post and Pre:

* Lemma 2 depth law ``g_pre / g_post = a / √(1 + c L)`` (Lemma 2 puts c in [½, 3/2]);
* ratio exponent ``g_post / g_pre ∝ L^β`` (Theorem 1: β = ½, the √L gap).

A store with ``DIR/depth_metrics.csv`` also gets, per model, the effective-depth
exponent κ of ``rel_update ∝ l^(−κ)`` over its layers
(:func:`normtheory.depth_metrics.fit_update_exponent`; the argument predicts κ = ½
for Pre-LN, 0 for Post-LN) next to the mean-field predictor's κ
(:func:`normtheory.theory.mean_field`) on the same layers.

Point estimates fit the per-cell means over seeds. Every fitted number carries a
95% percentile-bootstrap CI: each resample draws seeds with replacement within
every cell, averages, and refits. R² is that of the point fit, on ln g (ratio
scale for the Lemma 2 law).

Example:
  >>> fits = fit_frame(frame, n_boot=200)          # doctest: +SKIP
  >>> print(report(fits))                          # doctest: +SKIP

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (the two bounds) and Lemma 2 (growth of the Pre-LN residual stream).
  Su 2022, "Why is Pre Norm worse than Post Norm?" (kexue.fm/archives/9009): the
    effective-depth argument.
  Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 13 (percentile CIs).
"""

from __future__ import annotations

import json
import pathlib
import zlib

import numpy as np
import pandas as pd
from scipy import optimize

from normtheory import depth_metrics, theory
from normtheory.config import ARCHS
from normtheory.schema import CELL_COLUMNS, DEPTH_FILE, FITS_FILE, GRAD_FILE, HIDDEN_FILE, atomic_write, read_table

SERIES_KEYS = ("arch", "loss", "n")
THEORY_GAMMA = {"post": 0.0, "pre": 0.5}  # Theorem 1's depth exponents
THEORY_SHAPE = {"post": "d sqrt(ln d)", "pre": "d sqrt(ln d / L)"}
LEMMA2_C = (0.5, 1.5)  # (1 + L/2) <= E||x_{L+1}||^2 / d <= (1 + 3L/2)
EFFECTIVE_DEPTH_KAPPA = {"post": 0.0, "pre": 0.5}  # rel_update ∝ l^-kappa (effective-depth argument)
QUANTILES = {"q05": 0.05, "q95": 0.95, "q99": 0.99}
CI_LEVEL = 0.95


# ---------------------------------------------------------------------- reading


def _read(results_dir, filename: str) -> pd.DataFrame:
  """A store CSV (a key of ``schema.TABLES``) that must exist, its header checked by the schema."""
  path = pathlib.Path(results_dir) / filename
  if not path.parent.is_dir():
    raise FileNotFoundError(f"no results directory {path.parent}")
  if not path.is_file():
    raise FileNotFoundError(f"missing {path} (the sweep writes it)")
  return read_table(results_dir, filename)


def read_grad_norms(results_dir) -> pd.DataFrame:
  """``DIR/grad_norms.csv`` as a frame; FileNotFoundError / ValueError if absent or malformed."""
  return _read(results_dir, GRAD_FILE)


def read_hidden_norms(results_dir) -> pd.DataFrame:
  """``DIR/hidden_norms.csv`` as a frame; FileNotFoundError / ValueError if absent or malformed."""
  return _read(results_dir, HIDDEN_FILE)


def read_depth_metrics(results_dir) -> pd.DataFrame | None:
  """``DIR/depth_metrics.csv`` as a frame, or None if the store has none (runs without depth metrics)."""
  if not (pathlib.Path(results_dir) / DEPTH_FILE).is_file():
    return None
  return _read(results_dir, DEPTH_FILE)


# -------------------------------------------------------------------- summaries


def summarize(frame: pd.DataFrame, value: str = "grad_norm") -> pd.DataFrame:
  """Statistics over seeds of every cell of a tidy table (SPEC §3).

  Args:
    frame: tidy table with a ``seed`` column and the column ``value``.
    value: the measured column ("grad_norm" or "sq_norm").

  Returns:
    One row per cell (every other column, e.g. arch, loss, d, L, layer, param) with
    ``n_seeds, mean, std, median, q05, q95, q99`` of ``value`` over seeds.
  """
  keys = [c for c in frame.columns if c not in ("seed", value)]
  grouped = frame.groupby(keys, sort=True)[value]
  stats = grouped.agg(n_seeds="count", mean="mean", std="std", median="median")
  for name, q in QUANTILES.items():
    stats[name] = grouped.quantile(q)
  return stats.reset_index()


def select(frame: pd.DataFrame, param: str = "W2", layer: int | None = None) -> pd.DataFrame:
  """Rows of one weight at one layer: the last layer of each model when ``layer`` is None."""
  rows = frame[frame["param"] == param]
  at = rows["L"] if layer is None else layer
  return rows[rows["layer"] == at]


# ------------------------------------------------------------------- bootstrap


def _cells(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
  """(d_C, L_C, per-seed values per cell) of one series, cells sorted by (d, L)."""
  if rows.duplicated(["d", "L", "seed"]).any():
    raise ValueError("several rows share (d, L, seed) within a series (e.g. several d_ff); filter the frame first")
  groups = list(rows.groupby(["d", "L"], sort=True)["grad_norm"])
  d_C = np.array([k[0] for k, _ in groups], dtype=np.float64)
  L_C = np.array([k[1] for k, _ in groups], dtype=np.float64)
  return d_C, L_C, [v.to_numpy(np.float64) for _, v in groups]


def bootstrap_means(values: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
  """``(n_boot, C)`` cell means, each resample drawing seeds with replacement within every cell."""
  out_BxC = np.empty((n_boot, len(values)))
  for c, v_S in enumerate(values):
    out_BxC[:, c] = v_S[rng.integers(0, v_S.size, size=(n_boot, v_S.size))].mean(axis=1)
  return out_BxC


def _rng(seed: int, label: str) -> np.random.Generator:
  """A generator fixed by (seed, series label), independent of the other series present."""
  return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _ci(value: float, boot_B: np.ndarray) -> dict:
  boot_B = boot_B[np.isfinite(boot_B)]
  tail = 100 * (1 - CI_LEVEL) / 2
  ci = [float(np.percentile(boot_B, tail)), float(np.percentile(boot_B, 100 - tail))] if boot_B.size else None
  return {"value": float(value) if np.isfinite(value) else None, "ci": ci}


def _negate(estimate: dict) -> dict:
  """The estimate of minus the quantity (CI endpoints swap)."""
  return {"value": -estimate["value"], "ci": [-x for x in estimate["ci"][::-1]]}


# ------------------------------------------------------------------------- fits


def _r2(y_C: np.ndarray, pred_C: np.ndarray) -> float | None:
  ss_tot = float(((y_C - y_C.mean()) ** 2).sum())
  return 1.0 - float(((y_C - pred_C) ** 2).sum()) / ss_tot if ss_tot > 0 else None


def _loglinear(
    y_C: np.ndarray, y_BxC: np.ndarray, columns: dict[str, np.ndarray], offset_C: np.ndarray, ln_g_C: np.ndarray
) -> dict:
  """Least squares ``y = Σ coef · column`` for the point and every resample, with CIs and R² on ln g."""
  names = list(columns)
  X_CxK = np.stack([columns[n] for n in names], axis=1)
  coef_K = np.linalg.lstsq(X_CxK, y_C, rcond=None)[0]
  coef_KxB = np.linalg.lstsq(X_CxK, y_BxC.T, rcond=None)[0]
  out = {name: _ci(coef_K[k], coef_KxB[k]) for k, name in enumerate(names)}
  out["r2"] = _r2(ln_g_C, X_CxK @ coef_K + offset_C)
  return out


def _axes(d_C: np.ndarray, L_C: np.ndarray) -> dict[str, np.ndarray]:
  """Regressors that vary on the grid: intercept, ln d (if ≥2 widths), −ln L (if ≥2 depths)."""
  cols = {"ln_C": np.ones_like(d_C)}
  if np.unique(d_C).size > 1:
    cols["alpha"] = np.log(d_C)
  if np.unique(L_C).size > 1:
    cols["gamma"] = -np.log(L_C)
  return cols


def _with_C(fit: dict) -> dict:
  """Add C = exp(ln C) (percentile CIs map through monotone functions)."""
  ln_C = fit["ln_C"]
  fit["C"] = {"value": float(np.exp(ln_C["value"])), "ci": [float(np.exp(x)) for x in ln_C["ci"]]}
  return fit


def bound_shape_fit(d_C, L_C, g_C, g_BxC) -> dict:
  """``g = C d √(ln d) L^(−γ)``: ln C and γ (γ only with ≥2 depths), CIs, R² on ln g."""
  shape_C = np.log(d_C * np.sqrt(np.log(d_C)))
  cols = {k: v for k, v in _axes(d_C, L_C).items() if k != "alpha"}
  return _with_C(_loglinear(np.log(g_C) - shape_C, np.log(g_BxC) - shape_C, cols, shape_C, np.log(g_C)))


def power_law_fit(d_C, L_C, g_C, g_BxC) -> dict:
  """``g = C d^α L^(−γ)``: ln C, α (≥2 widths), γ (≥2 depths), CIs, R² on ln g."""
  zero_C = np.zeros_like(g_C)
  return _with_C(_loglinear(np.log(g_C), np.log(g_BxC), _axes(d_C, L_C), zero_C, np.log(g_C)))


def envelope_fit(d_C, L_C, g_C, g_BxC, arch: str) -> dict:
  """``max g / shape`` over the grid and the slopes of ``ln(g / shape)`` in ln L, ln d.

  ``shape`` is ``d √ln d`` for "post" (Theorem 1, Post-LN) and ``d √(ln d / L)``
  otherwise (Pre-LN). Slopes are reported with their natural sign (+ = grows).
  """
  shape_C = d_C * np.sqrt(np.log(d_C) / (1.0 if arch == "post" else L_C))
  r_C, r_BxC = g_C / shape_C, g_BxC / shape_C
  out = {"shape": THEORY_SHAPE["post" if arch == "post" else "pre"], "max": _ci(r_C.max(), r_BxC.max(axis=1))}
  slopes = _loglinear(np.log(r_C), np.log(r_BxC), _axes(d_C, L_C), np.log(shape_C), np.log(g_C))
  if "gamma" in slopes:
    out["slope_ln_L"] = _negate(slopes["gamma"])
  if "alpha" in slopes:
    out["slope_ln_d"] = slopes["alpha"]
  return out


def lemma2_law(L, a, c):
  """Lemma 2's depth law of the Pre/Post ratio, ``a / √(1 + c L)``."""
  return a / np.sqrt(1.0 + c * L)


def _lemma2_params(L_C: np.ndarray, r_C: np.ndarray) -> np.ndarray:
  """(a, c) by curve_fit from the linearised start ``1/r² = (1 + cL)/a²``; NaN on failure."""
  slope, intercept = np.polyfit(L_C, 1.0 / r_C**2, 1)
  p0 = (1 / np.sqrt(intercept), max(slope / intercept, 1e-3)) if intercept > 0 else (r_C[0], 0.5)
  try:
    bounds = ([0.0, 0.0], [np.inf, np.inf])
    return optimize.curve_fit(lemma2_law, L_C, r_C, p0=p0, bounds=bounds, max_nfev=200)[0]
  except (RuntimeError, ValueError):
    return np.full(2, np.nan)


def lemma2_fit(L_C, pre_C, post_C, pre_BxC, post_BxC) -> dict:
  """``g_pre / g_post = a / √(1 + c L)`` by scipy curve_fit: a, c with CIs, R² on the ratio."""
  r_C, r_BxC = pre_C / post_C, pre_BxC / post_BxC
  a, c = _lemma2_params(L_C, r_C)
  if np.isfinite(c):
    boot_Bx2 = np.stack([_lemma2_params(L_C, r) for r in r_BxC])
  else:  # the law does not fit the data itself: no CI to bootstrap
    boot_Bx2 = np.full((len(r_BxC), 2), np.nan)
  r2 = _r2(r_C, lemma2_law(L_C, a, c)) if np.isfinite(c) else None
  return {"a": _ci(a, boot_Bx2[:, 0]), "c": _ci(c, boot_Bx2[:, 1]), "r2": r2}


# -------------------------------------------------------------------- verdicts


def _check(name: str, estimate: dict, lo: float, hi: float, expected: str) -> dict:
  """Whether the CI meets the theorem's value (or interval [lo, hi]); else by how much it misses."""
  ci_lo, ci_hi = estimate["ci"]
  miss = float(max(lo - ci_hi, ci_lo - hi, 0.0))
  return {
      "name": name,
      "expected": expected,
      "value": estimate["value"],
      "ci": estimate["ci"],
      "holds": miss == 0.0,
      "miss": miss,
  }


def _alpha_range(d_C: np.ndarray) -> tuple[float, float]:
  """[1, effective d-exponent of d√ln d between the grid's smallest and largest d]."""
  lo, hi = np.log(d_C.min()), np.log(d_C.max())
  return 1.0, 1.0 + 0.5 * (np.log(hi) - np.log(lo)) / (hi - lo)


def series_checks(arch: str, d_C: np.ndarray, bound: dict, power: dict, envelope: dict) -> list[dict]:
  """Theorem 1's exponents against the CIs of one series (none for archs without a theorem)."""
  if arch not in THEORY_GAMMA:
    return []
  gamma = THEORY_GAMMA[arch]
  checks = []
  if "gamma" in bound:
    checks.append(_check("gamma (bound shape)", bound["gamma"], gamma, gamma, f"{gamma:g}"))
  if "gamma" in power:
    checks.append(_check("gamma (power law)", power["gamma"], gamma, gamma, f"{gamma:g}"))
  if "alpha" in power:
    lo, hi = _alpha_range(d_C)
    checks.append(_check("alpha (power law)", power["alpha"], lo, hi, f"1 (up to sqrt(ln d): [1, {hi:.3f}])"))
  for axis in ("slope_ln_L", "slope_ln_d"):
    if axis in envelope:  # an O() is an upper bound: a falling ratio still respects it
      checks.append(_check(f"envelope {axis}", envelope[axis], -np.inf, 0.0, "<= 0 (ratio not growing)"))
  return checks


# --------------------------------------------------------------------- drivers


def arch_key(arch: str) -> tuple[int, str]:
  """Sort key of arch names: the library's order (post, pre, ...), then others alphabetically."""
  return (ARCHS.index(arch) if arch in ARCHS else len(ARCHS), arch)


def fit_frame(
    frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0, param: str = "W2", layer: int | None = None
) -> dict:
  """Every fit of one weight's gradient norm, per series, as a JSON-serialisable dict.

  Args:
    frame: tidy gradient-norm table, columns ``GRAD_COLUMNS``.
    n_boot: bootstrap resamples per series.
    seed: seed of the resampling generators (fits are deterministic given it).
    param: which weight ("W2" for Theorem 1).
    layer: which 1-based layer; None means the last layer L of each model.

  Returns:
    ``{"meta": {...}, "series": [...], "ratios": [...]}``. Each series has its
    ``arch, loss, n``, ``cells`` (d, L, n_seeds, mean), ``bound_shape``,
    ``power_law``, ``envelope`` and ``checks`` (theorem exponent vs CI). Each ratio
    entry (per loss, n with both post and pre) has ``cells`` (d, L, ratio
    g_post/g_pre), ``lemma2`` (a, c), ``power_law`` and ``beta`` of
    ``g_post/g_pre ∝ L^β``, and ``checks``. Every estimate
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
  series, boots = [], {}
  keys = sorted(rows.groupby(list(SERIES_KEYS)).groups, key=lambda k: (arch_key(k[0]), *k[1:]))
  for arch, loss, n in keys:
    part = rows[(rows["arch"] == arch) & (rows["loss"] == loss) & (rows["n"] == n)]
    d_C, L_C, values = _cells(part)
    g_C = np.array([v.mean() for v in values])
    g_BxC = bootstrap_means(values, n_boot, _rng(seed, f"{arch}/{loss}/{n}"))
    boots[arch, loss, n] = (d_C, L_C, g_C, g_BxC)
    bound = bound_shape_fit(d_C, L_C, g_C, g_BxC)
    power = power_law_fit(d_C, L_C, g_C, g_BxC)
    envelope = envelope_fit(d_C, L_C, g_C, g_BxC, arch)
    series.append({
        "arch": arch,
        "loss": loss,
        "n": int(n),
        "cells": [
            {"d": int(d), "L": int(L), "n_seeds": int(v.size), "mean": float(v.mean())}
            for d, L, v in zip(d_C, L_C, values)
        ],
        "bound_shape": bound,
        "power_law": power,
        "envelope": envelope,
        "checks": series_checks(arch, d_C, bound, power, envelope) if theorem else [],
    })
  ratios = [
      _ratio_entry(loss, n, boots["post", loss, n], boots["pre", loss, n], theorem)
      for arch, loss, n in keys
      if arch == "post" and ("pre", loss, n) in boots
  ]
  meta = {"param": param, "layer": "L" if layer is None else int(layer), "n_boot": n_boot, "seed": seed,
          "ci": CI_LEVEL, "theorem": theorem, "dropped_nonfinite": int((~finite).sum())}
  return {"meta": meta, "series": series, "ratios": [r for r in ratios if r is not None]}


def _ratio_entry(loss: str, n: int, post: tuple, pre: tuple, theorem: bool) -> dict | None:
  """Lemma 2 law and √L exponent of Post vs Pre on the cells both have (None if < 2 depths);
  checks against the theory only when ``theorem`` (last layer's W2)."""
  cells = sorted(set(zip(post[0], post[1])) & set(zip(pre[0], pre[1])))
  if len({L for _, L in cells}) < 2:
    return None
  i_post, i_pre = ([list(zip(s[0], s[1])).index(c) for c in cells] for s in (post, pre))
  d_C, L_C = np.array([c[0] for c in cells]), np.array([c[1] for c in cells])
  post_C, pre_C = post[2][i_post], pre[2][i_pre]
  post_BxC, pre_BxC = post[3][:, i_post], pre[3][:, i_pre]
  r_C, r_BxC = post_C / pre_C, post_BxC / pre_BxC
  lemma2 = lemma2_fit(L_C, pre_C, post_C, pre_BxC, post_BxC)
  power = power_law_fit(d_C, L_C, r_C, r_BxC)
  beta = _negate(power["gamma"])
  checks = [_check("beta of g_post/g_pre ~ L^beta", beta, 0.5, 0.5, "0.5 (sqrt L)")] if theorem else []
  if theorem and lemma2["c"]["value"] is not None and lemma2["c"]["ci"] is not None:
    checks.append(_check("c of Lemma 2 law", lemma2["c"], *LEMMA2_C, "[0.5, 1.5] (Lemma 2)"))
  return {
      "loss": loss,
      "n": int(n),
      "cells": [{"d": int(d), "L": int(L), "ratio": float(r)} for d, L, r in zip(d_C, L_C, r_C)],
      "lemma2": lemma2,
      "power_law": power,
      "beta": beta,
      "checks": checks,
  }


def effective_depth_fits(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> list[dict]:
  """``rel_update ∝ l^(−κ)`` over the layers of every model in a depth-metric table.

  Args:
    frame: tidy depth-metric table (columns ``depth_metrics.COLUMNS``).
    n_boot: bootstrap resamples (over seeds) per model.
    seed: seed of the bootstrap generator.

  Returns:
    One entry per model with at least two layers, sorted by arch then cell: its cell
    columns, ``n_seeds``, ``kappa`` (``{"value", "ci"}``), ``r2``, ``kappa_mean_field``
    (the same fit of :func:`normtheory.theory.mean_field`'s curve) and ``expected``
    (the effective-depth argument's κ: ½ for Pre-LN, 0 for Post-LN, else None).
  """
  metric = "rel_update"
  rows = frame[(frame["metric"] == metric) & (frame["L"] >= 2)]
  out = []
  for cell, part in rows.groupby(list(CELL_COLUMNS), sort=False):
    cell = dict(zip(CELL_COLUMNS, cell))
    arch, d, L, n, d_ff = (cell[k] for k in ("arch", "d", "L", "n", "d_ff"))
    f = depth_metrics.fit_update_exponent(part, arch, metric, n_boot=n_boot, key=seed)
    layer_L = np.arange(1, L + 1)
    applies = theory.mean_field_applies(cell)
    mean_field_L = theory.mean_field(arch, int(d), int(L), int(n), int(d_ff))[metric] if applies else None
    out.append({
        **{k: (v if isinstance(v, str) else int(v)) for k, v in cell.items()},
        "metric": metric,
        "n_seeds": int(part["seed"].nunique()),
        "kappa": {"value": f["kappa"], "ci": list(f["ci"])},
        "r2": f["r2"],
        "kappa_mean_field": float(-np.polyfit(np.log(layer_L), np.log(mean_field_L), 1)[0]) if applies else None,
        "expected": EFFECTIVE_DEPTH_KAPPA.get(arch),
    })
  return sorted(out, key=lambda e: (arch_key(e["arch"]), *(e[k] for k in CELL_COLUMNS[1:])))


def fit_store(results_dir, n_boot: int = 1000, seed: int = 0, param: str = "W2", layer: int | None = None) -> dict:
  """:func:`fit_frame` of ``DIR/grad_norms.csv`` (same arguments and result), plus
  ``effective_depth`` (:func:`effective_depth_fits`) if the store has ``depth_metrics.csv``."""
  fits = fit_frame(read_grad_norms(results_dir), n_boot=n_boot, seed=seed, param=param, layer=layer)
  fits["meta"]["results_dir"] = str(results_dir)
  depth = read_depth_metrics(results_dir)
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


# ---------------------------------------------------------------------- report


def _fmt(estimate: dict) -> str:
  if estimate["value"] is None:
    return "n/a (fit failed)"
  lo, hi = estimate["ci"]
  return f"{estimate['value']:.3g} [{lo:.3g}, {hi:.3g}]"


def _grid(cells: list[dict]) -> str:
  ds = sorted({c["d"] for c in cells})
  Ls = sorted({c["L"] for c in cells})
  seeds = sorted({c["n_seeds"] for c in cells})
  s = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
  return f"d in {{{', '.join(map(str, ds))}}}, L in {{{', '.join(map(str, Ls))}}}, {s} seeds/cell"


def _check_line(check: dict) -> str:
  if check["holds"]:
    return f"  holds:  {check['name']} = {_fmt(check)}; the CI meets the theorem's {check['expected']}."
  return (
      f"  MISSES: {check['name']} = {_fmt(check)}; the CI excludes the theorem's {check['expected']}"
      f" by {check['miss']:.3g}."
  )


def report(fits: dict) -> str:
  """Plain-text verdict of :func:`fit_frame`'s result, one block per series and per Post/Pre pair."""
  meta = fits["meta"]
  layer = "the last layer L" if meta["layer"] == "L" else f"layer {meta['layer']}"
  title = "Theorem 1 on the grid" if meta["theorem"] else "Descriptive fits (Theorem 1 concerns W2 at layer L)"
  lines = [
      f"{title}: ||dLoss/d{meta['param']}|| at {layer}; "
      f"{100 * meta['ci']:.0f}% bootstrap CIs over seeds ({meta['n_boot']} resamples, seed {meta['seed']})."
  ]
  if meta.get("dropped_nonfinite"):
    lines.append(f"  WARNING: {meta['dropped_nonfinite']} non-finite values were left out of these fits.")
  for s in fits["series"]:
    b, p, e = s["bound_shape"], s["power_law"], s["envelope"]
    lines.append(f"{s['arch']} (loss={s['loss']}, n={s['n']}): {_grid(s['cells'])}")
    bound = f"C = {_fmt(b['C'])}" + (f", gamma = {_fmt(b['gamma'])}" if "gamma" in b else "")
    lines.append(f"  bound shape C d sqrt(ln d) L^-gamma: {bound}, R^2 = {_r2_text(b['r2'])}")
    terms = [f"{k} = {_fmt(p[k])}" for k in ("alpha", "gamma") if k in p]
    lines.append(f"  power law C d^alpha L^-gamma: C = {_fmt(p['C'])}, {', '.join(terms) or 'one cell'}, "
                 f"R^2 = {_r2_text(p['r2'])}")
    slopes = [f"slope in ln {k[-1]} = {_fmt(e[k])}" for k in ("slope_ln_L", "slope_ln_d") if k in e]
    lines.append(f"  envelope max g/({e['shape']}) = {_fmt(e['max'])}" + ("; " + ", ".join(slopes) if slopes else ""))
    if meta["theorem"] and not s["checks"]:
      lines.append(f"  no Theorem 1 exponent for {s['arch']}; the fits above are descriptive.")
    lines.extend(_check_line(c) for c in s["checks"])
    if s["checks"]:
      held = all(c["holds"] for c in s["checks"])
      verdict = "consistent with" if held else "departs from"
      lines.append(f"  => {s['arch']}: {verdict} Theorem 1's O({THEORY_SHAPE[s['arch']]}) on this grid.")
  for r in fits["ratios"]:
    lem = r["lemma2"]
    lines.append(f"post vs pre (loss={r['loss']}, n={r['n']}): g_pre/g_post = a/sqrt(1 + c L): "
                 f"a = {_fmt(lem['a'])}, c = {_fmt(lem['c'])}, R^2 = {_r2_text(lem['r2'])}")
    lines.extend(_check_line(c) for c in r["checks"])
  lines.extend(_effective_depth_lines(fits.get("effective_depth", [])))
  return "\n".join(lines)


def _effective_depth_lines(entries: list[dict]) -> list[str]:
  if not entries:
    return []
  lines = [f"Effective depth: {entries[0]['metric']} ∝ l^-kappa over layers 1..L, 95% bootstrap CI over seeds "
           "(the argument predicts kappa = 1/2 for pre, 0 for post):"]
  for e in entries:
    expected = "" if e["expected"] is None else f"; argument {e['expected']:g}"
    lines.append(f"  {e['arch']} (loss={e['loss']}, d={e['d']}, n={e['n']}, L={e['L']}, {e['n_seeds']} seeds): "
                 f"kappa = {_fmt(e['kappa'])}, R^2 = {_r2_text(e['r2'])}; mean field "
                 f"{'n/a' if e['kappa_mean_field'] is None else format(e['kappa_mean_field'], '.3g')}"
                 f"{expected}")
  return lines


def _r2_text(r2: float | None) -> str:
  return "n/a" if r2 is None else f"{r2:.3f}"
