"""The warm-up demo (normtheory.warmup, experiments/warmup.py): training step, schedule, data,
forward pass, keys, figure and command line.

References:
  Xiong et al. 2020, Section 3 and Fig. 2; Vaswani et al. 2017, Eq. (3) (the schedule).
"""

import doctest
import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from normtheory import architectures, plot, prng, sampling, warmup

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "warmup.py"
TINY = warmup.Task("sort", vocab=8, n=4, n_train=64, n_val=16, seed=0)


def fixed_batch_data(task: warmup.Task) -> warmup.Dataset:
  """A data set whose training set is one sequence, so every batch is the same."""
  data = warmup.make_data(task)
  return warmup.Dataset(data.train_x[:1], data.train_y[:1], data.train_x[:1], data.train_y[:1])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["post", "pre"])
def test_one_update_changes_params_and_lowers_fixed_batch_loss(arch):
  """The jitted train step moves every parameter and lowers the loss on its (fixed) batch."""
  cfg = warmup.model_config(arch, 2, 16, TINY)
  runner = warmup.make_runner(cfg, "adam", fixed_batch_data(TINY), batch=4, chunk=1)
  keys = warmup.init_and_data_keys([0])
  params, opt_state = runner.init(keys.params)
  before = runner.evaluate(params)["val_loss"]
  lr_T = warmup.lr_schedule(1e-2, 0, 100)(jnp.arange(1))
  out = runner.chunk(params, opt_state, keys.batches, lr_T, 0)
  after = runner.evaluate(out.params)["val_loss"]
  np.testing.assert_allclose(out.per_step["train_loss"][:, 0], before, rtol=1e-5)
  for old, new in zip(jax.tree.leaves(params), jax.tree.leaves(out.params)):
    assert not np.allclose(old, new)
  assert after[0] < before[0]


@pytest.mark.parametrize("peak,warmup_steps,t0", [(1e-3, 0, 100), (5e-4, 500, 500), (1e-3, 4000, 500), (1e-3, 100, 400)])
def test_schedule_matches_documented_formula(peak, warmup_steps, t0):
  """lr at update t is peak*min(1, t/w)*min(1, sqrt(max(w, t0)/t)); Vaswani's form when w >= t0."""
  t_k = np.array([1, 2, 50, 99, 100, 101, 250, 499, 500, 501, 3999, 4000, 4001, 10000])
  got_k = np.asarray(warmup.lr_schedule(peak, warmup_steps, t0)(jnp.asarray(t_k - 1)))
  ramp_k = np.minimum(1.0, t_k / warmup_steps) if warmup_steps else 1.0
  want_k = peak * ramp_k * np.minimum(1.0, np.sqrt(max(warmup_steps, t0) / t_k))
  tol = {"rtol": 1e-5, "atol": 1e-6 * peak}  # float32 cancellation in optax's linear ramp
  np.testing.assert_allclose(got_k, want_k, **tol)
  if warmup_steps >= t0:
    np.testing.assert_allclose(got_k, peak * np.minimum(t_k / warmup_steps, np.sqrt(warmup_steps / t_k)), **tol)


def test_data_deterministic_per_seed_and_labels_correct():
  """make_data is a function of the task (seed included), splits disjointly, and labels sort/reverse."""
  a, b = warmup.make_data(TINY), warmup.make_data(TINY)
  other = warmup.make_data(warmup.Task("sort", 8, 4, 64, 16, seed=1))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.train_x, other.train_x)
  train_rows = {tuple(r) for r in np.asarray(a.train_x)}
  assert len(train_rows) == TINY.n_train
  assert not train_rows & {tuple(r) for r in np.asarray(a.val_x)}
  np.testing.assert_array_equal(a.train_y, np.sort(a.train_x, axis=1))
  rev = warmup.make_data(warmup.Task("reverse", 8, 4, 64, 16))
  np.testing.assert_array_equal(rev.val_y, np.asarray(rev.val_x)[:, ::-1])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["post", "pre"])
def test_forward_equals_architecture_layers_one_by_one(arch):
  """encode = embed + positions, then architectures.get(arch).layer for l = 1..L, then .final."""
  cfg = warmup.model_config(arch, 3, 16, TINY)
  key = jax.random.key(3)
  params = warmup.init_params(cfg, key)
  x_n = warmup.make_data(TINY).val_x[0]
  a = architectures.get(arch)
  h_nxd = params["embed"][x_n] + warmup.sinusoidal_positions(TINY.n, cfg.d)
  for l in range(1, cfg.L + 1):
    p = jax.tree.map(lambda w: w[l - 1], params["layers"])
    for name in ("W_V", "W_O", "W1", "W2"):
      np.testing.assert_array_equal(p[name], sampling.layer_params(cfg, key, l)[name])
    assert float(jnp.abs(p["W_Q"]).min()) > 0 and float(jnp.abs(p["W_K"]).min()) > 0
    h_nxd = a.layer(p, h_nxd, l, cfg.L, cfg)
  np.testing.assert_allclose(warmup.encode(cfg, params, x_n), a.final(h_nxd, cfg.eps), rtol=1e-5, atol=1e-5)


