"""Conditional weights (SPEC §6), the pieces and the contracts: the Householder QR and the Gram factor
of any rank, the embedding's rows, the normals counted, and the bad inputs (rows reaching a width, a
tied read-out, a store of the other kind: refused). The algebra against explicit weights is
``test_conditional_algebra.py``, the law ``test_conditional_law.py``.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normtheory as nt
from normtheory import cli, engine, layers, prng, sampling

KEY = prng.make_key(0, "threefry2x32")


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


def test_householder_qr_does_not_turn_on_rounding_residues():
  """Rows of disjoint supports (ReLU's zeros at small widths) leave each pivot at 0 up to rounding: a
  residue of either sign must reflect alike, or the backward step's recomputed QR can flip a row of Qᵀ
  against the forward step's, and differentiate another layer than the one the forward pass ran (seen:
  Pre-LN at d = 8, 1.6% on one seed's norms between two compilations of the same step)."""
  with jax.enable_x64(True):
    columns_a, rows_k = jnp.arange(1024), jnp.arange(16)[:, None]
    support_kxa = (columns_a >= 64 * rows_k + 16) & (columns_a < 64 * rows_k + 64)  # column j of row j is 0
    m_kxa = jnp.where(support_kxa, jax.random.normal(jax.random.key(3), (16, 1024), jnp.float64), 0)
    residues_kxa = m_kxa.at[rows_k[:, 0], rows_k[:, 0]].set(-1e-20)  # a negative residue on each pivot
    qr = jax.jit(layers._qr_rows)
    np.testing.assert_allclose(qr(residues_kxa)[0], qr(m_kxa)[0], atol=1e-13)


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


def test_normals_drawn_ahead_are_the_products_own():
  """A conditional weight holding its normals drawn ahead (the engine's normals steps) computes what it
  computes drawing them itself, bit for bit; normals of another shape are refused at trace time."""
  w = sampling.for_cell({"W1": sampling.conditional_weight(jax.random.key(5), (32, 24), 0.3)}, "pre")["W1"]
  qt_kxi, delta_rxo = jax.random.normal(jax.random.key(6), (3, 32)), jax.random.normal(jax.random.key(7), (3, 24))
  ahead = sampling.with_draws({"W1": w}, {"W1": w.draw_forward(3, jnp.float32)},
                              {"W1": w.draw_backward(3, jnp.float32)})["W1"]
  np.testing.assert_array_equal(ahead.forward_normals(qt_kxi), w.forward_normals(qt_kxi))
  np.testing.assert_array_equal(ahead.fresh_product(delta_rxo), w.fresh_product(delta_rxo))
  with pytest.raises(ValueError, match="the product needs"):
    ahead.forward_normals(qt_kxi[:2])


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


def test_backward_depth_batches_pad_to_all_depths_where_that_costs_little():
  """Explicit weights run 1 or all depths; conditional ones too on the issue's width grid up to d = 16 384,
  and powers of two where padding to all would add much work (d = 32 768 on 6..96, the deep grid 6..6144)."""
  def batches(depths, **fields):
    return sorted({engine._depth_batch(K, depths, nt.Config(**fields)) for K in range(1, len(depths) + 1)})
  grid, deep = (6, 12, 24, 48, 96), tuple(6 * 2**i for i in range(11))
  assert batches(grid, d=65536) == [1, 5] and batches(deep, d=512) == [1, 11]
  assert batches(grid, d=16384, weights="conditional") == [1, 5]
  assert batches(grid, d=32768, weights="conditional") == [1, 2, 4, 5]
  assert batches(deep, d=512, weights="conditional") == [1, 2, 4, 8, 11]


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
def test_conditional_store_records_its_kind_and_an_older_one_resumes_with_its_own_draws(tmp_path, tiny_argv):
  """A new conditional store records shared draws; one whose meta.json has no ``conditional_draws`` (every
  conditional store written before the setting) is measured with each architecture's own normals, and
  keeps saying so: its Post-LN rows are the shared store's (shared draws are Post-LN's stream), its
  Pre-LN rows are not."""
  argv = [*tiny_argv, "--d", "8", "--L", "1,2", "--weights", "conditional"]
  shared, older = tmp_path / "shared", tmp_path / "older"
  assert cli.main([*argv, "--out", str(shared)]) == 0
  meta = json.loads((shared / "meta.json").read_text())
  assert meta["settings"]["weights"] == "conditional" and meta["settings"]["conditional_draws"] == "shared"
  frames = nt.load(shared)
  assert np.isfinite(frames.grad.grad_norm).all() and len(frames.grad) == 2 * 3 * 3 * 6
  del meta["settings"]["conditional_draws"]
  older.mkdir()
  (older / "meta.json").write_text(json.dumps(meta | {"runs": [], "passes": []}))
  assert cli.main([*argv, "--out", str(older)]) == 0
  assert json.loads((older / "meta.json").read_text())["settings"]["conditional_draws"] is None
  per_arch = nt.load(older).grad.set_index(["arch", "L", "seed", "layer", "param"]).grad_norm.sort_index()
  by_shared = frames.grad.set_index(["arch", "L", "seed", "layer", "param"]).grad_norm.sort_index()
  np.testing.assert_array_equal(per_arch["post"], by_shared["post"])
  moved = np.abs(per_arch["pre"] - by_shared["pre"]) > 1e-3 * by_shared["pre"]
  assert moved[by_shared["pre"] > 0].all()


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
