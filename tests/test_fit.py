"""Fits recover known exponents from synthetic stores; the bootstrap is deterministic.

References:
  Xiong et al. 2020, Theorem 1 (Post O(d√ln d), Pre O(d√(ln d/L))) and Lemma 2.
"""

import doctest
import json

import numpy as np
import pandas as pd
import pytest

from normtheory import fit
from normtheory import schema

DS = (16, 32, 64, 128)
LS = (1, 2, 4, 8, 16, 32)


def synthetic(law, arch="pre", ds=DS, Ls=LS, seeds=8, noise=0.05, rng_seed=1, loss="linear", **cell):
  """A tidy gradient table whose last-layer W2 norm is ``law(d, L)`` times lognormal noise per seed
  (other cell columns from ``cell``, else their defaults)."""
  rng = np.random.default_rng(rng_seed)
  rows = []
  for d in ds:
    for L in Ls:
      for s in range(seeds):
        g = law(d, L) * np.exp(noise * rng.standard_normal())
        rows.append((arch, loss, d, L, 16, d, s, L, "W2", g))
        rows.append((arch, loss, d, L, 16, d, s, L, "W1", 1.0))
  old_layout = ["arch", "loss", "d", "L", "n", "d_ff", "seed", "layer", "param", "grad_norm"]
  return schema.with_defaults(pd.DataFrame(rows, columns=old_layout).assign(**cell), schema.GRAD_FILE)


def synthetic_hidden(grad, q_final):
  """Hidden norms of the cells of ``grad``: layers 1..L at sq_norm = d, and layer L+1 at
  ``d * q_final(d, L, seed)`` (the state entering Pre-LN's final LayerNorm)."""
  cells = grad[["arch", "loss", "d", "L", "n", "d_ff", "seed"]].drop_duplicates()
  rows = []
  for c in cells.itertuples(index=False):
    rows += [(*c[:6], c.seed, layer, float(c.d)) for layer in range(1, c.L + 1)]
    rows.append((*c[:6], c.seed, c.L + 1, c.d * q_final(c.d, c.L, c.seed)))
  columns = ["arch", "loss", "d", "L", "n", "d_ff", "seed", "layer", "sq_norm"]
  return schema.with_defaults(pd.DataFrame(rows, columns=columns), schema.HIDDEN_FILE)


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


@pytest.mark.slow
def test_bootstrap_cis_cover_the_true_exponents_at_close_to_nominal_rate():
  """Over 40 independent noise draws, the 95% CIs of α and γ contain the truth at least 85% of the time."""
  hits_alpha = hits_gamma = 0
  for r in range(40):
    p = series(fit.fit_frame(synthetic(lambda d, L: 3.0 * d * L**-0.5, rng_seed=100 + r), n_boot=200), "pre")
    hits_alpha += inside(p["power_law"]["alpha"], 1.0)
    hits_gamma += inside(p["power_law"]["gamma"], 0.5)
  assert hits_alpha >= 34 and hits_gamma >= 34, (hits_alpha, hits_gamma)


def check(fits, arch, name):
  (c,) = [c for c in series(fits, arch)["checks"] if c["name"] == name]
  return c


def tightness(entry, name):
  (t,) = [t for t in entry["tightness"] if t["name"] == name]
  return t


def test_bound_shape_recovers_C_and_flat_post_series_holds_at_its_limit():
  """g = 2 d √ln d (flat in L) as Post: bound shape gives C≈2, γ≈0; γ's CI contains the limit 0, so the
  check says "at the limit", never a violation, and the verdict says the bound holds."""
  fits = fit.fit_frame(synthetic(lambda d, L: 2.0 * d * np.sqrt(np.log(d)), arch="post"), n_boot=200)
  s = series(fits, "post")
  assert inside(s["bound_shape"]["C"], 2.0) and abs(s["bound_shape"]["C"]["value"] - 2.0) < 0.05
  assert inside(s["bound_shape"]["gamma"], 0.0) and abs(s["bound_shape"]["gamma"]["value"]) < 0.02
  assert check(fits, "post", "gamma")["status"] == "at the limit"
  assert all(c["holds"] for c in s["checks"])
  text = fit.report(fits)
  assert "post: Theorem 1's bound holds on this grid" in text and "VIOLATE" not in text
  assert tightness(s, "gamma")["theorem"]["relation"] == "equal"


