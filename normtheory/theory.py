"""Closed forms of Section 3.3 and a mean-field predictor of the model at init.

Two layers of theory, both for the model of SPEC §1 (W_Q = W_K = 0, Xavier-Gaussian
W_V, W_O, W1, W2, zero biases, Gaussian inputs, eps = 0):

* **The paper's closed forms** (Lemmas 1-3, the shapes of Theorem 1's bounds).
* **A mean-field predictor** that follows, layer by layer, two numbers of the
  hidden state ``x`` (rows ``x_i``, i = 1..n):

    q = E||x_i||² / d              (mean squared row norm per feature)
    c = E<x_i, x_j> / d, i != j   (cross-position covariance per feature)

  and from them predicts the last layer's ``||dLoss/dW2^L||_F`` for the ``linear``
  loss. It is exact in expectation over each layer's fresh weights given (q, c),
  and closes the recursion by replacing ratios of random norms by ratios of their
  means, which is exact as d -> infinity (norms of d-vectors concentrate).

Derivation (plain text; each step is an expectation over the step's fresh weights,
which are independent of everything computed before and have mean zero):

1. Attention at init. W_Q = W_K = 0 makes every score zero and the softmax uniform,
   so ``Attn(X)_i = m W_V W_O`` with ``m = (1/n) sum_j x_j``: the *same* vector
   for every position. With Xavier 1/d entries ``E||m W_V W_O||² = ||m||²`` and
   ``||m||²/d = q/n + (1 - 1/n) c =: A``. Because the vector is shared, adding it
   raises q and c by the same A: attention adds a fully correlated component.
2. Sums. Any branch output ``b = a W`` with fresh zero-mean W is uncorrelated with
   what it is added to, so (q, c) of a sum is the sum of the (q, c)'s (this is how
   Lemma 2 adds ``E||x3||² + E||FFN||²``).
3. LayerNorm (gain 1, eps 0) makes every row have squared norm exactly d after
   removing its mean; the mean removal changes inner products by O(1/d), so
   LN maps (q, c) -> (1, c/q): it keeps the correlation ``rho = c/q``.
4. FFN (Lemma 1 plus the arc-cosine kernel). Given rows with (q, c), the
   pre-activations ``x_i W1`` are, over W1, jointly Gaussian per hidden unit with
   variance ``s = q d v1`` (v1 the variance of W1's entries, 1/d when d_ff = d)
   and correlation rho. Lemma 1 gives ``E ReLU(u)² = s/2``, and the degree-1
   arc-cosine kernel (Cho & Saul 2009) gives
   ``E[ReLU(u) ReLU(v)] = (s/2) k(rho)``, ``k(rho) = (sqrt(1-rho²) + (pi - arccos rho) rho)/pi``,
   with k(1) = 1 and k(0) = 1/pi: even orthogonal rows come out of the ReLU
   correlated, because ReLU outputs share a positive mean. W2 (variance v2)
   then maps the hidden rows to ``(q, c) = (d_ff v2 s/2) (1, k(rho))``; with
   d_ff = d that is ``(q/2)(1, k(rho))``, Lemma 2's "FFN adds d/2".
5. Per layer, Post-LN is ``x3 = LN(x + Attn(x))``, ``x_{l+1} = LN(x3 + FFN(x3))``
   and Pre-LN is ``x3 = x + Attn(LN(x))``, ``x_{l+1} = x3 + FFN(LN(x3))``; composing
   1-4 gives the (q, c) recursion, starting from (1, 0) for Gaussian inputs.
   Post-LN: ``q5 = 1 + 1/2 = 3/2`` in every layer (Lemma 2). Pre-LN:
   ``q_{l+1} = q_l + A_l + 1/2`` with ``A_l = 1/n + (1 - 1/n) rho_l`` in [0, 1],
   which is why Lemma 2's bounds ``1 + l/2 <= q_{l+1} <= 1 + 3l/2`` hold. Which
   end is reached depends on the token correlation rho: if positions stayed
   uncorrelated (the i.i.d. picture) A = 1/n and ``q_{l+1} = 1 + l (1/2 + 1/n)``,
   near the lower bound; but attention adds a shared vector and the ReLU adds
   correlation k(0) = 1/pi even to orthogonal rows, so rho -> 1, A -> 1 and the
   stream grows at the upper bound's rate 3/2 per layer (at d = 256, n = 16,
   L = 96: q = 131 against 55 for the i.i.d. picture and 143.5 for the bound).
6. Last-layer W2 gradient, linear loss ``(1/n) sum_i <y_i, x_final,i>``.
   ``dLoss/dW2 = sum_i h_i delta_i^T`` with h_i the FFN hidden row and delta_i the
   cotangent at the FFN output: ``delta_i = J_i^T y_i / n`` where J_i is the
   product of the Jacobians of the LayerNorms between the FFN output and the
   loss. Lemma 3: an LN Jacobian at x is ``(1/s)(I - 11^T/d - z z^T/d)`` with
   ``s² = ||x - mean||²/d`` (= q in mean field) and z = LN(x), a projection
   removing two directions scaled by 1/sqrt(q). Since the y_i are independent with
   mean zero, ``E[(h_i . h_j)(delta_i . delta_j)] = 0`` for i != j and
     E||dLoss/dW2||_F² = sum_i E||h_i||² E||delta_i||²
                       = n (d_ff d v1 / 2) (d - 1 - k) / (n² prod_LN q_LN),
   with k the number of LayerNorms passed (each removes the mean direction, which
   they share, and its own z). The correlations cancel for this loss; the depth
   enters only through the q's at those LNs: Post-LN passes LN(x5) with q5 = 3/2
   (so ``sqrt(d (d-2) / (3n))``, flat in L), Pre-LN passes the final LN at
   ``q_{L+1}``, which grows ~ 3L/2 (so ``sqrt(d (d-2) / (2 n q_{L+1}))`` ~ 1/sqrt(L)).
   ``||.||_F`` concentrates (relative variance about ``2(1 + (n-1) k²)/(n d)``),
   so the mean norm is the square root of the mean square to within 0.1 % here.

7. Effective depth. Carrying also the overlap ``o = E<x_i, x_l,i>/d`` with the
   layer's input (o = q at the input; LN divides it by sqrt(q); a fresh branch adds
   0 to it) gives ``||x_{l+1} - x_l||²/||x_l||² = (q_{l+1} - 2 o + q_l)/q_l`` and the
   cosine ``o / sqrt(q_l q_{l+1})``. Pre-LN: o = q_l, so the relative update is
   ``sqrt((A_l + 1/2)/q_l)`` ~ ``l^(-1/2)``: late layers barely move the stream
   (the "effective depth" argument). Post-LN: ``o = 1/sqrt(q5 (1 + A))``, flat in l.

The other placements follow from the same steps (see ``_LAYERS``): DeepNorm
scales the residual by alpha and the weights by beta; Sandwich's LN after
attention turns the shared vector into (q, c) = (1, 1) and its LN after the FFN
makes the FFN add (1, k(rho)); LayerNorm Scaling multiplies LN outputs by
1/sqrt(l); Mix-LN runs Post-LN layers, then Pre-LN layers.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"
    (arXiv:2002.04745), Section 3.3: Lemma 1, Lemma 2, Lemma 3, Theorem 1.
  Cho & Saul 2009, "Kernel Methods for Deep Learning" (the arc-cosine kernel).
  Poole et al. 2016, "Exponential expressivity in deep neural networks through
    transient chaos" (mean-field length and correlation maps).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from scipy.special import erf, ndtr

from normtheory import architectures


# --- The paper's closed forms -------------------------------------------------


def relu_sq_norm(sigma: float, d: int) -> float:
  """Lemma 1: ``E||ReLU(x)||² = sigma² d / 2`` for ``x ~ N(0, sigma² I_d)``."""
  return sigma**2 * d / 2


def post_x5_sq_norm(d: int) -> float:
  """Lemma 2 (Post-LN): ``E||x5||² = 3d/2`` per row, in every layer."""
  return 1.5 * d


class Band(NamedTuple):
  """A closed interval ``[lower, upper]`` (scalars or arrays of the same shape)."""

  lower: np.ndarray
  upper: np.ndarray


LEMMA2_GROWTH = Band(0.5, 1.5)  # Pre-LN: each layer adds between d/2 and 3d/2 to E||x||² (Lemma 2)


def pre_sq_norm_bounds(d: int, l) -> Band:
  """Lemma 2 (Pre-LN): ``(1 + l/2) d <= E||x_{l+1}||² <= (1 + 3l/2) d`` per row.

  The one home of Lemma 2's band; ``d = 1`` gives it per feature (``E||x||²/d``).

  Args:
    d: width.
    l: number of layers applied (scalar or array).

  Returns:
    (lower, upper) bounds on the expected squared row norm after l layers.
  """
  l = np.asarray(l, np.float64)
  return Band((1 + LEMMA2_GROWTH.lower * l) * d, (1 + LEMMA2_GROWTH.upper * l) * d)


def ln_jacobian_norm_eps0(x_nxd) -> np.ndarray:
  """Lemma 3: the LN Jacobian's spectral norm at eps = 0, ``sqrt(d)/||x - mean(x)||``.

  Args:
    x_nxd: LayerNorm inputs, one per row.

  Returns:
    array of shape ``x_nxd.shape[:-1]``.
  """
  x_nxd = np.asarray(x_nxd, np.float64)
  centred_nxd = x_nxd - x_nxd.mean(-1, keepdims=True)
  return np.sqrt(x_nxd.shape[-1]) / np.linalg.norm(centred_nxd, axis=-1)


THEOREM_GAMMA = {"post": 0.0, "pre": 0.5}  # Theorem 1: g_L(W2) = O(d sqrt(ln d) L^-gamma)
THEOREM_SHAPE = {"post": "d sqrt(ln d)", "pre": "d sqrt(ln d / L)"}


def bound_shape(arch: str, d, L):
  """Theorem 1's bound on ``||dLoss/dW2^L||_F`` up to its constant.

  Post-LN: ``d sqrt(ln d)``, independent of L; Pre-LN: ``d sqrt(ln d / L)``.

  Args:
    arch: "post" or "pre" (the archs Theorem 1 covers, ``THEOREM_GAMMA``).
    d: width(s).
    L: depth(s), broadcast against d.

  Returns:
    ``d sqrt(ln d) L^(-gamma)`` as a float64 array (a float for scalar input).

  References:
    Xiong et al. 2020, Theorem 1.
  """
  if arch not in THEOREM_GAMMA:
    raise ValueError(f"Theorem 1 covers arch post and pre only, got {arch!r}")
  d, L = np.asarray(d, np.float64), np.asarray(L, np.float64)
  return d * np.sqrt(np.log(d)) * L ** -THEOREM_GAMMA[arch]


def bound_d_exponent(d_min: float, d_max: float) -> float:
  """Effective exponent of ``d sqrt(ln d)`` between two widths, ``ln(shape ratio)/ln(d ratio)``.

  ``1 + ln(ln d_max / ln d_min) / (2 ln(d_max / d_min))``: a power law ``d^alpha`` fitted
  over [d_min, d_max] stays under Theorem 1's width dependence iff alpha is at most this
  (1.097 for d in 64..512; it tends to 1 as the widths grow). 1 if ``d_min == d_max``.
  """
  if d_max == d_min:
    return 1.0
  return 1.0 + 0.5 * math.log(math.log(d_max) / math.log(d_min)) / math.log(d_max / d_min)


def pre_post_ratio(q_final):
  """Mean-field ``g_pre / g_post`` of the last layer's W2 from Pre-LN's ``q_{L+1}``.

  ``sqrt(3 / (2 q_{L+1}))``: both gradients pass one LayerNorm between W2 and the
  read-out (Post-LN its last, at ``x5`` with ``E||x5||²/d = 3/2``, Lemma 2; Pre-LN its
  final one, at ``x_{L+1}``), and by Lemma 3 each scales the cotangent by
  ``1/sqrt(q)`` at its input; everything else is the same in both (derivation step 6).

  Args:
    q_final: ``E||x_{L+1}||²/d`` of Pre-LN's state entering its final LayerNorm.

  References:
    Xiong et al. 2020, Lemmas 2 and 3.
  """
  return np.sqrt(post_x5_sq_norm(1) / np.asarray(q_final, np.float64))


def lemma2_ratio_law(L, a, c):
  """SPEC §5's depth law of the Pre/Post ratio, ``a / sqrt(1 + c L)`` (Lemma 2 puts c in [1/2, 3/2])."""
  return a / np.sqrt(1.0 + c * np.asarray(L, np.float64))


