"""Philox4x32-10 as a JAX PRNG implementation: the same ``jax.random`` API, faster weight draws.

On CPU the sweep spends most of its time drawing Gaussian weights (every layer's
weights are drawn twice: forward and backward). JAX's default ``threefry2x32``
spends a whole 2×32-bit block per 32-bit output; Philox4x32-10 (Salmon et al.
2011, the generator of cuRAND and Random123) yields four 32-bit words per block
with ten rounds of two 32×32→64-bit multiplies, and passes BigCrush. Registered
through ``jax.extend.random.define_prng_impl``, so ``jax.random.key(seed,
impl=PHILOX)`` gives keys that work with ``fold_in``, ``split`` and ``normal``;
the Gaussian transform is JAX's own, so the distribution is exact.

The 32×32→64-bit products are taken in uint64 under a scoped ``jax.enable_x64``
(inputs and outputs stay uint32, so callers need not enable x64); ``philox4x32``
is checked against the Random123 known-answer vectors in the tests.

References:
  Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3" (SC'11).
"""

from __future__ import annotations

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key schedule (Weyl) increments


def _mulhilo(a: jax.Array, b: int) -> tuple[jax.Array, jax.Array]:
  """High and low 32-bit halves of ``a * b`` for uint32 ``a`` and constant ``b``."""
  with jax.enable_x64(True):  # scoped: a 64-bit product inside any trace, uint32 out
    product = a.astype(jnp.uint64) * jnp.uint64(b)
    return (product >> 32).astype(jnp.uint32), product.astype(jnp.uint32)


def philox4x32(counter: tuple, key: tuple, rounds: int = 10) -> tuple:
  """The Philox4x32 block function on uint32 arrays.

  Args:
    counter: four uint32 arrays (broadcastable) c0..c3.
    key: two uint32 scalars or arrays k0, k1.
    rounds: number of rounds (10 is the standard, BigCrush-clean choice).

  Returns:
    four uint32 arrays.
  """
  c0, c1, c2, c3 = (jnp.asarray(c, jnp.uint32) for c in counter)
  k0, k1 = (jnp.asarray(k, jnp.uint32) for k in key)
  for r in range(rounds):
    if r:
      k0, k1 = k0 + jnp.uint32(_W0), k1 + jnp.uint32(_W1)
    hi0, lo0 = _mulhilo(c0, _M0)
    hi1, lo1 = _mulhilo(c2, _M1)
    c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
  return c0, c1, c2, c3


def _words(key: jax.Array, count: int, domain: int) -> jax.Array:
  """``count`` uint32 words from counters (i, 0, 0, domain), i = 0.."""
  blocks = -(-count // 4)
  key = jax.lax.optimization_barrier(key)  # keep a computed key out of the per-element loop
  i = jax.lax.iota(jnp.uint32, blocks)
  zero = jnp.zeros_like(i)
  out = philox4x32((i, zero, zero, jnp.full_like(i, domain)), (key[0], key[1]))
  return jnp.concatenate(out)[:count]


def _seed(seed: jax.Array) -> jax.Array:
  seed = jnp.asarray(seed)
  high = (seed >> 32).astype(jnp.uint32) if seed.dtype.itemsize == 8 else jnp.uint32(0)
  return jnp.stack([high, seed.astype(jnp.uint32)])


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return _words(key, 2 * int(np.prod(shape)), domain=1).reshape(*shape, 2)


def _fold_in(key: jax.Array, data) -> jax.Array:
  data = jnp.asarray(data, jnp.uint32)
  zero = jnp.uint32(0)
  out = philox4x32((data, zero, zero, jnp.uint32(2)), (key[0], key[1]))
  return jnp.stack(out[:2])


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  size = int(np.prod(shape))
  if bit_width == 64:
    words = _words(key, 2 * size, domain=0).reshape(2, size).astype(jnp.uint64)
    return ((words[0] << 32) | words[1]).reshape(shape)
  words = _words(key, size, domain=0)
  dtype = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width]
  return words.astype(dtype).reshape(shape) if bit_width != 32 else words.reshape(shape)


PHILOX = jax.extend.random.define_prng_impl(
    key_shape=(2,), seed=_seed, split=_split, random_bits=_random_bits, fold_in=_fold_in,
    name="philox4x32", tag="phx",
)

DEFAULT_PRNG = "philox4x32"
PRNG_IMPLS = {"threefry2x32": "threefry2x32", "philox4x32": PHILOX, "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}


def make_key(seed: int, impl: str = "threefry2x32") -> jax.Array:
  """A typed PRNG key for ``seed`` with the implementation named ``impl`` (a key of ``PRNG_IMPLS``)."""
  if impl not in PRNG_IMPLS:
    raise ValueError(f"prng must be one of {', '.join(PRNG_IMPLS)}; got {impl!r}")
  return jax.random.key(seed, impl=PRNG_IMPLS[impl])
