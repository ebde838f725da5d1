"""Every prediction of normtheory.theory against Monte-Carlo sampling, with stated tolerances.

References:
  Xiong et al. 2020, Section 3.3 (Lemmas 1-3, Theorem 1); Cho & Saul 2009 (arc-cosine kernel).
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normtheory as nt
from normtheory import architectures, engine, layers, sampling, theory

D, N, DEPTHS, SEEDS = 256, 16, (6, 24, 96), 8


@pytest.fixture(scope="module")
def measured():
  """Engine measurements of Post-LN and Pre-LN at d=256, n=16, L in DEPTHS, 8 seeds."""
  return {
      arch: engine.measure_depths(nt.Config(arch=arch, d=D, L=max(DEPTHS), n=N), DEPTHS, np.arange(SEEDS), jax.random.key(0))
      for arch in ("post", "pre")
  }


def _rel_err(predicted, sampled):
  return abs(predicted - sampled) / abs(sampled)


# --- Lemma 1 and the arc-cosine kernel ----------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_lemma1_relu_sq_norm(sigma):
  """Lemma 1: E||ReLU(x)||² = sigma² d/2; 4000 draws, relative std of the mean 0.2%, tolerance 1%."""
  x_sxd = sigma * jax.random.normal(jax.random.key(1), (4000, D))
  sampled = float((jax.nn.relu(x_sxd) ** 2).sum(-1).mean())
  assert _rel_err(theory.relu_sq_norm(sigma, D), sampled) < 0.01


@pytest.mark.parametrize("rho", [-0.5, 0.0, 0.6, 0.95])
def test_relu_correlation_is_the_arccos_kernel(rho):
  """E[ReLU(u) ReLU(v)] / (1/2) = k(rho) for unit Gaussians with correlation rho; 10^6 draws, abs. tol. 0.005."""
  u_s, z_s = jax.random.normal(jax.random.key(2), (2, 1_000_000))
  v_s = rho * u_s + np.sqrt(1 - rho**2) * z_s
  sampled = 2 * float((jax.nn.relu(u_s) * jax.nn.relu(v_s)).mean())
  assert abs(theory.relu_correlation(rho) - sampled) < 0.005
  assert theory.relu_correlation(0.0) == pytest.approx(1 / np.pi)
  assert theory.relu_correlation(1.0) == pytest.approx(1.0)


# --- Lemma 3 ---------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_lemma3_ln_jacobian_spectral_norm(eps):
  """Lemma 3: the SVD of jax.jacfwd(LN) at eps=0 has top singular value sqrt(d)/||x - mean||,
  and layers.ln_jacobian_norm (1/sqrt(var + eps)) matches the SVD at any eps; rtol 1e-4 (float32)."""
  d = 24
  x_nxd = 3.0 + 2.0 * jax.random.normal(jax.random.key(3), (5, d))
  svd_n = np.array([
      np.linalg.svd(np.asarray(jax.jacfwd(lambda v: layers.layer_norm(v, eps))(x_d)), compute_uv=False)[0]
      for x_d in x_nxd
  ])
  np.testing.assert_allclose(np.asarray(layers.ln_jacobian_norm(x_nxd, eps)), svd_n, rtol=1e-4)
  if eps == 0.0:
    np.testing.assert_allclose(theory.ln_jacobian_norm_eps0(x_nxd), svd_n, rtol=1e-4)


# --- Lemma 2 ---------------------------------------------------------------------


@pytest.mark.slow
def test_lemma2_post_x5_sq_norm():
  """Lemma 2 (Post-LN): E||x5||² = 3d/2 for x5 = x3 + FFN(x3), x3 = LN(x + Attn(x)), built from
  the layer's blocks; 64 weight draws × 16 rows at d=256 (std of the mean ~0.6%), tolerance 2%."""
  cfg = nt.Config(arch="post", d=D, n=N)

  def x5_sq_norm(seed_key):
    p = sampling.layer_params(cfg, sampling.params_key(seed_key), 1)
    x_nxd, _ = sampling.inputs(cfg, sampling.data_key(seed_key))
    x3_nxd = layers.layer_norm(x_nxd + layers.attention(x_nxd, p, None), cfg.eps)
    x5_nxd = x3_nxd + layers.ffn(x3_nxd, p, None)
    return (x5_nxd**2).sum(-1).mean()

  sampled = float(jax.vmap(x5_sq_norm)(sampling.seed_keys(jax.random.key(4), np.arange(64))).mean())
  assert _rel_err(theory.post_x5_sq_norm(D), sampled) < 0.02


