"""Every number of a few conditional-weights settings, to compare bits across chunks and code versions.

``dump OUT`` measures each setting of :data:`SETTINGS` (3 seeds, one call and one seed per call) and
writes every grad norm, hidden norm, LN Jacobian and loss to ``OUT`` (a pickle), then prints, per
setting, whether one seed per call gave the same bits as one call. ``compare A B`` prints how many
numbers of two dumps (say, before and after a change to the engine) differ, and the largest relative
difference per setting. ``stores A B`` does the same for the grad tables of two stores of one grid
(per architecture and width).

Usage::

  python experiments/conditional_bits.py dump /tmp/after.pkl
  python experiments/conditional_bits.py compare /tmp/before.pkl /tmp/after.pkl
  python experiments/conditional_bits.py stores results/old results/new

References:
  README, "Where the asymptotics live" (Invariance; what an older conditional store resumes with).
"""

from __future__ import annotations

import argparse
import pickle

import numpy as np

import normtheory as nt
from normtheory import engine, parts, prng, schema, store

SETTINGS = {
    "default": (dict(d=16, n=4), ("post", "pre"), (1, 3)),
    "f64_all": (dict(d=16, n=4, dtype="float64"), nt.ARCHS, (1, 3)),
    "relaxed": (dict(d=16, n=4, attention="xavier", heads=2, batch=2, d_ff=12, loss="xent", vocab=11),
                ("post", "pre"), (1, 3)),
    "text": (dict(d=16, n=4, inputs="text", loss="xent"), ("pre", "residual"), (2, 3)),
    "blocks": (dict(d=16, n=4, norm="rmsnorm", ffn="swiglu", causal=True, positions="rope", attention="xavier",
                    inputs="text", loss="xent"), ("pre",), (1, 3)),
    "wide": (dict(d=256, n=16), ("post", "pre"), (2, 6)),
}


def numbers(result: dict) -> dict[tuple, np.ndarray]:
  """(arch, L, name) -> array, for every array of a ``measure_archs`` result."""
  out = {}
  for arch, by_depth in result.items():
    for L, r in by_depth.items():
      out |= {(arch, L, name): g for name, g in r.grad_norms.items()}
      out |= {(arch, L, f): np.asarray(getattr(r, f)) for f in ("sq_norms", "ln_jacobian", "ln_jacobian_final", "loss")}
  return out


def dump(path: str) -> None:
  key, out = prng.make_key(0, "threefry2x32"), {}
  for name, (fields, archs, depths) in SETTINGS.items():
    cfg = nt.Config(weights="conditional", **fields)
    one_call = numbers(engine.measure_archs(cfg, archs, depths, np.arange(3), key))
    per_seed = numbers(engine.measure_archs(cfg, archs, depths, np.arange(3), key, chunk=1))
    out[name] = one_call
    differ = [k for k in one_call if not np.array_equal(one_call[k], per_seed[k])]
    print(f"{name}: one seed per call {'equals one call bit for bit' if not differ else f'differs in {differ}'}")
  with open(path, "wb") as f:
    pickle.dump(out, f)


def compare(path_a: str, path_b: str) -> None:
  with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
    a, b = pickle.load(fa), pickle.load(fb)
  for name in a:
    values = [(x, b[name][k]) for k, x in a[name].items() if x.size]
    differ = sum(int((x != y).sum()) for x, y in values)
    worst = max(float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-30))) for x, y in values)
    print(f"{name}: {sum(x.size for x, _ in values)} numbers, {differ} differ, largest relative difference {worst:.2g}")


def compare_stores(path_a: str, path_b: str) -> None:
  keys = [*parts.key_columns(), "layer", "param"]
  a, b = (store.read(path, schema.GRAD_FILE).sort_values(keys).reset_index(drop=True) for path in (path_a, path_b))
  if not a[keys].equals(b[keys]):
    raise SystemExit("the two stores do not hold the same rows")
  a["relative"] = (a.grad_norm - b.grad_norm).abs() / a.grad_norm.abs()
  print(f"{len(a)} rows, {int((a.relative > 0).sum())} differ; largest relative difference per arch and d:")
  print(a.groupby(["arch", "d"]).relative.max().to_string())


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Dump or compare every number of a few conditional settings.")
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("dump").add_argument("out")
  compare_parser = sub.add_parser("compare")
  compare_parser.add_argument("a")
  compare_parser.add_argument("b")
  stores_parser = sub.add_parser("stores")
  stores_parser.add_argument("a")
  stores_parser.add_argument("b")
  args = parser.parse_args()
  if args.command == "dump":
    dump(args.out)
  elif args.command == "compare":
    compare(args.a, args.b)
  else:
    compare_stores(args.a, args.b)
