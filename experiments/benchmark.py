"""Benchmark the sweep engine against its own floor, the path before weights were kept, and jax.grad.

  python experiments/benchmark.py                 # d=512, L=6..96, 8 seeds (the README's table with --big)
  python experiments/benchmark.py --big           # also d=1024
  python experiments/benchmark.py --seeds 8,64    # each seed count in turn
  python experiments/benchmark.py --devices 2     # also the engine with seeds over 2 devices (CPU: forced host devices)
  python experiments/benchmark.py --no-assumptions  # without the paper/realistic pair of rows
  python experiments/benchmark.py --store /tmp/bench  # the results store instead (see below)

Post-LN and Pre-LN, linear loss, n = 16, float32, threefry2x32. Each row runs in a fresh
child process (so its peak RSS and its compilations are its own, with no persistent
compilation cache), one after another on this machine:

* ``engine, redraw``: the engine drawing every layer's weights again in the backward
  pass (``--redraw``; the path before weights were kept);
* ``engine, kept``: the engine keeping the drawn weights for the backward pass within
  ``--max-memory`` (the plan column: seeds per call x layers kept);
* ``straightforward``: ``jax.jit(jax.vmap(jax.grad))`` of the NNX model, one call per
  cell, on the shallower ``--baseline-L`` grid (it holds every d×d gradient at once);
* ``paper`` / ``realistic``: the engine on ``experiments/assumptions.py``'s two ends
  (xent over 256 tokens; realistic: Xavier attention, 8 heads, text);
* ``conditional``: the engine with conditional weights (``--weights conditional``,
  exact in law: each product's Gaussian conditional draws, never a d×d matrix), on the
  same grid; ``--conditional-d`` adds wider widths that explicit weights cannot reach.

Engine rows run the sweep twice in their process: *cold* (compiling every step; the
compile column is the time JAX spent tracing, lowering and compiling, from
``jax.monitoring``) and *warm* (every step already compiled: run time only). The
kept-weights row also measures, in the same process, the sweep's **floor**: (a) drawing
its distinct weights and nothing else (:func:`normtheory.engine.draw_weights`: the same
PRNG, shapes, passes and chunks) and (b) its dense products at the matmul peak measured
there (:func:`floor_flops` FLOPs over a 2048² float32 product's rate); ``warm / floor``
is the warm sweep over (a) + (b). The conditional row's floor is its own: (a) the normals
it draws (:func:`normtheory.engine.normals_drawn`) at the rate measured in its process for
draws of its shapes, (b) its products (:func:`conditional_floor_flops`) at the matmul peak.

``--store DIR`` benchmarks the results store instead (:func:`store_benchmark`): it writes a
synthetic store shaped like ``--d 512 --L 6..6144 --seeds 64`` (post and pre: 9.4 M
grad-norm, 1.6 M hidden-norm, 3.1 M LN-Jacobian rows; values drawn at random, one
seed chunk per part, as a sweep at that size stores them) through the store's own
writer, and one of twice its rows (128 seeds), then times in fresh child processes
(wall time and peak RSS from ``/usr/bin/time``): ``nt.load``; listing the stored
(cell, seed) pairs; appending one pass (one more width, one seed: 0.15 M grad rows)
beside writing the same rows into an empty store; the sweep CLI's summary, fits and
report on the complete store (nothing left to measure); the size on disk beside the
CSV bytes today's layout (``store.export_csv``) takes for the same rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
ARCHS = ("post", "pre")


def floor_flops(cfg, arch_names, depths, seeds: int) -> float:
  """FLOPs of the dense products an exact sweep cannot avoid, nothing recomputed.

  Per seed, every shared pass (:func:`normtheory.engine.passes_for`) runs each layer
  of its deepest model forward once per architecture, and each depth L runs its L
  layers backward: the input cotangents (as many FLOPs as the forward products) and
  each weight's gradient norm, by the cheaper of the Gram matrices (``2 r² (i + o)``
  for r rows) and the product ``a^T delta`` (``2 r i o``). Attention's score and mixing
  products count ``4 r n d`` forward and twice that backward. The six weight products
  are counted even where W_Q = W_K = 0 (the model multiplies by them).

  Args:
    cfg: the model (arch and L ignored).
    arch_names, depths: the sweep's architectures and depths.
    seeds: samples per cell.
  """
  from normtheory import engine, sampling

  r = cfg.batch * cfg.n
  shapes = sampling.weight_shapes(cfg).values()
  attention = 4 * r * cfg.n * cfg.d
  forward = sum(2 * r * i * o for i, o in shapes) + attention
  backward = forward + attention + sum(min(2 * r * i * o, 2 * r * r * (i + o)) for i, o in shapes)
  per_seed = sum(len(p.archs) * (max(p.depths) * forward + sum(p.depths) * backward)
                 for p in engine.passes_for(arch_names, depths))
  return float(per_seed * seeds)


def conditional_floor_flops(cfg, arch_names, depths, seeds: int) -> float:
  """FLOPs of the products a conditional-weights sweep cannot avoid (SPEC §6), per seed times seeds.

  Per product on r rows of an i×o weight (:func:`normtheory.engine.conditional_products`): forward the QR of ``aᵀ`` (``4 i r²``) and
  ``Rᵀ G_f`` (``2 r² o``); each depth's backward the QR of ``δᵀ`` (``4 o r²``),
  ``Q (G_f δᵀ)`` (``2 r² (o + i)``), ``G_b R_δ`` and its projection (``6 i r²``) and the
  Gram norm (``2 r² (i + o)``); attention as :func:`floor_flops`.
  """
  from normtheory import engine

  products = engine.conditional_products(cfg).values()  # (r, i, o)
  attention = 4 * cfg.batch * cfg.n * cfg.n * cfg.d
  forward = sum(4 * i * r * r + 2 * r * r * o for r, i, o in products) + attention
  backward = attention * 2 + sum(4 * o * r * r + 2 * r * r * (o + i) + 6 * i * r * r + 2 * r * r * (i + o)
                                 for r, i, o in products)
  per_seed = sum(len(p.archs) * (max(p.depths) * forward + sum(p.depths) * backward)
                 for p in engine.passes_for(arch_names, depths))
  return float(per_seed * seeds)


def conditional_sampling_rate(cfg, repeats: int = 20) -> float:
  """Gaussian draws per second for draws of a conditional product's shapes (r × d), keys inside jit."""
  import jax

  from normtheory import prng

  key = prng.make_key(0, prng.DEFAULT_PRNG)
  shape = (cfg.batch * cfg.n, cfg.d)
  f = jax.jit(lambda i: sum(jax.random.normal(jax.random.fold_in(key, 8 * i + k), shape).sum() for k in range(8)))
  f(0).block_until_ready()
  start = time.perf_counter()
  for i in range(repeats):
    f(i + 1).block_until_ready()
  return 8 * shape[0] * shape[1] * repeats / (time.perf_counter() - start)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of a size² float32 matrix product at HIGHEST precision (best of ``repeats``)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  f = jax.jit(lambda x: jnp.dot(x, x, precision=jax.lax.Precision.HIGHEST))
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def sampling_rate(prng_name: str, d: int, repeats: int = 5) -> float:
  """Gaussian draws per second, four d×d matrices per call from keys computed inside jit."""
  import jax

  from normtheory import prng

  key = prng.make_key(0, prng_name)
  f = jax.jit(lambda i: jax.random.normal(jax.random.fold_in(key, i), (4, d, d)).sum())
  f(0).block_until_ready()
  start = time.perf_counter()
  for i in range(repeats):
    f(i + 1).block_until_ready()
  return 4 * d * d * repeats / (time.perf_counter() - start)


