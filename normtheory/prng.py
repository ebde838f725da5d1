"""Which JAX PRNG implementation draws the weights, by name.

Every sample is addressed by ``fold_in`` from one base key (see
:mod:`normtheory.sampling`), so the implementation fixes the numbers: the sweep
records its name in meta.json. ``threefry2x32`` (JAX's default) is the default:
``experiments/benchmark.py`` measures the Gaussian sampling rate of each, and on
the CPUs measured here neither ``rbg`` nor a Philox4x32-10 implementation written
in jnp beat it.

``threefry2x32-unpartitioned`` is the same Threefry-2x32 cipher with JAX's other layout of
counters over an array (``jax.threefry_partitionable(False)``, JAX's default before 0.5): the
numbers differ from ``threefry2x32``'s, their law does not, and on the 2-core CPU measured here
(2026-12-01; ``experiments/benchmark.py``'s ``sampling_rate`` at d = 1024) it drew normals about
twice as fast (1.3e8/s against 6.7e7/s). A layout is part of the name, so a store records it and
refuses the other; the sweep CLI traces its programs inside :func:`bit_layout`, and a caller of the
library API with such a key must enter it too.
"""

from __future__ import annotations

import jax

UNPARTITIONED = "threefry2x32-unpartitioned"
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg", UNPARTITIONED)
DEFAULT_PRNG = "threefry2x32"


def make_key(seed: int, impl: str = DEFAULT_PRNG) -> jax.Array:
  """A typed PRNG key for ``seed`` with the implementation named ``impl`` (one of ``PRNG_IMPLS``)."""
  if impl not in PRNG_IMPLS:
    raise ValueError(f"prng must be one of {', '.join(PRNG_IMPLS)}; got {impl!r}")
  return jax.random.key(seed, impl="threefry2x32" if impl == UNPARTITIONED else impl)


def bit_layout(impl: str):
  """The context in which keys of ``impl`` draw the bits its name promises: Threefry's
  unpartitioned counter layout for :data:`UNPARTITIONED`, the partitionable one (JAX's default)
  for every other name. Programs traced inside it keep its layout (``jax.jit`` caches by it).

  Args:
    impl: one of ``PRNG_IMPLS``.

  Returns:
    a context manager.
  """
  return jax.threefry_partitionable(impl != UNPARTITIONED)
