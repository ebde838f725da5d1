"""Theorem 1's assumptions relaxed one at a time: batches, attention, heads, text, ResiDual.

Every relaxation goes through the fast engine; each is checked against the NNX
reference path (jax.grad of the whole parameter pytree) in float64, against an
independent recomputation of its definition, and the defaults against a store
made by the code before any relaxation existed (bit for bit).

References:
  Xiong et al. 2020, Section 3.3 (the model of Theorem 1) and Fig. 3 (batch gradients
  on real text); Xie et al. 2023 (ResiDual); Vaswani et al. 2017 (multi-head attention,
  sinusoidal positions).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from flax import nnx

import normtheory as nt
from normtheory import architectures, depth_metrics, engine, layers, prng, sampling, schema, text
from normtheory.config import PARAM_NAMES
from normtheory.losses import LOSS_FUNCTIONS
from normtheory.model import Transformer

MAIN_STORE = pathlib.Path(__file__).parent / "data" / "store_8807192"
SMALL = dict(d=8, L=3, n=3, d_ff=5, dtype="float64")


def _main_rows(table: str, arch: str, loss: str, L: int, label=None) -> np.ndarray:
  frame = pd.read_csv(MAIN_STORE / table)
  rows = frame[(frame.arch == arch) & (frame.loss == loss) & (frame.L == L)]
  if label is not None:
    rows = rows[rows[label[0]] == label[1]]
  return rows.sort_values(["seed", "layer"]).iloc[:, -1].to_numpy().reshape(2, L)


# The committed store was written on another CPU: XLA compiles for the host's vector units (AVX2 vs
# AVX-512 reduce in different orders), so a stored float32 can differ from a fresh one in its last bits
# (seen: 4.8e-7 absolute, 1.7e-7 relative, on W_V). Same code, same draws, same numbers to a few float32
# ulps: a changed draw, key, layer or formula moves these norms by O(1), so STORED_RTOL still tells them apart.
STORED_RTOL = 2e-6


def _check_main_store(archs, losses):
  key = prng.make_key(0, "threefry2x32")  # the store's --seed 0 --prng threefry2x32
  for loss in losses:
    measured = engine.measure_archs(nt.Config(d=8, n=4, loss=loss, vocab=11), archs, [1, 3], np.arange(2), key)
    for arch in archs:
      for L in (1, 3):
        r = measured[arch][L]
        for w in PARAM_NAMES:
          np.testing.assert_allclose(r.grad_norms[w], _main_rows("grad_norms.csv", arch, loss, L, ("param", w)),
                                     rtol=STORED_RTOL, atol=0, err_msg=f"{arch} {loss} L={L} {w}")
        np.testing.assert_allclose(r.sq_norms[:, :L], _main_rows("hidden_norms.csv", arch, loss, L),
                                   rtol=STORED_RTOL, atol=0)


@pytest.mark.slow
def test_defaults_reproduce_a_store_made_before_the_relaxations():
  """batch = 1, uniform attention, one head, Gaussian inputs: Post-LN and Pre-LN (one shared pass) give
  the grad and hidden norms that main's code stored at 8807192 (tests/data/store_8807192), to float32
  rounding (:data:`STORED_RTOL`: the store was written on another CPU)."""
  _check_main_store(("post", "pre"), ("linear", "xent"))


@pytest.mark.slow
def test_every_placement_loss_and_depth_metric_reproduces_the_old_store():
  """All six placements of the old store, all three losses, and its depth metrics, to float32 rounding."""
  _check_main_store(("post", "pre", "sandwich", "lns"), ("linear", "xent", "mse"))
  _check_main_store(("deepnorm",), ("linear", "xent", "mse"))
  _check_main_store(("mixln",), ("linear", "xent", "mse"))
  old = schema.read_table(MAIN_STORE, schema.DEPTH_FILE)  # the store's own upgrade: newer cell columns at default
  for arch in ("pre", "mixln"):
    cfg = nt.Config(arch=arch, d=8, L=3, n=4, loss="mse", vocab=11)
    new = depth_metrics.depth_metrics(cfg, 2, prng.make_key(0, "threefry2x32"))
    want = old[(old.arch == arch) & (old.loss == "mse") & (old.L == 3)].reset_index(drop=True)
    pd.testing.assert_frame_equal(new, want, check_exact=False, rtol=STORED_RTOL, atol=0, check_dtype=False)


def test_sequence_zero_of_a_batch_is_the_one_sequence_sample():
  """Sequence 0 of a batch draws exactly what a one-sequence sample draws; the others differ from it."""
  d_key = sampling.data_key(jax.random.key(3))
  for loss in ("linear", "xent"):
    one = sampling.inputs(nt.Config(d=8, n=4, loss=loss), d_key)
    four = sampling.inputs(nt.Config(d=8, n=4, loss=loss, batch=4), d_key)
    assert four.x.shape == (4, *one.x.shape) and four.target.shape == (4, *one.target.shape)
    np.testing.assert_array_equal(four.x[0], one.x)
    np.testing.assert_array_equal(four.target[0], one.target)
    assert all(not np.array_equal(four.x[b], one.x) for b in (1, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("arch, loss", [("pre", "linear"), ("post", "xent")])
def test_batch_gradient_equals_the_mean_of_per_sequence_losses_through_the_reference(arch, loss):
  """--batch 3: the engine's per-layer norms equal those of jax.grad of (1/B) sum_b Loss_b, each Loss_b
  the NNX reference model (built for one sequence) on sequence b with the same weights; float64, 1e-10.
  So grad_norm is the norm of the batch-mean gradient (the statistic of the paper's Fig. 3)."""
  cfg = nt.Config(arch=arch, loss=loss, batch=3, vocab=7, **SMALL)
  fast = nt.grad_norms(cfg, seeds=2, key=4)
  with jax.enable_x64(True):
    for s, seed_key in enumerate(sampling.seed_keys(jax.random.key(4), np.arange(2))):
      batch = sampling.inputs(cfg, sampling.data_key(seed_key))
      one_sequence = nt.Config(arch=arch, loss=loss, vocab=7, **SMALL)
      graphdef, params, rest = nnx.split(Transformer(one_sequence, sampling.params_key(seed_key)), nnx.Param, ...)

      def mean_loss(params):
        model = nnx.merge(graphdef, params, rest)
        losses = [LOSS_FUNCTIONS[loss](model(batch.x[b]).x_final, batch.target[b], model.head()) for b in range(3)]
        return jnp.mean(jnp.stack(losses))

      grads = jax.grad(mean_loss)(params)
      for w in PARAM_NAMES:
        expected_L = np.sqrt((np.asarray(grads["layers"][w][...]) ** 2).sum((1, 2)))
        np.testing.assert_allclose(fast.grad_norm[w][s], expected_L, rtol=1e-10, atol=1e-14, err_msg=w)


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    dict(arch="residual", inputs="text", loss="xent", tied=True, batch=2, attention="xavier", heads=4),
    dict(arch="residual"),
    dict(arch="pre", attention="xavier", heads=2, loss="mse"),
    dict(arch="post", inputs="text", loss="xent", batch=2),
    dict(arch="sandwich", inputs="text", loss="xent", tied=True, attention="xavier"),
    dict(arch="deepnorm", attention="xavier", heads=4, batch=2),
    dict(arch="pre", batch=2, d=16, d_ff=16),  # 6 rows: the Gram way (6 * 32 < 16 * 16)
])
def test_engine_equals_reference_with_relaxations_float64(case):
  """Every relaxation through the flat-memory engine (Gram norms with B·n rows, W_Q/W_K under a
  non-uniform softmax, E formed once per depth) equals jax.grad of the NNX model to 1e-10, with the
  hidden norms (L+1 of them), LN Jacobians (final LN included) and losses."""
  cfg = nt.Config(**{**SMALL, **case})
  ref = nt.grad_norms(cfg, seeds=2, key=1, method="reference")
  fast = nt.grad_norms(cfg, seeds=2, key=1)
  assert set(fast.grad_norm) == set(ref.grad_norm) == set(nt.config.reported_params(cfg))
  for name in ref.grad_norm:
    np.testing.assert_allclose(fast.grad_norm[name], ref.grad_norm[name], rtol=1e-10, atol=1e-13, err_msg=name)
  if cfg.attention == "xavier":
    assert (fast.grad_norm["W_Q"] > 1e-6).all() and (fast.grad_norm["W_K"] > 1e-6).all()
  assert fast.sq_norm.shape == (2, cfg.L + 1)
  np.testing.assert_allclose(fast.sq_norm, ref.sq_norm, rtol=1e-12)
  np.testing.assert_allclose(fast.ln_jacobian, ref.ln_jacobian, rtol=1e-12)
  np.testing.assert_allclose(fast.ln_jacobian_final, ref.ln_jacobian_final, rtol=1e-12)
  np.testing.assert_allclose(fast.loss, ref.loss, rtol=1e-12)


