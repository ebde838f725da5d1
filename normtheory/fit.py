"""Estimators of the results store: power-law fits, paired bootstrap CIs, Theorem 1's verdicts.

The one home of the package's estimators (log-log least squares, the paired
bootstrap and its CI level); the theorem's formulas live in :mod:`normtheory.theory`.
Input is the tidy table of the results store (``DIR/grad_norms.csv``, one row per
seed, layer and weight). The fitted quantity is one weight's gradient norm at one
layer, by default ``g = ||dLoss/dW2||_F`` at the last layer ``l = L``, in every
(d, L) cell of a *series*: one value of every cell column but d and L (arch, loss,
n, d_ff, batch, attention, heads, inputs; ``SERIES_KEYS``). Per series:

* bound shape   ``g = C · d √(ln d) · L^(−γ)``  (fit ln C and γ);
* power law     ``g = C · d^α · L^(−γ)``         (log-log least squares);
* envelope      ``max g / shape`` over the grid and the slopes of ``ln(g / shape)`` in
  ln L and ln d, with ``shape`` Theorem 1's bound (:func:`normtheory.theory.bound_shape`);
* local exponents ``−Δln g / Δln L`` between consecutive depths of the grid;
* **checks** (Theorem 1's claim, one-sided, Post-LN and Pre-LN only): γ at least the
  theorem's (Post 0, Pre ½), α at most the effective exponent of ``d √ln d`` on the
  grid's widths, envelope slopes at most 0. A CI entirely on the wrong side is a
  violation (with the miss); a CI containing the limit holds at the limit;
* **tightness** (informational, never a violation): whether α and γ equal the
  theorem's, and how they compare with the mean field
  (:func:`normtheory.theory.last_layer_w2_curve`) fitted on the same cells, or,
  for another loss, with the store's linear-loss series of the same cells;
* Lemma 2's band for Pre-LN's ``q_{L+1} = E||x_{L+1}||²/d`` (needs ``hidden_norms.csv``
  with the row ``layer = L + 1``, the state after the last layer).

Per pair of Post and Pre series with the same other keys: the ratio
``g_post/g_pre ∝ L^β`` (Theorem 1's bounds differ by √L), the check of
``g_pre/g_post = √(3 / (2 q_{L+1}))`` (:func:`normtheory.theory.pre_post_ratio`) in
every cell, and SPEC §5's law ``a / √(1 + c L)`` where it converges.

Point estimates fit the per-cell means over seeds. Every number carries a 95%
percentile CI from a *paired* bootstrap: seed s has the same inputs, targets and
weights in every cell of a pass and every arch, so each replicate resamples the
seed indices once (:func:`paired_bootstrap_means`) and reuses them for every cell,
arch and table; ratios and differences keep the pairing. The CIs cover the seed
noise on the given grid only, not the extrapolation beyond it. R² is that of the
point fit, on ln g.

Example:
  >>> fits = fit_frame(frame, n_boot=200)          # doctest: +SKIP
  >>> print(report(fits))                          # doctest: +SKIP

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (the two bounds), Lemma 2 (growth of the Pre-LN residual stream),
    Lemma 3 (the LayerNorm Jacobian).
  Su 2022, "Why is Pre Norm worse than Post Norm?" (kexue.fm/archives/9009): the
    effective-depth argument.
  Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 13 (percentile CIs).
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize

from normtheory import theory
from normtheory.config import ARCHS, default_d_ff
from normtheory.schema import (
    CELL_COLUMNS,
    CELL_DEFAULTS,
    DEPTH_FILE,
    FITS_FILE,
    GRAD_FILE,
    HIDDEN_FILE,
    LN_JACOBIAN_FILE,
    atomic_write,
    read_table,
)

SERIES_KEYS = tuple(c for c in CELL_COLUMNS if c not in ("d", "L"))
SERIES_DEFAULTS = {"d_ff": "d", **CELL_DEFAULTS}  # d_ff "d": every cell's FFN is d wide
QUANTILES = {"q05": 0.05, "q95": 0.95, "q99": 0.99}
CI_LEVEL = 0.95
CI_SCOPE = ("seed noise on the given grid (paired bootstrap: one resample of seed indices per replicate, "
            "shared by every cell, arch and table)")


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


# --------------------------------------------------------------- checks, words


HOLDS, AT_LIMIT, VIOLATED = "holds", "at the limit", "violated"


def one_sided_check(name: str, estimate: dict, limit: float, side: str, claim: str) -> dict:
  """Whether an estimate's CI respects ``value >= limit`` (side ">=") or ``value <= limit`` ("<=").

  Returns:
    ``{"name", "claim", "limit", "value", "ci", "status", "holds", "miss"}``: status "holds"
    (the CI lies on the allowed side), "at the limit" (the CI contains the limit:
    consistent with the bound, not distinguishable from its limit on this grid) or
    "violated" (the CI lies on the wrong side; ``miss`` is its distance to the limit).
  """
  lo, hi = estimate["ci"]
  wrong, right = (hi < limit, lo >= limit) if side == ">=" else (lo > limit, hi <= limit)
  miss = float(limit - hi if side == ">=" else lo - limit) if wrong else 0.0
  status = VIOLATED if wrong else HOLDS if right else AT_LIMIT
  return {"name": name, "claim": claim, "limit": float(limit), "value": estimate["value"], "ci": estimate["ci"],
          "status": status, "holds": not wrong, "miss": miss}


def bound_checks(arch: str, d_C: np.ndarray, power: dict, envelope: dict) -> list[dict]:
  """Theorem 1's one-sided claims against the CIs of one series (none for archs it does not cover)."""
  if arch not in theory.THEOREM_GAMMA:
    return []
  gamma = theory.THEOREM_GAMMA[arch]
  checks = []
  if "gamma" in power:
    checks.append(one_sided_check("gamma", power["gamma"], gamma, ">=", f"gamma >= {gamma:g}"))
  if "alpha" in power:
    top = theory.bound_d_exponent(d_C.min(), d_C.max())
    checks.append(one_sided_check("alpha", power["alpha"], top, "<=",
                                  f"alpha <= {top:.3f}, d sqrt(ln d)'s exponent over these widths"))
  for axis in ("slope_ln_L", "slope_ln_d"):
    if axis in envelope:
      checks.append(one_sided_check(f"envelope {axis}", envelope[axis], 0.0, "<=",
                                    f"slope <= 0: g/({envelope['shape']}) not growing in ln {axis[-1]}"))
  return checks


