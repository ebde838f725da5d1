"""Tests of the warm-up training demo (normtheory.training, experiments/warmup.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normtheory import architectures, sampling, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = training.Task("sort", vocab=8, n=4, n_train=64, n_val=16, seed=0)


def fixed_batch_data(task: training.Task) -> training.Dataset:
  """A data set whose training set is one sequence, so every batch is the same."""
  data = training.make_data(task)
  return training.Dataset(data.train_x[:1], data.train_y[:1], data.train_x[:1], data.train_y[:1])


@pytest.mark.parametrize("arch", ["post", "pre"])
def test_one_update_changes_params_and_lowers_fixed_batch_loss(arch):
  """The jitted train step moves every parameter and lowers the loss on its (fixed) batch."""
  cfg = training.model_config(arch, 2, 16, TINY)
  runner = training.make_runner(cfg, "adam", fixed_batch_data(TINY), batch=4, chunk=1)
  p_keys, b_keys = training.seed_keys([0])
  params, opt_state = runner.init(p_keys)
  before = runner.evaluate(params)["val_loss"]
  lr_T = training.lr_schedule(1e-2, 0, 100)(jnp.arange(1))
  new_params, _, per_step = runner.chunk(params, opt_state, b_keys, lr_T, 0)
  after = runner.evaluate(new_params)["val_loss"]
  np.testing.assert_allclose(per_step["train_loss"][:, 0], before, rtol=1e-5)
  for old, new in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)):
    assert not np.allclose(old, new)
  assert after[0] < before[0]


@pytest.mark.parametrize("peak,warmup,t0", [(1e-3, 0, 100), (5e-4, 500, 500), (1e-3, 4000, 500), (1e-3, 100, 400)])
def test_schedule_matches_documented_formula(peak, warmup, t0):
  """lr at update t is peak*min(1, t/w)*min(1, sqrt(max(w, t0)/t)); Vaswani's form when w >= t0."""
  t_k = np.array([1, 2, 50, 99, 100, 101, 250, 499, 500, 501, 3999, 4000, 4001, 10000])
  got_k = np.asarray(training.lr_schedule(peak, warmup, t0)(jnp.asarray(t_k - 1)))
  ramp_k = np.minimum(1.0, t_k / warmup) if warmup else 1.0
  want_k = peak * ramp_k * np.minimum(1.0, np.sqrt(max(warmup, t0) / t_k))
  tol = {"rtol": 1e-5, "atol": 1e-6 * peak}  # float32 cancellation in optax's linear ramp
  np.testing.assert_allclose(got_k, want_k, **tol)
  if warmup >= t0:
    np.testing.assert_allclose(got_k, peak * np.minimum(t_k / warmup, np.sqrt(warmup / t_k)), **tol)


def test_data_deterministic_per_seed_and_labels_correct():
  """make_data is a function of the task (seed included), splits disjointly, and labels sort/reverse."""
  a, b = training.make_data(TINY), training.make_data(TINY)
  other = training.make_data(training.Task("sort", 8, 4, 64, 16, seed=1))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.train_x, other.train_x)
  train_rows = {tuple(r) for r in np.asarray(a.train_x)}
  assert len(train_rows) == TINY.n_train
  assert not train_rows & {tuple(r) for r in np.asarray(a.val_x)}
  np.testing.assert_array_equal(a.train_y, np.sort(a.train_x, axis=1))
  rev = training.make_data(training.Task("reverse", 8, 4, 64, 16))
  np.testing.assert_array_equal(rev.val_y, np.asarray(rev.val_x)[:, ::-1])


@pytest.mark.parametrize("arch", ["post", "pre"])
def test_forward_equals_architecture_layers_one_by_one(arch):
  """encode = embed + positions, then architectures.get(arch).layer for l = 1..L, then .final."""
  cfg = training.model_config(arch, 3, 16, TINY)
  key = jax.random.PRNGKey(3)
  params = training.init_params(cfg, key)
  x_n = training.make_data(TINY).val_x[0]
  a = architectures.get(arch)
  h_nxd = params["embed"][x_n] + training.sinusoidal_positions(TINY.n, cfg.d)
  for l in range(1, cfg.L + 1):
    p = jax.tree.map(lambda w: w[l - 1], params["layers"])
    for name in ("W_V", "W_O", "W1", "W2"):
      np.testing.assert_array_equal(p[name], sampling.layer_params(cfg, key, l)[name])
    assert float(jnp.abs(p["W_Q"]).min()) > 0 and float(jnp.abs(p["W_K"]).min()) > 0
    h_nxd = a.layer(p, h_nxd, l, cfg.L, cfg)
  np.testing.assert_allclose(training.encode(cfg, params, x_n), a.final(h_nxd, cfg.eps), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag", [["--L", "0"], ["--steps", "0"], ["--arch", "nope"]])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(flag, tmp_path):
  """experiments/warmup.py rejects bad input: exit status 2, one stderr line, no files."""
  out = tmp_path / "out"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "warmup.py"), *flag,
         "--out", str(out / "w.csv"), "--figures", str(out)]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not out.exists()