def _child(row: dict, queue) -> None:
  """Measure one row in this (fresh) process; puts the row's numbers on ``queue``."""
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as normtheory sets it, before jax loads numpy
  if row["devices"] > 1:  # only the host (CPU) platform reads this flag; accelerators keep their devices
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={row['devices']}"
  import jax
  import numpy as np

  from normtheory import engine, prng, reference
  from normtheory.config import Config, preset

  compile_s = [0.0]
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **_: compile_s.__setitem__(0, compile_s[0] + duration) if event in COMPILE_EVENTS else None)
  key = prng.make_key(0, prng.DEFAULT_PRNG)
  seeds_S = np.arange(row["seeds"])
  if row["setting"] == "default":
    cfg = Config(d=row["d"])
  else:  # the settings of experiments/assumptions.py: xent over 256 tokens
    cfg = Config(d=row["d"], loss="xent", vocab=256, **preset(row["setting"]))
  if row["path"] == "conditional":
    cfg = dataclasses.replace(cfg, weights="conditional")
  out = {"devices": jax.device_count(), "device": jax.devices()[0].device_kind}

  if row["path"] == "straightforward":
    def sweep():
      for arch in ARCHS:
        for L in row["depths"]:
          reference.measure(dataclasses.replace(cfg, arch=arch, L=L), seeds_S, key)
  else:
    memory = {"max_memory": row["max_memory"], "redraw": row["path"] == "redraw"}
    plans = engine.plan_passes(cfg, ARCHS, row["depths"], row["seeds"], **memory)
    out["plan"] = ", ".join(f"{plan.chunk} x {'redraw' if plan.kept_layers is None else plan.kept_layers}"
                            for _, plan in plans)

    def sweep():
      engine.measure_archs(cfg, ARCHS, row["depths"], seeds_S, key, **memory)

  start = time.perf_counter()
  sweep()
  out["cold_s"], out["compile_s"] = time.perf_counter() - start, compile_s[0]
  if row["warm"]:
    start = time.perf_counter()
    sweep()
    out["warm_s"] = time.perf_counter() - start
  if row["floor"] and row["path"] == "conditional":
    out["normals"] = engine.normals_drawn(cfg, ARCHS, row["depths"], row["seeds"])
    out["draw_s"] = out["normals"] / conditional_sampling_rate(cfg)
    out["peak_gflops"] = matmul_peak_gflops()
    out["matmul_s"] = conditional_floor_flops(cfg, ARCHS, row["depths"], row["seeds"]) / out["peak_gflops"] / 1e9
  elif row["floor"]:
    draw = lambda: engine.draw_weights(cfg, ARCHS, row["depths"], seeds_S, key, max_memory=row["max_memory"])
    draw()  # compiles the draw step
    start = time.perf_counter()
    out["normals"] = draw()
    out["draw_s"] = time.perf_counter() - start
    out["peak_gflops"] = matmul_peak_gflops()
    out["matmul_s"] = floor_flops(cfg, ARCHS, row["depths"], row["seeds"]) / out["peak_gflops"] / 1e9
  out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  queue.put(out)


