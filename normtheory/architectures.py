"""Where the LayerNorm goes: one pure layer function per architecture.

Each architecture maps one sample's hidden state ``x_nxd`` entering layer ``l``
(1-based) of an ``L``-layer model to the state leaving it, and says what happens
after the last layer (``final``) and how its weights are scaled at init.

References:
  Xiong et al. 2020, Table 1: Post-LN and Pre-LN.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from normtheory.layers import Taps, attention, ffn, layer_norm


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A LayerNorm placement.

  Attributes:
    name: the ``Config.arch`` value.
    layer: ``(p, x_nxd, l, L, eps, taps) -> x_nxd`` for layer ``l`` of ``L``.
    final_ln: whether a LayerNorm follows the last layer.
    weight_scale: ``L -> beta``, the factor on the Xavier draws of W_V, W_O, W1, W2.
    depends_on_depth: whether layer ``l`` depends on ``L`` (then the prefix of a
      deep model is not a shallower model, and depths cannot share a forward pass).
  """

  name: str
  layer: Callable[..., jax.Array]
  final_ln: bool
  weight_scale: Callable[[int], float] = lambda L: 1.0
  depends_on_depth: bool = False

  def final(self, x_nxd: jax.Array, eps: float, taps: Taps | None = None) -> jax.Array:
    """The representation the loss reads, from the state after the last layer."""
    return layer_norm(x_nxd, eps, taps) if self.final_ln else x_nxd


def post_ln_layer(p, x_nxd, l, L, eps, taps=None):
  """Post-LN (Table 1, left): x3 = LN(x + Attn(x)); x_{l+1} = LN(x3 + FFN(x3))."""
  x3_nxd = layer_norm(x_nxd + attention(x_nxd, p, taps), eps, taps)
  return layer_norm(x3_nxd + ffn(x3_nxd, p, taps), eps, taps)


def pre_ln_layer(p, x_nxd, l, L, eps, taps=None):
  """Pre-LN (Table 1, right): x3 = x + Attn(LN(x)); x_{l+1} = x3 + FFN(LN(x3))."""
  x3_nxd = x_nxd + attention(layer_norm(x_nxd, eps, taps), p, taps)
  return x3_nxd + ffn(layer_norm(x3_nxd, eps, taps), p, taps)


ARCHITECTURES: dict[str, Architecture] = {
    "post": Architecture("post", post_ln_layer, final_ln=False),
    "pre": Architecture("pre", pre_ln_layer, final_ln=True),
}


def get(name: str) -> Architecture:
  """The architecture called ``name``; ``ValueError`` listing the known ones otherwise."""
  if name not in ARCHITECTURES:
    raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {name!r}")
  return ARCHITECTURES[name]
