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
* **Seeds over devices.** Every step is a ``shard_map`` over a one-axis mesh of the
  local devices; each device runs ``lax.map`` over its seeds, so a seed's numbers
  do not depend on the chunk size or the number of devices (padding seeds, added
  when the count does not divide, are dropped).

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
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

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
def _steps(width_cfg: Config, arch_names: tuple[str, ...]):
  """Jitted forward, loss and backward steps for models sharing ``width_cfg`` (whose
  arch and L are ignored: the steps take l and L as traced integers), one state per
  architecture in ``arch_names``, all reading the same weights (one draw per layer)."""
  archs = {name: architectures.get(name) for name in arch_names}
  weight_scale = archs[arch_names[0]].weight_scale  # equal for every arch of a shared pass
  loss_fn = LOSS_FUNCTIONS[width_cfg.loss]
  eps = width_cfg.eps
  out_widths = {name: fan_out for name, (_, fan_out) in sampling.weight_shapes(width_cfg).items()}

  def params(p_key, l, L):
    return sampling.layer_params(width_cfg, p_key, l, weight_scale(L))

  def forward_one(p_key, x, l, L):
    p = params(p_key, l, L)
    out = {}
    for name, arch in archs.items():
      taps = Taps()
      x_next = arch.layer(p, x[name], l, L, width_cfg, taps)
      ln_jac_k = jnp.stack([ln_jacobian_norm(z, eps).mean() for z in taps.ln_inputs])
      out[name] = (x_next, (x[name] ** 2).sum(-1).mean(), ln_jac_k)
    return out

  def loss_one(p_key, d_key, x):
    _, target = sampling.inputs(width_cfg, d_key)
    head = sampling.head_params(width_cfg, p_key)
    return {
        name: jax.value_and_grad(lambda x_nxd: loss_fn(arch.final(x_nxd, eps), target, head))(x[name])
        for name, arch in archs.items()
    }

  def backward_one(p_key, x, ct, l, L):
    p = params(p_key, l, L)
    n = x[arch_names[0]].shape[0]
    zeros = {name: jnp.zeros((n, out_widths[name]), p["W2"].dtype) for name in PARAM_NAMES}
    out = {}
    for name, arch in archs.items():

      def tapped(x_nxd, z, arch=arch):
        taps = Taps(z)
        return arch.layer(p, x_nxd, l, L, width_cfg, taps), taps.inputs

      _, vjp, inputs = jax.vjp(tapped, x[name], zeros, has_aux=True)
      ct_x_kxnxd, deltas = jax.vmap(vjp)(ct[name])
      out[name] = (ct_x_kxnxd, {w: _gram_sq_norm(inputs[w], deltas[w]) for w in PARAM_NAMES})
    return out

  # lax.map, not vmap, over seeds: each seed runs the same per-seed program whatever
  # the chunk size or device count, so both are bit-exact (a vmapped reduction is not).
  def forward(p_keys_S, x_S, l, L):
    return jax.lax.map(lambda a: forward_one(*a, l, L), (p_keys_S, x_S))

  def loss(p_keys_S, d_keys_S, x_S):
    return jax.lax.map(lambda a: loss_one(*a), (p_keys_S, d_keys_S, x_S))

  def backward(p_keys_S, x_S, ct_K_S, l, L):
    swap = lambda t: jax.tree.map(lambda v: v.swapaxes(0, 1), t)
    out = jax.lax.map(lambda a: backward_one(*a, l, L), (p_keys_S, x_S, swap(ct_K_S)))
    return {name: (swap(ct_S_K), swap(sq_S_K)) for name, (ct_S_K, sq_S_K) in out.items()}

  # Seeds are sharded over every local device; each runs lax.map over its own seeds.
  # Nothing crosses devices, so replication checking is off: with it, the VJP of the
  # device-invariant zero perturbations would sum their cotangents over devices.
  mesh = seed_mesh()
  seeds, seeds_2nd, rep = P(SEED_AXIS), P(None, SEED_AXIS), P()

  def shard(f, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False))

  return (
      shard(forward, (seeds, seeds, rep, rep), seeds),
      shard(loss, (seeds, seeds, seeds), seeds),
      shard(backward, (seeds, seeds, seeds_2nd, rep, rep), seeds_2nd),
  )


SEED_AXIS = "seeds"


def seed_mesh() -> Mesh:
  """A one-axis mesh over this process's devices; seeds are split along it."""
  return Mesh(np.array(jax.local_devices()), (SEED_AXIS,))


