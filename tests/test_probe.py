"""normtheory.probe: exact gradient norms of a user's model, its layer layout, store, fits and words.

References:
  Xiong et al. 2020, Section 3.3 and Theorem 1 (the measured ``||dLoss/dW^l||_F`` and
    the two depth behaviours the classification names).
"""

import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402

import normtheory as nt  # noqa: E402
from normtheory import fit, losses, plot, probe, sampling, schema  # noqa: E402
from normtheory.probe import plot as probe_plot  # noqa: E402
from normtheory.model import Transformer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
D, L, N = 4, 3, 5  # the toy model: width, depth, positions (D != L, so no leading axis is ambiguous)


# --------------------------------------------------- normtheory's own Transformer


def _own_model(cfg, taps: bool):
  """make_model, make_batch, loss_fn of normtheory's NNX Transformer with the engine's keys."""

  def loss_fn(model, batch):
    x_nxd, y_nxd = batch
    if not taps:
      return losses.linear_loss(model(x_nxd)[0], y_nxd, {})
    graphdef, state = nnx.split(model.layers)
    states = []
    for i in range(cfg.L):  # the layers one by one, to tap the state entering each
      states.append(x_nxd)
      x_nxd = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))(x_nxd, i + 1)
    return losses.linear_loss(model.arch.final(x_nxd, cfg.eps), y_nxd, {}), states

  return lambda k: Transformer(cfg, k), lambda k: sampling.inputs(cfg, k), loss_fn


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["post", "pre"])
def test_probe_of_normtheorys_transformer_equals_the_engine_for_every_layer_and_weight(arch):
  """float64: the probe's jax.grad norms equal the engine's a^T delta norms to 1e-10, every (seed, layer, weight)."""
  cfg = nt.Config(arch=arch, d=8, L=3, n=4, dtype="float64")
  engine = nt.grad_norms(cfg, seeds=3, key=0, method="engine")
  with jax.enable_x64(True):
    frame = probe.grad_norms(*_own_model(cfg, taps=False), seeds=3, key=0, num_layers=cfg.L)
  assert set(frame["param"]) == {*nt.PARAM_NAMES, "b1", "b2"} and frame["layer"].notna().all()
  for name in nt.PARAM_NAMES:
    got_SxL = frame[frame["param"] == name].pivot(index="seed", columns="layer", values="grad_norm").to_numpy()
    want_SxL = engine.grad_norm[name]
    np.testing.assert_allclose(got_SxL, want_SxL, rtol=1e-10, atol=1e-10 * np.abs(want_SxL).max() + 1e-300)
  np.testing.assert_allclose(frame.groupby("seed")["loss"].first(), engine.loss, rtol=1e-10)


@pytest.mark.slow
def test_residual_taps_give_the_engines_hidden_state_norms():
  """loss_fn returning (loss, states entering each layer) adds sq_norm = ||x_l||^2/n, equal to the engine's."""
  cfg = nt.Config(arch="pre", d=8, L=3, n=4, dtype="float64")
  engine = nt.grad_norms(cfg, seeds=2, key=0, method="engine")
  with jax.enable_x64(True):
    frame = probe.grad_norms(*_own_model(cfg, taps=True), seeds=2, key=0, num_layers=cfg.L)
  w2 = frame[frame["param"] == "W2"]
  np.testing.assert_allclose(w2.pivot(index="seed", columns="layer", values="sq_norm"), engine.sq_norm[:, :cfg.L],
                             rtol=1e-10)  # the engine's column L + 1 (after the last layer) is no layer's input
  np.testing.assert_allclose(w2.pivot(index="seed", columns="layer", values="grad_norm"), engine.grad_norm["W2"],
                             rtol=1e-10)


# ------------------------------------------------------------- layout (paths)


def _shapes(tree):
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), tree, is_leaf=lambda x: isinstance(x, tuple))


def _by_path(leaves):
  return {leaf.path: (leaf.layer, leaf.param, leaf.axis) for leaf in leaves}