def test_pre_falling_faster_than_the_bound_holds_and_tightness_says_faster():
  """Pre with γ = 0.7: the bound holds (the CI of γ lies above ½; envelope slope in ln L below 0), and
  the separate tightness line says it falls faster than L^-½ by about 0.2 (CI distance), no violation."""
  fits = fit.fit_frame(synthetic(lambda d, L: d * np.sqrt(np.log(d)) * L**-0.7), n_boot=200)
  g = check(fits, "pre", "gamma")
  assert g["status"] == "holds" and g["miss"] == 0.0 and g["ci"][0] > 0.5
  assert check(fits, "pre", "envelope slope_ln_L")["status"] == "holds"
  t = tightness(series(fits, "pre"), "gamma")["theorem"]
  assert t["relation"] == "larger" and t["gap"] == pytest.approx(g["ci"][0] - 0.5) and 0.15 < t["gap"] < 0.2
  text = fit.report(fits)
  assert "pre: Theorem 1's bound holds on this grid" in text
  assert f"falls faster than the theorem's L^-0.5 by {t['gap']:.3g}" in text and "VIOLATE" not in text


def test_pre_falling_slower_than_the_bound_is_a_violation_with_its_miss():
  """Pre with γ = 0.3: γ's CI lies below ½, a violation missing by ½ − CI top (about 0.2); the envelope
  slope in ln L (= ½ − γ) is positive by the same amount; the report says VIOLATES with the numbers."""
  fits = fit.fit_frame(synthetic(lambda d, L: d * np.sqrt(np.log(d)) * L**-0.3), n_boot=200)
  g = check(fits, "pre", "gamma")
  assert g["status"] == "violated" and not g["holds"]
  assert g["miss"] == pytest.approx(0.5 - g["ci"][1]) and 0.18 < g["miss"] < 0.2
  slope = check(fits, "pre", "envelope slope_ln_L")
  assert slope["status"] == "violated" and slope["miss"] == pytest.approx(slope["ci"][0])
  text = fit.report(fits)
  assert f"pre: VIOLATES Theorem 1's bound on this grid (gamma by {g['miss']:.3g}" in text


def test_outside_the_theorems_assumptions_a_miss_is_the_shape_failing_not_a_violation():
  """The same γ = 0.3 series measured on text inputs: the checks and their numbers are the same, but
  Theorem 1 says nothing there, so the verdict names the relaxed assumption and says its bound's shape
  FAILS, never that the theorem is violated."""
  fits = fit.fit_frame(synthetic(lambda d, L: d * np.sqrt(np.log(d)) * L**-0.3, inputs="text"), n_boot=200)
  s = series(fits, "pre")
  assert fit.relaxed_assumptions(s) == ["inputs=text"]
  g = check(fits, "pre", "gamma")
  assert g["status"] == "violated"
  text = fit.report(fits)
  assert (f"pre: outside Theorem 1's assumptions (inputs=text): its bound's shape FAILS on this grid "
          f"(gamma by {g['miss']:.3g}") in text
  assert "VIOLATE" not in text


