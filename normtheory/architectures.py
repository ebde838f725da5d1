"""Where the LayerNorm goes: one pure layer function per architecture.

Each architecture maps one sample's hidden state ``x_nxd`` entering layer ``l``
(1-based, possibly a traced integer) of an ``L``-layer model to the state leaving
it, says what happens after the last layer (``final_ln``), and how its weights are
scaled at init. ``Attn`` and ``FFN`` are :func:`normtheory.layers.attention` and
:func:`normtheory.layers.ffn` (:func:`attn` and :func:`mlp` read their kind, mask and
positions from the Config); ``LN`` is the Config's norm (:func:`normalize`: LayerNorm
by default; DyT and Derf, which carry parameters, at Post's and Pre's two norm sites,
site k reading the layer's ``f"{norm}{k}_*"`` parameters).
States carry any leading batch axes, ``(..., n, d)``; a dual-stream architecture
(ResiDual) stacks its two streams on one more leading axis, ``(2, ..., n, d)``.

References:
  Xiong et al. 2020, Table 1 (Post-LN, Pre-LN).
  Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", Fig. 2 and
    Table 1 (DeepNorm; encoder-only constants).
  Ding et al. 2021 "CogView" (Sandwich-LN); Kim et al. 2025, "Peri-LN".
  Sun et al. 2025, "The Curse of Depth in Large Language Models" (LayerNorm Scaling).
  Li et al. 2024, "Mix-LN: Unleashing the Power of Deeper Layers by Combining
    Pre-LN and Post-LN".
  Xie et al. 2023, "ResiDual: Transformer with Dual Residual Connections"
    (arXiv:2304.14802), Section 3 (Pre-Post-LN), and the authors' code
    (github.com/microsoft/ResiDual, ``ResiDualEncoderLayer``, ``ResiDualEncoder``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import jax
import jax.numpy as jnp

from normtheory.config import Config
from normtheory.layers import Params, Taps, attention, ffn, layer_norm, normalize


class LayerFn(Protocol):
  """Layer ``l`` (1-based, maybe traced) of an ``L``-layer model: state in, state out."""

  def __call__(self, p: Params, x_nxd: jax.Array, l, L, cfg: Config, taps: Taps | None = None) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A LayerNorm placement.

  Attributes:
    name: the ``Config.arch`` value.
    layer: the :class:`LayerFn` of layer ``l`` of ``L``.
    final_ln: whether a LayerNorm follows the last layer (its Jacobian is reported
      as layer L + 1).
    weight_scale: ``L -> beta``, the factor on the Xavier draws of W_V, W_O, W1, W2.
    depends_on_depth: whether layer ``l`` depends on ``L`` (then the prefix of a
      deep model is not a shallower model, and depths cannot share a forward pass).
    dual: the state is two streams stacked on a leading axis, ``(a, b)`` (ResiDual):
      ``a`` feeds the sublayers, ``b`` sums their outputs.
  """

  name: str
  layer: LayerFn
  final_ln: bool
  weight_scale: Callable = lambda L: 1.0
  depends_on_depth: bool = False
  dual: bool = False

  def init(self, x_nxd: jax.Array) -> jax.Array:
    """The state entering layer 1 from the model's input (both streams start at x)."""
    return jnp.stack([x_nxd, x_nxd]) if self.dual else x_nxd

  def hidden(self, state: jax.Array) -> jax.Array:
    """The residual stream whose size the tables report (``||x_l||²/n``): the state
    itself, or a dual architecture's running-sum stream b."""
    return state[1] if self.dual else state

  def final(self, state: jax.Array, eps: float, taps: Taps | None = None, cfg: Config | None = None,
            head: Params | None = None) -> jax.Array:
    """The representation the loss reads, from the state after the last layer.

    With ``cfg`` the final norm is ``cfg.norm`` (site 1 of ``head``'s norm parameters);
    without it, LayerNorm with ``eps``."""
    norm = (lambda z: layer_norm(z, eps, taps)) if cfg is None else (lambda z: normalize(z, cfg, taps, head, 1))
    if self.dual:
      return state[0] + norm(state[1])
    return norm(state) if self.final_ln else state


def attn(x_nxd, p, taps, cfg):
  """The Config's attention: heads, causal mask, RoPE (:func:`normtheory.layers.attention`)."""
  return attention(x_nxd, p, taps, cfg.heads, cfg.causal, cfg.positions == "rope")


def mlp(x_nxd, p, taps, cfg):
  """The Config's FFN: ReLU, GELU or SwiGLU (:func:`normtheory.layers.ffn`)."""
  return ffn(x_nxd, p, taps, cfg.ffn)


def post_ln_layer(p, x_nxd, l, L, cfg, taps=None):
  """Post-LN: ``x3 = LN(x + Attn(x))``; ``x_{l+1} = LN(x3 + FFN(x3))``."""
  x3_nxd = normalize(x_nxd + attn(x_nxd, p, taps, cfg), cfg, taps, p, 1)
  return normalize(x3_nxd + mlp(x3_nxd, p, taps, cfg), cfg, taps, p, 2)


def pre_ln_layer(p, x_nxd, l, L, cfg, taps=None):
  """Pre-LN: ``x3 = x + Attn(LN(x))``; ``x_{l+1} = x3 + FFN(LN(x3))``; final LN."""
  x3_nxd = x_nxd + attn(normalize(x_nxd, cfg, taps, p, 1), p, taps, cfg)
  return x3_nxd + mlp(normalize(x3_nxd, cfg, taps, p, 2), p, taps, cfg)