@pytest.mark.slow
def test_lemma2_post_x5_in_every_layer_of_a_deep_model(measured):
  """Lemma 2 (Post-LN) holds in all 96 layers: the second LN of each layer sees ||x5||² = 3d/2,
  so its Jacobian norm is sqrt(2/3) (eps ~ 0). Mean over layers and seeds within 1%; per-layer
  means over 8 seeds within 6% (their spread is ~1.3%: ||FFN(x3)||² varies with the weights)."""
  ln_jac_SxL = measured["post"][96].ln_jacobian[:, :, 1]
  expected = np.sqrt(D / theory.post_x5_sq_norm(D))
  assert _rel_err(expected, ln_jac_SxL.mean()) < 0.01
  np.testing.assert_allclose(ln_jac_SxL.mean(0), expected, rtol=0.06)


@pytest.mark.slow
def test_lemma2_pre_bounds_hold_and_correlation_pushes_to_the_upper_one(measured):
  """Lemma 2 (Pre-LN) under uniform attention, d=256, n=16, up to 96 layers.

  Both bounds hold at every depth (the attention branch adds ||mean_j LN(x_j)||² in
  [0, d]). The i.i.d.-token picture (attention adds d/n) predicts
  q_{l+1} = 1 + l (1/2 + 1/n), just above the lower bound: at l = 95 that is 54.4
  against a measured ~130, a factor ~2.4 it misses, because positions correlate (the
  shared attention vector and the ReLU's positive mean) and A -> d; the correlated
  mean-field recursion gets it within 10%, and predicts how far up the band it sits.
  """
  sq_all = measured["pre"][96].sq_norms.mean(0) / D  # (97,): entering layers 1..96, then leaving layer 96
  sq_per_d_L = sq_all[:96]  # entering layer l+1 = after l layers
  l_L = np.arange(96)
  lower_L, upper_L = theory.pre_sq_norm_bounds(D, l_L)
  assert (sq_per_d_L >= 0.98 * lower_L / D).all()
  assert (sq_per_d_L <= upper_L / D).all()
  iid_L = theory.mean_field("pre", D, 96, N, correlated=False)["sq_norm_per_d"]
  np.testing.assert_allclose(iid_L, 1 + l_L * (0.5 + 1 / N))
  assert sq_per_d_L[-1] / iid_L[-1] > 2.0
  predicted_L = theory.mean_field("pre", D, 96, N)["sq_norm_per_d"]
  np.testing.assert_allclose(predicted_L[1:], sq_per_d_L[1:], rtol=0.10)
  band_L = (sq_per_d_L - lower_L / D) / ((upper_L - lower_L) / D + 1e-12)
  predicted_band_L = (predicted_L - lower_L / D) / ((upper_L - lower_L) / D + 1e-12)
  assert abs(band_L[-1] - predicted_band_L[-1]) < 0.05
  assert band_L[-1] > 0.8
  # the state leaving the last layer (hidden layer L + 1) is inside the band of l = 96, as the mean field says
  (lower,), (upper,) = theory.pre_sq_norm_bounds(D, np.array([96]))
  assert 0.98 * lower / D <= sq_all[96] <= upper / D
  np.testing.assert_allclose(theory.mean_field("pre", D, 96, N)["final_sq_norm_per_d"], sq_all[96], rtol=0.10)


