"""Exact per-layer weight-gradient norms, one layer at a time, for many depths at once.

The reference path (:mod:`normtheory.model`) materialises all L layers and all
L d×d gradients. This engine computes the same numbers with memory flat in depth:

* **Weights drawn inside each step.** Layer l's weights are a pure function of
  ``fold_in(params key, l)`` (:func:`normtheory.sampling.layer_params`), so the
  forward step draws them, uses them and drops them, and the backward step draws
  them again. Only the hidden states ``x_l`` (n×d per layer) are kept.
* **No d×d gradient.** Every dense product ``a @ W`` gets a zero perturbation on
  its output; the cotangent ``delta`` of that perturbation is exact (``jax.vjp``),
  and ``||dLoss/dW||_F^2 = ||a^T delta||_F^2 = sum_ij (a a^T)_ij (delta delta^T)_ij``,
  an n×n Gram product instead of a d×d matrix.
* **Depths share one forward pass.** Layer l does not depend on L (for the
  architectures where ``depends_on_depth`` is false), so the first L layers of the
  deepest model are the L-layer model. One forward pass to ``max(depths)`` serves
  every depth; the backward pass walks down once, carrying one cotangent per depth
  that has started (a batch the layer's VJP is vmapped over), and draws each
  layer's weights once for all of them.
* **One compilation per shape, reused across depths.** The steps take the layer
  index and L as traced integers, and Python drives the loop over layers.

References:
  Xiong et al. 2020, Section 3.3 (the measured quantity, ``||dLoss/dW2^L||_F``);
  Goodfellow 2015, "Efficient per-example gradient computations" (the a^T delta
  Gram identity).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from normtheory import architectures, sampling
from normtheory.config import PARAM_NAMES, Config
from normtheory.layers import Taps, ln_jacobian_norm
from normtheory.losses import LOSS_FUNCTIONS


@dataclasses.dataclass
class DepthResult:
  """Per-seed, per-layer measurements of one L-layer model (numpy arrays).

  Attributes:
    grad_norms: param name -> ``(S, L)`` Frobenius norms of dLoss/dW per layer.
    sq_norms: ``(S, L)`` mean squared row norm ``||x_l||²/n`` entering each layer.
    ln_jacobian: ``(S, L, k)`` spectral norm of the LN Jacobian, averaged over
      positions, at the inputs of the layer's k LayerNorms (forward order).
    loss: ``(S,)`` loss values.
  """

  grad_norms: dict[str, np.ndarray]
  sq_norms: np.ndarray
  ln_jacobian: np.ndarray
  loss: np.ndarray


def _gram_sq_norm(a_nxi: jax.Array, delta_kxnxo: jax.Array) -> jax.Array:
  """``||a^T delta_k||_F^2`` for each k via n×n Gram matrices, never forming a^T delta."""
  gram_a_nxn = jnp.matmul(a_nxi, a_nxi.T, precision=jax.lax.Precision.HIGHEST)
  gram_d_kxnxn = jnp.einsum("kio,kjo->kij", delta_kxnxo, delta_kxnxo, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(jnp.einsum("ij,kij->k", gram_a_nxn, gram_d_kxnxn), 0.0)


@functools.lru_cache(maxsize=None)
def _steps(width_cfg: Config):
  """Jitted forward, loss and backward steps for every model sharing ``width_cfg``
  (a Config whose L is ignored: the steps take l and L as traced integers)."""
  arch = architectures.get(width_cfg.arch)
  loss_fn = LOSS_FUNCTIONS[width_cfg.loss]
  eps = width_cfg.eps
  out_widths = {name: fan_out for name, (_, fan_out) in sampling.weight_shapes(width_cfg).items()}

  def params(p_key, l, L):
    return sampling.layer_params(width_cfg, p_key, l, arch.weight_scale(L))

  def forward_one(p_key, x_nxd, l, L):
    taps = Taps()
    x_next = arch.layer(params(p_key, l, L), x_nxd, l, L, width_cfg, taps)
    ln_jac_k = jnp.stack([ln_jacobian_norm(z, eps).mean() for z in taps.ln_inputs])
    return x_next, (x_nxd**2).sum(-1).mean(), ln_jac_k

  def loss_one(p_key, d_key, x_nxd):
    _, target = sampling.inputs(width_cfg, d_key)
    head = sampling.head_params(width_cfg, p_key)
    return jax.value_and_grad(lambda x: loss_fn(arch.final(x, eps), target, head))(x_nxd)

  def backward_one(p_key, x_nxd, ct_kxnxd, l, L):
    p = params(p_key, l, L)
    zeros = {name: jnp.zeros((x_nxd.shape[0], out_widths[name]), x_nxd.dtype) for name in PARAM_NAMES}

    def tapped(x, z):
      taps = Taps(z)
      return arch.layer(p, x, l, L, width_cfg, taps), taps.inputs

    _, vjp, inputs = jax.vjp(tapped, x_nxd, zeros, has_aux=True)
    ct_x_kxnxd, deltas = jax.vmap(vjp)(ct_kxnxd)
    sq = {name: _gram_sq_norm(inputs[name], deltas[name]) for name in PARAM_NAMES}
    return ct_x_kxnxd, sq

  def forward(p_keys_S, x_SxNxD, l, L):
    return jax.lax.map(lambda a: forward_one(*a, l, L), (p_keys_S, x_SxNxD))

  def loss(p_keys_S, d_keys_S, x_SxNxD):
    return jax.lax.map(lambda a: loss_one(*a), (p_keys_S, d_keys_S, x_SxNxD))

  def backward(p_keys_S, x_SxNxD, ct_KxSxNxD, l, L):
    ct_SxKxNxD, sq = jax.lax.map(
        lambda a: backward_one(*a, l, L), (p_keys_S, x_SxNxD, ct_KxSxNxD.swapaxes(0, 1))
    )
    return ct_SxKxNxD.swapaxes(0, 1), jax.tree.map(lambda v: v.T, sq)

  return jax.jit(forward), jax.jit(loss), jax.jit(backward)


def _measure_chunk(cfg: Config, depths: tuple[int, ...], keys_S: jax.Array) -> dict[int, DepthResult]:
  """All depths of one shared forward pass, for one chunk of seeds."""
  forward, loss_and_ct, backward = _steps(dataclasses.replace(cfg, L=1))
  p_keys = jax.vmap(sampling.params_key)(keys_S)
  d_keys = jax.vmap(sampling.data_key)(keys_S)
  L_max = max(depths)
  L_arg = jnp.int32(L_max)  # only read by depth-dependent architectures (one depth per pass)
  x_SxNxD = jax.vmap(lambda k: sampling.inputs(cfg, k)[0])(d_keys)
  xs, sq_norms, ln_jacs = [x_SxNxD], [], []
  for l in range(1, L_max + 1):
    x_SxNxD, sq_S, ln_jac_Sxk = forward(p_keys, x_SxNxD, jnp.int32(l), L_arg)
    xs.append(x_SxNxD)
    sq_norms.append(sq_S)
    ln_jacs.append(ln_jac_Sxk)

  losses, active, ct_KxSxNxD = {}, [], None
  grad_sq = {name: [] for name in PARAM_NAMES}  # per layer, from the top: (K, S)
  for l in range(L_max, 0, -1):
    if l in depths:
      losses[l], ct_SxNxD = loss_and_ct(p_keys, d_keys, xs[l])
      new = ct_SxNxD[None]
      ct_KxSxNxD = new if ct_KxSxNxD is None else jnp.concatenate([ct_KxSxNxD, new])
      active.append(l)
    ct_KxSxNxD, sq = backward(p_keys, xs[l - 1], ct_KxSxNxD, jnp.int32(l), L_arg)
    for name in PARAM_NAMES:
      grad_sq[name].append(np.asarray(sq[name]))

  sq_norms_SxL = np.stack([np.asarray(s) for s in sq_norms], axis=1)
  ln_jac_SxLxk = np.stack([np.asarray(j) for j in ln_jacs], axis=1)
  results = {}
  for k, L in enumerate(active):
    # grad_sq[name][i] belongs to layer L_max - i and holds the depths active then.
    norms = {
        name: np.sqrt(np.stack([grad_sq[name][L_max - l][k] for l in range(1, L + 1)], axis=1))
        for name in PARAM_NAMES
    }
    results[L] = DepthResult(norms, sq_norms_SxL[:, :L], ln_jac_SxLxk[:, :L], np.asarray(losses[L]))
  return results


def measure_depths(
    cfg: Config, depths, seeds_S: np.ndarray, base_key: jax.Array, chunk: int | None = None
) -> dict[int, DepthResult]:
  """Exact per-layer gradient norms of ``cfg`` at each depth in ``depths``.

  Args:
    cfg: the model; its L is replaced by each of ``depths``.
    depths: the depths to measure.
    seeds_S: seed indices; seed s uses key ``fold_in(base_key, s)``.
    base_key: the base PRNG key.
    chunk: seeds per compiled call (``None``: all at once). Results do not depend on it.

  Returns:
    depth -> :class:`DepthResult` with seeds in the order of ``seeds_S``.
  """
  depths = tuple(sorted({int(L) for L in depths}))
  arch = architectures.get(cfg.arch)
  seeds_S = np.asarray(seeds_S)
  chunk = len(seeds_S) if chunk is None else int(chunk)
  passes = [(L,) for L in depths] if arch.depends_on_depth else [depths]
  with jax.enable_x64(cfg.dtype == "float64"):
    parts = {L: [] for L in depths}
    for start in range(0, len(seeds_S), chunk):
      keys_S = sampling.seed_keys(base_key, seeds_S[start : start + chunk])
      for pass_depths in passes:
        for L, result in _measure_chunk(cfg, pass_depths, keys_S).items():
          parts[L].append(result)
  return {L: _concat(results) for L, results in parts.items()}


def _concat(results: list[DepthResult]) -> DepthResult:
  return DepthResult(
      {name: np.concatenate([r.grad_norms[name] for r in results]) for name in PARAM_NAMES},
      np.concatenate([r.sq_norms for r in results]),
      np.concatenate([r.ln_jacobian for r in results]),
      np.concatenate([r.loss for r in results]),
  )
