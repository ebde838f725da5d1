"""The measured gradients are the gradients: finite differences, and every path agrees.

References:
  Xiong et al. 2020, Section 3.3 (the measured quantity ||dLoss/dW^l||_F).
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import normtheory as nt
from normtheory import engine, measure, reference, sampling
from normtheory.losses import LOSS_FUNCTIONS
from normtheory.model import Transformer

SMALL = dict(d=6, L=3, n=3, d_ff=5, vocab=7)


def _loss_of_params(cfg, seed_key):
  p_key = sampling.params_key(seed_key)
  x_nxd, target = sampling.inputs(cfg, sampling.data_key(seed_key))
  head = sampling.head_params(cfg, p_key)
  graphdef, params, rest = nnx.split(Transformer(cfg, p_key), nnx.Param, ...)

  def loss(params):
    x_final, _ = nnx.merge(graphdef, params, rest)(x_nxd)
    return LOSS_FUNCTIONS[cfg.loss](x_final, target, head)

  return loss, params


@pytest.mark.slow
@pytest.mark.parametrize("arch, loss", list(itertools.product(["post", "pre"], ["linear", "xent", "mse"])))
def test_jax_grad_matches_float64_central_differences(arch, loss):
  """dLoss/dW from jax.grad equals float64 central finite differences for entries of W2, W1, W_V."""
  with jax.enable_x64(True):
    cfg = nt.Config(arch=arch, loss=loss, dtype="float64", **SMALL)
    loss_fn, params = _loss_of_params(cfg, jax.random.fold_in(jax.random.key(3), 0))
    grads = jax.grad(loss_fn)(params)
    loss_fn = jax.jit(loss_fn)
    h = 1e-6
    for name, index in [("W2", (2, 4, 1)), ("W2", (0, 0, 5)), ("W1", (1, 3, 2)), ("W_V", (0, 2, 3)), ("W_V", (2, 5, 0))]:

      def shifted(delta):
        p = jax.tree.map(lambda a: a, params)
        p["layers"][name][...] = p["layers"][name][...].at[index].add(delta)
        return loss_fn(p)

      fd = (shifted(h) - shifted(-h)) / (2 * h)
      exact = grads["layers"][name][...][index]
      assert abs(fd - exact) <= 1e-7 * max(1.0, abs(exact)), (name, index, fd, exact)


REFERENCE_CASES = [(arch, "linear") for arch in nt.ARCHS] + [("post", "xent"), ("pre", "mse")]


@functools.cache
def _engine_float64(loss: str) -> dict[str, nt.GradNorms]:
  """arch -> the engine's numbers for every case of ``loss``, measured as a sweep measures them: the
  placements of one loss in one call (those whose layers do not read L share one pass)."""
  cfg = nt.Config(loss=loss, dtype="float64", **SMALL)
  archs = tuple(arch for arch, case_loss in REFERENCE_CASES if case_loss == loss)
  seeds_S = np.arange(3)
  by_arch = engine.measure_archs(cfg, archs, [cfg.L], seeds_S, measure.as_key(1))
  return {arch: nt.GradNorms.from_depth_result(dataclasses.replace(cfg, arch=arch), seeds_S, by_depth[cfg.L])
          for arch, by_depth in by_arch.items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch, loss", REFERENCE_CASES)
def test_engine_equals_reference_float64(arch, loss):
  """The flat-memory engine (Gram norms, weights redrawn per step) equals jax.grad of the NNX model to 1e-10."""
  cfg = nt.Config(arch=arch, loss=loss, dtype="float64", **SMALL)
  ref = nt.grad_norms(cfg, seeds=3, key=1, method="reference")
  fast = _engine_float64(loss)[arch]
  for name in nt.PARAM_NAMES:
    np.testing.assert_allclose(fast.grad_norm[name], ref.grad_norm[name], rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(fast.sq_norm, ref.sq_norm, rtol=1e-12)
  np.testing.assert_allclose(fast.ln_jacobian, ref.ln_jacobian, rtol=1e-12)
  np.testing.assert_allclose(fast.loss, ref.loss, rtol=1e-12)


@pytest.mark.slow
def test_engine_equals_reference_float32():
  """In float32 the engine and the straightforward path agree to float32 tolerance."""
  cfg = nt.Config(arch="pre", d=32, L=4, n=8)
  ref = nt.grad_norms(cfg, seeds=2, method="reference")
  fast = nt.grad_norms(cfg, seeds=2)
  for name in nt.PARAM_NAMES:
    np.testing.assert_allclose(fast.grad_norm[name], ref.grad_norm[name], rtol=2e-5, atol=1e-6)


@pytest.mark.slow
def test_shared_forward_pass_equals_separate_depths():
  """Measuring depths 2 and 5 in one pass equals measuring each depth on its own (to float64 rounding:
  the backward pass batches the two depths' cotangents)."""
  cfg = nt.Config(arch="post", dtype="float64", **SMALL)
  key = jax.random.key(5)
  both = engine.measure_depths(cfg, [2, 5], np.arange(3), key)
  for L in (2, 5):
    alone = engine.measure_depths(cfg, [L], np.arange(3), key)[L]
    np.testing.assert_allclose(both[L].grad_norms["W2"], alone.grad_norms["W2"], rtol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunk_size_does_not_change_results(chunk):
  """Seed chunking is exact: chunks of 1, 2 or 3 of 5 seeds give bit-identical norms."""
  cfg = nt.Config(arch="pre", d=16, L=3, n=4)
  full = nt.grad_norms(cfg, seeds=5)
  part = nt.grad_norms(cfg, seeds=5, chunk=chunk)
  for name in nt.PARAM_NAMES:
    np.testing.assert_array_equal(part.grad_norm[name], full.grad_norm[name])
  np.testing.assert_array_equal(part.sq_norm, full.sq_norm)


@pytest.mark.slow
def test_seed_subset_reproduces_the_same_samples():
  """Sample s depends only on (base key, s): seeds [3, 1] equal rows 3 and 1 of seeds=4."""
  cfg = nt.Config(arch="post", d=16, L=2, n=4)
  full = nt.grad_norms(cfg, seeds=4, key=7)
  part = nt.grad_norms(cfg, seeds=[3, 1], key=7)
  np.testing.assert_array_equal(part.grad_norm["W2"], full.grad_norm["W2"][[3, 1]])


@pytest.mark.slow
def test_jit_vmap_scan_equal_nojit_loop_unrolled():
  """reference.measure (jit+vmap over seeds, nnx.scan over layers) equals a Python loop over seeds,
  without jit, with unrolled layers, on the same keys."""
  cfg = nt.Config(arch="pre", **SMALL)
  keys = sampling.seed_keys(jax.random.key(0), np.arange(3))
  fast = reference.measure(cfg, np.arange(3), jax.random.key(0)).grad_norms["W2"]
  for s in range(3):
    _, grads, _ = reference.sample_loss_and_grads(cfg, keys[s], unroll=True)
    slow = jnp.sqrt((grads["layers"]["W2"][...] ** 2).sum((1, 2)))
    np.testing.assert_allclose(fast[s], slow, rtol=1e-5)


@pytest.mark.slow
def test_query_key_gradients_exist_and_are_zero():
  """W_Q = W_K = 0 are real parameters: jax.grad returns them, and at init their gradient is exactly 0."""
  with jax.enable_x64(True):  # float64 like the finite-difference test, so it reuses its compiled ops
    cfg = nt.Config(arch="post", dtype="float64", **SMALL)
    loss_fn, params = _loss_of_params(cfg, jax.random.key(0))
    grads = jax.grad(loss_fn)(params)
    for name in ("W_Q", "W_K"):
      assert grads["layers"][name][...].shape == (cfg.L, cfg.d, cfg.d)
      assert float(jnp.abs(grads["layers"][name][...]).max()) == 0.0
