"""Benchmark the sweep engine against the straightforward path and the machine's matmul peak.

  python experiments/benchmark.py            # d=512: reduced grid for the baseline, full grid for the engine
  python experiments/benchmark.py --big      # also d=1024, L=6..96 (peak memory vs depth)
  python experiments/benchmark.py --devices 2  # also seeds sharded over 2 (forced CPU) devices
  python experiments/benchmark.py --no-assumptions  # without the paper/realistic pair of rows

By default the run also measures the engine on the full grid for the two ends of
``experiments/assumptions.py`` (cross-entropy over 256 tokens): ``paper`` (Theorem
1's idealisation) and ``realistic`` (Xavier attention, 8 heads, text inputs), one
after the other in the same run, and prints their wall-time ratio.

Each measured path runs in a fresh child process (so its peak RSS is its own),
one after another on this machine; the table prints wall time (compilation
included), peak RSS, speed-up against the straightforward path on the same grid,
achieved GFLOP/s of the gradient computation (the FLOPs of forward + backward of
every dense product, the same count for every path) as a fraction of a measured
float32 matmul peak, and the Gaussian weight-sampling rate of each PRNG.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time


def useful_flops(d: int, d_ff: int, n: int, depths, archs: int, seeds: int) -> float:
  """FLOPs of forward + backward (3x forward) of the six dense products, summed over cells."""
  per_layer = 3 * 2 * n * (4 * d * d + 2 * d * d_ff)
  return per_layer * sum(depths) * archs * seeds


def _child(path: str, d: int, depths: list[int], seeds: int, prng_name: str, devices: int, setting: str, queue) -> None:
  if devices > 1:  # CPU: split the host into this many XLA devices (before jax is imported)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  import jax
  import numpy as np

  from normtheory import engine, prng, reference
  from normtheory.config import Config, preset

  key = prng.make_key(0, prng_name)
  start = time.perf_counter()
  if path == "straightforward":
    for arch in ("post", "pre"):
      for L in depths:
        reference.measure(Config(arch=arch, d=d, L=L), np.arange(seeds), key).grad_norms["W2"].sum()
  elif setting == "default":
    engine.measure_archs(Config(d=d), ("post", "pre"), depths, np.arange(seeds), key)
  else:  # the settings of experiments/assumptions.py: xent over 256 tokens
    cfg = Config(d=d, loss="xent", vocab=256, **preset(setting))
    engine.measure_archs(cfg, ("post", "pre"), depths, np.arange(seeds), key)
  wall = time.perf_counter() - start
  peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  queue.put({"wall_s": wall, "peak_rss_gb": peak_gb, "devices": jax.device_count()})


def run_path(path: str, d: int, depths: list[int], seeds: int, prng_name: str, devices: int = 1,
             setting: str = "default") -> dict:
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  proc = ctx.Process(target=_child, args=(path, d, depths, seeds, prng_name, devices, setting, queue))
  proc.start()
  result = queue.get()
  proc.join()
  return result


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  f = jax.jit(lambda x: jnp.dot(x, x, precision=jax.lax.Precision.HIGHEST))
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    f(a).block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


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


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--seeds", type=int, default=8)
  parser.add_argument("--baseline-L", default="6,12,24", help="depths for the straightforward path")
  parser.add_argument("--L", default="6,12,24,48,96", help="depths for the engine's full grid")
  parser.add_argument("--big", action="store_true", help="also d=1024 on the full grid")
  parser.add_argument("--devices", type=int, default=1,
                      help="also run the full grid with seeds sharded over this many devices (on CPU: forced host devices)")
  parser.add_argument("--no-assumptions", action="store_true",
                      help="skip the paper vs realistic rows (xent over 256 tokens, full grid)")
  parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
  args = parser.parse_args()
  base_L = [int(v) for v in args.baseline_L.split(",")]
  full_L = [int(v) for v in args.L.split(",")]

  import jax

  from normtheory import prng

  peak = matmul_peak_gflops()
  rates = {name: sampling_rate(name, args.d) for name in prng.PRNG_IMPLS}
  runs = [("straightforward", prng.DEFAULT_PRNG, args.d, base_L, 1, "default")]
  if base_L != full_L:
    runs.append(("engine", prng.DEFAULT_PRNG, args.d, base_L, 1, "default"))
  runs.append(("engine", prng.DEFAULT_PRNG, args.d, full_L, 1, "default"))
  if args.devices > 1:
    runs.append(("engine", prng.DEFAULT_PRNG, args.d, full_L, args.devices, "default"))
  if args.big:
    runs.append(("engine", prng.DEFAULT_PRNG, 1024, full_L, 1, "default"))
  if not args.no_assumptions:
    runs += [("engine", prng.DEFAULT_PRNG, args.d, full_L, 1, setting) for setting in ("paper", "realistic")]
  rows = []
  for path, prng_name, d, depths, devices, setting in runs:
    r = run_path(path, d, depths, args.seeds, prng_name, devices, setting)
    r |= {"path": path, "setting": setting, "prng": prng_name, "d": d, "L": ",".join(map(str, depths))}
    r["gflops"] = useful_flops(d, d, 16, depths, 2, args.seeds) / r["wall_s"] / 1e9
    rows.append(r)
    print(f"  done: {path} {setting} {prng_name} d={d} L={r['L']}: {r['wall_s']:.1f} s", file=sys.stderr, flush=True)
  base = {(r["d"], r["L"]): r["wall_s"] for r in rows if r["path"] == "straightforward"}

  print(f"# normtheory benchmark, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind})")
  print(f"# post+pre, {args.seeds} seeds, n=16, float32; matmul peak (2048^2 float32 dot): {peak:.1f} GFLOP/s")
  print("# setting: default = linear loss, Theorem 1's model; paper / realistic = experiments/assumptions.py's "
        "(xent over 256 tokens; realistic: xavier attention, 8 heads, text)")
  print("# weight sampling: " + ", ".join(f"{k} {v / 1e6:.0f} M normals/s" for k, v in rates.items()))
  print("| path | setting | PRNG | d | L | devices | wall s | peak RSS GB | speed-up | GFLOP/s | % of peak |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    speedup = base.get((r["d"], r["L"])) if r["setting"] == "default" else None
    speedup = f"{speedup / r['wall_s']:.1f}x" if speedup else "-"
    print(f"| {r['path']} | {r['setting']} | {r['prng']} | {r['d']} | {r['L']} | {r['devices']} | {r['wall_s']:.1f} | "
          f"{r['peak_rss_gb']:.2f} | {speedup} | {r['gflops']:.1f} | {100 * r['gflops'] / peak:.0f}% |")
  walls = {r["setting"]: r["wall_s"] for r in rows if r["setting"] in ("paper", "realistic")}
  if len(walls) == 2:
    print(f"# realistic / paper wall time (d={args.d}, L={args.L}, {args.seeds} seeds, same run): "
          f"{walls['realistic'] / walls['paper']:.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"matmul_peak_gflops": peak, "sampling_rates": rates, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
