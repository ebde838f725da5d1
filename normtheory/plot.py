"""Paper-style figures of the results store: each function takes tidy frames, returns a Figure.

The figures use :class:`matplotlib.figure.Figure` directly (no pyplot state), so
they work under any backend: saved headless by ``experiments/make_figures.py`` and
shown inline in a notebook. Every arch keeps one colour, marker and line style
(Okabe–Ito colours; markers and dashes keep the figures readable in grayscale).
Predictions of the mean-field model (:func:`normtheory.theory.mean_field`) are drawn
as thick translucent lines in the arch's colour, for the archs it knows: hidden
norms and effective-depth metrics always, the last-layer W2 gradient only for the
``linear`` loss (the one it predicts).

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture":
    Theorem 1 (last-layer bounds), Lemma 2 (hidden-state growth), Fig. 3
    (gradient norm per layer, Post-LN vs Pre-LN).
  Su 2022, "Why is Pre Norm worse than Post Norm?" (kexue.fm/archives/9009): the
    effective-depth argument (Pre-LN's layer l changes the stream by ~l^(-1/2)).
"""

from __future__ import annotations

import io
import pathlib
import zlib

import numpy as np
import pandas as pd
from matplotlib import colors, ticker
from matplotlib.figure import Figure

from normtheory import fit, schema, theory

ARCH_STYLES = {
    "post": {"color": "#0072B2", "marker": "o", "linestyle": "-"},
    "pre": {"color": "#D55E00", "marker": "s", "linestyle": "--"},
    "deepnorm": {"color": "#009E73", "marker": "^", "linestyle": "-."},
    "sandwich": {"color": "#CC79A7", "marker": "D", "linestyle": ":"},
    "lns": {"color": "#E69F00", "marker": "v", "linestyle": (0, (5, 1))},
    "mixln": {"color": "#56B4E9", "marker": "P", "linestyle": (0, (3, 1, 1, 1, 1, 1))},
}
ARCH_LABELS = {"post": "Post-LN", "pre": "Pre-LN", "deepnorm": "DeepNorm", "sandwich": "Sandwich-LN",
               "lns": "LN-Scaling", "mixln": "Mix-LN"}
_EXTRA_MARKERS = ("X", "*", "h", "p", "<", ">")
_DEPTH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DEPTH_DASHES = ("-", "--", "-.", ":")
GRAD_LABEL = r"$\Vert\partial\mathcal{L}/\partial W_2^{(L)}\Vert_F$"
MEAN_FIELD_STYLE = {"linestyle": "-", "linewidth": 3.0, "alpha": 0.3}
DEPTH_METRIC_LABELS = {
    "rel_update": r"$\Vert x_{l+1}-x_l\Vert/\Vert x_l\Vert$",
    "cos_sim": r"$\cos(x_l, x_{l+1})$",
    "removal_angle": r"angle(output, output without layer $l$)$/\pi$",
}
CAPTIONS = {
    "fig_last_layer_vs_depth": (
        "Last-layer gradient norm ||dLoss/dW2^(L)||_F vs depth L (log-log), mean over seeds with a 5-95% band. "
        "Dotted: free power-law fit C d^alpha L^-gamma. Gray: Theorem 1's shapes scaled by the envelope "
        "max g/shape (Post C d sqrt(ln d), Pre C d sqrt(ln d / L)). Thick translucent (linear loss only): "
        "the mean-field prediction (normtheory.theory.mean_field)."),
    "fig_layer_profile": (
        "Gradient norm ||dLoss/dW2^(l)||_F vs layer index l for several depths L (mean over seeds), "
        "one panel per architecture; analogue of Xiong et al. Fig. 3(a,b)."),
    "fig_width_scaling": (
        "Last-layer gradient norm vs width d (log-log) at one depth, mean with a 5-95% band; dotted: free "
        "power-law fit; gray dashed: d sqrt(ln d) through the first architecture's points."),
    "fig_hidden_norms": (
        "E||x_l||^2 / d of the hidden state entering layer l (the output of l-1 layers; x_1 is the input, "
        "l = L+1 the state after the last layer, before any final LayerNorm). Shaded: Lemma 2's Pre-LN bounds "
        "1 + (l-1)/2 <= . <= 1 + 3(l-1)/2. Dotted at 1: the Post-LN state is a LayerNorm output; Lemma 2's "
        "Post-LN 3/2 concerns x5, the sum before that LayerNorm, and is drawn in fig_ln_jacobian. Thick "
        "translucent: the mean-field prediction per arch (token correlation drives Pre-LN towards the upper "
        "bound)."),
    "fig_ratio": (
        "Post-LN / Pre-LN ratio of the last-layer gradient norm vs L (log-log), markers one per width; lines: "
        "the mean-field relation g_post/g_pre = sqrt(2 q_(L+1) / 3) with Pre-LN's measured q_(L+1) = "
        "E||x_(L+1)||^2/d (Lemmas 2, 3); gray dashed: c sqrt(L); dotted (only where it converges): SPEC's law "
        "sqrt(1 + cL)/a."),
    "fig_local_exponent": (
        "Local depth exponent -d ln g_L(W2) / d ln L of Post-LN and Pre-LN: measured secants between "
        f"consecutive depths of the grid (mean over widths, {100 * fit.CI_LEVEL:.0f}% paired-bootstrap CI; small "
        "points: each width) "
        "and the mean field's out to L = 10^4 (thick translucent). Pre-LN's exceeds Theorem 1's 1/2 at "
        "finite depth, because uniform attention turns the ReLU's position correlation into faster residual "
        "growth (q_l convex in l), and tends to 1/2 as L grows."),
    "fig_ln_jacobian": (
        "LayerNorm Jacobians (Lemma 3). Left: Pre-LN's stored spectral norm at the first LayerNorm of every "
        "layer and at the final one, per seed, layer and cell, against sqrt(d)/||x_l|| from the stored hidden "
        "norm (uncentred, row-averaged: Lemma 3's sqrt(d)/||x - mean(x)|| up to O(1/d)); dashed: equality. "
        "Right: per layer at one width and the deepest L, every LayerNorm of the layer (LN 1, 2 in forward "
        "order; L+1: the final LN), mean with a 5-95% band; dashed: Post-LN's second LN sees x5 with "
        "E||x5||^2/d = 3/2 (Lemma 2), so ||J|| = sqrt(2/3); thick translucent: the mean field's 1/sqrt(q_l)."),
    "fig_arch_comparison": (
        "||dLoss/dW2||_F of the last layer (l = L, left) and of the first layer (l = 1, right) vs depth L "
        "(log-log) for every architecture at one width, mean over seeds with a 5-95% band. Thick translucent "
        "(left, linear loss only): the mean-field prediction of the last layer."),
    "fig_depth_metrics": (
        "Effective depth at init, per layer vs l/L (log x) for every architecture at its deepest L: relative "
        "update ||x_{l+1} - x_l||/||x_l||, cosine of x_l and x_{l+1}, and the angle/pi between the final "
        "representations with and without layer l; mean over seeds with a 5-95% band. Thick translucent: "
        "mean-field prediction; gray dashed: l^(-1/2) through Pre-LN's curve (the effective-depth argument)."),
}


