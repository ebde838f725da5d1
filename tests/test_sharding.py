"""Seeds sharded over devices give bit-for-bit the same per-seed norms as one device, whether the
weights are kept for the backward pass, partly kept or drawn again."""

import os
import subprocess
import sys

import numpy as np
import pytest

from normtheory import engine, prng
from normtheory.config import Config

PROGRAM = """
import sys, jax, numpy as np
from normtheory import engine, prng
from normtheory.config import Config
assert jax.local_device_count() == int(sys.argv[2]), jax.devices()
key = prng.make_key(0, "threefry2x32")
cfg = Config(d=16, n=4)
need = engine.seed_bytes(cfg, ("pre",), [2, 3])
one_layer = 4 * (need.fixed + need.per_kept_layer)  # 4 seeds per call (padded to the devices) keep one layer
runs = [engine.measure_archs(cfg, ("pre", "deepnorm"), [2, 3], np.arange(5), key, **memory)
        for memory in ({}, {"redraw": True}, {"chunk": 4, "max_memory": one_layer})]
stack = [r[a][L].grad_norms[w][:, :2] for r in runs for a in r for L in (2, 3) for w in ("W2", "W_V")]
text = Config(d=16, n=4, loss="xent", inputs="text", tied=True)  # one seed per device: differed in the last bit
r = engine.measure_archs(text, ("sandwich",), [2], np.arange(2), key, chunk=2)
stack += [r["sandwich"][2].grad_norms[w][:, :2] for w in ("W2", "W_V", "E")]
np.save(sys.argv[1], np.concatenate([a.ravel() for a in stack]))
"""


def _norms_with_devices(tmp_path, devices: int) -> np.ndarray:
  out = tmp_path / f"norms_{devices}.npy"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}")
  subprocess.run([sys.executable, "-c", PROGRAM, str(out), str(devices)], check=True, env=env, timeout=600)
  return np.load(out)


@pytest.mark.slow
def test_four_devices_equal_one_device_with_uneven_seeds(tmp_path):
  """5 seeds on 4 forced CPU devices (padded to 8) equal 5 seeds on 1 device exactly, with the weights
  kept, redrawn, or kept for one layer with 4 seeds per call; 2 text samples in one call, one per device,
  equal both in one device's loop; padding never leaks."""
  one = _norms_with_devices(tmp_path, 1)
  four = _norms_with_devices(tmp_path, 4)
  assert one.shape == four.shape == (3 * 8 * 5 * 2 + 2 * 2 * 2 + 2,)  # (mode x arch x depth x param) x seeds x layers, text
  np.testing.assert_array_equal(one, four)


@pytest.mark.slow
def test_a_seed_does_not_depend_on_the_seeds_sharing_its_call():
  """Seeds 0, 1, 2 measured in calls of at most 2 give seeds 1 and 2 exactly what one call of seeds 1, 2
  gives, on this process's devices (the forced multi-device version is the slow test above)."""
  cfg, key = Config(d=8, n=4), prng.make_key(0, "threefry2x32")
  padded = engine.measure_archs(cfg, ("pre",), (2,), np.arange(3), key, chunk=2)["pre"][2]
  full = engine.measure_archs(cfg, ("pre",), (2,), np.array([1, 2]), key, chunk=2)["pre"][2]
  for name, g in full.grad_norms.items():
    np.testing.assert_array_equal(padded.grad_norms[name][1:], g, err_msg=name)
  np.testing.assert_array_equal(padded.sq_norms[1:], full.sq_norms)