def compare(estimate: dict, lo: float, hi: float | None = None) -> dict:
  """Where an estimate's CI lies relative to a value (or interval ``[lo, hi]``).

  Returns:
    ``{"relation": "equal" | "larger" | "smaller", "gap": distance from the CI to
    the value (0 if equal)}``; "equal" means the CI meets it.
  """
  hi = lo if hi is None else hi
  ci_lo, ci_hi = estimate["ci"]
  if ci_lo > hi:
    return {"relation": "larger", "gap": float(ci_lo - hi)}
  if ci_hi < lo:
    return {"relation": "smaller", "gap": float(lo - ci_hi)}
  return {"relation": "equal", "gap": 0.0}


def _difference(estimate: dict, boot_B: np.ndarray, other: float, other_B: np.ndarray | float) -> dict:
  """Measured minus a reference (a constant or paired replicates), and whether the CI contains the reference."""
  diff = ci(estimate["value"] - other, boot_B - other_B)
  lo, hi = estimate["ci"]
  return {"value": float(other), "difference": diff, "contains": bool(lo <= other <= hi)}


# --------------------------------------------------------------------- drivers


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
  """:func:`fit_frame` of ``DIR/grad_norms.csv`` with ``DIR/hidden_norms.csv`` (same arguments and
  result), plus ``effective_depth`` (:func:`effective_depth_fits`) if the store has ``depth_metrics.csv``."""
  hidden = _read_optional(results_dir, HIDDEN_FILE)
  fits = fit_frame(read_grad_norms(results_dir), n_boot=n_boot, seed=seed, param=param, layer=layer, hidden=hidden)
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