def arch_style(arch: str) -> dict:
  """Colour, marker and line style of an arch, fixed across figures (gray for unknown names)."""
  if arch in ARCH_STYLES:
    return ARCH_STYLES[arch]
  k = zlib.crc32(arch.encode())
  return {"color": "0.35", "marker": _EXTRA_MARKERS[k % len(_EXTRA_MARKERS)], "linestyle": _DEPTH_DASHES[k % 4]}


def _label(arch: str) -> str:
  return ARCH_LABELS.get(arch, arch)


def _archs(frame: pd.DataFrame) -> list[str]:
  return sorted(frame["arch"].unique(), key=fit.arch_key)


def _pick(frame: pd.DataFrame, loss: str | None, n: int | None) -> pd.DataFrame:
  """Rows of one loss and sequence length (default: first loss alphabetically, largest n), and of one value
  of every other cell column but d, L and d_ff (its default where present: batch 1, uniform attention, ...)."""
  for column, default in schema.CELL_DEFAULTS.items():
    if column in frame.columns and len(frame) and not (frame[column] == default).any():
      default = sorted(frame[column].unique(), key=str)[0]
    if column in frame.columns:
      frame = frame[frame[column] == default]
  loss = sorted(frame["loss"].unique())[0] if loss is None else loss
  rows = frame[frame["loss"] == loss]
  n = rows["n"].max() if n is None else n
  rows = rows[rows["n"] == n]
  if rows.empty:
    raise ValueError(f"no rows with loss={loss!r} and n={n!r}")
  return rows


def _deepest(rows: pd.DataFrame, d: int | None) -> pd.DataFrame:
  """The rows at width ``d`` (default the widest) of each arch's deepest model there."""
  rows = rows[rows["d"] == (rows["d"].max() if d is None else d)]
  return rows[rows["L"] == rows.groupby("arch")["L"].transform("max")]


def _theorem_archs(rows: pd.DataFrame) -> pd.DataFrame:
  """The Post-LN and Pre-LN rows (Theorem 1's archs)."""
  return rows[rows["arch"].isin(list(theory.THEOREM_GAMMA))]


def profile_cells(cells: pd.DataFrame) -> pd.DataFrame:
  """The cells whose rows :func:`fig_hidden_norms` and :func:`fig_depth_metrics` draw at their defaults.

  The figures' choices (:func:`_pick`'s loss, n and other columns, the widest d, each
  arch's deepest L) depend on the cell columns alone, so applied to the distinct cells of
  a table they give the cells of the rows drawn: a store is read one selection at a time.

  Args:
    cells: one row per cell of a table (columns ``schema.CELL_COLUMNS``).

  Returns:
    the rows of ``cells`` drawn.
  """
  return _deepest(_pick(cells, None, None), None)


def ln_jacobian_cells(ln_cells: pd.DataFrame, hidden_cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
  """The cells :func:`fig_ln_jacobian` draws at its defaults (as :func:`profile_cells`, from the cells alone).

  Args:
    ln_cells, hidden_cells: one row per cell of the LN-Jacobian and hidden-norm tables.

  Returns:
    ``(right, left)``: the cells of the right panel (each arch's deepest at the widest d), and those
    whose Lemma 3 points the left panel draws (:func:`lemma3_points`), sorted; both empty if the
    picked cells hold no Post-LN or Pre-LN cell (the figure refuses those).
  """
  jac = _theorem_archs(_pick(ln_cells, None, None))
  if jac.empty:
    return jac, jac
  states = _pick(hidden_cells, jac["loss"].iloc[0], int(jac["n"].iloc[0]))
  left = jac[jac["arch"] == "pre"].merge(states[list(schema.CELL_COLUMNS)])
  return _deepest(jac, None), left.sort_values(list(schema.CELL_COLUMNS), ignore_index=True)


def cell_points(first: pd.DataFrame, states: pd.DataFrame, d: int) -> pd.DataFrame:
  """Lemma 3's points of one cell: each stored Jacobian with ``√d/||x_l||`` of the state it reads.

  Args:
    first: the cell's LN-Jacobian rows that read x_l (columns ``seed``, ``layer``, ``value``).
    states: the cell's hidden-norm rows (columns ``seed``, ``layer``, ``sq_norm``).
    d: the cell's width.

  Returns:
    columns ``x`` (``√(d/sq_norm)``) and ``value``, in the order of ``first``'s rows with a state.

  References:
    Xiong et al. 2020, Lemma 3 (``||J_LN(x)||_2 = sqrt(d)/||x - mean(x)||`` at eps = 0).
  """
  pairs = first[["seed", "layer", "value"]].merge(states[["seed", "layer", "sq_norm"]], on=["seed", "layer"])
  return pd.DataFrame({"x": np.sqrt(d / pairs["sq_norm"].to_numpy()), "value": pairs["value"].to_numpy()})


def lemma3_points(first: pd.DataFrame, states: pd.DataFrame) -> pd.DataFrame:
  """:func:`cell_points` of every cell of ``first`` (tidy LN-Jacobian rows) with its states (tidy hidden-norm
  rows), cell after cell in sorted order: what a store read one cell at a time gives."""
  keys = list(schema.CELL_COLUMNS)
  by_cell = dict(list(states.groupby(keys, sort=False)))
  cells = first.groupby(keys, sort=False)
  pieces = [cell_points(cells.get_group(key), by_cell[key], int(key[keys.index("d")]))
            for key in sorted(cells.groups) if key in by_cell]
  return pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame({"x": [], "value": []})


def _fits_series(fits: dict, arch: str, loss: str, n: int) -> dict | None:
  for s in fits["series"]:
    if (s["arch"], s["loss"], s["n"]) == (arch, loss, n):
      return s
  return None


def _tick_label(y: float, _=None) -> str:
  """``%g`` of log-axis ticks whose leading digit is 1, 2 or 5; others unlabelled."""
  if y <= 0:
    return ""
  lead = round(y / 10 ** np.floor(np.log10(y)), 6)
  return f"{y:g}" if lead in (1, 2, 5) else ""


def _log_ticks(ax, x_values=None) -> None:
  """Log axes with plain numbers: x ticks at the grid's values, y ticks without 10^k notation."""
  if x_values is not None:
    wide = max(len(f"{v:g}") for v in x_values) > 4  # labels of 5 digits (d = 65536) collide at 8 ticks
    ticks = _spread(x_values, 5 if wide else 8)
    ax.set_xticks(ticks, labels=[f"{v:g}" for v in ticks])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(_tick_label))
  ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_tick_label))