def test_run_keys_are_the_measurement_addressing_and_the_legacy_keys():
  """Seed s's keys are fold_in(fold_in(make_key(base), s), 0 | 1), as for the measurements, and for
  base 0 they are bit for bit the keys of the legacy raw PRNGKey(0) the demo used before (no number moved)."""
  seeds = [0, 1, 5]
  keys = warmup.init_and_data_keys(seeds)
  base_S = sampling.seed_keys(prng.make_key(0), seeds)
  legacy_S = sampling.seed_keys(jax.random.PRNGKey(0), seeds)
  for got, derive in [(keys.params, sampling.params_key), (keys.batches, sampling.data_key)]:
    want = jax.random.key_data(jax.vmap(derive)(base_S))
    np.testing.assert_array_equal(jax.random.key_data(got), want)
    np.testing.assert_array_equal(jax.random.key_data(got), jax.vmap(derive)(legacy_S))
  other = warmup.init_and_data_keys(seeds, base_seed=1)
  assert not np.array_equal(jax.random.key_data(other.params), jax.random.key_data(keys.params))


def _synthetic_log() -> pd.DataFrame:
  """A training log in warmup.COLUMNS: 2 archs x 2 settings x 3 seeds, 8 updates, validation every 4."""
  rng = np.random.default_rng(0)
  rows = []
  for arch in ("post", "pre"):
    for optimizer, w in (("adam", 0), ("radam", 0)):
      for seed in range(3):
        for step in range(1, 9):
          for metric in ("train_loss", "grad_norm_W2"):
            rows.append((arch, 2, 16, optimizer, w, 1e-3, seed, step, metric, rng.uniform(0.5, 2.0)))
        for step in (0, 4, 8):
          for metric in ("val_loss", "val_acc"):
            rows.append((arch, 2, 16, optimizer, w, 1e-3, seed, step, metric, rng.uniform(0.0, 1.0)))
  return pd.DataFrame(rows, columns=list(warmup.COLUMNS))


def test_final_metrics_are_the_seed_mean_and_std_at_the_last_step():
  """final_metrics: one row per (arch, L, setting) with mean and sample std over seeds at the last step."""
  log = _synthetic_log()
  final = warmup.final_metrics(log)
  assert len(final) == 4 and (final["seeds"] == 3).all()
  row = final[(final.arch == "pre") & (final.optimizer == "radam")].iloc[0]
  acc = log[(log.arch == "pre") & (log.optimizer == "radam") & (log.metric == "val_acc") & (log.step == 8)].value
  assert row.val_acc == pytest.approx(acc.mean()) and row.val_acc_std == pytest.approx(acc.std())


def test_fig_warmup_is_a_figure_of_seed_means_and_saves_png_and_pdf(tmp_path):
  """fig_warmup returns a Figure (no pyplot) with one row per (arch, L) and three panels; the validation
  lines are the seed means at the validation steps; the gradient panel averages each 4-update window;
  out_dir gets fig_warmup.png and .pdf through plot.save, with plot's arch labels in the titles."""
  log = _synthetic_log()
  fig = warmup.fig_warmup(log, tmp_path, dpi=50)
  assert isinstance(fig, Figure) and len(fig.axes) == 6
  panels = {ax.get_title(): ax for ax in fig.axes}
  assert set(panels) == {f"{plot.ARCH_LABELS[a]}, L=2: {label}" for a in ("post", "pre")
                         for label in ("validation loss", "validation accuracy", plot.GRAD_LABEL)}
  (line, *_) = panels["Post-LN, L=2: validation accuracy"].get_lines()  # first setting: adam
  acc = log[(log.arch == "post") & (log.optimizer == "adam") & (log.metric == "val_acc")]
  np.testing.assert_allclose(line.get_xdata(), [0, 4, 8])
  np.testing.assert_allclose(line.get_ydata(), acc.groupby("step").value.mean().to_numpy())
  (grad_line, *_) = panels[f"Post-LN, L=2: {plot.GRAD_LABEL}"].get_lines()
  g = log[(log.arch == "post") & (log.optimizer == "adam") & (log.metric == "grad_norm_W2")]
  windows = g.assign(step=(g.step + 3) // 4 * 4).groupby(["seed", "step"]).value.mean().groupby("step").mean()
  np.testing.assert_allclose(grad_line.get_xdata(), [4, 8])
  np.testing.assert_allclose(grad_line.get_ydata(), windows.to_numpy())
  assert (tmp_path / "fig_warmup.png").stat().st_size > 0
  assert (tmp_path / "fig_warmup.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_train_returns_the_documented_log():
  """The package docstring's example runs: train logs every update's loss and W2 norm and the validation
  metrics at steps 0, eval_every, ..."""
  assert doctest.testmod(warmup).failed == 0


def _warmup_script():
  spec = importlib.util.spec_from_file_location("warmup_script", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("flag", [["--L", "0"], ["--steps", "0"], ["--arch", "nope"], ["--lr", "-1"], ["--bogus"]])
def test_cli_bad_input_returns_2_with_one_line_and_writes_nothing(flag, tmp_path, stderr_line):
  """experiments/warmup.py's main rejects bad input: status 2, one stderr line naming the script, no files."""
  out = tmp_path / "out"
  assert _warmup_script().main([*flag, "--out", str(out / "w.csv"), "--figures", str(out)]) == 2
  assert stderr_line().startswith("warmup.py: error: ")
  assert not out.exists()


@pytest.mark.slow
def test_cli_script_exits_2_on_bad_input(tmp_path):
  """The script itself (a fresh interpreter) exits with status 2 and one stderr line."""
  out = tmp_path / "out"
  cmd = [sys.executable, str(SCRIPT), "--L", "0", "--out", str(out / "w.csv"), "--figures", str(out)]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not out.exists()
