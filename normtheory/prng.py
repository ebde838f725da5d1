"""Which JAX PRNG implementation draws the weights, by name.

Every sample is addressed by ``fold_in`` from one base key (see
:mod:`normtheory.sampling`), so the implementation fixes the numbers: the sweep
records its name in meta.json. ``threefry2x32`` (JAX's default) is the default:
``experiments/benchmark.py`` measures the Gaussian sampling rate of each, and on
the CPUs measured here neither ``rbg`` nor a Philox4x32-10 implementation written
in jnp beat it.

``threefry2x32-unpartitioned`` is the same Threefry-2x32 cipher with JAX's other layout of
counters over an array (the layout of ``jax.threefry_partitionable(False)``, JAX's default before
0.5): the numbers differ from ``threefry2x32``'s, their law does not, and on the 2-core CPU
measured here (2026-12-01; ``experiments/benchmark.py``'s ``sampling_rate`` at d = 1024) it drew
normals about twice as fast (1.3e8/s against 6.7e7/s). It is its own PRNG implementation
(:data:`UNPARTITIONED_IMPL`, public ``jax.extend.random`` pieces: Threefry's seed and fold-in, its
unpartitioned split and bits), so a key made by :func:`make_key` carries its layout into every
draw, in the CLI and in a notebook alike, whatever ``jax.threefry_partitionable`` is set to. A
layout is part of the name, so a store records it and refuses the other.
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
from jax import lax

UNPARTITIONED = "threefry2x32-unpartitioned"
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg", UNPARTITIONED)
DEFAULT_PRNG = "threefry2x32"


def _unpartitioned_split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Threefry's split in the unpartitioned layout: the cipher of the counters 0 .. 2·prod(shape) - 1."""
  counts = lax.iota(np.uint32, math.prod(shape) * 2)
  return lax.reshape(jex_random.threefry_2x32(key, counts), (*shape, 2))


def _unpartitioned_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  """Threefry's random bits in the unpartitioned layout: the cipher of the counters 0, 1, ..., one
  32-bit word per 32-bit value, two (high, then low halves) per 64-bit value."""
  size = math.prod(shape)
  count = -(-bit_width * size // 32)
  if bit_width not in (32, 64) or count >= np.iinfo(np.uint32).max:
    raise NotImplementedError(f"{UNPARTITIONED}: {bit_width}-bit draws of {size} values")
  bits = jex_random.threefry_2x32(key, lax.iota(np.uint32, count))
  if bit_width == 64:
    high, low = (lax.convert_element_type(half, np.uint64) for half in jnp.split(bits, 2))
    bits = lax.shift_left(high, np.uint64(32)) | low
  return lax.reshape(bits, shape)


UNPARTITIONED_IMPL = jex_random.define_prng_impl(
    key_shape=(2,), seed=jex_random.threefry_prng_impl.seed, split=_unpartitioned_split,
    random_bits=_unpartitioned_bits, fold_in=jex_random.threefry_prng_impl.fold_in, name=UNPARTITIONED,
    tag="fryu")


def make_key(seed: int, impl: str = DEFAULT_PRNG) -> jax.Array:
  """A typed PRNG key for ``seed`` with the implementation named ``impl`` (one of ``PRNG_IMPLS``)."""
  if impl not in PRNG_IMPLS:
    raise ValueError(f"prng must be one of {', '.join(PRNG_IMPLS)}; got {impl!r}")
  return jax.random.key(seed, impl=UNPARTITIONED_IMPL if impl == UNPARTITIONED else impl)