def _band(ax, x, stats: pd.DataFrame, style: dict, label: str) -> None:
  """Mean line with markers and a 5–95% band over seeds."""
  ax.fill_between(x, stats["q05"], stats["q95"], color=style["color"], alpha=0.18, linewidth=0)
  ax.plot(x, stats["mean"], color=style["color"], marker=style["marker"], linestyle=style["linestyle"],
          markersize=5, label=label)


def _model(st: pd.DataFrame) -> dict[str, int]:
  """``d, L, n, d_ff`` of the first row of a stats slice (keyword arguments of ``theory.mean_field``)."""
  return {k: int(st[k].iloc[0]) for k in ("d", "L", "n", "d_ff")}


def _covered(st: pd.DataFrame, gradient: bool) -> bool:
  """Whether the mean field models the cell of a stats slice's first row (:func:`normtheory.theory.mean_field_gap`)."""
  return theory.mean_field_gap(st.iloc[0].to_dict(), gradient) is None


def _mean_field_line(ax, x, y, arch: str) -> None:
  """A mean-field prediction in the arch's colour (thick, translucent, no legend entry)."""
  ax.plot(x, y, color=arch_style(arch)["color"], **MEAN_FIELD_STYLE)


def _mean_field_legend(ax) -> None:
  ax.plot([], [], color="0.3", **MEAN_FIELD_STYLE, label="mean field")


def _mean_field_w2(ax, st: pd.DataFrame, arch: str, param: str) -> bool:
  """Draw the mean-field last-layer W2 norm over st's depths (linear loss, known archs); whether drawn."""
  if param != "W2" or not _covered(st, gradient=True):
    return False
  m = _model(st)
  L_K = np.unique(np.geomspace(st["L"].min(), st["L"].max(), 40).round().astype(int))
  _mean_field_line(ax, L_K, theory.last_layer_w2_curve(arch, m["d"], L_K, m["n"], m["d_ff"]), arch)
  return True


def _last_layer(grad: pd.DataFrame, param: str, loss: str | None, n: int | None) -> pd.DataFrame:
  return fit.summarize(fit.select(_pick(grad, loss, n), param))


def _ensure_fits(grad: pd.DataFrame, fits: dict | None, param: str) -> dict:
  return fit.fit_frame(grad, n_boot=200, param=param) if fits is None else fits


def fig_last_layer_vs_depth(
    grad: pd.DataFrame, fits: dict | None = None, param: str = "W2", loss: str | None = None, n: int | None = None
) -> Figure:
  """Last-layer gradient norm vs L, one panel per d, one line per arch, fits and Theorem 1 overlaid.

  Args:
    grad: tidy gradient table (columns ``GRAD_COLUMNS``).
    fits: :func:`normtheory.fit.fit_frame` of ``grad`` (computed with 200 resamples if None).
    param: the weight ("W2" for Theorem 1).
    loss, n: which loss and sequence length to show (default: first loss, largest n).

  Returns:
    The Figure.
  """
  fits = _ensure_fits(grad, fits, param)
  stats = _last_layer(grad, param, loss, n)
  ds = sorted(stats["d"].unique())
  fig = Figure(figsize=(3.6 * len(ds), 3.4), layout="constrained")
  axes = fig.subplots(1, len(ds), squeeze=False, sharey=True)[0]
  mean_field = False
  for ax, d in zip(axes, ds):
    for arch in _archs(stats):
      st = stats[(stats["arch"] == arch) & (stats["d"] == d)].sort_values("L")
      if st.empty:
        continue
      style = arch_style(arch)
      _band(ax, st["L"], st, style, _label(arch))
      mean_field |= _mean_field_w2(ax, st, arch, param)
      series = _fits_series(fits, arch, st["loss"].iloc[0], st["n"].iloc[0])
      L_grid = np.geomspace(st["L"].min(), st["L"].max(), 50)
      if series is not None and len(st) > 1:
        ax.plot(L_grid, fit.power_law_curve(series["power_law"], d, L_grid), color=style["color"], linestyle=":",
                linewidth=1)
      if series is not None and arch in theory.THEOREM_GAMMA:
        C = series["envelope"]["max"]["value"]
        ax.plot(L_grid, C * theory.bound_shape(arch, d, L_grid), color="0.45", linestyle=style["linestyle"],
                linewidth=1, label=rf"Thm 1 {_label(arch)}: $C\,{_shape_tex(arch)}$" if d == ds[0] else None)
    ax.set(xscale="log", yscale="log", xlabel="depth $L$", title=f"$d = {d}$")
    _log_ticks(ax, stats["L"])
  axes[0].set_ylabel(GRAD_LABEL)
  axes[0].plot([], [], color="k", linestyle=":", linewidth=1, label=r"fit $C\,d^{\alpha}L^{-\gamma}$")
  if mean_field:
    _mean_field_legend(axes[0])
  axes[0].legend(fontsize=7)
  return fig


def _shape_tex(arch: str) -> str:
  return r"d\sqrt{\ln d}" if arch == "post" else r"d\sqrt{\ln d/L}"


def _spread(values, k: int) -> list:
  """Up to k values spread over the sorted unique values (first and last included)."""
  values = sorted(set(values))
  if len(values) <= k:
    return values
  return [values[i] for i in sorted({round(j * (len(values) - 1) / (k - 1)) for j in range(k)})]


