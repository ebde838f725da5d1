"""Effective-depth metrics: hand-computed values, ablation of an identity layer, the
Pre-LN ~l^(-1/2) decay, and the exponent fit on synthetic data.

References:
  Su 2022, kexue.fm/archives/9009 (the effective-depth argument); Xiong et al. 2020, Table 1.
"""

import dataclasses
import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import normtheory as nt
from normtheory import architectures, depth_metrics, fit, sampling, theory
from normtheory.config import Config

THETA_L = np.array([0.1, 0.2, 0.3])
SCALE_L = np.array([1.0, 2.0, 0.5])


def _rotate_and_scale(x_nxd, l):
  """Layer l of a 2-d toy stack: rotate every row by THETA_L[l-1], scale by SCALE_L[l-1]."""
  theta, scale = jnp.asarray(THETA_L)[l - 1], jnp.asarray(SCALE_L)[l - 1]
  rot = jnp.array([[jnp.cos(theta), jnp.sin(theta)], [-jnp.sin(theta), jnp.cos(theta)]])
  return scale * x_nxd @ rot


@pytest.mark.slow
def test_stack_metrics_equal_hand_computed_values():
  """Rotation by theta and scaling by s: rel_update = sqrt(s² - 2 s cos theta + 1),
  cos_sim = cos theta, and removing a layer rotates the output back by theta: angle theta/pi."""
  x_nxd = jnp.array([[1.0, 0.0], [0.3, -2.0]])
  got = depth_metrics.stack_metrics(_rotate_and_scale, lambda x: x, x_nxd, 3)
  np.testing.assert_allclose(got["rel_update"], np.sqrt(SCALE_L**2 - 2 * SCALE_L * np.cos(THETA_L) + 1), rtol=1e-5)
  np.testing.assert_allclose(got["cos_sim"], np.cos(THETA_L), rtol=1e-5)
  np.testing.assert_allclose(got["removal_angle"], THETA_L / np.pi, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["pre", "deepnorm"])