def test_layout_of_a_list_of_layers_numbers_them_from_1_and_reports_arrays_outside_the_stack():
  """layers/i/... -> layer i + 1 with param = the path inside the layer; embedding and read-out: no layer."""
  params = _shapes({"embed": {"embedding": (10, D)},
                    "layers": [{"mlp": {"w2": {"kernel": (D, D)}}, "ln": {"scale": (D,)}} for _ in range(L)],
                    "ln_f": {"scale": (D,)}, "head": {"kernel": (D, 10)}})
  got = _by_path(probe.layout(params))
  assert got["layers/0/mlp/w2/kernel"] == (1, "mlp/w2/kernel", None)
  assert got["layers/2/ln/scale"] == (3, "ln/scale", None)
  for path in ("embed/embedding", "ln_f/scale", "head/kernel"):
    assert got[path] == (None, path, None)


def test_layout_of_a_dict_of_layers_ranks_integer_keys_numerically():
  """Dict keys "0".."10": "10" is layer 11 (numeric rank, not string order); a dict key "3" counts as an index."""
  params = _shapes({"blocks": {str(i): {"w": (D, D)} for i in range(11)}, "out": {"w": (D,)}})
  got = _by_path(probe.layout(params))
  assert got["blocks/10/w"] == (11, "w", None) and got["blocks/2/w"] == (3, "w", None)
  assert got["out/w"] == (None, "out/w", None)


def test_layout_of_linen_names_prefers_the_stack_with_most_layers_over_a_readout_dense_0():
  """Linen's params/layers_<i>/Dense_0/... is the stack; the top-level Dense_0 read-out is outside it."""
  params = _shapes({"params": {**{f"layers_{i}": {"Dense_0": {"kernel": (D, D)}, "Dense_1": {"kernel": (D, D)}}
                                  for i in range(L)}, "Dense_0": {"kernel": (D, 7)}}})
  got = _by_path(probe.layout(params))
  assert got["params/layers_1/Dense_1/kernel"] == (2, "Dense_1/kernel", None)
  assert got["params/Dense_0/kernel"] == (None, "params/Dense_0/kernel", None)


def test_layout_num_layers_picks_the_stack_of_that_depth():
  """Two lists (a 2-entry stem inside the embedding, 4 blocks): num_layers=4 and the default both pick the blocks;
  num_layers=2 picks the other list."""
  params = _shapes({"stem": {"layers": [{"w": (D, D)}, {"w": (D, D)}]}, "blocks": [{"w": (D, D)} for _ in range(4)]})
  assert _by_path(probe.layout(params))["blocks/3/w"] == (4, "w", None)
  assert _by_path(probe.layout(params, num_layers=4))["stem/layers/1/w"] == (None, "stem/layers/1/w", None)
  assert _by_path(probe.layout(params, num_layers=2))["stem/layers/1/w"] == (2, "w", None)


def test_layout_of_stacked_layers_needs_the_depth_or_an_axis_hint():
  """Stacked arrays: the subtree whose arrays all have length num_layers along axis 0 (or along the axis hint)."""
  stacked = _shapes({"embed": (10, D), "layers": {"attn": {"w": (L, D, D)}, "b": (L, D)}, "ln_f": {"scale": (D,)}})
  got = _by_path(probe.layout(stacked, num_layers=L))
  assert got["layers/attn/w"] == (None, "attn/w", 0) and got["layers/b"] == (None, "b", 0)
  assert got["embed"] == (None, "embed", None) and got["ln_f/scale"] == (None, "ln_f/scale", None)
  axis1 = _shapes({"embed": (10, D), "layers": {"w": (D, L, D), "b": (D, L)}})
  assert _by_path(probe.layout(axis1, axis=1))["layers/w"] == (None, "w", 1)
  with pytest.raises(probe.LayoutError, match="num_layers="):
    probe.layout(stacked)  # stacked layers are not guessed without the depth


def test_layout_without_any_stack_raises_naming_what_was_looked_for():
  """A plain MLP has no stack: LayoutError says what was looked for, what was found and how to override."""
  mlp = _shapes({"w": (D, D), "b": (D,)})
  with pytest.raises(probe.LayoutError) as error:
    probe.layout(mlp)
  message = str(error.value)
  for phrase in ("integer", "_<integer>", "stacked layers", "num_layers=", "layer_of=", "w (4, 4)"):
    assert phrase in message
  with pytest.raises(probe.LayoutError, match=r"blocks/<i> with 3"):
    probe.layout(_shapes({"blocks": [{"w": (D, D)} for _ in range(3)]}), num_layers=5)