def fig_layer_profile(
    grad: pd.DataFrame,
    param: str = "W2",
    d: int | None = None,
    depths: list[int] | None = None,
    loss: str | None = None,
    n: int | None = None,
) -> Figure:
  """Gradient norm vs layer index for several L, one panel per arch (Xiong et al. Fig. 3(a,b)).

  Args:
    grad: tidy gradient table.
    param: the weight.
    d: width to show (default the largest).
    depths: depths to show (default up to 4 spread over the grid).
    loss, n: which loss and sequence length (default: first loss, largest n).

  Returns:
    The Figure.
  """
  rows = _pick(grad, loss, n)
  rows = rows[(rows["param"] == param) & (rows["d"] == (rows["d"].max() if d is None else d))]
  stats = fit.summarize(rows)
  depths = _spread(stats["L"], 4) if depths is None else depths
  archs = _archs(stats)
  fig = Figure(figsize=(3.6 * len(archs), 3.4), layout="constrained")
  axes = fig.subplots(1, len(archs), squeeze=False, sharey=True)[0]
  shades = np.linspace(0.0, 0.6, len(depths))
  for ax, arch in zip(axes, archs):
    color = arch_style(arch)["color"]
    for k, (L, shade) in enumerate(zip(depths, shades)):
      st = stats[(stats["arch"] == arch) & (stats["L"] == L)].sort_values("layer")
      mixed = tuple(np.array(colors.to_rgb(color)) * (1 - shade) + shade)
      ax.plot(st["layer"], st["mean"], color=mixed, marker=_DEPTH_MARKERS[k % 8], markersize=4,
              linestyle=_DEPTH_DASHES[k % 4], label=f"$L = {L}$")
    ax.set(yscale="log", xlabel="layer $l$", title=f"{_label(arch)}, $d = {int(stats['d'].iloc[0])}$")
    _log_ticks(ax)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7)
  axes[0].set_ylabel(rf"mean $\Vert\partial\mathcal{{L}}/\partial {_tex_param(param)}^{{(l)}}\Vert_F$")
  return fig


def _tex_param(param: str) -> str:
  return {"W1": "W_1", "W2": "W_2"}.get(param, param)


def fig_width_scaling(
    grad: pd.DataFrame,
    fits: dict | None = None,
    param: str = "W2",
    L: int | None = None,
    loss: str | None = None,
    n: int | None = None,
) -> Figure:
  """Last-layer gradient norm vs d (log-log) at one depth, with d√ln d and the free fit.

  Args:
    grad: tidy gradient table.
    fits: :func:`normtheory.fit.fit_frame` of ``grad`` (computed if None).
    param: the weight.
    L: depth to show (default the largest depth every arch has).
    loss, n: which loss and sequence length.

  Returns:
    The Figure.
  """
  fits = _ensure_fits(grad, fits, param)
  stats = _last_layer(grad, param, loss, n)
  if L is None:
    L = max(set.intersection(*(set(g["L"]) for _, g in stats.groupby("arch"))))
  stats = stats[stats["L"] == L]
  fig = Figure(figsize=(4.2, 3.4), layout="constrained")
  ax = fig.subplots()
  for arch in _archs(stats):
    st = stats[stats["arch"] == arch].sort_values("d")
    style = arch_style(arch)
    _band(ax, st["d"], st, style, _label(arch))
    series = _fits_series(fits, arch, st["loss"].iloc[0], st["n"].iloc[0])
    if series is not None and len(st) > 1:
      d_grid = np.geomspace(st["d"].min(), st["d"].max(), 50)
      ax.plot(d_grid, fit.power_law_curve(series["power_law"], d_grid, L), color=style["color"], linestyle=":",
              linewidth=1)
  first = stats[stats["arch"] == _archs(stats)[0]].sort_values("d")
  d_grid = np.geomspace(first["d"].min(), first["d"].max(), 50)
  shape = lambda d: theory.bound_shape("post", d, 1)  # noqa: E731
  k = fit.log_scale(first["mean"], shape(first["d"].to_numpy(float)))
  ax.plot(d_grid, k * shape(d_grid), color="0.45", linestyle="--", linewidth=1, label=r"$\propto d\sqrt{\ln d}$")
  ax.plot([], [], color="k", linestyle=":", linewidth=1, label=r"fit $C\,d^{\alpha}L^{-\gamma}$")
  ax.set(xscale="log", yscale="log", xlabel="width $d$", ylabel=GRAD_LABEL, title=f"$L = {L}$")
  _log_ticks(ax, stats["d"])
  ax.legend(fontsize=7)
  return fig


def pre_ln_bounds(layer) -> theory.Band:
  """Lemma 2's Pre-LN band on ``E||x_l||²/d`` for the state entering layer l (l − 1 layers done; 1 at l = 1)."""
  return theory.pre_sq_norm_bounds(1, np.asarray(layer, float) - 1)


