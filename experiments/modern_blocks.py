"""The blocks people train today: does Post-/Pre- placement still decide the depth law? One sweep per setting.

Each setting is its own store ``OUT/<setting>/`` (its own fits): the norm in {layernorm,
rmsnorm, dyt, derf} × the FFN in {relu, swiglu}, the 2020 block with the causal mask,
and the ``llama`` and ``dyt`` presets (Pre-RMSNorm / Pre-DyT, SwiGLU, causal, RoPE,
Xavier attention, text), each measured Post and Pre (``--arch post,pre`` wins over the
presets' Pre). Every setting shares the grid and the read-out: d in {64, 128, 256, 512},
L in {6, 12, 24, 48, 96}, 8 seeds, n = 16, and cross-entropy over a 256-token vocabulary
(the loss text inputs need, so that two settings differ only in their block). The DyT and
Derf settings run in float64: their Post-LN stream shrinks geometrically with depth (the
pointwise norm does not divide by the stream's scale), and in float32 its last-layer
gradient underflows to 0 before L = 96::

  python experiments/modern_blocks.py --out results/modern --figures figures/modern

runs, for each setting, ``python experiments/grad_scaling.py <COMMON> <FLAGS> --out
OUT/<setting>`` (printed before it starts; an interrupted run resumes), then draws
``fig_modern_blocks`` (fitted γ and α with 95% CIs per setting, Post and Pre side by side;
a γ beyond 1.5 is an arrow with its value)
and ``fig_last_layer_vs_depth`` for ``llama`` and ``dyt``, and prints per setting the
exponents and bound verdicts, the Post/Pre ratio at the deepest L, Pre's final state
against Lemma 2's band, and where the mean-field predictor does not apply.
``--draw-only`` redraws from finished stores.

References:
  Xiong et al. 2020, Theorem 1 and Lemma 2; Zhang & Sennrich 2019 (RMSNorm); Zhu et al. 2025,
  arXiv:2503.10622 (DyT); Chen et al. 2025, arXiv:2512.10938 (Derf); Shazeer 2020 (SwiGLU);
  Su et al. 2021 (RoPE); Touvron et al. 2023 (LLaMA's block).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")

from normtheory import cli, fit, plot, schema, theory  # noqa: E402

COMMON = ["--arch", "post,pre", "--loss", "xent", "--vocab", "256", "--n", "16"]
F64 = ["--dtype", "float64"]  # the pointwise norms' Post-LN gradients underflow float32 by L = 96
GAMMA_MAX = 1.5  # the forest's γ axis; Post with DyT/Derf decays geometrically (γ far beyond) and is an arrow
SETTINGS: dict[str, list[str]] = {
    "layernorm-relu": [],  # the 2020 encoder block (Theorem 1's, with the xent read-out)
    "layernorm-swiglu": ["--ffn", "swiglu"],
    "rmsnorm-relu": ["--norm", "rmsnorm"],
    "rmsnorm-swiglu": ["--norm", "rmsnorm", "--ffn", "swiglu"],
    "dyt-relu": ["--norm", "dyt", *F64],
    "dyt-swiglu": ["--norm", "dyt", "--ffn", "swiglu", *F64],
    "derf-relu": ["--norm", "derf", *F64],
    "derf-swiglu": ["--norm", "derf", "--ffn", "swiglu", *F64],
    "causal": ["--causal"],  # the 2020 block with the causal mask (uniform attention: weights 1/i)
    "llama": ["--preset", "llama"],  # RMSNorm, SwiGLU, causal, RoPE, Xavier attention, text
    "dyt": ["--preset", "dyt", *F64],  # the same with DyT
}


def command(setting: str, out: pathlib.Path, args: argparse.Namespace) -> list[str]:
  """The grad_scaling.py arguments of one setting."""
  grid = ["--d", args.d, "--L", args.L, "--seeds", str(args.seeds), "--n-boot", str(args.n_boot)]
  return [*COMMON, *grid, *SETTINGS[setting], "--out", str(out / setting), *(["--quiet"] if args.quiet else [])]


def summary(setting: str, store: pathlib.Path, fits: dict) -> list[str]:
  """Lines for one setting: power-law γ and α and the bound verdict per arch, the Post/Pre ratio at the
  deepest L, Pre's q_(L+1) against Lemma 2's band [1 + L/2, 1 + 3L/2] there, mean-field scope."""
  lines = [f"{setting}:"]
  for s in fits["series"]:
    p = s["power_law"]
    text = ", ".join(f"{k} = {fit._fmt(p[k])}" for k in ("gamma", "alpha") if k in p)
    lines.append(f"  {s['arch']}: {text}; {fit.bound_verdict(s)}")
  grad = schema.read_table(store, schema.GRAD_FILE)
  deepest = int(grad["L"].max())
  last = grad[(grad["param"] == "W2") & (grad["layer"] == grad["L"]) & (grad["L"] == deepest)]
  means = last.groupby(["arch", "d"])["grad_norm"].mean()
  if {"post", "pre"} <= set(last["arch"]):
    ratios = "  ".join(f"d={d}: {means['post', d] / means['pre', d]:.3g}" for d in sorted(last["d"].unique()))
    lines.append(f"  Post/Pre ratio at L = {deepest}: {ratios}")
  hidden = schema.read_table(store, schema.HIDDEN_FILE)
  final = hidden[(hidden["arch"] == "pre") & (hidden["layer"] == hidden["L"] + 1) & (hidden["L"] == deepest)]
  if not final.empty:
    q = (final["sq_norm"] / final["d"]).groupby(final["d"]).mean()
    band = theory.pre_sq_norm_bounds(1, deepest)
    qs = "  ".join(f"d={d}: {v:.4g}" for d, v in q.items())
    lines.append(f"  Pre q_(L+1) at L = {deepest} (Lemma 2's band [{band.lower:g}, {band.upper:g}]): {qs}")
  gap = theory.mean_field_gap(grad.iloc[0])
  lines.append("  mean field: " + ("applies" if gap is None else f"does not apply: {gap}"))
  return lines


def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="results/modern", help="one store per setting under this folder")
  p.add_argument("--figures", default="figures/modern", help="folder for the PNG/PDF figures")
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
      print(f"modern_blocks.py: {setting}: grad_scaling.py exited with status {status}", file=sys.stderr)
      return status
  fits_by_setting = []
  for setting in args.settings:
    fits = json.loads((out / setting / schema.FITS_FILE).read_text())
    fits_by_setting.append((setting, fits))
    print("\n".join(summary(setting, out / setting, fits)))
  fig = plot.fig_assumptions(fits_by_setting, gamma_max=GAMMA_MAX)
  plot.save(fig, fig_dir, "fig_modern_blocks", dpi=args.dpi)
  for setting in ("llama", "dyt"):
    if setting in args.settings:
      grad = schema.read_table(out / setting, schema.GRAD_FILE)
      fig = plot.fig_last_layer_vs_depth(grad, dict(fits_by_setting)[setting])
      plot.save(fig, fig_dir, f"fig_last_layer_vs_depth_{setting}", dpi=args.dpi)
  print(f"figures in {fig_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
