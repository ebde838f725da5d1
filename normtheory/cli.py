"""The sweep command line: ``python experiments/grad_scaling.py --d 512 --L 6..96``.

Parses and validates every flag before anything is written (bad input: exit
status 2 and one line on stderr), prints the expanded grid, measures the missing
cells with a progress bar, appends them to the results store, and ends with a
summary table and the fits against Theorem 1. With ``--depth-metrics`` every
measured cell also gets the effective-depth metrics of its samples
(``depth_metrics.csv``) and the fits add the exponent of ``rel_update ∝ l^-kappa``.
A cell counts as stored once its gradient norms are, so depth metrics are computed
only for cells that a run measures: to add them to a finished grid, use a new --out.

The model flags relax Theorem 1's assumptions one at a time (defaults: the theorem's
idealisation): ``--attention xavier`` (W_Q, W_K drawn, attention no longer uniform),
``--heads H``, ``--inputs text`` (real English bytes through a token embedding, with
next-token cross-entropy: implies ``--loss xent`` and the byte vocabulary 256),
``--tied`` (text: read-out tied to the embedding), ``--batch B`` (B sequences per
sample, the loss their mean). ``--preset paper|realistic`` sets attention, heads and
inputs at once; flags given explicitly win.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from importlib import metadata

import jax
from tqdm import tqdm

from normtheory import distributed, fit, grid, prng, store, sweep
from normtheory.config import ARCHS, ATTENTIONS, DEFAULT_VOCAB, INPUTS, LOSSES, PRESETS, TEXT_VOCAB, Config, preset

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "normtheory", "xla")


class UsageError(ValueError):
  """A bad command line; its message is printed as the one stderr line."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="grad_scaling.py", description=__doc__.splitlines()[0])
  p.add_argument("--d", default="64,128", help="widths: N | A,B | A..B (doubling) | A..B:S | A..B*F")
  p.add_argument("--L", default="6..24", help="depths, same grammar as --d")
  p.add_argument("--arch", default="post,pre", help=f"comma list of {', '.join(ARCHS)}")
  p.add_argument("--loss", default=None,
                 help=f"comma list of {', '.join(LOSSES)} (default: linear; xent with --inputs text)")
  p.add_argument("--seeds", type=int, default=8, help="samples per cell (seeds 0..seeds-1)")
  p.add_argument("--n", type=int, default=16, help="sequence length")
  p.add_argument("--d-ff", type=int, default=None, help="FFN width (default: d)")
  p.add_argument("--eps", type=float, default=1e-6, help="LayerNorm epsilon")
  p.add_argument("--vocab", type=int, default=None,
                 help=f"vocabulary of the xent loss (default: 1000; text inputs: {TEXT_VOCAB} bytes, the only value)")
  p.add_argument("--batch", type=int, default=1,
                 help="sequences per sample sharing its weights; the loss and its gradient are their mean")
  p.add_argument("--attention", default=None,
                 help=f"{' | '.join(ATTENTIONS)}: W_Q = W_K = 0 (Theorem 1) or drawn Xavier-Gaussian "
                      "(default: uniform)")
  p.add_argument("--heads", type=int, default=None,
                 help="attention heads of width d/heads; must divide every d (default: 1)")
  p.add_argument("--inputs", default=None,
                 help=f"{' | '.join(INPUTS)}: i.i.d. N(0, I) rows (Theorem 1) or bytes of Python's language "
                      "reference through a token embedding; text implies --loss xent (default: gaussian)")
  p.add_argument("--tied", action="store_true", help="text inputs: the read-out reuses the token embedding")
  p.add_argument("--preset", default=None,
                 help=f"{' | '.join(PRESETS)}: set --attention, --heads, --inputs at once (realistic = "
                      f"{', '.join(f'{k} {v}' for k, v in PRESETS['realistic'].items())}); explicit flags win")
  p.add_argument("--seed", type=int, default=0, help="base PRNG seed")
  p.add_argument("--prng", default=prng.DEFAULT_PRNG, help=f"PRNG implementation: {', '.join(prng.PRNG_IMPLS)}")
  p.add_argument("--dtype", default="float32", help="float32 | float64")
  p.add_argument("--chunk", type=int, default=None, help="seeds per compiled call (default: from free memory)")
  p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the fits")
  p.add_argument("--depth-metrics", action="store_true",
                 help="also store per-layer effective-depth metrics of every measured cell (L+1 forward passes per cell)")
  p.add_argument("--out", default="results/grad_scaling", help="results directory")
  p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
  p.add_argument("--compile-cache", default=DEFAULT_CACHE,
                 help="JAX persistent compilation cache directory, so a re-run compiles nothing ('none': off)")
  p.add_argument("--distributed", action="store_true",
                 help="multi-host: jax.distributed.initialize() from the environment; see normtheory.distributed")
  return p