def test_xent_grid_with_falling_envelope_is_not_a_violation():
  """An xent series whose d-exponent is below 1 (the V×d read-out scales the cotangent by about
  sqrt(2/(V+d))) and γ = ½: every envelope slope is <= 0, so nothing is a violation, although α lies
  outside d√ln d's [1, 1.097] (tightness: "grows slower in d"); no mean-field prediction for xent, and the
  linear-loss series of the same cells is the baseline, with a paired difference of α."""
  linear = lambda d, L: d * L**-0.5  # noqa: E731
  xent = lambda d, L: linear(d, L) * np.sqrt(2 / (1000 + d))  # noqa: E731
  frame = pd.concat([synthetic(xent, loss="xent", ds=(64, 128, 256, 512), Ls=(6, 12, 24)),
                     synthetic(linear, ds=(64, 128, 256, 512), Ls=(6, 12, 24))])
  fits = fit.fit_frame(frame, n_boot=200)
  (s,) = [s for s in fits["series"] if s["loss"] == "xent"]
  assert all(c["status"] != "violated" for c in s["checks"])
  assert s["envelope"]["slope_ln_d"]["ci"][1] < 0
  alpha = tightness(s, "alpha")
  assert alpha["theorem"]["relation"] == "smaller" and alpha["ci"][1] < 1.0
  assert "linear loss only" in s["mean_field"]["note"] and "mean_field" not in alpha
  base = alpha["linear_baseline"]
  assert not base["contains"] and base["difference"]["ci"][1] < 0  # xent grows slower in d than linear
  text = fit.report(fits)
  assert "pre (loss=xent, n=16)" in text and "VIOLATE" not in text
  assert "no mean-field prediction (the mean field predicts the gradient for the linear loss only" in text


def test_envelope_slope_is_zero_on_the_bound_shape():
  """Data exactly on d√(ln d/L) (no noise) give Pre-envelope slopes 0 in ln L and ln d, max = C."""
  frame = synthetic(lambda d, L: 0.7 * d * np.sqrt(np.log(d) / L), noise=0.0)
  e = series(fit.fit_frame(frame, n_boot=50), "pre")["envelope"]
  assert e["max"]["value"] == pytest.approx(0.7)
  assert e["slope_ln_L"]["value"] == pytest.approx(0.0, abs=1e-10)
  assert e["slope_ln_d"]["value"] == pytest.approx(0.0, abs=1e-10)


def test_lemma2_law_recovers_c_and_is_left_out_where_it_does_not_converge():
  """Post flat and Pre = Post · 1.2/√(1 + 0.8 L): SPEC's law recovers a=1.2, c=0.8 inside their CIs. On
  data it cannot fit (1/ratio² concave in L) it is absent from the fits and the report prints no "fit failed"."""
  post = lambda d, L: d * np.sqrt(np.log(d))  # noqa: E731
  frame = pd.concat([
      synthetic(post, arch="post", noise=0.02, rng_seed=1),
      synthetic(lambda d, L: post(d, L) * 1.2 / np.sqrt(1 + 0.8 * L), arch="pre", noise=0.02, rng_seed=2),
  ])
  (ratio,) = fit.fit_frame(frame, n_boot=200)["ratios"]
  assert inside(ratio["lemma2_law"]["c"], 0.8) and abs(ratio["lemma2_law"]["c"]["value"] - 0.8) < 0.05
  assert inside(ratio["lemma2_law"]["a"], 1.2)
  assert ratio["lemma2_law"]["r2"] > 0.99
  frame = pd.concat([synthetic(post, arch="post", noise=0.0),
                     synthetic(lambda d, L: post(d, L) * np.exp(-0.5 * L), arch="pre", noise=0.0)])
  fits = fit.fit_frame(frame, n_boot=20)
  assert "lemma2_law" not in fits["ratios"][0]
  assert "fail" not in fit.report(fits) and "n/a" not in fit.report(fits)


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
  assert "no Theorem 1 bound for deepnorm" in fit.report(fits)


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


# --- the paired bootstrap ---------------------------------------------------------


def test_paired_bootstrap_means_resample_seed_indices_once_per_replicate():
  """Each replicate is the mean of every column over ONE draw of seed indices (the same generator draw
  as rng.integers(0, S, (B, S))), NaN entries left out of their column; identical columns give identical
  replicates, and a column with no finite seed in a draw gives NaN."""
  rng = np.random.default_rng(3)
  v_SxC = rng.standard_normal((6, 3))
  v_SxC[2, 1] = np.nan
  v_SxC[:, 2] = v_SxC[:, 0]
  got_BxC = fit.paired_bootstrap_means(v_SxC, 50, np.random.default_rng(11))
  idx_BxS = np.random.default_rng(11).integers(0, 6, size=(50, 6))
  np.testing.assert_allclose(got_BxC, np.nanmean(v_SxC[idx_BxS], axis=1), rtol=1e-12)
  np.testing.assert_array_equal(got_BxC[:, 0], got_BxC[:, 2])
  only_one_SxC = np.array([[1.0], [np.nan]])
  boot = fit.paired_bootstrap_means(only_one_SxC, 200, np.random.default_rng(0))[:, 0]
  assert set(boot[np.isfinite(boot)]) == {1.0} and np.isnan(boot).any()