def fig_hidden_norms(hidden: pd.DataFrame, d: int | None = None, loss: str | None = None,
                     n: int | None = None) -> Figure:
  """``E||x_l||²/d`` of the state entering layer l vs l, with Lemma 2's Pre-LN band.

  The state entering layer l is the output of l−1 layers (``l = L + 1``: the state
  leaving the last layer, before any final LayerNorm), so Lemma 2's Pre-LN bound
  ``(1 + l/2) d ≤ E||x_{l+1}||² ≤ (1 + 3l/2) d`` reads ``1 + (l−1)/2 ≤ · ≤ 1 + 3(l−1)/2``
  here. Post-LN's state is a LayerNorm output (exactly 1 per feature); Lemma 2's
  Post-LN 3/2 concerns ``x5`` before that LayerNorm and is drawn in
  :func:`fig_ln_jacobian`, where it sets the Jacobian. Each arch is drawn from its
  deepest model at width ``d``.

  Args:
    hidden: tidy hidden-norm table (columns ``schema.HIDDEN_COLUMNS``).
    d: width (default the largest).
    loss, n: which loss and sequence length.

  Returns:
    The Figure.
  """
  rows = _deepest(_pick(hidden, loss, n), d).assign(ratio=lambda f: f["sq_norm"] / f["d"])
  stats = fit.summarize(rows.drop(columns="sq_norm"), value="ratio")
  fig = Figure(figsize=(4.6, 3.6), layout="constrained")
  ax = fig.subplots()
  l_grid = np.arange(1, stats["layer"].max() + 1)
  ax.fill_between(l_grid, *pre_ln_bounds(l_grid), facecolor="0.85", edgecolor="0.6",
                  hatch="//", linewidth=0, label=r"Lemma 2 Pre-LN: $1+\frac{l-1}{2}\leq\cdot\leq 1+\frac{3(l-1)}{2}$")
  mean_field = False
  for arch in _archs(stats):
    st = stats[stats["arch"] == arch].sort_values("layer")
    _band(ax, st["layer"], st, arch_style(arch), _label(arch))
    if _covered(st, gradient=False):
      m = theory.mean_field(arch, **_model(st))
      q_L1 = np.append(m["sq_norm_per_d"], m["final_sq_norm_per_d"])
      _mean_field_line(ax, st["layer"], q_L1[st["layer"] - 1], arch)
      mean_field = True
  if "post" in set(stats["arch"]):
    ax.axhline(1.0, color=arch_style("post")["color"], linestyle=":", linewidth=1,
               label=r"Post-LN state = LN output: 1 (Lemma 2's $3/2$ is $x_5$, before it)")
  if mean_field:
    _mean_field_legend(ax)
  L = int(stats["L"].max())
  ax.set(xlabel=rf"layer $l$ (state $x_l$ entering it; $l = {L + 1}$: after the last layer)",
         ylabel=r"$E\Vert x_l\Vert^2/d$", title=f"$d = {int(stats['d'].iloc[0])}$")
  ax.legend(fontsize=7)
  return fig


def _ratio_fits(fits: dict, rows: pd.DataFrame) -> dict | None:
  """The fits' Post/Pre ratio entry for the loss and n of ``rows`` with default other keys (None if absent)."""
  key = {"loss": rows["loss"].iloc[0], "n": int(rows["n"].iloc[0])}
  return next((r for r in fits["ratios"] if {k: r[k] for k in key} == key
               and all(r.get(c, v) == v for c, v in fit.SERIES_DEFAULTS.items())), None)


def fig_ratio(
    grad: pd.DataFrame, fits: dict | None = None, param: str = "W2", loss: str | None = None, n: int | None = None
) -> Figure:
  """Post/Pre ratio of the last-layer gradient norm vs L, with √L and Lemma 2's ratio from the measured q.

  Markers: measured ``g_post/g_pre`` per width. Lines (one per width): the mean-field
  relation ``g_post/g_pre = √(2 q_{L+1} / 3)`` with Pre-LN's measured ``q_{L+1}``
  (:func:`normtheory.theory.pre_post_ratio`), where the store holds it. Gray dashed:
  ``∝ √L`` through the points (Theorem 1's bounds differ by √L). Dotted: SPEC §5's
  law ``√(1 + cL)/a``, only where it converged.

  Args:
    grad: tidy gradient table with both "post" and "pre".
    fits: :func:`normtheory.fit.fit_frame` of ``grad`` (computed if None; then without hidden norms).
    param: the weight.
    loss, n: which loss and sequence length.

  Returns:
    The Figure.
  """
  fits = _ensure_fits(grad, fits, param)
  ratio = _ratio_fits(fits, _pick(grad, loss, n))
  if ratio is None:
    raise ValueError("no post/pre ratio fit for this loss and n (needs both archs and >= 2 depths)")
  cells = pd.DataFrame(ratio["cells"])
  predicted = pd.DataFrame([{"d": c["d"], "L": c["L"], "ratio": 1 / c["predicted"]["value"]}
                            for c in ratio.get("lemma2_ratio", {}).get("cells", [])])
  fig = Figure(figsize=(4.2, 3.4), layout="constrained")
  ax = fig.subplots()
  n_d = cells["d"].nunique()
  for k, (d, st) in enumerate(cells.groupby("d")):
    st = st.sort_values("L")
    shade = str(0.6 * k / max(n_d - 1, 1))
    ax.plot(st["L"], st["ratio"], color=shade, marker=_DEPTH_MARKERS[k % 8], linestyle="none", label=f"$d = {d}$")
    if not predicted.empty:
      pr = predicted[predicted["d"] == d].sort_values("L")
      ax.plot(pr["L"], pr["ratio"], color=shade, linestyle="-", linewidth=1)
  if not predicted.empty:
    ax.plot([], [], color="0.3", linestyle="-", linewidth=1, label=r"$\sqrt{2q_{L+1}/3}$, measured $q$")
  L_grid = np.geomspace(cells["L"].min(), cells["L"].max(), 50)
  scale = fit.log_scale(cells["ratio"], np.sqrt(cells["L"]))
  ax.plot(L_grid, scale * np.sqrt(L_grid), color="0.45", linestyle="--", linewidth=1, label=r"$\propto\sqrt{L}$")
  if "lemma2_law" in ratio:
    a, c = ratio["lemma2_law"]["a"]["value"], ratio["lemma2_law"]["c"]["value"]
    ax.plot(L_grid, 1 / theory.lemma2_ratio_law(L_grid, a, c), color="k", linestyle=":", linewidth=1.2,
            label=rf"SPEC law $\sqrt{{1+cL}}/a$, $c = {c:.2f}$")
  ax.set(xscale="log", yscale="log", xlabel="depth $L$",
         ylabel=r"$g_L^{\rm Post}/g_L^{\rm Pre}$ of $W_2$" if param == "W2" else "Post/Pre ratio")
  _log_ticks(ax, cells["L"])
  ax.legend(fontsize=7)
  return fig


