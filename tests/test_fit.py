"""Fits recover known exponents from synthetic stores; the bootstrap is deterministic.

References:
  Xiong et al. 2020, Theorem 1 (Post O(d√ln d), Pre O(d√(ln d/L))) and Lemma 2.
"""

import json

import numpy as np
import pandas as pd
import pytest

from normtheory import fit
from normtheory import schema

DS = (16, 32, 64, 128)
LS = (1, 2, 4, 8, 16, 32)


def synthetic(law, arch="pre", ds=DS, Ls=LS, seeds=8, noise=0.05, rng_seed=1, loss="linear"):
  """A tidy gradient table whose last-layer W2 norm is ``law(d, L)`` times lognormal noise per seed."""
  rng = np.random.default_rng(rng_seed)
  rows = []
  for d in ds:
    for L in Ls:
      for s in range(seeds):
        g = law(d, L) * np.exp(noise * rng.standard_normal())
        rows.append((arch, loss, d, L, 16, d, s, L, "W2", g))
        rows.append((arch, loss, d, L, 16, d, s, L, "W1", 1.0))
  old_layout = ["arch", "loss", "d", "L", "n", "d_ff", "seed", "layer", "param", "grad_norm"]
  return schema.with_defaults(pd.DataFrame(rows, columns=old_layout), schema.GRAD_FILE)


def series(fits, arch):
  (s,) = [s for s in fits["series"] if s["arch"] == arch]
  return s


def inside(estimate, value):
  lo, hi = estimate["ci"]
  return lo <= value <= hi


def test_power_law_recovers_alpha_and_gamma_within_a_tight_ci():
  """g = 3 d L^-1/2 with 5% lognormal noise: α=1 and γ=½ lie in CIs narrower than 0.1; C≈3."""
  fits = fit.fit_frame(synthetic(lambda d, L: 3.0 * d * L**-0.5), n_boot=200)
  p = series(fits, "pre")["power_law"]
  for name, true in [("alpha", 1.0), ("gamma", 0.5), ("C", 3.0)]:
    assert inside(p[name], true), (name, p[name])
  assert p["alpha"]["ci"][1] - p["alpha"]["ci"][0] < 0.1
  assert p["gamma"]["ci"][1] - p["gamma"]["ci"][0] < 0.1
  assert p["r2"] > 0.99


def test_bootstrap_cis_cover_the_true_exponents_at_close_to_nominal_rate():
  """Over 40 independent noise draws, the 95% CIs of α and γ contain the truth at least 85% of the time."""
  hits_alpha = hits_gamma = 0
  for r in range(40):
    p = series(fit.fit_frame(synthetic(lambda d, L: 3.0 * d * L**-0.5, rng_seed=100 + r), n_boot=200), "pre")
    hits_alpha += inside(p["power_law"]["alpha"], 1.0)
    hits_gamma += inside(p["power_law"]["gamma"], 0.5)
  assert hits_alpha >= 34 and hits_gamma >= 34, (hits_alpha, hits_gamma)


def test_bound_shape_recovers_C_and_flat_post_series_holds():
  """g = 2 d √ln d (flat in L) as Post: bound shape gives C≈2, γ≈0, and the verdict says Post holds."""
  fits = fit.fit_frame(synthetic(lambda d, L: 2.0 * d * np.sqrt(np.log(d)), arch="post"), n_boot=200)
  s = series(fits, "post")
  assert inside(s["bound_shape"]["C"], 2.0) and abs(s["bound_shape"]["C"]["value"] - 2.0) < 0.05
  assert inside(s["bound_shape"]["gamma"], 0.0) and abs(s["bound_shape"]["gamma"]["value"]) < 0.02
  assert all(c["holds"] for c in s["checks"])
  assert "post: consistent with Theorem 1" in fit.report(fits)


def test_pre_series_with_wrong_depth_exponent_misses_and_says_by_how_much():
  """A Pre series decaying like L^-1 (not L^-½) is reported as missing γ=½ by about the gap."""
  fits = fit.fit_frame(synthetic(lambda d, L: d * np.sqrt(np.log(d)) / L), n_boot=200)
  (check,) = [c for c in series(fits, "pre")["checks"] if c["name"] == "gamma (bound shape)"]
  assert not check["holds"]
  assert check["miss"] == pytest.approx(check["ci"][0] - 0.5) and 0.4 < check["miss"] < 0.5
  assert "MISSES: gamma (bound shape)" in fit.report(fits)