def table(fits: dict) -> pd.DataFrame:
  """Every estimate of :func:`fit_frame`'s result as a tidy frame, one row per estimate.

  Columns: ``scope`` ("series", "ratio", "effective_depth"), the series keys
  (``SERIES_KEYS``; ratio rows have no arch; effective-depth rows add d and L),
  ``fit`` (e.g. "power_law", "envelope", "tightness"), ``quantity`` (e.g. "gamma",
  "slope_ln_L", "6-12" for a local exponent), ``value``, ``ci_lo``, ``ci_hi``.
  """
  rows = []

  def add(scope, keys, fit, quantity, estimate):
    lo, hi = estimate["ci"] if estimate.get("ci") else (None, None)
    rows.append({"scope": scope, **keys, "fit": fit, "quantity": quantity, "value": estimate["value"],
                 "ci_lo": lo, "ci_hi": hi})

  def estimates(scope, keys, fit, block):
    for quantity, estimate in block.items():
      if isinstance(estimate, dict) and "value" in estimate and "ci" in estimate:
        add(scope, keys, fit, quantity, estimate)

  for s in fits["series"]:
    keys = {k: s[k] for k in SERIES_KEYS}
    for fit in ("bound_shape", "power_law", "envelope"):
      estimates("series", keys, fit, s[fit])
    for step in s["local_exponents"]:
      add("series", keys, "local_exponent", f"{step['L'][0]}-{step['L'][1]}", step["gamma"])
  for r in fits["ratios"]:
    keys = {k: r[k] for k in SERIES_KEYS if k in r}
    estimates("ratio", keys, "power_law", r["power_law"])
    add("ratio", keys, "ratio", "beta", r["beta"])
    for c in r.get("lemma2_ratio", {}).get("cells", []):
      add("ratio", {**keys, "d": c["d"], "L": c["L"]}, "lemma2_ratio", "measured_over_predicted",
          c["measured_over_predicted"])
  for e in fits.get("effective_depth", []):
    add("effective_depth", {k: e[k] for k in CELL_COLUMNS}, "update_exponent", "kappa", e["kappa"])
  return pd.DataFrame(rows)


# ---------------------------------------------------------------------- report


def _num(x: float, digits: int = 3) -> str:
  """``%.{digits}g``, with float rounding noise (|x| < 1e-12) shown as 0."""
  return f"{0.0 if abs(x) < 1e-12 else x:.{digits}g}"


def _fmt(estimate: dict, digits: int = 3) -> str:
  if estimate["value"] is None or estimate["ci"] is None:
    return "n/a"
  lo, hi = estimate["ci"]
  return f"{_num(estimate['value'], digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _span(values) -> str:
  lo, hi = min(values), max(values)
  return f"{lo}" if lo == hi else f"[{lo}, {hi}]"


def _grid(cells: list[dict]) -> str:
  ds = sorted({c["d"] for c in cells})
  Ls = sorted({c["L"] for c in cells})
  seeds = sorted({c["n_seeds"] for c in cells})
  s = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
  return f"d in {{{', '.join(map(str, ds))}}}, L in {{{', '.join(map(str, Ls))}}}, {s} seeds/cell"