def _measure_chunk(
    cfg: Config, arch_names: tuple[str, ...], depths: tuple[int, ...], keys_S: jax.Array
) -> dict[str, dict[int, DepthResult]]:
  """All depths and architectures of one shared forward pass, for one chunk of seeds."""
  forward, loss_and_ct, backward = _steps(dataclasses.replace(cfg, arch=arch_names[0], L=1), arch_names)
  S = keys_S.shape[0]
  padded = -(-S // jax.local_device_count()) * jax.local_device_count()
  keys_S = jnp.concatenate([keys_S, jnp.repeat(keys_S[-1:], padded - S)])  # padding rows are dropped below
  p_keys = jax.vmap(sampling.params_key)(keys_S)
  d_keys = jax.vmap(sampling.data_key)(keys_S)
  L_max = max(depths)
  L_arg = jnp.int32(L_max)  # only read by depth-dependent architectures (one depth per pass)
  x0_SxNxD = jax.vmap(lambda k: sampling.inputs(cfg, k)[0])(d_keys)
  x = {name: x0_SxNxD for name in arch_names}
  xs, stats = [x], []
  for l in range(1, L_max + 1):
    out = forward(p_keys, x, jnp.int32(l), L_arg)
    x = {name: o[0] for name, o in out.items()}
    xs.append(x)
    stats.append({name: (np.asarray(o[1])[:S], np.asarray(o[2])[:S]) for name, o in out.items()})

  losses, active, ct = {}, [], None  # ct: arch -> (K, S, n, d), one cotangent per active depth
  grad_sq = []  # per layer, from the top: arch -> param -> (K, S)
  for l in range(L_max, 0, -1):
    if l in depths:
      losses[l] = loss_and_ct(p_keys, d_keys, xs[l])
      new = {name: v[1][None] for name, v in losses[l].items()}
      ct = new if ct is None else {name: jnp.concatenate([ct[name], new[name]]) for name in arch_names}
      active.append(l)
    K = len(active)
    out = backward(p_keys, xs[l - 1], _pad_depths(ct, 1 if K == 1 else len(depths)), jnp.int32(l), L_arg)
    ct = {name: o[0][:K] for name, o in out.items()}
    grad_sq.append({name: jax.tree.map(lambda v: np.asarray(v)[:K, :S], o[1]) for name, o in out.items()})

  results = {name: {} for name in arch_names}
  for name in arch_names:
    sq_norms_SxL = np.stack([s[name][0] for s in stats], axis=1)
    ln_jac_SxLxk = np.stack([s[name][1] for s in stats], axis=1)
    for k, L in enumerate(active):
      # grad_sq[i] belongs to layer L_max - i and holds the depths active then, in order.
      norms = {
          w: np.sqrt(np.stack([grad_sq[L_max - l][name][w][k] for l in range(1, L + 1)], axis=1))
          for w in PARAM_NAMES
      }
      results[name][L] = DepthResult(
          norms, sq_norms_SxL[:, :L], ln_jac_SxLxk[:, :L], np.asarray(losses[L][name][0])[:S]
      )
  return results


def _pad_depths(ct: dict, K_pad: int) -> dict:
  """Zero cotangents appended up to ``K_pad`` depths, so the backward step compiles for
  two batch sizes (1 and all depths) instead of one per number of active depths."""
  return {name: jnp.pad(v, [(0, K_pad - v.shape[0])] + [(0, 0)] * (v.ndim - 1)) for name, v in ct.items()}


def passes_for(arch_names, depths) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
  """How to group (archs, depths) into shared passes: every depth-independent
  architecture in one pass over all depths; each depth-dependent one alone, per depth."""
  depths = tuple(sorted({int(L) for L in depths}))
  shared = tuple(a for a in arch_names if not architectures.get(a).depends_on_depth)
  passes = [(shared, depths)] if shared else []
  for a in arch_names:
    if architectures.get(a).depends_on_depth:
      passes.extend(((a,), (L,)) for L in depths)
  return passes


def measure_archs(
    cfg: Config, arch_names, depths, seeds_S: np.ndarray, base_key: jax.Array, chunk: int | None = None
) -> dict[str, dict[int, DepthResult]]:
  """Exact per-layer gradient norms of ``cfg`` for several architectures and depths.

  Architectures whose layers do not depend on L share one forward and one backward
  pass, and each layer's weights are drawn once for all of them (same keys, so the
  same weights, as the architectures get when measured one at a time).

  Args:
    cfg: the model; its arch and L are replaced by each of ``arch_names`` and ``depths``.
    arch_names: architectures to measure.
    depths: the depths to measure.
    seeds_S: seed indices; seed s uses key ``fold_in(base_key, s)``.
    base_key: the base PRNG key.
    chunk: seeds per compiled call (``None``: all at once). Results do not depend on it.

  Returns:
    arch -> depth -> :class:`DepthResult`, seeds in the order of ``seeds_S``.
  """
  arch_names = tuple(dict.fromkeys(arch_names))
  seeds_S = np.asarray(seeds_S)
  chunk = len(seeds_S) if chunk is None else int(chunk)
  parts = {name: {} for name in arch_names}
  with jax.enable_x64(cfg.dtype == "float64"):
    for start in range(0, len(seeds_S), chunk):
      keys_S = sampling.seed_keys(base_key, seeds_S[start : start + chunk])
      for pass_archs, pass_depths in passes_for(arch_names, depths):
        for name, by_depth in _measure_chunk(cfg, pass_archs, pass_depths, keys_S).items():
          for L, result in by_depth.items():
            parts[name].setdefault(L, []).append(result)
  return {name: {L: _concat(rs) for L, rs in sorted(by_depth.items())} for name, by_depth in parts.items()}


def measure_depths(
    cfg: Config, depths, seeds_S: np.ndarray, base_key: jax.Array, chunk: int | None = None
) -> dict[int, DepthResult]:
  """:func:`measure_archs` for the one architecture ``cfg.arch``: depth -> DepthResult."""
  return measure_archs(cfg, (cfg.arch,), depths, seeds_S, base_key, chunk)[cfg.arch]


def _concat(results: list[DepthResult]) -> DepthResult:
  return DepthResult(
      {name: np.concatenate([r.grad_norms[name] for r in results]) for name in PARAM_NAMES},
      np.concatenate([r.sq_norms for r in results]),
      np.concatenate([r.ln_jacobian for r in results]),
      np.concatenate([r.loss for r in results]),
  )
