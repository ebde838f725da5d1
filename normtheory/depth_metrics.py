"""Effective depth at init: how much each layer changes the residual stream.

Pre-LN iterates ``x_{l+1} = x_l + F_l(LN(x_l))`` with branch outputs of comparable
size, so ``||x_l||`` grows like sqrt(l) (or l, once the branches align) while each
branch stays O(1): the relative change a late layer makes shrinks like
``l^(-1/2)``, and a deep Pre-LN stack behaves like a wider, shallower one. Post-LN
renormalises after every layer, so every layer moves the stream by the same amount.

For every layer l = 1..L of one sample (hidden state ``x_l`` entering layer l, an
n×d matrix; ``x_{L+1}`` leaves the last layer; ``x_final = arch.final(x_{L+1})``):

* ``rel_update``: ``||x_{l+1} - x_l||_F / ||x_l||_F``. The numerator is the residual
  branch as the stream sees it, ``F_l(x_l) = x_{l+1} - x_l``. For Pre-LN, Sandwich,
  LNS and Mix-LN's Pre-LN layers this is exactly the attention plus FFN branch
  outputs; for Post-LN and DeepNorm (and Mix-LN's Post-LN layers) it includes the
  LayerNorms, which rescale the whole stream, so it is the change of the
  normalised state (both x_l and x_{l+1} have row norms sqrt(d) for l >= 2).
* ``cos_sim``: cosine similarity of the flattened ``x_l`` and ``x_{l+1}``.
* ``removal_angle``: ``arccos(cos)/pi`` between the flattened final representations
  of the model with and without layer l (layer l skipped: ``x_{l+1} := x_l``; every
  other layer keeps its weights). Computed as ``(2/pi) atan2(||u - v||, ||u + v||)``
  for the unit vectors u, v, which equals ``arccos(<u, v>)/pi`` and is exactly 0 for
  identical representations and accurate for small angles.

Under conditional weights (``Config.weights``) ``rel_update`` and ``cos_sim`` are exact in
law (one forward pass, each weight used once) and equal to the gradient engine's
forward pass; ``removal_angle`` is not measured (its L + 1 passes use every weight again
on other inputs, a joint law the one-sided conditioning does not give).

The exponent of ``rel_update ∝ l^(-kappa)`` is fitted by
:func:`normtheory.fit.fit_update_exponent` (the estimators' one home).

Samples use the engine's keys (:mod:`normtheory.sampling`): seed s draws from
``fold_in(key, s)``, layer l's weights from ``layer_params(cfg, params_key, l,
arch.weight_scale(L))``, inputs from ``inputs(cfg, data_key)``; so the samples are
those of :func:`normtheory.grad_norms` with the same key.

References:
  Su 2022, "Why is Pre Norm worse than Post Norm?" (kexue.fm/archives/9009): the
    effective-depth argument.
  Xiong et al. 2020, Table 1 (the layers); Wang et al. 2022, "DeepNet", Section 2
    (Pre-LN's bottom layers get larger gradients than its top layers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from normtheory import architectures, engine, sampling, schema
from normtheory.config import Config
from normtheory.measure import as_key, seed_indices

METRICS = ("rel_update", "cos_sim", "removal_angle")
COLUMNS = schema.DEPTH_COLUMNS


def _unit(x: jax.Array) -> jax.Array:
  flat = x.reshape(-1)
  return flat / jnp.linalg.norm(flat)


def angle(a: jax.Array, b: jax.Array) -> jax.Array:
  """Angular distance ``arccos(cos(a, b))/pi`` in [0, 1] of two arrays, flattened.

  ``2 atan2(||u - v||, ||u + v||)/pi`` for the unit vectors u, v: accurate for small
  angles, and written through ``a - b`` so that equal inputs give exactly 0 under jit.
  """
  a_k, b_k = a.reshape(-1), b.reshape(-1)
  inv_a, inv_b = 1.0 / jnp.linalg.norm(jnp.stack([a_k, b_k]), axis=-1)
  u_minus_v = (a_k - b_k) * inv_a + b_k * (inv_a - inv_b)
  u_plus_v = (a_k + b_k) * inv_a - b_k * (inv_a - inv_b)
  return 2.0 * jnp.arctan2(jnp.linalg.norm(u_minus_v), jnp.linalg.norm(u_plus_v)) / jnp.pi


def stack_metrics(layer: Callable, final: Callable, x_nxd: jax.Array, L: int, removal: bool = True) -> dict[str, jax.Array]:
  """Per-layer effective-depth metrics of any stack of L layers.

  Args:
    layer: ``(x_nxd, l) -> x_nxd``, layer l (1-based; l is a traced int32).
    final: ``x_nxd -> x_nxd``, the map from the last layer's output to what the loss reads.
    x_nxd: the input state.
    L: the number of layers.
    removal: also compute ``removal_angle`` (L + 1 more forward passes).

  Returns:
    dict metric -> ``(L,)`` array, layer 1 first (see the module docstring).
  """
  layers_L = jnp.arange(1, L + 1, dtype=jnp.int32)

  def forward(x, l):  # the layer's scalars, not its states: memory flat in L
    x_next = layer(x, l)
    rel_update = jnp.linalg.norm((x_next - x).reshape(-1)) / jnp.linalg.norm(x.reshape(-1))
    return x_next, (rel_update, jnp.vdot(_unit(x), _unit(x_next)))

  _, (rel_update_L, cos_L) = jax.lax.scan(forward, x_nxd, layers_L)
  if not removal:
    return {"rel_update": rel_update_L, "cos_sim": cos_L}

  # Model r skips layer r (r = 0 skips none), one forward pass each; the reference
  # output is computed the same way, so skipping an exact identity gives angle 0.
  # (Sequential over r: vmapping over r inside the seed vmap gave NaNs on XLA CPU.)
  def output_without(r):
    def step(x, l):
      return jnp.where(l == r, x, layer(x, l)), None

    return final(jax.lax.scan(step, x_nxd, layers_L)[0])

  out_Rxnxd = jax.lax.map(output_without, jnp.arange(L + 1, dtype=jnp.int32))
  removal_L = jax.vmap(lambda out: angle(out, out_Rxnxd[0]))(out_Rxnxd[1:])
  return {"rel_update": rel_update_L, "cos_sim": cos_L, "removal_angle": removal_L}


def sample_metrics(cfg: Config, seed_key: jax.Array) -> dict[str, jax.Array]:
  """:func:`stack_metrics` of the sampled model ``cfg`` for one seed key.

  The state is the whole sample: its B sequences (``Config.batch``) and, for a
  dual-stream architecture (ResiDual), both streams, flattened together.
  """
  arch = architectures.get(cfg.arch)
  p_key = sampling.params_key(seed_key)
  x = sampling.inputs(cfg, sampling.data_key(seed_key)).x
  state = arch.init(sampling.first_state(cfg, sampling.head_params(cfg, p_key), x))
  scale = arch.weight_scale(cfg.L)

  def layer(x, l):
    p = sampling.for_cell(sampling.layer_params(cfg, p_key, l, scale), cfg.arch, draws=cfg.conditional_draws)
    return arch.layer(p, x, l, cfg.L, cfg)

  head = sampling.head_params(cfg, p_key)
  return stack_metrics(layer, lambda x: arch.final(x, cfg.eps, None, cfg, head), state, cfg.L,
                       removal=cfg.weights == "explicit")


def depth_metrics(cfg: Config, seeds: int | Sequence[int] = 8, key=0) -> pd.DataFrame:
  """Per-layer rel_update, cos_sim and removal_angle of ``cfg`` at init, for every seed.

  Example:
    >>> f = depth_metrics(Config(arch="pre", d=16, L=3), seeds=2)
    >>> f.shape  # seeds × layers × metrics rows
    (18, 18)

  Args:
    cfg: the model.
    seeds: number of samples (indices 0..seeds-1) or explicit seed indices.
    key: base PRNG key or int seed; sample s draws from ``fold_in(key, s)``.

  Returns:
    tidy DataFrame, one row per (seed, layer, metric), columns ``COLUMNS`` (no
    ``removal_angle`` rows under conditional weights).
  """
  return depth_metrics_of_depths(cfg, (cfg.L,), seeds, key)


def shares_one_pass(cfg: Config) -> bool:
  """Whether the metrics of ``cfg`` at depth L are those of its deepest model's first L layers:
  no ``removal_angle`` (conditional weights) and layers that do not depend on L."""
  return cfg.weights == "conditional" and not architectures.get(cfg.arch).depends_on_depth


def depth_metrics_of_depths(cfg: Config, depths: Sequence[int], seeds: int | Sequence[int] = 8, key=0) -> pd.DataFrame:
  """:func:`depth_metrics` of ``cfg`` at each of ``depths``, one frame (``cfg.L`` ignored).

  Where :func:`shares_one_pass`, one forward pass of the deepest model gives every depth's
  rows (its first L layers are the L-layer model); otherwise each depth is its own pass.

  Args:
    cfg: the model (its L replaced by each of ``depths``).
    depths: the depths.
    seeds, key: as in :func:`depth_metrics`.

  Returns:
    the frames of the depths, concatenated in the order of ``depths``.
  """
  seeds_S = seed_indices(seeds)
  depths = [int(L) for L in depths]
  passes = [max(depths)] if shares_one_pass(cfg) else depths
  with jax.enable_x64(cfg.dtype == "float64"):
    keys_S = sampling.seed_keys(as_key(key), seeds_S)
    values = {}
    for L_pass in passes:
      pass_cfg = dataclasses.replace(cfg, L=L_pass)
      per_seed = jax.jit(lambda keys: engine.map_seeds(lambda k: sample_metrics(pass_cfg, k), keys))  # not vmap:
      values[L_pass] = {name: np.asarray(v, np.float64) for name, v in per_seed(keys_S).items()}  # chunk-free bits
  frames = []
  for L in depths:
    of_pass = values[L if L in values else max(depths)]
    frames.append(schema.tidy_frame(schema.DEPTH_FILE, schema.cell_of(dataclasses.replace(cfg, L=L)), seeds_S,
                                    np.arange(1, L + 1), {name: of_pass[name][:, :L] for name in METRICS
                                                          if name in of_pass}, "metric"))
  return pd.concat(frames, ignore_index=True)
