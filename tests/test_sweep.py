"""The notebook's grid API (nt.measure_grid) and the sweep's plan: the same passes as the CLI.

References:
  Xiong et al. 2020, Section 3.3 and Theorem 1 (the measured ||dLoss/dW^l||_F).
"""

import dataclasses
import doctest

import numpy as np
import pandas as pd
import pytest

import normtheory as nt
from normtheory import depth_metrics, engine, schema, sweep
from normtheory.config import Config

KEYS = [*schema.CELL_COLUMNS, "seed", "layer"]


def _sorted(frame: pd.DataFrame, extra: str | None = None) -> pd.DataFrame:
  keys = [*KEYS, extra] if extra else KEYS
  return frame.sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
def test_measure_grid_equals_the_cli_store_bit_for_bit(tiny_grid, tiny_frames):
  """measure_grid over the CLI's grid (same base seed and seeds) gives exactly the CLI's grad and hidden
  tables: the same passes of the same engine, and CSV round trips float64 exactly."""
  frames = nt.measure_grid(**tiny_grid, key=0)
  pd.testing.assert_frame_equal(_sorted(frames.grad, "param"), _sorted(tiny_frames.grad, "param"), check_exact=True)
  pd.testing.assert_frame_equal(_sorted(frames.hidden), _sorted(tiny_frames.hidden), check_exact=True)
  assert frames.depth.empty and list(frames.depth.columns) == list(schema.DEPTH_COLUMNS)
  assert frames.meta is None and frames.fits is None


@pytest.mark.slow
def test_a_sample_depends_only_on_the_key_and_its_seed_index(tiny_grid, tiny_frames):
  """Seeds [2, 0, 1] instead of 0..2 (same base key): every (cell, seed) row is bit for bit the store's."""
  frames = nt.measure_grid(**{**tiny_grid, "seeds": [2, 0, 1]}, key=0)
  pd.testing.assert_frame_equal(_sorted(frames.grad, "param"), _sorted(tiny_frames.grad, "param"), check_exact=True)


@pytest.mark.slow
def test_measure_grid_equals_grad_norms_cell_by_cell():
  """Each cell of a grid equals nt.grad_norms of its Config to float32 rounding (the shared pass batches
  the cotangents of several depths), for explicit seed indices and a given d_ff."""
  frames = nt.measure_grid("pre", 16, (1, 2, 4), seeds=[2, 0], key=3, n=4, d_ff=24)
  assert set(frames.grad["d_ff"]) == {24} and set(frames.grad["seed"]) == {0, 2}
  for L in (1, 4):
    api = nt.grad_norms(Config(arch="pre", d=16, L=L, n=4, d_ff=24), seeds=[2, 0], key=3).to_frame()
    rows = frames.grad[frames.grad["L"] == L]
    merged = rows.merge(api, on=["seed", "layer", "param"], suffixes=("_grid", "_api"))
    assert len(merged) == len(api) == len(rows)
    np.testing.assert_allclose(merged["grad_norm_grid"], merged["grad_norm_api"], rtol=2e-6, atol=1e-7)


@pytest.mark.slow
def test_measure_grid_depth_metrics_are_those_of_the_same_samples():
  """with_depth_metrics: frames.depth equals depth_metrics(cfg, seeds, key) of each cell (same samples)."""
  frames = nt.measure_grid(["pre", "post"], 8, 2, seeds=2, key=1, n=4, with_depth_metrics=True)
  for arch in ("pre", "post"):
    alone = depth_metrics.depth_metrics(Config(arch=arch, d=8, L=2, n=4), 2, key=1)
    got = frames.depth[frames.depth["arch"] == arch].reset_index(drop=True)
    pd.testing.assert_frame_equal(_sorted(got, "metric"), _sorted(alone, "metric"))


@pytest.mark.parametrize("kwargs, word", [
    ({"arch": "pre"}, "arch"),
    ({"L": 3}, "L"),
    ({"seeds": 0}, "seeds"),
    ({"chunk": 0}, "chunk"),
    ({"loss": "hinge"}, "loss"),
    ({"archs": ["pre", "middle"]}, "arch"),
    ({"depths": []}, "depths"),
    ({"d_ff": 0}, "d_ff"),
])
def test_measure_grid_rejects_bad_input_before_measuring(kwargs, word, monkeypatch):
  """An axis given as a config field, bad seeds, chunk, loss, arch name or an empty axis: ValueError
  naming it, and the engine is never called."""
  monkeypatch.setattr(engine, "measure_archs", lambda *a, **k: pytest.fail("measured despite bad input"))
  args = {"archs": ["pre"], "widths": [8], "depths": [1], **kwargs}
  with pytest.raises(ValueError, match=word):
    nt.measure_grid(args.pop("archs"), args.pop("widths"), args.pop("depths"), n=4, **args)


@pytest.mark.slow
def test_measure_grid_warns_about_non_finite_values_and_keeps_them(tiny_grid, nan_in_pre_w2):
  """A NaN from the engine is returned as measured (never dropped) and reported as a RuntimeWarning."""
  with pytest.warns(RuntimeWarning, match="non-finite values in pre loss=linear d=8 L=2: W2 x1"):
    frames = nt.measure_grid(**tiny_grid)
  bad = frames.grad[frames.grad["grad_norm"].isna()]
  assert bad[["arch", "d", "L", "seed", "layer", "param"]].values.tolist() == [["pre", 8, 2, 0, 2, "W2"]]


def test_plan_keeps_a_given_d_ff_whatever_the_widths():
  """d_ff given: every cell has it, even when it equals Config's default d (64); None: each cell's d.
  Cells already holding every seed are counted complete and not planned."""
  base = Config(n=4)
  fixed, complete = sweep.plan(base, ["pre"], ["linear"], [128, 32], [1, 2], [0, 1], {}, d_ff=64)
  assert [(p.base.d, p.base.d_ff) for p in fixed] == [(128, 64), (32, 64)] and complete == 0
  follows = sweep.plan(base, ["pre"], ["linear"], [128, 32], [1], [0], {}).passes
  assert [(p.base.d, p.base.d_ff) for p in follows] == [(128, 128), (32, 32)]
  done = schema.cell_key(dataclasses.replace(base, arch="pre", d=32, d_ff=64, L=1))
  partial = sweep.plan(base, ["pre"], ["linear"], [32], [1, 2], [0, 1], {done: {0, 1}}, d_ff=64)
  assert partial.complete == 1 and [sorted(p.cells) for p in partial.passes] == [[("pre", 2)]]


def test_docstring_example(tiny_grid):
  """sweep's doctest (measure_grid on a small grid) runs as written."""
  assert doctest.testmod(sweep).failed == 0


def test_a_widths_programs_are_dropped_once_no_later_pass_uses_it(monkeypatch):
  """sweep.run clears JAX's caches before a pass only when no pass from there on has the last pass's
  width: a single-loss grid over d = 8, 16 clears once; two losses over them (loss-major, so d = 8
  comes back) clear once, before the last pass."""
  clears = []
  monkeypatch.setattr(sweep.jax, "clear_caches", lambda: clears.append(True))
  monkeypatch.setattr(sweep, "run_pass", lambda *args, **kwargs: [])

  class Store:
    def append(self, *args):
      pass

  base = Config(n=4)
  for losses in (("linear",), ("linear", "xent")):
    clears.clear()
    passes, _ = sweep.plan(base, ("post",), losses, (8, 16), (1, 2), range(2), {})
    assert [(p.base.loss, p.base.d) for p in passes][-1] == (losses[-1], 16)
    assert not sweep.run(passes, Store(), None, chunk=None) and len(clears) == 1
