"""PRNG selection: every listed implementation gives standard Gaussian weights; bad names are rejected."""

import jax
import numpy as np
import pytest
from scipy import stats

from normtheory import prng


@pytest.mark.parametrize("impl", prng.PRNG_IMPLS)
def test_each_implementation_draws_standard_gaussians_and_folds_in(impl):
  """N(0,1) by a KS test; fold_in gives an independent stream; the same key repeats its draws."""
  key = prng.make_key(11, impl)
  with prng.bit_layout(impl):
    x = np.asarray(jax.random.normal(key, (100_000,)))
    assert stats.kstest(x, "norm").pvalue > 1e-3
    y = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (100_000,)))
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.02
    np.testing.assert_array_equal(jax.random.normal(key, (7,)), jax.random.normal(key, (7,)))


def test_the_unpartitioned_layout_is_its_own_stream_under_jit():
  """threefry2x32-unpartitioned draws other numbers than threefry2x32 from the same seed, inside and
  outside one jitted function (jit caches by the layout), and each name repeats its own."""
  draw = jax.jit(lambda key: jax.random.normal(key, (64,)))
  by_name = {}
  for impl in ("threefry2x32", prng.UNPARTITIONED, "threefry2x32"):
    with prng.bit_layout(impl):
      jitted, eager = np.asarray(draw(prng.make_key(3, impl))), np.asarray(jax.random.normal(prng.make_key(3, impl), (64,)))
    np.testing.assert_array_equal(jitted, eager)
    np.testing.assert_array_equal(by_name.setdefault(impl, jitted), jitted)
  assert not np.allclose(by_name["threefry2x32"], by_name[prng.UNPARTITIONED])


def test_unknown_impl_is_rejected():
  """make_key names the allowed implementations on a bad name."""
  with pytest.raises(ValueError, match="threefry2x32"):
    prng.make_key(0, "mt19937")