def fig_local_exponent(fits: dict, loss: str | None = None, n: int | None = None, L_max: int = 10_000) -> Figure:
  """Local depth exponent ``−d ln g_L(W2) / d ln L`` of Post-LN and Pre-LN: measured and mean field.

  Points: the measured secant exponent between consecutive depths of the grid,
  pooled over widths (:func:`normtheory.fit.local_exponents`), with its paired-bootstrap
  CI, at the geometric mean of the two depths; small points: each width. Thick
  translucent: the mean field's local exponent out to ``L_max``
  (:func:`normtheory.theory.local_exponent`; independent of d). Horizontal lines:
  Theorem 1's exponents (Pre ½, Post 0).

  Args:
    fits: :func:`normtheory.fit.fit_frame`'s result for the last layer's W2.
    loss, n: which series (default: first loss, largest n, default other keys).
    L_max: the mean-field curve's largest depth.

  Returns:
    The Figure.
  """
  chosen = [s for s in fits["series"] if s["arch"] in theory.THEOREM_GAMMA and s["local_exponents"]
            and all(s[c] == v for c, v in fit.SERIES_DEFAULTS.items())]
  loss = sorted({s["loss"] for s in chosen})[0] if loss is None and chosen else loss
  chosen = [s for s in chosen if s["loss"] == loss]
  n = max((s["n"] for s in chosen), default=None) if n is None else n
  chosen = [s for s in chosen if s["n"] == n]
  if not chosen:
    raise ValueError(f"no Post-LN or Pre-LN series with >= 2 depths for loss={loss!r}, n={n!r}")
  fig = Figure(figsize=(4.8, 3.6), layout="constrained")
  ax = fig.subplots()
  mean_field = False
  L_min = min(step["L"][0] for s in chosen for step in s["local_exponents"])
  for s in sorted(chosen, key=lambda s: fit.arch_key(s["arch"])):
    style = arch_style(s["arch"])
    steps = s["local_exponents"]
    x_K = np.array([np.sqrt(step["L"][0] * step["L"][1]) for step in steps])
    y_K = np.array([step["gamma"]["value"] for step in steps])
    err_2xK = np.abs(np.array([step["gamma"]["ci"] for step in steps]).T - y_K)
    ax.errorbar(x_K, y_K, yerr=err_2xK, color=style["color"], marker=style["marker"], linestyle="none",
                markersize=5, capsize=3, label=f"{_label(s['arch'])}, measured (mean over $d$)")
    for step, x in zip(steps, x_K):
      ax.plot([x] * len(step["by_d"]), [b["gamma"]["value"] for b in step["by_d"]], color=style["color"],
              marker=".", linestyle="none", markersize=3, alpha=0.5)
    if "note" not in s["mean_field"]:
      d_max = max(c["d"] for c in s["cells"])
      d_ff = d_max if s["d_ff"] == "d" else s["d_ff"]
      L_K = np.unique(np.geomspace(L_min, L_max, 200).round().astype(int))
      local = theory.local_exponent(s["arch"], d_max, s["n"], L_K, d_ff)
      _mean_field_line(ax, local.L, local.gamma, s["arch"])
      mean_field = True
    gamma = theory.THEOREM_GAMMA[s["arch"]]
    ax.axhline(gamma, color=style["color"], linestyle=style["linestyle"], linewidth=0.8,
               label=rf"Theorem 1 {_label(s['arch'])}: $\gamma = {gamma:g}$")
  if mean_field:
    _mean_field_legend(ax)
  ax.set(xscale="log", xlabel=r"depth $L$ (between consecutive grid depths)",
         ylabel=r"local exponent $-d\ln g_L/d\ln L$", title=f"loss {loss}, $n = {n}$")
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(_tick_label))
  ax.legend(fontsize=7)
  return fig


def fig_ln_jacobian(ln_jacobian: pd.DataFrame, hidden: pd.DataFrame, d: int | None = None,
                    loss: str | None = None, n: int | None = None, points: pd.DataFrame | None = None) -> Figure:
  """LayerNorm Jacobians (Lemma 3): against the closed form on measured states, and per layer.

  Left: Pre-LN's stored ``||J_LN||₂`` at the first LayerNorm of every layer
  (``ln = 1``, input x_l) and at its final one (layer L+1), one point per seed,
  layer and cell, against ``√d/||x_l||`` from ``hidden_norms.csv`` (row norms
  averaged before the root, not centred, so it equals Lemma 3's
  ``√d/||x − mean(x)||`` up to O(1/d)); the diagonal is Lemma 3's equality (eps = 0).
  Right: ``||J_LN||₂`` vs layer at width d and the deepest L for Post-LN and Pre-LN,
  every LayerNorm of the layer (ln = 1, 2 in forward order; L+1: Pre-LN's final one),
  mean over seeds with a 5–95% band; dashed: Post-LN's second LayerNorm sees ``x5``
  with ``E||x5||²/d = 3/2`` (Lemma 2), so ``||J|| = √(2/3)``; thick translucent: the
  mean field's ``1/√q_l`` at Pre-LN's first LayerNorm.

  Args:
    ln_jacobian: tidy LN-Jacobian table (columns ``schema.LN_JACOBIAN_COLUMNS``).
    hidden: tidy hidden-norm table (for the left panel's states).
    d: width of the right panel (default the largest).
    loss, n: which loss and sequence length.
    points: the left panel's points (columns ``x``, ``value``) if computed already, e.g. one cell at a
      time from a store (:func:`ln_jacobian_cells`, :func:`cell_points`); default
      :func:`lemma3_points` of ``ln_jacobian`` and ``hidden``. The left panel is rasterized (a
      store's millions of points keep the PDF small).

  Returns:
    The Figure.
  """
  jac = _theorem_archs(_pick(ln_jacobian, loss, n))
  if jac.empty:
    raise ValueError("no Post-LN or Pre-LN rows in the LN-Jacobian table")
  fig = Figure(figsize=(8.4, 3.6), layout="constrained")
  left, right = fig.subplots(1, 2)
  if points is None:
    points = lemma3_points(jac[(jac["arch"] == "pre") & (jac["ln"] == 1)],
                           _pick(hidden, jac["loss"].iloc[0], int(jac["n"].iloc[0])))
  if not points.empty:
    x = points["x"]
    left.plot(x, points["value"], color=arch_style("pre")["color"], marker=".", linestyle="none", markersize=2,
              alpha=0.5, label="Pre-LN, first and final LN", rasterized=True)
    lim = np.array([x.min(), x.max()])
    left.plot(lim, lim, color="k", linestyle="--", linewidth=1, label=r"Lemma 3: $\sqrt{d}/\Vert x-\bar x\Vert$")
    left.set(xscale="log", yscale="log")
    for axis in (left.xaxis, left.yaxis):
      axis.set_major_formatter(ticker.FuncFormatter(_tick_label))
      axis.set_minor_formatter(ticker.FuncFormatter(_tick_label))
    left.legend(fontsize=7)
  left.set(xlabel=r"$\sqrt{d}/\Vert x_l\Vert$ (stored hidden norm)", ylabel=r"stored $\Vert J_{\rm LN}\Vert_2$",
           title="Lemma 3 on measured states")
  stats = fit.summarize(_deepest(jac, d), value="value")
  for arch in _archs(stats):
    style = arch_style(arch)
    for k, (ln, st) in enumerate(stats[stats["arch"] == arch].groupby("ln")):
      st = st.sort_values("layer")
      mixed = tuple(np.array(colors.to_rgb(style["color"])) * (1 - 0.45 * k) + 0.45 * k)
      _band(right, st["layer"], st, {**style, "color": mixed}, f"{_label(arch)}, LN {ln}")
    if arch == "pre" and _covered(stats[stats["arch"] == arch], gradient=False):
      m = theory.mean_field(arch, **_model(stats[stats["arch"] == arch]))
      q_L1 = np.append(m["sq_norm_per_d"], m["final_sq_norm_per_d"])
      _mean_field_line(right, np.arange(1, q_L1.size + 1), 1 / np.sqrt(q_L1), arch)
      _mean_field_legend(right)
  if "post" in set(stats["arch"]):
    right.axhline(1 / np.sqrt(theory.post_x5_sq_norm(1)), color=arch_style("post")["color"], linestyle="--",
                  linewidth=1, label=r"Post-LN LN 2 at $x_5$: $\sqrt{2/3}$ (Lemmas 2, 3)")
  right.set(yscale="log", xlabel="layer $l$ ($L + 1$: final LN)", ylabel=r"$\Vert J_{\rm LN}\Vert_2$",
            title=f"$d = {int(stats['d'].iloc[0])}$")
  right.yaxis.set_major_formatter(ticker.FuncFormatter(_tick_label))
  right.yaxis.set_minor_formatter(ticker.FuncFormatter(_tick_label))
  right.legend(fontsize=7)
  return fig


