"""The model is the paper's model at initialization (Xiong et al. 2020, Section 3.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normtheory as nt
from normtheory import layers, sampling
from normtheory.config import PARAM_NAMES


@pytest.mark.slow
def test_zero_query_key_makes_attention_uniform():
  """W_Q = W_K = 0: every position gets the same output, mean_j x_j W_V W_O."""
  cfg = nt.Config(d=16, n=5)
  p = sampling.layer_params(cfg, jax.random.key(0), 1)
  x_nxd = jax.random.normal(jax.random.key(1), (cfg.n, cfg.d))
  out_nxd = layers.attention(x_nxd, p, None)
  expected_d = x_nxd.mean(0) @ p["W_V"] @ p["W_O"]
  np.testing.assert_allclose(out_nxd, jnp.broadcast_to(expected_d, out_nxd.shape), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(out_nxd - out_nxd[0]).max()) == 0.0


def test_init_variances_are_xavier():
  """Empirical variance of each weight is within 3 % of 2/(fan_in+fan_out); W_Q, W_K and biases are zero."""
  cfg = nt.Config(d=256, d_ff=512)
  p = sampling.layer_params(cfg, jax.random.key(0), 4)
  for name, (fan_in, fan_out) in sampling.weight_shapes(cfg).items():
    w = np.asarray(p[name])
    assert w.shape == (fan_in, fan_out)
    if name in ("W_Q", "W_K"):
      assert not w.any()
      continue
    target = 2.0 / (fan_in + fan_out)  # the sample variance of >= 131k draws has relative sd < 0.4 %
    assert abs(w.var() / target - 1) < 0.03, (name, w.var(), target)
    assert abs(w.mean()) < 4 * np.sqrt(target / w.size)
  assert not np.asarray(p["b1"]).any() and not np.asarray(p["b2"]).any()


def test_layer_weights_depend_on_layer_not_depth_and_differ_across_layers():
  """Layer l's weights are a function of (sample, l): equal for any L, distinct for different l."""
  cfg = nt.Config(d=8)
  key = jax.random.key(2)
  w3 = sampling.layer_params(cfg, key, 3)
  w4 = sampling.layer_params(cfg, key, 4)
  assert all(not np.array_equal(w3[n], w4[n]) for n in ("W_V", "W_O", "W1", "W2"))
  assert tuple(sampling.weight_shapes(cfg)) == PARAM_NAMES


@pytest.mark.slow
def test_post_ln_last_layer_gradient_flat_in_depth_pre_ln_falls():
  """Theorem 1 at small size (d=64, 16 seeds): Post-LN's last-layer ||dL/dW2|| does not fall from
  L=4 to L=16 (ratio within 3 standard errors of 1 or above), Pre-LN's falls by more than 3 standard errors."""
  ratios = {}
  for arch in ("post", "pre"):
    g4 = nt.grad_norms(nt.Config(arch=arch, d=64, L=4), seeds=16).grad_norm["W2"][:, -1]
    g16 = nt.grad_norms(nt.Config(arch=arch, d=64, L=16), seeds=16).grad_norm["W2"][:, -1]
    ratio = g16.mean() / g4.mean()
    se = ratio * np.sqrt((g4.std() / g4.mean()) ** 2 + (g16.std() / g16.mean()) ** 2) / 4  # sqrt(16) seeds
    ratios[arch] = (ratio, se)
  post_ratio, post_se = ratios["post"]
  pre_ratio, pre_se = ratios["pre"]
  assert post_ratio > 1 - 3 * post_se, ratios
  assert pre_ratio < 1 - 3 * pre_se, ratios