def test_layout_of_overrides_the_rules():
  """layer_of(path) -> None | (layer, param) | (STACKED, param) decides alone."""
  params = _shapes({"enc": {"a": (D, D), "b": (D, D)}, "dec": {"w": (L, D)}, "head": (D,)})

  def layer_of(path):
    return {"enc/a": (1, "w"), "enc/b": (2, "w"), "dec/w": (probe.STACKED, "dec")}.get(path)

  got = _by_path(probe.layout(params, layer_of=layer_of))
  assert got == {"enc/a": (1, "w", None), "enc/b": (2, "w", None), "dec/w": (None, "dec", 0),
                 "head": (None, "head", None)}


# ------------------------------------------- one model in five layouts, end to end


def _weights(key):
  k = jax.random.split(key, 4)
  return {"inp": jax.random.normal(k[0], (2, D)), "w": jax.random.normal(k[1], (L, D, D)) / np.sqrt(D),
          "b": 0.1 * jax.random.normal(k[2], (L, D)), "out": jax.random.normal(k[3], (D,))}


def _block(w_dxd, b_d, x_nxd):
  return x_nxd + jnp.tanh(x_nxd @ w_dxd + b_d)


class _Block(nnx.Module):

  def __init__(self, w, b):
    self.w, self.b = nnx.Param(w), nnx.Param(b)

  def __call__(self, x_nxd):
    return _block(self.w[...], self.b[...], x_nxd)


class _Net(nnx.Module):
  """The toy model with its blocks in an nnx.List, an nnx.Dict, or stacked by nnx.vmap and run by nnx.scan."""

  def __init__(self, key, how):
    p = _weights(key)
    self.how = how
    self.inp, self.out = nnx.Param(p["inp"]), nnx.Param(p["out"])
    blocks = [_Block(p["w"][i], p["b"][i]) for i in range(L)]
    if how == "list":
      self.layers = nnx.List(blocks)
    elif how == "dict":
      self.layers = nnx.Dict({str(i): block for i, block in enumerate(blocks)})
    else:
      self.layers = nnx.vmap(_Block, in_axes=(0, 0), out_axes=0)(p["w"], p["b"])

  def __call__(self, x_nx2):
    h_nxd = x_nx2 @ self.inp[...]
    if self.how == "scan":
      @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))
      def run(block, h_nxd):
        return block(h_nxd), h_nxd

      h_nxd, taps = run(self.layers, h_nxd)
    else:
      taps = []
      for i in range(L):
        taps.append(h_nxd)
        h_nxd = self.layers[i if self.how == "list" else str(i)](h_nxd)
    return (h_nxd @ self.out[...]).mean(), taps


def _apply_list(params, x_nx2):
  h_nxd, taps = x_nx2 @ params["inp"], []
  for layer in params["layers"]:
    taps.append(h_nxd)
    h_nxd = _block(layer["w"], layer["b"], h_nxd)
  return (h_nxd @ params["out"]).mean(), taps


def _apply_stacked(params, x_nx2):
  step = lambda h_nxd, layer: (_block(layer["w"], layer["b"], h_nxd), h_nxd)
  h_nxd, taps_Lxnxd = jax.lax.scan(step, x_nx2 @ params["inp"], params["layers"])
  return (h_nxd @ params["out"]).mean(), taps_Lxnxd


def _plain(key, how):
  """(apply_fn, params) of the toy model in plain JAX: a list of layer dicts, or stacked and run by lax.scan."""
  p = _weights(key)
  if how == "plain_list":
    layers = [{"w": p["w"][i], "b": p["b"][i]} for i in range(L)]
    return _apply_list, {"inp": p["inp"], "out": p["out"], "layers": layers}
  return _apply_stacked, {"inp": p["inp"], "out": p["out"], "layers": {"w": p["w"], "b": p["b"]}}