def fig_arch_comparison(
    grad: pd.DataFrame, param: str = "W2", d: int | None = None, loss: str | None = None, n: int | None = None
) -> Figure:
  """Last-layer and first-layer gradient norm vs L (log-log), one line per arch, at one width.

  Post-LN keeps the last layer's gradient flat in L; Pre-LN shrinks it like
  ~L^(-1/2) while its first layer keeps a larger gradient (Xiong et al. Fig. 3):
  the two panels place every architecture between those behaviours.

  Args:
    grad: tidy gradient table.
    param: the weight.
    d: width to show (default the largest).
    loss, n: which loss and sequence length (default: first loss, largest n).

  Returns:
    The Figure.
  """
  rows = _pick(grad, loss, n)
  rows = rows[rows["d"] == (rows["d"].max() if d is None else d)]
  fig = Figure(figsize=(7.6, 3.6), layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  mean_field = False
  for ax, layer, title in zip(axes, (None, 1), ("last layer $l = L$", "first layer $l = 1$")):
    stats = fit.summarize(fit.select(rows, param, layer))
    for arch in _archs(stats):
      st = stats[stats["arch"] == arch].sort_values("L")
      _band(ax, st["L"], st, arch_style(arch), _label(arch))
      if layer is None:
        mean_field |= _mean_field_w2(ax, st, arch, param)
    ax.set(xscale="log", yscale="log", xlabel="depth $L$", title=title)
    _log_ticks(ax, stats["L"])
  axes[0].set_ylabel(rf"$\Vert\partial\mathcal{{L}}/\partial {_tex_param(param)}^{{(l)}}\Vert_F$")
  if mean_field:
    _mean_field_legend(axes[0])
  axes[0].legend(fontsize=7)
  fig.suptitle(f"$d = {int(rows['d'].iloc[0])}$, loss {rows['loss'].iloc[0]}", fontsize=9)
  return fig


def fig_depth_metrics(depth: pd.DataFrame, d: int | None = None, loss: str | None = None,
                      n: int | None = None) -> Figure:
  """Effective-depth metrics per layer vs l/L, one panel per metric, one line per arch.

  Each arch is drawn from its deepest model at width ``d``, with the mean-field
  prediction of rel_update and cos_sim, and ``l^(-1/2)`` through Pre-LN's relative
  update (the effective-depth argument).

  Args:
    depth: tidy depth-metric table (columns ``depth_metrics.COLUMNS``).
    d: width (default the largest).
    loss, n: which loss and sequence length (default: first loss, largest n).

  Returns:
    The Figure.
  """
  rows = _deepest(_pick(depth, loss, n), d)
  stats = fit.summarize(rows, value="value")
  fig = Figure(figsize=(11.0, 3.6), layout="constrained")
  axes = fig.subplots(1, len(DEPTH_METRIC_LABELS))
  mean_field = False
  for ax, (metric, label) in zip(axes, DEPTH_METRIC_LABELS.items()):
    for arch in _archs(stats):
      st = stats[(stats["arch"] == arch) & (stats["metric"] == metric)].sort_values("layer")
      if st.empty:  # conditional weights report no removal_angle
        continue
      L = _model(st)["L"]
      _band(ax, st["layer"] / L, st, arch_style(arch), f"{_label(arch)} ($L = {L}$)")
      if metric in ("rel_update", "cos_sim") and _covered(st, gradient=False):
        _mean_field_line(ax, st["layer"] / L, theory.mean_field(arch, **_model(st))[metric][st["layer"] - 1], arch)
        mean_field = True
    pre = stats[(stats["arch"] == "pre") & (stats["metric"] == metric)]
    if metric == "rel_update" and len(pre) > 1:
      scale = fit.log_scale(pre["mean"], pre["layer"] ** -0.5)
      ax.plot(pre["layer"] / pre["L"], scale * pre["layer"] ** -0.5, color="0.45", linestyle="--", linewidth=1,
              label=r"$\propto l^{-1/2}$")
    log_y = metric != "cos_sim"  # cos_sim lies near 1: a linear axis
    ax.set(xscale="log", yscale="log" if log_y else "linear", xlabel="$l/L$", title=label)
    for axis in (ax.xaxis, ax.yaxis) if log_y else (ax.xaxis,):
      axis.set_major_formatter(ticker.FuncFormatter(_tick_label))
      axis.set_minor_formatter(ticker.FuncFormatter(_tick_label))
  if mean_field:
    _mean_field_legend(axes[0])
  axes[0].legend(fontsize=7)
  fig.suptitle(f"$d = {int(stats['d'].iloc[0])}$, $n = {int(stats['n'].iloc[0])}$", fontsize=9)
  return fig


def figures(
    grad: pd.DataFrame, hidden: pd.DataFrame, fits: dict | None = None, depth: pd.DataFrame | None = None,
    ln_jacobian: pd.DataFrame | None = None, ln_points: pd.DataFrame | None = None,
) -> dict[str, Figure]:
  """Every figure that the data allow, keyed by function name as in ``CAPTIONS``.

  fig_ratio needs post and pre; fig_local_exponent Post-LN or Pre-LN at >= 2 depths;
  fig_depth_metrics a depth-metric table ``depth``; fig_ln_jacobian an LN-Jacobian
  table ``ln_jacobian`` with Post-LN or Pre-LN rows (``ln_points``: its left panel's points, if
  computed already: :func:`fig_ln_jacobian`).
  """
  fits = _ensure_fits(grad, fits, "W2")
  out = {
      "fig_last_layer_vs_depth": fig_last_layer_vs_depth(grad, fits),
      "fig_layer_profile": fig_layer_profile(grad),
      "fig_width_scaling": fig_width_scaling(grad, fits),
      "fig_hidden_norms": fig_hidden_norms(hidden),
      "fig_arch_comparison": fig_arch_comparison(grad),
  }
  if _ratio_fits(fits, _pick(grad, None, None)) is not None:
    out["fig_ratio"] = fig_ratio(grad, fits)
  if any(s["arch"] in theory.THEOREM_GAMMA and s["local_exponents"] for s in fits["series"]):
    out["fig_local_exponent"] = fig_local_exponent(fits)
  if depth is not None and not depth.empty:
    out["fig_depth_metrics"] = fig_depth_metrics(depth)
  if ln_jacobian is not None and ln_jacobian["arch"].isin(list(theory.THEOREM_GAMMA)).any():
    out["fig_ln_jacobian"] = fig_ln_jacobian(ln_jacobian, hidden, points=ln_points)
  return out


def render(fig: Figure, name: str, dpi: int = 200) -> dict[str, bytes]:
  """``{name.png: bytes, name.pdf: bytes}``: the figure drawn in memory (PNG at ``dpi``), nothing written."""
  files = {}
  for fmt in ("png", "pdf"):
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi)
    files[f"{name}.{fmt}"] = buffer.getvalue()
  return files