def run_row(row: dict) -> dict:
  """Run one row in a fresh child process; returns the row with its measurements."""
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  proc = ctx.Process(target=_child, args=(row, queue))
  proc.start()
  result = queue.get()
  proc.join()
  return row | result


def _parse_size(text: str) -> int:
  from normtheory.cli import parse_bytes

  return parse_bytes(text, "--max-memory")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--seeds", default="8", help="comma list of seed counts, each measured in turn")
  parser.add_argument("--L", default="6,12,24,48,96", help="depths of the engine's grid")
  parser.add_argument("--baseline-L", default="6,12,24", help="depths of the straightforward path ('none': skip it)")
  parser.add_argument("--big", action="store_true", help="also d=1024 (redraw and kept)")
  parser.add_argument("--devices", type=int, default=1,
                      help="also the kept-weights engine with seeds sharded over this many devices "
                           "(on CPU: forced host devices)")
  parser.add_argument("--max-memory", default="1.5G", type=_parse_size,
                      help="memory budget of one engine call (the CLI's --max-memory)")
  parser.add_argument("--no-assumptions", action="store_true",
                      help="skip the paper vs realistic rows (xent over 256 tokens)")
  parser.add_argument("--conditional-d", default="",
                      help="comma list of further widths for the conditional-weights row alone (e.g. 4096,16384)")
  parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
  parser.add_argument("--store", default=None, metavar="DIR",
                      help="benchmark the results store instead, writing its synthetic stores under DIR")
  args = parser.parse_args()
  if args.store is not None:
    rows = store_benchmark(args.store)
    _print_store_tables(rows)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return 0
  full_L = [int(v) for v in args.L.split(",")]
  base_L = [] if args.baseline_L == "none" else [int(v) for v in args.baseline_L.split(",")]
  seed_counts = [int(v) for v in args.seeds.split(",")]

  import jax

  from normtheory import prng

  row = lambda path, d, depths, seeds, **kw: {"path": path, "d": d, "depths": depths, "seeds": seeds, "devices": 1,
                                             "setting": "default", "max_memory": args.max_memory, "warm": True,
                                             "floor": False} | kw
  rows = []
  for seeds in seed_counts:
    for d in [args.d] + ([1024] if args.big else []):
      rows += [row("redraw", d, full_L, seeds), row("kept", d, full_L, seeds, floor=True),
               row("conditional", d, full_L, seeds, floor=True)]
    rows += [row("conditional", int(d), full_L, seeds, floor=True) for d in args.conditional_d.split(",") if d]
    if args.devices > 1:
      rows.append(row("kept", args.d, full_L, seeds, devices=args.devices))
  if base_L:
    rows += [row("straightforward", args.d, base_L, seed_counts[0], warm=False),
             row("kept", args.d, base_L, seed_counts[0])]
  if not args.no_assumptions:
    rows += [row("kept", args.d, full_L, seed_counts[0], setting=s, warm=False) for s in ("paper", "realistic")]
  rates = {name: sampling_rate(name, args.d) for name in prng.PRNG_IMPLS}
  done = []
  for r in rows:
    done.append(run_row(r))
    print(f"  done: {r['path']} {r['setting']} d={r['d']} L={r['depths']} seeds={r['seeds']} "
          f"devices={r['devices']}: cold {done[-1]['cold_s']:.1f} s", file=sys.stderr, flush=True)
  _print_tables(done, rates, args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"sampling_rates": rates, "rows": done}, f, indent=1)
  return 0