def deepnorm_alpha(L):
  """DeepNorm's residual scale for an encoder-only model, ``(2L)^(1/4)``."""
  return (2.0 * L) ** 0.25


def deepnorm_beta(L):
  """DeepNorm's init scale of W_V, W_O, W1, W2 for an encoder-only model, ``(8L)^(-1/4)``."""
  return (8.0 * L) ** -0.25


def deepnorm_layer(p, x_nxd, l, L, cfg, taps=None):
  """DeepNorm: Post-LN with the residual scaled by alpha:
  ``x3 = LN(alpha x + Attn(x))``; ``x_{l+1} = LN(alpha x3 + FFN(x3))``."""
  alpha = deepnorm_alpha(L)
  x3_nxd = normalize(alpha * x_nxd + attn(x_nxd, p, taps, cfg), cfg, taps)
  return normalize(alpha * x3_nxd + mlp(x3_nxd, p, taps, cfg), cfg, taps)


def sandwich_layer(p, x_nxd, l, L, cfg, taps=None):
  """Sandwich / Peri-LN: LN on each sublayer's input and output:
  ``x3 = x + LN(Attn(LN(x)))``; ``x_{l+1} = x3 + LN(FFN(LN(x3)))``; final LN."""
  x3_nxd = x_nxd + normalize(attn(normalize(x_nxd, cfg, taps), p, taps, cfg), cfg, taps)
  return x3_nxd + normalize(mlp(normalize(x3_nxd, cfg, taps), p, taps, cfg), cfg, taps)


def lns_layer(p, x_nxd, l, L, cfg, taps=None):
  """LayerNorm Scaling: Pre-LN with every LN output multiplied by ``1/sqrt(l)``:
  ``x3 = x + Attn(LN(x)/sqrt(l))``; ``x_{l+1} = x3 + FFN(LN(x3)/sqrt(l))``; final LN."""
  scale = jax.lax.rsqrt(jnp.asarray(l, x_nxd.dtype))
  x3_nxd = x_nxd + attn(scale * normalize(x_nxd, cfg, taps), p, taps, cfg)
  return x3_nxd + mlp(scale * normalize(x3_nxd, cfg, taps), p, taps, cfg)


def mixln_post_layers(L, rho):
  """Number of leading Post-LN layers in Mix-LN, ``floor(rho L)``."""
  return jnp.floor(rho * jnp.asarray(L, jnp.float32) + 1e-6).astype(jnp.int32)


def mixln_layer(p, x_nxd, l, L, cfg, taps=None):
  """Mix-LN: the Post-LN layer for ``l <= floor(rho L)``, the Pre-LN layer after; final LN.

  Written as one program with selects (``l`` may be traced): each dense product
  runs once on the input its branch would give it, so gradients are exact; both
  branches' LayerNorm inputs are tapped.
  """
  post = l <= mixln_post_layers(L, cfg.mixln_rho)
  pick = lambda a, b: jnp.where(post, a, b)
  r_nxd = x_nxd + attn(pick(x_nxd, normalize(x_nxd, cfg, taps)), p, taps, cfg)
  x3_nxd = pick(normalize(r_nxd, cfg, taps), r_nxd)
  s_nxd = x3_nxd + mlp(pick(x3_nxd, normalize(x3_nxd, cfg, taps)), p, taps, cfg)
  return pick(normalize(s_nxd, cfg, taps), s_nxd)


def residual_layer(p, x_2xnxd, l, L, cfg, taps=None):
  """ResiDual (Pre-Post-LN): two streams through the same sublayers F (attention, then FFN).

  With the state ``(a, b)`` and, for each sublayer F in turn (Xie et al. 2023, Section 3;
  ``ResiDualEncoderLayer.forward`` in the authors' code):
  ``a <- LN(a + F(a))`` (the Post-LN stream) and ``b <- b + F(a)`` (the dual stream:
  the running sum of every sublayer's output). Both streams start at the input x
  (:meth:`Architecture.init`), and the model's output is ``a_N + LN(b_N)``
  (:meth:`Architecture.final`; the authors' ``x * alpha + layer_norm(res)``, alpha = 1).
  """
  a_nxd, b_nxd = x_2xnxd[0], x_2xnxd[1]
  f_nxd = attn(a_nxd, p, taps, cfg)
  a_nxd, b_nxd = normalize(a_nxd + f_nxd, cfg, taps), b_nxd + f_nxd
  f_nxd = mlp(a_nxd, p, taps, cfg)
  a_nxd, b_nxd = normalize(a_nxd + f_nxd, cfg, taps), b_nxd + f_nxd
  return jnp.stack([a_nxd, b_nxd])


ARCHITECTURES: dict[str, Architecture] = {
    "post": Architecture("post", post_ln_layer, final_ln=False),
    "pre": Architecture("pre", pre_ln_layer, final_ln=True),
    "deepnorm": Architecture("deepnorm", deepnorm_layer, False, deepnorm_beta, depends_on_depth=True),
    "sandwich": Architecture("sandwich", sandwich_layer, final_ln=True),
    "lns": Architecture("lns", lns_layer, final_ln=True),
    "mixln": Architecture("mixln", mixln_layer, final_ln=True, depends_on_depth=True),
    "residual": Architecture("residual", residual_layer, final_ln=True, dual=True),
}


def get(name: str) -> Architecture:
  """The architecture called ``name``; ``ValueError`` listing the known ones otherwise."""
  if name not in ARCHITECTURES:
    raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {name!r}")
  return ARCHITECTURES[name]
