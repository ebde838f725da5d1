"""Exact per-layer weight-gradient norms, one layer at a time, for many depths at once.

The reference path (:mod:`normtheory.model`) materialises all L layers and all
L d×d gradients. This engine computes the same numbers with memory flat in depth:

* **Each weight drawn once, kept while memory allows.** Layer l's weights are a pure
  function of ``fold_in(params key, l)`` (:func:`normtheory.sampling.layer_params`).
  The forward step draws them and hands the drawn matrices back; the backward step of
  a kept layer reads them instead of drawing again. How many seeds one call holds and
  how many layers' weights it keeps follow from a memory budget (:func:`plan_memory`):
  every layer is kept when that fits two seeds per device, else every layer is drawn
  again in the backward pass (measured faster), as with ``redraw=True`` (the path before
  weights were kept); a fixed seed chunk keeps the layers that fit and redraws the rest.
  Either way the numbers are bit for bit the same. Besides the kept weights only the
  hidden states ``x_l`` (B×n×d per layer) are kept.
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
* **One compilation per shape, reused across depths and losses.** The steps take the
  layer index and L as traced integers, and Python drives the loop over layers; the
  layer steps do not depend on the loss or the inputs, so they are compiled once per
  width for all of them.
* **Seeds over devices.** Every step is a ``shard_map`` over a one-axis mesh of the
  local devices; each device loops over its seeds (:func:`_map`), so a seed's numbers
  do not depend on the chunk size or the number of devices (padding seeds, added
  when the count does not divide, are dropped).

References:
  Xiong et al. 2020, Section 3.3 (the measured quantity, ``||dLoss/dW2^L||_F``);
  Goodfellow 2015, "Efficient per-example gradient computations" (the a^T delta
  Gram identity).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import resource
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from normtheory import architectures, sampling
from normtheory.config import DEFAULT_VOCAB, EMBEDDING, Config, final_param_names, layer_param_names, norm_param_names
from normtheory.layers import HIGHEST, Taps, embedding_scale, ln_jacobian_means
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
    final_grad_norms: param name -> ``(S, 1)``: the final norm's parameters (DyT, Derf
      under Pre-LN; layer L + 1); empty otherwise.
  """

  grad_norms: dict[str, np.ndarray]
  sq_norms: np.ndarray
  ln_jacobian: np.ndarray
  ln_jacobian_final: np.ndarray
  loss: np.ndarray
  final_grad_norms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class _LayerSteps(NamedTuple):
  """The jitted, seed-sharded layer steps of one shared pass (loss-independent)."""

  forward: Callable  # (p_keys, state, normals, l, L) -> arch -> (state, sq_norm, ln_jac_k); weights drawn and dropped
  forward_keep: Callable  # (p_keys, state, l, L) -> (the same, drawn weights name -> (S, i, o))
  backward: Callable  # (p_keys, state, normals, ct_K, l, L) -> arch -> (ct_K, param -> sq grad norm (K,)); redrawn
  backward_kept: Callable  # (weights, state, ct_K, l, L) -> the same, from the weights forward_keep drew
  draw: Callable  # (p_keys, l, L) -> drawn weights name -> (S, i, o): the sampling alone
  forward_normals: Callable  # (p_keys, l, L) -> stream -> product -> (S, r, o): G_f's normals ({}: explicit)
  backward_normals: Callable  # (p_keys, l, L) -> stream -> product -> (S, i, r): G_b's normals ({}: explicit)


class _HeadSteps(NamedTuple):
  """The jitted, seed-sharded steps around the layers: the loss and the embedding's gradient."""

  loss: Callable  # (p_keys, d_keys, state, L) -> arch -> _LossOut
  embedding: Callable  # (p_keys, d_keys, ct_K, readout_K) -> arch -> sq grad norm of E (K,)


class _LossOut(NamedTuple):
  """What the loss step returns for one arch and seed."""

  loss: jax.Array
  ct: jax.Array  # dLoss/dstate after the last layer
  sq_norm: jax.Array  # ||x_{L+1}||²/n
  ln_jac_final: jax.Array  # (k_f,)
  readout_e: jax.Array  # dLoss/dE through a tied read-out (zeros (1,) when untied)
  final_sq: dict  # final-norm param name -> ||dLoss/dparam||² (empty without one)


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


SEED_AXIS = "seeds"


def seed_mesh() -> Mesh:
  """A one-axis mesh over this process's devices; seeds are split along it."""
  return Mesh(np.array(jax.local_devices()), (SEED_AXIS,))


def _layer_config(cfg: Config, arch: str) -> Config:
  """``cfg`` with what the layer steps do not read (arch, L, loss, inputs, read-out) set to
  defaults, so that every loss and input kind of a width shares one compilation."""
  positions = "rope" if cfg.positions == "rope" else "none"  # what the layers read of positions
  return dataclasses.replace(cfg, arch=arch, L=1, loss="linear", vocab=DEFAULT_VOCAB, inputs="gaussian", tied=False,
                             positions=positions)


# Seeds are sharded over every local device; each runs _map over its own seeds.
# Nothing crosses devices, so replication checking is off: with it, the VJP of the
# device-invariant zero perturbations would sum their cotangents over devices.
_SEEDS, _SEEDS_2ND, _REPLICATED = P(SEED_AXIS), P(None, SEED_AXIS), P()


