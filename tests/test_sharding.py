"""Seeds sharded over devices give bit-for-bit the same per-seed norms as one device."""

import os
import subprocess
import sys

import numpy as np
import pytest

PROGRAM = """
import sys, jax, numpy as np
from normtheory import engine, prng
from normtheory.config import Config
assert jax.local_device_count() == int(sys.argv[2]), jax.devices()
r = engine.measure_archs(Config(d=16, n=4), ("pre", "deepnorm"), [2, 3], np.arange(5), prng.make_key(0, "threefry2x32"))
np.save(sys.argv[1], np.stack([r[a][L].grad_norms[w][:, :2] for a in r for L in (2, 3) for w in ("W2", "W_V")]))
"""


def _norms_with_devices(tmp_path, devices: int) -> np.ndarray:
  out = tmp_path / f"norms_{devices}.npy"
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", PROGRAM, str(out), str(devices)], check=True, env=env, timeout=600)
  return np.load(out)


@pytest.mark.slow
def test_four_devices_equal_one_device_with_uneven_seeds(tmp_path):
  """5 seeds on 4 forced CPU devices (padded to 8) equal 5 seeds on 1 device exactly; padding never leaks."""
  one = _norms_with_devices(tmp_path, 1)
  four = _norms_with_devices(tmp_path, 4)
  assert one.shape == four.shape == (8, 5, 2)  # (arch x depth x param, seeds, first two layers)
  np.testing.assert_array_equal(one, four)
