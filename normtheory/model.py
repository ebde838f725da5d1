"""The Transformer as a Flax NNX module: the straightforward, reference path.

All L layers' weights are materialised as one stacked module (created with
``nnx.vmap`` over layer indices, run with ``nnx.scan``), and ``jax.grad`` of the
loss with respect to the whole parameter pytree gives every d×d weight gradient
(and, for text inputs, the V×d gradient of the token embedding E, shared with the
read-out when tied). This is the path a reader checks against the paper;
:mod:`normtheory.engine` computes the same numbers without the O(L·d²) memory.

References:
  Xiong et al. 2020, Table 1 and Section 3.3; Flax NNX "scan over layers" example.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from normtheory import architectures, sampling
from normtheory.config import Config
from normtheory.layers import Params


class Forward(NamedTuple):
  """The forward pass of one sample.

  Attributes:
    x_final: the representation the loss reads.
    sq_norms: ``(L + 1,)`` ``||x_l||²/n`` (mean over the B·n rows) of the reported
      stream entering each layer, then of the state leaving the last layer.
  """

  x_final: jax.Array
  sq_norms: jax.Array


class Layer(nnx.Module):
  """One layer's parameters at initialization and its forward pass.

  Args:
    cfg: the model.
    p_key: the sample's params key (weights of layer l come from ``fold_in(p_key, l)``).
    index: 1-based layer index.
  """

  def __init__(self, cfg: Config, p_key: jax.Array, index: jax.Array):
    self.arch = architectures.get(cfg.arch)
    self.cfg = cfg
    self.L = cfg.L
    weights = sampling.layer_params(cfg, p_key, index, self.arch.weight_scale(cfg.L))
    self.names = tuple(weights)
    for name, value in weights.items():
      setattr(self, name, nnx.Param(value))

  def __call__(self, x_nxd: jax.Array, index: jax.Array) -> jax.Array:
    p = {name: getattr(self, name)[...] for name in self.names}
    return self.arch.layer(p, x_nxd, index, self.L, self.cfg)


def _sq_norm(x_nxd: jax.Array) -> jax.Array:
  return (x_nxd**2).sum(-1).mean()


class Transformer(nnx.Module):
  """The embedding (text inputs), L stacked layers, the architecture's final map, and
  the read-out weights (``W_emb``, ``E``) and the final norm's (DyT, Derf) as parameters."""

  def __init__(self, cfg: Config, p_key: jax.Array):
    self.arch = architectures.get(cfg.arch)
    self.cfg = cfg
    self.head_names = tuple(sampling.head_params(cfg, p_key))
    for name, value in sampling.head_params(cfg, p_key).items():
      setattr(self, name, nnx.Param(value))
    make_layers = nnx.vmap(lambda index: Layer(cfg, p_key, index), in_axes=0, out_axes=0)
    self.layers = make_layers(jnp.arange(1, cfg.L + 1))

  def head(self) -> Params:
    """The read-out, embedding and final-norm weights by name."""
    return {name: getattr(self, name)[...] for name in self.head_names}

  def __call__(self, x, unroll: bool = False) -> Forward:
    """Forward pass.

    Args:
      x: one sample's inputs (``sampling.inputs(...).x``: Gaussian rows or tokens).
      unroll: run the layers in a Python loop instead of ``nnx.scan`` (same maths).
    """
    arch = self.arch
    state = arch.init(sampling.first_state(self.cfg, self.head(), x))
    indices_L = jnp.arange(1, self.cfg.L + 1)
    if unroll:
      graphdef, layer_state = nnx.split(self.layers)
      sq_norms = []
      for i in range(self.cfg.L):
        sq_norms.append(_sq_norm(arch.hidden(state)))
        state = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], layer_state))(state, indices_L[i])
      sq_norms_L = jnp.stack(sq_norms)
    else:

      @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
      def run(layer, state, index):
        return layer(state, index), _sq_norm(arch.hidden(state))

      state, sq_norms_L = run(self.layers, state, indices_L)
    sq_norms = jnp.concatenate([sq_norms_L, _sq_norm(arch.hidden(state))[None]])
    return Forward(arch.final(state, self.cfg.eps, None, self.cfg, self.head()), sq_norms)
