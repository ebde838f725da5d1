"""Conditional weights (SPEC §6), the algebra: fed the projections of the explicitly drawn weights
(``G_f = Qᵀ W``, ``W' δᵀ = W δᵀ``, the E rows ``E[t]``) instead of fresh normals, the conditional
engine gives the explicit engine's numbers to float64 rounding, for every placement and relaxation
it supports; and a cell's numbers do not depend on which architectures or depths share its pass,
nor on the seeds per call.

The law (conditional against explicit by two-sample tests) is ``test_conditional_law.py``; the
QR, the Gram factor, the embedding rows and the refusals are ``test_conditional.py``. Three
files, so that pytest-xdist (``--dist loadfile``) can run them on both workers.
"""

import dataclasses

import jax
import numpy as np
import pytest

import normtheory as nt
from normtheory import depth_metrics, engine, prng, sampling

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
def test_projections_reproduce_every_placement(explicit_projections):
  """Every placement, two depths: every grad norm, hidden norm, LN Jacobian and loss. Post, Pre,
  Sandwich, LNS and ResiDual share one pass (and its cotangents of two depths); the depth-dependent
  placements (DeepNorm, Mix-LN) run in their own passes."""
  assert _algebra(nt.Config(**(SMALL | {"d": 16})), ALL_ARCHS) < 1e-10


# Each relaxation of SPEC §4 in one of three settings, on Post and Pre (one pass; Pre has the final LN,
# Post not): Xavier attention with heads, a batch, a wider FFN and the xent read-out of Gaussian inputs;
# text through the embedding; the mse loss with a batch under uniform attention (each sequence's mean row).
RELAXATIONS = {
    "xavier-heads-batch-dff-xent": {"attention": "xavier", "heads": 2, "batch": 2, "d_ff": 12, "loss": "xent",
                                    "vocab": 11},
    "text": {"inputs": "text", "loss": "xent"},
    "mse-batch": {"loss": "mse", "batch": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_projections_reproduce_every_relaxation(explicit_projections, relaxation):
  """A relaxation changes the rows a product meets (heads, batches, Xavier attention's n rows, tokens)
  or the head (losses, read-out, embedding), which every placement reaches through the same products
  and head: the placements themselves are checked above. Relaxations that touch different products
  or heads share a setting (a wrong row set or head in any of them moves that setting's numbers)."""
  cfg = nt.Config(**(SMALL | {"d": 16} | RELAXATIONS[relaxation]))
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
  equals Pre at L = 3 measured beside Post and depth 1 (to float64 rounding, a different program).
  Alone, the products draw their own normals (the engine's normals steps bypassed): so the normals
  handed to each step are that layer's and that step's (the projections above replace them)."""
  cfg = nt.Config(weights="conditional", **SMALL)
  shared = engine.measure_archs(cfg, ("post", "pre"), (1, 3), np.arange(2), KEY)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(engine, "_step_normals", lambda *step: ())
    alone = engine.measure_archs(cfg, ("pre",), (3,), np.arange(2), KEY, chunk=1)
  assert _worst_relative_difference({"pre": {3: alone["pre"][3]}}, shared) < 1e-12
  # and the draws are the cell's own: Post and Pre differ from their explicit values
  explicit = engine.measure_archs(dataclasses.replace(cfg, weights="explicit"), ("pre",), (3,), np.arange(2), KEY)
  assert not np.allclose(explicit["pre"][3].grad_norms["W2"], alone["pre"][3].grad_norms["W2"])


@pytest.mark.slow
def test_shared_draws_are_post_lns_normals_and_per_arch_draws_each_archs_own():
  """Under shared draws (the default) Pre-LN reads the normals Post-LN reads under either setting; under
  per-arch draws its own. The products draw in place here (the engine's normals steps bypassed), so Pre
  alone under shared draws must equal Pre beside Post: the normals steps hand each arch its stream's."""
  cfg = nt.Config(weights="conditional", **SMALL)
  per_arch_cfg = dataclasses.replace(cfg, conditional_draws="per-arch")
  shared = engine.measure_archs(cfg, ("post", "pre"), (1, 3), np.arange(2), KEY)
  per_arch = engine.measure_archs(per_arch_cfg, ("post", "pre"), (1, 3), np.arange(2), KEY)
  assert _worst_relative_difference({"post": per_arch["post"]}, shared) < 1e-12
  for L in (1, 3):
    assert not np.allclose(per_arch["pre"][L].grad_norms["W2"], shared["pre"][L].grad_norms["W2"])
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(engine, "_step_normals", lambda *step: ())
    alone = engine.measure_archs(cfg, ("pre",), (1, 3), np.arange(2), KEY)
    alone_per_arch = engine.measure_archs(per_arch_cfg, ("pre",), (1, 3), np.arange(2), KEY)
  assert _worst_relative_difference(alone, shared) < 1e-12
  assert _worst_relative_difference(alone_per_arch, per_arch) < 1e-12


@pytest.mark.slow
def test_padding_every_depth_or_to_powers_of_two_gives_the_same_numbers(monkeypatch):
  """The backward step's depth batch (:func:`engine._depth_batch`: all depths, or powers of two) pads with
  zero cotangents, which change no active depth's numbers beyond rounding (float64, five depths)."""
  cfg = nt.Config(weights="conditional", **SMALL)
  depths = (1, 2, 3, 4, 5)
  padded = {}
  for work in (2**62, 0):  # every step padded to all five depths; then to 1, 2, 4, 5
    monkeypatch.setattr(engine, "PAD_ALL_DEPTHS_WORK", work)
    engine._pads_all_depths.cache_clear()
    padded[work] = engine.measure_archs(cfg, ("pre",), depths, np.arange(2), KEY)
  engine._pads_all_depths.cache_clear()
  assert _worst_relative_difference(padded[2**62], padded[0]) < 1e-12