def relaxed_assumptions(series: dict) -> list[str]:
  """The assumptions of Theorem 1 a series does not meet, as ``column=value``.

  Theorem 1 is stated for the cell defaults (``schema.CELL_DEFAULTS``): uniform
  attention (W_Q = W_K = 0), one head, i.i.d. Gaussian inputs, one sequence, the 2020
  block (LayerNorm, ReLU, no mask, no positions). A series measured otherwise
  (``--attention``, ``--heads``, ``--inputs``, ``--batch``, ``--norm``, ...) tests
  whether the bound's *shape* survives; the theorem itself says nothing there.
  """
  def default(column):  # text inputs always carried sinusoidal positions: not a further relaxation
    return "sinusoidal" if column == "positions" and series.get("inputs") == "text" else CELL_DEFAULTS[column]

  return [f"{column}={series[column]}" for column in CELL_DEFAULTS
          if column in series and series[column] != default(column)]


def _check_line(check: dict, relaxed: bool = False) -> str:
  head = f"  {check['name']} = {_fmt(check)}"
  if check["status"] == VIOLATED:
    return (f"{head}: {'FAILS' if relaxed else 'VIOLATED'} ({check['claim']}): the CI misses the limit by "
            f"{check['miss']:.3g}.")
  if check["status"] == AT_LIMIT:
    return (f"{head}: holds at the limit ({check['claim']}; the CI contains {_num(check['limit'])}: "
            "cannot tell it from the limit on this grid).")
  return f"{head}: holds ({check['claim']})."


_RELATION_WORDS = {
    "gamma": {"larger": "falls faster than", "smaller": "falls slower than", "equal": "equals"},
    "alpha": {"larger": "grows faster in d than", "smaller": "grows slower in d than", "equal": "is within"},
    "beta": {"larger": "grows faster than", "smaller": "grows slower than", "equal": "equals"},
}


def _theorem_words(item: dict) -> str:
  t = item["theorem"]
  lo, hi = t["expected"]
  target = {"gamma": f"the theorem's L^-{lo:g}", "alpha": f"d sqrt(ln d)'s range [{lo:g}, {hi:.3f}]",
            "beta": f"the theorem's sqrt(L) (beta = {lo:g})"}[item["name"]]
  gap = f" by {t['gap']:.3g}" if t["relation"] != "equal" else ""
  return f"{_RELATION_WORDS[item['name']][t['relation']]} {target}{gap}"


def _tightness_line(item: dict, note: str | None) -> str:
  axis = {"gamma": "L", "alpha": "d", "beta": "L"}[item["name"]]
  parts = [f"  tightness: {item['name']} = {_fmt(item)} over {axis} in {_span(item['over'])}"]
  if "theorem" in item:
    parts.append(_theorem_words(item))
  for source, label in (("mean_field", "mean field on the same cells"), ("linear_baseline", "linear loss")):
    if source in item:
      ref = item[source]
      inside = "the measured CI contains it" if ref["contains"] else "outside the measured CI"
      parts.append(f"{label} {_num(ref['value'])} (difference {_fmt(ref['difference'])}; {inside})")
  if "mean_field" not in item and note:
    parts.append(f"no mean-field prediction ({note})")
  return "; ".join(parts) + "."


def bound_verdict(series: dict) -> str:
  """The one-sided verdict of a ``fits.json`` series' bound checks, in the report's words.

  Args:
    series: one entry of ``fits["series"]`` (its ``checks`` and cell columns).

  Returns:
    "Theorem 1's bound holds on this grid" (naming the checks whose CI contains the
    limit: cannot be told from it) or "VIOLATES Theorem 1's bound on this grid (...)"
    with each miss in numbers; for a series outside the theorem's assumptions
    (:func:`relaxed_assumptions`), whether the bound's shape holds or FAILS there, never
    a violation of the theorem; "no Theorem 1 bound for <arch>" where it has none.
  """
  checks = series["checks"]
  if not checks:
    return f"no Theorem 1 bound for {series['arch']}"
  relaxed = relaxed_assumptions(series)
  subject = (f"outside Theorem 1's assumptions ({', '.join(relaxed)}): its bound's shape" if relaxed
             else "Theorem 1's bound")
  violated = [c for c in checks if c["status"] == VIOLATED]
  if violated:
    misses = ", ".join(f"{c['name']} by {c['miss']:.3g}" for c in violated)
    return (f"{subject} FAILS on this grid ({misses})" if relaxed
            else f"VIOLATES {subject} on this grid ({misses})")
  at_limit = [c["name"] for c in checks if c["status"] == AT_LIMIT]
  return f"{subject} holds on this grid" + (f" ({', '.join(at_limit)} at the limit)" if at_limit else "")


