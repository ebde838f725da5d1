"""The straightforward measurement: ``jax.grad`` of the whole NNX parameter pytree.

``jax.jit(jax.vmap(jax.grad(loss)))`` over seeds, all L layers and all L d×d
weight gradients alive at once. It is the definition the fast engine is tested
against, and the baseline of the benchmark.

References:
  Xiong et al. 2020, Section 3.3 and Theorem 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normtheory import architectures, sampling
from normtheory.config import PARAM_NAMES, Config
from normtheory.engine import DepthResult
from normtheory.layers import Taps, ln_jacobian_norm
from normtheory.losses import LOSS_FUNCTIONS
from normtheory.model import Transformer


def sample_loss_and_grads(cfg: Config, seed_key: jax.Array, unroll: bool = False):
  """One sample's loss, parameter gradients and hidden-state norms.

  Returns:
    (loss, grads, sq_norms_L): grads is the NNX ``State`` of dLoss/dParam with
    stacked per-layer leaves of shape ``(L, ...)``.
  """
  p_key = sampling.params_key(seed_key)
  x_nxd, target = sampling.inputs(cfg, sampling.data_key(seed_key))
  head = sampling.head_params(cfg, p_key)
  graphdef, params, rest = nnx.split(Transformer(cfg, p_key), nnx.Param, ...)

  def loss(params):
    x_final, sq_norms_L = nnx.merge(graphdef, params, rest)(x_nxd, unroll=unroll)
    return LOSS_FUNCTIONS[cfg.loss](x_final, target, head), sq_norms_L

  (value, sq_norms_L), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, grads, sq_norms_L


@functools.lru_cache(maxsize=None)
def _compiled(cfg: Config):
  def one(seed_key):
    value, grads, sq_norms_L = sample_loss_and_grads(cfg, seed_key)
    norms = {name: jnp.sqrt((grads["layers"][name][...] ** 2).sum((1, 2))) for name in PARAM_NAMES}
    return value, norms, sq_norms_L

  return jax.jit(jax.vmap(one))


def ln_jacobians(cfg: Config, seed_key: jax.Array) -> jax.Array:
  """``(L, k)`` LN-Jacobian spectral norms (mean over positions) at each layer's LN inputs."""
  arch = architectures.get(cfg.arch)
  p_key = sampling.params_key(seed_key)
  x_nxd, _ = sampling.inputs(cfg, sampling.data_key(seed_key))
  rows = []
  for l in range(1, cfg.L + 1):
    taps = Taps()
    p = sampling.layer_params(cfg, p_key, l, arch.weight_scale(cfg.L))
    x_nxd = arch.layer(p, x_nxd, l, cfg.L, cfg, taps)
    rows.append(jnp.stack([ln_jacobian_norm(z, cfg.eps).mean() for z in taps.ln_inputs]))
  return jnp.stack(rows)


def measure(cfg: Config, seeds_S: np.ndarray, base_key: jax.Array) -> DepthResult:
  """Per-seed, per-layer gradient norms by the straightforward path (same keys as the engine)."""
  with jax.enable_x64(cfg.dtype == "float64"):
    keys_S = sampling.seed_keys(base_key, np.asarray(seeds_S))
    value, norms, sq_norms = _compiled(cfg)(keys_S)
    ln_jac = jax.vmap(functools.partial(ln_jacobians, cfg))(keys_S)
    return DepthResult(
        {name: np.asarray(v) for name, v in norms.items()},
        np.asarray(sq_norms),
        np.asarray(ln_jac),
        np.asarray(value),
    )
