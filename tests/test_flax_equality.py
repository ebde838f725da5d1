"""Verification against code nobody here wrote: the same models built from Flax's own layers.

Post-LN and Pre-LN encoders are assembled from ``nnx.MultiHeadAttention`` (H heads,
no biases), ``nnx.LayerNorm``, ``nnx.Linear`` and ``nnx.Embed``, with the read-out
and the loss from ``nnx.Linear`` / ``nnx.Embed.attend`` and optax. Only the wiring
(residuals, where the LayerNorms sit) and the position code are written here, from
Xiong et al.'s Table 1 and Vaswani et al.'s Section 3.5. normtheory's weights and
inputs are loaded into them, ``nnx.grad`` gives every gradient, and every per-layer
gradient norm must equal normtheory's fast engine in float64 to a relative 1e-10.

The attention is called with ``sow_weights=True``, which makes Flax take its generic
``dot_product_attention_weights`` path: without it Flax hands the work to
``jax.nn.dot_product_attention``, whose XLA implementation computes the logits in
float32 (measured here: a relative error of about 6e-8 on a float64 model with
Xavier W_Q, W_K), far above float64 rounding.

References:
  Xiong et al. 2020, Table 1; Vaswani et al. 2017, Sections 3.2.2 and 3.5.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import normtheory as nt
from normtheory import engine, layers, sampling
from normtheory.config import PARAM_NAMES

# sow_weights=True (see the module docstring) sows outside nnx.capture(), which Flax 0.12 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")

D, N, L, D_FF = 8, 4, 2, 6
HIGHEST = jax.lax.Precision.HIGHEST


def _positions(n: int, d: int) -> np.ndarray:
  """Vaswani et al.'s sinusoids: feature 2k = sin(i / 10000^(2k/d)), feature 2k+1 = cos."""
  i = np.arange(n)[:, None]
  k = np.arange(d)[None, :] // 2
  angle = i / 10000.0 ** (2 * k / d)
  return np.where(np.arange(d) % 2 == 0, np.sin(angle), np.cos(angle))


