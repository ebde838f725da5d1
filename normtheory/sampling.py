"""Keys, Xavier-Gaussian weights and Gaussian inputs, as pure functions of a key.

Every random draw is addressed by ``jax.random.fold_in`` from one base key, so a
sample depends only on (base key, seed index) and a layer's weights only on
(sample, layer index): not on the depth L, the chunking of seeds, the number of
devices, or whether the weights are drawn all at once or one layer at a time.

  seed key    = fold_in(base, seed)
  params key  = fold_in(seed key, 0);  data key = fold_in(seed key, 1)
  layer key   = fold_in(params key, l)  (l = 1..L);  head key = fold_in(params key, 0)
  weight key  = fold_in(layer key, PARAM_NAMES.index(name))

References:
  Glorot & Bengio 2010 (Xavier init); Xiong et al. 2020, Section 3.3 (W_Q = W_K = 0,
  Xavier-Gaussian W_V, W_O, W1, W2, Gaussian inputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from normtheory.config import Config


def xavier_std(fan_in: int, fan_out: int) -> float:
  """Standard deviation of Xavier-Gaussian init, sqrt(2/(fan_in+fan_out))."""
  return (2.0 / (fan_in + fan_out)) ** 0.5


def seed_keys(base_key: jax.Array, seeds) -> jax.Array:
  """Per-sample keys ``fold_in(base_key, s)`` for an array of seed indices."""
  return jax.vmap(lambda s: jax.random.fold_in(base_key, s))(jnp.asarray(seeds, jnp.uint32))


def params_key(seed_key: jax.Array) -> jax.Array:
  return jax.random.fold_in(seed_key, 0)


def data_key(seed_key: jax.Array) -> jax.Array:
  return jax.random.fold_in(seed_key, 1)


def weight_shapes(cfg: Config) -> dict[str, tuple[int, int]]:
  """Shape (fan_in, fan_out) of each per-layer weight."""
  d, f = cfg.d, cfg.d_ff
  return {"W_Q": (d, d), "W_K": (d, d), "W_V": (d, d), "W_O": (d, d), "W1": (d, f), "W2": (f, d)}


def layer_params(cfg: Config, p_key: jax.Array, layer, scale=1.0) -> dict[str, jax.Array]:
  """The weights of layer ``layer`` (1-based) at initialization.

  Args:
    cfg: the model.
    p_key: the sample's params key.
    layer: 1-based layer index (Python int or traced integer).
    scale: multiplies the Xavier draws of W_V, W_O, W1, W2 (DeepNorm's beta).

  Returns:
    dict with W_Q, W_K (zeros), W_V, W_O, W1, W2 (Xavier-Gaussian) and b1, b2 (zeros).
  """
  dtype = jnp.dtype(cfg.dtype)
  layer_key = jax.random.fold_in(p_key, layer)
  params = {}
  for index, (name, (fan_in, fan_out)) in enumerate(weight_shapes(cfg).items()):
    if name in ("W_Q", "W_K"):
      params[name] = jnp.zeros((fan_in, fan_out), dtype)
      continue
    draw = jax.random.normal(jax.random.fold_in(layer_key, index), (fan_in, fan_out), dtype)
    params[name] = draw * (scale * xavier_std(fan_in, fan_out))
  params["b1"] = jnp.zeros((cfg.d_ff,), dtype)
  params["b2"] = jnp.zeros((cfg.d,), dtype)
  return params


def head_params(cfg: Config, p_key: jax.Array) -> dict[str, jax.Array]:
  """Read-out parameters: ``W_emb`` (V×d, Xavier-Gaussian) for the xent loss, else none."""
  if cfg.loss != "xent":
    return {}
  key = jax.random.fold_in(p_key, 0)
  shape = (cfg.vocab, cfg.d)
  return {"W_emb": jax.random.normal(key, shape, jnp.dtype(cfg.dtype)) * xavier_std(*shape)}


def inputs(cfg: Config, d_key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One sample's inputs ``x_nxd ~ N(0, I)`` and loss targets.

  Returns:
    (x_nxd, target): target is ``y_nxd ~ N(0, I)`` for linear/mse, integer tokens
    ``t_n`` uniform over the vocabulary for xent.
  """
  dtype = jnp.dtype(cfg.dtype)
  x_nxd = jax.random.normal(jax.random.fold_in(d_key, 0), (cfg.n, cfg.d), dtype)
  t_key = jax.random.fold_in(d_key, 1)
  if cfg.loss == "xent":
    return x_nxd, jax.random.randint(t_key, (cfg.n,), 0, cfg.vocab)
  return x_nxd, jax.random.normal(t_key, (cfg.n, cfg.d), dtype)