def test_a_store_made_before_the_relaxations_opens_and_is_complete(tmp_path):
  """The old store (hidden norms for layers 1..L only, no ln_jacobian.csv, meta.json without "tied")
  opens with this code's settings, reads in the current layout, and the planner finds every cell stored."""
  import shutil

  from normtheory import schema, store, sweep

  old = tmp_path / "old"
  shutil.copytree(MAIN_STORE, old)
  settings = {"dtype": "float32", "eps": 1e-6, "base_seed": 0, "prng": "threefry2x32", "vocab": 11, "tied": False}
  opened = store.ResultsStore(old, settings)
  assert list(opened.read(schema.HIDDEN_FILE).columns) == list(schema.HIDDEN_COLUMNS)
  assert opened.read(schema.LN_JACOBIAN_FILE).empty
  base = nt.Config(d=8, n=4, vocab=11)
  passes, complete = sweep.plan(base, nt.ARCHS[:6], ("linear", "xent", "mse"), [8], [1, 3], range(2), opened.stored_seeds())
  assert passes == [] and complete == 6 * 3 * 2
  with pytest.raises(schema.StoreError, match="tied"):
    store.ResultsStore(old, settings | {"tied": True})


@pytest.mark.slow
def test_uniform_attention_is_the_same_for_any_number_of_heads():
  """W_Q = W_K = 0: every head's softmax is exactly 1/n, so H heads give mean_j x_j W_V W_O, as one head."""
  cfg = nt.Config(d=16, n=5)
  p = sampling.layer_params(cfg, jax.random.key(0), 1)
  x_bxnxd = jax.random.normal(jax.random.key(1), (2, cfg.n, cfg.d))
  expected_bxd = x_bxnxd.mean(1) @ p["W_V"] @ p["W_O"]
  for heads in (1, 2, 4, 16):
    out = layers.attention(x_bxnxd, p, None, heads)
    np.testing.assert_allclose(out, jnp.broadcast_to(expected_bxd[:, None], out.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_multi_head_attention_equals_a_loop_over_heads_and_sequences():
  """Xavier W_Q, W_K: H heads of width d/H, each softmax(q_h k_h^T / sqrt(d/H)) v_h within one sequence,
  concatenated and times W_O, recomputed in float64 numpy one sequence and one head at a time."""
  cfg = nt.Config(d=12, n=5, attention="xavier", heads=3)
  p = {k: np.asarray(v, np.float64) for k, v in sampling.layer_params(cfg, jax.random.key(2), 1).items()}
  assert np.abs(p["W_Q"]).min() > 0 and np.abs(p["W_K"]).min() > 0
  x_bxnxd = np.asarray(jax.random.normal(jax.random.key(3), (2, cfg.n, cfg.d)), np.float64)
  with jax.enable_x64(True):
    got = np.asarray(layers.attention(jnp.asarray(x_bxnxd), {k: jnp.asarray(v) for k, v in p.items()}, None, 3))
  c = cfg.d // 3
  for b in range(2):
    q, k, v = (x_bxnxd[b] @ p[w] for w in ("W_Q", "W_K", "W_V"))
    heads = []
    for h in range(3):
      cols = slice(h * c, (h + 1) * c)
      scores = q[:, cols] @ k[:, cols].T / np.sqrt(c)
      weights = np.exp(scores - scores.max(1, keepdims=True))
      heads.append(weights / weights.sum(1, keepdims=True) @ v[:, cols])
    np.testing.assert_allclose(got[b], np.concatenate(heads, axis=1) @ p["W_O"], rtol=1e-12)


def test_xavier_query_key_weights_are_xavier_and_not_scaled_by_deepnorm():
  """attention="xavier": W_Q, W_K have variance 1/d (within 3 %) and keep gain 1 under DeepNorm's
  beta (as in DeepNet), while W_V is scaled by beta; the other weights are those of "uniform"."""
  key = jax.random.key(5)
  cfg = nt.Config(d=256, attention="xavier")
  beta = architectures.deepnorm_beta(24)
  p = sampling.layer_params(cfg, key, 2, beta)
  uniform = sampling.layer_params(nt.Config(d=256), key, 2, beta)
  for name in ("W_Q", "W_K"):
    assert abs(np.asarray(p[name]).var() * 256 - 1) < 0.03
  assert abs(np.asarray(p["W_V"]).var() * 256 / beta**2 - 1) < 0.03
  for name in ("W_V", "W_O", "W1", "W2"):
    np.testing.assert_array_equal(p[name], uniform[name])


def test_text_windows_are_next_token_pairs_of_the_language_reference():
  """The corpus is pydoc_data's language reference as UTF-8 bytes (deterministic); a window's targets
  are its tokens shifted by one, both a contiguous slice of the corpus; tokens lie in [0, 256)."""
  from pydoc_data import topics

  corpus = text.corpus()
  assert corpus.size > 300_000 and text.corpus() is corpus
  assert bytes(corpus[:2000]).decode("utf-8", "ignore") in "".join(topics.topics[k] for k in sorted(topics.topics))
  cfg = nt.Config(d=8, n=32, inputs="text", loss="xent", batch=4)
  sample = sampling.inputs(cfg, jax.random.key(9))
  tokens, targets = np.asarray(sample.x), np.asarray(sample.target)
  assert tokens.shape == targets.shape == (4, 32) and tokens.min() >= 0 and tokens.max() < 256
  np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])
  for b in range(4):
    span = np.concatenate([tokens[b], targets[b, -1:]])
    starts = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(corpus, 33).__eq__(span).all(1))
    assert starts.size >= 1


