"""experiments/assumptions.py: one store per setting through the sweep CLI, then the figures.

References:
  Xiong et al. 2020, Theorem 1 and Fig. 3.
"""

import importlib.util
import json
import pathlib

import pytest

from normtheory import cli, schema, store

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _assumptions():
  spec = importlib.util.spec_from_file_location("assumptions", ROOT / "experiments" / "assumptions.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_two_settings_run_into_their_stores_and_draw_the_figures(tmp_path, capsys):
  """paper and realistic at d in {8, 16}, L in {2, 4}, 2 seeds: each store holds its own cells (the
  setting's columns), fits.json has gamma and alpha per arch, the figures are written, and the summary
  says where the mean field does not apply (realistic: attention and text)."""
  module = _assumptions()
  out, figs = tmp_path / "stores", tmp_path / "figs"
  argv = ["--settings", "paper,realistic", "--d", "8,16", "--L", "2,4", "--seeds", "2", "--n-boot", "20",
          "--out", str(out), "--figures", str(figs), "--dpi", "40", "--quiet"]
  assert module.main(argv) == 0
  paper = store.read(out / "paper", schema.GRAD_FILE)
  realistic = store.read(out / "realistic", schema.GRAD_FILE)
  assert set(paper[["attention", "heads", "inputs", "loss"]].itertuples(index=False, name=None)) == {("uniform", 1, "gaussian", "xent")}
  assert set(realistic[["attention", "heads", "inputs", "loss"]].itertuples(index=False, name=None)) == {("xavier", 8, "text", "xent")}
  assert set(realistic[realistic["param"] == "E"]["layer"]) == {0}
  for setting in ("paper", "realistic"):
    fits = json.loads((out / setting / "fits.json").read_text())
    assert {s["arch"] for s in fits["series"]} == {"post", "pre"}
    assert all({"gamma", "alpha"} <= set(s["power_law"]) for s in fits["series"])
  for name in ("fig_assumptions", "fig_last_layer_vs_depth_paper", "fig_last_layer_vs_depth_realistic"):
    assert (figs / f"{name}.png").stat().st_size > 0 and (figs / f"{name}.pdf").read_bytes().startswith(b"%PDF")
  text = capsys.readouterr().out
  assert "paper:" in text and "realistic:" in text and "Post/Pre ratio at L = 4" in text
  assert "Theorem 1's bound" in text
  # xent is outside the mean field's gradient prediction; realistic breaks uniform attention first
  assert "mean field: does not apply: the mean field predicts the gradient for the linear loss only" in text
  assert "with xavier attention the weights depend on the inputs" in text
  assert "python experiments/grad_scaling.py --arch post,pre --loss xent --vocab 256" in text


def test_each_setting_is_the_common_flags_plus_the_one_it_relaxes(tmp_path):
  """Every setting's command is COMMON (the shared xent read-out) + the grid + its own flags + its own store;
  the sweep CLI accepts each, and they differ from the paper setting only in attention, heads, inputs,
  tied or batch."""
  module = _assumptions()
  args = module.parse(["--out", str(tmp_path), "--d", "64,128", "--L", "6,12", "--seeds", "2"])
  fields = ("attention", "heads", "inputs", "tied", "batch")
  parsed = {}
  for setting in module.SETTINGS:
    argv = module.command(setting, tmp_path, args)
    assert argv[:len(module.COMMON)] == module.COMMON and argv[-2:] == ["--out", str(tmp_path / setting)]
    p = cli.parse(argv)
    parsed[setting] = {f: getattr(p.args, f) for f in fields} | {"loss": p.axes["loss"], "vocab": p.args.vocab}
  assert parsed["paper"] == {"attention": "uniform", "heads": 1, "inputs": "gaussian", "tied": False, "batch": 1,
                             "loss": ["xent"], "vocab": 256}
  assert parsed["realistic"] | {"loss": ["xent"]} == parsed["paper"] | {"attention": "xavier", "heads": 8, "inputs": "text"}
  for setting, relaxed in [("xavier", {"attention": "xavier"}), ("heads8", {"heads": 8}), ("text", {"inputs": "text"}),
                           ("text-tied", {"inputs": "text", "tied": True}), ("batch8", {"batch": 8})]:
    assert parsed[setting] == parsed["paper"] | relaxed, setting
  with pytest.raises(SystemExit):
    module.parse(["--settings", "paper,nonsense"])
