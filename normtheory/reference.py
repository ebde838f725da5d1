"""The straightforward measurement: ``jax.grad`` of the whole NNX parameter pytree.

``jax.jit(jax.vmap(jax.grad(loss)))`` over seeds, all L layers and all L d×d
weight gradients alive at once. It is the definition the fast engine is tested
against, and the baseline of the benchmark.

References:
  Xiong et al. 2020, Section 3.3 and Theorem 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normtheory import architectures, sampling
from normtheory.config import EMBEDDING, Config, final_param_names, layer_param_names
from normtheory.engine import DepthResult
from normtheory.layers import Taps, ln_jacobian_means
from normtheory.losses import LOSS_FUNCTIONS
from normtheory.model import Transformer


class LossOfParams(NamedTuple):
  """One sample's loss as a function of the model's parameters.

  Attributes:
    loss: ``params -> (loss, sq_norms_{L+1})`` for the NNX parameter ``State``.
    params: the parameters at initialization (stacked per-layer leaves ``(L, ...)``
      under ``"layers"``, the read-out and embedding at the top level).
    inputs: the sample's :class:`normtheory.sampling.Inputs`.
  """

  loss: Callable
  params: nnx.State
  inputs: sampling.Inputs


def loss_of_params(cfg: Config, seed_key: jax.Array, unroll: bool = False) -> LossOfParams:
  """The loss of sample ``seed_key`` as a function of the NNX parameters (same keys as the engine)."""
  p_key = sampling.params_key(seed_key)
  inputs = sampling.inputs(cfg, sampling.data_key(seed_key))
  graphdef, params, rest = nnx.split(Transformer(cfg, p_key), nnx.Param, ...)

  def loss(params):
    model = nnx.merge(graphdef, params, rest)
    x_final, sq_norms = model(inputs.x, unroll=unroll)
    return LOSS_FUNCTIONS[cfg.loss](x_final, inputs.target, model.head()), sq_norms

  return LossOfParams(loss, params, inputs)


class LossAndGrads(NamedTuple):
  """One sample's loss, its gradient and hidden-state norms.

  Attributes:
    loss: the loss value.
    grads: the NNX ``State`` of dLoss/dParam, stacked per-layer leaves ``(L, ...)``.
    sq_norms: ``(L + 1,)`` hidden-state norms (:class:`normtheory.model.Forward`).
  """

  loss: jax.Array
  grads: nnx.State
  sq_norms: jax.Array


def sample_loss_and_grads(cfg: Config, seed_key: jax.Array, unroll: bool = False) -> LossAndGrads:
  """One sample's loss, parameter gradients and hidden-state norms by ``jax.grad``."""
  f = loss_of_params(cfg, seed_key, unroll)
  (value, sq_norms), grads = jax.value_and_grad(f.loss, has_aux=True)(f.params)
  return LossAndGrads(value, grads, sq_norms)


@functools.lru_cache(maxsize=None)
def _compiled(cfg: Config):
  def one(seed_key):
    value, grads, sq_norms = sample_loss_and_grads(cfg, seed_key)
    per_layer = lambda g: jnp.sqrt((g.reshape(cfg.L, -1) ** 2).sum(1))
    norms = {name: per_layer(grads["layers"][name][...]) for name in layer_param_names(cfg)}
    if cfg.inputs == "text":
      norms[EMBEDDING] = jnp.sqrt((grads[EMBEDDING][...] ** 2).sum())[None]
    final = {name: jnp.sqrt((grads[name][...] ** 2).sum())[None] for name in final_param_names(cfg)}
    return value, norms, sq_norms, final

  return jax.jit(jax.vmap(one))


class LnJacobians(NamedTuple):
  """LN-Jacobian spectral norms (mean over rows): ``layers`` ``(L, k)`` for each layer's
  LNs in forward order, ``final`` ``(k_f,)`` for the final LN (k_f = 0 or 1)."""

  layers: jax.Array
  final: jax.Array


def ln_jacobians(cfg: Config, seed_key: jax.Array) -> LnJacobians:
  """LN-Jacobian spectral norms at every LayerNorm's input, layer by layer, by a plain loop."""
  arch = architectures.get(cfg.arch)
  p_key = sampling.params_key(seed_key)
  x = sampling.inputs(cfg, sampling.data_key(seed_key)).x
  state = arch.init(sampling.first_state(cfg, sampling.head_params(cfg, p_key), x))
  rows = []
  for l in range(1, cfg.L + 1):
    taps = Taps()
    p = sampling.layer_params(cfg, p_key, l, arch.weight_scale(cfg.L))
    state = arch.layer(p, state, l, cfg.L, cfg, taps)
    rows.append(ln_jacobian_means(taps.ln_inputs, cfg.eps, cfg))
  taps = Taps()
  arch.final(state, cfg.eps, taps, cfg, sampling.head_params(cfg, p_key))
  return LnJacobians(jnp.stack(rows), ln_jacobian_means(taps.ln_inputs, cfg.eps, cfg))


def measure(cfg: Config, seeds_S: np.ndarray, base_key: jax.Array) -> DepthResult:
  """Per-seed, per-layer gradient norms by the straightforward path (same keys as the engine)."""
  with jax.enable_x64(cfg.dtype == "float64"):
    keys_S = sampling.seed_keys(base_key, np.asarray(seeds_S))
    value, norms, sq_norms, final = _compiled(cfg)(keys_S)
    ln_jac, ln_jac_final = jax.vmap(functools.partial(ln_jacobians, cfg))(keys_S)
    return DepthResult(
        {name: np.asarray(v) for name, v in norms.items()},
        np.asarray(sq_norms),
        np.asarray(ln_jac),
        np.asarray(ln_jac_final),
        np.asarray(value),
        {name: np.asarray(v) for name, v in final.items()},
    )
