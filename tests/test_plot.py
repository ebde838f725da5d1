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
from normtheory import depth_metrics, fit, plot, theory  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  """A real results store: post and pre, d in {8, 16}, L in {1, 2, 4}, 3 seeds, n = 4."""
  grads, hiddens = [], []
  for arch in ("post", "pre"):
    for d in (8, 16):
      for L in (1, 2, 4):
        r = nt.grad_norms(nt.Config(arch=arch, d=d, L=L, n=4), seeds=3, key=0)
        grads.append(r.to_frame())
        hiddens.append(r.hidden_frame())
  grad, hidden = pd.concat(grads, ignore_index=True), pd.concat(hiddens, ignore_index=True)
  path = tmp_path_factory.mktemp("store")
  grad.to_csv(path / "grad_norms.csv", index=False)
  hidden.to_csv(path / "hidden_norms.csv", index=False)
  return grad, hidden, path


def _make_figures():
  spec = importlib.util.spec_from_file_location("make_figures", ROOT / "experiments" / "make_figures.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def depth():
  """Depth metrics of pre at d=16, L=4, 2 seeds, n=4, and the same rows as an unknown arch "mine"."""
  pre = depth_metrics.depth_metrics(nt.Config(arch="pre", d=16, L=4, n=4), 2)
  return pd.concat([pre, pre.assign(arch="mine")], ignore_index=True)


def test_every_figure_is_a_figure_and_saves_nonempty_png_at_200_dpi_and_pdf(store, depth, tmp_path):
  """All seven figure functions return Figures; save writes a 200-dpi PNG and a PDF for each."""
  grad, hidden, _ = store
  figs = plot.figures(grad, hidden, fit.fit_frame(grad, n_boot=50), depth)
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
  assert "fig_ratio" not in figs and "fig_depth_metrics" not in figs and len(figs) == 5


def _legend_texts(fig) -> set[str]:
  return {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}


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


def test_make_figures_writes_every_figure_and_captions(store, tmp_path, capsys):
  """make_figures.py on a real store without depth_metrics.csv writes PNG+PDF of every other figure and
  captions.md, and prints the verdict without an effective-depth block."""
  _make_figures().main(["--results", str(store[2]), "--out", str(tmp_path), "--n-boot", "20"])
  for name in set(plot.CAPTIONS) - {"fig_depth_metrics"}:
    assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.pdf").stat().st_size > 0
  assert not (tmp_path / "fig_depth_metrics.png").exists()
  assert "fig_ratio" in (tmp_path / "captions.md").read_text()
  out = capsys.readouterr().out
  assert "Theorem 1 on the grid" in out and "Effective depth" not in out


@pytest.mark.parametrize("missing", ["dir", "hidden_norms.csv"])
def test_make_figures_on_bad_store_exits_2_with_one_stderr_line(tmp_path, capsys, missing):
  """A missing results directory or CSV: exit status 2 and exactly one stderr line naming it."""
  results = tmp_path / "nowhere"
  if missing != "dir":
    results = tmp_path
    pd.DataFrame(columns=list(nt.GRAD_COLUMNS)).to_csv(results / "grad_norms.csv", index=False)
  with pytest.raises(SystemExit) as info:
    _make_figures().main(["--results", str(results), "--out", str(tmp_path / "figs")])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and ("nowhere" if missing == "dir" else missing) in err
