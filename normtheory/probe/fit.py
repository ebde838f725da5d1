"""Depth and width exponents of a probe table per parameter group, with paired-bootstrap CIs, in words.

The behaviour of a group in depth is named from the CI of its γ (``g ∝ L^-γ``):
"Post-LN-like (flat in L)" inside ``FLAT_BAND``, "Pre-LN-like (falls ≈ L^-½)"
inside ``PRE_BAND``, otherwise "neither" with the reason (:func:`classify`).
:func:`to_grad_table` turns a probe table into the layout of ``grad_norms.csv``
for :mod:`normtheory.plot` and :mod:`normtheory.fit`.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1: the last layer's gradient is flat in L for Post-LN and falls like
    L^(-1/2) for Pre-LN.
  Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 13 (percentile CIs).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from normtheory import fit, schema
from normtheory.schema import PROBE_COLUMNS, PROBE_OPTIONAL_COLUMNS

FLAT_BAND = (-0.15, 0.15)  # gamma inside: flat in L, as Post-LN (Theorem 1: gamma = 0)
PRE_BAND = (0.35, 0.65)  # gamma inside: falls like L^-1/2, as Pre-LN (Theorem 1: gamma = 1/2)
POST_LIKE = "Post-LN-like (flat in L)"
PRE_LIKE = "Pre-LN-like (falls ≈ L^-½)"
NEITHER = "neither"
ZERO_RTOL = 1e-5  # a group below this times the model's median group norm is zero up to float rounding
SWEEP_AXES = ("d", "L")
# Columns of fit_groups after the model's cell columns.
GROUP_COLUMNS = ("param", "in_stack", "depths", "widths", "n_seeds", "nonfinite_seeds", "gamma", "gamma_lo",
                 "gamma_hi", "alpha", "alpha_lo", "alpha_hi", "r2", "verdict", "reason")


def cell_columns(frame: pd.DataFrame) -> list[str]:
  """The cell columns of a probe table (every column that is not a measurement), in order."""
  return [c for c in frame.columns if c not in (*PROBE_COLUMNS, *PROBE_OPTIONAL_COLUMNS)]


def rows_of(frame: pd.DataFrame, cell: Mapping) -> pd.DataFrame:
  """Rows of one cell (values compared as text, so a CSV round trip matches)."""
  if frame.empty:
    return frame
  mask = np.ones(len(frame), bool)
  for column, value in cell.items():
    mask &= frame[column].astype(str).to_numpy() == str(value)
  return frame[mask]


def classify(ci: Sequence[float] | None) -> tuple[str, str]:
  """The behaviour in depth of one parameter group, in words, from the CI of its γ (``g ∝ L^-γ``).

  Rule: "Post-LN-like (flat in L)" if the whole CI lies in ``FLAT_BAND`` = [-0.15,
  0.15]; "Pre-LN-like (falls ≈ L^-½)" if it lies in ``PRE_BAND`` = [0.35, 0.65];
  otherwise "neither", with the reason. The bands are centred on Theorem 1's
  two exponents (0 and ½), each ±0.15 wide: a group is named only when the data
  exclude the other behaviour, and the 0.2-wide gap between the bands belongs to
  neither. (normtheory's own Pre-LN measures γ = 0.57 [0.55, 0.58] over d = 64..512,
  L = 6..96: inside the band, although not equal to ½.)

  Args:
    ci: ``[lo, hi]`` of γ, or None (no fit).

  Returns:
    (verdict, reason).
  """
  if ci is None:
    return NEITHER, "no depth exponent (needs >= 2 depths with positive finite norms)"
  lo, hi = ci
  inside = lambda band: band[0] <= lo and hi <= band[1]
  if inside(FLAT_BAND):
    return POST_LIKE, f"CI inside [{FLAT_BAND[0]:g}, {FLAT_BAND[1]:g}]"
  if inside(PRE_BAND):
    return PRE_LIKE, f"CI inside [{PRE_BAND[0]:g}, {PRE_BAND[1]:g}]"
  if hi < FLAT_BAND[0]:
    return NEITHER, "grows with L"
  if lo > PRE_BAND[1]:
    return NEITHER, "falls faster than L^-1/2"
  if lo > FLAT_BAND[1] and hi < PRE_BAND[0]:
    return NEITHER, "falls, slower than L^-1/2"
  if lo <= FLAT_BAND[1] and hi >= PRE_BAND[0]:
    return NEITHER, "CI meets both bands (undetermined: more seeds or depths)"
  return NEITHER, "CI crosses the edge of a band"


def _estimate(fits: dict, name: str) -> tuple[float, float, float]:
  e = fits.get(name)
  if e is None or e["value"] is None or e["ci"] is None:
    return np.nan, np.nan, np.nan
  return e["value"], *e["ci"]


def fit_groups(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
  """γ (and α) of ``g = C d^α L^-γ`` per model and parameter group, with paired-bootstrap CIs and words.

  A group inside the stack is fitted at the last layer of each model (layer = L,
  the layer of Theorem 1); an array outside the stack by its one value per model.
  Point estimates fit the per-cell means over finite seeds
  (:func:`normtheory.fit.power_law_fit`); each bootstrap replicate resamples the
  seed indices once for every cell of the group (the cells of one seed share its
  keys), averages and refits; 95% percentile CIs. A group whose gradient is zero
  up to float rounding (every cell mean below ``ZERO_RTOL`` times the model's
  median group norm, e.g. an attention key bias, which softmax ignores) is not
  fitted: its exponent would be that of rounding noise.

  Args:
    frame: a probe table with ``d`` and ``L`` columns (:func:`depth_sweep`).
    n_boot: bootstrap replicates per group.
    seed: seed of the resampling.

  Returns:
    One row per (model, param): the model's cell columns, ``param``, ``in_stack``,
    ``depths``, ``widths``, ``n_seeds``, ``nonfinite_seeds`` (seeds with a flagged
    row, left out), ``gamma, gamma_lo, gamma_hi``, ``alpha, alpha_lo, alpha_hi``
    (NaN with one width, or not fitted), ``r2``, ``verdict`` (:func:`classify`)
    and ``reason``.
  """
  if n_boot < 2:
    raise ValueError(f"n_boot must be >= 2, got {n_boot!r}")
  missing = [c for c in SWEEP_AXES if c not in frame.columns]
  if missing:
    raise ValueError(f"fit_groups needs the columns d and L of a depth sweep; missing {', '.join(missing)}")
  models = [c for c in cell_columns(frame) if c not in SWEEP_AXES]
  rows = []
  for model, part in (frame.groupby(models, sort=False) if models else [((), frame)]):
    model = dict(zip(models, model if isinstance(model, tuple) else (model,)))
    in_stack = part["layer"].notna().to_numpy()
    last = in_stack & (part["layer"].to_numpy(dtype=np.float64, na_value=np.nan) == part["L"].to_numpy())
    chosen = part[last | ~in_stack]
    groups = {key: _cells_of(group) for key, group in chosen.groupby([chosen["param"], chosen["layer"].notna()],
                                                                      sort=False)}
    scale = np.nanmedian([_largest(g[2]) for g in groups.values()])
    for (param, stacked), (cells, v_SxC, g_C, out) in groups.items():
      rng = np.random.default_rng([seed, zlib.crc32("/".join(map(str, (*model.values(), param))).encode())])
      rows.append({**model, "param": param, "in_stack": bool(stacked), **out,
                   **_fit_cells(cells, v_SxC, g_C, scale, n_boot, rng)})
  return pd.DataFrame(rows)


def _cells_of(group: pd.DataFrame) -> tuple:
  """(cells (d, L), values_SxC with NaN for flagged rows, per-cell means g_C, descriptive columns) of one group."""
  if group.duplicated(["d", "L", "seed"]).any():
    raise ValueError(f"several rows share (d, L, seed) for param {group['param'].iloc[0]!r}: "
                     "one array per group per layer is expected (name groups apart with layer_of=)")
  values = group["grad_norm"].where(~group["nonfinite"])
  values_SxC = group.assign(value=values).pivot(index="seed", columns=["d", "L"], values="value")
  cells = values_SxC.columns.to_frame(index=False)
  v_SxC = values_SxC.to_numpy(np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a cell with no finite seed -> NaN
    g_C = np.nanmean(v_SxC, axis=0)
  out = {"depths": ",".join(map(str, sorted(cells["L"].unique()))),
         "widths": ",".join(map(str, sorted(cells["d"].unique()))),
         "n_seeds": v_SxC.shape[0],
         "nonfinite_seeds": int(group.loc[group["nonfinite"], "seed"].nunique())}
  return cells, v_SxC, g_C, out


def _largest(g_C: np.ndarray) -> float:
  finite = g_C[np.isfinite(g_C)]
  return float(finite.max()) if finite.size else np.nan


def _fit_cells(cells, v_SxC, g_C, scale: float, n_boot: int, rng: np.random.Generator) -> dict:
  """The power-law fit, its words, and why not where it is not fitted."""
  nan3 = (np.nan, np.nan, np.nan)
  keep = np.isfinite(g_C) & (g_C > 0)
  top = _largest(g_C)
  if keep.any() and top < ZERO_RTOL * scale:
    fits, (verdict, reason) = {}, (NEITHER, f"zero up to float rounding (largest mean {top:.2g} < {ZERO_RTOL:g} x "
                                             f"the model's median group norm {scale:.2g})")
  else:
    d_C, L_C = cells["d"].to_numpy(np.float64)[keep], cells["L"].to_numpy(np.float64)[keep]
    fits = {}
    if np.unique(L_C).size >= 2:
      fits = fit.power_law_fit(d_C, L_C, g_C[keep], fit.paired_bootstrap_means(v_SxC[:, keep], n_boot, rng))
    gamma = _estimate(fits, "gamma")
    verdict, reason = classify(None if np.isnan(gamma[0]) else gamma[1:])
    if not keep.all():
      reason += f"; {int((~keep).sum())} cells without a positive finite mean left out"
  gamma, alpha = (_estimate(fits, "gamma"), _estimate(fits, "alpha")) if fits else (nan3, nan3)
  return {"gamma": gamma[0], "gamma_lo": gamma[1], "gamma_hi": gamma[2],
          "alpha": alpha[0], "alpha_lo": alpha[1], "alpha_hi": alpha[2],
          "r2": np.nan if fits.get("r2") is None else fits["r2"], "verdict": verdict, "reason": reason}


def _interval(value: float, lo: float, hi: float) -> str:
  return "n/a" if np.isnan(value) else f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def report(groups: pd.DataFrame, frame: pd.DataFrame | None = None) -> str:
  """Plain-text verdicts of :func:`fit_groups`, one block per model, one line per parameter group.

  Args:
    groups: :func:`fit_groups`'s result.
    frame: the probe table it was fitted from, to count seeds with a non-finite loss.
  """
  lo_f, hi_f = FLAT_BAND
  lo_p, hi_p = PRE_BAND
  lines = [
      "Probe: gradient norm of each parameter group (inside the stack: at the last layer L) vs depth,",
      "g = C d^alpha L^-gamma, 95% paired-bootstrap CIs over seeds. Words: Post-LN-like if the CI of gamma",
      f"lies in [{lo_f:g}, {hi_f:g}], Pre-LN-like if it lies in [{lo_p:g}, {hi_p:g}], otherwise neither.",
  ]
  models = [c for c in groups.columns if c not in GROUP_COLUMNS]
  for model, part in (groups.groupby(models, sort=False) if models else [((), groups)]):
    model = model if isinstance(model, tuple) else (model,)
    first = part.iloc[0]
    name = ", ".join(f"{k}={v}" for k, v in zip(models, model)) or "model"
    lines.append(f"{name}: L in {{{first['depths']}}}, d in {{{first['widths']}}}, {first['n_seeds']} seeds")
    if frame is not None:
      mine = rows_of(frame, dict(zip(models, model)))
      bad = mine.loc[~np.isfinite(mine["loss"]), ["d", "L", "seed"]].drop_duplicates()
      if len(bad):
        lines.append(f"  WARNING: {len(bad)} (d, L, seed) samples have a non-finite loss; their rows are flagged "
                     "nonfinite and left out of the fits.")
    width = max(len(p) for p in part["param"])
    for _, g in part.iterrows():
      where = "layer L" if g["in_stack"] else "outside"
      alpha = "" if np.isnan(g["alpha"]) else f", alpha = {_interval(g['alpha'], g['alpha_lo'], g['alpha_hi'])}"
      bad = f" ({g['nonfinite_seeds']} seeds with non-finite values)" if g["nonfinite_seeds"] else ""
      lines.append(f"  {g['param']:<{width}} ({where}): gamma = {_interval(g['gamma'], g['gamma_lo'], g['gamma_hi'])}"
                   f"{alpha} -> {g['verdict']}" + ("" if g["verdict"] != NEITHER else f": {g['reason']}") + bad)
  return "\n".join(lines)


def to_grad_table(frame: pd.DataFrame, arch: str | None = None) -> pd.DataFrame:
  """A probe table in the layout of ``grad_norms.csv``, for :mod:`normtheory.plot` and :mod:`normtheory.fit`.

  Rows inside the layer stack with finite values are kept. ``arch`` is the label
  of each model (the value of the cell column ``arch``, or all model cell values
  joined by "/"; the names "post" and "pre" get normtheory's Post-/Pre-LN
  styles); ``loss`` is "probe" (so no mean-field overlay of normtheory's own
  model is drawn); ``n = 0`` and ``d_ff = d`` are placeholders the probe does not
  know; the other cell columns take ``schema.CELL_DEFAULTS``.

  Args:
    frame: a probe table with ``d`` and ``L`` (:func:`depth_sweep`).
    arch: the cell column that labels models (default: see above).

  Returns:
    Frame with the columns ``schema.GRAD_COLUMNS``.
  """
  models = [c for c in cell_columns(frame) if c not in SWEEP_AXES]
  rows = frame[frame["layer"].notna() & ~frame["nonfinite"]]
  if arch is not None:
    labels = rows[arch].astype(str)
  elif models:
    labels = rows[models].astype(str).agg("/".join, axis=1)
  else:
    labels = pd.Series("model", index=rows.index)
  out = pd.DataFrame({
      "arch": labels.to_numpy(), "loss": "probe", "d": rows["d"].to_numpy(), "L": rows["L"].to_numpy(), "n": 0,
      "d_ff": rows["d"].to_numpy(), **schema.CELL_DEFAULTS, "seed": rows["seed"].to_numpy(),
      "layer": rows["layer"].to_numpy(dtype=np.int64), "param": rows["param"].to_numpy(),
      "grad_norm": rows["grad_norm"].to_numpy(np.float64)})
  return out[list(schema.GRAD_COLUMNS)]