def _toy_probe(how, **kwargs):
  make = (lambda k: _Net(k, how)) if how in ("list", "dict", "scan") else (lambda k: _plain(k, how))
  with jax.enable_x64(True):
    return probe.grad_norms(make, lambda k: jax.random.normal(k, (N, 2)), lambda m, x: m(x), seeds=3, key=0,
                            **kwargs)


@pytest.fixture(scope="module")
def toy_list():
  return _toy_probe("list")


@pytest.mark.slow
def test_probe_of_the_list_model_equals_jax_grad_taken_by_hand(toy_list):
  """Every row equals ||jax.grad|| of the same weights and batch (keys fold_in(key, s), params 0 / data 1)."""
  with jax.enable_x64(True):
    for s in range(3):
      seed_key = sampling.seed_keys(nt.measure.as_key(0), [s])[0]
      p, x_nx2 = _weights(sampling.params_key(seed_key)), jax.random.normal(sampling.data_key(seed_key), (N, 2))
      g = jax.grad(lambda p: _apply_stacked({"inp": p["inp"], "out": p["out"], "layers": {"w": p["w"], "b": p["b"]}},
                                            x_nx2)[0])(p)
      rows = toy_list[toy_list["seed"] == s]
      for l in range(1, L + 1):
        for name in ("w", "b"):
          got = rows.loc[(rows["param"] == name) & (rows["layer"] == l), "grad_norm"].item()
          assert got == pytest.approx(float(jnp.linalg.norm(g[name][l - 1])), rel=1e-12)
      assert rows.loc[rows["param"] == "inp", "grad_norm"].item() == pytest.approx(float(jnp.linalg.norm(g["inp"])),
                                                                                  rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["dict", "scan", "plain_list", "plain_scan"])
def test_every_layout_of_the_same_weights_gives_the_same_rows(toy_list, how):
  """nnx.Dict, nnx.vmap/nnx.scan, a plain-JAX list and a lax.scan-stacked pytree: same (seed, layer, param) rows as
  the nnx.List model (float64, 1e-12), incl. sq_norm from list and stacked taps; inp/out outside the stack."""
  got = _toy_probe(how, num_layers=L)
  key = ["seed", "layer", "param"]
  want = toy_list.sort_values(key, ignore_index=True)
  got = got.sort_values(key, ignore_index=True)
  pd.testing.assert_frame_equal(got[key], want[key])
  for column in ("grad_norm", "sq_norm", "loss"):
    np.testing.assert_allclose(got[column], want[column], rtol=1e-12)
  assert set(got.loc[got["layer"].isna(), "param"]) == {"inp", "out"}


@pytest.mark.slow
def test_chunks_do_not_change_the_numbers(toy_list):
  """chunk=2 over 3 seeds (the last chunk padded) gives the rows of one call over all seeds."""
  chunked = _toy_probe("list", chunk=2)
  np.testing.assert_allclose(chunked["grad_norm"], toy_list["grad_norm"], rtol=1e-12)
  assert (chunked["seed"] == toy_list["seed"]).all() and (chunked["path"] == toy_list["path"]).all()


@pytest.mark.slow
def test_bad_model_or_loss_is_refused():
  """make_model must return a Module or (apply_fn, params); loss_fn a scalar."""
  batch = lambda k: jnp.ones((N, 2))
  with pytest.raises(TypeError, match="apply_fn, params"):
    probe.grad_norms(lambda k: {"w": jnp.ones((D, D))}, batch, lambda m, x: 0.0, seeds=1)
  with pytest.raises(ValueError, match="scalar"):
    probe.grad_norms(lambda k: _plain(k, "plain_list"), batch, lambda m, x: m(x)[1][0], seeds=1)


# ------------------------------------------------------------ non-finite losses


class _Normed(nnx.Module):
  """Blocks of nnx.LayerNorm(epsilon=0): a batch of zeros gives 0/0 = NaN, as in a badly initialised model."""

  def __init__(self, L, rngs):
    self.layers = nnx.List([nnx.LayerNorm(D, epsilon=0.0, rngs=rngs) for _ in range(L)])
    self.head = nnx.Linear(D, 1, rngs=rngs)

  def __call__(self, x_nxd):
    for layer in self.layers:
      x_nxd = x_nxd + layer(x_nxd)
    return self.head(x_nxd).mean()


