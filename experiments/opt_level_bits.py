"""Do the suite's XLA flags compute the bits a user's run computes? (tests/conftest.py sets them.)

The suite compiles at LLVM optimization level 1 with XLA's older CPU fusion emitters
(``--xla_cpu_use_fusion_emitters=false``); a user's run compiles with XLA's defaults (level 3,
the newer emitters). Each build runs in a fresh interpreter (XLA reads ``XLA_FLAGS`` once) and
a fresh ``HOME`` (no shared compilation cache), measures the same cells, and the script prints,
for level 1 alone and for the suite's flags, how many of their grad and hidden norms differ from
the default build's and by how much.

Usage::

  python experiments/opt_level_bits.py

References:
  README, "Tests"; tests/conftest.py, which sets the flags.
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

BUILDS = {
    "XLA's defaults": "",
    "level 1": "--xla_backend_optimization_level=1",
    "the suite's flags": "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false",
}


def norms_with(flags: str, tmp: str, name: str) -> np.ndarray:
  """The cells' norms compiled under ``XLA_FLAGS=flags``, measured in a fresh interpreter and HOME."""
  home, path = os.path.join(tmp, f"home_{name}"), os.path.join(tmp, f"{name}.npy")
  os.makedirs(home)
  subprocess.run([sys.executable, "-c", MEASURE, path], check=True, env=dict(os.environ, XLA_FLAGS=flags, HOME=home))
  return np.load(path)


if __name__ == "__main__":
  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    norms = {name: norms_with(flags, tmp, str(i)) for i, (name, flags) in enumerate(BUILDS.items())}
  default = norms["XLA's defaults"]
  for name, values in list(norms.items())[1:]:
    differ = values != default
    worst = float(np.max(np.abs(values - default)[differ] / np.abs(default)[differ])) if differ.any() else 0.0
    print(f"{default.size} grad and hidden norms; {name}: {int(differ.sum())} differ from XLA's defaults, "
          f"at most {worst:.1e} relative")
