"""The Transformer as a Flax NNX module: the straightforward, reference path.

All L layers' weights are materialised as one stacked module (created with
``nnx.vmap`` over layer indices, run with ``nnx.scan``), and ``jax.grad`` of the
loss with respect to the whole parameter pytree gives every d×d weight gradient.
This is the path a reader checks against the paper; :mod:`normtheory.engine`
computes the same numbers without the O(L·d²) memory.

References:
  Xiong et al. 2020, Table 1 and Section 3.3; Flax NNX "scan over layers" example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normtheory import architectures, sampling
from normtheory.config import PARAM_NAMES, Config


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
    for name, value in weights.items():
      setattr(self, name, nnx.Param(value))

  def __call__(self, x_nxd: jax.Array, index: jax.Array) -> jax.Array:
    p = {name: getattr(self, name)[...] for name in (*PARAM_NAMES, "b1", "b2")}
    return self.arch.layer(p, x_nxd, index, self.L, self.cfg)


class Transformer(nnx.Module):
  """L stacked layers plus the architecture's final LayerNorm (if any)."""

  def __init__(self, cfg: Config, p_key: jax.Array):
    self.arch = architectures.get(cfg.arch)
    self.eps = cfg.eps
    self.L = cfg.L
    make_layers = nnx.vmap(lambda index: Layer(cfg, p_key, index), in_axes=0, out_axes=0)
    self.layers = make_layers(jnp.arange(1, cfg.L + 1))

  def __call__(self, x_nxd: jax.Array, unroll: bool = False) -> tuple[jax.Array, jax.Array]:
    """Forward pass.

    Args:
      x_nxd: one sample's input.
      unroll: run the layers in a Python loop instead of ``nnx.scan`` (same maths).

    Returns:
      (x_final_nxd, sq_norms_L): the representation the loss reads, and
      ``||x_l||²/n`` (mean squared row norm) of the state entering each layer.
    """
    indices_L = jnp.arange(1, self.L + 1)
    if unroll:
      graphdef, state = nnx.split(self.layers)
      sq_norms = []
      for i in range(self.L):
        sq_norms.append((x_nxd**2).sum(-1).mean())
        x_nxd = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))(x_nxd, indices_L[i])
      sq_norms_L = jnp.stack(sq_norms)
    else:

      @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
      def run(layer, x_nxd, index):
        return layer(x_nxd, index), (x_nxd**2).sum(-1).mean()

      x_nxd, sq_norms_L = run(self.layers, x_nxd, indices_L)
    return self.arch.final(x_nxd, self.eps), sq_norms_L