EFFECTIVE_DEPTH_KAPPA = {"post": 0.0, "pre": 0.5}  # rel_update ∝ l^-kappa (the effective-depth argument)


# --- Mean-field maps -------------------------------------------------------------


def relu_correlation(rho):
  """Correlation of ReLU outputs of unit-variance Gaussians with correlation rho.

  ``k(rho) = (sqrt(1 - rho²) + (pi - arccos rho) rho) / pi``: the degree-1
  arc-cosine kernel divided by its value 1/2 at rho = 1. k(0) = 1/pi, k(1) = 1.

  References:
    Cho & Saul 2009, Eq. (6) with n = 1.
  """
  rho = np.clip(rho, -1.0, 1.0)
  return (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / np.pi


class Stream(NamedTuple):
  """Mean-field summary of a hidden state x (rows x_i) inside one layer.

  Attributes:
    q: ``E||x_i||²/d``.
    c: ``E<x_i, x_j>/d`` for i != j.
    o: ``E<x_i, x_in,i>/d``, the overlap with the layer's input row x_in,i.
  """

  q: float
  c: float
  o: float

  @property
  def rho(self) -> float:
    """Cross-position correlation c/q."""
    return self.c / self.q

  def __add__(self, other: Stream) -> Stream:
    """Sum of two states whose cross terms vanish in expectation (derivation step 2)."""
    return Stream(self.q + other.q, self.c + other.c, self.o + other.o)

  def scale(self, a: float) -> Stream:
    """The state multiplied by a."""
    return Stream(a * a * self.q, a * a * self.c, a * self.o)


class _Shape(NamedTuple):
  """The sizes the maps need."""

  d: int
  n: int
  d_ff: int


def _ln(x: Stream) -> Stream:
  """LayerNorm: unit norm per feature, correlation kept (derivation step 3)."""
  return Stream(1.0, x.rho, x.o / math.sqrt(x.q))


def _attn(x: Stream, s: _Shape, beta: float = 1.0) -> Stream:
  """Uniform attention: a vector shared by all rows, ``||m||²/d`` times beta^4."""
  a = beta**4 * (x.q / s.n + (1 - 1 / s.n) * x.c)
  return Stream(a, a, 0.0)


def _ffn(x: Stream, s: _Shape, beta: float = 1.0) -> tuple[Stream, float]:
  """FFN output (q, c) and the hidden rows' ``E||h_i||²/d`` (derivation step 4)."""
  v = beta**2 * 2.0 / (s.d + s.d_ff)  # variance of W1's and W2's entries
  hidden_per_d = s.d_ff * v * x.q / 2  # (d_ff/d) E ReLU(u)², u ~ N(0, q d v)
  out_q = hidden_per_d * s.d * v
  return Stream(out_q, out_q * float(relu_correlation(x.rho)), 0.0), hidden_per_d


class _LayerOut(NamedTuple):
  """One mean-field layer: the state after it, its FFN's ``E||h_i||²/d``, and the
  q's of the LayerNorms between its FFN output and the layer's output."""

  x: Stream
  hidden_per_d: float
  grad_lns: tuple[float, ...]


def _post(x, l, L, s, alpha=1.0, beta=1.0):
  x3 = _ln(x.scale(alpha) + _attn(x, s, beta))
  f, h = _ffn(x3, s, beta)
  x5 = x3.scale(alpha) + f
  return _LayerOut(_ln(x5), h, (x5.q,))


def _pre(x, l, L, s, ln_scale=1.0):
  x3 = x + _attn(_ln(x).scale(ln_scale), s)
  f, h = _ffn(_ln(x3).scale(ln_scale), s)
  return _LayerOut(x3 + f, h, ())


def _deepnorm(x, l, L, s):
  return _post(x, l, L, s, architectures.deepnorm_alpha(L), architectures.deepnorm_beta(L))


def _sandwich(x, l, L, s):
  x3 = x + _ln(_attn(_ln(x), s))
  f, h = _ffn(_ln(x3), s)
  return _LayerOut(x3 + _ln(f), h, (f.q,))


def _lns(x, l, L, s):
  return _pre(x, l, L, s, ln_scale=l**-0.5)


def _mixln(x, l, L, s, rho):
  post = l <= int(architectures.mixln_post_layers(L, rho))
  return _post(x, l, L, s) if post else _pre(x, l, L, s)


_LAYERS = {"post": _post, "pre": _pre, "deepnorm": _deepnorm, "sandwich": _sandwich, "lns": _lns}


def mean_field(arch: str, d: int, L: int, n: int, d_ff: int | None = None,
               mixln_rho: float = 0.25, correlated: bool = True, norm: str = "layernorm", ffn: str = "relu",
               causal: bool = False, alpha0: float = 0.5) -> dict:
  """Mean-field prediction of the hidden-state norms and the last-layer W2 gradient.

  Example:
    >>> round(float(mean_field("post", d=256, L=6, n=16)["last_layer_w2"]), 1)
    36.8

  Args:
    arch: one of ``normtheory.ARCHS``.
    d: width.
    L: depth.
    n: sequence length.
    d_ff: FFN width (``None``: d).
    mixln_rho: Mix-LN's fraction of leading Post-LN layers.
    correlated: if False, reset the cross-position covariance to 0 after every
      layer: the i.i.d.-token picture, to show what token correlation adds.
    norm, ffn, causal, alpha0: the block (``Config`` fields). Other than the 2020
      block's (layernorm, relu, no mask), Post and Pre only, by the covariance
      recursion over positions (module comment "Today's blocks"); its ``rel_update``,
      ``cos_sim`` and ``correlation`` are then NaN.

  Returns:
    dict of
      ``sq_norm_per_d``: ``(L,)`` E||x_l||²/d of the state entering layer l
        (compare ``GradNorms.sq_norm / d``);
      ``correlation``: ``(L,)`` mean cross-position correlation <x_i,x_j>/||x||²
        of the state entering layer l;
      ``rel_update``: ``(L,)`` ``||x_{l+1} - x_l||/||x_l||`` (as in
        :mod:`normtheory.depth_metrics`), from the overlap o of step 7;
      ``cos_sim``: ``(L,)`` cosine between x_l and x_{l+1};
      ``final_sq_norm_per_d``: E||x_{L+1}||²/d of the last layer's output;
      ``last_layer_w2``: predicted mean ``||dLoss/dW2^L||_F`` (linear loss);
      ``last_layer_w2_sq``: its predicted mean square.
  """
  final_ln = architectures.get(arch).final_ln  # ValueError listing the known names
  if not _is_2020_block(norm, ffn, causal):
    if arch not in ("post", "pre"):
      raise ValueError(f"the mean field of norm={norm}, ffn={ffn}, causal={causal} covers post and pre, not {arch}")
    block = _Block(d, n, d if d_ff is None else d_ff, norm, ffn, bool(causal), alpha0)
    sq_L, final_q, w2_sq_L = _block_mean_field(arch, block, L)
    w2_sq = float(w2_sq_L[-1])
    nan_L = np.full(L, np.nan)
    return {"sq_norm_per_d": sq_L, "correlation": nan_L, "rel_update": nan_L, "cos_sim": nan_L,
            "final_sq_norm_per_d": final_q, "last_layer_w2": math.sqrt(w2_sq), "last_layer_w2_sq": w2_sq}
  sq_L, corr_L, update_L, cos_L = (np.empty(L) for _ in range(4))
  for l, x_in, out in _layers(arch, _Shape(d, n, d if d_ff is None else d_ff), L, mixln_rho, correlated):
    sq_L[l - 1], corr_L[l - 1] = x_in.q, x_in.rho
    update_L[l - 1] = math.sqrt(max(out.x.q - 2 * out.x.o + x_in.q, 0.0) / x_in.q)
    cos_L[l - 1] = out.x.o / math.sqrt(x_in.q * out.x.q)
  w2_sq = _last_layer_w2_sq(out, final_ln, d, n)
  return {
      "sq_norm_per_d": sq_L,
      "correlation": corr_L,
      "rel_update": update_L,
      "cos_sim": cos_L,
      "final_sq_norm_per_d": out.x.q,
      "last_layer_w2": math.sqrt(w2_sq),
      "last_layer_w2_sq": w2_sq,
  }


def _layers(arch: str, shape: _Shape, L: int, mixln_rho: float = 0.25, correlated: bool = True):
  """Yield ``(l, state entering layer l, layer l's _LayerOut)`` for l = 1..L of an L-layer model."""
  arch_fn = functools.partial(_mixln, rho=mixln_rho) if arch == "mixln" else _LAYERS[arch]
  x = Stream(1.0, 0.0, 1.0)  # Gaussian inputs
  for l in range(1, L + 1):
    out = arch_fn(x, l, L, shape)
    yield l, x, out
    x = Stream(out.x.q, out.x.c if correlated else 0.0, out.x.q)


def _last_layer_w2_sq(out: _LayerOut, final_ln: bool, d: int, n: int) -> float:
  """Mean square of ``||dLoss/dW2^L||_F`` from the last layer's output (derivation step 6)."""
  grad_lns = out.grad_lns + ((out.x.q,) if final_ln else ())
  delta_sq = (d - 1 - len(grad_lns)) / (n**2 * float(np.prod(grad_lns)))
  return n * out.hidden_per_d * d * delta_sq


def predict_last_layer_w2(arch: str, d: int, L: int, n: int, d_ff: int | None = None, **block) -> float:
  """Predicted mean ``||dLoss/dW2^L||_F`` at init, linear loss (see :func:`mean_field`).

  Post-LN: ``sqrt(d (d-2) / (3n))``, flat in L. Pre-LN: ``sqrt(d (d-2) / (2 n q_{L+1}))``
  with ``q_{L+1} -> 3L/2`` as tokens correlate, so the Post/Pre ratio grows like sqrt(L).
  ``block``: :func:`mean_field`'s norm, ffn, causal, alpha0.
  """
  return mean_field(arch, d, L, n, d_ff, **block)["last_layer_w2"]


def last_layer_w2_curve(arch: str, d: int, L_K, n: int, d_ff: int | None = None, **block) -> np.ndarray:
  """:func:`predict_last_layer_w2` at every depth of ``L_K``, as a ``(K,)`` array.

  For archs whose layer l does not depend on L (all but DeepNorm and Mix-LN) the
  L-layer model is the first L layers of a deeper one, so one recursion to
  ``max(L_K)`` gives every depth (L = 10^4 in well under a second); the others run
  one recursion per depth, as does every block other than the 2020 one (``block``:
  :func:`mean_field`'s norm, ffn, causal, alpha0).
  """
  L_K = np.asarray(L_K, dtype=np.int64)
  model = architectures.get(arch)
  if block and not _is_2020_block(block.get("norm", "layernorm"), block.get("ffn", "relu"), block.get("causal", False)):
    b = _Block(d, n, d if d_ff is None else d_ff, block.get("norm", "layernorm"), block.get("ffn", "relu"),
               bool(block.get("causal", False)), block.get("alpha0", 0.5))
    return np.sqrt(_block_mean_field(arch, b, int(L_K.max()))[2][L_K - 1])
  if model.depends_on_depth or arch == "mixln":
    return np.array([predict_last_layer_w2(arch, d, int(L), n, d_ff) for L in L_K])
  w2_sq_M = np.array([_last_layer_w2_sq(out, model.final_ln, d, n)
                      for _, _, out in _layers(arch, _Shape(d, n, d if d_ff is None else d_ff), int(L_K.max()))])
  return np.sqrt(w2_sq_M[L_K - 1])


class LocalExponent(NamedTuple):
  """The mean-field local depth exponent of the last layer's W2 gradient.

  Attributes:
    L: ``(K,)`` depths (geometric midpoints ``sqrt(L (L+1))`` of consecutive depths).
    gamma: ``(K,)`` ``-d ln g / d ln L`` there, as the secant between L and L + 1.
  """

  L: np.ndarray
  gamma: np.ndarray


def local_exponent(arch: str, d: int, n: int, L_K, d_ff: int | None = None) -> LocalExponent:
  """Mean-field local exponent ``-d ln g_L(W2) / d ln L`` at the depths ``L_K``.

  Pre-LN's ``g ∝ q_{L+1}^(-1/2)`` and ``q_{L+1} = 1 + sum_l (A_l + 1/2)``: the
  attention term ``A_l`` rises from 1/n towards 1 as positions correlate, so q is
  convex in L and the local exponent ``(1/2) d ln q / d ln L`` exceeds 1/2 at small L
  and tends to 1/2 as L -> infinity (Theorem 1's exponent). Post-LN's is 0.

  Args:
    arch: an arch the mean field models.
    d, n, d_ff: width, sequence length, FFN width.
    L_K: depths (>= 1), e.g. ``np.geomspace(6, 1e4, 100).round()``.

  Returns:
    :class:`LocalExponent` at ``sqrt(L (L + 1))`` for each L of ``L_K``.

  References:
    Xiong et al. 2020, Lemma 2 and Theorem 1.
  """
  L_K = np.unique(np.asarray(L_K, dtype=np.int64))
  g_K, g_next_K = np.split(last_layer_w2_curve(arch, d, np.concatenate([L_K, L_K + 1]), n, d_ff), 2)
  return LocalExponent(np.sqrt(L_K * (L_K + 1.0)), -np.log(g_next_K / g_K) / np.log1p(1.0 / L_K))


MEAN_FIELD_ARCHS = (*_LAYERS, "mixln")

# --- Today's blocks: one covariance matrix over positions -------------------------
#
# The (q, c) summary above assumes every position is alike. Under a causal mask they are
# not (position i averages positions 1..i), and a norm without the division by the
# stream's scale (DyT, Derf) or an FFN without ReLU's homogeneity (GELU, SwiGLU) needs
# the full per-feature Gaussian law. So for Post and Pre with ``norm``, ``ffn`` or
# ``causal`` other than the 2020 block's, the state is its n×n covariance per feature,
# ``K_ij = E<x_i, x_j>/d``, and every map acts on K, each coordinate of the rows
# treated as jointly Gaussian across positions with covariance K (exact as d -> inf):
#
# * attention (uniform weights A: 1/n everywhere, or 1/i on j <= i causally) adds
#   ``A K A^T`` (step 1 with each position its own average);
# * LayerNorm and RMSNorm both map K to its correlation matrix ``K_ij / sqrt(K_ii K_jj)``
#   (they differ by the mean, O(1/d) in K: step 3), DyT / Derf map it to
#   ``E[f(u_i) f(u_j)]`` with ``f = tanh(alpha0 .)`` or ``erf(alpha0 .)``, (u_i, u_j)
#   Gaussian with covariance K (2-D Gauss-Hermite quadrature);
# * the FFN maps K to ``d_ff v2 E[h(u_i) h(u_j)]``, pre-activations of covariance
#   ``d v1 K``: ReLU by the arc-cosine kernel, GELU by quadrature, SwiGLU
#   ``h = silu(u) g`` with the independent gate g (W3) of covariance ``d v3 K``, so
#   ``E[h_i h_j] = E[silu(u_i) silu(u_j)] d v3 K_ij``;
# * step 6 per position: ``E||dW2||² = sum_i E||h_i||² E||delta_i||²`` with
#   ``E||delta_i||² = P_i / n²`` through the one norm between the last FFN output and
#   the loss (Post's last norm, Pre's final norm) at state variance ``q_i = K_ii``:
#   LayerNorm ``P = (d - 2)/q_i`` (removes the mean and z), RMSNorm ``P = (d - 1)/q_i``
#   (removes z only: the closed-form difference the mean makes), DyT / Derf
#   ``P = d E[f'(u)²]``, u ~ N(0, q_i) (no division by the stream's scale: for large q it is
#   about ``d alpha0 (∫ f'(t)² dt) / sqrt(2 pi q_i)``, so it falls like q^(-1/2), not q^(-1)).

_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(32)
_GH_W = _GH_W / _GH_W.sum()  # E[g(z)], z ~ N(0, 1)


def _pair_expectation(fn, k_ii, k_jj, k_ij):
  """``E[fn(u) fn(v)]`` for (u, v) Gaussian with variances k_ii, k_jj and covariance k_ij
  (arrays of one shape), by 2-D Gauss-Hermite quadrature."""
  a = np.sqrt(k_ii)[..., None, None]
  rho = np.clip(k_ij / np.sqrt(k_ii * k_jj), -1.0, 1.0)[..., None, None]
  b = np.sqrt(k_jj)[..., None, None]
  z1, z2 = _GH_Z[:, None], _GH_Z[None, :]
  u, v = a * z1, b * (rho * z1 + np.sqrt(1 - rho**2) * z2)
  return (fn(u) * fn(v) * (_GH_W[:, None] * _GH_W[None, :])).sum((-2, -1))


def _kernel(fn, k_nxn):
  """``E[fn(u_i) fn(u_j)]`` for u ~ N(0, K), as an n×n matrix."""
  diag = np.diag(k_nxn)
  return _pair_expectation(fn, diag[:, None] + 0 * k_nxn, diag[None, :] + 0 * k_nxn, k_nxn)


def _relu_kernel(k_nxn):
  """``E[ReLU(u_i) ReLU(u_j)]`` for u ~ N(0, K): the arc-cosine kernel (Cho & Saul 2009)."""
  diag = np.sqrt(np.diag(k_nxn))
  scale = np.outer(diag, diag)
  return scale / 2 * relu_correlation(k_nxn / scale)


def _gelu(u):
  """Exact GELU, ``u Φ(u)``."""
  return u * ndtr(u)


def _silu(u):
  """SiLU, ``u / (1 + e^(-u))`` (SwiGLU's gate activation)."""
  return u / (1 + np.exp(-u))


# DyT's and Derf's pointwise function at alpha = 1 and its derivative (alpha0 scales the argument).
_POINTWISE = {"dyt": (np.tanh, lambda u: 1 / np.cosh(u) ** 2),
              "derf": (erf, lambda u: 2 / np.sqrt(np.pi) * np.exp(-(u**2)))}


class _Block(NamedTuple):
  """The block of the matrix mean field: shape, norm, FFN kind, mask."""

  d: int
  n: int
  d_ff: int
  norm: str
  ffn: str
  causal: bool
  alpha0: float


def _mixing(b: _Block) -> np.ndarray:
  """The uniform attention weights: 1/n everywhere, or 1/i on j <= i under the causal mask."""
  if b.causal:
    return np.tril(np.ones((b.n, b.n))) / np.arange(1, b.n + 1)[:, None]
  return np.full((b.n, b.n), 1.0 / b.n)


def _norm_k(k_nxn, b: _Block):
  """The norm's output covariance: the correlation matrix (LayerNorm, RMSNorm) or ``E[f(u_i) f(u_j)]``."""
  if b.norm in ("layernorm", "rmsnorm"):
    diag = np.sqrt(np.diag(k_nxn))
    return k_nxn / np.outer(diag, diag)
  f = _POINTWISE[b.norm][0]
  return _kernel(lambda u: f(b.alpha0 * u), k_nxn)


def _ffn_k(k_nxn, b: _Block):
  """FFN output covariance and the hidden rows' ``E||h_i||²/d`` per position."""
  v = 2.0 / (b.d + b.d_ff)  # W1, W2, W3 entries
  pre_nxn = b.d * v * k_nxn
  if b.ffn == "relu":
    h_nxn = _relu_kernel(pre_nxn)
  elif b.ffn == "gelu":
    h_nxn = _kernel(_gelu, pre_nxn)
  else:
    h_nxn = _kernel(_silu, pre_nxn) * pre_nxn
  return b.d_ff * v * h_nxn, b.d_ff / b.d * np.diag(h_nxn)


def _norm_delta(q_n, b: _Block):
  """``n² E||delta_i||²`` through the last norm, per position (state variances q_n)."""
  if b.norm == "layernorm":
    return (b.d - 2) / q_n
  if b.norm == "rmsnorm":
    return (b.d - 1) / q_n
  df = _POINTWISE[b.norm][1]
  return b.d * b.alpha0**2 * np.array([_derivative_sq(df, b.alpha0 * math.sqrt(q)) for q in q_n])


def _derivative_sq(df, scale: float) -> float:
  """``E[df(scale z)²]``, z ~ N(0, 1), for a derivative df concentrated on |t| of order 1: by Gauss-Hermite
  in z while ``scale <= 1``, else as ``∫ df(t)² N(t; 0, scale²) dt`` on a fine grid in t (where the
  integrand's width 1/scale in z would fall between Gauss-Hermite nodes)."""
  if scale <= 1.0:
    return float((df(scale * _GH_Z) ** 2 * _GH_W).sum())
  t = np.linspace(-40.0, 40.0, 16001)
  density = np.exp(-0.5 * (t / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
  return float(np.trapezoid(df(t) ** 2 * density, t))


def _block_mean_field(arch: str, b: _Block, L: int) -> tuple[np.ndarray, float, np.ndarray]:
  """``(L,)`` mean E||x_l||²/d entering each layer, E||x_{L+1}||²/d, and ``(L,)`` the mean
  square of ``||dLoss/dW2^l||_F`` of the l-layer model (linear loss; the l-layer model is
  the first l layers), Post or Pre, from the covariance recursion."""
  a_nxn = _mixing(b)
  k = np.eye(b.n)  # Gaussian inputs
  sq_L, w2_sq_L = np.empty(L), np.empty(L)
  for l in range(L):
    sq_L[l] = np.diag(k).mean()
    if arch == "post":
      x3 = _norm_k(k + a_nxn @ k @ a_nxn.T, b)
      f, h_n = _ffn_k(x3, b)
      x5 = x3 + f
      last_q, k = np.diag(x5), _norm_k(x5, b)
    else:
      z = _norm_k(k, b)
      x3 = k + a_nxn @ z @ a_nxn.T
      f, h_n = _ffn_k(_norm_k(x3, b), b)
      k = x3 + f
      last_q = np.diag(k)
    w2_sq_L[l] = (h_n * b.d * _norm_delta(last_q, b)).sum() / b.n**2
  return sq_L, float(np.diag(k).mean()), w2_sq_L


def block_of(cell) -> dict:
  """The block fields of a cell (a Config, a dict or a table row; missing: the 2020 block's)
  as keyword arguments of :func:`mean_field` and :func:`last_layer_w2_curve`."""
  get = lambda name, default: _field(cell, name, default)
  return {"norm": get("norm", "layernorm"), "ffn": get("ffn", "relu"), "causal": bool(int(get("causal", 0))),
          "alpha0": float(get("alpha0", 0.5))}


def _field(cell, name, default):
  try:
    return cell[name]
  except (TypeError, KeyError, IndexError):
    return getattr(cell, name, default)


def _is_2020_block(norm, ffn, causal) -> bool:
  return norm == "layernorm" and ffn == "relu" and not causal


def mean_field_gap(cell, gradient: bool = True) -> str | None:
  """Why :func:`mean_field` does not describe a cell, or None where it does.

  The predictor follows (q, c) of a state whose rows start i.i.d. N(0, I), through
  uniform attention (derivation step 1) and layers it has a map for, and predicts the
  last layer's W2 gradient of one sequence under the linear loss (step 6). So it does
  not describe:

  * an architecture without a mean-field map (ResiDual);
  * ``attention="xavier"``: the scores depend on the inputs and the attention weights
    are no longer 1/n, so step 1 (one vector shared by all positions) fails;
  * ``inputs="text"``: embedded tokens repeat and share position codes, so the rows
    are neither independent nor N(0, I), and the start (q, c) = (1, 0) fails;
  * for the gradient only: a loss other than ``linear``, and ``batch > 1`` (the
    batch-mean gradient of the linear loss has one sequence's mean square divided by
    B, since independent zero-mean targets make the cross-sequence terms of step 6
    vanish; the predictor does not include it). Hidden-state statistics do not depend
    on the loss or the batch.

  Today's blocks (``norm``, ``ffn``, ``causal`` other than the 2020 block's) are
  covered for Post and Pre by the covariance recursion (gradient and hidden norms,
  not the effective-depth metrics); RoPE needs Xavier attention, already a gap.

  ``heads > 1`` with uniform attention is *not* a gap: every head's softmax is exactly
  1/n, so the layer is the same function as with one head.

  Args:
    cell: a :class:`normtheory.Config`, or the cell columns of a results table (a dict
      or a DataFrame row); a missing column reads as its default.
    gradient: whether the last layer's W2 gradient is asked (else only hidden-state
      statistics).

  Returns:
    one sentence naming the first assumption the cell breaks, or None.
  """

  def field(name, default):
    try:
      return cell[name]
    except (TypeError, KeyError, IndexError):
      return getattr(cell, name, default)

  arch = field("arch", None)
  if arch not in MEAN_FIELD_ARCHS:
    return f"no mean-field model of arch {arch}"
  if field("attention", "uniform") != "uniform":
    return "the mean field assumes attention=uniform (W_Q = W_K = 0); with xavier attention the weights depend on the inputs"
  if field("inputs", "gaussian") != "gaussian":
    return "the mean field assumes inputs=gaussian (i.i.d. N(0, I) rows); text tokens repeat and share positions"
  if gradient and field("loss", "linear") != "linear":
    return f"the mean field predicts the gradient for the linear loss only, not {field('loss', None)}"
  if gradient and int(field("batch", 1)) != 1:
    return f"the mean field predicts one sequence per sample, not batch={field('batch', None)}"
  block = block_of(cell)
  if not _is_2020_block(block["norm"], block["ffn"], block["causal"]):
    if arch not in ("post", "pre"):
      return f"the mean field of today's blocks (norm, ffn, causal) covers post and pre, not {arch}"
    if not gradient:
      return "the mean field of today's blocks predicts norms and the W2 gradient, not the effective-depth metrics"
  return None