class FlaxLayer(nnx.Module):
  """One Post-LN or Pre-LN layer from Flax's modules, holding normtheory's weights ``p``."""

  def __init__(self, p: dict, cfg: nt.Config, rngs: nnx.Rngs):
    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    d, h = cfg.d, cfg.heads
    self.post = cfg.arch == "post"
    self.attn = nnx.MultiHeadAttention(h, d, d, d, use_bias=False, decode=False, precision=HIGHEST, rngs=rngs, **f64)
    for name, w in (("query", "W_Q"), ("key", "W_K"), ("value", "W_V")):
      getattr(self.attn, name).kernel[...] = p[w].reshape(d, h, d // h)
    self.attn.out.kernel[...] = p["W_O"].reshape(h, d // h, d)
    self.ln1 = nnx.LayerNorm(d, epsilon=cfg.eps, use_fast_variance=False, rngs=rngs, **f64)
    self.ln2 = nnx.LayerNorm(d, epsilon=cfg.eps, use_fast_variance=False, rngs=rngs, **f64)
    self.fc1 = nnx.Linear(d, cfg.d_ff, precision=HIGHEST, rngs=rngs, **f64)
    self.fc2 = nnx.Linear(cfg.d_ff, d, precision=HIGHEST, rngs=rngs, **f64)
    self.fc1.kernel[...], self.fc1.bias[...] = p["W1"], p["b1"]
    self.fc2.kernel[...], self.fc2.bias[...] = p["W2"], p["b2"]

  def __call__(self, x):
    ffn = lambda z: self.fc2(jax.nn.relu(self.fc1(z)))
    if self.post:  # Table 1, left
      x = self.ln1(x + self.attn(x, sow_weights=True))
      return self.ln2(x + ffn(x))
    x = x + self.attn(self.ln1(x), sow_weights=True)  # Table 1, right
    return x + ffn(self.ln2(x))

  def weights(self) -> dict:
    """normtheory's name -> the Flax parameter holding that weight."""
    a = self.attn
    return {"W_Q": a.query.kernel, "W_K": a.key.kernel, "W_V": a.value.kernel, "W_O": a.out.kernel,
            "W1": self.fc1.kernel, "W2": self.fc2.kernel}


class FlaxModel(nnx.Module):
  """Embedding (text), L layers, Pre-LN's final LayerNorm, and the read-out."""

  def __init__(self, cfg: nt.Config, p_key: jax.Array, rngs: nnx.Rngs):
    self.cfg = cfg
    self.blocks = nnx.List([FlaxLayer(sampling.layer_params(cfg, p_key, l), cfg, rngs) for l in range(1, cfg.L + 1)])
    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    self.final_ln = nnx.LayerNorm(cfg.d, epsilon=cfg.eps, use_fast_variance=False, rngs=rngs, **f64)
    head = sampling.head_params(cfg, p_key)
    if cfg.inputs == "text":
      self.embed = nnx.Embed(cfg.vocab, cfg.d, rngs=rngs, **f64)
      self.embed.embedding[...] = head["E"]
    if cfg.loss == "xent" and not cfg.tied:
      self.readout = nnx.Linear(cfg.d, cfg.vocab, use_bias=False, precision=HIGHEST, rngs=rngs, **f64)
      self.readout.kernel[...] = head["W_emb"].T

  def loss(self, inputs: sampling.Inputs):
    cfg = self.cfg
    x = inputs.x
    if cfg.inputs == "text":  # embedding scaled to entries of variance 1/2, plus positions of mean square 1/2
      x = np.sqrt((cfg.vocab + cfg.d) / 4) * self.embed(x) + _positions(cfg.n, cfg.d)
    for block in self.blocks:
      x = block(x)
    if cfg.arch == "pre":
      x = self.final_ln(x)
    if cfg.loss == "linear":
      return (x * inputs.target).sum(-1).mean()
    logits = self.embed.attend(x) if cfg.tied else self.readout(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, inputs.target).mean()


CASES = [(heads, attention, text) for heads, attention, text in itertools.product((1, 4), ("uniform", "xavier"), (False, True))]


@pytest.mark.slow
@pytest.mark.parametrize("heads, attention, text", CASES)
def test_flax_built_models_have_the_engines_gradient_norms(heads, attention, text):
  """Post-LN and Pre-LN (one engine pass), H heads, uniform or Xavier attention, Gaussian inputs with the
  linear loss or text (2 sequences per sample, tied read-out when H = 4) with next-token cross-entropy:
  every ||dLoss/dW^l||_F of the Flax model, and ||dLoss/dE||_F, equal the engine's to 1e-10 (float64)."""
  fields = dict(inputs="text", loss="xent", batch=2, tied=heads == 4) if text else {}
  base = nt.Config(d=D, n=N, L=L, d_ff=D_FF, dtype="float64", heads=heads, attention=attention, **fields)
  seeds = np.arange(2)
  measured = engine.measure_archs(base, ("post", "pre"), [L], seeds, jax.random.key(11))
  with jax.enable_x64(True):
    for arch in ("post", "pre"):
      cfg = nt.Config(**{**base.__dict__, "arch": arch})
      for s, seed_key in enumerate(sampling.seed_keys(jax.random.key(11), seeds)):
        model = FlaxModel(cfg, sampling.params_key(seed_key), nnx.Rngs(0))
        inputs = sampling.inputs(cfg, sampling.data_key(seed_key))
        grads = nnx.grad(lambda m: m.loss(inputs))(model)
        flax_grads = nnx.merge(*nnx.split(model))  # same structure, to look the gradients up by module
        nnx.update(flax_grads, grads)
        got = measured[arch][L].grad_norms
        for l, block in enumerate(flax_grads.blocks):
          for name, param in block.weights().items():
            expected = float(jnp.sqrt((param[...] ** 2).sum()))
            assert got[name][s, l] == pytest.approx(expected, rel=1e-10, abs=1e-14), (arch, s, l + 1, name)
        if text:
          expected = float(jnp.sqrt((flax_grads.embed.embedding[...] ** 2).sum()))
          assert got["E"][s, 0] == pytest.approx(expected, rel=1e-10), (arch, s, "E")
  assert set(measured["pre"][L].grad_norms) == set(PARAM_NAMES) | ({"E"} if text else set())


def test_the_flax_models_positions_and_layer_norm_are_normtheorys():
  """The two pieces the Flax-built model writes itself or configures: Vaswani's sinusoids equal
  normtheory's ``sinusoidal_positions``, and ``nnx.LayerNorm(use_fast_variance=False)`` equals
  ``(x - mean) / sqrt(var + eps)`` on float64 rows (gain 1, bias 0)."""
  with jax.enable_x64(True):
    np.testing.assert_allclose(layers.sinusoidal_positions(16, 12, jnp.float64), _positions(16, 12), rtol=1e-12, atol=1e-12)
    x = jax.random.normal(jax.random.key(0), (N, D), jnp.float64) * 3.0 + 1.0
    ln = nnx.LayerNorm(D, epsilon=1e-6, use_fast_variance=False, dtype=jnp.float64, param_dtype=jnp.float64,
                       rngs=nnx.Rngs(0))
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(ln(x), expected, rtol=1e-12)