def save(fig: Figure, out_dir, name: str, dpi: int = 200) -> list[pathlib.Path]:
  """Write ``out_dir/name.png`` (at ``dpi``) and ``out_dir/name.pdf``, each atomically; returns the paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for filename, data in render(fig, name, dpi).items():
    schema.atomic_write(out_dir / filename, data)
    paths.append(out_dir / filename)
  return paths


def fig_assumptions(fits_by_setting: list[tuple[str, dict]], gamma_max: float | None = None) -> Figure:
  """Forest plot: the fitted depth exponent γ and width exponent α, with 95% CIs, per setting.

  One row per setting (top to bottom in the given order), Post-LN and Pre-LN side by
  side within a row; the free power law ``g = C d^α L^(−γ)`` of the last layer's W2
  (``fits["series"][...]["power_law"]``). Theorem 1's values are marked: γ = 0 (Post)
  and ½ (Pre) as vertical lines in the arch's colour, α = 1 (its bound is d√(ln d): a
  fitted α slightly above 1 is the √(ln d) factor) as a gray line.

  Args:
    fits_by_setting: (setting name, :func:`normtheory.fit.fit_frame` result) pairs,
      one store per setting.
    gamma_max: the γ axis ends here; an estimate beyond it (a gradient that decays
      geometrically, not as a power of L) is drawn as an arrow at the edge, labelled
      with its value. None: the axis fits every estimate.

  Returns:
    The Figure.

  References:
    Xiong et al. 2020, Theorem 1 (Post ``O(d √ln d)``, Pre ``O(d √(ln d / L))``).
  """
  archs = ("post", "pre")
  fig = Figure(figsize=(7.2, 0.55 * len(fits_by_setting) + 1.6), layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  offsets = {"post": -0.15, "pre": 0.15}
  labelled = set()  # (axis, arch) pairs that have their legend entry
  for row, (setting, fits) in enumerate(fits_by_setting):
    for s in fits["series"]:
      if s["arch"] not in archs:
        continue
      style = arch_style(s["arch"])
      for ax, name in zip(axes, ("gamma", "alpha")):
        estimate = s["power_law"].get(name)
        if estimate is None or estimate["value"] is None:
          continue
        lo, hi = estimate["ci"]
        value = estimate["value"]
        y = row + offsets[s["arch"]]
        if name == "gamma" and gamma_max is not None and value > gamma_max:
          ax.annotate(f"{value:.3g} [{lo:.3g}, {hi:.3g}]", xy=(gamma_max, y), xytext=(gamma_max - 0.35, y),
                      color=style["color"], fontsize=6, ha="right", va="center",
                      arrowprops={"arrowstyle": "->", "color": style["color"]})
          continue
        ax.errorbar(value, y, xerr=[[value - lo], [hi - value]], color=style["color"],
                    marker=style["marker"], markersize=5, capsize=2, linestyle="none",
                    label=_label(s["arch"]) if (ax, s["arch"]) not in labelled else None)
        labelled.add((ax, s["arch"]))
  for arch in archs:
    axes[0].axvline(theory.THEOREM_GAMMA[arch], color=arch_style(arch)["color"], linestyle=":", linewidth=1)
  axes[1].axvline(1.0, color="0.45", linestyle=":", linewidth=1,
                  label=r"Theorem 1: $\alpha = 1$ (times $\sqrt{\ln d}$)")
  if gamma_max is not None:
    axes[0].set_xlim(right=gamma_max)
  axes[0].set_yticks(range(len(fits_by_setting)), labels=[name for name, _ in fits_by_setting])
  axes[0].invert_yaxis()
  axes[0].set(xlabel=r"depth exponent $\gamma$ ($g \propto L^{-\gamma}$; Theorem: Post 0, Pre 1/2)")
  axes[1].set(xlabel=r"width exponent $\alpha$ ($g \propto d^{\alpha}$)")
  entries = {}
  for ax in axes:
    entries |= dict(zip(*reversed(ax.get_legend_handles_labels())))
  fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncols=3, fontsize=7)
  return fig
