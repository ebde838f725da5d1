"""The building blocks of one Transformer layer, as pure functions of one sample.

Every dense product goes through :class:`Taps`, which can (a) record the product's
input and (b) add a zero perturbation to its output. Differentiating the loss with
respect to those zero perturbations gives the output cotangent ``delta`` of every
product, and with the recorded input ``a`` the exact weight gradient is
``dLoss/dW = a^T delta``, without ever forming the d×d gradient (see
:mod:`normtheory.engine`). With no taps the functions are the plain forward pass.

References:
  Xiong et al. 2020, Table 1 (the Post-LN and Pre-LN layers) and Section 3.3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


class Taps:
  """Records dense-product inputs and adds zero perturbations to their outputs.

  Args:
    zeros: name -> array added to that product's output (zeros at the primal
      point; the variable ``jax.vjp`` differentiates with respect to).
  """

  def __init__(self, zeros: dict[str, jax.Array] | None = None):
    self.zeros = zeros
    self.inputs: dict[str, jax.Array] = {}
    self.ln_inputs: list[jax.Array] = []



def dense(name: str, a_nxi: jax.Array, w_ixo: jax.Array, taps: Taps | None) -> jax.Array:
  """``a @ w`` at full float precision, tapped under ``name``."""
  out_nxo = jnp.matmul(a_nxi, w_ixo, precision=HIGHEST)
  if taps is not None:
    taps.inputs[name] = a_nxi
    if taps.zeros is not None:
      out_nxo = out_nxo + taps.zeros[name]
  return out_nxo


def layer_norm(x_nxd: jax.Array, eps: float, taps: Taps | None = None) -> jax.Array:
  """``(x - mean(x)) / sqrt(var(x) + eps)`` over features, gain 1 and bias 0."""
  if taps is not None:
    taps.ln_inputs.append(x_nxd)
  centred_nxd = x_nxd - x_nxd.mean(-1, keepdims=True)
  return centred_nxd * jax.lax.rsqrt((centred_nxd**2).mean(-1, keepdims=True) + eps)


def ln_jacobian_norm(x_nxd: jax.Array, eps: float) -> jax.Array:
  """Spectral norm of the LayerNorm Jacobian at each row, in closed form.

  With ``s = sqrt(var + eps)`` and ``z = (x - mean)/s`` the Jacobian is
  ``(I - 11^T/d - z z^T/d)/s``: eigenvalue ``1/s`` on the complement of 1 and z,
  ``eps/(s (var+eps))`` on z, 0 on 1. So ``||J||_2 = 1/s`` (d >= 3), which at
  eps = 0 is Lemma 3's ``sqrt(d)/||x - mean(x)||``.

  References:
    Xiong et al. 2020, Lemma 3.

  Returns:
    array of shape ``x_nxd.shape[:-1]``.
  """
  return jax.lax.rsqrt(x_nxd.var(-1) + eps)


def attention(x_nxd: jax.Array, p: dict, taps: Taps | None) -> jax.Array:
  """Single-head self-attention ``softmax(q k^T / sqrt(d)) v W_O`` (no biases).

  With W_Q = W_K = 0 the scores vanish and the softmax is exactly uniform, 1/n.
  """
  q_nxd = dense("W_Q", x_nxd, p["W_Q"], taps)
  k_nxd = dense("W_K", x_nxd, p["W_K"], taps)
  v_nxd = dense("W_V", x_nxd, p["W_V"], taps)
  scores_nxn = jnp.matmul(q_nxd, k_nxd.T, precision=HIGHEST) / jnp.sqrt(x_nxd.shape[-1]).astype(x_nxd.dtype)
  mixed_nxd = jnp.matmul(jax.nn.softmax(scores_nxn, axis=-1), v_nxd, precision=HIGHEST)
  return dense("W_O", mixed_nxd, p["W_O"], taps)


def ffn(x_nxd: jax.Array, p: dict, taps: Taps | None) -> jax.Array:
  """``ReLU(x W1 + b1) W2 + b2``."""
  h_nxf = jax.nn.relu(dense("W1", x_nxd, p["W1"], taps) + p["b1"])
  return dense("W2", h_nxf, p["W2"], taps) + p["b2"]
