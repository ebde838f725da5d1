"""The sweep CLI with every new architecture and ``--depth-metrics``: the store's
``depth_metrics.csv`` is complete, resumes write nothing, the rows equal the API's,
and make_figures draws the architecture and effective-depth figures.

References:
  Su 2022, kexue.fm/archives/9009 (effective depth); Xiong et al. 2020, Theorem 1 and
  Fig. 3; Wang et al. 2022 (DeepNorm), Kim et al. 2025 (Peri-LN), Sun et al. 2025
  (LayerNorm Scaling), Li et al. 2024 (Mix-LN).
"""

import importlib.util
import json
import pathlib

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import normtheory as nt  # noqa: E402
from normtheory import cli, depth_metrics, schema, store  # noqa: E402

pytestmark = pytest.mark.slow  # four architectures' passes and depth metrics through the CLI: minutes from a cold cache

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHS, DEPTHS, SEEDS, D, N = ("deepnorm", "sandwich", "lns", "mixln"), (2, 4), 2, 16, 4
PRNG = "threefry2x32"  # named, so the comparison with the API does not depend on the CLI's default
ARGV = ["--arch", ",".join(ARCHS), "--d", str(D), "--L", ",".join(map(str, DEPTHS)), "--seeds", str(SEEDS),
        "--n", str(N), "--seed", "0", "--prng", PRNG, "--n-boot", "20", "--quiet", "--depth-metrics"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """A store from the CLI: the four new archs, d=16, L in {2, 4}, 2 seeds, n=4, with depth metrics."""
  out = tmp_path_factory.mktemp("archs")
  assert cli.main([*ARGV, "--out", str(out)]) == 0
  return out


def _depth_rows(out: pathlib.Path) -> pd.DataFrame:
  return store.read(out, schema.DEPTH_FILE)


def test_cli_stores_every_cell_seed_layer_and_metric(swept):
  """depth_metrics/ has the exact columns and one finite row per (cell, seed, layer, metric);
  fits.json holds the effective-depth exponent of every (arch, L); every pass is marked."""
  assert list(_depth_rows(swept).columns) == list(depth_metrics.COLUMNS)
  frame = _depth_rows(swept)
  expected = {
      (arch, "linear", D, L, N, D, 1, "uniform", 1, "gaussian", "layernorm", "relu", 0, "none", seed, layer, metric)
      for arch in ARCHS for L in DEPTHS for seed in range(SEEDS)
      for layer in range(1, L + 1) for metric in depth_metrics.METRICS
  }
  assert len(frame) == len(expected)
  assert set(frame.drop(columns="value").itertuples(index=False, name=None)) == expected
  assert frame["value"].notna().all() and (frame["value"].abs() < 10).all()
  fits = json.loads((swept / "fits.json").read_text())
  assert {(e["arch"], e["L"]) for e in fits["effective_depth"]} == {(a, L) for a in ARCHS for L in DEPTHS}
  assert all(e["kappa"]["ci"][0] <= e["kappa"]["value"] <= e["kappa"]["ci"][1] for e in fits["effective_depth"])
  meta = json.loads((swept / "meta.json").read_text())
  assert meta["passes"] and all(p["depth_metrics"] for p in meta["passes"])


def test_resumed_run_writes_nothing_new(swept, capsys):
  """The same command again measures nothing: every part keeps its bytes and mtime, meta.json its passes."""
  files = sorted(swept.rglob("*.parquet"))
  before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
  passes = json.loads((swept / "meta.json").read_text())["passes"]
  assert cli.main([*ARGV, "--out", str(swept)]) == 0
  assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in files] == before
  assert json.loads((swept / "meta.json").read_text())["passes"] == passes


def test_cli_depth_metrics_equal_the_api(swept):
  """The rows of Sandwich at L=2 (measured in one pass with L=4) equal depth_metrics(cfg, seeds, key)
  with the CLI's base key (--seed 0 --prng threefry2x32)."""
  stored = _depth_rows(swept)
  stored = stored[(stored["arch"] == "sandwich") & (stored["L"] == 2)].reset_index(drop=True)
  api = depth_metrics.depth_metrics(nt.Config(arch="sandwich", d=D, L=2, n=N), SEEDS, jax.random.key(0, impl=PRNG))
  pd.testing.assert_frame_equal(stored, api, check_exact=False, rtol=1e-6, atol=0)


def test_without_the_flag_no_depth_metrics_and_same_gradients(swept, tmp_path):
  """The flag off: no depth metrics, no effective_depth fits, and the same gradient norms."""
  argv = [a for a in ARGV if a != "--depth-metrics"]
  argv[argv.index("--arch") + 1] = "sandwich"
  assert cli.main([*argv, "--out", str(tmp_path)]) == 0
  assert not (tmp_path / "depth_metrics").exists()
  assert "effective_depth" not in json.loads((tmp_path / "fits.json").read_text())
  with_flag = store.read(swept, schema.GRAD_FILE)
  pd.testing.assert_frame_equal(store.read(tmp_path, schema.GRAD_FILE),
                                with_flag[with_flag["arch"] == "sandwich"].reset_index(drop=True))


def _make_figures():
  spec = importlib.util.spec_from_file_location("make_figures", ROOT / "experiments" / "make_figures.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_make_figures_draws_arch_comparison_and_depth_metrics(swept, tmp_path, capsys):
  """make_figures.py on the CLI's store writes PNG+PDF of fig_arch_comparison and fig_depth_metrics
  (and no fig_ratio: no post/pre pair), captions for both, and prints the exponents."""
  _make_figures().main(["--results", str(swept), "--out", str(tmp_path), "--n-boot", "20", "--dpi", "50"])
  for name in ("fig_arch_comparison", "fig_depth_metrics", "fig_last_layer_vs_depth", "fig_hidden_norms"):
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
  assert not (tmp_path / "fig_ratio.png").exists()
  captions = (tmp_path / "captions.md").read_text()
  assert "fig_arch_comparison" in captions and "fig_depth_metrics" in captions
  out = capsys.readouterr().out
  assert "Effective depth" in out and "mixln (loss=linear, d=16, n=4, L=4, 2 seeds): kappa = " in out
