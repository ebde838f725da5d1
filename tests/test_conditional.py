"""Conditional weights (SPEC §6): the algebra reproduces explicit weights, the law is the explicit law.

* Algebra: fed the projections of the explicitly drawn weights (``G_f = Qᵀ W``,
  ``W' δᵀ = W δᵀ``, the E rows ``E[t]``) instead of fresh normals, the conditional engine
  gives the explicit engine's numbers to float64 rounding, for every placement and
  relaxation it supports.
* Law (slow): conditional and explicit samples (disjoint seeds) agree by two-sample tests
  (z on means and on variances, Kolmogorov–Smirnov) with enough seeds to see a 2% shift.
* Invariance: a cell's numbers do not depend on which architectures or depths share its
  pass, nor on the seeds per call.
* Bad inputs: rows reaching a width, a tied read-out, a store of the other kind: refused.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import normtheory as nt
from normtheory import cli, depth_metrics, engine, layers, prng, sampling

KEY = prng.make_key(0, "threefry2x32")
ALL_ARCHS = ("post", "pre", "deepnorm", "sandwich", "lns", "mixln", "residual")


def _explicit_w(w: sampling.ConditionalWeight, dtype) -> jax.Array:
  """The matrix an explicit draw from ``w``'s key gives (transposed for the read-out W_embᵀ)."""
  shape = w.shape[::-1] if w.transposed else w.shape
  m = jax.random.normal(w.key, shape, dtype) * w.scale
  return m.T if w.transposed else m


@pytest.fixture
def explicit_projections(monkeypatch):
  """Conditional weights whose draws are the projections of the explicit weights (SPEC §6's
  identity check); the engine's compiled steps are dropped before and after."""
  C = sampling.ConditionalWeight
  monkeypatch.setattr(C, "forward_normals", lambda w, qt_kxi: qt_kxi @ _explicit_w(w, qt_kxi.dtype))
  monkeypatch.setattr(C, "fresh_product", lambda w, delta_rxo: _explicit_w(w, delta_rxo.dtype) @ delta_rxo.T)
  monkeypatch.setattr(C, "rows", lambda w, tokens, dtype: _explicit_w(w, dtype)[tokens])
  engine._layer_steps.cache_clear()
  engine._head_steps.cache_clear()
  yield
  engine._layer_steps.cache_clear()
  engine._head_steps.cache_clear()


def _worst_relative_difference(a, b) -> float:
  """Largest relative difference over every array of two measure_archs results."""
  worst = 0.0
  for arch, by_depth in a.items():
    for L, r in by_depth.items():
      s = b[arch][L]
      pairs = [(r.grad_norms[w], s.grad_norms[w]) for w in r.grad_norms]
      pairs += [(getattr(r, f), getattr(s, f)) for f in ("sq_norms", "ln_jacobian", "ln_jacobian_final", "loss")]
      for x, y in pairs:
        if x.size:
          worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-300))))
  return worst


def _algebra(cfg, archs, depths=(1, 3), seeds=2) -> float:
  explicit = engine.measure_archs(cfg, archs, depths, np.arange(seeds), KEY)
  conditional = engine.measure_archs(dataclasses.replace(cfg, weights="conditional"), archs, depths,
                                     np.arange(seeds), KEY)
  return _worst_relative_difference(explicit, conditional)


SMALL = dict(d=8, n=4, dtype="float64")


@pytest.mark.slow
def test_projections_of_explicit_weights_reproduce_the_explicit_engine(explicit_projections):
  """Post and Pre sharing a pass, two depths: every grad norm, hidden norm, LN Jacobian and loss."""
  assert _algebra(nt.Config(**SMALL), ("post", "pre")) < 1e-10


@pytest.mark.slow
def test_projections_reproduce_every_placement(explicit_projections):
  """Every placement, the depth-dependent ones (DeepNorm, Mix-LN) in their own passes."""
  assert _algebra(nt.Config(**(SMALL | {"d": 16})), ALL_ARCHS) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", [
    {"loss": "xent", "vocab": 11}, {"loss": "mse"}, {"attention": "xavier", "heads": 2}, {"batch": 2},
    {"inputs": "text", "loss": "xent"}, {"d_ff": 12},
])
def test_projections_reproduce_every_relaxation(explicit_projections, relaxation):
  """Each relaxation on Post and Pre (one pass; Pre has the final LN, Post not). A relaxation changes
  the rows a product meets (heads, batches, Xavier attention's n rows, tokens) or the head (losses,
  read-out, embedding), which every placement reaches through the same products and head: the
  placements themselves are checked above."""
  cfg = nt.Config(**(SMALL | {"d": 16} | relaxation))
  assert _algebra(cfg, ("post", "pre")) < 1e-10


