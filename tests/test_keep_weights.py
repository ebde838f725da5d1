"""Each weight drawn once: keeping the forward pass's weights for the backward pass changes no bit.

The engine keeps the weights it draws in the forward pass when the memory budget allows
(:func:`normtheory.engine.plan_memory`), keeps some layers when it does not, and
``redraw=True`` draws every layer again in the backward pass (the path before weights
were kept). All three, for every chunk size, give bit for bit the same numbers; the
budget arithmetic is checked on its own, without compiling anything.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normtheory as nt
from normtheory import cli, engine, prng, sampling
from normtheory.config import Config, preset

KEY = prng.make_key(0, "threefry2x32")
SCRIPT = pathlib.Path(__file__).parents[1] / "experiments" / "grad_scaling.py"


def _budget_keeping(cfg, archs, depths, chunk, layers):
  """A budget under which a call of ``chunk`` seeds keeps exactly ``layers`` layers."""
  need = engine.seed_bytes(cfg, archs, depths)
  return engine._padded(chunk) * (need.fixed + layers * need.per_kept_layer)


def _assert_same(a, b, label, rows=slice(None)):
  """``b``'s numbers are bit for bit those of ``a``'s seeds ``rows`` (all of them by default)."""
  for arch, by_depth in a.items():
    for L, r in by_depth.items():
      s = b[arch][L]
      for name, g in r.grad_norms.items():
        np.testing.assert_array_equal(s.grad_norms[name], g[rows], err_msg=f"{label}: {arch} L={L} {name}")
      for field in ("sq_norms", "ln_jacobian", "ln_jacobian_final", "loss"):
        np.testing.assert_array_equal(getattr(s, field), getattr(r, field)[rows],
                                      err_msg=f"{label}: {arch} L={L} {field}")


CASES = {
    # Theorem 1's model, the two archs of the default sweep and ResiDual's two streams
    "paper": (Config(d=8, n=4), ("post", "pre", "residual"), (1, 3)),
    # every relaxation at once: Xavier attention, heads, text through E with a tied read-out, a batch
    "realistic": (Config(d=16, n=4, loss="xent", batch=2, tied=True, **preset("realistic")),
                  ("sandwich", "residual"), (1, 3)),
    # the depth-dependent archs (one pass per depth, DeepNorm's beta on the kept draws), xent read-out
    "depth_dependent": (Config(d=8, n=4, loss="xent", vocab=11, attention="xavier", heads=2),
                        ("deepnorm", "mixln", "lns"), (2, 3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_kept_partly_kept_and_redrawn_weights_give_the_same_bits(case):
  """Keeping every layer (one call), keeping one layer of three with one seed per call, and redrawing
  every layer with 2 seeds per call give bit-identical norms (E included), hidden norms, LN Jacobians
  and losses; and seeds [2, 0] alone (redrawn, one call) are rows 2 and 0 of the same pass. (A pass
  over other depths compiles other programs, and explicit weights' norms may then differ in their
  last bits: at XLA's default level, W_V, W_O and W1 of a pass over L = 3 alone against one over
  L in {1, 3}; the README claims bit-identity for chunks, memory plans, devices and processes only.)"""
  cfg, archs, depths = CASES[case]
  seeds = np.arange(3)
  kept = engine.measure_archs(cfg, archs, depths, seeds, KEY, max_memory=engine.UNLIMITED)
  assert all(plan.kept_layers == max(p.depths) and plan.chunk == 3
             for p, plan in engine.plan_passes(cfg, archs, depths, 3, engine.UNLIMITED))
  budget = max(_budget_keeping(cfg, p.archs, p.depths, 1, 1) for p in engine.passes_for(archs, depths))
  assert {plan.kept_layers for _, plan in engine.plan_passes(cfg, archs, depths, 3, budget, chunk=1)} >= {1}
  partly = engine.measure_archs(cfg, archs, depths, seeds, KEY, chunk=1, max_memory=budget)
  redrawn = engine.measure_archs(cfg, archs, depths, seeds, KEY, chunk=2, redraw=True)
  _assert_same(kept, partly, "one layer kept, chunk 1")
  _assert_same(kept, redrawn, "redrawn, chunk 2")
  subset = engine.measure_archs(cfg, archs, depths, np.array([2, 0]), KEY, chunk=2, redraw=True)
  _assert_same(kept, subset, "seeds [2, 0], redrawn", rows=[2, 0])


@pytest.mark.slow
def test_per_layer_results_copied_to_the_host_early_are_the_same_bits(monkeypatch):
  """The engine copies per-layer scalars to numpy every ``_TO_HOST_EVERY`` layers (memory); copying
  after every layer, conditional and explicit weights alike, changes no number."""
  for weights in ("explicit", "conditional"):
    cfg, archs, depths = Config(d=8, n=4, weights=weights), ("post", "pre"), (1, 3)
    late = engine.measure_archs(cfg, archs, depths, np.arange(2), KEY)
    monkeypatch.setattr(engine, "_TO_HOST_EVERY", 1)
    _assert_same(late, engine.measure_archs(cfg, archs, depths, np.arange(2), KEY), weights)
    monkeypatch.undo()


@pytest.mark.slow
def test_partly_kept_float64_equals_the_reference_path():
  """ResiDual in float64 with the bottom layer's weights kept and the others redrawn equals jax.grad of
  the NNX model to 1e-10 (the engine's reference test, on the mixed path)."""
  cfg = Config(arch="residual", d=6, L=3, n=3, d_ff=5, dtype="float64")
  ref = nt.grad_norms(cfg, seeds=2, key=1, method="reference")
  budget = _budget_keeping(cfg, ("residual",), (3,), 2, 1)
  assert engine.plan_memory(cfg, ("residual",), (3,), 2, budget, chunk=2) == engine.MemoryPlan(2, 1)
  fast = engine.measure_depths(cfg, [3], np.arange(2), prng.make_key(1), chunk=2, max_memory=budget)[3]
  for name in nt.PARAM_NAMES:
    np.testing.assert_allclose(fast.grad_norms[name], ref.grad_norm[name], rtol=1e-10, atol=1e-13)


@pytest.mark.slow
def test_a_device_with_one_seed_computes_it_like_a_device_with_several():
  """Text read through a tied embedding, Sandwich-LN: one seed per call equals three per call bit for
  bit (a loop over one seed is compiled differently unless the engine prevents it; this case used to
  differ in the last bit)."""
  cfg = Config(d=16, n=4, loss="xent", inputs="text", tied=True)
  one = engine.measure_archs(cfg, ("sandwich",), [2], np.arange(2), KEY, chunk=1)
  both = engine.measure_archs(cfg, ("sandwich",), [2], np.arange(2), KEY, chunk=2)
  _assert_same(both, one, "chunk 1 vs 2")


@pytest.mark.slow
def test_draw_weights_counts_every_distinct_weight_once():
  """The sampling floor draws seeds x L_max x the drawn matrices of every pass: 4 d x d-sized
  matrices per layer under uniform attention, 6 under Xavier attention; DeepNorm (one pass per depth)
  draws its layers once per depth."""
  d, f = 8, 12
  uniform = Config(d=d, d_ff=f, n=4)
  assert engine.draw_weights(uniform, ("post", "pre"), (1, 3), np.arange(3), KEY) == 3 * 3 * (2 * d * d + 2 * d * f)
  xavier = dataclasses.replace(uniform, attention="xavier")
  assert engine.draw_weights(xavier, ("deepnorm",), (1, 3), np.arange(2), KEY) == 2 * (1 + 3) * (4 * d * d + 2 * d * f)


@pytest.mark.slow
def test_drawn_params_are_the_random_part_of_layer_params():
  """layer_params = with_constants(drawn_params): the drawn matrices are the same arrays, and the rest
  (W_Q = W_K = 0 under uniform attention, the biases) are zeros."""
  for attention, drawn in [("uniform", ("W_V", "W_O", "W1", "W2")), ("xavier", nt.PARAM_NAMES)]:
    cfg = Config(d=8, d_ff=12, attention=attention)
    p_key = sampling.params_key(jax.random.key(3))
    assert sampling.drawn_names(cfg) == drawn
    full, part = sampling.layer_params(cfg, p_key, 2, 0.5), sampling.drawn_params(cfg, p_key, 2, 0.5)
    assert set(part) == set(drawn)
    for name, value in full.items():
      expected = part[name] if name in part else np.zeros_like(value)
      np.testing.assert_array_equal(value, expected, err_msg=name)


# The budget arithmetic: no compilation, so hypothesis can try many budgets.
PLAN_CFG = Config(d=64, d_ff=96, n=16)
PLAN_DEPTHS = (6, 12, 24)


@settings(max_examples=200, deadline=None)
@given(budget=st.integers(1, 2**28), seeds=st.integers(1, 20), fixed_chunk=st.none() | st.integers(1, 20))
def test_plan_fits_the_budget_and_keeps_as_much_as_fits(budget, seeds, fixed_chunk):
  """A plan holds at most the budget (unless one seed per device without kept weights already exceeds
  it: then that, nothing kept). Planned: every layer kept when that fits two seeds per device (or every
  seed), in as few calls as fit; else every layer redrawn. A fixed chunk is kept as given (at most the
  seed count) and keeps as many layers as fit: one more would exceed the budget."""
  need = engine.seed_bytes(PLAN_CFG, ("post", "pre"), PLAN_DEPTHS)
  L_max, devices = max(PLAN_DEPTHS), jax.local_device_count()
  plan = engine.plan_memory(PLAN_CFG, ("post", "pre"), PLAN_DEPTHS, seeds, budget, fixed_chunk)
  held = lambda chunk, kept: engine._padded(chunk) * (need.fixed + (kept or 0) * need.per_kept_layer)
  assert 1 <= plan.chunk <= seeds
  if fixed_chunk is not None:
    assert plan.chunk == min(fixed_chunk, seeds) and 0 <= plan.kept_layers <= L_max
    if held(plan.chunk, plan.kept_layers) <= budget and plan.kept_layers < L_max:
      assert held(plan.chunk, plan.kept_layers + 1) > budget
    return
  if held(plan.chunk, plan.kept_layers) > budget:
    assert plan.kept_layers is None and plan.chunk <= devices
    return
  keep_for = min(seeds, engine.KEPT_SEEDS_PER_DEVICE * devices)
  if plan.kept_layers is None:
    assert held(keep_for, L_max) > budget
  else:
    assert plan.kept_layers == L_max and plan.chunk >= min(keep_for, seeds)
  if plan.chunk < seeds:
    calls = -(-seeds // plan.chunk)
    assert held(-(-seeds // (calls - 1)), plan.kept_layers) > budget


def test_plan_examples_at_d512():
  """The issue's sizes: one seed's 96 layers at d = 512 are 4 x 512² x 4 B x 96 = 403 MB; 2 GiB keep
  every layer of 4 seeds per call (at most 5 fit: two even calls); 256 MiB, which keep 58 layers of one
  seed, and 1 MiB redraw every layer instead, as redraw does, with all 8 seeds in one call."""
  cfg, archs, depths = Config(d=512), ("post", "pre"), (6, 12, 24, 48, 96)
  need = engine.seed_bytes(cfg, archs, depths)
  assert need.per_kept_layer * 96 == 4 * 512**2 * 4 * 96
  plan = lambda budget, **kw: engine.plan_memory(cfg, archs, depths, 8, budget, **kw)
  if jax.local_device_count() == 1:
    assert plan(2 * 2**30) == (4, 96)
    assert plan(2**28) == (8, None)
    assert plan(2**28, chunk=1) == (1, (2**28 - need.fixed) // need.per_kept_layer)
  assert plan(2**20).kept_layers is None
  assert plan(2 * 2**30, redraw=True) == (8, None)


@pytest.mark.slow
def test_memory_flags_store_the_same_numbers(tiny_store, tiny_argv, tmp_path, monkeypatch):
  """--redraw, and a --max-memory that keeps some layers with one seed per call, store the same grad
  norms as the default sweep (the tiny store), and meta.json records the budget and the switch. (The
  budget is the whole process's: with the process's own memory and the compiler's reserve counted as
  nothing, 90K is what the calls may hold: at d = 16 one seed keeps 2 of the 4 layers.)"""
  monkeypatch.setattr(engine, "resident_bytes", lambda: 0)
  monkeypatch.setattr(engine, "RUNTIME_RESERVE", 0)
  for flags in (["--redraw"], ["--max-memory", "90K", "--chunk", "1"]):
    out = tmp_path / flags[0].strip("-")
    assert cli.main([*tiny_argv, *flags, "--out", str(out)]) == 0
    got, want = nt.load(out).grad, nt.load(tiny_store).grad  # --chunk 1 stores seed by seed: sort the rows
    keys = list(want.columns[:-1])
    pd.testing.assert_frame_equal(got.sort_values(keys).reset_index(drop=True), want.sort_values(keys).reset_index(drop=True),
                                  check_exact=True, obj=str(flags))
    run = nt.load(out).meta["runs"][-1]
    assert run["redraw"] == (flags[0] == "--redraw")
    if flags[0] == "--max-memory":
      assert run["max_memory"] == 90 * 1024 and run["memory_budget"] == "process"


def test_a_max_memory_below_what_the_process_holds_exits_2_before_anything_runs(tmp_path, capsys):
  """--max-memory is the whole process's: 64M, less than this process already holds, exits 2 with one
  line that says what it holds and what to give, and stores no row."""
  out = tmp_path / "s"
  assert cli.main(["--d", "8", "--L", "2", "--seeds", "2", "--max-memory", "64M", "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "--max-memory 0.0625 GiB is too small: this process holds" in err and "give at least" in err
  assert not (out / "grad").exists() or not nt.load(out).grad.shape[0]


# The kernel's peak of a child counts the pages of the process it was forked from (a pytest worker holds
# GBs): a small Python in between starts the sweep and reports the sweep's own peak, in KiB.
PEAK_OF = """import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)"""


@pytest.mark.slow
def test_max_memory_bounds_the_whole_processs_peak(tmp_path):
  """The CLI under --max-memory 1G peaks within 10% of 1 GiB (its resident set, measured by the
  kernel), on a grid whose kept weights alone would take 0.8 GB (8 seeds x 24 layers x 4 MiB at
  d = 512): a budget for the engine's calls alone, the flag's meaning before, peaked at 1.25 GiB here."""
  out = tmp_path / "s"
  sweep = [sys.executable, str(SCRIPT), "--d", "512", "--L", "6..24", "--seeds", "8", "--quiet", "--n-boot", "10",
           "--max-memory", "1G", "--out", str(out)]
  done = subprocess.run([sys.executable, "-c", PEAK_OF, *sweep], capture_output=True, text=True, timeout=600)
  status, peak_kib = map(int, done.stdout.split())
  assert status == 0, done.stderr
  assert peak_kib * 1024 <= 1.1 * 2**30
  run = nt.load(out).meta["runs"][-1]
  assert run["max_memory"] == 2**30 and run["memory_budget"] == "process"
