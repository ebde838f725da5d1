"""Do XLA's LLVM optimization levels 1 and 2 compute the same bits? (The suite compiles at level 1.)

Each level runs in a fresh interpreter (XLA reads ``XLA_FLAGS`` once), measures the same cells,
and the script prints how many of their grad and hidden norms differ.

Usage::

  python experiments/opt_level_bits.py

References:
  README, "Tests"; tests/conftest.py, which sets the level.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

MEASURE = """
import sys
import jax, numpy as np
import normtheory as nt
from normtheory import engine
cells = [(nt.Config(d=64, n=16), ("post", "pre")),
         (nt.Config(d=16, n=4, loss="xent", batch=2, **nt.config.preset("realistic")), ("pre", "residual")),
         (nt.Config(d=64, n=16, weights="conditional"), ("post", "pre"))]
out = []
for cfg, archs in cells:
  result = engine.measure_archs(cfg, archs, [2, 6], np.arange(4), jax.random.key(3))
  for by_depth in result.values():
    for r in by_depth.values():
      out += [np.ravel(v) for v in r.grad_norms.values()] + [np.ravel(r.sq_norms)]
np.save(sys.argv[1], np.concatenate(out))
"""


def norms_at(level: int, path: str) -> np.ndarray:
  """The cells' norms compiled at LLVM optimization ``level``, measured in a fresh interpreter."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level={level}"
  subprocess.run([sys.executable, "-c", MEASURE, path], check=True, env=dict(os.environ, XLA_FLAGS=flags))
  return np.load(path)


if __name__ == "__main__":
  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    one, two = (norms_at(level, os.path.join(tmp, f"level{level}.npy")) for level in (1, 2))
  print(f"{one.size} grad and hidden norms; {int((one != two).sum())} differ between levels 1 and 2")
