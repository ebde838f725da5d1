"""Estimators of the fits: seed summaries, the paired bootstrap and its CIs, least-squares power laws.

Point estimates fit the per-cell means over seeds; every number carries a
``CI_LEVEL`` percentile CI from a paired bootstrap (:func:`paired_bootstrap_means`).

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (the bound shapes fitted), Lemma 2 (SPEC §5's ratio law).
  Su 2022, "Why is Pre Norm worse than Post Norm?" (kexue.fm/archives/9009): the
    effective-depth exponent.
  Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 6 and 13 (percentile CIs).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize

from normtheory import theory
from normtheory.schema import CELL_COLUMNS

QUANTILES = {"q05": 0.05, "q95": 0.95, "q99": 0.99}
CI_LEVEL = 0.95
CI_SCOPE = ("seed noise on the given grid (paired bootstrap: one resample of seed indices per replicate, "
            "shared by every cell, arch and table)")


# -------------------------------------------------------------------- summaries


def summarize(frame: pd.DataFrame, value: str = "grad_norm") -> pd.DataFrame:
  """Statistics over seeds of every cell of a tidy table (SPEC §3).

  Args:
    frame: tidy table with a ``seed`` column and the column ``value``.
    value: the measured column ("grad_norm", "sq_norm", "value").

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


# -------------------------------------------------------------------- bootstrap