def _choices(flag: str, text: str, allowed) -> list[str]:
  values = [v.strip() for v in text.split(",") if v.strip()]
  bad = [v for v in values if v not in allowed]
  if not values or bad:
    raise UsageError(f"{flag}: unknown {bad[0] if bad else 'empty value'!r}; choose from {', '.join(allowed)}")
  return list(dict.fromkeys(values))


def _at_least(flag: str, value, minimum) -> None:
  if value is not None and value < minimum:
    raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def _model_flags(args: argparse.Namespace, widths: list[int]) -> None:
  """Resolve the relaxation flags in place (explicit flag, else the preset's, else the
  Config default; text inputs default to the xent loss) and check their combinations."""
  if args.preset is not None:
    _choices("--preset", args.preset, tuple(PRESETS))
  chosen = preset(args.preset) if args.preset else {}
  defaults = {f.name: f.default for f in dataclasses.fields(Config)}
  for name in ("attention", "heads", "inputs"):
    if getattr(args, name) is None:
      setattr(args, name, chosen.get(name, defaults[name]))
  _choices("--attention", args.attention, ATTENTIONS)
  _choices("--inputs", args.inputs, INPUTS)
  _at_least("--heads", args.heads, 1)
  _at_least("--batch", args.batch, 1)
  bad = [d for d in widths if d % args.heads]
  if bad:
    raise UsageError(f"--heads {args.heads} must divide every width; it does not divide --d {bad[0]}")
  text = args.inputs == "text"
  if args.tied and not text:
    raise UsageError("--tied needs --inputs text (it ties the read-out to the token embedding)")
  if args.loss is None:
    args.loss = "xent" if text else "linear"
  if text and args.loss != "xent":
    raise UsageError(f"--inputs text is read out by next-token cross-entropy: needs --loss xent, got {args.loss}")
  if text and args.vocab not in (None, TEXT_VOCAB):
    raise UsageError(f"--inputs text uses the byte vocabulary: --vocab must be {TEXT_VOCAB} or left out, "
                     f"got {args.vocab}")


def base_config(args: argparse.Namespace, axes: dict) -> Config:
  """The Config carrying the flags shared by every cell (arch, loss, d, L come from the grid)."""
  return Config(d=axes["d"][0], loss=axes["loss"][0], n=args.n, d_ff=args.d_ff, eps=args.eps, vocab=args.vocab,
                dtype=args.dtype, batch=args.batch, attention=args.attention, heads=args.heads,
                inputs=args.inputs, tied=args.tied)


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict]:
  """Parse and validate ``argv``; returns the namespace and the expanded grid."""
  args = build_parser().parse_args(argv)
  try:
    widths = grid.parse_grid(args.d, "--d", minimum=2)
    depths = grid.parse_grid(args.L, "--L", minimum=1)
  except ValueError as e:
    raise UsageError(str(e)) from None
  _model_flags(args, widths)
  archs = _choices("--arch", args.arch, ARCHS)
  losses = _choices("--loss", args.loss, LOSSES)
  _choices("--prng", args.prng, prng.PRNG_IMPLS)
  _choices("--dtype", args.dtype, ("float32", "float64"))
  for flag, value, minimum in [("--seeds", args.seeds, 1), ("--n", args.n, 1), ("--d-ff", args.d_ff, 1),
                               ("--chunk", args.chunk, 1), ("--vocab", args.vocab, 2), ("--n-boot", args.n_boot, 1),
                               ("--eps", args.eps, 0), ("--seed", args.seed, 0)]:
    _at_least(flag, value, minimum)
  try:
    store.check_writable(args.out)
  except store.StoreError as e:
    raise UsageError(str(e)) from None
  return args, {"arch": archs, "loss": losses, "d": widths, "L": depths}