# --- The mean-field predictor against the engine ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["post", "pre"])
@pytest.mark.parametrize("L", DEPTHS)
def test_mean_field_last_layer_w2(measured, arch, L):
  """Mean over 8 seeds of ||dLoss/dW2^L||_F (linear loss, d=256, n=16) within 10% of
  predict_last_layer_w2 (measured error <= 4%; seed-to-seed std 5-8%)."""
  sampled = float(measured[arch][L].grad_norms["W2"][:, -1].mean())
  assert _rel_err(theory.predict_last_layer_w2(arch, D, L, N), sampled) < 0.10


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["post", "pre"])
@pytest.mark.parametrize("L", DEPTHS)
def test_mean_field_sq_norm(measured, arch, L):
  """Mean over 8 seeds of E||x_L||²/d entering the last layer within 10% of the mean field
  (measured error <= 4%)."""
  sampled = float(measured[arch][L].sq_norms[:, L - 1].mean()) / D
  assert _rel_err(theory.mean_field(arch, D, L, N)["sq_norm_per_d"][-1], sampled) < 0.10


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["post", "pre"])
def test_mean_field_correlation(arch):
  """The mean cross-position correlation of the state entering each of 24 layers
  (d=256, n=16, 4 seeds) within 0.05 of the mean field's (which goes to 1 for Post-LN)."""
  L = 24
  cfg = nt.Config(arch=arch, d=D, L=L, n=N)
  model = architectures.get(arch)

  def correlations(seed_key):
    p_key = sampling.params_key(seed_key)
    x_nxd, _ = sampling.inputs(cfg, sampling.data_key(seed_key))

    def step(x, l):
      u_nxd = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
      cos_nxn = u_nxd @ u_nxd.T
      mean_off = (cos_nxn.sum() - jnp.trace(cos_nxn)) / (N * (N - 1))
      return model.layer(sampling.layer_params(cfg, p_key, l), x, l, L, cfg), mean_off

    return jax.lax.scan(step, x_nxd, jnp.arange(1, L + 1))[1]

  keys = sampling.seed_keys(jax.random.key(5), np.arange(4))
  sampled_L = np.asarray(jax.jit(jax.vmap(correlations))(keys)).mean(0)
  np.testing.assert_allclose(theory.mean_field(arch, D, L, N)["correlation"], sampled_L, atol=0.05)


def test_post_over_pre_grows_like_sqrt_depth():
  """Theorem 1's consequence in the mean field: g_post/g_pre = sqrt(q_{L+1}/(3/2)) and
  q_{L+1} -> 3L/2 as tokens correlate, so (g_post/g_pre)² / L -> 1 (within 5% at L = 10^4)."""
  L = 10_000
  ratio = theory.predict_last_layer_w2("post", D, L, N) / theory.predict_last_layer_w2("pre", D, L, N)
  assert ratio**2 / L == pytest.approx(1.0, rel=0.05)
  assert theory.bound_shape("post", D, 6) == theory.bound_shape("post", D, 96) == D * np.sqrt(np.log(D))
  assert theory.bound_shape("post", D, 96) / theory.bound_shape("pre", D, 96) == pytest.approx(np.sqrt(96))
  with pytest.raises(ValueError, match="post and pre only"):
    theory.bound_shape("deepnorm", D, 6)


def test_closed_forms_and_docstring_examples():
  """Post-LN's closed form sqrt(d (d-2)/(3n)) at any depth, and the module's doctest."""
  for L in (1, 7, 50):
    assert theory.predict_last_layer_w2("post", D, L, N) == pytest.approx(np.sqrt(D * (D - 2) / (3 * N)))
  assert doctest.testmod(theory).failed == 0


def test_bound_d_exponent_is_the_secant_exponent_of_d_sqrt_ln_d():
  """bound_d_exponent(64, 512) is ln(shape(512)/shape(64))/ln 8 = 1.097, and 1 for one width."""
  shape = lambda d: d * np.sqrt(np.log(d))  # noqa: E731
  assert theory.bound_d_exponent(64, 512) == pytest.approx(np.log(shape(512) / shape(64)) / np.log(8), rel=1e-12)
  assert theory.bound_d_exponent(64, 512) == pytest.approx(1.097, abs=5e-4)
  assert theory.bound_d_exponent(128, 128) == 1.0