# ------------------------------------------------------------------------- the results store (--store)

STORE_GRID = ["--d", "512", "--L", "6..6144", "--seeds", "64"]


def _synthetic_cell(cfg, seeds_S, rng):
  """A :class:`normtheory.GradNorms` of ``cfg`` with every quantity drawn at random (its shapes, not its values)."""
  import numpy as np

  from normtheory import architectures
  from normtheory.config import reported_params
  from normtheory.measure import GradNorms

  S, L = len(seeds_S), cfg.L
  final = 1 if architectures.get(cfg.arch).final_ln else 0
  grads = {name: rng.lognormal(size=(S, L)) for name in reported_params(cfg)}
  return GradNorms(cfg, np.asarray(seeds_S), grads, rng.lognormal(size=(S, L + 1)), rng.lognormal(size=(S, L, 2)),
                   rng.lognormal(size=(S, final)), rng.lognormal(size=S))


def synthetic_chunks(argv: list[str], seeds_per_chunk: int = 1):
  """The store settings of a sweep ``argv`` and, lazily, its chunks: one list of cells (random values) per
  seed chunk of each pass, as the sweep would store them."""
  import dataclasses
  import tempfile

  import numpy as np

  from normtheory import cli, sweep

  args, axes = cli.parse([*argv, "--out", tempfile.gettempdir()])  # --out is checked, not written
  base = cli.base_config(args, axes)
  passes, _ = sweep.plan(base, axes["arch"], axes["loss"], axes["d"], axes["L"], range(args.seeds), {}, d_ff=args.d_ff)
  rng = np.random.default_rng(0)

  def chunks():
    for p in passes:
      for first in range(0, len(p.seeds), seeds_per_chunk):
        seeds = p.seeds[first : first + seeds_per_chunk]
        yield [_synthetic_cell(dataclasses.replace(p.base, arch=a, L=L), seeds, rng) for a, L in sorted(p.cells)]

  return cli.store_settings(args, base), chunks()


def synthetic_store(out: str, argv: list[str], seeds_per_chunk: int = 1) -> dict:
  """Write the store a sweep ``argv`` would write (its cells, settings and seed chunks), values at random.

  Every chunk goes through :meth:`normtheory.store.ResultsStore.append`, the sweep's writer.

  Returns:
    ``{"rows": {table: rows}, "write_s": seconds}`` (the time includes drawing the values).
  """
  from normtheory import store

  settings, chunks = synthetic_chunks(argv, seeds_per_chunk)
  results, rows, start = store.ResultsStore(out, settings), {}, time.perf_counter()
  for cells in chunks:
    results.append(cells, 0.0)
    for cell in cells:
      for table, frame in cell.tables().items():
        rows[table] = rows.get(table, 0) + len(frame)
  return {"rows": rows, "write_s": time.perf_counter() - start}


