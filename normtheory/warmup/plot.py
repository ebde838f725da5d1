"""The warm-up figure: validation curves and the last-layer gradient norm in training.

Drawn on :class:`matplotlib.figure.Figure` (no pyplot state, any backend) with the
labels of :mod:`normtheory.plot` and saved through :func:`normtheory.plot.save`.

References:
  Xiong et al. 2020, Fig. 2 (validation loss and BLEU of Post-LN / Pre-LN with and
  without warm-up) and Section 3.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from normtheory import plot as nt_plot

PANELS = (
    ("val_loss", "validation loss", "linear"),
    ("val_acc", "validation accuracy", "linear"),
    ("grad_norm_W2", nt_plot.GRAD_LABEL, "log"),
)
SETTING_KEYS = ["optimizer", "warmup", "peak_lr"]


def setting_label(optimizer: str, warmup: int, peak_lr: float) -> str:
  """Legend text of one optimiser setting, e.g. ``adam, warm-up 500, lr 1e-03``."""
  warm = "no warm-up" if warmup == 0 else f"warm-up {warmup}"
  return f"{optimizer}, {warm}, lr {peak_lr:.0e}"


def final_metrics(frame: pd.DataFrame) -> pd.DataFrame:
  """Validation loss and accuracy at each run's last step, mean and std over seeds.

  Args:
    frame: the tidy training frame (:data:`normtheory.warmup.COLUMNS`).

  Returns:
    one row per (arch, L, optimizer, warmup, peak_lr) with columns
    ``val_loss``, ``val_loss_std``, ``val_acc``, ``val_acc_std``, ``seeds``.
  """
  keys = ["arch", "L", *SETTING_KEYS]
  val = frame[frame.metric.isin(["val_loss", "val_acc"])]
  last = val[val.step == val.groupby(keys).step.transform("max")]
  stats = last.groupby([*keys, "metric"]).value.agg(["mean", "std", "count"]).unstack("metric")
  out = pd.DataFrame({
      "val_loss": stats[("mean", "val_loss")],
      "val_loss_std": stats[("std", "val_loss")],
      "val_acc": stats[("mean", "val_acc")],
      "val_acc_std": stats[("std", "val_acc")],
      "seeds": stats[("count", "val_acc")].astype(int),
  })
  return out.reset_index()


def _binned(run: pd.DataFrame, width: int) -> pd.DataFrame:
  """Per-step values averaged over windows of ``width`` steps, plotted at the window end."""
  step_bin = -(-run.step // width) * width
  return run.assign(step=step_bin).groupby(["seed", "step"], as_index=False).value.mean()


def fig_warmup(frame: pd.DataFrame, out_dir: str | os.PathLike | None = None, dpi: int = 200) -> Figure:
  """Validation loss, accuracy and last-layer W2 gradient norm against training step.

  One row per (arch, L), one column per quantity, one line per optimiser setting
  (the mean over seeds; the band spans the seeds). The per-step gradient norm is
  averaged over the windows between validation passes.

  Args:
    frame: the tidy training frame (:data:`normtheory.warmup.COLUMNS`).
    out_dir: if given, write ``fig_warmup.png`` (``dpi``) and ``fig_warmup.pdf`` there
      (:func:`normtheory.plot.save`).
    dpi: PNG resolution.

  Returns:
    the figure.
  """
  rows = frame[["arch", "L"]].drop_duplicates().sort_values(["L", "arch"], ascending=[True, False])
  settings = frame[SETTING_KEYS].drop_duplicates().sort_values(SETTING_KEYS).itertuples(index=False)
  colors = dict(zip(settings, colormaps["tab10"].colors))
  val_steps = np.sort(frame[frame.metric == "val_acc"].step.unique())
  width = int(val_steps[1] - val_steps[0]) if val_steps.size > 1 else 1
  fig = Figure(figsize=(4.2 * len(PANELS), 2.6 * len(rows)), layout="constrained")
  axes = fig.subplots(len(rows), len(PANELS), sharex=True, sharey="col", squeeze=False)
  for i, (arch, L) in enumerate(rows.itertuples(index=False)):
    for j, (metric, ylabel, yscale) in enumerate(PANELS):
      ax = axes[i, j]
      for setting, color in colors.items():
        run = frame[(frame.arch == arch) & (frame.L == L) & (frame.metric == metric)]
        run = run[(run[SETTING_KEYS] == pd.Series(setting._asdict())).all(axis=1)]
        if run.empty:
          continue
        if metric == "grad_norm_W2":
          run = _binned(run, width)
        by_step = run.groupby("step").value
        steps = np.asarray(list(by_step.groups))
        style = "-" if setting.optimizer == "adam" else "--"
        ax.plot(steps, by_step.mean(), style, color=color, lw=1.3, label=setting_label(*setting))
        ax.fill_between(steps, by_step.min(), by_step.max(), color=color, alpha=0.15, lw=0)
      ax.set_yscale(yscale)
      ax.grid(alpha=0.3)
      ax.set_title(f"{nt_plot.ARCH_LABELS.get(arch, arch)}, L={L}: {ylabel}", fontsize=9)
      if i == len(rows) - 1:
        ax.set_xlabel("training step")
  axes[0, 0].legend(fontsize=7, loc="upper right")
  if out_dir is not None:
    nt_plot.save(fig, out_dir, "fig_warmup", dpi=dpi)
  return fig