@pytest.mark.slow
def test_conditional_depth_metrics_are_the_forward_pass_of_the_projections(explicit_projections):
  """rel_update and cos_sim under conditional weights equal the explicit ones given the projections;
  removal_angle (a second use of every weight) is not reported."""
  cfg = nt.Config(arch="pre", L=3, loss="mse", **SMALL)
  explicit = depth_metrics.depth_metrics(cfg, 2, KEY)
  conditional = depth_metrics.depth_metrics(dataclasses.replace(cfg, weights="conditional"), 2, KEY)
  assert set(conditional.metric) == {"rel_update", "cos_sim"}
  kept = explicit[explicit.metric != "removal_angle"].reset_index(drop=True)
  np.testing.assert_allclose(conditional.value, kept.value, rtol=1e-10)


@pytest.mark.slow
def test_a_cells_numbers_do_not_depend_on_the_pass_or_the_chunk():
  """(base key, seed, cell, weights kind) fix a cell's numbers: Pre at L = 3 alone, one seed per call,
  equals Pre at L = 3 measured beside Post and depth 1 (to float64 rounding, a different program)."""
  cfg = nt.Config(weights="conditional", **SMALL)
  shared = engine.measure_archs(cfg, ("post", "pre"), (1, 3), np.arange(2), KEY)
  alone = engine.measure_archs(cfg, ("pre",), (3,), np.arange(2), KEY, chunk=1)
  assert _worst_relative_difference({"pre": {3: alone["pre"][3]}}, shared) < 1e-12
  # and the draws are the cell's own: Post and Pre differ from their explicit values
  explicit = engine.measure_archs(dataclasses.replace(cfg, weights="explicit"), ("pre",), (3,), np.arange(2), KEY)
  assert not np.allclose(explicit["pre"][3].grad_norms["W2"], alone["pre"][3].grad_norms["W2"])


def _rank_deficient_rows(key, dtype) -> dict[str, jax.Array]:
  """Row sets the engine meets, 16 rows of width 1024 (where reflecting rounding residues underflowed):
  full rank, one row repeated (uniform attention's mean row), a zero row with two dependent ones, and
  rows nearly equal (a shared direction plus 1e-3 of noise)."""
  m = jax.random.normal(key, (16, 1024), dtype)
  noise = jax.random.normal(jax.random.fold_in(key, 1), (16, 1024), dtype)
  return {"full": m, "repeated": jnp.tile(m[:1], (16, 1)),
          "dependent": m.at[3].set(2 * m[0]).at[4].set(0).at[5].set(m[1] - m[2]),
          "nearly equal": m[:1] + 1e-3 * noise}


@pytest.mark.parametrize("dtype, tol", [pytest.param(jnp.float32, 2e-6, marks=pytest.mark.slow), (jnp.float64, 1e-13)])
def test_householder_qr_is_a_qr_of_any_rank(dtype, tol):
  """m = Rᵀ Qᵀ with Qᵀ's rows orthonormal and R upper triangular, also for repeated and dependent rows."""
  with jax.enable_x64(dtype == jnp.float64):
    for name, m_kxa in _rank_deficient_rows(jax.random.key(0), dtype).items():
      qt_kxa, r_kxk = jax.jit(layers._qr_rows)(m_kxa)
      scale = float(jnp.abs(m_kxa).max())
      np.testing.assert_allclose(r_kxk.T @ qt_kxa, m_kxa, atol=tol * 10 * scale, err_msg=name)
      np.testing.assert_allclose(qt_kxa @ qt_kxa.T, np.eye(16), atol=tol * 10, err_msg=name)
      np.testing.assert_array_equal(jnp.tril(r_kxk, -1), 0, err_msg=name)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-13)])
def test_gram_factor_reproduces_the_gram_matrix_of_any_rank(dtype, tol):
  """Cᵀ C = m mᵀ to rounding, C upper triangular and finite, rank-deficient rows included (no inverse taken)."""
  with jax.enable_x64(dtype == jnp.float64):
    for name, m_rxo in _rank_deficient_rows(jax.random.key(2), dtype).items():
      c_rxr = jax.jit(layers.gram_factor)(m_rxo)
      gram_rxr = m_rxo @ m_rxo.T
      assert bool(jnp.isfinite(c_rxr).all()), name
      np.testing.assert_allclose(c_rxr.T @ c_rxr, gram_rxr, atol=tol * 10 * float(jnp.abs(gram_rxr).max()),
                                 err_msg=name)
      np.testing.assert_array_equal(jnp.tril(c_rxr, -1), 0, err_msg=name)


