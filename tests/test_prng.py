"""The Philox4x32-10 PRNG implementation: known answers, JAX key semantics, Gaussian draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from normtheory import prng

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter[4], key[2] -> result[4].
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_block_function_matches_random123_known_answers(counter, key, expected):
  """philox4x32 (eager and jitted) reproduces Random123's known-answer vectors."""
  as_u32 = lambda t: tuple(np.uint32(v) for v in t)
  assert tuple(int(v) for v in prng.philox4x32(as_u32(counter), as_u32(key))) == expected
  jitted = jax.jit(lambda c, k: prng.philox4x32(c, k))(as_u32(counter), as_u32(key))
  assert tuple(int(v) for v in jitted) == expected


def test_normal_draws_are_standard_gaussian_and_keys_behave():
  """N(0,1) by KS test; fold_in/split give distinct streams; the same key gives the same draws."""
  key = prng.make_key(11, "philox4x32")
  x = np.asarray(jax.random.normal(key, (200_000,)))
  assert stats.kstest(x, "norm").pvalue > 1e-3
  assert abs(x.mean()) < 5 / np.sqrt(x.size) and abs(x.var() - 1) < 0.02
  a = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (50_000,)))
  b = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (50_000,)))
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.02 and abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01
  np.testing.assert_array_equal(jax.random.normal(key, (7,)), jax.random.normal(key, (7,)))
  k1, k2 = jax.random.split(key)
  assert not np.array_equal(jax.random.normal(k1, (4,)), jax.random.normal(k2, (4,)))


def test_draws_inside_jit_and_vmap_equal_eager():
  """Computed keys (fold_in inside jit, vmapped) give the same bits as eager calls."""
  key = prng.make_key(3, "philox4x32")
  f = jax.jit(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (5, 3))))
  eager = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, i), (5, 3))) for i in range(4)])
  np.testing.assert_array_equal(f(jnp.arange(4, dtype=jnp.uint32)), eager)


def test_unknown_impl_is_rejected():
  """make_key names the allowed implementations on a bad name."""
  with pytest.raises(ValueError, match="philox4x32"):
    prng.make_key(0, "mt19937")
