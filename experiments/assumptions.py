"""Does Theorem 1 survive a real Transformer? One sweep per setting, then the two figures.

Seven settings, each its own store ``OUT/<setting>/`` (so each has its own fits):
the paper's idealisation, each relaxation alone, and all three model relaxations at
once (``realistic``). Every setting shares the grid and the read-out: Post-LN and
Pre-LN, d in {64, 128, 256, 512}, L in {6, 12, 24, 48, 96}, 8 seeds, n = 16, and
cross-entropy over a 256-token vocabulary (the loss text inputs need, so that the
only difference between two settings is the assumption they relax)::

  python experiments/assumptions.py --out results/assumptions --figures figures/assumptions

runs, for each setting, ``python experiments/grad_scaling.py <COMMON> <FLAGS> --out
OUT/<setting>`` (printed before it starts; an interrupted run resumes), then draws
``fig_assumptions`` (fitted γ and α with 95% CIs per setting) and
``fig_last_layer_vs_depth`` for ``paper`` and ``realistic``, and prints per setting
the exponents, the Post/Pre ratio at the deepest L and where the mean-field
predictor does not apply. ``--draw-only`` redraws from finished stores.

References:
  Xiong et al. 2020, Theorem 1 and Fig. 3 (measured on real models reading text).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")

from normtheory import cli, fit, plot, schema, store, theory  # noqa: E402

COMMON = ["--arch", "post,pre", "--loss", "xent", "--vocab", "256", "--n", "16"]
SETTINGS: dict[str, list[str]] = {
    "paper": ["--preset", "paper"],  # W_Q = W_K = 0, one head, Gaussian inputs, one sequence
    "xavier": ["--attention", "xavier"],  # attention scores no longer zero
    "heads8": ["--heads", "8"],  # 8 heads of width d/8, uniform attention
    "text": ["--inputs", "text"],  # bytes of Python's language reference, untied read-out
    "text-tied": ["--inputs", "text", "--tied"],  # the same, read-out tied to the embedding
    "batch8": ["--batch", "8"],  # the gradient of the mean loss of 8 sequences
    "realistic": ["--preset", "realistic"],  # xavier attention + 8 heads + text
}


def command(setting: str, out: pathlib.Path, args: argparse.Namespace) -> list[str]:
  """The grad_scaling.py arguments of one setting."""
  grid = ["--d", args.d, "--L", args.L, "--seeds", str(args.seeds), "--n-boot", str(args.n_boot)]
  return [*COMMON, *grid, *SETTINGS[setting], "--out", str(out / setting), *(["--quiet"] if args.quiet else [])]


def summary(setting: str, results: pathlib.Path, fits: dict) -> list[str]:
  """Lines for one setting: power-law γ and α and the one-sided bound verdict per arch, Post/Pre ratio at
  the deepest L, mean-field scope."""
  lines = [f"{setting}:"]
  for s in fits["series"]:
    p = s["power_law"]
    text = ", ".join(f"{k} = {fit._fmt(p[k])}" for k in ("gamma", "alpha") if k in p)
    lines.append(f"  {s['arch']}: {text}; {fit.bound_verdict(s)}")
  last = store.read(results, schema.GRAD_FILE, where=store.last_layer("W2"))
  last = last[last["L"] == last["L"].max()]
  means = last.groupby(["arch", "d"])["grad_norm"].mean()
  if {"post", "pre"} <= set(last["arch"]):
    ratios = "  ".join(f"d={d}: {means['post', d] / means['pre', d]:.3g}" for d in sorted(last["d"].unique()))
    lines.append(f"  Post/Pre ratio at L = {int(last['L'].max())}: {ratios}")
  cell = last.iloc[0]
  gap = theory.mean_field_gap(cell)
  lines.append("  mean field: " + ("applies" if gap is None else f"does not apply: {gap}"))
  return lines


def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="results/assumptions", help="one store per setting under this folder")
  p.add_argument("--figures", default="figures/assumptions", help="folder for the PNG/PDF figures")
  p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
  p.add_argument("--d", default="64,128,256,512", help="widths (grad_scaling.py grammar)")
  p.add_argument("--L", default="6..96", help="depths (grad_scaling.py grammar)")
  p.add_argument("--seeds", type=int, default=8, help="samples per cell")
  p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the fits")
  p.add_argument("--dpi", type=int, default=200, help="PNG resolution")
  p.add_argument("--draw-only", action="store_true", help="skip the sweeps; draw from the stores")
  p.add_argument("--quiet", action="store_true", help="no progress bars or sweep tables")
  args = p.parse_args(argv)
  args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
  unknown = [s for s in args.settings if s not in SETTINGS]
  if unknown or not args.settings:
    p.error(f"--settings: unknown {unknown[0] if unknown else 'empty value'!r}; choose from {', '.join(SETTINGS)}")
  return args


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  out, fig_dir = pathlib.Path(args.out), pathlib.Path(args.figures)
  for setting in args.settings if not args.draw_only else ():
    argv_s = command(setting, out, args)
    print("python experiments/grad_scaling.py " + " ".join(argv_s), flush=True)
    status = cli.main(argv_s)
    if status != 0:
      print(f"assumptions.py: {setting}: grad_scaling.py exited with status {status}", file=sys.stderr)
      return status
  fits_by_setting = []
  for setting in args.settings:
    fits = json.loads((out / setting / schema.FITS_FILE).read_text())
    fits_by_setting.append((setting, fits))
    print("\n".join(summary(setting, out / setting, fits)))
  plot.save(plot.fig_assumptions(fits_by_setting), fig_dir, "fig_assumptions", dpi=args.dpi)
  for setting in ("paper", "realistic"):
    if setting in args.settings:
      grad = store.read(out / setting, schema.GRAD_FILE, where=store.last_layer("W2"))
      fig = plot.fig_last_layer_vs_depth(grad, dict(fits_by_setting)[setting])
      plot.save(fig, fig_dir, f"fig_last_layer_vs_depth_{setting}", dpi=args.dpi)
  print(f"figures in {fig_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