def _timed_child(code: str) -> dict:
  """Run ``code`` (which prints one JSON line last) in a fresh interpreter under ``/usr/bin/time``: its JSON,
  wall time and peak RSS."""
  import subprocess
  import tempfile

  with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
    done = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", report.name, sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    wall, rss_kb = report.read().split()[-2:]
  if done.returncode != 0:
    raise RuntimeError(f"child failed ({done.returncode}): {done.stderr.strip().splitlines()[-3:]}")
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  return (json.loads(lines[-1]) if lines else {}) | {"wall_s": float(wall), "peak_rss_gb": int(rss_kb) * 1024 / 1e9}


def _csv_bytes(out: str) -> int:
  """Bytes today's CSV layout takes for a store's rows (each table's ``to_csv``, written part by part)."""
  from normtheory import parts, store

  contents = store.Contents(out)
  total = 0
  for table, table_parts in contents.index.parts.items():
    for k, part in enumerate(table_parts):
      total += len(parts.to_frame(parts.read([part], table)).to_csv(index=False, header=k == 0).encode())
  return total


def _disk_bytes(out: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)


def store_benchmark(scratch: str) -> list[dict]:
  """The store's rows: write, load, list, append, the CLI's report, and the size on disk (see the module doc)."""
  import shutil

  scratch, rows = os.path.abspath(scratch), []
  for name, seeds in (("1x", 64), ("2x", 128)):
    out = os.path.join(scratch, f"store_{name}")
    shutil.rmtree(out, ignore_errors=True)
    argv = [*STORE_GRID[:-1], str(seeds)]
    written = synthetic_store(out, argv)
    row = {"store": name, "seeds": seeds, **written, "disk_bytes": _disk_bytes(out), "csv_bytes": _csv_bytes(out)}
    row["load"] = _timed_child(
        "import json, time; import normtheory as nt; t = time.perf_counter(); "
        f"f = nt.load({out!r}); print(json.dumps({{'s': time.perf_counter() - t, 'grad': len(f.grad)}}))")
    row["pairs"] = _timed_child(
        "import json, time; from normtheory import store; t = time.perf_counter(); "
        f"n = len(store.Contents({out!r}).pairs()); print(json.dumps({{'s': time.perf_counter() - t, 'pairs': n}}))")
    row["append"] = _timed_child(f"from benchmark import _append_child; _append_child({out!r})")
    row["report"] = _timed_child(
        "import sys; from normtheory import cli; "
        f"sys.exit(cli.main({[*argv, '--out', out]!r}))")
    rows.append(row)
    print(f"  done: store {name}: {json.dumps(row)}", file=sys.stderr, flush=True)
  return rows


def _append_child(out: str) -> None:
  """In a child: time storing one pass (d = 16 at the store's depths, one seed; values drawn beforehand) into
  the store, and the same rows into an empty store: best of 3 each, the appended parts removed in between;
  each time opens the store (its footers) and appends. Prints JSON."""
  import shutil
  import tempfile

  from normtheory import store

  settings, chunks = synthetic_chunks(["--d", "16", *STORE_GRID[2:4], "--seeds", "1"])
  cells = [cell for chunk in chunks for cell in chunk]
  times = {"append_s": [], "empty_s": []}
  meta = open(os.path.join(out, "meta.json"), "rb").read()
  for _ in range(3):
    for key, target in (("append_s", out), ("empty_s", tempfile.mkdtemp())):
      before = {os.path.join(r, f) for r, _, fs in os.walk(target) for f in fs}
      start = time.perf_counter()
      store.ResultsStore(target, settings).append(cells, 0.0)
      times[key].append(time.perf_counter() - start)
      if target == out:
        for r, _, fs in os.walk(out):
          for f in fs:
            if os.path.join(r, f) not in before:
              os.remove(os.path.join(r, f))
        open(os.path.join(out, "meta.json"), "wb").write(meta)
      else:
        shutil.rmtree(target)
  print(json.dumps({k: min(v) for k, v in times.items()} | {"grad_rows": sum(len(c.to_frame()) for c in cells)}))


