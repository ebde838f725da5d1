"""The sweep command line: ``python experiments/grad_scaling.py --d 512 --L 6..96``.

Parses and validates every flag before anything is written (bad input: exit
status 2 and one line on stderr), prints the expanded grid, measures the missing
cells with a progress bar, appends them to the results store, and ends with a
summary table and the fits against Theorem 1 (per series the bound and its tightness,
and the Post/Pre ratio; ``--report full`` prints every fit of ``fits.json`` in words).
With ``--depth-metrics`` every measured cell also gets the effective-depth metrics of its samples
(the store's ``depth_metrics`` table) and the fits add the exponent of ``rel_update ∝ l^-kappa``.
A cell counts as stored once its gradient norms are, so depth metrics are computed
only for cells that a run measures: to add them to a finished grid, use a new --out.

The model flags relax Theorem 1's assumptions one at a time (defaults: the theorem's
idealisation): ``--attention xavier`` (W_Q, W_K drawn, attention no longer uniform),
``--heads H``, ``--inputs text`` (real English bytes through a token embedding, with
next-token cross-entropy: implies ``--loss xent`` and the byte vocabulary 256),
``--tied`` (text: read-out tied to the embedding), ``--batch B`` (B sequences per
sample, the loss their mean). ``--preset paper|realistic`` sets attention, heads and
inputs at once; flags given explicitly win.

The block flags swap the 2020 encoder's parts for today's (defaults: the 2020 block):
``--norm rmsnorm|dyt|derf`` at every norm site (``--alpha0``: DyT's and Derf's initial
alpha), ``--ffn gelu|swiglu``, ``--causal``, ``--positions none|sinusoidal|rope``;
``--preset llama`` (Pre, RMSNorm, SwiGLU, causal, RoPE, Xavier attention, text) and
``--preset dyt`` (the same with DyT) set them at once.
``--weights conditional`` samples every product from its Gaussian conditional law
(exact in law, SPEC §6; never a d×d matrix), so widths of tens of thousands run on a CPU;
a store holds one kind (meta.json setting ``weights``; a store without it is explicit).
A sweep to ``d >= 4096`` that does not choose ``--weights`` first prints one line: what
explicit weights will cost at the sampling rate measured then, and what conditional
weights would; nothing is switched.

A run holds the store's lock (``DIR/.lock``) while it writes, so a second sweep on the
same --out refuses to start. With ``--distributed`` each process measures its share of
the seeds and process 0 merges them (:mod:`normtheory.distributed`).

Exit status: 0 done; 1 some cells failed (the others are stored); 2 bad input, or a
store that cannot be trusted or is locked (one stderr line naming the file; nothing
written); 3 the cluster failed (a process lost, the coordinator unreachable: one
stderr line; the main store unchanged, the same command resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import sys
import time
import traceback
from importlib import metadata
from typing import Any, NamedTuple

import jax
from tqdm import tqdm

from normtheory import distributed, engine, fit, grid, prng, store, sweep
from normtheory.cli_args import ArgumentParser, UsageError, usage_exit
from normtheory.config import (ARCHS, ATTENTIONS, FFNS, INPUTS, LOSSES, NORMS, PLACEMENTS_OF_POINTWISE_NORMS, POSITIONS,
                               PRESETS, TEXT_VOCAB, WEIGHTS, Config, check_conditional, preset)

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "normtheory", "xla")


PROG = "grad_scaling.py"


def build_parser() -> ArgumentParser:
  """The sweep's flags; a bad one raises :class:`normtheory.cli_args.UsageError`."""
  p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  p.add_argument("--d", default="64,128", help="widths: N | A,B | A..B (doubling) | A..B:S | A..B*F")
  p.add_argument("--L", default="6..24", help="depths, same grammar as --d")
  p.add_argument("--arch", default=None, help=f"comma list of {', '.join(ARCHS)} (default: post,pre; a preset's)")
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
  p.add_argument("--norm", default=None,
                 help=f"{' | '.join(NORMS)}: the norm at every norm site, final included (default: layernorm; "
                      f"dyt and derf are built for {' and '.join(PLACEMENTS_OF_POINTWISE_NORMS)})")
  p.add_argument("--alpha0", type=float, default=0.5, help="DyT / Derf: the initial alpha (> 0; default 0.5)")
  p.add_argument("--ffn", default=None,
                 help=f"{' | '.join(FFNS)}: the FFN; swiglu adds W3 and its width defaults to round(2d/3), the "
                      "parameters of the d x d ReLU FFN (default: relu)")
  p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                 help="causal attention mask: position i attends to 1..i (default: off)")
  p.add_argument("--positions", default=None,
                 help=f"{' | '.join(POSITIONS)}: sinusoidal codes added to text embeddings, or RoPE on queries and "
                      "keys (needs --attention xavier) (default: sinusoidal for text, none for Gaussian inputs)")
  p.add_argument("--preset", default=None,
                 help=f"{' | '.join(PRESETS)}: set the model flags at once (realistic = "
                      f"{', '.join(f'{k} {v}' for k, v in PRESETS['realistic'].items())}; llama = "
                      f"{', '.join(f'{k} {v}' for k, v in PRESETS['llama'].items())}; dyt = llama with norm dyt); "
                      "explicit flags win")
  p.add_argument("--weights", default=None,
                 help=f"{' | '.join(WEIGHTS)}: draw every weight in full, or draw each product from its Gaussian "
                      "conditional law (exact in law, O(r d) normals per product instead of d^2; needs batch*n < "
                      "every d and d_ff, no --tied); a store holds one kind (default: explicit)")
  p.add_argument("--seed", type=int, default=0, help="base PRNG seed")
  p.add_argument("--prng", default=prng.DEFAULT_PRNG, help=f"PRNG implementation: {', '.join(prng.PRNG_IMPLS)}")
  p.add_argument("--dtype", default="float32", help="float32 | float64")
  p.add_argument("--chunk", type=int, default=None, help="seeds per compiled call (default: from --max-memory)")
  p.add_argument("--max-memory", default=None,
                 help="the whole process's peak memory, e.g. 2G or 512M: what the process does not hold yet, less "
                      f"{engine.RUNTIME_RESERVE // 2**20}M for compiling, bounds each compiled call, whose seeds and "
                      "kept layers follow from it; too small for one seed: exit 2 before anything runs (default: each "
                      "call a quarter of the free memory, at most "
                      f"{engine.CONDITIONAL_CALL_BYTES / 2**30:g}G under --weights conditional)")
  p.add_argument("--redraw", action="store_true",
                 help="draw every layer's weights again in the backward pass instead of keeping them "
                      "(the slower path before weights were kept; the same numbers)")
  p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the fits")
  p.add_argument("--depth-metrics", action="store_true",
                 help="also store per-layer effective-depth metrics of every measured cell (L+1 forward passes per cell)")
  p.add_argument("--out", default="results/grad_scaling", help="results directory")
  p.add_argument("--report", choices=("short", "full"), default="short",
                 help="verdict text after the table: short (per series the bound and its tightness, the ratio) "
                      "or full (every check and fit; the whole of fits.json in words)")
  p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
  p.add_argument("--compile-cache", default=DEFAULT_CACHE,
                 help="JAX persistent compilation cache directory, so a re-run compiles nothing ('none': off)")
  p.add_argument("--distributed", action="store_true",
                 help="multi-process: each process measures its share of the seeds, process 0 merges; see normtheory.distributed")
  p.add_argument("--coordinator", default=None,
                 help=f"--distributed: HOST:PORT of process 0 (default ${distributed.ENV_COORDINATOR}, else detected)")
  p.add_argument("--num-processes", type=int, default=None,
                 help=f"--distributed: number of processes (default ${distributed.ENV_PROCESSES}, else detected)")
  p.add_argument("--process-id", type=int, default=None,
                 help=f"--distributed: this process's index 0..P-1 (default ${distributed.ENV_PROCESS_ID}, else detected)")
  p.add_argument("--timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S,
                 help="--distributed: seconds to wait for every process to join, and of silence after which a process counts as lost")
  return p


