"""Sweep reliability: out-of-memory retries, failed cells, non-finite values, multi-host merge."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from normtheory import cli, distributed, engine, prng, store, sweep
from normtheory.config import Config

# The grid of tests/conftest.py's tiny store, so these runs reuse its compiled steps.
TINY = ["--d", "8,16", "--L", "1..4", "--seeds", "3", "--n", "4", "--n-boot", "10", "--quiet"]
real_measure_archs = engine.measure_archs


@pytest.mark.slow
def test_out_of_memory_halves_the_chunk_and_retries(tmp_path, monkeypatch, capsys):
  """A RESOURCE_EXHAUSTED error on a chunk retries with half the chunk, says so, and stores the same numbers."""
  calls = []

  def flaky(cfg, archs, depths, seeds, key, chunk=None):
    calls.append(chunk)
    if chunk > 1:
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory allocating 1 TiB (simulated)")
    return real_measure_archs(cfg, archs, depths, seeds, key, chunk)

  assert cli.main([*TINY, "--out", str(tmp_path / "clean"), "--chunk", "2"]) == 0
  monkeypatch.setattr(engine, "measure_archs", flaky)
  assert cli.main([*TINY, "--out", str(tmp_path / "retried"), "--chunk", "2"]) == 0
  assert calls[:2] == [2, 1]
  assert "retrying with 1" in capsys.readouterr().err
  clean = pd.read_csv(tmp_path / "clean" / "grad_norms.csv")
  retried = pd.read_csv(tmp_path / "retried" / "grad_norms.csv")
  pd.testing.assert_frame_equal(clean, retried)


def test_failed_cells_exit_1_after_storing_every_other_cell(tmp_path, monkeypatch, capsys):
  """A pass that raises is reported; the other cells are stored; the process exits non-zero."""

  def broken_for_d16(cfg, archs, depths, seeds, key, chunk=None):
    if cfg.d == 16:
      raise FloatingPointError("simulated failure")
    return real_measure_archs(cfg, archs, depths, seeds, key, chunk)

  monkeypatch.setattr(engine, "measure_archs", broken_for_d16)
  out = tmp_path / "partial"
  assert cli.main([*TINY, "--out", str(out)]) == 1
  assert "simulated failure" in capsys.readouterr().err
  grad = pd.read_csv(out / "grad_norms.csv")
  assert set(grad.d) == {8} and grad.groupby(["arch", "L"]).ngroups == 6
  meta = json.loads((out / "meta.json").read_text())
  assert any("failed_cells" in p for p in meta["problems"])


def test_nonfinite_norms_are_flagged_never_averaged(tmp_path, monkeypatch, capsys):
  """A NaN norm is stored as NaN, warned about, listed in meta.json, shown as NON-FINITE in the summary,
  and left out of the fits (with a count)."""

  def with_nan(cfg, archs, depths, seeds, key, chunk=None):
    out = real_measure_archs(cfg, archs, depths, seeds, key, chunk)
    if cfg.d == 8:
      out["pre"][2].grad_norms["W2"][0, -1] = np.nan
    return out

  monkeypatch.setattr(engine, "measure_archs", with_nan)
  out = tmp_path / "nan"
  assert cli.main([a for a in TINY if a != "--quiet"] + ["--out", str(out)]) == 0
  captured = capsys.readouterr()
  assert "non-finite values in pre loss=linear d=8 L=2: W2 x1" in captured.err
  assert "NON-FINITE x1" in captured.out
  assert "1 non-finite values were left out" in captured.out
  grad = pd.read_csv(out / "grad_norms.csv")
  assert grad.grad_norm.isna().sum() == 1
  assert any("nonfinite" in p for p in json.loads((out / "meta.json").read_text())["problems"])


def test_merged_process_parts_equal_a_single_process_run(tmp_path):
  """Two processes' parts (seeds split s % 2) merged by process 0 equal one process measuring all seeds."""
  settings = {"dtype": "float32", "eps": 1e-6, "base_seed": 0, "prng": "threefry2x32", "vocab": 1000}
  base = Config(d=8, n=4)
  key = prng.make_key(0, "threefry2x32")
  for process, seeds in enumerate([{0, 2, 4}, {1, 3, 5}]):
    part = store.ResultsStore(distributed.part_dir(tmp_path / "multi", process), settings)
    passes, _ = sweep.plan(base, ["post", "pre"], ["linear"], [8], [1, 2, 4], seeds, {})
    assert not sweep.run(passes, part, key, None)
  merged = distributed.merge_parts(tmp_path / "multi", settings).grad
  single = store.ResultsStore(tmp_path / "single", settings)
  passes, _ = sweep.plan(base, ["post", "pre"], ["linear"], [8], [1, 2, 4], range(6), {})
  sweep.run(passes, single, key, 3)
  keys = ["arch", "loss", "d", "L", "n", "d_ff", "seed", "layer", "param"]
  a = merged.sort_values(keys).reset_index(drop=True)
  b = single.grad.sort_values(keys).reset_index(drop=True)
  pd.testing.assert_frame_equal(a, b)
  assert distributed.my_seeds(5) == {0, 1, 2, 3, 4}  # one process takes every seed
