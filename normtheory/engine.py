"""Exact per-layer weight-gradient norms, one layer at a time, for many depths at once.

The reference path (:mod:`normtheory.model`) materialises all L layers and all
L d×d gradients. This engine computes the same numbers with memory flat in depth:

* **Weights drawn inside each step.** Layer l's weights are a pure function of
  ``fold_in(params key, l)`` (:func:`normtheory.sampling.layer_params`), so the
  forward step draws them, uses them and drops them, and the backward step draws
  them again. Only the hidden states ``x_l`` (B×n×d per layer) are kept.
* **No d×d gradient.** Every dense product ``a @ W`` gets a zero perturbation on
  its output; the cotangent ``delta`` of that perturbation is exact (``jax.vjp``),
  and ``||dLoss/dW||_F^2 = ||a^T delta||_F^2 = sum_ij (a a^T)_ij (delta delta^T)_ij``,
  a Gram product over the B·n rows of the sample's B sequences instead of a d×d
  matrix. It holds for every product, W_Q and W_K included, whatever the attention
  weights are. (A batch with more rows than that saves, ``B n (i + o) > i o`` for an
  i×o weight, forms the i×o product ``a^T delta`` instead.) The token embedding E
  (text inputs, V×d) is formed explicitly, once per depth after the last layer: its
  rows are a scatter of the input's cotangent plus, when tied, the read-out's gradient.
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
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from normtheory import architectures, sampling
from normtheory.config import EMBEDDING, PARAM_NAMES, Config
from normtheory.layers import HIGHEST, Taps, ln_jacobian_means
from normtheory.losses import LOSS_FUNCTIONS


@dataclasses.dataclass
class DepthResult:
  """Per-seed, per-layer measurements of one L-layer model (numpy arrays).

  Attributes:
    grad_norms: param name -> ``(S, L)`` Frobenius norms of dLoss/dW per layer; for
      text inputs also ``"E"`` -> ``(S, 1)``, the token embedding (layer 0).
    sq_norms: ``(S, L + 1)`` mean squared row norm ``||x_l||²/n`` of the state entering
      layer l (column l - 1), the last column the state leaving layer L (before any
      final LN); over all B·n rows of the sample, of the arch's reported stream.
    ln_jacobian: ``(S, L, k)`` spectral norm of the LN Jacobian, averaged over
      positions and sequences, at the inputs of the layer's k LayerNorms (forward order).
    ln_jacobian_final: ``(S, k_f)`` the same at the LayerNorm after the last layer
      (k_f = 1 for archs with ``final_ln``, else 0).
    loss: ``(S,)`` loss values.
  """

  grad_norms: dict[str, np.ndarray]
  sq_norms: np.ndarray
  ln_jacobian: np.ndarray
  ln_jacobian_final: np.ndarray
  loss: np.ndarray


class _Steps(NamedTuple):
  """The jitted, seed-sharded steps of one shared pass."""

  forward: Callable  # (p_keys, state, l, L) -> arch -> (state, sq_norm, ln_jac_k)
  loss: Callable  # (p_keys, d_keys, state) -> arch -> _LossOut
  backward: Callable  # (p_keys, state, ct_K, l, L) -> arch -> (ct_K, param -> sq grad norm (K,))
  embedding: Callable  # (p_keys, d_keys, ct_K, readout_K) -> arch -> sq grad norm of E (K,)


class _LossOut(NamedTuple):
  """What the loss step returns for one arch and seed."""

  loss: jax.Array
  ct: jax.Array  # dLoss/dstate after the last layer
  sq_norm: jax.Array  # ||x_{L+1}||²/n
  ln_jac_final: jax.Array  # (k_f,)
  readout_e: jax.Array  # dLoss/dE through a tied read-out (zeros (1,) when untied)


def _sq_grad_norm(a_nxi: jax.Array, delta_kxnxo: jax.Array) -> jax.Array:
  """``||a^T delta_k||_F^2`` for each k, the rows being all leading axes of ``a`` (and all
  but the first of ``delta``).

  Via the r×r Gram matrices of the r rows, never forming a^T delta, unless the sample
  holds a batch (``a`` has a batch axis) whose rows make that the dearer way,
  ``r (i + o) > i o``: then via the i×o product itself. One-sequence samples always
  take the Gram way, as before batches existed (bit-exact with older stores).
  """
  batched = a_nxi.ndim > 2
  a_nxi = a_nxi.reshape(-1, a_nxi.shape[-1])
  delta_kxnxo = delta_kxnxo.reshape(delta_kxnxo.shape[0], -1, delta_kxnxo.shape[-1])
  (r, i), o = a_nxi.shape, delta_kxnxo.shape[-1]
  if batched and r * (i + o) > i * o:
    grad_kxixo = jnp.einsum("ri,kro->kio", a_nxi, delta_kxnxo, precision=HIGHEST)
    return (grad_kxixo**2).sum((1, 2))
  gram_a_nxn = jnp.matmul(a_nxi, a_nxi.T, precision=HIGHEST)
  gram_d_kxnxn = jnp.einsum("kio,kjo->kij", delta_kxnxo, delta_kxnxo, precision=HIGHEST)
  return jnp.maximum(jnp.einsum("ij,kij->k", gram_a_nxn, gram_d_kxnxn), 0.0)


@functools.lru_cache(maxsize=None)
def _steps(width_cfg: Config, arch_names: tuple[str, ...]) -> _Steps:
  """Jitted forward, loss, backward and embedding steps for models sharing ``width_cfg``
  (whose arch and L are ignored: the steps take l and L as traced integers), one state
  per architecture in ``arch_names``, all reading the same weights (one draw per layer)."""
  archs = {name: architectures.get(name) for name in arch_names}
  weight_scale = archs[arch_names[0]].weight_scale  # equal for every arch of a shared pass
  loss_fn = LOSS_FUNCTIONS[width_cfg.loss]
  eps = width_cfg.eps
  tied = width_cfg.tied
  rows = (*sampling.batch_shape(width_cfg), width_cfg.n)
  out_widths = {name: fan_out for name, (_, fan_out) in sampling.weight_shapes(width_cfg).items()}

  def params(p_key, l, L):
    return sampling.layer_params(width_cfg, p_key, l, weight_scale(L))

  def forward_one(p_key, x, l, L):
    p = params(p_key, l, L)
    out = {}
    for name, arch in archs.items():
      taps = Taps()
      x_next = arch.layer(p, x[name], l, L, width_cfg, taps)
      out[name] = (x_next, (arch.hidden(x[name]) ** 2).sum(-1).mean(), ln_jacobian_means(taps.ln_inputs, eps))
    return out

  def loss_one(p_key, d_key, x):
    target = sampling.inputs(width_cfg, d_key).target
    head = sampling.head_params(width_cfg, p_key)
    out = {}
    for name, arch in archs.items():
      loss_of = lambda state, head, arch=arch: loss_fn(arch.final(state, eps), target, head)
      value, (ct, ct_head) = jax.value_and_grad(loss_of, argnums=(0, 1))(x[name], head)
      taps = Taps()
      arch.final(x[name], eps, taps)
      readout_e = ct_head[EMBEDDING] if tied else jnp.zeros((1,), ct.dtype)
      sq_norm = (arch.hidden(x[name]) ** 2).sum(-1).mean()
      out[name] = _LossOut(value, ct, sq_norm, ln_jacobian_means(taps.ln_inputs, eps), readout_e)
    return out

  def backward_one(p_key, x, ct, l, L):
    p = params(p_key, l, L)
    zeros = {name: jnp.zeros((*rows, out_widths[name]), p["W2"].dtype) for name in PARAM_NAMES}
    out = {}
    for name, arch in archs.items():

      def tapped(x_nxd, z, arch=arch):
        taps = Taps(z)
        return arch.layer(p, x_nxd, l, L, width_cfg, taps), taps.inputs

      _, vjp, inputs = jax.vjp(tapped, x[name], zeros, has_aux=True)
      ct_x_kxnxd, deltas = jax.vmap(vjp)(ct[name])
      out[name] = (ct_x_kxnxd, {w: _sq_grad_norm(inputs[w], deltas[w]) for w in PARAM_NAMES})
    return out

  def embedding_one(p_key, d_key, ct, readout):
    """``||dLoss/dE||_F^2`` per depth: the input's cotangent scattered into E's rows by
    the VJP of the embedding, plus the tied read-out's part."""
    tokens = sampling.inputs(width_cfg, d_key).x
    e_vxd = sampling.head_params(width_cfg, p_key)[EMBEDDING]
    out = {}
    for name, arch in archs.items():
      _, vjp = jax.vjp(lambda e: arch.init(sampling.first_state(width_cfg, {EMBEDDING: e}, tokens)), e_vxd)
      grad_kxvxd = jax.vmap(lambda c: vjp(c)[0])(ct[name]) + (readout[name] if tied else 0.0)
      out[name] = (grad_kxvxd**2).sum((-2, -1))
    return out

  # lax.map, not vmap, over seeds: each seed runs the same per-seed program whatever
  # the chunk size or device count, so both are bit-exact (a vmapped reduction is not).
  def forward(p_keys_S, x_S, l, L):
    return jax.lax.map(lambda a: forward_one(*a, l, L), (p_keys_S, x_S))

  def loss(p_keys_S, d_keys_S, x_S):
    return jax.lax.map(lambda a: loss_one(*a), (p_keys_S, d_keys_S, x_S))

  swap = lambda t: jax.tree.map(lambda v: v.swapaxes(0, 1), t)

  def backward(p_keys_S, x_S, ct_K_S, l, L):
    out = jax.lax.map(lambda a: backward_one(*a, l, L), (p_keys_S, x_S, swap(ct_K_S)))
    return {name: (swap(ct_S_K), swap(sq_S_K)) for name, (ct_S_K, sq_S_K) in out.items()}

  def embedding(p_keys_S, d_keys_S, ct_K_S, readout_K_S):
    return swap(jax.lax.map(lambda a: embedding_one(*a), (p_keys_S, d_keys_S, swap(ct_K_S), swap(readout_K_S))))

  # Seeds are sharded over every local device; each runs lax.map over its own seeds.
  # Nothing crosses devices, so replication checking is off: with it, the VJP of the
  # device-invariant zero perturbations would sum their cotangents over devices.
  mesh = seed_mesh()
  seeds, seeds_2nd, rep = P(SEED_AXIS), P(None, SEED_AXIS), P()

  def shard(f, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False))

  return _Steps(
      shard(forward, (seeds, seeds, rep, rep), seeds),
      shard(loss, (seeds, seeds, seeds), seeds),
      shard(backward, (seeds, seeds, seeds_2nd, rep, rep), seeds_2nd),
      shard(embedding, (seeds, seeds, seeds_2nd, seeds_2nd), seeds_2nd),
  )