def _series_lines(s: dict, theorem: bool) -> list[str]:
  b, p, e = s["bound_shape"], s["power_law"], s["envelope"]
  lines = [f"{series_name(s)}: {_grid(s['cells'])}"]
  bound = f"C = {_fmt(b['C'])}" + (f", gamma = {_fmt(b['gamma'])}" if "gamma" in b else "")
  lines.append(f"  bound shape C d sqrt(ln d) L^-gamma: {bound}, R^2 = {_r2_text(b['r2'])}")
  terms = [f"{k} = {_fmt(p[k])}" for k in ("alpha", "gamma") if k in p]
  lines.append(f"  power law C d^alpha L^-gamma: C = {_fmt(p['C'])}, {', '.join(terms) or 'one cell'}, "
               f"R^2 = {_r2_text(p['r2'])}")
  slopes = [f"slope in ln {k[-1]} = {_fmt(e[k])}" for k in ("slope_ln_L", "slope_ln_d") if k in e]
  lines.append(f"  envelope max g/({e['shape']}) = {_fmt(e['max'])}" + ("; " + ", ".join(slopes) if slopes else ""))
  if not theorem:
    return lines
  if not s["checks"]:
    lines.append(f"  no Theorem 1 bound for {s['arch']}; the fits above are descriptive.")
  else:
    lines.append(f"  Theorem 1's bound O({theory.THEOREM_SHAPE[s['arch']]}), one-sided, "
                 f"{100 * CI_LEVEL:.0f}% CIs over seeds:")
    lines.extend(_check_line(c, bool(relaxed_assumptions(s))) for c in s["checks"])
    lines.append(f"  => {s['arch']}: {bound_verdict(s)}.")
  note = s["mean_field"].get("note")
  lines.extend(_tightness_line(item, note) for item in s["tightness"])
  lines.extend(_local_lines(s))
  if s.get("lemma2_band"):
    lines.append(_band_line(s["lemma2_band"]))
  return lines


def _local_lines(s: dict) -> list[str]:
  steps = s["local_exponents"]
  if len(steps) < 2:
    return []
  parts = []
  for step in steps:
    mf = f" (mf {_num(step['mean_field'])})" if "mean_field" in step else ""
    parts.append(f"{step['L'][0]}->{step['L'][1]}: {_fmt(step['gamma'])}{mf}")
  return [f"  local exponent -dln g/dln L between consecutive depths (mean over d): {'; '.join(parts)}."]


def _band_line(band: dict) -> str:
  cells = band["cells"]
  count = {status: sum(c["status"] == status for c in cells) for status in ("inside", "at an edge", "outside")}
  deep = max(cells, key=lambda c: (c["L"], c["d"]))
  return (f"  Lemma 2: q_(L+1) = E||x_(L+1)||^2/d, CI inside [1 + L/2, 1 + 3L/2] in {count['inside']}/{len(cells)} "
          f"cells, across an edge in {count['at an edge']}, outside in {count['outside']}; "
          f"at d = {deep['d']}, L = {deep['L']}: {_fmt(deep['q'])}, band "
          f"[{deep['band'][0]:g}, {deep['band'][1]:g}], {deep['position']:.2f} of the way up.")