def test_paired_bootstrap_ci_of_a_difference_has_nominal_coverage_and_width():
  """Two cells share a seed effect: x_s = 10 + z_s + 0.3 e_s, y_s = 5 + z_s + 0.3 e'_s, 40 seeds. Over
  300 synthetic draws the paired 95% CI of mean(x) - mean(y) contains 5 in 91-98% of draws (binomial
  3 sigma around 0.95, less the percentile bootstrap's small-sample undercoverage), and its mean width
  is within 10% of 2 · 1.96 · 0.3 √2 / √40 · √(39/40). Resampling each cell on its own would be 3.5x
  wider (the shared z does not cancel): the pairing matters."""
  S, draws, sigma = 40, 300, 0.3
  rng = np.random.default_rng(2024)
  hits, widths, unpaired = 0, [], []
  for _ in range(draws):
    z_S = rng.standard_normal(S)
    v_SxC = np.stack([10 + z_S + sigma * rng.standard_normal(S), 5 + z_S + sigma * rng.standard_normal(S)], 1)
    boot_BxC = fit.paired_bootstrap_means(v_SxC, 1000, rng)
    diff = fit.ci(v_SxC[:, 0].mean() - v_SxC[:, 1].mean(), boot_BxC[:, 0] - boot_BxC[:, 1])
    lo, hi = diff["ci"]
    hits += lo <= 5.0 <= hi
    widths.append(hi - lo)
    own_B = [fit.paired_bootstrap_means(v_SxC[:, [c]], 1000, rng)[:, 0] for c in (0, 1)]
    unpaired.append(np.subtract(*np.percentile(own_B[0] - own_B[1], [97.5, 2.5])))
  assert 0.91 <= hits / draws <= 0.98, hits / draws
  expected = 2 * 1.959964 * sigma * np.sqrt(2 / S) * np.sqrt((S - 1) / S)
  assert np.mean(widths) == pytest.approx(expected, rel=0.10)
  assert np.mean(unpaired) > 3 * np.mean(widths)


def test_ci_and_one_sided_check_edges():
  """ci: percentile interval at CI_LEVEL of the finite replicates, None without any; one_sided_check:
  a CI touching the limit from the allowed side holds, containing it is "at the limit", beyond it a
  violation whose miss is the distance."""
  boot_B = np.concatenate([np.arange(1001.0), [np.nan, np.inf]])
  got = fit.ci(500.0, boot_B)
  assert got["value"] == 500.0 and got["ci"] == pytest.approx([25.0, 975.0], abs=1e-9)
  assert fit.ci(np.nan, np.array([np.nan])) == {"value": None, "ci": None}
  at = lambda lo, hi: {"value": (lo + hi) / 2, "ci": [lo, hi]}  # noqa: E731
  assert fit.one_sided_check("g", at(0.5, 0.6), 0.5, ">=", "")["status"] == "holds"
  assert fit.one_sided_check("g", at(0.45, 0.6), 0.5, ">=", "")["status"] == "at the limit"
  c = fit.one_sided_check("g", at(0.2, 0.4), 0.5, ">=", "")
  assert c["status"] == "violated" and c["miss"] == pytest.approx(0.1) and not c["holds"]
  c = fit.one_sided_check("s", at(0.1, 0.3), 0.0, "<=", "")
  assert c["status"] == "violated" and c["miss"] == pytest.approx(0.1)
  assert fit.one_sided_check("s", at(-0.3, -0.1), 0.0, "<=", "")["status"] == "holds"