def test_embedding_rows_are_drawn_once_per_token():
  """A conditional E shows the same row for every occurrence of a token, and rows of Xavier scale."""
  e = sampling.conditional_weight(jax.random.key(4), (256, 64), 0.5)
  rows = e.rows(jnp.array([[3, 7, 3], [7, 9, 3]]), jnp.float32)
  assert rows.shape == (2, 3, 64)
  np.testing.assert_array_equal(rows[0, 0], rows[0, 2])
  np.testing.assert_array_equal(rows[0, 1], rows[1, 0])
  assert not np.allclose(rows[0, 0], rows[0, 1])


def test_normals_drawn_counts_what_draw_weights_draws():
  """The explicit count of :func:`engine.normals_drawn` is the one draw_weights measures (head
  excluded: linear loss), and conditional weights draw far fewer at a width of 512."""
  cfg = nt.Config(d=8, n=4)
  assert engine.normals_drawn(cfg, ("post", "pre"), (1, 3), 3) == engine.draw_weights(
      cfg, ("post", "pre"), (1, 3), np.arange(3), KEY)
  wide = nt.Config(d=512, n=16)
  explicit = engine.normals_drawn(wide, ("post", "pre"), (6, 96), 8)
  conditional = engine.normals_drawn(dataclasses.replace(wide, weights="conditional"), ("post", "pre"), (6, 96), 8)
  assert conditional * 5 < explicit


@pytest.mark.parametrize("fields, named", [
    ({"d": 8, "n": 8}, "batch*n=8"), ({"d": 16, "n": 4, "batch": 4}, "batch*n=16"),
    ({"d": 16, "n": 4, "d_ff": 4}, "min(d, d_ff)=4"),
    ({"d": 16, "n": 4, "inputs": "text", "loss": "xent", "tied": True}, "tied"),
])
def test_config_refuses_what_conditioning_cannot_sample(fields, named):
  with pytest.raises(ValueError, match="weights='conditional'") as error:
    nt.Config(weights="conditional", **fields)
  assert named in str(error.value)


def test_reference_method_needs_explicit_weights():
  with pytest.raises(ValueError, match="weights='explicit'"):
    nt.grad_norms(nt.Config(d=8, n=4, L=1, weights="conditional"), 1, method="reference")


@pytest.mark.parametrize("argv, named", [
    (["--d", "4,8", "--n", "4"], "--d 4"),
    (["--d", "16", "--n", "4", "--batch", "4"], "--batch x --n = 16"),
    (["--d", "16", "--n", "4", "--inputs", "text", "--tied"], "--tied"),
    (["--d", "16", "--weights", "implicit"], "--weights"),
])
def test_cli_refuses_conditional_settings_it_cannot_sample(argv, named, tmp_path, stderr_line):
  weights = [] if "--weights" in argv else ["--weights", "conditional"]
  out = tmp_path / "out"
  assert cli.main([*argv, *weights, "--L", "1", "--seeds", "1", "--out", str(out), "--quiet"]) == 2
  line = stderr_line()
  assert "--weights" in line and named in line
  assert not out.exists()