def _zero_half(d, key):
  """A batch that is all zeros (-> NaN loss) for about half of the seeds."""
  return jax.random.normal(key, (N, d)) * (jax.random.uniform(jax.random.fold_in(key, 7)) > 0.5)


@pytest.mark.slow
def test_a_model_whose_loss_is_nan_at_init_is_flagged_and_counted_not_crashed_on():
  """Every seed NaN: every row flagged, the summary says 3 of 3; fit_groups names no behaviour."""
  frame = probe.grad_norms(lambda k: _Normed(2, nnx.Rngs(k)), lambda k: jnp.zeros((N, D)), lambda m, x: m(x), seeds=3)
  assert frame["loss"].isna().all() and frame["nonfinite"].all()
  assert "non-finite loss: 3 of 3 seeds" in probe.summary(frame)


@pytest.mark.slow
def test_seeds_with_a_nan_loss_are_flagged_counted_and_left_out_of_the_fits():
  """Rows flagged exactly for the seeds whose batch is zero; the fits use the other seeds and say how many were out."""
  seeds = 6
  frame = probe.depth_sweep(lambda L, d, k: _Normed(L, nnx.Rngs(k)), [1, 2], [D], _zero_half,
                            lambda m, x: m(x), seeds=seeds, cell={"arch": "normed"})
  keys_S = sampling.seed_keys(nt.measure.as_key(0), np.arange(seeds))
  zero_S = np.array([float(jax.random.uniform(jax.random.fold_in(sampling.data_key(k), 7))) <= 0.5 for k in keys_S])
  assert 0 < zero_S.sum() < seeds  # the test needs both kinds
  flagged = frame.groupby("seed")["nonfinite"].all().to_numpy()
  np.testing.assert_array_equal(flagged, zero_S)
  assert not frame.loc[~frame["seed"].isin(np.flatnonzero(zero_S)), "nonfinite"].any()
  groups = probe.fit_groups(frame, n_boot=50)
  head = groups[groups["param"] == "head/kernel"].iloc[0]
  assert head["nonfinite_seeds"] == zero_S.sum() and np.isfinite(head["gamma"])
  text = probe.report(groups, frame)
  assert f"WARNING: {2 * zero_S.sum()} (d, L, seed) samples have a non-finite loss" in text


# ---------------------------------------------------------------------- store


def _toy_sweep(out, seeds, cell, calls=None):
  def make_model(L_, d, k):
    if calls is not None:
      calls.append((L_, d))
    return _plain(k, "plain_list")

  return probe.depth_sweep(make_model, [L], [D], lambda d, k: jax.random.normal(k, (N, 2)), lambda m, x: m(x),
                           seeds=seeds, cell=cell, out=out)