def paired_bootstrap_means(values_SxC: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
  """Bootstrap replicates of every column's mean, resampling the rows (seeds) jointly.

  Each replicate draws S seed indices with replacement once and averages every
  column over those rows, so columns measured on the same seeds keep their pairing
  (ratios and differences of columns get paired CIs). NaN entries (a cell without
  that seed, or a non-finite value) are left out of their column's mean; a column
  with no finite value among the drawn rows gives NaN.

  Example:
    >>> v_SxC = np.array([[1.0, 2.0], [3.0, np.nan]])
    >>> paired_bootstrap_means(v_SxC, 4, np.random.default_rng(0)).shape
    (4, 2)

  Args:
    values_SxC: rows = seeds (shared across columns), columns = cells.
    n_boot: number of replicates.
    rng: the generator that draws the seed indices.

  Returns:
    ``(n_boot, C)`` array of replicate means.

  References:
    Efron & Tibshirani 1993, Ch. 6 and 13 (bootstrap of paired data, percentile CIs).
  """
  values_SxC = np.asarray(values_SxC, np.float64)
  S = values_SxC.shape[0]
  idx_BxS = rng.integers(0, S, size=(n_boot, S))
  counts_BxS = np.bincount((idx_BxS + S * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * S)
  counts_BxS = counts_BxS.reshape(n_boot, S).astype(np.float64)
  finite_SxC = np.isfinite(values_SxC)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (counts_BxS @ np.where(finite_SxC, values_SxC, 0.0)) / (counts_BxS @ finite_SxC)


def ci(value: float, boot_B: np.ndarray) -> dict:
  """``{"value": value, "ci": [lo, hi]}``: the ``CI_LEVEL`` percentile interval of the finite replicates.

  ``value`` (or the CI) is None where it is not finite (no finite replicate).
  """
  boot_B = np.asarray(boot_B, np.float64)
  boot_B = boot_B[np.isfinite(boot_B)]
  tail = 100 * (1 - CI_LEVEL) / 2
  interval = [float(np.percentile(boot_B, tail)), float(np.percentile(boot_B, 100 - tail))] if boot_B.size else None
  return {"value": float(value) if np.isfinite(value) else None, "ci": interval}


def _negate(estimate: dict) -> dict:
  """The estimate of minus the quantity (CI endpoints swap)."""
  return {"value": -estimate["value"], "ci": [-x for x in estimate["ci"][::-1]]}


def log_scale(y: np.ndarray, shape: np.ndarray) -> float:
  """``C`` of ``y ≈ C · shape`` in log space, ``exp(mean(ln y − ln shape))``: a known slope through points."""
  return float(np.exp(np.mean(np.log(np.asarray(y, np.float64)) - np.log(np.asarray(shape, np.float64)))))


# ------------------------------------------------------------------------- fits


class _LeastSquares(NamedTuple):
  point: dict[str, float]
  boot: dict[str, np.ndarray]
  r2: float | None


def _r2(y_C: np.ndarray, pred_C: np.ndarray) -> float | None:
  ss_tot = float(((y_C - y_C.mean()) ** 2).sum())
  return 1.0 - float(((y_C - pred_C) ** 2).sum()) / ss_tot if ss_tot > 0 else None


def _lstsq(y_C: np.ndarray, y_BxC: np.ndarray, columns: dict[str, np.ndarray], offset_C: np.ndarray,
           ln_g_C: np.ndarray) -> _LeastSquares:
  """Least squares ``y = Σ coef · column`` for the point and every replicate; R² on ln g."""
  names = list(columns)
  X_CxK = np.stack([columns[n] for n in names], axis=1)
  coef_K = np.linalg.lstsq(X_CxK, y_C, rcond=None)[0]
  ok_B = np.isfinite(y_BxC).all(axis=1)  # a replicate that lost every seed of a cell has no fit
  coef_KxB = np.full((len(names), len(y_BxC)), np.nan)
  coef_KxB[:, ok_B] = np.linalg.lstsq(X_CxK, y_BxC[ok_B].T, rcond=None)[0]
  return _LeastSquares(dict(zip(names, coef_K)), dict(zip(names, coef_KxB)), _r2(ln_g_C, X_CxK @ coef_K + offset_C))


def _estimates(ls: _LeastSquares) -> dict:
  out = {name: ci(ls.point[name], ls.boot[name]) for name in ls.point}
  out["r2"] = ls.r2
  return out


def _axes(d_C: np.ndarray, L_C: np.ndarray) -> dict[str, np.ndarray]:
  """Regressors that vary on the grid: intercept, ln d (if ≥2 widths), −ln L (if ≥2 depths)."""
  cols = {"ln_C": np.ones_like(d_C, dtype=np.float64)}
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


def _power_law(d_C: np.ndarray, L_C: np.ndarray, g_C: np.ndarray, g_BxC: np.ndarray) -> _LeastSquares:
  d_C, L_C = np.asarray(d_C, np.float64), np.asarray(L_C, np.float64)
  ln_g_C = np.log(g_C)
  return _lstsq(ln_g_C, np.log(g_BxC), _axes(d_C, L_C), np.zeros_like(ln_g_C), ln_g_C)


def power_law_fit(d_C: np.ndarray, L_C: np.ndarray, g_C: np.ndarray, g_BxC: np.ndarray) -> dict:
  """``g = C d^α L^(−γ)`` by log-log least squares: ln C, C, α (≥2 widths), γ (≥2 depths), R² on ln g.

  Args:
    d_C, L_C: width and depth of each cell.
    g_C: the point values (per-cell means).
    g_BxC: bootstrap replicates of g_C (e.g. :func:`paired_bootstrap_means`).

  Returns:
    ``{name: {"value", "ci"}}`` for ln_C, C, alpha, gamma, and ``"r2"``.
  """
  return _with_C(_estimates(_power_law(d_C, L_C, g_C, g_BxC)))


def power_law_curve(power: dict, d: np.ndarray | float, L: np.ndarray | float) -> np.ndarray:
  """:func:`power_law_fit`'s ``C d^α L^(−γ)`` at (d, L) (α, γ = 0 where the grid did not vary)."""
  alpha = power["alpha"]["value"] if "alpha" in power else 0.0
  gamma = power["gamma"]["value"] if "gamma" in power else 0.0
  return power["C"]["value"] * np.asarray(d, np.float64) ** alpha * np.asarray(L, np.float64) ** -gamma


def bound_shape_fit(d_C: np.ndarray, L_C: np.ndarray, g_C: np.ndarray, g_BxC: np.ndarray) -> dict:
  """``g = C d √(ln d) L^(−γ)``: ln C, C and γ (γ only with ≥2 depths), CIs, R² on ln g."""
  shape_C = np.log(theory.bound_shape("post", d_C, 1.0))
  cols = {k: v for k, v in _axes(d_C, L_C).items() if k != "alpha"}
  return _with_C(_estimates(_lstsq(np.log(g_C) - shape_C, np.log(g_BxC) - shape_C, cols, shape_C, np.log(g_C))))


def envelope_fit(d_C: np.ndarray, L_C: np.ndarray, g_C: np.ndarray, g_BxC: np.ndarray, arch: str) -> dict:
  """``max g / shape`` over the grid and the slopes of ``ln(g / shape)`` in ln L, ln d.

  ``shape`` is Theorem 1's bound of ``arch`` (:func:`normtheory.theory.bound_shape`;
  Pre-LN's for archs the theorem does not cover). Slopes have their natural sign
  (+ = the ratio grows): an O() bound is respected by slopes <= 0.
  """
  shape_arch = arch if arch in theory.THEOREM_GAMMA else "pre"
  shape_C = theory.bound_shape(shape_arch, d_C, L_C)
  r_C, r_BxC = g_C / shape_C, g_BxC / shape_C
  out = {"shape": theory.THEOREM_SHAPE[shape_arch], "max": ci(r_C.max(), r_BxC.max(axis=1))}
  slopes = _estimates(_lstsq(np.log(r_C), np.log(r_BxC), _axes(d_C, L_C), np.log(shape_C), np.log(g_C)))
  if "gamma" in slopes:
    out["slope_ln_L"] = _negate(slopes["gamma"])
  if "alpha" in slopes:
    out["slope_ln_d"] = slopes["alpha"]
  return out


def local_exponents(d_C: np.ndarray, L_C: np.ndarray, g_C: np.ndarray, g_BxC: np.ndarray) -> list[dict]:
  """Secant exponents ``−Δln g / Δln L`` between consecutive depths of the grid.

  Per width, and pooled: the mean over the widths that have both depths (the
  least-squares γ of those cells with one intercept per width).

  Returns:
    One entry per consecutive pair of depths: ``{"L": [L_a, L_b], "gamma": {"value",
    "ci"}, "by_d": [{"d", "gamma"}]}``.
  """
  d_C, L_C = np.asarray(d_C, np.float64), np.asarray(L_C, np.float64)
  depths = np.unique(L_C)
  index = {(d, L): c for c, (d, L) in enumerate(zip(d_C, L_C))}
  out = []
  for L_a, L_b in zip(depths[:-1], depths[1:]):
    widths = [d for d in np.unique(d_C) if (d, L_a) in index and (d, L_b) in index]
    if not widths:
      continue
    a_W, b_W = [index[d, L_a] for d in widths], [index[d, L_b] for d in widths]
    step = np.log(L_b / L_a)
    gamma_W = -np.log(g_C[b_W] / g_C[a_W]) / step
    gamma_BxW = -np.log(g_BxC[:, b_W] / g_BxC[:, a_W]) / step
    out.append({
        "L": [int(L_a), int(L_b)],
        "gamma": ci(gamma_W.mean(), gamma_BxW.mean(axis=1)),
        "by_d": [{"d": int(d), "gamma": ci(gamma_W[w], gamma_BxW[:, w])} for w, d in enumerate(widths)],
    })
  return out


class UpdateExponent(NamedTuple):
  """``metric ∝ layer^(−κ)`` of one model: κ, its CI and the point fit's R² on ln(metric)."""

  kappa: float
  ci: tuple[float, float]
  r2: float


def fit_update_exponent(frame: pd.DataFrame, arch: str = "pre", metric: str = "rel_update",
                        min_layer: int = 1, n_boot: int = 1000, key: int = 0) -> UpdateExponent:
  """Fit ``metric ∝ layer^(−κ)`` over the layers of one model, with a paired-bootstrap CI over seeds.

  The point estimate is the log-log least-squares slope of the seed-mean curve
  (:func:`power_law_fit` in the layer index); the CI resamples seeds, shared by every
  layer (:func:`paired_bootstrap_means`). The effective-depth argument predicts
  κ = ½ for Pre-LN's rel_update at large l; at finite depth the mean-field curve
  ``theory.mean_field(...)["rel_update"]`` gives the value to expect (at d=64, L=48:
  0.48 over layers 1-48, 0.54 over 8-48, because the stream grows slower than 3/2
  per layer at first). Post-LN gives κ ≈ 0.

  Args:
    frame: a :func:`normtheory.depth_metrics.depth_metrics` table (one configuration per arch).
    arch: which architecture's rows to fit.
    metric: which metric to fit.
    min_layer: fit layers ``>= min_layer`` only (to skip the pre-asymptotic start).
    n_boot: bootstrap replicates.
    key: seed of the bootstrap's numpy generator.

  Returns:
    :class:`UpdateExponent`.

  References:
    Su 2022, kexue.fm/archives/9009 (the effective-depth argument).
  """
  rows = frame[(frame["arch"] == arch) & (frame["metric"] == metric) & (frame["layer"] >= min_layer)]
  if rows.empty:
    raise ValueError(f"no {metric} rows for arch {arch!r} at layers >= {min_layer}")
  if len(rows.groupby([c for c in CELL_COLUMNS if c in rows.columns and c != "arch"])) != 1:
    raise ValueError("frame holds several configurations of this arch; filter it to one")
  table_SxK = rows.pivot_table(index="seed", columns="layer", values="value")
  layer_K, value_SxK = table_SxK.columns.to_numpy(np.float64), table_SxK.to_numpy(np.float64)
  boot_BxK = paired_bootstrap_means(value_SxK, n_boot, np.random.default_rng(key))
  fit = power_law_fit(np.ones_like(layer_K), layer_K, value_SxK.mean(0), boot_BxK)
  return UpdateExponent(fit["gamma"]["value"], tuple(fit["gamma"]["ci"]), fit["r2"])


def _lemma2_law_params(L_C: np.ndarray, r_C: np.ndarray) -> np.ndarray:
  """(a, c) of ``theory.lemma2_ratio_law`` by curve_fit from the linearised start; NaN on failure."""
  slope, intercept = np.polyfit(L_C, 1.0 / r_C**2, 1)
  p0 = (1 / np.sqrt(intercept), max(slope / intercept, 1e-3)) if intercept > 0 else (r_C[0], 0.5)
  try:
    with warnings.catch_warnings():  # the covariance is not used: the CIs come from the bootstrap
      warnings.simplefilter("ignore", optimize.OptimizeWarning)
      bounds = ([0.0, 0.0], [np.inf, np.inf])
      return optimize.curve_fit(theory.lemma2_ratio_law, L_C, r_C, p0=p0, bounds=bounds, max_nfev=200)[0]
  except (RuntimeError, ValueError):
    return np.full(2, np.nan)


def lemma2_law_fit(L_C: np.ndarray, pre_C: np.ndarray, post_C: np.ndarray, pre_BxC: np.ndarray,
                   post_BxC: np.ndarray) -> dict | None:
  """SPEC §5's ``g_pre / g_post = a / √(1 + c L)`` by scipy curve_fit: a, c with CIs, R² on the ratio.

  Returns None where the law does not converge on the point data (e.g. where
  ``1/ratio²`` is convex in L, which that law cannot fit).
  """
  r_C, r_BxC = pre_C / post_C, pre_BxC / post_BxC
  a, c = _lemma2_law_params(L_C, r_C)
  if not np.isfinite(c):
    return None
  boot_Bx2 = np.stack([_lemma2_law_params(L_C, r) for r in r_BxC])
  return {"a": ci(a, boot_Bx2[:, 0]), "c": ci(c, boot_Bx2[:, 1]),
          "r2": _r2(r_C, theory.lemma2_ratio_law(L_C, a, c))}
