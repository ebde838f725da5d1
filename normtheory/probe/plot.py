"""The figure of a probe's classification: each parameter group's depth exponent γ with its CI.

The gradient-norm figures of a probe (last layer vs depth, per-layer profile) are
:func:`normtheory.plot.fig_last_layer_vs_depth` and
:func:`normtheory.plot.fig_layer_profile` of :func:`normtheory.probe.fit.to_grad_table`.

References:
  Xiong et al. 2020, Theorem 1: γ = 0 (Post-LN) and γ = ½ (Pre-LN) for the last
    layer's gradient ``∝ L^-γ``; the shaded bands are :mod:`normtheory.probe.fit`'s
    classification rule around them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from normtheory import plot
from normtheory.probe import fit as probe_fit

VERDICT_COLORS = {probe_fit.POST_LIKE: plot.arch_style("post")["color"],
                  probe_fit.PRE_LIKE: plot.arch_style("pre")["color"]}
CAPTION = (
    "Depth exponent gamma of g = C d^alpha L^-gamma per parameter group (inside the layer stack: at the last "
    "layer L; outside: the array itself), point and 95% paired-bootstrap CI over seeds, one panel per model. "
    "Shaded: the classification bands, flat in L (Post-LN-like, blue) and falling like L^-1/2 (Pre-LN-like, "
    "orange); a group is named when its whole CI lies in a band, gray otherwise; groups whose gradient is zero up to "
    "float rounding are marked, not fitted.")


def fig_exponents(groups: pd.DataFrame) -> Figure:
  """γ and its CI per parameter group, one panel per model, the two classification bands shaded.

  Args:
    groups: :func:`normtheory.probe.fit.fit_groups`'s result.

  Returns:
    The Figure.
  """
  models = [c for c in groups.columns if c not in probe_fit.GROUP_COLUMNS]
  parts = list(groups.groupby(models, sort=False)) if models else [((), groups)]
  params = list(dict.fromkeys(groups.sort_values("in_stack", ascending=False, kind="stable")["param"]))
  fig = Figure(figsize=(3.0 * len(parts) + 1.6, 0.8 + 0.24 * len(params)), layout="constrained")
  axes = fig.subplots(1, len(parts), squeeze=False, sharey=True)[0]
  y = {p: i for i, p in enumerate(params)}
  for ax, (model, part) in zip(axes, parts):
    model = model if isinstance(model, tuple) else (model,)
    ax.axvspan(*probe_fit.FLAT_BAND, color=VERDICT_COLORS[probe_fit.POST_LIKE], alpha=0.12, linewidth=0)
    ax.axvspan(*probe_fit.PRE_BAND, color=VERDICT_COLORS[probe_fit.PRE_LIKE], alpha=0.12, linewidth=0)
    for x in (0.0, 0.5):
      ax.axvline(x, color="0.6", linewidth=0.8, linestyle=":")
    for _, g in part[np.isfinite(part["gamma"])].iterrows():
      color = VERDICT_COLORS.get(g["verdict"], "0.45")
      err = np.maximum(0.0, [[g["gamma"] - g["gamma_lo"]], [g["gamma_hi"] - g["gamma"]]])  # >= 0 despite rounding
      ax.errorbar(g["gamma"], y[g["param"]], xerr=err, color=color, marker="o" if g["in_stack"] else "D",
                  markersize=4, capsize=2, linewidth=1.2)
    for _, g in part[part["reason"].str.startswith("zero")].iterrows():
      ax.annotate("zero (rounding)", (0.0, y[g["param"]]), color="0.45", fontsize=7, va="center", ha="left")
    ax.set(title=", ".join(map(str, model)) or "model", xlabel=r"$\gamma$ in $L^{-\gamma}$")
  axes[0].set_yticks(range(len(params)), labels=params, fontsize=7)
  axes[0].set_ylim(len(params) - 0.5, -0.5)  # first group on top
  axes[0].plot([], [], "o", color="0.3", markersize=4, label="in the stack (layer L)")
  axes[0].plot([], [], "D", color="0.3", markersize=4, label="outside the stack")
  axes[0].legend(fontsize=6, loc="lower right")
  return fig
