"""Figures run on real measurements and write PNG/PDF; make_figures.py rejects bad stores.

References:
  Xiong et al. 2020, Theorem 1, Lemma 2 and Fig. 3 (what the figures show).
  Su 2022, kexue.fm/archives/9009 (the effective-depth figure).
"""

import importlib.util
import pathlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import normtheory as nt  # noqa: E402
from normtheory import depth_metrics, fit, plot, schema, theory  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tiny_store, tiny_frames):
  """A real results store (the sweep CLI's, tests/conftest.py): post and pre, d in {8, 16}, L in {1, 2, 4},
  3 seeds, n = 4: its grad and hidden tables and its directory."""
  return tiny_frames.grad, tiny_frames.hidden, tiny_store


def _make_figures():
  spec = importlib.util.spec_from_file_location("make_figures", ROOT / "experiments" / "make_figures.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def depth():
  """Depth metrics of pre at d=8, L=3, 2 seeds, n=4 (the program test_depth_metrics compiles), and the
  same rows as an unknown arch "mine"."""
  pre = depth_metrics.depth_metrics(nt.Config(arch="pre", d=8, L=3, n=4), 2)
  return pd.concat([pre, pre.assign(arch="mine")], ignore_index=True)


@pytest.mark.slow
def test_every_figure_is_a_figure_and_saves_nonempty_png_at_200_dpi_and_pdf(store, depth, tmp_path):
  """Every figure function returns a Figure; save writes a 200-dpi PNG and a PDF for each."""
  grad, hidden, path = store
  figs = plot.figures(grad, hidden, fit.fit_frame(grad, n_boot=50), depth, fit.read_ln_jacobian(path))
  assert set(figs) == set(plot.CAPTIONS)
  for name, fig in figs.items():
    assert isinstance(fig, Figure)
    png, pdf = plot.save(fig, tmp_path, name)
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    height_px = matplotlib.image.imread(png).shape[0]
    assert height_px == pytest.approx(fig.get_figheight() * 200, abs=2)


def test_figures_accept_unknown_arch_names_without_theorem_overlays(store):
  """An arch the library does not name (here pre relabelled "mine") is drawn in a fallback style."""
  grad, hidden, _ = store
  grad = grad.replace({"arch": {"pre": "mine"}})
  fits = fit.fit_frame(grad, n_boot=20)
  assert fits["ratios"] == []
  assert plot.arch_style("mine") == plot.arch_style("mine") and plot.arch_style("mine")["color"] == "0.35"
  figs = plot.figures(grad, hidden.replace({"arch": {"pre": "mine"}}), fits)
  assert set(plot.CAPTIONS) - set(figs) == {"fig_ratio", "fig_depth_metrics", "fig_ln_jacobian"}


def _legend_texts(fig) -> set[str]:
  return {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}


@pytest.mark.slow
def test_mean_field_overlay_only_where_the_predictor_applies(store, depth):
  """The mean-field curves appear on the gradient figures for the linear loss only (the predictor's
  loss), and always on the hidden norms and depth metrics, which do not depend on the loss."""
  grad, hidden, _ = store
  assert "mean field" in _legend_texts(plot.fig_last_layer_vs_depth(grad))
  assert "mean field" in _legend_texts(plot.fig_arch_comparison(grad))
  mse = grad.assign(loss="mse")
  assert "mean field" not in _legend_texts(plot.fig_last_layer_vs_depth(mse))
  assert "mean field" not in _legend_texts(plot.fig_arch_comparison(mse))
  assert "mean field" in _legend_texts(plot.fig_hidden_norms(hidden.assign(loss="mse")))
  assert "mean field" in _legend_texts(plot.fig_depth_metrics(depth))


@pytest.mark.slow
def test_depth_metrics_figure_leaves_a_metric_the_store_lacks_empty(depth):
  """A conditional-weights store has no removal_angle rows: its panel is drawn empty, the other
  panels as with every metric (make_figures crashed on such a store)."""
  full = plot.fig_depth_metrics(depth)
  lacking = plot.fig_depth_metrics(depth[depth.metric != "removal_angle"])
  panels = dict(zip(plot.DEPTH_METRIC_LABELS, lacking.axes))
  assert not panels["removal_angle"].lines
  for metric, ax in panels.items():
    if metric != "removal_angle":
      before = full.axes[list(plot.DEPTH_METRIC_LABELS).index(metric)]
      assert [line.get_ydata().tolist() for line in ax.lines] == [line.get_ydata().tolist() for line in before.lines]


def test_mean_field_hidden_norms_follow_the_measurement(store):
  """The overlay of fig_hidden_norms is theory.mean_field's sq_norm_per_d at each layer, then its
  final_sq_norm_per_d at layer L+1 (Pre-LN, d=16, L=4): it lies within 25% of the plotted seed means
  (d = 16 and 3 seeds; the mean field is exact as d -> inf)."""
  _, hidden, _ = store
  fig = plot.fig_hidden_norms(hidden)
  color = plot.arch_style("pre")["color"]
  lines = [ln for ln in fig.axes[0].get_lines() if ln.get_color() == color]
  measured, predicted = (ln.get_ydata() for ln in lines)
  mf = theory.mean_field("pre", 16, 4, 4)
  np.testing.assert_allclose(predicted, np.append(mf["sq_norm_per_d"], mf["final_sq_norm_per_d"]))
  np.testing.assert_allclose(measured, predicted, rtol=0.25)


def test_pre_ln_band_is_lemma2_shifted_by_one_layer():
  """State entering layer l has l−1 layers behind it: bounds (1+(l−1)/2, 1+3(l−1)/2), (1, 1) at l=1."""
  lo, hi = plot.pre_ln_bounds(np.array([1, 2, 5]))
  np.testing.assert_allclose(lo, [1.0, 1.5, 3.0])
  np.testing.assert_allclose(hi, [1.0, 2.5, 7.0])


@pytest.mark.slow
def test_make_figures_writes_every_figure_and_captions(store, tmp_path, capsys):
  """make_figures.py on a real store without depth metrics writes PNG+PDF of every other figure (the
  LN Jacobians included) and captions.md, and prints the verdict without an effective-depth block."""
  _make_figures().main(["--results", str(store[2]), "--out", str(tmp_path), "--n-boot", "20"])
  for name in set(plot.CAPTIONS) - {"fig_depth_metrics"}:
    assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.pdf").stat().st_size > 0
  assert not (tmp_path / "fig_depth_metrics.png").exists()
  assert "fig_ratio" in (tmp_path / "captions.md").read_text()
  out = capsys.readouterr().out
  assert "Theorem 1 on the grid" in out and "Effective depth" not in out


@pytest.mark.parametrize("missing", ["dir", "hidden_norms"])
def test_make_figures_on_bad_store_exits_2_with_one_stderr_line(tmp_path, capsys, missing):
  """A missing results directory or table: exit status 2 and exactly one stderr line naming it."""
  results = tmp_path / "nowhere"
  if missing != "dir":
    results = tmp_path
    pd.DataFrame(columns=list(nt.GRAD_COLUMNS)).to_csv(results / "grad_norms.csv", index=False)
  assert _make_figures().main(["--results", str(results), "--out", str(tmp_path / "figs")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("make_figures.py: error: ")
  assert ("nowhere" if missing == "dir" else missing) in err
  assert not (tmp_path / "figs").exists()


def test_hidden_norms_put_post_ln_reference_at_its_layernorm_output(store):
  """fig_hidden_norms draws no line at Lemma 2's 3/2 (that is x5, before Post-LN's LayerNorm) but Post-LN's
  reference at 1, and the measured Post-LN states from layer 2 on lie on it (LN outputs, eps = 1e-6)."""
  _, hidden, _ = store
  fig = plot.fig_hidden_norms(hidden)
  lines = fig.axes[0].get_lines()
  flat = [ln for ln in lines if len(set(np.asarray(ln.get_ydata(), float))) == 1]
  assert {float(ln.get_ydata()[0]) for ln in flat} == {1.0}
  assert any(ln.get_label().startswith("Post-LN state = LN output") for ln in flat)
  post = [ln for ln in lines if ln.get_color() == plot.arch_style("post")["color"] and ln.get_marker() == "o"][0]
  np.testing.assert_allclose(post.get_ydata()[1:], 1.0, rtol=1e-4)


def test_ln_jacobian_figure_pairs_states_and_draws_lemma_references(store):
  """Left: each stored Pre-LN Jacobian is paired with the hidden norm of the same seed, layer and cell: y/x
  lies in [1, 1.3] with median < 1.1 (mean removal and averaging 1/sqrt over rows both raise it, by O(1/d):
  up to 1.26 at d = 8, 1.07 at d = 16). Right: Post-LN's second LayerNorm (input x5), averaged over its
  layers, lies within 10% of the Lemma 2/3 reference sqrt(2/3), which is drawn (d = 16, 3 seeds)."""
  _, hidden, path = store
  fig = plot.fig_ln_jacobian(fit.read_ln_jacobian(path), hidden)
  left, right = fig.axes
  points = left.get_lines()[0]
  ratio = np.asarray(points.get_ydata(), float) / np.asarray(points.get_xdata(), float)
  # Pre-LN's first LayerNorm of each layer reads x_l, its final one x_{L+1}: seeds x widths x (L + 1) points
  assert len(ratio) == 3 * 2 * ((1 + 1) + (2 + 1) + (4 + 1)) and (ratio >= 1.0).all() and (ratio <= 1.3).all()
  assert np.median(ratio) < 1.1
  reference = [ln for ln in right.get_lines() if len(ln.get_ydata()) and np.allclose(ln.get_ydata(), np.sqrt(2 / 3))]
  assert len(reference) == 1
  (post_ln2,) = [ln for ln in right.get_lines() if ln.get_label() == "Post-LN, LN 2"]
  assert np.mean(post_ln2.get_ydata()) == pytest.approx(np.sqrt(2 / 3), rel=0.10)


def test_local_exponent_figure_draws_the_fits_and_the_mean_field_to_ten_thousand(store):
  """fig_local_exponent: Pre-LN's points are the fits' pooled local exponents at sqrt(L_a L_b), and its
  mean-field curve is theory.local_exponent (d-independent) reaching L = 10^4 near 1/2."""
  grad, _, _ = store
  fits = fit.fit_frame(grad, n_boot=50)
  fig = plot.fig_local_exponent(fits)
  ax = fig.axes[0]
  steps = [s for s in fits["series"] if s["arch"] == "pre"][0]["local_exponents"]
  (pre_points,) = [c for c in ax.containers if c.get_label().startswith("Pre-LN")]
  x, y = pre_points.lines[0].get_data()
  np.testing.assert_allclose(x, [np.sqrt(s["L"][0] * s["L"][1]) for s in steps])
  np.testing.assert_allclose(y, [s["gamma"]["value"] for s in steps])
  color = plot.arch_style("pre")["color"]
  (curve,) = [ln for ln in ax.get_lines() if ln.get_color() == color and ln.get_linewidth() == 3.0]
  L_K = np.unique(np.geomspace(1, 10_000, 200).round().astype(int))
  np.testing.assert_allclose(curve.get_ydata(), theory.local_exponent("pre", 16, 4, L_K).gamma)
  assert curve.get_xdata()[-1] > 9_999 and abs(curve.get_ydata()[-1] - 0.5) < 0.01


def _png(fig: Figure) -> bytes:
  return plot.render(fig, "f", dpi=30)["f.png"]


def _drawn(fig: Figure) -> list[tuple]:
  """Every line of every axes, as (label, x data, y data)."""
  return [(ln.get_label(), np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
          for ax in fig.axes for ln in ax.get_lines()]


def _assert_same_drawing(whole: Figure, per_cell: Figure) -> None:
  a, b = _drawn(whole), _drawn(per_cell)
  assert [label for label, *_ in a] == [label for label, *_ in b]
  for (_, xa, ya), (_, xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert _png(whole) == _png(per_cell)


def _assert_per_cell_reads_draw_the_whole_tables(results, tmp_path) -> None:
  """make_figures.py's reads (the drawn rows, the Lemma 3 points one cell at a time) give the figures that the
  whole tables give: the same lines, the same PNG bytes."""
  frames = nt.load(results)
  args = _make_figures().parse(["--results", str(results), "--out", str(tmp_path / "figs")])
  assert len(args.hidden) < len(frames.hidden)
  _assert_same_drawing(plot.fig_hidden_norms(frames.hidden), plot.fig_hidden_norms(args.hidden))
  if not frames.depth.empty:
    assert len(args.depth) < len(frames.depth)
    _assert_same_drawing(plot.fig_depth_metrics(frames.depth), plot.fig_depth_metrics(args.depth))
  if not frames.ln_jacobian.empty:
    assert len(args.ln_jacobian) < len(frames.ln_jacobian)
    _assert_same_drawing(plot.fig_ln_jacobian(frames.ln_jacobian, frames.hidden),
                         plot.fig_ln_jacobian(args.ln_jacobian, args.hidden, points=args.ln_points))


def test_lemma3_points_pair_each_jacobian_with_its_state(store):
  """plot.lemma3_points (cell by cell) holds exactly the points of one merge of the whole tables on the cell,
  seed and layer, x = sqrt(d / sq_norm): the same numbers, grouped by cell."""
  _, hidden, path = store
  first = fit.read_ln_jacobian(path).query("arch == 'pre' and ln == 1")
  pairs = first.merge(hidden, on=[c for c in first.columns if c not in ("ln", "value")])
  merged = np.sort(np.stack([np.sqrt(pairs["d"] / pairs["sq_norm"]), pairs["value"]]), axis=1)
  points = plot.lemma3_points(first, hidden)
  assert len(points) == len(pairs) > 0
  np.testing.assert_array_equal(np.sort(points[["x", "value"]].to_numpy().T, axis=1), merged)


@pytest.mark.slow
def test_make_figures_reads_per_cell_what_the_whole_tables_draw(store, tmp_path):
  """On the sweep's store (parts with hidden norms and LN Jacobians)."""
  _assert_per_cell_reads_draw_the_whole_tables(store[2], tmp_path)


@pytest.mark.slow
def test_make_figures_reads_per_cell_what_the_whole_old_csv_store_draws(tmp_path):
  """On the committed CSV store (hidden norms and depth metrics, no LN Jacobians)."""
  _assert_per_cell_reads_draw_the_whole_tables(ROOT / "tests" / "data" / "store_8807192", tmp_path)


@pytest.mark.slow
def test_make_figures_reads_per_cell_what_the_whole_tables_draw_when_the_pick_is_not_the_widest(store, tmp_path):
  """A store whose default pick (the first loss alphabetically, batch 1) holds only narrow, shallow cells of
  it, beside wider ones of another loss and batch: the selection read from the index picks as the figures do."""
  grad, hidden, path = store
  ln = fit.read_ln_jacobian(path)
  narrow = lambda f: f[(f["d"] == 8) & (f["L"] <= 2)].assign(loss="a_loss")  # noqa: E731
  tables = {schema.GRAD_FILE: pd.concat([grad.assign(batch=2), narrow(grad)]),
            schema.HIDDEN_FILE: pd.concat([hidden.assign(batch=2), narrow(hidden)]),
            schema.LN_JACOBIAN_FILE: pd.concat([ln.assign(batch=2), narrow(ln)])}
  results = nt.store.ResultsStore(tmp_path / "mixed", nt.load(path).meta["settings"])
  results.write_chunk(tables)
  _assert_per_cell_reads_draw_the_whole_tables(tmp_path / "mixed", tmp_path)