def _choices(flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
  values = [v.strip() for v in text.split(",") if v.strip()]
  bad = [v for v in values if v not in allowed]
  if not values or bad:
    raise UsageError(f"{flag}: unknown {bad[0] if bad else 'empty value'!r}; choose from {', '.join(allowed)}")
  return list(dict.fromkeys(values))


def _at_least(flag: str, value: float | None, minimum: float) -> None:
  if value is not None and value < minimum:
    raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def _model_flags(args: argparse.Namespace, widths: list[int]) -> None:
  """Resolve the relaxation flags in place (explicit flag, else the preset's, else the
  Config default; text inputs default to the xent loss) and check their combinations."""
  if args.preset is not None:
    _choices("--preset", args.preset, tuple(PRESETS))
  chosen = preset(args.preset) if args.preset else {}
  defaults = {f.name: f.default for f in dataclasses.fields(Config)} | {"arch": "post,pre"}
  for name in ("attention", "heads", "inputs", "norm", "ffn", "causal", "positions", "arch"):
    if getattr(args, name) is None:
      setattr(args, name, chosen.get(name, defaults[name]))
  _choices("--attention", args.attention, ATTENTIONS)
  _choices("--inputs", args.inputs, INPUTS)
  _choices("--norm", args.norm, NORMS)
  _choices("--ffn", args.ffn, FFNS)
  if args.positions is not None:
    _choices("--positions", args.positions, POSITIONS)
  if not args.alpha0 > 0:
    raise UsageError(f"--alpha0 must be > 0 (DyT's and Derf's initial alpha), got {args.alpha0:g}")
  bad = [a for a in _choices("--arch", args.arch, ARCHS) if a not in PLACEMENTS_OF_POINTWISE_NORMS]
  if args.norm in ("dyt", "derf") and bad:
    raise UsageError(f"--norm {args.norm} is built for --arch {' and '.join(PLACEMENTS_OF_POINTWISE_NORMS)}; "
                     f"got --arch {bad[0]}")
  if args.positions == "rope" and args.attention != "xavier":
    raise UsageError("--positions rope rotates queries and keys, which are zero under --attention uniform: "
                     "it needs --attention xavier")
  if args.positions == "sinusoidal" and args.inputs != "text":
    raise UsageError("--positions sinusoidal is added to text embeddings: it needs --inputs text")
  _at_least("--heads", args.heads, 1)
  _at_least("--batch", args.batch, 1)
  bad = [d for d in widths if d % args.heads]
  if bad:
    raise UsageError(f"--heads {args.heads} must divide every width; it does not divide --d {bad[0]}")
  odd = [d for d in widths if (d // args.heads) % 2]
  if args.positions == "rope" and odd:
    raise UsageError(f"--positions rope rotates pairs of features: the head width d/heads must be even; "
                     f"it is {odd[0] // args.heads} at --d {odd[0]}")
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
  args.weights_given = args.weights is not None
  args.weights = args.weights or "explicit"
  _choices("--weights", args.weights, WEIGHTS)
  if args.weights == "conditional":
    rows = args.batch * args.n
    for d in widths:
      try:
        check_conditional(rows, min(d, args.d_ff or d), args.tied)
      except ValueError:
        what = ("--tied uses the embedding twice (input and read-out)" if args.tied else
                f"--batch x --n = {rows} rows must be below every width, got --d {d}"
                + (f" / --d-ff {args.d_ff}" if args.d_ff else ""))
        raise UsageError(f"--weights conditional: {what}; use --weights explicit") from None


def base_config(args: argparse.Namespace, axes: dict) -> Config:
  """The Config carrying the flags shared by every cell (arch, loss, d, L come from the grid)."""
  return Config(d=axes["d"][0], loss=axes["loss"][0], n=args.n, d_ff=args.d_ff, eps=args.eps, vocab=args.vocab,
                dtype=args.dtype, batch=args.batch, attention=args.attention, heads=args.heads,
                inputs=args.inputs, tied=args.tied, norm=args.norm, alpha0=args.alpha0, ffn=args.ffn,
                causal=args.causal, positions=args.positions, weights=args.weights,
                conditional_draws=conditional_draws(args))


def conditional_draws(args: argparse.Namespace) -> str:
  """``Config.conditional_draws`` of the run: "shared", except where ``--out`` holds a conditional store
  written before the setting existed (its ``conditional_draws`` null or absent), which resumes with the
  per-architecture draws it was measured with. Raises StoreError if meta.json cannot be read."""
  meta = store.read_meta(args.out) if args.weights == "conditional" else None
  stored = {} if meta is None else meta["settings"]
  legacy = stored.get("weights") == "conditional" and stored.get("conditional_draws") is None
  return "per-arch" if legacy else "shared"


def store_settings(args: argparse.Namespace, base: Config) -> dict[str, Any]:
  """The store-level settings of a run (meta.json "settings"): what every row depends on but no column says."""
  shared = base.weights == "conditional" and base.conditional_draws == "shared"
  return {"dtype": args.dtype, "eps": args.eps, "base_seed": args.seed, "prng": args.prng, "vocab": base.vocab,
          "tied": args.tied, "alpha0": args.alpha0, "weights": args.weights,
          "conditional_draws": "shared" if shared else None}


class Parsed(NamedTuple):
  """A validated command line."""

  args: argparse.Namespace  # the flags
  axes: dict[str, list]  # the expanded grid: "arch", "loss" (names), "d", "L" (integers)


def parse(argv: list[str]) -> Parsed:
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
  args.max_memory = None if args.max_memory is None else parse_bytes(args.max_memory, "--max-memory")
  if args.timeout <= 0:
    raise UsageError(f"--timeout must be > 0, got {args.timeout:g}")
  given = [flag for flag, value in [("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                                    ("--process-id", args.process_id)] if value is not None]
  if given and not args.distributed:
    raise UsageError(f"{given[0]} needs --distributed")
  try:
    args.cluster = distributed.cluster_spec(args.coordinator, args.num_processes, args.process_id) if args.distributed else None
    store.check_writable(args.out)
  except (ValueError, store.StoreError) as e:
    raise UsageError(str(e)) from None
  return Parsed(args, {"arch": archs, "loss": losses, "d": widths, "L": depths})


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str, flag: str) -> int:
  """A size such as ``3G``, ``512M``, ``1.5GiB`` or ``4000000000`` in bytes (K, M, G, T are
  powers of 1024; a trailing ``B`` or ``iB`` is allowed); :class:`UsageError` naming ``flag``
  unless it is a positive size."""
  match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", text.upper())
  size = float(match[1]) * _UNITS[match[2]] if match else 0.0
  if not size >= 1:
    raise UsageError(f"{flag}: expected a positive size such as 3G, 512M or a number of bytes; got {text!r}")
  return int(size)


def enable_compile_cache(directory: str | os.PathLike = DEFAULT_CACHE) -> None:
  """Keep every JAX compilation that takes 0.5 s or more in ``directory`` (JAX's persistent
  cache, for the rest of the process), so the same program is never compiled twice."""
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run_info(argv: list[str]) -> dict[str, Any]:
  """What meta.json records of one invocation: argv, start time, versions, JAX backend and devices."""
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


def _warn(line: str) -> None:
  tqdm.write(f"{PROG}: {line}", file=sys.stderr)


WIDE = 4096  # from this width on, a sweep that did not choose --weights hears what explicit weights cost


def sampling_rate(size: int = 2**22, repeats: int = 3) -> float:
  """Gaussian normals per second that this process draws (float32, the default PRNG), measured now."""
  draw = jax.jit(lambda key: jax.random.normal(key, (size,)))
  key = prng.make_key(0)
  jax.block_until_ready(draw(key))
  start = time.perf_counter()
  for i in range(repeats):
    jax.block_until_ready(draw(jax.random.fold_in(key, i)))
  return repeats * size / (time.perf_counter() - start)


def weights_cost_line(args, axes, base: Config, rate: float) -> str:
  """The one line a wide explicit sweep prints first: the normals of explicit and of conditional
  weights (:func:`normtheory.engine.normals_drawn`) and their time at ``rate`` normals per second."""
  def normals(kind: str) -> int:
    total = 0
    for loss in axes["loss"]:
      for d in axes["d"]:
        cfg = dataclasses.replace(base, loss=loss, d=d, d_ff=args.d_ff or d, weights="explicit")
        if kind == "conditional":
          cfg = dataclasses.replace(cfg, weights=kind)
        total += engine.normals_drawn(cfg, axes["arch"], axes["L"], args.seeds)
    return total

  explicit = normals("explicit")
  try:
    conditional = normals("conditional")
    other = f"--weights conditional would draw {conditional:.2g} (~{_duration(conditional / rate)})"
  except ValueError as e:  # rows reach a width, or a tied read-out
    other = f"--weights conditional cannot run this grid ({e})"
  return (f"--d {max(axes['d'])} with explicit weights draws {explicit:.2g} normals, ~{_duration(explicit / rate)} "
          f"at the {rate:.2g} normals/s measured now; {other}; nothing is switched (--weights explicit silences this)")


def _duration(seconds: float) -> str:
  for unit, size in (("h", 3600), ("min", 60)):
    if seconds >= size:
      return f"{seconds / size:.2g} {unit}"
  return f"{seconds:.2g} s"


def main(argv: list[str] | None = None) -> int:
  """Run the sweep; returns the exit status (0 ok, 1 some cells failed, 2 bad input or store, 3 cluster failed)."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    args, axes = parse(argv)
    base = base_config(args, axes)
    settings = store_settings(args, base)
    store.ResultsStore(args.out, settings)  # refuse a store that cannot be trusted before anything starts
  except (UsageError, store.StoreError, ValueError) as e:
    return usage_exit(PROG, e)
  if args.compile_cache != "none":
    enable_compile_cache(args.compile_cache)
  if not args.weights_given and max(axes["d"]) >= WIDE:
    _warn(weights_cost_line(args, axes, base, sampling_rate()))
  if args.distributed and not distributed.supervised():
    spec = args.cluster
    who = "this process" if spec.process_id is None else f"process {spec.process_id}"
    return distributed.supervise(argv, PROG, who, _resume_hint(args.out))
  if args.distributed:
    distributed.follow_supervisor()
    return _main_distributed(args, axes, argv, settings, base)
  lock = store.StoreLock(args.out)
  try:
    lock.acquire()
    main_store = store.ResultsStore(args.out, settings)  # again, now that no other sweep writes it
  except store.StoreError as e:
    lock.release()
    return usage_exit(PROG, e)
  parts = os.path.join(args.out, "parts")
  if os.path.isdir(parts) and not args.quiet:
    _warn(f"{parts} holds rows of an unfinished --distributed run; this run neither uses nor merges them"
          " (the --distributed command merges them when it is run again)")
  try:
    failures = _measure(args, axes, argv, base, main_store, main_store, {}, leader=True)
    _report(args, axes, main_store)
  except UsageError as e:  # found once the grid is planned, before anything is measured or written
    return usage_exit(PROG, e)
  finally:
    lock.release()
  return _failed(failures)


def _main_distributed(args, axes, argv, settings, base) -> int:
  """One process of a --distributed sweep (:mod:`normtheory.distributed`)."""
  try:
    cluster = distributed.initialize(args.cluster, args.timeout, PROG)
  except ValueError as e:
    return usage_exit(PROG, e)
  part = distributed.part_dir(args.out)
  cluster.hint = _resume_hint(args.out)
  cluster.start()
  locks = []
  try:
    for directory in ([args.out] if cluster.leader else []) + [part]:
      locks.insert(0, store.StoreLock(directory).acquire())
      cluster.cleanups = [lock.release for lock in locks]
    main_store = store.ResultsStore(args.out, settings)
    part_store = store.ResultsStore(part, settings)
    info = {"process_index": cluster.index, "process_count": cluster.count, "coordinator": cluster.coordinator}
    failures = _measure(args, axes, argv, base, main_store, part_store, info, leader=cluster.leader)
    cluster.done(len(failures))
    if not cluster.leader:
      cluster.wait_merged()
      locks[0].release()
      cluster.close()
      return _failed(failures)
    failed = cluster.wait_all_done()
    main_store = distributed.merge_parts(args.out, settings)
    cluster.announce_merged()
    locks[0].release()
    cluster.close()
    distributed.remove_empty_parts(args.out)
    _report(args, axes, main_store)
    locks[1].release()
    for process, count in failed.items():
      if count and process != cluster.index:
        _warn(f"process {process}: {count} passes failed (its output says which cells)")
    return max(_failed(failures), int(any(failed.values())))
  except (store.StoreError, UsageError) as e:
    cluster.abort(2, str(e))
  except KeyboardInterrupt:
    cluster.abort(130, "interrupted")
  except BaseException as e:  # noqa: BLE001 - reported to every process, with the traceback here
    traceback.print_exc()
    cluster.abort(1, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")


def _resume_hint(out) -> str:
  return (f"rows measured so far stay in {os.path.join(out, 'parts')} until process 0 merges them into {out}: "
          "run the same command on every process to resume")


def _failed(failures: list) -> int:
  for f in failures:
    _warn(f"{len(f.cells)} cells not stored: {f.error.splitlines()[0]}")
  return 1 if failures else 0


def _measure(args, axes, argv, base, main_store, results, info: dict, leader: bool) -> list:
  """Measure this process's missing (cell, seed) pairs into ``results``; returns the failed passes.

  Args:
    main_store: the store the sweep completes (what it already holds is not measured).
    results: where the measured rows go (``main_store``, or this process's part).
    info: added to the run's meta.json entry (the process's place in the cluster).
    leader: whether this process prints.
  """
  say = (lambda *a: None) if args.quiet or not leader else print
  say("grid: " + "  ".join(f"{k}={','.join(map(str, v))}" for k, v in axes.items())
      + f"  seeds={args.seeds}  n={args.n}  batch={args.batch}  attention={args.attention}  heads={args.heads}"
      + f"  inputs={args.inputs}"
      + ("  tied" if args.tied else "")
      + f"  norm={args.norm}  ffn={args.ffn}  positions={args.positions or 'default'}"
      + ("  causal" if args.causal else "") + ("  weights=conditional" if args.weights == "conditional" else ""))
  stored = main_store.stored_seeds()
  if results is not main_store:
    for cell, cell_seeds in results.stored_seeds().items():
      stored[cell] = stored.get(cell, set()) | cell_seeds
  passes, complete = sweep.plan(base, axes["arch"], axes["loss"], axes["d"], axes["L"], distributed.my_seeds(args.seeds),
                                stored, d_ff=args.d_ff)
  total = len(axes["arch"]) * len(axes["loss"]) * len(axes["d"]) * len(axes["L"])
  say(f"{total} cells: {complete} already stored in {args.out}, {total - complete} to measure")
  if args.max_memory is None:
    call_bytes, memory = engine.default_max_memory(args.weights), {"memory_budget": "call"}
  else:  # the whole process's: what it holds before compiling anything, and the compiler's reserve, are not the calls'
    programs = max((engine.program_bytes(p.base, p.archs, p.depths) for p in passes), default=0)  # one width's at a time
    call_bytes, memory = engine.call_budget(args.max_memory, programs), {"memory_budget": "process"}
    if passes and (lacking := sweep.memory_shortfall(passes, call_bytes)):
      raise UsageError(f"--max-memory {args.max_memory / 2**30:.3g} GiB is too small: this process holds "
                       f"{engine.resident_bytes() / 2**30:.3g} GiB and keeps "
                       f"{(engine.RUNTIME_RESERVE + programs) / 2**30:.3g} GiB for compiling, and one seed per device "
                       f"of this grid needs {lacking / 2**30:.3g} GiB "
                       f"more: give at least {(args.max_memory + lacking) / 2**30:.3g} GiB")
  start = time.perf_counter()
  failures = []
  if passes:
    memory |= {"max_memory": args.max_memory or call_bytes, "call_memory": call_bytes}
    results.start_run(run_info(argv) | info | {"chunk": args.chunk, "redraw": args.redraw} | memory)
    with tqdm(total=total, initial=complete, unit="cell", disable=args.quiet or not leader) as bar:
      key = prng.make_key(args.seed, args.prng)
      failures = sweep.run(passes, results, key, args.chunk, bar.update, depth=args.depth_metrics, warn=_warn,
                           max_memory=call_bytes, redraw=args.redraw)
  say(f"measured in {time.perf_counter() - start:.1f} s")
  return failures


def _report(args, axes, main_store) -> None:
  """The summary table of the grid and the fits of the whole store (fits.json), as process 0 prints them."""
  say = (lambda *a: None) if args.quiet else print
  if not args.quiet:
    wanted = {(a, lo, d) for a in axes["arch"] for lo in axes["loss"] for d in axes["d"]}
    table = sweep.summary_table(main_store.read(where=store.last_layer("W2")))
    table = table[[idx[:3] in wanted for idx in table.index]]
    say("last-layer ||dL/dW2||, mean ± std over seeds:")
    say(table[[L for L in axes["L"] if L in table.columns]].to_string())
  if main_store.stored_seeds():
    fits = fit.write_fits(args.out, n_boot=args.n_boot)
    say(fit.report(fits) if args.report == "full" else fit.short_report(fits))


if __name__ == "__main__":  # the child of distributed.supervise
  sys.exit(main())