def test_fits_pair_seeds_across_archs():
  """Post and Pre share every seed's noise exactly (their ratio has no seed noise): the ratio's β CI
  collapses to a point (width < 1e-9), because the bootstrap resamples the same seeds in both archs."""
  post = synthetic(lambda d, L: d * 1.0, arch="post", noise=0.2, rng_seed=5)
  pre = synthetic(lambda d, L: d * L**-0.5, arch="pre", noise=0.2, rng_seed=5)
  (ratio,) = fit.fit_frame(pd.concat([post, pre]), n_boot=100)["ratios"]
  assert ratio["beta"]["value"] == pytest.approx(0.5, abs=1e-9)
  assert ratio["beta"]["ci"][1] - ratio["beta"]["ci"][0] < 1e-9


# --- Lemma 2: the measured ratio and band ------------------------------------------


def _lemma2_pair(q_final, factor=1.0, noise=0.05):
  post = synthetic(lambda d, L: d * 1.0, arch="post", ds=(64, 128), Ls=(6, 12, 24), noise=noise, rng_seed=1)
  pre = synthetic(lambda d, L: d * factor * np.sqrt(1.5 / q_final(d, L, 0)), arch="pre", ds=(64, 128), Ls=(6, 12, 24),
                  noise=noise, rng_seed=1)
  grad = pd.concat([post, pre], ignore_index=True)
  return grad, synthetic_hidden(grad, q_final)