def _print_store_tables(rows: list[dict]) -> None:
  print(f"# normtheory store benchmark, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; synthetic stores shaped like {' '.join(STORE_GRID)} (1x) and 128 seeds (2x)")
  print("| store | grad rows | hidden rows | LN-Jacobian rows | write s | nt.load s | nt.load peak RSS GB "
        "| list pairs s | append pass s | same rows, empty store s | append / empty | CLI report s | CLI report peak RSS GB "
        "| disk MB | CSV MB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    n = r["rows"]
    a = r["append"]
    print(f"| {r['store']} | {n['grad_norms.csv'] / 1e6:.2f} M | {n['hidden_norms.csv'] / 1e6:.2f} M | "
          f"{n['ln_jacobian.csv'] / 1e6:.2f} M | {r['write_s']:.1f} | {r['load']['s']:.1f} | {r['load']['peak_rss_gb']:.2f} | "
          f"{r['pairs']['s']:.2f} | {a['append_s']:.2f} | {a['empty_s']:.2f} | {a['append_s'] / a['empty_s']:.2f}x | "
          f"{r['report']['wall_s']:.1f} | {r['report']['peak_rss_gb']:.2f} | {r['disk_bytes'] / 1e6:.0f} | {r['csv_bytes'] / 1e6:.0f} |")


def _print_tables(rows: list[dict], rates: dict, args) -> None:
  import jax

  device = rows[0]["device"]
  print(f"# normtheory benchmark, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}, {device})")
  print(f"# post+pre, linear loss, n=16, float32, threefry2x32; --max-memory {args.max_memory / 2**30:.3g} GiB; "
        "weight sampling (4 d×d per call): " + ", ".join(f"{k} {v / 1e6:.0f} M normals/s" for k, v in rates.items()))
  print("| path | setting | d | L | seeds | devices | plan (seeds/call x layers kept) | cold s | compile s | warm s "
        "| peak RSS GB | warm vs redraw | warm vs kept |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  redraw = {(r["d"], tuple(r["depths"]), r["seeds"]): r["warm_s"] for r in rows
            if r["path"] == "redraw" and r["devices"] == 1}
  kept = {(r["d"], tuple(r["depths"]), r["seeds"]): r["warm_s"] for r in rows
          if r["path"] == "kept" and r["devices"] == 1 and r["setting"] == "default" and r.get("warm_s")}
  fmt = lambda v: "-" if v is None else f"{v:.1f}"
  for r in rows:
    L = f"{min(r['depths'])}..{max(r['depths'])}" if len(r["depths"]) > 2 else ",".join(map(str, r["depths"]))
    base = redraw.get((r["d"], tuple(r["depths"]), r["seeds"])) if r["setting"] == "default" else None
    ratio = f"{r['warm_s'] / base:.2f}x" if base and r.get("warm_s") and r["path"] != "redraw" else "-"
    explicit = kept.get((r["d"], tuple(r["depths"]), r["seeds"])) if r["path"] == "conditional" else None
    vs_kept = f"{r['warm_s'] / explicit:.3f}x" if explicit else "-"
    print(f"| {r['path']} | {r['setting']} | {r['d']} | {L} | {r['seeds']} | {r['devices']} | {r.get('plan', '-')} | "
          f"{fmt(r['cold_s'])} | {fmt(r['compile_s'])} | {fmt(r.get('warm_s'))} | {r['peak_rss_gb']:.2f} | {ratio} | "
          f"{vs_kept} |")
  print()
  print("| path | d | L | seeds | (a) draw s | normals | M normals/s | matmul peak GFLOP/s | (b) matmul s | floor s "
        "| redraw warm / floor | warm / floor |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if not r["floor"]:
      continue
    floor = r["draw_s"] + r["matmul_s"]
    base = redraw.get((r["d"], tuple(r["depths"]), r["seeds"])) if r["path"] != "conditional" else None
    print(f"| {r['path']} | {r['d']} | {min(r['depths'])}..{max(r['depths'])} | {r['seeds']} | {r['draw_s']:.1f} | "
          f"{r['normals']:.3g} | {r['normals'] / r['draw_s'] / 1e6:.0f} | {r['peak_gflops']:.0f} | {r['matmul_s']:.1f} | "
          f"{floor:.1f} | {f'{base / floor:.2f}x' if base else '-'} | {r['warm_s'] / floor:.2f}x |")


if __name__ == "__main__":
  sys.exit(main())
