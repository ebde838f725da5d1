"""The building blocks of the Transformer, as pure functions of one sample.

Arrays carry any leading batch axes before the last two, ``(..., n, d)``: a sample
holds B sequences that share its weights (``Config.batch``), attention mixes
positions within each sequence only, and a dense product treats all B·n rows alike.

Every dense product goes through :class:`Taps`, which can (a) record the product's
input and (b) add a zero perturbation to its output. Differentiating the loss with
respect to those zero perturbations gives the output cotangent ``delta`` of every
product, and with the recorded input ``a`` the exact weight gradient is
``dLoss/dW = a^T delta``, without ever forming the d×d gradient (see
:mod:`normtheory.engine`). With no taps the functions are the plain forward pass.

A weight is an array, or a conditional weight (:class:`normtheory.sampling.ConditionalWeight`,
``Config.weights = "conditional"``): then :func:`dense` draws only what the product
shows of it, from its Gaussian conditional law (:func:`conditional_matmul`), and the
layers' code is the same for both.

References:
  Xiong et al. 2020, Table 1 (the Post-LN and Pre-LN layers) and Section 3.3.
  Bayati & Montanari 2011, Lemma 1 (the conditional law, SPEC §6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST

Params = dict[str, jax.Array]  # one layer's (or the read-out's) weights by name


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



def is_conditional(w) -> bool:
  """Whether ``w`` is a conditional weight (it draws its own normals) rather than an array."""
  return hasattr(w, "forward_normals")


def _qr(m_axb: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Reduced Householder QR ``m = Q R`` (Q: a×k orthonormal, R: k×b, k = min(a, b));
  orthonormal for any rank, and deterministic in ``m``. (LAPACK through OpenBLAS: see the
  package's ``OPENBLAS_NUM_THREADS``.)"""
  return jnp.linalg.qr(m_axb, mode="reduced")


@jax.custom_vjp
def _conditional_rows(a_rxi: jax.Array, w) -> jax.Array:
  q_ixk, r_kxr = _qr(a_rxi.T)
  return jnp.matmul(r_kxr.T, w.forward_normals(q_ixk), precision=HIGHEST)


def _conditional_rows_fwd(a_rxi, w):
  q_ixk, r_kxr = _qr(a_rxi.T)
  g_kxo = w.forward_normals(q_ixk)
  return jnp.matmul(r_kxr.T, g_kxo, precision=HIGHEST), (q_ixk, g_kxo, w)


def _conditional_rows_bwd(residuals, delta_rxo):
  """The input's cotangent ``δ Wᵀ = (Q G_f δᵀ + (I - QQᵀ) G_b R_δ)ᵀ`` with ``δᵀ = Q_δ R_δ``:
  the seen part of W from the forward draw, the unseen part fresh (G_b)."""
  q_ixk, g_kxo, w = residuals
  qd_oxj, rd_jxr = _qr(delta_rxo.T)
  seen_ixr = jnp.matmul(q_ixk, jnp.matmul(g_kxo, delta_rxo.T, precision=HIGHEST), precision=HIGHEST)
  fresh_ixr = jnp.matmul(w.backward_normals(qd_oxj), rd_jxr, precision=HIGHEST)
  unseen_ixr = fresh_ixr - jnp.matmul(q_ixk, jnp.matmul(q_ixk.T, fresh_ixr, precision=HIGHEST), precision=HIGHEST)
  return (seen_ixr + unseen_ixr).T, None


_conditional_rows.defvjp(_conditional_rows_fwd, _conditional_rows_bwd)


def conditional_matmul(a_nxi: jax.Array, w) -> jax.Array:
  """``a @ W`` for a conditional weight W, exact in law (SPEC §6), over all leading rows of ``a``.

  With the r rows of ``a`` flattened and ``aᵀ = Q R``: forward ``a W = Rᵀ G_f``,
  ``G_f = Qᵀ W`` drawn (r × d_out); backward (a custom VJP) ``W δᵀ = Q G_f δᵀ +
  (I - QQᵀ) G_b R_δ`` with ``δᵀ = Q_δ R_δ`` and ``G_b = W Q_δ`` drawn fresh (d_in × r).
  Both draws come from W's keys, so recomputing the product (the engine's backward
  step does) gives the same ``G_f``. Exact in law when W meets ``a`` once forward and
  ``δ`` once backward, with fewer rows than its input width. Cost O(r·d) normals and
  O(r²·d) flops, never a d×d matrix.

  References:
    Bayati & Montanari 2011, Lemma 1; Bolthausen 2014.

  Args:
    a_nxi: the product's input, any leading axes.
    w: the :class:`normtheory.sampling.ConditionalWeight`, shape ``(i, o)``.

  Returns:
    ``(..., o)``.
  """
  *rows, i = a_nxi.shape
  o = w.shape[1]
  if w.zero:
    return jnp.zeros((*rows, o), a_nxi.dtype)
  return _conditional_rows(a_nxi.reshape(-1, i), w).reshape(*rows, o)


def dense(name: str, a_nxi: jax.Array, w_ixo, taps: Taps | None) -> jax.Array:
  """``a @ w`` at full float precision over the last axis, tapped under ``name``; ``w`` an
  array or a conditional weight (:func:`conditional_matmul`)."""
  if is_conditional(w_ixo):
    out_nxo = conditional_matmul(a_nxi, w_ixo)
  else:
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


