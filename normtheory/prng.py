"""Which JAX PRNG implementation draws the weights, by name.

Every sample is addressed by ``fold_in`` from one base key (see
:mod:`normtheory.sampling`), so the implementation fixes the numbers: the sweep
records its name in meta.json. ``threefry2x32`` (JAX's default) is the default:
``experiments/benchmark.py`` measures the Gaussian sampling rate of each, and on
the CPUs measured here neither ``rbg`` nor a Philox4x32-10 implementation written
in jnp beat it.
"""

from __future__ import annotations

import jax

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
DEFAULT_PRNG = "threefry2x32"


def make_key(seed: int, impl: str = DEFAULT_PRNG) -> jax.Array:
  """A typed PRNG key for ``seed`` with the implementation named ``impl`` (one of ``PRNG_IMPLS``)."""
  if impl not in PRNG_IMPLS:
    raise ValueError(f"prng must be one of {', '.join(PRNG_IMPLS)}; got {impl!r}")
  return jax.random.key(seed, impl=impl)
