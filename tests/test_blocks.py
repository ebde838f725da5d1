"""The blocks people train today (RMSNorm, DyT, Derf, GELU, SwiGLU, causal attention, RoPE):
their Config fields, CLI flags, store columns and the closed-form properties of their layers.

The engine's gradient norms for these blocks are checked against Flax's own layers in
``tests/test_flax_blocks.py``; here the fast checks: bad values refused, presets, defaults
bit for bit, the causal mask's 1/i weights, RoPE's relative-position property.

References:
  Zhang & Sennrich 2019 (RMSNorm); Zhu et al. 2025, arXiv:2503.10622, Eq. (2) (DyT);
  Chen et al. 2025, arXiv:2512.10938, Eq. (10) (Derf); Shazeer 2020 (SwiGLU);
  Su et al. 2021, arXiv:2104.09864, Eq. (34) (RoPE); Vaswani et al. 2017, Section 3.2.3 (mask).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import normtheory as nt
from normtheory import cli, engine, layers, reference, sampling, schema
from normtheory.config import layer_param_names, reported_params


@pytest.mark.parametrize(
    "fields, named, allowed",
    [
        ({"norm": "batchnorm"}, "norm", "layernorm, rmsnorm, dyt, derf"),
        ({"norm": "dyt", "arch": "sandwich"}, "norm", "post or pre"),
        ({"norm": "derf", "alpha0": 0.0}, "alpha0", "> 0"),
        ({"norm": "dyt", "alpha0": -0.5}, "alpha0", "> 0"),
        ({"ffn": "glu"}, "ffn", "relu, gelu, swiglu"),
        ({"causal": 1}, "causal", "bool"),
        ({"positions": "alibi"}, "positions", "none, sinusoidal, rope"),
        ({"positions": "rope"}, "positions", "attention='xavier'"),
        ({"positions": "rope", "attention": "xavier", "d": 6, "heads": 2}, "positions", "even"),
        ({"positions": "sinusoidal"}, "positions", "inputs='text'"),
    ],
)
def test_bad_block_fields_raise_value_error_naming_the_field(fields, named, allowed):
  """Each invalid block field, or a combination that cannot be built, raises ValueError naming the field."""
  with pytest.raises(ValueError) as info:
    nt.Config(**fields)
  assert named in str(info.value) and allowed in str(info.value)


def test_defaults_are_the_2020_block_and_swiglu_keeps_the_parameter_count():
  """The defaults are the theorem's block; SwiGLU's width round(2d/3) gives its three matrices the 2d² of
  the d×d ReLU FFN; text inputs keep their sinusoidal positions unless told otherwise; the reported params."""
  cfg = nt.Config()
  assert (cfg.norm, cfg.ffn, cfg.causal, cfg.positions, cfg.d_ff) == ("layernorm", "relu", False, "none", 64)
  assert nt.Config(inputs="text", loss="xent").positions == "sinusoidal"
  for d in (64, 96, 512):
    swiglu = nt.Config(d=d, ffn="swiglu")
    shapes = sampling.weight_shapes(swiglu)
    assert sum(i * o for k, (i, o) in shapes.items() if k in ("W1", "W2", "W3")) == pytest.approx(2 * d * d, rel=0.01)
  assert layer_param_names(cfg) == nt.PARAM_NAMES
  dyt = nt.Config(norm="dyt", ffn="swiglu")
  assert layer_param_names(dyt) == (*nt.PARAM_NAMES, "W3", "dyt1_alpha", "dyt1_gamma", "dyt1_beta",
                                    "dyt2_alpha", "dyt2_gamma", "dyt2_beta")
  assert "derf1_shift" in reported_params(nt.Config(norm="derf"))


def test_presets_llama_and_dyt_only_set_fields_and_explicit_flags_win(tmp_path):
  """--preset llama is Pre, RMSNorm, SwiGLU, causal, RoPE, Xavier attention, text; --preset dyt the same with
  DyT; explicit flags win (--arch, --norm, --no-causal); nothing is written by parsing."""
  out = ["--out", str(tmp_path / "x")]
  args, axes = cli.parse(["--preset", "llama", "--d", "64", *out])
  cfg = dataclasses.replace(cli.base_config(args, axes), arch=axes["arch"][0])
  assert axes["arch"] == ["pre"]
  assert (cfg.norm, cfg.ffn, cfg.causal, cfg.positions, cfg.attention, cfg.inputs, cfg.loss) == (
      "rmsnorm", "swiglu", True, "rope", "xavier", "text", "xent")
  args, axes = cli.parse(["--preset", "dyt", "--arch", "post,pre", "--no-causal", *out])
  assert (args.norm, args.causal, axes["arch"]) == ("dyt", False, ["post", "pre"])
  args, axes = cli.parse(["--preset", "dyt", "--norm", "derf", "--alpha0", "0.2", *out])
  assert (args.norm, args.alpha0) == ("derf", 0.2)
  args, axes = cli.parse(out)
  assert (args.norm, args.ffn, args.causal, args.positions, axes["arch"]) == ("layernorm", "relu", False, None,
                                                                              ["post", "pre"])
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "flag_args, flag",
    [
        (["--norm", "batchnorm"], "--norm"),
        (["--norm", "dyt", "--arch", "post,sandwich"], "--norm"),
        (["--norm", "dyt", "--alpha0", "0"], "--alpha0"),
        (["--ffn", "glu"], "--ffn"),
        (["--positions", "alibi"], "--positions"),
        (["--positions", "rope"], "--positions"),
        (["--positions", "rope", "--attention", "xavier", "--d", "6", "--heads", "2"], "--positions"),
        (["--positions", "sinusoidal"], "--positions"),
        (["--preset", "llama", "--attention", "uniform"], "--positions"),
    ],
)
def test_bad_block_flags_exit_2_with_one_line_naming_the_flag(tmp_path, stderr_line, flag_args, flag):
  """Each bad block flag or impossible combination: exit 2, one stderr line naming the flag, nothing written."""
  out = tmp_path / "never"
  assert cli.main([*flag_args, "--out", str(out)]) == 2
  assert flag in stderr_line()
  assert not out.exists()


def test_old_store_rows_get_the_block_columns_defaults():
  """A table without the block columns (a store written before them) reads as the 2020 block: layernorm,
  relu, causal 0, and positions sinusoidal exactly where the inputs were text (their old code)."""
  old = pd.DataFrame({"arch": ["pre", "pre"], "loss": ["xent", "xent"], "d": ["8", "8"], "L": ["1", "1"],
                      "n": ["4", "4"], "d_ff": ["8", "8"], "batch": ["1", "1"], "attention": ["uniform"] * 2,
                      "heads": ["1", "1"], "inputs": ["gaussian", "text"], "seed": ["0", "0"], "layer": ["1", "1"],
                      "param": ["W2", "W2"], "grad_norm": ["1.0", "2.0"]})
  frame = schema.with_defaults(old, schema.GRAD_FILE)
  assert list(frame.columns) == list(schema.GRAD_COLUMNS)
  assert list(frame["norm"]) == ["layernorm"] * 2 and list(frame["ffn"]) == ["relu"] * 2
  assert list(frame["positions"]) == ["none", "sinusoidal"] and list(frame["causal"]) == [0, 0]
  text_cfg = nt.Config(inputs="text", loss="xent")
  assert schema.cell_of(text_cfg)["positions"] == "sinusoidal" and schema.cell_of(text_cfg)["causal"] == 0


def test_the_checked_in_old_store_loads_with_the_block_defaults():
  """tests/data/store_8807192 (written before the block columns) loads: every row is the 2020 block."""
  import pathlib
  frames = nt.load(pathlib.Path(__file__).parent / "data" / "store_8807192")
  assert set(frames.grad["norm"]) == {"layernorm"} and set(frames.grad["ffn"]) == {"relu"}
  assert set(frames.grad["causal"]) == {0}


@pytest.mark.slow
def test_causal_uniform_attention_averages_the_first_i_positions():
  """Under W_Q = W_K = 0 with the causal mask, position i's attention output is the mean of x_1..x_i times
  W_V W_O (weights exactly 1/i), for every head count; without the mask every position gets the mean of all n."""
  with jax.enable_x64(True):
    x_nxd = jax.random.normal(jax.random.key(0), (5, 8), jnp.float64)
    p = sampling.layer_params(nt.Config(d=8, dtype="float64"), jax.random.key(1), 1)
    vo_dxd = p["W_V"] @ p["W_O"]
    running_nxd = jnp.cumsum(x_nxd, 0) / jnp.arange(1, 6)[:, None]
    for heads in (1, 4):
      np.testing.assert_allclose(layers.attention(x_nxd, p, None, heads, causal=True), running_nxd @ vo_dxd, rtol=1e-12)
    np.testing.assert_allclose(layers.attention(x_nxd, p, None), np.broadcast_to(x_nxd.mean(0) @ vo_dxd, (5, 8)),
                               rtol=1e-12)


@pytest.mark.slow
def test_rope_preserves_norms_and_makes_scores_depend_on_offsets_only():
  """RoPE rotates each pair: norms are kept, and the score of a query at position m and a key at m' is a
  function of m - m' (RoFormer's Eq. (34) property): shifting both sequences by one position keeps it."""
  with jax.enable_x64(True):
    v_nxhxc = jax.random.normal(jax.random.key(2), (2, 6, 2, 8), jnp.float64)  # batch, n, heads, c
    rotated = layers.rope(v_nxhxc)
    np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(v_nxhxc, axis=-1), rtol=1e-12)
    q_c, k_c = v_nxhxc[0, 0, 0], v_nxhxc[1, 0, 1]
    def score(m, m2, n=6):
      q = jnp.zeros((n, 1, 8), jnp.float64).at[m, 0].set(q_c)
      k = jnp.zeros((n, 1, 8), jnp.float64).at[m2, 0].set(k_c)
      return float(layers.rope(q)[m, 0] @ layers.rope(k)[m2, 0])
    assert score(3, 1) == pytest.approx(score(4, 2), rel=1e-12)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
    np.testing.assert_allclose(rotated[:, 0], v_nxhxc[:, 0], rtol=1e-15)  # position 0 is not rotated


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["rmsnorm", "dyt", "derf"])
def test_pointwise_and_rms_norms_are_their_equations(norm):
  """RMSNorm is x / sqrt(mean(x²) + eps); DyT at init tanh(alpha0 x); Derf at init erf(alpha0 x); the reported
  Jacobian norms equal the largest singular value of jax.jacfwd of the norm."""
  from scipy.special import erf
  with jax.enable_x64(True):
    cfg = nt.Config(d=8, norm=norm, alpha0=0.7, dtype="float64")
    x_nxd = jax.random.normal(jax.random.key(3), (3, 8), jnp.float64) * 2.0 + 0.3
    p = sampling.norm_params(cfg, 2)
    got = layers.normalize(x_nxd, cfg, None, p, 2)
    x = np.asarray(x_nxd)
    expected = {"rmsnorm": x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.eps), "dyt": np.tanh(0.7 * x),
                "derf": erf(0.7 * x)}[norm]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    for row in x_nxd:
      jac = jax.jacfwd(lambda r: layers.normalize(r, cfg, None, p, 2))(row)
      assert float(layers.norm_jacobian_norm(row, cfg)) == pytest.approx(np.linalg.svd(np.asarray(jac))[1][0], rel=1e-10)


ENGINE_SETTINGS = {
    "derf-swiglu-causal-rope": dict(norm="derf", alpha0=0.8, ffn="swiglu", causal=True, attention="xavier",
                                    positions="rope", heads=2),
    "rmsnorm-gelu": dict(norm="rmsnorm", ffn="gelu"),
    "dyt-causal": dict(norm="dyt", causal=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("extra", list(ENGINE_SETTINGS.values()), ids=list(ENGINE_SETTINGS))
def test_engine_equals_the_reference_model_for_every_new_field_value(extra):
  """Post and Pre, float64: the fast engine's per-layer gradient norms (W3 and the DyT/Derf parameters
  included, the final norm's at layer L + 1) equal jax.grad of the NNX model's parameter pytree to 1e-10."""
  base = nt.Config(d=8, n=4, L=2, dtype="float64", **extra)
  measured = engine.measure_archs(base, ("post", "pre"), [2], np.arange(2), jax.random.key(3))
  for arch in ("post", "pre"):
    cfg = dataclasses.replace(base, arch=arch)
    fast, ref = measured[arch][2], reference.measure(cfg, np.arange(2), jax.random.key(3))
    assert set(fast.grad_norms) == set(ref.grad_norms) == set(layer_param_names(cfg))
    assert set(fast.final_grad_norms) == set(ref.final_grad_norms)
    assert bool(fast.final_grad_norms) == (arch == "pre" and base.norm in ("dyt", "derf"))
    for name in fast.grad_norms:
      np.testing.assert_allclose(fast.grad_norms[name], ref.grad_norms[name], rtol=1e-10, atol=1e-14, err_msg=name)
    for name in fast.final_grad_norms:
      np.testing.assert_allclose(fast.final_grad_norms[name], ref.final_grad_norms[name], rtol=1e-10)
    np.testing.assert_allclose(fast.sq_norms, ref.sq_norms, rtol=1e-12)
    np.testing.assert_allclose(fast.ln_jacobian, ref.ln_jacobian, rtol=1e-12)


@pytest.mark.slow
def test_a_dyt_cell_stores_its_norm_parameters_and_final_norm_at_layer_L_plus_1():
  """The tidy grad table of a Pre-DyT cell holds W1..W3 and dyt{1,2}_{alpha,gamma,beta} at layers 1..L and
  the final DyT's dyt1_* at layer L + 1, with the block's cell columns."""
  frames = nt.measure_grid("pre", 8, 2, seeds=2, n=4, norm="dyt", ffn="swiglu")
  grad = frames.grad
  assert set(grad["norm"]) == {"dyt"} and set(grad["ffn"]) == {"swiglu"} and set(grad["d_ff"]) == {5}
  final = grad[grad["layer"] == 3]
  assert set(final["param"]) == {"dyt1_alpha", "dyt1_gamma", "dyt1_beta"}
  assert set(grad[grad["layer"] == 2]["param"]) == set(layer_param_names(nt.Config(norm="dyt", ffn="swiglu")))
  assert (final["grad_norm"] > 0).all()


def test_forest_figure_draws_a_geometric_decay_as_an_arrow_at_gamma_max():
  """fig_assumptions(gamma_max=1.5): the γ axis ends at 1.5 and an estimate beyond it (Post with DyT) is an
  annotation with its value and CI instead of a point; without gamma_max the axis holds the point."""
  from normtheory import plot
  est = lambda v: {"value": v, "ci": [v - 0.1, v + 0.1]}
  fits = {"series": [{"arch": "post", "power_law": {"gamma": est(4.0), "alpha": est(1.0)}},
                     {"arch": "pre", "power_law": {"gamma": est(0.5), "alpha": est(1.0)}}]}
  fig = plot.fig_assumptions([("dyt", fits)], gamma_max=1.5)
  ax = fig.axes[0]
  assert ax.get_xlim()[1] == 1.5
  assert [t.get_text() for t in ax.texts] == ["4 [3.9, 4.1]"]
  assert plot.fig_assumptions([("dyt", fits)]).axes[0].get_xlim()[1] > 4.0
