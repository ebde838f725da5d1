"""PRNG selection: every listed implementation gives standard Gaussian weights; bad names are rejected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from normtheory import prng


@pytest.mark.parametrize("impl", prng.PRNG_IMPLS)
def test_each_implementation_draws_standard_gaussians_and_folds_in(impl):
  """N(0,1) by a KS test; fold_in gives an independent stream; the same key repeats its draws."""
  key = prng.make_key(11, impl)
  x = np.asarray(jax.random.normal(key, (100_000,)))
  assert stats.kstest(x, "norm").pvalue > 1e-3
  y = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (100_000,)))
  assert abs(np.corrcoef(x, y)[0, 1]) < 0.02
  np.testing.assert_array_equal(jax.random.normal(key, (7,)), jax.random.normal(key, (7,)))


def _draws(key) -> list:
  """What the engine asks of a key: float32 and float64 normals of odd and even sizes, split, fold_in,
  integers, uniforms."""
  k1, k2 = jax.random.split(key)
  k3 = jax.random.fold_in(key, 7)
  return [jax.random.normal(key, (5, 7), jnp.float32), jax.random.normal(k1, (1,), jnp.float64),
          jax.random.normal(jax.random.split(k2, 3)[2], (6,), jnp.float32), jax.random.randint(k2, (9,), 0, 11),
          jax.random.uniform(k3, (33,), jnp.float64)]


@pytest.mark.slow
def test_the_unpartitioned_key_draws_threefrys_unpartitioned_layout_under_any_setting():
  """A threefry2x32-unpartitioned key draws exactly what a threefry2x32 key draws inside
  ``jax.threefry_partitionable(False)`` (the layout stores of that name were written in), whatever
  ``threefry_partitionable`` is set to, and other numbers than the default layout."""
  with jax.enable_x64(True):
    with jax.threefry_partitionable(False):
      want = jax.jit(_draws)(jax.random.key(3))
    default = jax.jit(_draws)(jax.random.key(3))
    for setting in (True, False):
      with jax.threefry_partitionable(setting):
        for a, b in zip(jax.jit(_draws)(prng.make_key(3, prng.UNPARTITIONED)), want, strict=True):
          np.testing.assert_array_equal(a, b, err_msg=f"threefry_partitionable({setting})")
    assert not np.allclose(default[0], want[0])


def test_unknown_impl_is_rejected():
  """make_key names the allowed implementations on a bad name."""
  with pytest.raises(ValueError, match="threefry2x32"):
    prng.make_key(0, "mt19937")