@pytest.mark.slow
def test_embedded_text_rows_have_the_mean_square_of_gaussian_inputs():
  """x_i = sqrt((V+d)/4) E[t_i] + P_i with E Xavier-Gaussian: the token part has entries of variance 1/2,
  the positions mean square exactly 1/2 (even d), so E||x_i||²/d = 1 as for N(0, I) rows
  (64 embedding draws at d = 64, n = 16: within 3 %)."""
  cfg = nt.Config(d=64, n=16, inputs="text", loss="xent")
  positions = np.asarray(layers.sinusoidal_positions(16, 64), np.float64)
  np.testing.assert_allclose((positions**2).mean(1), 0.5, rtol=1e-6)

  def mean_square(seed_key):
    head = sampling.head_params(cfg, sampling.params_key(seed_key))
    x_nxd = sampling.first_state(cfg, head, sampling.inputs(cfg, sampling.data_key(seed_key)).x)
    return (x_nxd**2).mean()

  keys = sampling.seed_keys(jax.random.key(0), np.arange(64))
  assert float(jax.vmap(mean_square)(keys).mean()) == pytest.approx(1.0, rel=0.03)


@pytest.mark.slow
def test_residual_streams_follow_their_definition():
  """ResiDual (Xie et al. 2023): its stream a is exactly the Post-LN state with the same weights
  (a <- LN(a + F(a)) per sublayer), its stream b is x plus the sum of every sublayer's output F(a),
  and the output is a + LN(b); float64, 1e-12."""
  cfg = nt.Config(arch="residual", d=8, n=4, L=3, dtype="float64")
  post, residual = architectures.get("post"), architectures.get("residual")
  with jax.enable_x64(True):
    p_key, d_key = jax.random.key(0), jax.random.key(1)
    x = sampling.inputs(cfg, d_key).x
    state, a, b = residual.init(x), x, x
    for l in range(1, cfg.L + 1):
      p = sampling.layer_params(cfg, p_key, l)
      state = residual.layer(p, state, l, cfg.L, cfg)
      attn = layers.attention(a, p, None)
      a3 = layers.layer_norm(a + attn, cfg.eps)
      f = layers.ffn(a3, p, None)
      b = b + attn + f
      a = post.layer(p, a, l, cfg.L, cfg)
      np.testing.assert_allclose(state[0], a, rtol=1e-12)
      np.testing.assert_allclose(state[1], b, rtol=1e-12)
    np.testing.assert_allclose(residual.final(state, cfg.eps), a + layers.layer_norm(b, cfg.eps), rtol=1e-12)
    np.testing.assert_array_equal(residual.hidden(state), state[1])