def _ratio_lines(r: dict) -> list[str]:
  lines = [f"post vs pre {series_name(r)}: g_post/g_pre ~ L^beta, beta = {_fmt(r['beta'])}"]
  lines.extend(_tightness_line(item, None) for item in r.get("tightness", []))
  if "lemma2_ratio" in r:
    cells = r["lemma2_ratio"]["cells"]
    over = [c["measured_over_predicted"]["value"] for c in cells]
    apart = [c for c in cells if not c["agrees"]]
    listed = "; ".join(f"d = {c['d']}, L = {c['L']}: {_fmt(c['measured_over_predicted'], 4)}" for c in apart[:4])
    lines.append(
        f"  Mean-field ratio (Lemmas 2, 3): measured g_pre/g_post over sqrt(3/(2 q_(L+1))), q measured: "
        f"{min(over):.3f} to {max(over):.3f} over {len(cells)} cells (median |difference| "
        f"{100 * np.median(np.abs(np.subtract(over, 1))):.1f}%); the CI contains 1 in {len(cells) - len(apart)}"
        + (f", not in {listed}{' ...' if len(apart) > 4 else ''}." if apart else "."))
  elif "lemma2_ratio_note" in r:
    lines.append(f"  Mean-field ratio check (Lemmas 2, 3) skipped: {r['lemma2_ratio_note']}.")
  if "lemma2_law" in r:
    law = r["lemma2_law"]
    lines.append(f"  (descriptive) SPEC law g_pre/g_post = a/sqrt(1 + c L): a = {_fmt(law['a'])}, "
                 f"c = {_fmt(law['c'])}, R^2 = {_r2_text(law['r2'])}.")
  return lines


def report(fits: dict) -> str:
  """Plain-text verdict of :func:`fit_frame`'s result, one block per series and per Post/Pre pair.

  The bound (Theorem 1's one-sided claim: holds / holds at the limit / VIOLATED) and
  the tightness (whether the exponents equal the theorem's, and the mean field's on
  the same cells) are separate lines; tightness is never a violation.
  """
  meta = fits["meta"]
  layer = "the last layer L" if meta["layer"] == "L" else f"layer {meta['layer']}"
  title = "Theorem 1 on the grid" if meta["theorem"] else "Descriptive fits (Theorem 1 concerns W2 at layer L)"
  lines = [
      f"{title}: ||dLoss/d{meta['param']}|| at {layer}; {100 * meta['ci']:.0f}% CIs from a paired bootstrap "
      f"over seeds ({meta['n_boot']} replicates, seed {meta['seed']}): they cover seed noise on this grid only."
  ]
  if meta.get("dropped_nonfinite"):
    lines.append(f"  WARNING: {meta['dropped_nonfinite']} non-finite values were left out of these fits.")
  for s in fits["series"]:
    lines.extend(_series_lines(s, meta["theorem"]))
  for r in fits["ratios"]:
    lines.extend(_ratio_lines(r))
  lines.extend(_effective_depth_lines(fits.get("effective_depth", [])))
  return "\n".join(lines)


def _effective_depth_lines(entries: list[dict]) -> list[str]:
  if not entries:
    return []
  lines = [f"Effective depth: {entries[0]['metric']} ∝ l^-kappa over layers 1..L, {100 * CI_LEVEL:.0f}% paired "
           "bootstrap CI over seeds (the argument predicts kappa = 1/2 for pre, 0 for post):"]
  for e in entries:
    expected = "" if e["expected"] is None else f"; argument {e['expected']:g}"
    mf = "no mean-field model" if e["kappa_mean_field"] is None else f"mean field {e['kappa_mean_field']:.3g}"
    model = f"loss={e['loss']}, d={e['d']}, n={e['n']}, L={e['L']}{_extras(e)}"
    lines.append(f"  {e['arch']} ({model}, {e['n_seeds']} seeds): "
                 f"kappa = {_fmt(e['kappa'])}, R^2 = {_r2_text(e['r2'])}; {mf}{expected}")
  return lines


def _r2_text(r2: float | None) -> str:
  return "n/a" if r2 is None else f"{r2:.3f}"