def test_depth_metrics_match_a_python_loop(arch):
  """depth_metrics (scan, vmap over seeds and removed layers, jit) equals a float64 numpy
  recomputation from a plain loop over arch.layer with the engine's keys; tolerance 1e-4."""
  cfg = nt.Config(arch=arch, d=8, L=3, n=4)
  model = architectures.get(arch)
  frame = depth_metrics.depth_metrics(cfg, seeds=[0, 3], key=7)
  assert list(frame.columns) == list(depth_metrics.COLUMNS)
  for seed_key, seed in zip(sampling.seed_keys(jax.random.key(7), [0, 3]), [0, 3]):
    p_key = sampling.params_key(seed_key)
    x0, _ = sampling.inputs(cfg, sampling.data_key(seed_key))

    def run(skip=None):
      x, xs = x0, [np.asarray(x0, np.float64)]
      for l in range(1, cfg.L + 1):
        if l != skip:
          x = model.layer(sampling.layer_params(cfg, p_key, l, model.weight_scale(cfg.L)), x, l, cfg.L, cfg)
        xs.append(np.asarray(x, np.float64))
      return xs, np.asarray(model.final(x, cfg.eps), np.float64).ravel()

    xs, full = run()
    cos = lambda a, b: np.vdot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b)
    expected = {
        "rel_update": [np.linalg.norm(xs[l] - xs[l - 1]) / np.linalg.norm(xs[l - 1]) for l in range(1, 4)],
        "cos_sim": [cos(xs[l - 1], xs[l]) for l in range(1, 4)],
        "removal_angle": [np.arccos(np.clip(cos(run(l)[1], full), -1, 1)) / np.pi for l in range(1, 4)],
    }
    rows = frame[frame["seed"] == seed]
    for name, values in expected.items():
      got = rows[rows["metric"] == name].sort_values("layer")["value"].to_numpy()
      np.testing.assert_allclose(got, values, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.slow
def test_removing_an_identity_layer_gives_angle_zero():
  """A Pre-LN layer with W_V = W2 = 0 is exactly the identity: removing it changes nothing
  (angle exactly 0, rel_update 0, cos_sim 1), while removing any other layer does."""
  cfg = nt.Config(arch="pre", d=16, L=4, n=4)
  seed_key = jax.random.key(0)
  p_key = sampling.params_key(seed_key)
  x_nxd, _ = sampling.inputs(cfg, sampling.data_key(seed_key))

  def layer(x, l):
    p = sampling.layer_params(cfg, p_key, l)
    keep = (l != 2).astype(x.dtype)
    p = {**p, "W_V": keep * p["W_V"], "W2": keep * p["W2"]}
    return architectures.pre_ln_layer(p, x, l, cfg.L, cfg)

  got = jax.jit(lambda x: depth_metrics.stack_metrics(layer, lambda y: y, x, cfg.L))(x_nxd)
  assert float(got["removal_angle"][1]) == 0.0
  assert float(got["rel_update"][1]) == 0.0
  assert float(got["cos_sim"][1]) == pytest.approx(1.0, abs=1e-6)
  assert (np.delete(np.asarray(got["removal_angle"]), 1) > 1e-3).all()


@pytest.fixture(scope="module")
def frames():
  """Metrics of Pre-LN and Post-LN at d=64, L=24, n=16, 4 seeds."""
  return {arch: depth_metrics.depth_metrics(nt.Config(arch=arch, d=64, L=24, n=16), seeds=4) for arch in ("pre", "post")}


def _seed_mean(frame, metric):
  return frame[frame["metric"] == metric].groupby("layer")["value"].mean().to_numpy()


@pytest.mark.slow
def test_pre_ln_updates_shrink_like_inverse_sqrt_depth(frames):
  """Pre-LN: rel_update decreases with l (every 4-layer block below the one before),
  the fit gives kappa with a CI inside (0.35, 0.65) and within 0.05 of the mean-field curve's,
  later layers matter less when removed, and the mean field's sqrt((A_l + 1/2)/q_l) matches
  every layer within 10%."""
  update_L = _seed_mean(frames["pre"], "rel_update")
  assert (np.diff(update_L.reshape(6, 4).mean(1)) < 0).all()
  f = fit.fit_update_exponent(frames["pre"], "pre", n_boot=200)
  assert 0.35 < f.ci[0] <= f.kappa <= f.ci[1] < 0.65
  assert f.r2 > 0.9
  removal_L = _seed_mean(frames["pre"], "removal_angle")
  assert removal_L[-4:].mean() < 0.5 * removal_L[:4].mean()
  predicted = theory.mean_field("pre", 64, 24, 16)
  np.testing.assert_allclose(update_L, predicted["rel_update"], rtol=0.10)
  layer_L = np.arange(1, 25)
  kappa_mean_field = -np.polyfit(np.log(layer_L), np.log(predicted["rel_update"]), 1)[0]
  assert abs(f.kappa - kappa_mean_field) < 0.05
  np.testing.assert_allclose(_seed_mean(frames["pre"], "cos_sim"), predicted["cos_sim"], rtol=0.05)


@pytest.mark.slow
def test_post_ln_updates_do_not_shrink(frames):
  """Post-LN renormalises every layer: rel_update is flat past the first layers (|kappa| < 0.1
  over l >= 4), its mean over l >= 8 is within 5% of the mean field's plateau
  sqrt(2 - 2/sqrt(3/2 (1 + A))) -> 0.919 (single layers scatter ~10% at d=64: the positions
  have collapsed onto nearly one direction), and the top layers matter most when removed."""
  f = fit.fit_update_exponent(frames["post"], "post", min_layer=4, n_boot=200)
  assert abs(f.kappa) < 0.1
  update_L = _seed_mean(frames["post"], "rel_update")
  predicted_L = theory.mean_field("post", 64, 24, 16)["rel_update"]
  assert _rel_err(predicted_L[7:].mean(), update_L[7:].mean()) < 0.05
  removal_L = _seed_mean(frames["post"], "removal_angle")
  assert removal_L[-4:].mean() > 1.3 * removal_L[:4].mean()


def _rel_err(predicted, sampled):
  return abs(predicted - sampled) / abs(sampled)


@pytest.mark.slow
def test_docstring_examples():
  assert doctest.testmod(depth_metrics).failed == 0


@pytest.mark.slow
def test_conditional_depths_share_one_pass_bit_for_bit():
  """Under conditional weights the rows of depths 2 and 4 come from one pass of the deepest model
  (depth_metrics_of_depths) and equal those of one pass per depth bit for bit; DeepNorm, whose layers
  depend on L, runs a pass per depth."""
  cfg = Config(arch="pre", d=8, n=4, weights="conditional")
  shared = depth_metrics.depth_metrics_of_depths(cfg, (2, 4), 2, 0)
  alone = pd.concat([depth_metrics.depth_metrics(dataclasses.replace(cfg, L=L), 2, 0) for L in (2, 4)],
                    ignore_index=True)
  pd.testing.assert_frame_equal(shared, alone, check_exact=True)
  assert depth_metrics.shares_one_pass(cfg)
  assert not depth_metrics.shares_one_pass(dataclasses.replace(cfg, arch="deepnorm"))
  assert not depth_metrics.shares_one_pass(dataclasses.replace(cfg, weights="explicit"))


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["explicit", "conditional"])
def test_a_seeds_metrics_do_not_depend_on_the_seeds_measured_with_it(weights):
  """Seeds 0, 1, 2 at once give the bits of seed 0 alone and seeds 1, 2 together (a sweep's chunks):
  the seeds are looped over, not vmapped (a vmapped batch of 8 against 4 changed 73% of the
  conditional depth-6144 store's values in their last bits)."""
  cfg = Config(arch="pre", d=8, n=4, L=3, weights=weights)
  together = depth_metrics.depth_metrics(cfg, [0, 1, 2], 0)
  apart = pd.concat([depth_metrics.depth_metrics(cfg, seeds, 0) for seeds in ([0], [1, 2])], ignore_index=True)
  keys = ["seed", "layer", "metric"]
  pd.testing.assert_frame_equal(together.sort_values(keys).reset_index(drop=True),
                                apart.sort_values(keys).reset_index(drop=True), check_exact=True)