def map_seeds(f, xs):
  """``lax.map(f, xs)``, compiled alike for one row and for many: a seed's numbers do not depend
  on the seeds mapped with it (the engine's steps, :mod:`normtheory.depth_metrics`).

  A loop over seeds, not vmap: each seed runs one per-seed program whatever the chunk
  size or the device count, so both are bit-exact (a vmapped reduction is not). A loop
  over a single row would be compiled differently (slicing an axis of size one is
  simplified away, a loop known to run once is inlined), which changed the last bit of
  some norms when a device held one seed: so one row is looped over as the first of two
  equal rows, with a trip count hidden from the compiler.
  """
  count = jax.tree.leaves(xs)[0].shape[0]
  width = max(count, 2)
  xs = jax.tree.map(lambda v: jnp.concatenate([v] * (width // count)), xs)
  out_shapes = jax.eval_shape(f, jax.tree.map(lambda v: v[0], xs))
  out = jax.tree.map(lambda s: jnp.zeros((width, *s.shape), s.dtype), out_shapes)

  def body(carry):
    i, out = carry
    y = f(jax.tree.map(lambda v: jax.lax.dynamic_index_in_dim(v, i, keepdims=False), xs))
    return i + 1, jax.tree.map(lambda o, v: jax.lax.dynamic_update_index_in_dim(o, v, i, 0), out, y)

  opaque_count = jax.lax.optimization_barrier(jnp.int32(count))
  out = jax.lax.while_loop(lambda carry: carry[0] < opaque_count, body, (jnp.int32(0), out))[1]
  return jax.tree.map(lambda o: o[:count], out)


def _shard(f, in_specs, out_specs):
  return jax.jit(jax.shard_map(f, mesh=seed_mesh(), in_specs=in_specs, out_specs=out_specs, check_vma=False))


def _swap(tree):
  return jax.tree.map(lambda v: v.swapaxes(0, 1), tree)


@functools.lru_cache(maxsize=None)
def _layer_steps(layer_cfg: Config, arch_names: tuple[str, ...]) -> _LayerSteps:
  """Jitted forward and backward steps for models sharing ``layer_cfg`` (from
  :func:`_layer_config`: the steps take l and L as traced integers), one state per
  architecture in ``arch_names``, all reading the same weights (one draw per layer)."""
  archs = {name: architectures.get(name) for name in arch_names}
  weight_scale = archs[arch_names[0]].weight_scale  # equal for every arch of a shared pass
  out_widths = {name: fan_out for name, (_, fan_out) in sampling.weight_shapes(layer_cfg).items()}
  norm_names = norm_param_names(layer_cfg, 2)  # DyT / Derf: the layer's norm parameters
  products = conditional_products(layer_cfg) if layer_cfg.weights == "conditional" else {}
  dtype = jnp.dtype(layer_cfg.dtype)

  def drawn(p_key, l, L):
    return sampling.drawn_params(layer_cfg, p_key, l, weight_scale(L))

  draws = layer_cfg.conditional_draws
  streams = {name: sampling.stream_index(name, draws) for name in arch_names}  # whose normals each arch reads

  def cell_params(p, name, normals):
    """The layer's weights as architecture ``name`` reads them; ``normals``: () (explicit weights), or the
    forward (and backward) normals of its conditional products, drawn ahead (by stream)."""
    p_cell = sampling.for_cell(p, name, draws=draws)
    return sampling.with_draws(p_cell, *(n[streams[name]] for n in normals)) if normals else p_cell

  def normals_one(p_key, l, L, backward):
    """stream -> product -> the normals of ``G_b`` (``backward``) or of ``G_f``, for every conditional product
    of the layer and every stream the pass's architectures read (one under shared draws): drawn by
    programs of their own, so that the forward step and each backward step (one per depth batch) do not
    each compile the sampler; the same numbers as drawing them in the products."""
    p = drawn(p_key, l, L)  # the products' weights, without the constants around them
    out = {}
    for name, stream in streams.items():
      if stream not in out:
        p_cell = sampling.for_cell(p, name, draws=draws)
        out[stream] = {w: p_cell[w].draw_backward(r, dtype) if backward else p_cell[w].draw_forward(r, dtype)
                       for w, (r, _, _) in products.items()}
    return out

  def forward_one(p, x, normals, l, L):
    out = {}
    for name, arch in archs.items():
      taps = Taps()
      x_next = arch.layer(cell_params(p, name, normals), x[name], l, L, layer_cfg, taps)
      out[name] = (x_next, (arch.hidden(x[name]) ** 2).sum(-1).mean(),
                   ln_jacobian_means(taps.ln_inputs, layer_cfg.eps, layer_cfg))
    return out

  def forward_keep_one(p_key, x, l, L):
    w = drawn(p_key, l, L)
    return forward_one(sampling.with_constants(layer_cfg, w), x, (), l, L), w

  def backward_one(p, x, normals, ct, l, L):
    out = {}
    for name, arch in archs.items():
      p_cell = cell_params(p, name, normals)  # conditional weights: every depth's cotangent meets one draw of G_b

      def tapped(x_nxd, z, q, arch=arch, p_cell=p_cell):
        taps = Taps(z)
        return arch.layer(p_cell | q, x_nxd, l, L, layer_cfg, taps), taps.inputs

      q = {k: p_cell[k] for k in norm_names}  # the pointwise norms' parameters: differentiated directly, they are small
      # a zero perturbation on each product's output, on the rows the product meets (uniform attention's
      # W_V and W_O under conditional weights: each sequence's mean row, layers.attention)
      seen = jax.eval_shape(lambda x_nxd: tapped(x_nxd, None, q)[1], x[name])
      zeros = {w: jnp.zeros((*a.shape[:-1], out_widths[w]), a.dtype) for w, a in seen.items()}
      _, vjp, inputs = jax.vjp(tapped, x[name], zeros, q, has_aux=True)
      ct_x_kxnxd, deltas, ct_q = jax.vmap(vjp)(ct[name])
      norm_sq = {k: (v.reshape(v.shape[0], -1) ** 2).sum(-1) for k, v in ct_q.items()}
      out[name] = (ct_x_kxnxd, {w: _sq_grad_norm(inputs[w], deltas[w]) for w in out_widths} | norm_sq)
    return out

  params = lambda p_key, l, L: sampling.layer_params(layer_cfg, p_key, l, weight_scale(L))

  def forward(p_keys_S, x_S, normals_S, l, L):
    return map_seeds(lambda a: forward_one(params(a[0], l, L), a[1], a[2], l, L), (p_keys_S, x_S, normals_S))

  def forward_keep(p_keys_S, x_S, l, L):
    return map_seeds(lambda a: forward_keep_one(*a, l, L), (p_keys_S, x_S))

  def backward_from(weights_of):
    def backward(source_S, x_S, normals_S, ct_K_S, l, L):
      out = map_seeds(lambda a: backward_one(weights_of(a[0], l, L), a[1], a[2], a[3], l, L),
                      (source_S, x_S, normals_S, _swap(ct_K_S)))
      return {name: (_swap(ct_S_K), _swap(sq_S_K)) for name, (ct_S_K, sq_S_K) in out.items()}
    return backward

  def draw(p_keys_S, l, L):
    return map_seeds(lambda k: drawn(k, l, L), p_keys_S)

  def normals_of(backward):
    if not products:
      return lambda p_keys_S, l, L: {}
    return _shard(lambda p_keys_S, l, L: map_seeds(lambda k: normals_one(k, l, L, backward), p_keys_S),
                  (_SEEDS, _REPLICATED, _REPLICATED), _SEEDS)

  seeds, seeds_2nd, rep = _SEEDS, _SEEDS_2ND, _REPLICATED
  backward_kept = backward_from(lambda w, l, L: sampling.with_constants(layer_cfg, w))
  return _LayerSteps(
      _shard(forward, (seeds, seeds, seeds, rep, rep), seeds),
      _shard(forward_keep, (seeds, seeds, rep, rep), (seeds, seeds)),
      _shard(backward_from(params), (seeds, seeds, seeds, seeds_2nd, rep, rep), seeds_2nd),
      _shard(lambda w_S, x_S, ct_K_S, l, L: backward_kept(w_S, x_S, (), ct_K_S, l, L),
             (seeds, seeds, seeds_2nd, rep, rep), seeds_2nd),
      _shard(draw, (seeds, rep, rep), seeds),
      normals_of(backward=False),
      normals_of(backward=True),
  )


def _embedding_sq_grad_norm(arch, tokens, ct, e_shape) -> jax.Array:
  """``||dLoss/dE||_F^2`` from the input state's cotangent, without E (conditional weights).

  ``x_i = c E[t_i] + P_i`` (:func:`normtheory.layers.embed`, ``c`` its scale), so row v of
  dLoss/dE is ``c`` times the sum of the cotangents of the positions holding token v, and
  ``||dLoss/dE||^2 = c^2 sum_ij [t_i = t_j] <g_i, g_j>``: a Gram product over the sample's rows.
  """
  vocab, d = e_shape
  _, vjp = jax.vjp(arch.init, jnp.zeros(ct.shape[1:] if arch.dual else ct.shape, ct.dtype))
  g_rxd = vjp(ct)[0].reshape(-1, d)
  t_r = tokens.reshape(-1)
  same_rxr = (t_r[:, None] == t_r[None, :]).astype(g_rxd.dtype)
  gram_rxr = jnp.matmul(g_rxd, g_rxd.T, precision=HIGHEST)
  return embedding_scale(vocab, d) ** 2 * jnp.maximum((same_rxr * gram_rxr).sum(), 0.0)


@functools.lru_cache(maxsize=None)
def _head_steps(head_cfg: Config, arch_names: tuple[str, ...]) -> _HeadSteps:
  """Jitted loss and embedding steps for models sharing ``head_cfg`` (arch and L ignored)."""
  archs = {name: architectures.get(name) for name in arch_names}
  loss_fn = LOSS_FUNCTIONS[head_cfg.loss]
  eps = head_cfg.eps
  tied = head_cfg.tied
  conditional = head_cfg.weights == "conditional"

  def loss_one(p_key, d_key, x, L):
    target = sampling.inputs(head_cfg, d_key).target
    head = sampling.head_params(head_cfg, p_key)
    out = {}
    for name, arch in archs.items():
      loss_of = lambda state, head, arch=arch: loss_fn(arch.final(state, eps, None, head_cfg, head), target, head)
      if conditional:  # the read-out's draws are this cell's own; of the (untied) head only the final norm's
        cell_head = sampling.for_cell(head, name, L, head_cfg.conditional_draws)  # parameters are differentiated
        final_q = {k: cell_head[k] for k in final_param_names(dataclasses.replace(head_cfg, arch=name))}
        value, (ct, ct_head) = jax.value_and_grad(lambda state, q: loss_of(state, cell_head | q),
                                                  argnums=(0, 1))(x[name], final_q)
      else:
        value, (ct, ct_head) = jax.value_and_grad(loss_of, argnums=(0, 1))(x[name], head)
      taps = Taps()
      arch.final(x[name], eps, taps, head_cfg, head)
      readout_e = ct_head[EMBEDDING] if tied else jnp.zeros((1,), ct.dtype)
      sq_norm = (arch.hidden(x[name]) ** 2).sum(-1).mean()
      final_sq = {k: (ct_head[k] ** 2).sum() for k in final_param_names(dataclasses.replace(head_cfg, arch=name))}
      out[name] = _LossOut(value, ct, sq_norm, ln_jacobian_means(taps.ln_inputs, eps, head_cfg), readout_e, final_sq)
    return out

  def embedding_one(p_key, d_key, ct, readout):
    """``||dLoss/dE||_F^2`` per depth: the input's cotangent scattered into E's rows by
    the VJP of the embedding, plus the tied read-out's part."""
    tokens = sampling.inputs(head_cfg, d_key).x
    e_vxd = sampling.head_params(head_cfg, p_key)[EMBEDDING]
    out = {}
    for name, arch in archs.items():
      if conditional:
        out[name] = jax.vmap(lambda c, arch=arch: _embedding_sq_grad_norm(arch, tokens, c, e_vxd.shape))(ct[name])
        continue
      _, vjp = jax.vjp(lambda e: arch.init(sampling.first_state(head_cfg, {EMBEDDING: e}, tokens)), e_vxd)
      grad_kxvxd = jax.vmap(lambda c: vjp(c)[0])(ct[name]) + (readout[name] if tied else 0.0)
      out[name] = (grad_kxvxd**2).sum((-2, -1))
    return out

  def loss(p_keys_S, d_keys_S, x_S, L):
    return map_seeds(lambda a: loss_one(*a, L), (p_keys_S, d_keys_S, x_S))

  def embedding(p_keys_S, d_keys_S, ct_K_S, readout_K_S):
    return _swap(map_seeds(lambda a: embedding_one(*a), (p_keys_S, d_keys_S, _swap(ct_K_S), _swap(readout_K_S))))

  seeds, seeds_2nd = _SEEDS, _SEEDS_2ND
  return _HeadSteps(
      _shard(loss, (seeds, seeds, seeds, _REPLICATED), seeds),
      _shard(embedding, (seeds, seeds, seeds_2nd, seeds_2nd), seeds_2nd),
  )




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


class _Chunk(NamedTuple):
  """One chunk of seeds, padded to a multiple of the device count, and its keys."""

  S: int  # seeds measured (the padding rows after them are dropped)
  p_keys: jax.Array  # (S_pad,) params keys
  d_keys: jax.Array  # (S_pad,) data keys


def _chunk_keys(keys_S: jax.Array) -> _Chunk:
  S = keys_S.shape[0]
  padded = _padded(S)
  keys_S = jnp.concatenate([keys_S, jnp.repeat(keys_S[-1:], padded - S)])  # padding rows are dropped
  return _Chunk(S, jax.vmap(sampling.params_key)(keys_S), jax.vmap(sampling.data_key)(keys_S))


def _padded(seeds: int) -> int:
  """Seeds per call once padded to a multiple of the local device count."""
  return -(-seeds // jax.local_device_count()) * jax.local_device_count()


# Per-layer scalars are copied to numpy every this many layers: a small device array costs a few KB
# of bookkeeping, ~16 of them per layer (0.2 GB over 6144 layers, seen in the RSS).
_TO_HOST_EVERY = 256


def _to_host(entries: list) -> None:
  """Replace the device arrays among ``entries`` (the last ``_TO_HOST_EVERY``) by numpy copies."""
  entries[-_TO_HOST_EVERY:] = jax.device_get(entries[-_TO_HOST_EVERY:])


def _measure_chunk(
    cfg: Config, arch_names: tuple[str, ...], depths: tuple[int, ...], keys_S: jax.Array, kept_layers: int | None
) -> dict[str, dict[int, DepthResult]]:
  """All depths and architectures of one shared forward pass, for one chunk of seeds.

  ``kept_layers``: the forward pass keeps the drawn weights of layers 1..kept_layers and
  the backward pass reads them (the other layers are drawn again); ``None``: every layer
  is drawn again by the forward step that does not hand its weights back (``redraw``).
  """
  steps = _layer_steps(_layer_config(cfg, arch_names[0]), arch_names)
  head = _head_steps(dataclasses.replace(cfg, arch=arch_names[0], L=1), arch_names)
  S, p_keys, d_keys = _chunk_keys(keys_S)
  L_max = max(depths)
  L_arg = jnp.int32(L_max)  # only read by depth-dependent architectures (one depth per pass)
  # placed as the steps place their outputs, so layer 1's steps are the programs of every other layer
  x = jax.device_put(first_states(cfg, arch_names, p_keys, d_keys), NamedSharding(seed_mesh(), _SEEDS))
  xs, stats, kept = [x], [], {}  # device arrays, read back once the pass is done
  for l in range(1, L_max + 1):
    if kept_layers is None:
      out = steps.forward(p_keys, x, _step_normals(steps, p_keys, l, L_arg, False), jnp.int32(l), L_arg)
    else:
      out, weights = steps.forward_keep(p_keys, x, jnp.int32(l), L_arg)
      if l <= kept_layers:
        kept[l] = weights
    x = {name: o[0] for name, o in out.items()}
    xs.append(x)
    stats.append({name: o[1:] for name, o in out.items()})
    if l % _TO_HOST_EVERY == 0:
      _to_host(stats)

  losses, active, ct, readout = {}, [], None, None  # ct: arch -> (K, S, ...), one cotangent per active depth
  grad_sq = []  # per layer, from the top: arch -> param -> (K_pad, S_pad)
  for l in range(L_max, 0, -1):
    if l in depths:
      losses[l] = head.loss(p_keys, d_keys, xs[l], jnp.int32(l))
      new = {name: v.ct[None] for name, v in losses[l].items()}
      new_readout = {name: v.readout_e[None] for name, v in losses[l].items()}
      ct = new if ct is None else {name: jnp.concatenate([ct[name], new[name]]) for name in arch_names}
      readout = new_readout if readout is None else {
          name: jnp.concatenate([readout[name], new_readout[name]]) for name in arch_names}
      active.append(l)
    K = len(active)
    K_pad = _depth_batch(K, depths, cfg)
    ct_pad = _pad_depths(ct, K_pad)
    if l in kept:
      out = steps.backward_kept(kept.pop(l), xs[l - 1], ct_pad, jnp.int32(l), L_arg)
    else:
      out = steps.backward(p_keys, xs[l - 1], _step_normals(steps, p_keys, l, L_arg, True), ct_pad, jnp.int32(l), L_arg)
    xs[l] = None  # no longer needed: free it
    ct = {name: o[0][:K] for name, o in out.items()}
    grad_sq.append({name: o[1] for name, o in out.items()})
    if l % _TO_HOST_EVERY == 0:
      _to_host(grad_sq)
  embedding_sq = (
      {name: np.asarray(v)[:, :S] for name, v in head.embedding(p_keys, d_keys, ct, readout).items()}
      if cfg.inputs == "text" else None
  )

  stats, grad_sq = jax.device_get((stats, grad_sq))
  results = {name: {} for name in arch_names}
  for name in arch_names:
    sq_norms_SxL = np.stack([s[name][0][:S] for s in stats], axis=1)
    ln_jac_SxLxk = np.stack([s[name][1][:S] for s in stats], axis=1)
    for k, L in enumerate(active):
      # grad_sq[i] belongs to layer L_max - i and holds the depths active then, in order.
      norms = {
          w: np.sqrt(np.stack([grad_sq[L_max - l][name][w][k, :S] for l in range(1, L + 1)], axis=1))
          for w in layer_param_names(cfg)
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
          {w: np.sqrt(np.asarray(v)[:S])[:, None] for w, v in final.final_sq.items()},
      )
  return results


def _step_normals(steps: _LayerSteps, p_keys: jax.Array, l: int, L_arg: jax.Array, backward: bool) -> tuple:
  """What a step of layer ``l`` reads as ``normals``: () under explicit weights; the conditional products'
  normals of ``G_f``, and of ``G_b`` for a backward step, each drawn by its own program."""
  forward = steps.forward_normals(p_keys, jnp.int32(l), L_arg)
  if not forward:
    return ()
  return (forward, steps.backward_normals(p_keys, jnp.int32(l), L_arg)) if backward else (forward,)


# Conditional weights pad every backward step to all depths unless that adds more than this much work:
# (extra depth-steps over the pass) x (d + d_ff). Padding to powers of two instead compiles more backward
# programs, each 3.6-5.4 s at d = 1024 (2026-12-03, 2 cores), while a depth-step costs 1.6e-7 to 2.7e-7 s
# per seed and unit of d + d_ff (d = 1024 .. 65 536): for a pass of 8 seeds, 2 programs (about 9 s) pay
# for about 9 s / (8 x 2e-7 s) = 5.6e6 units. On the grid 6..96 (90 extra depth-steps) that is d = d_ff
# up to 16 384; the grid 6..6144 at d = 512 pads to powers of two.
PAD_ALL_DEPTHS_WORK = 2**22


def _depth_batch(K: int, depths: tuple[int, ...], cfg: Config) -> int:
  """The batch of cotangents the backward step runs for K active depths of ``depths``: 1 or all
  of them (two compilations); conditional weights, whose per-depth work (Gram factors and
  products of r columns) is most of a backward step, pad K to the next power of two at most
  (a few more compilations, far less work on long depth grids) where padding to all depths would
  add more than :data:`PAD_ALL_DEPTHS_WORK`."""
  if K == 1:
    return 1
  if cfg.weights == "explicit" or _pads_all_depths(tuple(sorted(set(depths))), cfg.d + cfg.d_ff):
    return len(depths)
  return min(len(depths), 1 << (K - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _pads_all_depths(depths: tuple[int, ...], width: int) -> bool:
  """Whether padding every backward step of ``depths`` to all of them, rather than to powers of two,
  adds at most :data:`PAD_ALL_DEPTHS_WORK` (extra depth-steps x ``width``)."""
  K_of_layer = [sum(L >= l for L in depths) for l in range(1, max(depths) + 1)]
  extra = sum(len(depths) - min(len(depths), 1 << (K - 1).bit_length()) for K in K_of_layer if K > 1)
  return extra * width <= PAD_ALL_DEPTHS_WORK


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


MEMORY_FRACTION = 0.25  # of the free memory: the default budget of one call's buffers


# The most one engine call holds by default under conditional weights. Their calls keep nothing but the
# hidden states of their seeds, and more seeds per call buy little: `--d 512 --L 6..6144 --seeds 8` ran
# 4 min 7 s at 4.70 GB peak RSS with 8 seeds per call, 4 min 36 s at 2.91 GB with 4 (README, "Cost, measured").
CONDITIONAL_CALL_BYTES = 5 * 2**29


def default_max_memory(weights: str = "explicit") -> int:
  """The default memory budget of one engine call: a quarter of the memory free now, on
  this process's devices (host RAM on CPU; on accelerators the sum over local devices of
  what their allocator has left, ``memory_stats``), and at most :data:`CONDITIONAL_CALL_BYTES`
  under conditional ``weights``. Unknown free memory: no limit (explicit weights)."""
  devices = jax.local_devices()
  cap = CONDITIONAL_CALL_BYTES if weights == "conditional" else UNLIMITED
  try:
    if devices[0].platform == "cpu":
      free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
      stats = [device.memory_stats() for device in devices]
      free = sum(s["bytes_limit"] - s["bytes_in_use"] for s in stats)
  except (ValueError, OSError, TypeError, KeyError):
    return cap
  return min(cap, int(free * MEMORY_FRACTION))


UNLIMITED = 2**62  # a budget that every plan fits
# Held back from a whole-process budget for what the engine's buffers are not: XLA's compilations
# and its working memory beside the planned buffers (measured, README "Performance").
RUNTIME_RESERVE = 256 * 2**20


def resident_bytes() -> int:
  """This process's resident memory now (Linux: ``VmRSS``; elsewhere its peak so far)."""
  try:
    with open("/proc/self/status") as status:
      return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
  except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def give_freed_memory_back() -> bool:
  """Return the memory this process has freed to the OS (glibc's ``malloc_trim``), so that its
  resident memory is what it holds. glibc serves buffers below its (growing) mmap threshold from
  its heap and keeps the pages it frees: without this between engine calls, a sweep's second call
  of 4 seeds peaked 0.25 GB above its first (d = 512, 24 layers kept). Returns whether memory was
  released (False off glibc)."""
  try:
    return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
  except (OSError, AttributeError):
    return False


# Resident memory one compiled conditional step program adds, per architecture of its pass: the
# RSS of a d = 512 Post+Pre sweep rose by 80-95 MB at each new backward program (depth batch).
CONDITIONAL_PROGRAM_BYTES = 48 * 2**20


def program_bytes(cfg: Config, arch_names, depths) -> int:
  """An estimate of the memory the compiled steps of one shared pass hold beyond
  :data:`RUNTIME_RESERVE`: conditional weights' programs (a forward step, the loss and one backward
  step per depth batch, :func:`_depth_batch`) are large; explicit weights' are within the reserve."""
  if cfg.weights != "conditional":
    return 0
  batches = {_depth_batch(K, depths, cfg) for K in range(1, len(depths) + 1)}
  return CONDITIONAL_PROGRAM_BYTES * len(arch_names) * (len(batches) + 2)


def call_budget(process_bytes: int, programs: int = 0) -> int:
  """The bytes one engine call may hold so that the whole process, which holds
  :func:`resident_bytes` now, stays within ``process_bytes``: what is left of it less
  :data:`RUNTIME_RESERVE` and ``programs`` (:func:`program_bytes`), at least 0. Meant to be taken
  once, before the first call: memory a call frees is what the next call reuses.
  """
  return max(0, process_bytes - resident_bytes() - RUNTIME_RESERVE - programs)


class SeedBytes(NamedTuple):
  """What one seed of an engine call holds, in bytes (an estimate of the large buffers)."""

  fixed: int  # whatever is kept: hidden states, cotangents, one layer's weights and VJP, read-out
  per_kept_layer: int  # one kept layer's drawn weights


def seed_bytes(cfg: Config, arch_names, depths) -> SeedBytes:
  """The memory one seed of a shared pass over ``arch_names`` and ``depths`` needs.

  Args:
    cfg: the model (its arch and L ignored).
    arch_names: the pass's architectures (a dual-stream one counts twice).
    depths: the pass's depths.

  Returns:
    :class:`SeedBytes`: a call of ``c`` seeds keeping ``m`` layers holds about
    ``padded(c) * (fixed + m * per_kept_layer)`` bytes.
  """
  item = jnp.dtype(cfg.dtype).itemsize
  shapes = sampling.weight_shapes(cfg)
  layer = sum(i * o for i, o in shapes.values())
  rows = cfg.batch * cfg.n
  streams = sum(2 if architectures.get(a).dual else 1 for a in arch_names)
  K = len(set(depths))
  states = (max(depths) + 1 + 2 * K) * streams * rows * cfg.d  # hidden states; cotangents in and out
  if cfg.weights == "conditional":  # per product: Q, G_f, and per depth G_b C and the transients, r columns each;
    # G_f's and G_b's normals drawn ahead of the step (every seed's at once)
    work = (6 + 4 * K) * streams * rows * sum(i + o for i, o in shapes.values())
    readout = (2 + 2 * K) * rows * (cfg.vocab + cfg.d) * streams
    return SeedBytes(item * (states + work + readout), 0)
  gram_dearer = cfg.batch > 1 and rows * (cfg.d + cfg.d_ff) > cfg.d * cfg.d_ff  # _sq_grad_norm forms a^T delta
  work = (2 + (K * streams if gram_dearer else 0)) * layer  # one layer's weights and its VJP's transients
  vocab_rows = cfg.vocab * (2 + K if cfg.inputs == "text" else 1)  # W_emb; text: E and one E gradient per depth
  kept = sum(i * o for name, (i, o) in shapes.items() if name in sampling.drawn_names(cfg))
  return SeedBytes(item * (states + work + vocab_rows * cfg.d), item * kept)


# Keeping pays only with several seeds per call: measured on 2 CPU cores (README, Performance), d = 512
# kept for 3 seeds per call ran 0.81x its redrawn time and d = 1024 0.99x (at 7x its memory), while
# d = 1024 kept (91 layers) for one seed per call ran 1.39x.
KEPT_SEEDS_PER_DEVICE = 2


class MemoryPlan(NamedTuple):
  """How one shared pass is cut into engine calls."""

  chunk: int  # seeds per call
  kept_layers: int | None  # layers 1..kept_layers keep their weights; None: every layer redrawn (redraw)


def plan_memory(
    cfg: Config, arch_names, depths, seeds: int, max_memory: int, chunk: int | None = None, redraw: bool = False
) -> MemoryPlan:
  """Seeds per call and kept layers of one shared pass, within ``max_memory`` bytes.

  Every layer's weights are kept, in as few calls as then fit (as even as the device
  count allows), when a call can keep them all for :data:`KEPT_SEEDS_PER_DEVICE` seeds per
  device (or for every seed, if fewer); otherwise every layer is drawn again in the backward
  pass, with as many seeds per call as then fit. With a fixed ``chunk`` the call keeps the
  weights of as many layers as fit (the bottom ones) and draws the others again.

  Args:
    cfg, arch_names, depths: the pass (:func:`seed_bytes`).
    seeds: how many seeds the pass measures.
    max_memory: the budget in bytes (:func:`default_max_memory`).
    chunk: seeds per call, if fixed; then only the kept layers are planned.
    redraw: keep no weights (every layer drawn twice, the path before weights were kept).

  Conditional weights (``cfg.weights``) are never kept: a conditional weight is its key,
  so drawing it again in the backward pass is what keeping it would be.

  Returns:
    :class:`MemoryPlan`.
  """
  need = seed_bytes(cfg, arch_names, depths)
  devices = jax.local_device_count()
  most_seeds = lambda per_seed: min(seeds, max_memory // per_seed // devices * devices)  # 0: not one call fits
  if not (redraw or cfg.weights == "conditional"):  # explicit weights that may be kept
    L_max = max(depths)
    if chunk is not None:  # a fixed chunk keeps the bottom layers that fit
      chunk = min(chunk, seeds)
      return MemoryPlan(chunk, int(np.clip((max_memory // _padded(chunk) - need.fixed) // need.per_kept_layer,
                                           0, L_max)))
    full = most_seeds(need.fixed + L_max * need.per_kept_layer)
    if full >= min(seeds, KEPT_SEEDS_PER_DEVICE * devices):  # every layer of two seeds per device: keep
      return MemoryPlan(_balanced(seeds, full), L_max)
  # every layer drawn again (a conditional weight is its key: drawn again at no cost)
  return MemoryPlan(min(chunk, seeds) if chunk else _balanced(seeds, max(1, most_seeds(need.fixed))), None)


def _balanced(seeds: int, most: int) -> int:
  """Seeds per call for ``seeds`` seeds in as few calls of at most ``most`` seeds as possible,
  as even as a multiple of the device count allows (fewer call shapes to compile)."""
  calls = -(-seeds // most)
  return min(most, _padded(-(-seeds // calls)))


def plan_passes(
    cfg: Config, arch_names, depths, seeds: int, max_memory: int | None = None, chunk: int | None = None,
    redraw: bool = False,
) -> list[tuple[SharedPass, MemoryPlan]]:
  """The shared passes of :func:`measure_archs` (:func:`passes_for`), each with its
  :class:`MemoryPlan` (:func:`plan_memory`; ``max_memory`` None: :func:`default_max_memory`)."""
  max_memory = default_max_memory(cfg.weights) if max_memory is None else int(max_memory)
  return [(p, plan_memory(cfg, p.archs, p.depths, seeds, max_memory, chunk, redraw))
          for p in passes_for(tuple(dict.fromkeys(arch_names)), depths)]


def measure_archs(
    cfg: Config,
    arch_names,
    depths,
    seeds_S: np.ndarray,
    base_key: jax.Array,
    chunk: int | None = None,
    max_memory: int | None = None,
    redraw: bool = False,
) -> dict[str, dict[int, DepthResult]]:
  """Exact per-layer gradient norms of ``cfg`` for several architectures and depths.

  Architectures whose layers do not depend on L share one forward and one backward
  pass, and each layer's weights are drawn once for all of them (same keys, so the
  same weights, as the architectures get when measured one at a time) and kept for
  the backward pass where ``max_memory`` allows (:func:`plan_memory`, per pass).

  Args:
    cfg: the model; its arch and L are replaced by each of ``arch_names`` and ``depths``.
    arch_names: architectures to measure.
    depths: the depths to measure.
    seeds_S: seed indices; seed s uses key ``fold_in(base_key, s)``.
    base_key: the base PRNG key.
    chunk: seeds per compiled call (``None``: from ``max_memory``). Results do not depend on it.
    max_memory: bytes one call may hold (``None``: :func:`default_max_memory`).
    redraw: draw every layer's weights again in the backward pass instead of keeping them
      (the path before weights were kept, for timing it). Results do not depend on it.

  Returns:
    arch -> depth -> :class:`DepthResult`, seeds in the order of ``seeds_S``.
  """
  arch_names = tuple(dict.fromkeys(arch_names))
  seeds_S = np.asarray(seeds_S)
  parts = {name: {} for name in arch_names}
  with jax.enable_x64(cfg.dtype == "float64"):
    for (pass_archs, pass_depths), plan in plan_passes(cfg, arch_names, depths, len(seeds_S), max_memory, chunk, redraw):
      for start in range(0, len(seeds_S), plan.chunk):
        keys_S = sampling.seed_keys(base_key, seeds_S[start : start + plan.chunk])
        for name, by_depth in _measure_chunk(cfg, pass_archs, pass_depths, keys_S, plan.kept_layers).items():
          for L, result in by_depth.items():
            parts[name].setdefault(L, []).append(result)
        give_freed_memory_back()  # what this call freed, the next one would otherwise find added to the RSS
  return {name: {L: _concat(rs) for L, rs in sorted(by_depth.items())} for name, by_depth in parts.items()}


def measure_depths(
    cfg: Config, depths, seeds_S: np.ndarray, base_key: jax.Array, chunk: int | None = None, **memory
) -> dict[int, DepthResult]:
  """:func:`measure_archs` for the one architecture ``cfg.arch``: depth -> DepthResult.
  ``memory``: ``max_memory`` and ``redraw`` of :func:`measure_archs`."""
  return measure_archs(cfg, (cfg.arch,), depths, seeds_S, base_key, chunk, **memory)[cfg.arch]


def draw_weights(
    cfg: Config, arch_names, depths, seeds_S: np.ndarray, base_key: jax.Array, chunk: int | None = None,
    max_memory: int | None = None,
) -> int:
  """Draw every weight that :func:`measure_archs` with the same arguments draws once, and
  do nothing else: the same PRNG, shapes, passes, chunks and sharded steps. Its time is
  the sampling floor of that call.

  Returns:
    the number of normals drawn.

  Raises:
    ValueError: conditional weights (nothing is drawn before the products need it).
  """
  if cfg.weights != "explicit":
    raise ValueError(f"draw_weights draws explicit weights only; got weights={cfg.weights!r}")
  seeds_S = np.asarray(seeds_S)
  per_layer_seed = sum(i * o for name, (i, o) in sampling.weight_shapes(cfg).items()
                       if name in sampling.drawn_names(cfg))
  normals = 0
  with jax.enable_x64(cfg.dtype == "float64"):
    for (pass_archs, pass_depths), plan in plan_passes(cfg, arch_names, depths, len(seeds_S), max_memory, chunk):
      steps = _layer_steps(_layer_config(cfg, pass_archs[0]), pass_archs)
      L_max = max(pass_depths)
      for start in range(0, len(seeds_S), plan.chunk):
        chunk_keys = _chunk_keys(sampling.seed_keys(base_key, seeds_S[start : start + plan.chunk]))
        for l in range(1, L_max + 1):
          jax.block_until_ready(steps.draw(chunk_keys.p_keys, jnp.int32(l), jnp.int32(L_max)))
        normals += chunk_keys.S * L_max * per_layer_seed
  return normals


def conditional_products(cfg: Config) -> dict[str, tuple[int, int, int]]:
  """Each drawn weight's conditional product as ``(r, d_in, d_out)``: the rows r it meets are B·n,
  but B (each sequence's mean row) for W_V and W_O under uniform attention without a mask
  (:func:`normtheory.layers.attention`)."""
  mean_row = cfg.attention == "uniform" and not cfg.causal
  shapes = sampling.weight_shapes(cfg)
  return {name: (cfg.batch if mean_row and name in ("W_V", "W_O") else cfg.batch * cfg.n, *shapes[name])
          for name in sampling.drawn_names(cfg)}


def normals_drawn(cfg: Config, arch_names, depths, seeds: int) -> int:
  """How many Gaussian normals :func:`measure_archs` draws for ``seeds`` seeds, each weight kept
  (explicit weights: every weight once, in full; conditional: each product's draws, SPEC §6).

  Conditional weights draw, per product on r rows (:func:`conditional_products`), ``G_f`` (r × d_out) in the forward
  step and again in the backward step that recomputes it, and one ``G_b`` (d_in × r) that
  every depth's cotangent meets, for each stream of normals the pass's architectures read (one
  under ``Config.conditional_draws = "shared"``); the read-out draws per depth and architecture.

  Args:
    cfg: the model (its arch and L ignored).
    arch_names, depths: the call's architectures and depths.
    seeds: the number of seeds.

  Returns:
    the count.
  """
  shapes = sampling.weight_shapes(cfg)
  drawn = [shapes[name] for name in sampling.drawn_names(cfg)]
  rows, V, d = cfg.batch * cfg.n, cfg.vocab, cfg.d
  readout = cfg.loss == "xent" and not cfg.tied
  # conditional: G_f twice (forward, recomputed) and G_b once, per layer and architecture
  conditional_layer = sum(r * (i + 2 * o) for r, i, o in conditional_products(cfg).values())
  total = 0
  for p in passes_for(tuple(dict.fromkeys(arch_names)), depths):
    L_max, A = max(p.depths), len(p.archs)
    if cfg.weights == "explicit":
      per_seed = L_max * sum(i * o for i, o in drawn) + V * d * (int(readout) + int(cfg.inputs == "text"))
    else:
      streams = len({sampling.stream_index(a, cfg.conditional_draws) for a in p.archs})
      per_seed = L_max * streams * conditional_layer
      per_seed += len(p.depths) * A * (2 * rows * V + d * rows) * int(readout) + rows * d * int(cfg.inputs == "text")
    total += seeds * per_seed
  return total


def _concat(results: list[DepthResult]) -> DepthResult:
  return DepthResult(
      {name: np.concatenate([r.grad_norms[name] for r in results]) for name in results[0].grad_norms},
      np.concatenate([r.sq_norms for r in results]),
      np.concatenate([r.ln_jacobian for r in results]),
      np.concatenate([r.ln_jacobian_final for r in results]),
      np.concatenate([r.loss for r in results]),
      {name: np.concatenate([r.final_grad_norms[name] for r in results]) for name in results[0].final_grad_norms},
  )