def test_envelope_slope_is_zero_on_the_bound_shape():
  """Data exactly on d√(ln d/L) (no noise) give Pre-envelope slopes 0 in ln L and ln d, max = C."""
  frame = synthetic(lambda d, L: 0.7 * d * np.sqrt(np.log(d) / L), noise=0.0)
  e = series(fit.fit_frame(frame, n_boot=50), "pre")["envelope"]
  assert e["max"]["value"] == pytest.approx(0.7)
  assert e["slope_ln_L"]["value"] == pytest.approx(0.0, abs=1e-10)
  assert e["slope_ln_d"]["value"] == pytest.approx(0.0, abs=1e-10)


def test_lemma2_law_recovers_c():
  """Post flat and Pre = Post · 1.2/√(1 + 0.8 L): the Lemma 2 fit recovers a=1.2, c=0.8 inside their CIs."""
  post = lambda d, L: d * np.sqrt(np.log(d))  # noqa: E731
  frame = pd.concat([
      synthetic(post, arch="post", noise=0.02, rng_seed=1),
      synthetic(lambda d, L: post(d, L) * 1.2 / np.sqrt(1 + 0.8 * L), arch="pre", noise=0.02, rng_seed=2),
  ])
  (ratio,) = fit.fit_frame(frame, n_boot=200)["ratios"]
  assert inside(ratio["lemma2"]["c"], 0.8) and abs(ratio["lemma2"]["c"]["value"] - 0.8) < 0.05
  assert inside(ratio["lemma2"]["a"], 1.2)
  assert ratio["lemma2"]["r2"] > 0.99


def test_bootstrap_is_deterministic_and_json_serialisable(tmp_path):
  """Same seed ⇒ identical fits; another seed ⇒ different CIs; write_fits writes strict JSON."""
  frame = synthetic(lambda d, L: 3.0 * d * L**-0.5, ds=(16, 32), Ls=(1, 4, 16), seeds=4)
  a, b = (fit.fit_frame(frame, n_boot=100, seed=7) for _ in range(2))
  assert a == b
  assert fit.fit_frame(frame, n_boot=100, seed=8) != a
  frame.to_csv(tmp_path / "grad_norms.csv", index=False)
  written = fit.write_fits(tmp_path, n_boot=20)
  assert json.loads((tmp_path / "fits.json").read_text()) == json.loads(json.dumps(written))


def test_one_depth_or_one_width_fits_only_what_varies():
  """With one L only α is fitted (d-only fit); with one d only γ (L-only fit); the report still runs."""
  law = lambda d, L: 3.0 * d * L**-0.5  # noqa: E731
  one_L = series(fit.fit_frame(synthetic(law, Ls=(8,)), n_boot=50), "pre")["power_law"]
  one_d = series(fit.fit_frame(synthetic(law, ds=(64,)), n_boot=50), "pre")["power_law"]
  assert "alpha" in one_L and "gamma" not in one_L and inside(one_L["alpha"], 1.0)
  assert "gamma" in one_d and "alpha" not in one_d and inside(one_d["gamma"], 0.5)
  assert "pre" in fit.report(fit.fit_frame(synthetic(law, ds=(64,)), n_boot=20))


def test_other_archs_are_fitted_without_a_theorem_verdict():
  """An arch with no Theorem 1 exponent (here deepnorm) is fitted and reported as descriptive only."""
  fits = fit.fit_frame(synthetic(lambda d, L: d * L**-0.25, arch="deepnorm"), n_boot=20)
  assert series(fits, "deepnorm")["checks"] == []
  assert "no Theorem 1 exponent for deepnorm" in fit.report(fits)


def test_summarize_gives_seed_statistics_per_cell():
  """summarize: one row per (arch, loss, d, L, layer, param) with mean, std, median, q05, q95, q99."""
  frame = synthetic(lambda d, L: float(d), ds=(16,), Ls=(2,), seeds=10, noise=0.1)
  stats = fit.summarize(frame)
  assert len(stats) == 2
  w2 = stats[stats["param"] == "W2"].iloc[0]
  g = frame[frame["param"] == "W2"]["grad_norm"]
  assert w2["n_seeds"] == 10 and w2["mean"] == pytest.approx(g.mean()) and w2["q99"] == pytest.approx(g.quantile(0.99))
  assert w2["q05"] <= w2["median"] <= w2["q95"] <= w2["q99"]