SEED_AXIS = "seeds"


def seed_mesh() -> Mesh:
  """A one-axis mesh over this process's devices; seeds are split along it."""
  return Mesh(np.array(jax.local_devices()), (SEED_AXIS,))


def first_states(cfg: Config, arch_names, p_keys_S: jax.Array, d_keys_S: jax.Array) -> dict[str, jax.Array]:
  """arch -> the states entering layer 1 of every seed, ``(S, ...)``: the inputs (Gaussian
  inputs drawn by a plain vmap, as before batches existed) or embedded tokens, then
  :meth:`normtheory.architectures.Architecture.init`."""
  if cfg.inputs == "text":
    x0 = jax.vmap(lambda pk, dk: sampling.first_state(cfg, sampling.head_params(cfg, pk), sampling.inputs(cfg, dk).x))(
        p_keys_S, d_keys_S)
  else:
    x0 = jax.vmap(lambda k: sampling.inputs(cfg, k).x)(d_keys_S)
  states = {}
  for name in arch_names:
    arch = architectures.get(name)
    states[name] = jax.vmap(arch.init)(x0) if arch.dual else x0
  return states


def _measure_chunk(
    cfg: Config, arch_names: tuple[str, ...], depths: tuple[int, ...], keys_S: jax.Array
) -> dict[str, dict[int, DepthResult]]:
  """All depths and architectures of one shared forward pass, for one chunk of seeds."""
  steps = _steps(dataclasses.replace(cfg, arch=arch_names[0], L=1), arch_names)
  S = keys_S.shape[0]
  padded = -(-S // jax.local_device_count()) * jax.local_device_count()
  keys_S = jnp.concatenate([keys_S, jnp.repeat(keys_S[-1:], padded - S)])  # padding rows are dropped below
  p_keys = jax.vmap(sampling.params_key)(keys_S)
  d_keys = jax.vmap(sampling.data_key)(keys_S)
  L_max = max(depths)
  L_arg = jnp.int32(L_max)  # only read by depth-dependent architectures (one depth per pass)
  x = first_states(cfg, arch_names, p_keys, d_keys)
  xs, stats = [x], []
  for l in range(1, L_max + 1):
    out = steps.forward(p_keys, x, jnp.int32(l), L_arg)
    x = {name: o[0] for name, o in out.items()}
    xs.append(x)
    stats.append({name: (np.asarray(o[1])[:S], np.asarray(o[2])[:S]) for name, o in out.items()})

  losses, active, ct, readout = {}, [], None, None  # ct: arch -> (K, S, ...), one cotangent per active depth
  grad_sq = []  # per layer, from the top: arch -> param -> (K, S)
  for l in range(L_max, 0, -1):
    if l in depths:
      losses[l] = steps.loss(p_keys, d_keys, xs[l])
      new = {name: v.ct[None] for name, v in losses[l].items()}
      new_readout = {name: v.readout_e[None] for name, v in losses[l].items()}
      ct = new if ct is None else {name: jnp.concatenate([ct[name], new[name]]) for name in arch_names}
      readout = new_readout if readout is None else {
          name: jnp.concatenate([readout[name], new_readout[name]]) for name in arch_names}
      active.append(l)
    K = len(active)
    out = steps.backward(p_keys, xs[l - 1], _pad_depths(ct, 1 if K == 1 else len(depths)), jnp.int32(l), L_arg)
    ct = {name: o[0][:K] for name, o in out.items()}
    grad_sq.append({name: jax.tree.map(lambda v: np.asarray(v)[:K, :S], o[1]) for name, o in out.items()})
  embedding_sq = (
      {name: np.asarray(v)[:, :S] for name, v in steps.embedding(p_keys, d_keys, ct, readout).items()}
      if cfg.inputs == "text" else None
  )

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
      if embedding_sq is not None:
        norms[EMBEDDING] = np.sqrt(embedding_sq[name][k])[:, None]
      final = losses[L][name]
      sq_final_S = np.asarray(final.sq_norm)[:S]
      results[name][L] = DepthResult(
          norms,
          np.concatenate([sq_norms_SxL[:, :L], sq_final_S[:, None]], axis=1),
          ln_jac_SxLxk[:, :L],
          np.asarray(final.ln_jac_final)[:S],
          np.asarray(final.loss)[:S],
      )
  return results


def _pad_depths(ct: dict, K_pad: int) -> dict:
  """Zero cotangents appended up to ``K_pad`` depths, so the backward step compiles for
  two batch sizes (1 and all depths) instead of one per number of active depths."""
  return {name: jnp.pad(v, [(0, K_pad - v.shape[0])] + [(0, 0)] * (v.ndim - 1)) for name, v in ct.items()}


class SharedPass(NamedTuple):
  """Architectures and depths measured from one forward pass."""

  archs: tuple[str, ...]
  depths: tuple[int, ...]


def passes_for(arch_names, depths) -> list[SharedPass]:
  """How to group (archs, depths) into shared passes: every depth-independent
  architecture in one pass over all depths; each depth-dependent one alone, per depth."""
  depths = tuple(sorted({int(L) for L in depths}))
  shared = tuple(a for a in arch_names if not architectures.get(a).depends_on_depth)
  passes = [SharedPass(shared, depths)] if shared else []
  for a in arch_names:
    if architectures.get(a).depends_on_depth:
      passes.extend(SharedPass((a,), (L,)) for L in depths)
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
      {name: np.concatenate([r.grad_norms[name] for r in results]) for name in results[0].grad_norms},
      np.concatenate([r.sq_norms for r in results]),
      np.concatenate([r.ln_jacobian for r in results]),
      np.concatenate([r.ln_jacobian_final for r in results]),
      np.concatenate([r.loss for r in results]),
  )
