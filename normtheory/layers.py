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


def _norm(x: jax.Array) -> jax.Array:
  """The Euclidean norm of a vector, scaled by its largest entry first (no underflow of the squares)."""
  largest = jnp.max(jnp.abs(x))
  safe = jnp.where(largest > 0, largest, 1)
  return largest * jnp.sqrt(jnp.sum((x / safe) ** 2))


def _qr_rows(m_kxa: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Householder QR of ``mᵀ`` (a×k, a >= k), on its rows: ``m = Rᵀ Qᵀ`` with ``Qᵀ`` (k×a)
  orthonormal rows and R (k×k) upper triangular; Q orthonormal for any rank (a zero
  column reflects nothing), and deterministic in ``m``.

  Written in ``jax.numpy`` (k reflections in a ``fori_loop``, O(a·k²) flops, rows contiguous)
  rather than LAPACK's ``geqrf``: on CPU, jaxlib runs a vmapped ``geqrf`` as tasks on XLA's
  intra-op thread pool and waits for them on a pool thread, and two such QRs scheduled at
  once can wait on each other forever (seen here: sweeps stuck with every thread in a futex
  wait, two of them inside ``lapack_sgeqrf_ffi`` -> ``jax::ParallelBatchMap`` ->
  ``BlockingCounter::Wait``).

  References:
    Golub & Van Loan, Matrix Computations (4th ed.), Algorithm 5.2.1 (Householder QR).
  """
  k, a = m_kxa.shape
  if a < k:
    raise ValueError(f"_qr_rows: needs at most as many rows as columns, got {m_kxa.shape}")
  columns_a = jnp.arange(a)
  # A column left at rounding level (dependent rows: uniform attention repeats one row n times) is not
  # reflected: reflecting its rounding residue would divide by a norm that shrinks by eps each step and
  # underflows (seen: Q's rows off orthonormal by 300 at a = 1024). Its rows of Qᵀ stay orthonormal.
  negligible = a ** 0.5 * jnp.finfo(m_kxa.dtype).eps * jnp.max(jax.vmap(_norm)(m_kxa))

  def reflect(j, carry):  # m <- m H_j, H_j = I - 2 v vᵀ zeroing column j of mᵀ below its diagonal
    m_kxa, v_kxa = carry
    x_a = jnp.where(columns_a >= j, m_kxa[j], 0)
    x_norm = _norm(x_a)
    # the sign that avoids cancellation; an entry at rounding level (rows of disjoint support, as ReLU's
    # zeros give) takes +1, so that the backward step's recomputed QR reflects as the forward step's did
    sign = jnp.where(m_kxa[j, j] >= -negligible, 1, -1).astype(m_kxa.dtype)
    v_a = x_a + sign * x_norm * (columns_a == j)
    v_norm = _norm(v_a)
    v_a = jnp.where(x_norm > negligible, v_a / jnp.where(v_norm > 0, v_norm, 1), 0)
    m_kxa = m_kxa - 2 * jnp.outer(jnp.matmul(m_kxa, v_a, precision=HIGHEST), v_a)
    return m_kxa, v_kxa.at[j].set(v_a)

  reduced_kxa, v_kxa = jax.lax.fori_loop(0, k, reflect, (m_kxa, jnp.zeros_like(m_kxa)))

  def unreflect(i, qt_kxa):  # Qᵀ = I_{k×a} H_k ... H_1
    v_a = v_kxa[k - 1 - i]
    return qt_kxa - 2 * jnp.outer(jnp.matmul(qt_kxa, v_a, precision=HIGHEST), v_a)

  qt_kxa = jax.lax.fori_loop(0, k, unreflect, jnp.eye(k, a, dtype=m_kxa.dtype))
  return qt_kxa, jnp.triu(reduced_kxa[:, :k].T)


def gram_factor(m_rxo: jax.Array) -> jax.Array:
  """An upper-triangular ``C`` (r×r) with ``Cᵀ C = m mᵀ``: the Cholesky factor of the rows'
  Gram matrix, pivots at rounding level (rank-deficient m) set to zero rather than divided by.

  No inverse is taken, so ``C``'s error is ``Cᵀ C - m mᵀ = O(eps ||m||²)`` whatever m's
  conditioning: a draw ``G C`` (G i.i.d.) has rows with covariance ``m mᵀ`` to that rounding,
  which is all :meth:`normtheory.sampling.ConditionalWeight.fresh_product` uses. O(r·o) for the
  Gram matrix (one product) and O(r³) for the factor.

  Args:
    m_rxo: r rows.

  Returns:
    ``(r, r)`` upper triangular.
  """
  r = m_rxo.shape[0]
  gram_rxr = jnp.matmul(m_rxo, m_rxo.T, precision=HIGHEST)
  tiny = r * jnp.finfo(m_rxo.dtype).eps * jnp.max(jnp.diagonal(gram_rxr))
  rows_r = jnp.arange(r)

  def column(j, l_rxr):  # L (lower, L Lᵀ = gram) column j from the columns before it
    s_r = gram_rxr[:, j] - jnp.matmul(l_rxr, l_rxr[j], precision=HIGHEST)
    kept = s_r[j] > tiny
    pivot = jnp.sqrt(jnp.where(kept, s_r[j], 1))
    return l_rxr.at[:, j].set(jnp.where(kept & (rows_r >= j), s_r / pivot, 0))

  return jax.lax.fori_loop(0, r, column, jnp.zeros_like(gram_rxr)).T


def _conditional_rows_fwd(a_rxi, w):
  """``a W = Rᵀ G_f`` and what the backward product needs of it (``Qᵀ``, ``G_f``, W's keys)."""
  qt_kxi, r_kxr = _qr_rows(a_rxi)
  g_kxo = w.forward_normals(qt_kxi)
  return jnp.matmul(r_kxr.T, g_kxo, precision=HIGHEST), (qt_kxi, g_kxo, w)


@jax.custom_vjp
def _conditional_rows(a_rxi: jax.Array, w) -> jax.Array:
  return _conditional_rows_fwd(a_rxi, w)[0]


def _conditional_rows_bwd(residuals, delta_rxo):
  """The input's cotangent ``δ Wᵀ = (Q G_f δᵀ + (I - QQᵀ) W' δᵀ)ᵀ``: the seen part of W from the
  forward draw, the unseen part from a fresh W' (:meth:`~normtheory.sampling.ConditionalWeight.fresh_product`)."""
  qt_kxi, g_kxo, w = residuals
  seen_rxi = jnp.matmul(jnp.matmul(delta_rxo, g_kxo.T, precision=HIGHEST), qt_kxi, precision=HIGHEST)
  fresh_rxi = w.fresh_product(delta_rxo).T
  unseen_rxi = fresh_rxi - jnp.matmul(jnp.matmul(fresh_rxi, qt_kxi.T, precision=HIGHEST), qt_kxi, precision=HIGHEST)
  return seen_rxi + unseen_rxi, None


_conditional_rows.defvjp(_conditional_rows_fwd, _conditional_rows_bwd)


def conditional_matmul(a_nxi: jax.Array, w) -> jax.Array:
  """``a @ W`` for a conditional weight W, exact in law (SPEC §6), over all leading rows of ``a``.

  With the r rows of ``a`` flattened and ``aᵀ = Q R`` (Householder, :func:`_qr_rows`): forward
  ``a W = Rᵀ G_f``, ``G_f = Qᵀ W`` drawn (r × d_out); backward (a custom VJP) ``W δᵀ = Q G_f δᵀ +
  (I - QQᵀ) W' δᵀ`` with ``W' δᵀ = G_b C`` drawn fresh (``G_b``: d_in × r i.i.d., ``Cᵀ C = δ δᵀ``,
  :func:`gram_factor`; SPEC §6 writes ``G_b R_δ`` with ``δᵀ = Q_δ R_δ``: the same law).
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


def ln_jacobian_means(ln_inputs: list[jax.Array], eps: float, cfg=None) -> jax.Array:
  """``(k,)``: :func:`ln_jacobian_norm` averaged over all rows, at each of k LayerNorm
  inputs (``Taps.ln_inputs``); shape ``(0,)`` when there are none. With ``cfg`` (a
  :class:`normtheory.Config`), the Jacobian of ``cfg.norm`` (:func:`norm_jacobian_norm`)."""
  if not ln_inputs:
    return jnp.zeros((0,))
  if cfg is not None and cfg.norm != "layernorm":
    return jnp.stack([norm_jacobian_norm(z, cfg).mean() for z in ln_inputs])
  return jnp.stack([ln_jacobian_norm(z, eps).mean() for z in ln_inputs])


def rms_norm(x_nxd: jax.Array, eps: float, taps: Taps | None = None) -> jax.Array:
  """RMSNorm with gain 1: ``x / sqrt(mean(x²) + eps)`` over features.

  References:
    Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", Eq. (4).
  """
  if taps is not None:
    taps.ln_inputs.append(x_nxd)
  return x_nxd * jax.lax.rsqrt((x_nxd**2).mean(-1, keepdims=True) + eps)


def dyt(x_nxd: jax.Array, alpha, gamma_d: jax.Array, beta_d: jax.Array) -> jax.Array:
  """Dynamic Tanh, ``gamma ⊙ tanh(alpha x) + beta`` (alpha a scalar, gamma and beta d-vectors).

  References:
    Zhu, Chen, He, LeCun, Liu 2025, "Transformers without Normalization"
    (arXiv:2503.10622), Eq. (2); at init alpha = alpha_0 (0.5 by default), gamma = 1, beta = 0.
  """
  return gamma_d * jnp.tanh(alpha * x_nxd) + beta_d


def derf(x_nxd: jax.Array, alpha, shift, gamma_d: jax.Array, beta_d: jax.Array) -> jax.Array:
  """Dynamic erf, ``gamma ⊙ erf(alpha x + s) + beta`` (alpha, s scalars; gamma, beta d-vectors).

  References:
    Chen, Lu, Zhu, Sun, Liu 2025, "Stronger Normalization-Free Transformers"
    (arXiv:2512.10938), Eq. (10); at init alpha = 0.5, s = 0, gamma = 1, beta = 0 (the
    authors' ``alpha_init_value`` and ``shift_init_value``).
  """
  return gamma_d * jax.lax.erf(alpha * x_nxd + shift) + beta_d


def normalize(x_nxd: jax.Array, cfg, taps: Taps | None = None, p: Params | None = None, site: int = 1) -> jax.Array:
  """The norm ``cfg.norm`` at norm site ``site`` of a layer (its input is tapped as a LayerNorm's).

  Args:
    x_nxd: the norm's input.
    cfg: the model (:class:`normtheory.Config`: its ``norm`` and ``eps``).
    taps: records the input in ``taps.ln_inputs``.
    p: the parameters holding ``f"{norm}{site}_{part}"`` (DyT, Derf; unused otherwise).
    site: the norm's 1-based index in the layer (or 1 for the final norm).
  """
  if cfg.norm == "layernorm":
    return layer_norm(x_nxd, cfg.eps, taps)
  if cfg.norm == "rmsnorm":
    return rms_norm(x_nxd, cfg.eps, taps)
  if taps is not None:
    taps.ln_inputs.append(x_nxd)
  get = lambda part: p[f"{cfg.norm}{site}_{part}"]
  if cfg.norm == "dyt":
    return dyt(x_nxd, get("alpha"), get("gamma"), get("beta"))
  return derf(x_nxd, get("alpha"), get("shift"), get("gamma"), get("beta"))


def norm_jacobian_norm(x_nxd: jax.Array, cfg) -> jax.Array:
  """Spectral norm of the Jacobian of ``cfg.norm`` at each row, at initialization.

  RMSNorm: ``(I - z z^T/d)/r`` with ``r = sqrt(mean(x²) + eps)``, norm ``1/r``. DyT and
  Derf are diagonal, ``alpha0 tanh'(alpha0 x_i)`` and ``alpha0 erf'(alpha0 x_i)`` (gamma = 1,
  s = 0): their largest entry.

  Returns:
    array of shape ``x_nxd.shape[:-1]``.
  """
  if cfg.norm == "layernorm":
    return ln_jacobian_norm(x_nxd, cfg.eps)
  if cfg.norm == "rmsnorm":
    return jax.lax.rsqrt((x_nxd**2).mean(-1) + cfg.eps)
  a = cfg.alpha0
  if cfg.norm == "dyt":
    return (a / jnp.cosh(a * x_nxd) ** 2).max(-1)
  return (a * 2 / jnp.sqrt(jnp.pi) * jnp.exp(-((a * x_nxd) ** 2))).max(-1)


def rope(a_nxhxc: jax.Array) -> jax.Array:
  """Rotary positions: rotate feature pair (2k, 2k+1) of position m by the angle ``m θ_k``,
  ``θ_k = 10000^(-2k/c)`` (c the head width), on ``(..., n, heads, c)`` queries or keys.

  References:
    Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding"
    (arXiv:2104.09864), Eq. (34).
  """
  n, c = a_nxhxc.shape[-3], a_nxhxc.shape[-1]
  theta_k = 10000.0 ** (-jnp.arange(0, c, 2, dtype=a_nxhxc.dtype) / c)
  angle_nx1xk = (jnp.arange(n, dtype=a_nxhxc.dtype)[:, None] * theta_k)[:, None, :]
  even, odd = a_nxhxc[..., 0::2], a_nxhxc[..., 1::2]
  cos, sin = jnp.cos(angle_nx1xk), jnp.sin(angle_nx1xk)
  return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(a_nxhxc.shape)


def attention(x_nxd: jax.Array, p: Params, taps: Taps | None, heads: int = 1, causal: bool = False,
              rotary: bool = False) -> jax.Array:
  """Multi-head self-attention within each sequence, no biases; optionally causal, with RoPE.

  ``q = x W_Q``, ``k = x W_K``, ``v = x W_V`` (each d×d) are split into ``heads``
  heads of width ``c = d / heads`` (head h: features h·c .. (h+1)·c - 1); head h
  mixes ``softmax(q_h k_h^T / sqrt(c)) v_h``; the heads are concatenated and
  multiplied by ``W_O``. With W_Q = W_K = 0 every score vanishes and the softmax is
  exactly uniform, 1/n, for any number of heads: the output is
  ``mean_j x_j W_V W_O`` at every position. ``causal``: position i attends to
  positions j <= i only (masked scores are the dtype's lowest value, so their weight
  is exactly 0; under W_Q = W_K = 0 position i averages its first i positions).
  ``rotary``: queries and keys are rotated by :func:`rope` before the scores.

  Conditional weights with W_Q = W_K = 0 and no mask compute that output as it reads:
  W_V and W_O meet each sequence's mean row only (SPEC §6's r = 1 instead of n: n times
  fewer normals and no QR of n rows); W_Q's and W_K's gradients are then exactly 0, as
  they are through the uniform softmax (the scores' cotangent meets k = 0 and q = 0).

  References:
    Vaswani et al. 2017, "Attention Is All You Need", Eq. (1) and Section 3.2.2
    (Section 3.2.3: the decoder's mask).
  """
  q_nxd = dense("W_Q", x_nxd, p["W_Q"], taps)
  k_nxd = dense("W_K", x_nxd, p["W_K"], taps)
  if not causal and all(is_conditional(p[w]) and p[w].zero for w in ("W_Q", "W_K")):
    mean_1xd = jnp.mean(x_nxd, axis=-2, keepdims=True)
    out_1xd = dense("W_O", dense("W_V", mean_1xd, p["W_V"], taps), p["W_O"], taps)
    return jnp.broadcast_to(out_1xd, x_nxd.shape)
  v_nxd = dense("W_V", x_nxd, p["W_V"], taps)
  *batch, n, d = x_nxd.shape
  c = d // heads
  per_head = lambda a_nxd: a_nxd.reshape(*batch, n, heads, c)
  q_nxhxc, k_nxhxc = per_head(q_nxd), per_head(k_nxd)
  if rotary:
    q_nxhxc, k_nxhxc = rope(q_nxhxc), rope(k_nxhxc)
  split = lambda a_nxhxc: jnp.moveaxis(a_nxhxc, -2, -3)  # (..., heads, n, c)
  q_hxnxc, k_hxnxc, v_hxnxc = split(q_nxhxc), split(k_nxhxc), split(per_head(v_nxd))
  scale = jnp.sqrt(c).astype(x_nxd.dtype)
  scores_hxnxn = jnp.matmul(q_hxnxc, jnp.swapaxes(k_hxnxc, -1, -2), precision=HIGHEST) / scale
  if causal:
    scores_hxnxn = jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores_hxnxn, jnp.finfo(scores_hxnxn.dtype).min)
  mixed_hxnxc = jnp.matmul(jax.nn.softmax(scores_hxnxn, axis=-1), v_hxnxc, precision=HIGHEST)
  mixed_nxd = jnp.moveaxis(mixed_hxnxc, -3, -2).reshape(*batch, n, d)
  return dense("W_O", mixed_nxd, p["W_O"], taps)


def ffn(x_nxd: jax.Array, p: Params, taps: Taps | None, kind: str = "relu") -> jax.Array:
  """``ReLU(x W1 + b1) W2 + b2``; ``kind="gelu"``: exact GELU ``u Φ(u)`` for the ReLU;
  ``kind="swiglu"``: ``(silu(x W1 + b1) ⊙ x W3) W2 + b2``, W3 a third d×d_ff matrix.

  References:
    Hendrycks & Gimpel 2016, "Gaussian Error Linear Units" (GELU); Shazeer 2020,
    "GLU Variants Improve Transformer" (arXiv:2002.05202), Eq. (6) (FFN_SwiGLU, here with
    the b1, b2 biases the other FFNs have, zero at init).
  """
  pre_nxf = dense("W1", x_nxd, p["W1"], taps) + p["b1"]
  if kind == "swiglu":
    h_nxf = jax.nn.silu(pre_nxf) * dense("W3", x_nxd, p["W3"], taps)
  elif kind == "gelu":
    h_nxf = jax.nn.gelu(pre_nxf, approximate=False)
  else:
    h_nxf = jax.nn.relu(pre_nxf)
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


def embed(tokens_n: jax.Array, e_vxd, positions: bool = True, dtype=None) -> jax.Array:
  """Token embedding plus positions: ``x_i = sqrt((V+d)/4) E[t_i] + P_i``, shape ``(..., n, d)``.

  The gather is the product of E with one-hot rows, whose orthonormal basis is the
  one-hot vectors of the tokens present: a conditional E draws exactly those rows
  (:meth:`normtheory.sampling.ConditionalWeight.rows`), which is its conditional law.

  Args:
    tokens_n: int tokens, any leading batch axes.
    e_vxd: the token embedding E (V×d, Xavier-Gaussian at init), an array or a
      conditional weight.
    positions: add the sinusoidal code P (False: the tokens alone, as under RoPE).
    dtype: the conditional rows' dtype (arrays keep their own).
  """
  vocab, d = e_vxd.shape
  rows_nxd = e_vxd.rows(tokens_n, dtype) if is_conditional(e_vxd) else e_vxd[tokens_n]
  tokens_nxd = embedding_scale(vocab, d) * rows_nxd
  if not positions:
    return tokens_nxd
  return tokens_nxd + sinusoidal_positions(tokens_n.shape[-1], d, rows_nxd.dtype)