def test_fit_store_rejects_missing_or_malformed_store(tmp_path):
  """A missing results directory raises FileNotFoundError; wrong columns raise ValueError naming them."""
  with pytest.raises(FileNotFoundError, match="no results directory"):
    fit.fit_store(tmp_path / "nowhere")
  pd.DataFrame({"a": [1]}).to_csv(tmp_path / "grad_norms.csv", index=False)
  with pytest.raises(ValueError, match="expected arch,loss"):
    fit.fit_store(tmp_path)


def test_other_layer_or_param_is_fitted_without_theorem_checks():
  """layer/param arguments fit any layer's weight; only the last layer's W2 is checked against Theorem 1."""
  frame = synthetic(lambda d, L: d * L**-0.5)
  frame = pd.concat([frame, frame[frame["L"] > 1].assign(layer=1, grad_norm=lambda f: f["grad_norm"] * 2)])
  fits = fit.fit_frame(frame, n_boot=20, param="W2", layer=1)
  assert fits["meta"]["layer"] == 1 and series(fits, "pre")["checks"] == []
  assert fit.report(fits).startswith("Descriptive fits")
  with pytest.raises(ValueError, match="positive norms"):
    fit.fit_frame(frame.assign(grad_norm=0.0), n_boot=20)


def synthetic_depth(kappa=0.37, arch="pre", L=40, seeds=16, noise=0.05):
  """A tidy depth-metric table whose rel_update is ``2 l^-kappa`` times lognormal noise per seed and layer."""
  rng = np.random.default_rng(0)
  layer_L = np.arange(1, L + 1)
  value_SxL = 2 * layer_L**-kappa * np.exp(noise * rng.standard_normal((seeds, L)))
  cell = {"arch": arch, "loss": "linear", "d": 64, "L": L, "n": 16, "d_ff": 64}
  return schema.tidy_frame(schema.DEPTH_FILE, cell, np.arange(seeds), layer_L, {"rel_update": value_SxL}, "metric")


def test_effective_depth_fits_recover_kappa_next_to_the_mean_field_and_the_argument():
  """rel_update = 2 l^-0.37: kappa's CI contains 0.37; the entry carries the mean-field kappa of Pre-LN
  at d=64, L=40, n=16 (between 0.4 and 0.6) and the argument's 1/2; a one-layer model is skipped."""
  frame = pd.concat([synthetic_depth(), synthetic_depth(L=1)])
  (entry,) = fit.effective_depth_fits(frame, n_boot=200)
  assert (entry["arch"], entry["L"], entry["n_seeds"]) == ("pre", 40, 16)
  assert inside(entry["kappa"], 0.37) and entry["expected"] == 0.5
  assert 0.4 < entry["kappa_mean_field"] < 0.6
  assert "pre (loss=linear, d=64, n=16, L=40, 16 seeds): kappa = 0.37" in fit.report({**fit.fit_frame(
      synthetic(lambda d, L: d, ds=(64,), Ls=(1, 2)), n_boot=20), "effective_depth": [entry]})


def test_write_fits_adds_effective_depth_only_for_stores_with_depth_metrics(tmp_path):
  """write_fits: no depth_metrics.csv, no "effective_depth" key; with one (post and pre), one entry per
  arch in fits.json, sorted post first, as strict JSON."""
  synthetic(lambda d, L: 3.0 * d * L**-0.5, ds=(16, 32), Ls=(1, 4), seeds=4).to_csv(tmp_path / "grad_norms.csv", index=False)
  assert "effective_depth" not in fit.write_fits(tmp_path, n_boot=20)
  depth = pd.concat([synthetic_depth(arch="pre"), synthetic_depth(kappa=0.0, arch="post")])
  depth.to_csv(tmp_path / "depth_metrics.csv", index=False)
  written = fit.write_fits(tmp_path, n_boot=20)
  assert [e["arch"] for e in written["effective_depth"]] == ["post", "pre"]
  assert abs(written["effective_depth"][0]["kappa"]["value"]) < 0.02
  assert json.loads((tmp_path / "fits.json").read_text()) == json.loads(json.dumps(written))
