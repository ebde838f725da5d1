"""The tables of the README's "Where the asymptotics live", from the stored results.

  python experiments/grad_scaling.py --weights conditional --d 64..65536 --L 6..96 --seeds 8 --out results/width_65536
  python experiments/grad_scaling.py --weights conditional --d 512 --L 6..6144 --seeds 8 --depth-metrics \\
      --out results/depth_6144
  python experiments/asymptotics.py --width results/width_65536 --depth results/depth_6144

Width: the local exponent ``d ln g_L(W2) / d ln d`` per doubling of d (secant between
consecutive widths, 95% paired-bootstrap CI over seeds), beside what ``g ∝ d sqrt(ln d)``
gives over the same step, ``1 + ln(ln d_b / ln d_a) / (2 ln(d_b / d_a))`` (about
``1 + 1/(2 ln d)``), and 1. Depth: the stored fits' local exponent ``-d ln g / d ln L``
between consecutive depths (``fits.json``) beside the mean field's on the same cells,
and the effective-depth exponent kappa with the mean field's. Mean field: at one width
(``--mean-field-d``, default 8192) the measured last-layer W2 norm and hidden norm per cell
against :func:`normtheory.theory.mean_field`, with the 10% it is tested to.

References:
  Xiong et al. 2020, Theorem 1 (``O(d sqrt(ln d))`` and ``O(d sqrt(ln d / L))``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from normtheory import fit, store, theory


def _estimate(value: float, ci) -> str:
  """``value [lo, hi]`` to three decimals."""
  return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _or_dash(value: float | None) -> str:
  return "-" if value is None else f"{value:.3f}"


def width_rows(results: pathlib.Path, n_boot: int = 2000) -> list[str]:
  """Markdown rows: arch, L, widths, measured local exponent [CI], d√ln d's, 1."""
  grad = store.load(results).grad
  last = grad[(grad["param"] == "W2") & (grad["layer"] == grad["L"])]
  rows = []
  for (arch, L), part in last.groupby(["arch", "L"]):
    table = part.pivot(index="seed", columns="d", values="grad_norm")
    widths = np.asarray(table.columns, np.float64)
    boot_BxD = fit.paired_bootstrap_means(table.to_numpy(), n_boot, np.random.default_rng(0))
    mean_D = table.mean().to_numpy()
    for a, b in zip(range(len(widths) - 1), range(1, len(widths))):
      step = np.log(widths[b] / widths[a])
      alpha = np.log(mean_D[b] / mean_D[a]) / step
      lo, hi = np.percentile(np.log(boot_BxD[:, b] / boot_BxD[:, a]) / step, [2.5, 97.5])
      bound = 1 + np.log(np.log(widths[b]) / np.log(widths[a])) / (2 * step)
      rows.append(f"| {arch} | {L} | {int(widths[a])} -> {int(widths[b])} | {_estimate(alpha, (lo, hi))} "
                  f"| {bound:.3f} | 1 |")
  return rows


MEAN_FIELD_TOLERANCE = 0.10  # what tests/test_theory.py holds the predictor to (mean of 8 seeds, d = 256)


def mean_field_rows(results: pathlib.Path, d: int) -> list[str]:
  """Markdown rows at width ``d``: arch, L, the measured mean over seeds of the last layer's W2 norm
  and of ``E||x_L||²/d`` entering the last layer, the mean field's, and whether each is within
  ``MEAN_FIELD_TOLERANCE`` (the tolerance the predictor is tested to)."""
  frames = store.load(results)
  grad, hidden = frames.grad, frames.hidden
  w2 = grad[(grad["param"] == "W2") & (grad["layer"] == grad["L"]) & (grad["d"] == d)]
  states = hidden[(hidden["layer"] == hidden["L"]) & (hidden["d"] == d)]
  rows = []
  for (arch, L, n), part in w2.groupby(["arch", "L", "n"]):
    m = theory.mean_field(arch, d, int(L), int(n))
    g, g_mf = part["grad_norm"].mean(), m["last_layer_w2"]
    q = states[(states["arch"] == arch) & (states["L"] == L) & (states["n"] == n)]["sq_norm"].mean() / d
    q_mf = m["sq_norm_per_d"][-1]
    within = lambda a, b: "yes" if abs(a / b - 1) <= MEAN_FIELD_TOLERANCE else "NO"
    rows.append(f"| {arch} | {L} | {g:.1f} | {g_mf:.1f} | {g / g_mf - 1:+.3f} ({within(g, g_mf)}) "
                f"| {q:.3f} | {q_mf:.3f} | {q / q_mf - 1:+.3f} ({within(q, q_mf)}) |")
  return rows


def depth_rows(results: pathlib.Path) -> list[str]:
  """Markdown rows: arch, depths, measured local exponent [CI] (fits.json), mean field."""
  fits = json.loads((results / "fits.json").read_text())
  rows = []
  for s in fits["series"]:
    if s["arch"] not in ("post", "pre") or not s.get("local_exponents"):
      continue
    for e in s["local_exponents"]:
      L_a, L_b = e["L"]
      g = e["gamma"]
      rows.append(f"| {s['arch']} | {L_a} -> {L_b} | {_estimate(g['value'], g['ci'])} | {_or_dash(e.get('mean_field'))} |")
  return rows


def kappa_rows(results: pathlib.Path) -> list[str]:
  """Markdown rows of the effective-depth fits (fits.json), Pre-LN and Post-LN."""
  fits = json.loads((results / "fits.json").read_text())
  rows = []
  for e in fits.get("effective_depth", []):
    if e["arch"] in ("post", "pre") and e.get("metric", "rel_update") == "rel_update":
      k = e["kappa"]
      rows.append(f"| {e['arch']} | {e['L']} | {_estimate(k['value'], k['ci'])} | {_or_dash(e.get('kappa_mean_field'))} |")
  return rows


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--width", type=pathlib.Path, default=None, help="a store over widths (conditional weights)")
  p.add_argument("--depth", type=pathlib.Path, default=None, help="a store over depths, with --depth-metrics")
  p.add_argument("--mean-field-d", type=int, default=8192, help="the width of the mean-field table (width store)")
  args = p.parse_args(argv)
  if args.width:
    print("| arch | L | d step | local exponent [95% CI] | d sqrt(ln d) | d |\n|---|---|---|---|---|---|")
    print("\n".join(width_rows(args.width)))
    print(f"\n| arch | L | g_L(W2) at d = {args.mean_field_d} | mean field | relative | E||x_L||²/d | mean field | relative |"
          "\n|---|---|---|---|---|---|---|---|")
    print("\n".join(mean_field_rows(args.width, args.mean_field_d)))
  if args.depth:
    print("\n| arch | L step | local exponent [95% CI] | mean field |\n|---|---|---|---|")
    print("\n".join(depth_rows(args.depth)))
    print("\n| arch | L | kappa (rel_update ∝ l^-kappa) [95% CI] | mean field |\n|---|---|---|---|")
    print("\n".join(kappa_rows(args.depth)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