def test_mean_field_gap_of_configs_names_the_broken_assumption():
  """theory.mean_field_gap on Configs: None for the theorem's model and for uniform attention with any
  number of heads; a reason for Xavier attention, text inputs, batches and ResiDual."""
  from normtheory import theory

  assert theory.mean_field_gap(nt.Config(d=64, arch="post")) is None
  assert theory.mean_field_gap(nt.Config(d=64, arch="mixln", heads=8)) is None
  for fields, word in [(dict(attention="xavier"), "attention"), (dict(inputs="text", loss="xent"), "text"),
                       (dict(batch=4), "batch"), (dict(arch="residual"), "residual")]:
    assert word in theory.mean_field_gap(nt.Config(d=64, **fields))
  assert theory.mean_field_gap(nt.Config(d=64, batch=4), gradient=False) is None


@pytest.mark.slow
def test_linear_loss_batch_mean_gradient_has_one_over_b_of_the_mean_square():
  """Linear loss, independent zero-mean targets per sequence: E||g_B||² = E||g_1||²/B for the batch-mean
  gradient of the last layer's W2 (the cross-sequence terms vanish). Pre-LN, d = 64, L = 4, B = 4,
  24 seeds: the ratio of mean squares is 4 within 15 % (measured 3.98; its bootstrap sd over seeds is 5 %)."""
  cfg = nt.Config(arch="pre", d=64, L=4, n=8)
  g1 = nt.grad_norms(cfg, seeds=24).grad_norm["W2"][:, -1]
  g4 = nt.grad_norms(nt.Config(arch="pre", d=64, L=4, n=8, batch=4), seeds=24).grad_norm["W2"][:, -1]
  assert (g1**2).mean() / (g4**2).mean() == pytest.approx(4.0, rel=0.15)