def ln_jacobian_means(ln_inputs: list[jax.Array], eps: float) -> jax.Array:
  """``(k,)``: :func:`ln_jacobian_norm` averaged over all rows, at each of k LayerNorm
  inputs (``Taps.ln_inputs``); shape ``(0,)`` when there are none."""
  if not ln_inputs:
    return jnp.zeros((0,))
  return jnp.stack([ln_jacobian_norm(z, eps).mean() for z in ln_inputs])


def attention(x_nxd: jax.Array, p: Params, taps: Taps | None, heads: int = 1) -> jax.Array:
  """Multi-head self-attention within each sequence, no biases, no mask.

  ``q = x W_Q``, ``k = x W_K``, ``v = x W_V`` (each d×d) are split into ``heads``
  heads of width ``c = d / heads`` (head h: features h·c .. (h+1)·c - 1); head h
  mixes ``softmax(q_h k_h^T / sqrt(c)) v_h``; the heads are concatenated and
  multiplied by ``W_O``. With W_Q = W_K = 0 every score vanishes and the softmax is
  exactly uniform, 1/n, for any number of heads: the output is
  ``mean_j x_j W_V W_O`` at every position.

  References:
    Vaswani et al. 2017, "Attention Is All You Need", Eq. (1) and Section 3.2.2.
  """
  q_nxd = dense("W_Q", x_nxd, p["W_Q"], taps)
  k_nxd = dense("W_K", x_nxd, p["W_K"], taps)
  v_nxd = dense("W_V", x_nxd, p["W_V"], taps)
  *batch, n, d = x_nxd.shape
  c = d // heads
  split = lambda a_nxd: jnp.moveaxis(a_nxd.reshape(*batch, n, heads, c), -2, -3)  # (..., heads, n, c)
  q_hxnxc, k_hxnxc, v_hxnxc = split(q_nxd), split(k_nxd), split(v_nxd)
  scale = jnp.sqrt(c).astype(x_nxd.dtype)
  scores_hxnxn = jnp.matmul(q_hxnxc, jnp.swapaxes(k_hxnxc, -1, -2), precision=HIGHEST) / scale
  mixed_hxnxc = jnp.matmul(jax.nn.softmax(scores_hxnxn, axis=-1), v_hxnxc, precision=HIGHEST)
  mixed_nxd = jnp.moveaxis(mixed_hxnxc, -3, -2).reshape(*batch, n, d)
  return dense("W_O", mixed_nxd, p["W_O"], taps)


def ffn(x_nxd: jax.Array, p: Params, taps: Taps | None) -> jax.Array:
  """``ReLU(x W1 + b1) W2 + b2``."""
  h_nxf = jax.nn.relu(dense("W1", x_nxd, p["W1"], taps) + p["b1"])
  return dense("W2", h_nxf, p["W2"], taps) + p["b2"]


def sinusoidal_positions(n: int, d: int, dtype=jnp.float32) -> jax.Array:
  """The fixed position code ``(n, d)``: feature 2k is ``sin(i / 10000^(2k/d))``, 2k+1 its cos.

  Each row's mean square is exactly 1/2 for even d (sin² + cos² = 1 per pair).

  References:
    Vaswani et al. 2017, "Attention Is All You Need", Section 3.5.
  """
  pos_nx1 = jnp.arange(n, dtype=dtype)[:, None]
  freq_h = 10000.0 ** (-jnp.arange(0, d, 2, dtype=dtype) / d)
  angle_nxh = pos_nx1 * freq_h
  return jnp.stack([jnp.sin(angle_nxh), jnp.cos(angle_nxh)], axis=-1).reshape(n, -1)[:, :d]


def embedding_scale(vocab: int, d: int) -> float:
  """Factor on the Xavier-Gaussian embedding E (entries of variance 2/(V+d)) that gives the
  token part entries of variance 1/2, ``sqrt((V + d)/4)``: with the positions' mean
  square 1/2, an embedded row has ``E||x_i||²/d = 1``, as a Gaussian input row."""
  return ((vocab + d) / 4.0) ** 0.5


def embed(tokens_n: jax.Array, e_vxd, dtype=None) -> jax.Array:
  """Token embedding plus positions: ``x_i = sqrt((V+d)/4) E[t_i] + P_i``, shape ``(..., n, d)``.

  The gather is the product of E with one-hot rows, whose orthonormal basis is the
  one-hot vectors of the tokens present: a conditional E draws exactly those rows
  (:meth:`normtheory.sampling.ConditionalWeight.rows`), which is its conditional law.

  Args:
    tokens_n: int tokens, any leading batch axes.
    e_vxd: the token embedding E (V×d, Xavier-Gaussian at init), an array or a
      conditional weight.
    dtype: the conditional rows' dtype (arrays keep their own).
  """
  vocab, d = e_vxd.shape
  rows_nxd = e_vxd.rows(tokens_n, dtype) if is_conditional(e_vxd) else e_vxd[tokens_n]
  positions_nxd = sinusoidal_positions(tokens_n.shape[-1], d, rows_nxd.dtype)
  return embedding_scale(vocab, d) * rows_nxd + positions_nxd