def test_a_store_holds_one_kind_of_weights(tiny_store_copy, tiny_argv, stderr_line):
  """The tiny store (explicit, no "weights" in an older meta.json reads as explicit) refuses conditional
  rows: exit 2, one line naming both kinds, nothing written."""
  meta = json.loads((tiny_store_copy / "meta.json").read_text())
  del meta["settings"]["weights"]
  (tiny_store_copy / "meta.json").write_text(json.dumps(meta))
  before = {p.name: p.read_bytes() for p in tiny_store_copy.iterdir() if p.is_file()}
  assert cli.main([*tiny_argv, "--weights", "conditional", "--out", str(tiny_store_copy)]) == 2
  line = stderr_line()
  assert "'weights': ('explicit', 'conditional')" in line
  assert {p.name: p.read_bytes() for p in tiny_store_copy.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_conditional_store_records_its_kind(tmp_path, tiny_argv):
  out = tmp_path / "cond"
  assert cli.main([*tiny_argv, "--d", "8", "--L", "1,2", "--weights", "conditional", "--out", str(out)]) == 0
  assert json.loads((out / "meta.json").read_text())["settings"]["weights"] == "conditional"
  frames = nt.load(out)
  assert np.isfinite(frames.grad.grad_norm).all() and len(frames.grad) == 2 * 3 * 3 * 6


def test_wide_explicit_sweep_line_names_both_costs():
  """The line a d >= 4096 sweep without --weights prints: explicit and conditional normals and times."""
  args, axes = cli.parse(["--d", "4096", "--L", "6,96", "--out", "/tmp/nt-unused"])
  line = cli.weights_cost_line(args, axes, cli.base_config(args, axes), rate=1e8)
  explicit = 8 * 96 * 4 * 4096**2  # seeds x deepest layer x (W_V, W_O, W1, W2), one shared pass
  assert f"explicit weights draws {explicit:.2g} normals, ~{explicit / 1e8 / 60:.2g} min" in line
  assert "--weights conditional would draw" in line
  assert "nothing is switched" in line


@pytest.mark.slow
def test_wide_sweep_without_weights_flag_warns_before_measuring(tmp_path, capsys):
  out = tmp_path / "wide"
  assert cli.main(["--d", "4096", "--L", "1", "--seeds", "1", "--n", "2", "--arch", "pre", "--out", str(out),
                   "--quiet"]) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--weights conditional would draw" in err[0]
  assert json.loads((out / "meta.json").read_text())["settings"]["weights"] == "explicit"


# ----------------------------------------------------------------------------------------------
# The law: conditional against explicit, two-sample tests on disjoint seeds.

LAW_SEEDS = 1000
LAW_L = 4


def two_sample(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  """z of the difference of means, z of the difference of variances (asymptotic variance of the
  sample variance, ``(m4 - s^4)/n``), the Kolmogorov–Smirnov p-value, and the relative shift of
  the mean that a two-sided 5% z test sees with 80% power (2.8 standard errors)."""
  na, nb = len(a), len(b)
  z_mean = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / na + b.var(ddof=1) / nb)
  var_se = lambda x: (((x - x.mean()) ** 4).mean() - x.var() ** 2) / len(x)
  z_var = (a.var(ddof=1) - b.var(ddof=1)) / np.sqrt(var_se(a) + var_se(b))
  detectable = 2.8 * np.sqrt(a.var(ddof=1) / na + b.var(ddof=1) / nb) / abs(b.mean())
  return {"z_mean": float(z_mean), "z_var": float(z_var), "ks_p": float(stats.ks_2samp(a, b).pvalue),
          "detectable": float(detectable)}


def law_report(d: int, loss: str, seeds: int = LAW_SEEDS, L: int = LAW_L) -> dict[tuple, dict]:
  """(arch, quantity) -> :func:`two_sample` of explicit (seeds 0..S-1) against conditional
  (seeds S..2S-1), Post and Pre in one pass, n = 4: last-layer W2 and first-layer W_V norms,
  ``sq_norm`` at layers 1, L/2 and L + 1, and the first LN Jacobian of layer L/2."""
  cfg = nt.Config(d=d, n=4, loss=loss)
  explicit = engine.measure_archs(cfg, ("post", "pre"), (L,), np.arange(seeds), KEY)
  conditional = engine.measure_archs(dataclasses.replace(cfg, weights="conditional"), ("post", "pre"), (L,),
                                     np.arange(seeds, 2 * seeds), KEY)
  report = {}
  for arch in ("post", "pre"):
    quantities = lambda r: {
        "W2 layer L": r.grad_norms["W2"][:, L - 1], "W_V layer 1": r.grad_norms["W_V"][:, 0],
        "sq_norm 1": r.sq_norms[:, 0], "sq_norm L/2": r.sq_norms[:, L // 2 - 1], "sq_norm L+1": r.sq_norms[:, L],
        "ln_jacobian L/2": r.ln_jacobian[:, L // 2 - 1, 0], "loss": r.loss,
    }
    e, c = quantities(explicit[arch][L]), quantities(conditional[arch][L])
    for name in e:
      report[arch, name] = two_sample(c[name].astype(np.float64), e[name].astype(np.float64))
  return report


@pytest.mark.slow
@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("loss", ["linear", "xent"])
def test_conditional_weights_have_the_explicit_law(d, loss):
  """|z| <= 4.5 on means and variances and KS p >= 1e-4 for every quantity (about 60 tests
  per width over the suite: a 4.5-sigma threshold keeps a false alarm below 1e-3), with seeds
  enough to see a 2% shift of the last-layer gradient norm's mean (80% power at 5%). Drawing
  G_b without the projection (I - QQᵀ) fails it (README, "Where the asymptotics live")."""
  report = law_report(d, loss)
  for (arch, name), r in report.items():
    label = f"{arch} {name} d={d} {loss}: {r}"
    assert abs(r["z_mean"]) <= 4.5 and abs(r["z_var"]) <= 4.5 and r["ks_p"] >= 1e-4, label
    if name == "W2 layer L":
      assert r["detectable"] <= 0.02, label