def test_lemma2_ratio_check_agrees_when_pre_follows_its_own_q_and_reports_a_departure():
  """g_pre/g_post = sqrt(3/(2 q_{L+1})) per cell (seed noise shared by the archs): measured/predicted = 1
  to 1e-9 in every cell and agrees. Pre 10% low gives 0.9, outside the CI. q_{L+1} = 1 + L at layer L+1
  lies inside Lemma 2's band [1 + L/2, 1 + 3L/2], half way up."""
  q_final = lambda d, L, s: 1.0 + L  # noqa: E731
  grad, hidden = _lemma2_pair(q_final)
  fits = fit.fit_frame(grad, n_boot=100, hidden=hidden)
  cells = fits["ratios"][0]["lemma2_ratio"]["cells"]
  assert len(cells) == 6 and all(c["agrees"] for c in cells)
  for c in cells:
    assert c["measured_over_predicted"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert c["predicted"]["value"] == pytest.approx(np.sqrt(1.5 / (1 + c["L"])))
  band = series(fits, "pre")["lemma2_band"]["cells"]
  assert all(c["status"] == "inside" for c in band)
  for c in band:
    assert c["position"] == pytest.approx((c["L"] / 2) / c["L"]) and c["band"] == [1 + c["L"] / 2, 1 + 1.5 * c["L"]]
  assert "the CI contains 1 in 6" in fit.report(fits)
  low = fit.fit_frame(_lemma2_pair(q_final, factor=0.9)[0], n_boot=100, hidden=hidden)
  for c in low["ratios"][0]["lemma2_ratio"]["cells"]:
    assert c["measured_over_predicted"]["value"] == pytest.approx(0.9) and not c["agrees"]


def test_lemma2_checks_are_skipped_with_a_note_on_stores_without_layer_L_plus_1():
  """An old store's hidden norms (layers 1..L only) still fit: the ratio check is skipped with one line."""
  grad, hidden = _lemma2_pair(lambda d, L, s: 1.0 + L)
  fits = fit.fit_frame(grad, n_boot=20, hidden=hidden[hidden["layer"] <= hidden["L"]])
  assert "no layer L+1" in fits["ratios"][0]["lemma2_ratio_note"]
  assert series(fits, "pre")["lemma2_band"] is None
  assert fit.report(fits).count("Mean-field ratio check (Lemmas 2, 3) skipped") == 1


# --- series keys, local exponents, the tidy table -------------------------------------


def test_series_are_keyed_by_every_cell_column_and_named_when_not_default():
  """batch = 4 next to batch = 1, and a fixed d_ff = 32: three series; the report names batch=4 and
  d_ff=32 (d_ff equal to d in every cell is the default, "d"); non-default cells get no mean-field
  prediction."""
  law = lambda d, L: d * L**-0.5  # noqa: E731
  fixed = synthetic(law, ds=(16, 64), Ls=(2, 8)).assign(d_ff=32)
  frame = pd.concat([synthetic(law, ds=(16, 64), Ls=(2, 8)), synthetic(law, ds=(16, 64), Ls=(2, 8), batch=4), fixed])
  fits = fit.fit_frame(frame, n_boot=20)
  keys = [(s["d_ff"], s["batch"]) for s in fits["series"]]
  assert sorted(keys, key=str) == sorted([("d", 1), ("d", 4), (32, 1)], key=str)
  text = fit.report(fits)
  assert "pre (loss=linear, n=16, batch=4)" in text and "pre (loss=linear, n=16, d_ff=32)" in text
  assert "pre (loss=linear, n=16):" in text
  (batched,) = [s for s in fits["series"] if s["batch"] == 4]
  assert "batch=4" in batched["mean_field"]["note"]
  only_fixed = synthetic(law, ds=(16, 32, 64), Ls=(2, 8)).assign(d_ff=32)  # --d-ff 32: d = 32 is on it too
  (s,) = fit.fit_frame(only_fixed, n_boot=20)["series"]
  assert s["d_ff"] == 32 and sorted({c["d"] for c in s["cells"]}) == [16, 32, 64]


def test_local_exponents_are_the_secant_slopes_and_follow_the_mean_field():
  """Noise-free g = d / sqrt(1 + L): the pooled local exponent between L_a and L_b is exactly
  ln((1+L_b)/(1+L_a)) / (2 ln(L_b/L_a)) with a zero-width CI; each step carries the mean field's own
  secant at the same depths (Pre-LN: above 1/2 on 6..96)."""
  frame = synthetic(lambda d, L: d / np.sqrt(1.0 + L), ds=(64, 128), Ls=(6, 12, 24, 48, 96), noise=0.0)
  steps = series(fit.fit_frame(frame, n_boot=20), "pre")["local_exponents"]
  assert [s["L"] for s in steps] == [[6, 12], [12, 24], [24, 48], [48, 96]]
  for s in steps:
    L_a, L_b = s["L"]
    expected = np.log((1 + L_b) / (1 + L_a)) / (2 * np.log(L_b / L_a))
    assert s["gamma"]["value"] == pytest.approx(expected, rel=1e-12)
    assert s["gamma"]["ci"] == pytest.approx([expected, expected], rel=1e-12)
    assert [b["d"] for b in s["by_d"]] == [64, 128]
    assert s["mean_field"] > 0.5


def test_table_lists_every_estimate_as_a_tidy_row():
  """fit.table: one row per estimate with the series keys; the power law's γ row equals fits.json's."""
  post = synthetic(lambda d, L: d * 1.0, arch="post")
  pre = synthetic(lambda d, L: d * L**-0.5)
  fits = fit.fit_frame(pd.concat([post, pre]), n_boot=20)
  t = fit.table(fits)
  assert {"scope", *fit.SERIES_KEYS, "fit", "quantity", "value", "ci_lo", "ci_hi"} <= set(t.columns)
  row = t[(t["scope"] == "series") & (t["arch"] == "pre") & (t["fit"] == "power_law") & (t["quantity"] == "gamma")]
  gamma = series(fits, "pre")["power_law"]["gamma"]
  assert row[["value", "ci_lo", "ci_hi"]].to_numpy().tolist() == [[gamma["value"], *gamma["ci"]]]
  assert set(t["scope"]) == {"series", "ratio"}
  assert len(t[t["fit"] == "local_exponent"]) == 2 * (len(LS) - 1)


# --- the effective-depth exponent ------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_fit_update_exponent_recovers_a_known_exponent(noise):
  """Synthetic rel_update = 2 l^(-0.37) times log-normal noise (16 seeds, 40 layers): exact data give
  kappa = 0.37 and r² = 1; noisy data give a 95% CI that contains 0.37; several models raise."""
  frame = synthetic_depth(noise=noise)
  f = fit.fit_update_exponent(frame, "pre", n_boot=500)
  if noise == 0.0:
    assert f.kappa == pytest.approx(0.37, abs=1e-9) and f.r2 == pytest.approx(1.0)
  else:
    assert f.ci[0] < 0.37 < f.ci[1] and f.ci[1] - f.ci[0] < 0.05
  with pytest.raises(ValueError, match="several configurations"):
    fit.fit_update_exponent(pd.concat([frame, frame.assign(L=41)]), "pre")


def test_docstring_examples():
  """Every module of the fit package runs its examples as written (the package itself only re-exports)."""
  results = [doctest.testmod(module) for module in (fit.readers, fit.estimators, fit.verdicts, fit.series,
                                                    fit.reporting)]
  assert sum(r.failed for r in results) == 0 and sum(r.attempted for r in results) >= 2


# --- the short report -------------------------------------------------------------------


def _post_pre_fits():
  """Post flat and Pre ∝ L^-½ on (64, 128) x (6, 12, 24) with hidden norms: two series and their ratio."""
  grad, hidden = _lemma2_pair(lambda d, L, s: 1.0 + L)
  return fit.fit_frame(grad, n_boot=50, hidden=hidden)


def test_short_report_is_the_full_reports_lines_for_the_bound_tightness_and_ratio():
  """The short report's lines come from the same fits and words as the full one: its title, per series
  one line with bound_verdict and the gamma check's value, CI and claim (the full report's check line),
  the full report's gamma tightness line, the ratio's line, and one line naming fits.json and --report full."""
  fits = _post_pre_fits()
  full, short = fit.report(fits).splitlines(), fit.short_report(fits).splitlines()
  assert len(short) == 1 + 2 * len(fits["series"]) + len(fits["ratios"]) + 1 == 7
  assert short[0] == full[0]
  for s, bound, tight in zip(fits["series"], short[1:5:2], short[2:5:2]):
    g = next(c for c in s["checks"] if c["name"] == "gamma")
    assert bound.startswith(f"{fit.series_name(s)}: {fit.bound_verdict(s)}; ")
    value = f"gamma = {fit._fmt(g)}"
    assert f"{value} ({g['claim']})." in bound and any(line.startswith(f"  {value}: ") for line in full)
    assert f"  => {s['arch']}: {fit.bound_verdict(s)}." in full
    assert tight in full and tight.startswith("  tightness: gamma = ")
  assert short[5] in full and short[5].startswith("post vs pre (loss=linear, n=16): g_post/g_pre ~ L^beta")
  assert "fits.json" in short[6] and "--report full" in short[6]


def test_short_report_follows_the_fits_it_is_given():
  """A violated gamma check (changed in the fits) turns the short line into the full report's
  VIOLATES words with the miss; a relaxed series keeps the relaxed words; no ratio, no ratio line."""
  fits = _post_pre_fits()
  g = next(c for c in series(fits, "post")["checks"] if c["name"] == "gamma")
  (before,) = [x for x in fit.short_report(fits).splitlines() if x.startswith("post (")]
  assert "VIOLATES" not in before
  g.update(status=fit.VIOLATED, holds=False, miss=0.125)
  (line,) = [x for x in fit.short_report(fits).splitlines() if x.startswith("post (")]
  assert "VIOLATES Theorem 1's bound on this grid (gamma by 0.125" in line
  assert "post: VIOLATES Theorem 1's bound on this grid (gamma by 0.125" in fit.report(fits)
  relaxed = fit.fit_frame(synthetic(lambda d, L: d * np.sqrt(np.log(d)) * L**-0.3, inputs="text"), n_boot=50)
  text = fit.short_report(relaxed)
  assert "outside Theorem 1's assumptions (inputs=text): its bound's shape FAILS on this grid" in text
  assert "VIOLATE" not in text and "post vs pre" not in text