def test_pre_post_ratio_is_the_mean_field_ratio_at_its_own_q():
  """sqrt(3/(2 q_{L+1})) with q_{L+1} from the mean field equals the mean field's g_pre/g_post
  (float64, 1e-12) at every depth: both pass exactly one LayerNorm (Lemmas 2, 3)."""
  for L in (1, 6, 96, 1000):
    q = theory.mean_field("pre", D, L, N)["final_sq_norm_per_d"]
    ratio = theory.predict_last_layer_w2("pre", D, L, N) / theory.predict_last_layer_w2("post", D, L, N)
    assert theory.pre_post_ratio(q) == pytest.approx(ratio, rel=1e-12)


def test_last_layer_w2_curve_equals_one_model_per_depth():
  """One recursion to max(L) gives predict_last_layer_w2 at every depth (1e-12), for a depth-free
  arch (pre) and a depth-dependent one (deepnorm, one recursion per depth)."""
  for arch in ("pre", "deepnorm", "mixln"):
    L_K = [1, 5, 6, 40]
    expected = [theory.predict_last_layer_w2(arch, 64, L, N) for L in L_K]
    np.testing.assert_allclose(theory.last_layer_w2_curve(arch, 64, L_K, N), expected, rtol=1e-12)


def test_local_exponent_exceeds_one_half_and_tends_to_it():
  """Pre-LN's mean-field local exponent -dln g/dln L: above 1/2 on the grid's depths (6..96), falling
  towards 1/2 (within 0.005 at L = 10^4); it is the secant of the curve between L and L + 1, and it is
  (1/2) dln q_{L+1}/dln L (the final LayerNorm's Jacobian, Lemma 3). Post-LN's is 0 (1e-12)."""
  L_K = np.array([6, 12, 24, 48, 96, 1000, 10_000])
  local = theory.local_exponent("pre", 512, 16, L_K)
  np.testing.assert_allclose(local.L, np.sqrt(L_K * (L_K + 1.0)))
  assert (local.gamma[:5] > 0.52).all() and (np.diff(local.gamma[2:]) < 0).all()
  assert 0.5 < local.gamma[-1] < 0.505
  q_K, q_next_K = ([theory.mean_field("pre", 512, int(L), 16)["final_sq_norm_per_d"] for L in Ls]
                   for Ls in (L_K, L_K + 1))
  np.testing.assert_allclose(local.gamma, 0.5 * np.log(np.divide(q_next_K, q_K)) / np.log1p(1 / L_K), rtol=1e-9)
  np.testing.assert_allclose(theory.local_exponent("post", 512, 16, L_K).gamma, 0.0, atol=1e-12)


def test_mean_field_gap_names_what_the_derivation_does_not_cover():
  """None for SPEC §1's cell; a reason for xavier attention, text inputs, heads, other losses or
  batches (the gradient only) and for archs without a mean-field model."""
  cell = {"arch": "pre", "loss": "linear", "batch": 1, "attention": "uniform", "heads": 1, "inputs": "gaussian"}
  assert theory.mean_field_gap(cell) is None
  assert "xavier" in theory.mean_field_gap({**cell, "attention": "xavier"})
  assert "text" in theory.mean_field_gap({**cell, "inputs": "text"}, gradient=False)
  assert theory.mean_field_gap({**cell, "heads": 2}) is None  # uniform heads: the same function as one head
  assert "linear loss" in theory.mean_field_gap({**cell, "loss": "xent"})
  assert theory.mean_field_gap({**cell, "loss": "xent", "batch": 4}, gradient=False) is None
  assert "batch=4" in theory.mean_field_gap({**cell, "batch": 4})
  assert "arch residual" in theory.mean_field_gap({**cell, "arch": "residual"})


def test_unknown_arch_is_rejected():
  with pytest.raises(ValueError, match="arch must be one of"):
    theory.mean_field("bogus", D, 6, N)
