"""Verification of today's blocks against code nobody here wrote: Flax's own layers.

The blocks are assembled from ``nnx.RMSNorm`` / ``nnx.LayerNorm``, ``nnx.MultiHeadAttention``
(with ``nnx.make_causal_mask`` for the causal mask), ``nnx.Linear`` and ``nnx.Embed``; DyT and
Derf are small ``nnx.Module``s written here from their papers' equations, and RoPE is
written here from RoFormer's Eq. (34) as an explicit block-diagonal rotation matrix
``R_{Θ,m}`` applied to each query and key (not normtheory's even/odd slicing). Only the
wiring (Xiong et al.'s Table 1) is shared with normtheory's idea of the model.
normtheory's weights and inputs are loaded, ``nnx.grad`` gives every gradient, and every
per-layer gradient norm (W3 and the DyT/Derf parameters included; the final norm's at
layer L + 1) must equal the fast engine's in float64 to a relative 1e-10, Post and Pre.

As in ``tests/test_flax_equality.py`` the attention runs Flax's generic
``dot_product_attention`` (a module is passed to sow weights into), whose logits are
computed in float64.

References:
  Zhang & Sennrich 2019 (RMSNorm), Eq. (4); Zhu et al. 2025, arXiv:2503.10622, Eq. (2) (DyT);
  Chen et al. 2025, arXiv:2512.10938, Eq. (10) (Derf); Shazeer 2020, Eq. (6) (SwiGLU);
  Su et al. 2021, arXiv:2104.09864, Eq. (34) (RoPE); Vaswani et al. 2017, Section 3.2.3 (mask).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy.special import erf as scipy_erf

import normtheory as nt
from normtheory import engine, sampling

pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")

D, N, L = 8, 4, 2
HIGHEST = jax.lax.Precision.HIGHEST
F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)


class DyT(nnx.Module):
  """Zhu et al. 2025, Eq. (2): ``DyT(x) = γ ⊙ tanh(α x) + β``, α a scalar."""

  def __init__(self, d: int, alpha0: float):
    self.alpha = nnx.Param(jnp.asarray(alpha0, jnp.float64))
    self.gamma = nnx.Param(jnp.ones((d,), jnp.float64))
    self.beta = nnx.Param(jnp.zeros((d,), jnp.float64))

  def __call__(self, x):
    return self.gamma[...] * jnp.tanh(self.alpha[...] * x) + self.beta[...]


class Derf(nnx.Module):
  """Chen et al. 2025, Eq. (10): ``Derf(x) = γ ⊙ erf(α x + s) + β``, α and s scalars (s = 0 at init)."""

  def __init__(self, d: int, alpha0: float):
    self.alpha = nnx.Param(jnp.asarray(alpha0, jnp.float64))
    self.shift = nnx.Param(jnp.zeros((), jnp.float64))
    self.gamma = nnx.Param(jnp.ones((d,), jnp.float64))
    self.beta = nnx.Param(jnp.zeros((d,), jnp.float64))

  def __call__(self, x):
    return self.gamma[...] * jax.scipy.special.erf(self.alpha[...] * x + self.shift[...]) + self.beta[...]


def _norm(cfg: nt.Config, rngs: nnx.Rngs) -> nnx.Module:
  if cfg.norm == "rmsnorm":
    return nnx.RMSNorm(cfg.d, epsilon=cfg.eps, use_scale=False, rngs=rngs, **F64)
  if cfg.norm == "dyt":
    return DyT(cfg.d, cfg.alpha0)
  if cfg.norm == "derf":
    return Derf(cfg.d, cfg.alpha0)
  return nnx.LayerNorm(cfg.d, epsilon=cfg.eps, use_fast_variance=False, rngs=rngs, **F64)


def _rotation(m: int, c: int) -> np.ndarray:
  """RoFormer's Eq. (34): the c×c block-diagonal ``R_{Θ,m}``, block k rotating by ``m θ_k``,
  ``θ_k = 10000^(-2k/c)`` (k = 0..c/2-1, the paper's ``θ_i = 10000^(-2(i-1)/d)``)."""
  r = np.zeros((c, c))
  for k in range(c // 2):
    a = m * 10000.0 ** (-2 * k / c)
    r[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
  return r


def _rope(a_nxhxc):
  """Each position m's query or key ``q_m`` becomes ``R_{Θ,m} q_m`` (per head)."""
  n, c = a_nxhxc.shape[-3], a_nxhxc.shape[-1]
  r_nxcxc = jnp.asarray(np.stack([_rotation(m, c) for m in range(n)]))
  return jnp.einsum("nij,...nhj->...nhi", r_nxcxc, a_nxhxc, precision=HIGHEST)


def _rope_attention(query, key, value, **kwargs):
  return nnx.dot_product_attention(_rope(query), _rope(key), value, **kwargs)


class FlaxBlock(nnx.Module):
  """One Post-LN or Pre-LN layer of the Config's block from Flax's modules, holding normtheory's weights."""

  def __init__(self, p: dict, cfg: nt.Config, rngs: nnx.Rngs):
    d, h = cfg.d, cfg.heads
    self.cfg = cfg
    attention_fn = _rope_attention if cfg.positions == "rope" else nnx.dot_product_attention
    self.attn = nnx.MultiHeadAttention(h, d, d, d, use_bias=False, decode=False, precision=HIGHEST,
                                       attention_fn=attention_fn, rngs=rngs, **F64)
    for name, w in (("query", "W_Q"), ("key", "W_K"), ("value", "W_V")):
      getattr(self.attn, name).kernel[...] = p[w].reshape(d, h, d // h)
    self.attn.out.kernel[...] = p["W_O"].reshape(h, d // h, d)
    self.norm1, self.norm2 = _norm(cfg, rngs), _norm(cfg, rngs)
    self.fc1 = nnx.Linear(d, cfg.d_ff, precision=HIGHEST, rngs=rngs, **F64)
    self.fc2 = nnx.Linear(cfg.d_ff, d, precision=HIGHEST, rngs=rngs, **F64)
    self.fc1.kernel[...], self.fc1.bias[...] = p["W1"], p["b1"]
    self.fc2.kernel[...], self.fc2.bias[...] = p["W2"], p["b2"]
    if cfg.ffn == "swiglu":
      self.fc3 = nnx.Linear(d, cfg.d_ff, use_bias=False, precision=HIGHEST, rngs=rngs, **F64)
      self.fc3.kernel[...] = p["W3"]

  def _ffn(self, z):
    if self.cfg.ffn == "swiglu":  # Shazeer 2020, Eq. (6)
      return self.fc2(nnx.silu(self.fc1(z)) * self.fc3(z))
    act = (lambda u: nnx.gelu(u, approximate=False)) if self.cfg.ffn == "gelu" else nnx.relu
    return self.fc2(act(self.fc1(z)))

  def _attention(self, z):
    mask = nnx.make_causal_mask(jnp.ones(z.shape[:-1])) if self.cfg.causal else None
    return self.attn(z, mask=mask, sow_weights=True)

  def __call__(self, x):
    if self.cfg.arch == "post":  # Table 1, left
      x = self.norm1(x + self._attention(x))
      return self.norm2(x + self._ffn(x))
    x = x + self._attention(self.norm1(x))  # Table 1, right
    return x + self._ffn(self.norm2(x))

  def weights(self) -> dict:
    """normtheory's name -> the Flax parameter holding that weight (the norms' parameters included)."""
    a = self.attn
    out = {"W_Q": a.query.kernel, "W_K": a.key.kernel, "W_V": a.value.kernel, "W_O": a.out.kernel,
           "W1": self.fc1.kernel, "W2": self.fc2.kernel}
    if self.cfg.ffn == "swiglu":
      out["W3"] = self.fc3.kernel
    return out | _norm_params(self.norm1, self.cfg, 1) | _norm_params(self.norm2, self.cfg, 2)


def _norm_params(module, cfg: nt.Config, site: int) -> dict:
  parts = {"dyt": ("alpha", "gamma", "beta"), "derf": ("alpha", "shift", "gamma", "beta")}.get(cfg.norm, ())
  return {f"{cfg.norm}{site}_{part}": getattr(module, part) for part in parts}


class FlaxModel(nnx.Module):
  """Embedding (text, with sinusoids unless RoPE), L blocks, Pre's final norm, the read-out."""

  def __init__(self, cfg: nt.Config, p_key: jax.Array, rngs: nnx.Rngs):
    self.cfg = cfg
    self.blocks = nnx.List([FlaxBlock(sampling.layer_params(cfg, p_key, l), cfg, rngs) for l in range(1, cfg.L + 1)])
    self.final_norm = _norm(cfg, rngs)
    head = sampling.head_params(cfg, p_key)
    if cfg.inputs == "text":
      self.embed = nnx.Embed(cfg.vocab, cfg.d, rngs=rngs, **F64)
      self.embed.embedding[...] = head["E"]
    if cfg.loss == "xent":
      self.readout = nnx.Linear(cfg.d, cfg.vocab, use_bias=False, precision=HIGHEST, rngs=rngs, **F64)
      self.readout.kernel[...] = head["W_emb"].T

  def loss(self, inputs: sampling.Inputs):
    cfg = self.cfg
    x = inputs.x
    if cfg.inputs == "text":
      x = np.sqrt((cfg.vocab + cfg.d) / 4) * self.embed(x)
      if cfg.positions == "sinusoidal":
        i, k = np.arange(cfg.n)[:, None], np.arange(cfg.d)[None, :] // 2
        angle = i / 10000.0 ** (2 * k / cfg.d)
        x = x + np.where(np.arange(cfg.d) % 2 == 0, np.sin(angle), np.cos(angle))
    for block in self.blocks:
      x = block(x)
    if cfg.arch == "pre":
      x = self.final_norm(x)
    if cfg.loss == "linear":
      return (x * inputs.target).sum(-1).mean()
    return optax.softmax_cross_entropy_with_integer_labels(self.readout(x), inputs.target).mean()


LLAMA = dict(nt.config.preset("llama"), loss="xent", heads=2, batch=2)
CASES = {
    "rmsnorm-gelu-causal": dict(norm="rmsnorm", ffn="gelu", causal=True),
    "dyt-swiglu-xavier": dict(norm="dyt", ffn="swiglu", attention="xavier", heads=2),
    "derf-rope-causal": dict(norm="derf", alpha0=0.8, attention="xavier", positions="rope", heads=2, causal=True),
    "llama": LLAMA,
    "dyt-preset": dict(nt.config.preset("dyt"), loss="xent", heads=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_flax_built_blocks_have_the_engines_gradient_norms(case):
  """Post and Pre (one engine pass) of each block: every ||dLoss/dW^l||_F of the Flax-built model (W3, the
  DyT/Derf alpha, shift, gamma, beta per norm site; the final norm's at L + 1) equals the engine's to 1e-10."""
  fields = {k: v for k, v in CASES[case].items() if k != "arch"}
  base = nt.Config(d=D, n=N, L=L, dtype="float64", **fields)
  seeds = np.arange(2)
  measured = engine.measure_archs(base, ("post", "pre"), [L], seeds, jax.random.key(5))
  with jax.enable_x64(True):
    for arch in ("post", "pre"):
      cfg = dataclasses.replace(base, arch=arch)
      for s, seed_key in enumerate(sampling.seed_keys(jax.random.key(5), seeds)):
        model = FlaxModel(cfg, sampling.params_key(seed_key), nnx.Rngs(0))
        inputs = sampling.inputs(cfg, sampling.data_key(seed_key))
        grads = nnx.grad(lambda m: m.loss(inputs))(model)
        flax_grads = nnx.merge(*nnx.split(model))
        nnx.update(flax_grads, grads)
        got = measured[arch][L]
        for l, block in enumerate(flax_grads.blocks):
          names = block.weights()
          assert set(names) == set(got.grad_norms) - {"E"}
          for name, param in names.items():
            expected = float(jnp.sqrt((param[...] ** 2).sum()))
            assert got.grad_norms[name][s, l] == pytest.approx(expected, rel=1e-10, abs=1e-14), (arch, s, l + 1, name)
        final = _norm_params(flax_grads.final_norm, cfg, 1) if arch == "pre" else {}
        assert set(final) == set(got.final_grad_norms)
        for name, param in final.items():
          expected = float(jnp.sqrt((param[...] ** 2).sum()))
          assert got.final_grad_norms[name][s, 0] == pytest.approx(expected, rel=1e-10), (arch, s, "final", name)
        if cfg.inputs == "text":
          expected = float(jnp.sqrt((flax_grads.embed.embedding[...] ** 2).sum()))
          assert got.grad_norms["E"][s, 0] == pytest.approx(expected, rel=1e-10), (arch, s, "E")


def test_the_tests_own_pieces_are_their_equations():
  """The pieces written here: DyT and Derf modules equal tanh / erf of alpha0 x at init (scipy's erf), nnx.RMSNorm
  without scale is x / sqrt(mean(x²) + eps), and the explicit RoFormer rotation matrices are orthogonal with
  ``R_m^T R_m' = R_(m'-m)`` (Eq. (34)'s relative-position property)."""
  with jax.enable_x64(True):
    x = np.asarray(jax.random.normal(jax.random.key(0), (N, D), jnp.float64)) * 2.0
    np.testing.assert_allclose(DyT(D, 0.5)(x), np.tanh(0.5 * x), rtol=1e-13)
    np.testing.assert_allclose(Derf(D, 0.5)(x), scipy_erf(0.5 * x), rtol=1e-13)
    rms = nnx.RMSNorm(D, epsilon=1e-6, use_scale=False, rngs=nnx.Rngs(0), **F64)
    np.testing.assert_allclose(rms(x), x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6), rtol=1e-12)
    r2, r5 = _rotation(2, D), _rotation(5, D)
    np.testing.assert_allclose(r2.T @ r2, np.eye(D), atol=1e-14)
    np.testing.assert_allclose(r2.T @ r5, _rotation(3, D), atol=1e-13)