def default_chunk(args, grid_axes) -> int:
  """Seeds per call so that one call's buffers use at most a quarter of the free memory."""
  try:
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):
    return args.seeds
  d, L = max(grid_axes["d"]), max(grid_axes["L"])
  d_ff = args.d_ff or d
  itemsize = 8 if args.dtype == "float64" else 4
  text = args.inputs == "text"
  vocab = args.vocab or (TEXT_VOCAB if text else DEFAULT_VOCAB)
  vocab_rows = vocab * (2 + len(grid_axes["L"]) if text else 1)  # W_emb; text: E and one E gradient per depth
  per_seed = itemsize * (8 * d * max(d, d_ff) + 4 * (L + 2) * args.batch * args.n * d + vocab_rows * d)
  return max(1, min(args.seeds, int(free // 4 // per_seed)))


def run_info(argv: list[str]) -> dict:
  device = jax.devices()[0]
  return {
      "argv": argv,
      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "python": platform.python_version(),
      "versions": {pkg: metadata.version(pkg) for pkg in ("normtheory", "jax", "jaxlib", "flax", "numpy", "pandas")},
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
  }


def main(argv: list[str] | None = None) -> int:
  """Run the sweep; returns the exit status (0 ok, 1 some cells failed, 2 bad input)."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    args, axes = parse(argv)
    base = base_config(args, axes)
    settings = {"dtype": args.dtype, "eps": args.eps, "base_seed": args.seed, "prng": args.prng, "vocab": base.vocab,
                "tied": args.tied}
    main_store = store.ResultsStore(args.out, settings)
  except (UsageError, store.StoreError, ValueError) as e:
    print(f"grad_scaling.py: error: {e}", file=sys.stderr)
    return 2
  if args.compile_cache != "none":
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if args.distributed:
    distributed.initialize()
  leader = jax.process_index() == 0
  say = (lambda *a: None) if args.quiet or not leader else print
  warn = lambda line: tqdm.write(f"grad_scaling.py: {line}", file=sys.stderr)
  say("grid: " + "  ".join(f"{k}={','.join(map(str, v))}" for k, v in axes.items())
      + f"  seeds={args.seeds}  n={args.n}  batch={args.batch}  attention={args.attention}  heads={args.heads}"
      + f"  inputs={args.inputs}"
      + ("  tied" if args.tied else ""))
  seeds = distributed.my_seeds(args.seeds)
  results = store.ResultsStore(distributed.part_dir(args.out), settings) if args.distributed else main_store
  stored = main_store.stored_seeds()
  for cell, cell_seeds in results.stored_seeds().items():
    stored[cell] = stored.get(cell, set()) | cell_seeds
  passes, complete = sweep.plan(base, axes["arch"], axes["loss"], axes["d"], axes["L"], seeds, stored)
  total = len(axes["arch"]) * len(axes["loss"]) * len(axes["d"]) * len(axes["L"])
  say(f"{total} cells: {complete} already stored in {args.out}, {total - complete} to measure")
  chunk = args.chunk or default_chunk(args, axes)
  key = prng.make_key(args.seed, args.prng)
  start = time.perf_counter()
  failures = []
  if passes:
    results.start_run(run_info(argv) | {"chunk": chunk})
    with tqdm(total=total, initial=complete, unit="cell", disable=args.quiet or not leader) as bar:
      failures = sweep.run(passes, results, key, chunk, bar.update, depth=args.depth_metrics, warn=warn)
  if args.distributed:
    distributed.barrier("normtheory-sweep-measured")
    if not leader:
      return 1 if failures else 0
    main_store = distributed.merge_parts(args.out, settings)
  say(f"measured in {time.perf_counter() - start:.1f} s")
  if not args.quiet:
    wanted = {(a, lo, d) for a in axes["arch"] for lo in axes["loss"] for d in axes["d"]}
    table = sweep.summary_table(main_store.grad)
    table = table[[idx[:3] in wanted for idx in table.index]]
    say("last-layer ||dL/dW2||, mean ± std over seeds:")
    say(table[[L for L in axes["L"] if L in table.columns]].to_string())
  if not main_store.grad.empty:
    fits = fit.write_fits(args.out, n_boot=args.n_boot)
    say(fit.report(fits))
  if failures:
    for f in failures:
      warn(f"{len(f.cells)} cells not stored: {f.error.splitlines()[0]}")
    return 1
  return 0