@pytest.mark.slow
def test_depth_sweep_stores_resumes_and_adds_only_new_seeds(tmp_path):
  """probe_norms/ = cell columns, d, L, the probe's columns, one Parquet part per (d, L) measured; a rerun
  measures nothing and writes nothing, more seeds add a part of only the new; a store with other cell columns
  is refused (StoreError naming the folder) and left as it was."""
  calls = []
  first = _toy_sweep(tmp_path, 2, {"model": "toy"}, calls)
  folder = tmp_path / "probe_norms"
  written = sorted(folder.iterdir())
  assert len(written) == 1 and pq.read_schema(written[0]).names == ["model", "d", "L", *schema.PROBE_COLUMNS, "sq_norm"]
  stored = probe.read_probe(tmp_path)
  pd.testing.assert_frame_equal(stored, first, check_dtype=False)
  assert stored["layer"].dtype == "Int64" and stored["layer"].isna().sum() == 2 * 2  # inp, out per seed
  n_calls = len(calls)
  assert len(_toy_sweep(tmp_path, 2, {"model": "toy"}, calls)) == len(first) and len(calls) == n_calls
  assert sorted(folder.iterdir()) == written
  more = _toy_sweep(tmp_path, 3, {"model": "toy"}, calls)
  assert sorted(more["seed"].unique()) == [0, 1, 2] and len(calls) > n_calls
  pd.testing.assert_frame_equal(more[more["seed"] < 2].reset_index(drop=True), first, check_dtype=False)
  added = sorted(set(folder.iterdir()) - set(written))
  assert len(added) == 1 and set(pq.read_table(added[0])["seed"].to_pylist()) == {2}
  before = {p: p.read_bytes() for p in folder.iterdir()}
  with pytest.raises(schema.StoreError, match="probe_norms"):
    _toy_sweep(tmp_path, 1, {"arch": "toy"}, calls)
  assert {p: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_an_old_probe_csv_keeps_loading_and_new_rows_go_to_parts(tmp_path):
  """A probe_norms.csv written before Parquet reads as before; a sweep on it skips its stored seeds and adds the
  new ones as a part beside it (the CSV is kept as it was)."""
  calls = []
  first = _toy_sweep(tmp_path / "new", 2, {"model": "toy"}, calls)
  first.to_csv(tmp_path / schema.PROBE_FILE, index=False)
  text = (tmp_path / schema.PROBE_FILE).read_text()
  pd.testing.assert_frame_equal(probe.read_probe(tmp_path), first, check_dtype=False)
  more = _toy_sweep(tmp_path, 3, {"model": "toy"}, calls)
  assert (tmp_path / schema.PROBE_FILE).read_text() == text
  assert set(pq.read_table(next((tmp_path / "probe_norms").iterdir()))["seed"].to_pylist()) == {2}
  pd.testing.assert_frame_equal(probe.read_probe(tmp_path), more, check_dtype=False)


def test_bad_cell_names_and_unreadable_stores_are_refused(tmp_path):
  """A cell column named d: ValueError; a CSV without the probe's columns: StoreError naming what it needs."""
  with pytest.raises(ValueError, match="reserved"):
    _toy_sweep(None, 1, {"d": 3})
  (tmp_path / schema.PROBE_FILE).write_text("a,b\n1,2\n")
  with pytest.raises(schema.StoreError, match="needs seed"):
    probe.read_probe(tmp_path)


# ------------------------------------------------------------- fits and words


def _synthetic(gammas: dict, alpha=1.0, seeds=6, noise=0.3, rng=0):
  """A probe table whose last-layer norm is a_s d^alpha L^-gamma exactly, a_s a per-seed factor shared by all cells."""
  rng = np.random.default_rng(rng)
  a_S = np.exp(noise * rng.standard_normal(seeds))
  rows = []
  for model, gamma in gammas.items():
    for d in (16, 32):
      for L_ in (2, 4, 8, 16):
        for s in range(seeds):
          g = a_S[s] * d**alpha * L_**-gamma
          rows.append({"model": model, "d": d, "L": L_, "seed": s, "path": f"layers/{L_ - 1}/w", "layer": L_,
                       "param": "w", "grad_norm": g, "loss": 1.0, "nonfinite": False})
          rows.append({"model": model, "d": d, "L": L_, "seed": s, "path": "head", "layer": pd.NA,
                       "param": "head", "grad_norm": a_S[s] * d, "loss": 1.0, "nonfinite": False})
  frame = pd.DataFrame(rows)
  frame["layer"] = frame["layer"].astype("Int64")
  return frame


def test_fit_groups_recovers_known_exponents_with_paired_ci_and_names_them():
  """g = a_s d L^-gamma: gamma and alpha exact; the seed factor a_s cancels in every paired replicate (CI width
  ~0, where resampling cells independently would not); words follow the bands; the head is flat."""
  groups = probe.fit_groups(_synthetic({"flat": 0.0, "pre": 0.5, "steep": 1.0}), n_boot=200)
  w = groups[groups["param"] == "w"].set_index("model")
  np.testing.assert_allclose(w["gamma"], [0.0, 0.5, 1.0], atol=1e-9)
  np.testing.assert_allclose(w["alpha"], 1.0, atol=1e-9)
  np.testing.assert_allclose(w["gamma_hi"] - w["gamma_lo"], 0.0, atol=1e-9)
  assert list(w["verdict"]) == [probe.POST_LIKE, probe.PRE_LIKE, probe.NEITHER]
  assert w.loc["steep", "reason"] == "falls faster than L^-1/2"
  head = groups[groups["param"] == "head"]
  assert (head["verdict"] == probe.POST_LIKE).all() and not head["in_stack"].any()
  assert "Pre-LN-like" in probe.report(groups)


def test_a_group_that_is_zero_up_to_rounding_is_named_so_and_not_fitted():
  """Norms 1e-9 of the others (a softmax-invariant key bias in float32): no exponent of noise, reason says why."""
  frame = _synthetic({"m": 0.5})
  noise = frame[frame["param"] == "head"].assign(param="key_bias", grad_norm=lambda f: 1e-9 * f["grad_norm"])
  groups = probe.fit_groups(pd.concat([frame, noise], ignore_index=True), n_boot=50).set_index("param")
  assert np.isnan(groups.loc["key_bias", "gamma"]) and groups.loc["key_bias", "verdict"] == probe.NEITHER
  assert groups.loc["key_bias", "reason"].startswith("zero up to float rounding")
  assert groups.loc["w", "verdict"] == probe.PRE_LIKE


@pytest.mark.parametrize("ci, verdict, reason", [
    ((-0.15, 0.15), probe.POST_LIKE, "inside"),
    ((0.35, 0.65), probe.PRE_LIKE, "inside"),
    ((0.1, 0.4), probe.NEITHER, "meets both bands"),
    ((-0.2, -0.1), probe.NEITHER, "crosses the edge"),
    ((0.2, 0.3), probe.NEITHER, "slower than"),
    ((-0.5, -0.2), probe.NEITHER, "grows"),
    ((0.7, 0.9), probe.NEITHER, "faster than"),
    (None, probe.NEITHER, "no depth exponent"),
])
def test_classify_names_a_behaviour_only_when_the_whole_ci_lies_in_its_band(ci, verdict, reason):
  got = probe.classify(ci)
  assert got[0] == verdict and reason in got[1]


def test_grad_table_layout_feeds_normtheory_fit_and_plot():
  """to_grad_table has the grad_norms.csv columns; fit.fit_frame finds the same gamma; the figures draw."""
  frame = _synthetic({"post": 0.0, "pre": 0.5})
  grad = probe.to_grad_table(frame, arch="model")
  assert list(grad.columns) == list(schema.GRAD_COLUMNS) and len(grad) == len(frame) // 2
  fits = fit.fit_frame(grad, n_boot=50, param="w")
  gammas = {s["arch"]: s["power_law"]["gamma"]["value"] for s in fits["series"]}
  assert gammas == pytest.approx({"post": 0.0, "pre": 0.5}, abs=1e-9)
  for fig in (plot.fig_last_layer_vs_depth(grad, fits, param="w"), plot.fig_layer_profile(grad, param="w"),
              probe_plot.fig_exponents(probe.fit_groups(frame, n_boot=50))):
    assert isinstance(fig, Figure) and fig.axes


# -------------------------------------------------------------------- example


@pytest.mark.slow
def test_probe_example_runs_end_to_end_on_a_tiny_grid(tmp_path):
  """experiments/probe_example.py: list and scanned GPTs, both placements, store, report and three figures."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("probe_example", ROOT / "experiments" / "probe_example.py")
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  out = example.main(["--depths", "1,2", "--widths", "8", "--seeds", "2", "--n-boot", "20",
                      "--out", str(tmp_path / "store"), "--figures", str(tmp_path / "figs")])
  groups = out["groups"]
  assert set(zip(groups["arch"], groups["layers"])) == {(a, l) for a in ("post", "pre") for l in ("list", "scan")}
  assert (groups["param"] == example.GROUP).sum() == 4
  assert all(p.exists() for paths in out["figures"].values() for p in paths)
  stored = probe.read_probe(tmp_path / "store")
  assert stored["sq_norm"].notna().any() and set(stored["L"]) == {1, 2}
