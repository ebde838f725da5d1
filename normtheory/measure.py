"""The notebook API: exact per-layer gradient norms of one model over many seeds.

Example:
  >>> import normtheory as nt
  >>> r = nt.grad_norms(nt.Config(arch="pre", d=32, L=4), seeds=2)
  >>> r.grad_norm["W2"].shape  # (seeds, layers)
  (2, 4)

References:
  Xiong et al. 2020, Section 3.3 and Theorem 1 (``||dLoss/dW2^L||_F``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
import pandas as pd

from normtheory import engine, prng, reference, schema
from normtheory.config import EMBEDDING, Config, layer_param_names
from normtheory.schema import GRAD_COLUMNS, HIDDEN_COLUMNS

METHODS = ("engine", "reference")


@dataclasses.dataclass
class GradNorms:
  """Per-seed, per-layer measurements of one model.

  All quantities are per sample: a sample's B sequences (``Config.batch``) share its
  weights, its loss is their mean, and its gradient the gradient of that mean.

  Attributes:
    config: the model.
    seeds: ``(S,)`` seed indices (sample s uses ``fold_in(base key, s)``).
    grad_norm: param name -> ``(S, L)`` array of ``||dLoss/dW^l||_F``, layer 1 first;
      for text inputs also ``"E"`` -> ``(S, 1)``, the token embedding (layer 0).
    sq_norm: ``(S, L + 1)`` mean squared row norm ``||x_l||²/n`` over the sample's
      B·n rows: column l - 1 is the state entering layer l, the last column the
      state leaving layer L (before any final LN). For ResiDual, the dual stream b.
    ln_jacobian: ``(S, L, k)`` LN-Jacobian spectral norms ``1/sqrt(var + eps)``,
      averaged over the rows, at the inputs of the layer's k LayerNorms (forward order).
    ln_jacobian_final: ``(S, k_f)`` the same at the final LayerNorm (k_f = 1 for
      architectures with one, else 0).
    loss: ``(S,)`` loss values.
    final_grad_norm: param name -> ``(S, 1)``: the final norm's parameters (DyT, Derf
      under Pre-LN), reported at layer L + 1; empty otherwise.
  """

  config: Config
  seeds: np.ndarray
  grad_norm: dict[str, np.ndarray]
  sq_norm: np.ndarray
  ln_jacobian: np.ndarray
  ln_jacobian_final: np.ndarray
  loss: np.ndarray
  final_grad_norm: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_depth_result(cls, cfg: Config, seeds_S: np.ndarray, result: engine.DepthResult) -> GradNorms:
    return cls(cfg, np.asarray(seeds_S), result.grad_norms, result.sq_norms, result.ln_jacobian,
               result.ln_jacobian_final, result.loss, result.final_grad_norms)

  def to_frame(self) -> pd.DataFrame:
    """Tidy table, one row per (seed, layer, param), columns ``GRAD_COLUMNS``; the token
    embedding E (text inputs) is layer 0, the final norm's parameters layer L + 1."""
    cell = schema.cell_of(self.config)
    layers_L = np.arange(1, self.config.L + 1)
    names = layer_param_names(self.config)
    frames = [schema.tidy_frame(schema.GRAD_FILE, cell, self.seeds, layers_L,
                                {name: self.grad_norm[name] for name in names}, "param")]
    if EMBEDDING in self.grad_norm:
      frames.insert(0, schema.tidy_frame(schema.GRAD_FILE, cell, self.seeds, [0],
                                         {EMBEDDING: self.grad_norm[EMBEDDING]}, "param"))
    if self.final_grad_norm:
      frames.append(schema.tidy_frame(schema.GRAD_FILE, cell, self.seeds, [self.config.L + 1],
                                      self.final_grad_norm, "param"))
    return pd.concat(frames, ignore_index=True)

  def hidden_frame(self) -> pd.DataFrame:
    """Tidy table of ``||x_l||²/n``, one row per (seed, layer), layers 1..L+1 (L+1: the
    state leaving the last layer), columns ``HIDDEN_COLUMNS``."""
    layers_L1 = np.arange(1, self.config.L + 2)
    return schema.tidy_frame(schema.HIDDEN_FILE, schema.cell_of(self.config), self.seeds, layers_L1, self.sq_norm)

  def ln_jacobian_frame(self) -> pd.DataFrame:
    """Tidy table of the LN-Jacobian spectral norms, one row per (seed, layer, ln),
    columns ``LN_JACOBIAN_COLUMNS``: ``ln = k`` is the layer's k-th LayerNorm in forward
    order; the final LayerNorm is ``layer = L + 1, ln = 1``.

    References:
      Xiong et al. 2020, Lemma 3 (``||J_LN(x)||_2 = sqrt(d)/||x - mean(x)||`` at eps = 0).
    """
    cell = schema.cell_of(self.config)
    layers_L = np.arange(1, self.config.L + 1)
    k = self.ln_jacobian.shape[2]
    frames = [schema.tidy_frame(schema.LN_JACOBIAN_FILE, cell, self.seeds, layers_L,
                                {j + 1: self.ln_jacobian[:, :, j] for j in range(k)}, "ln")]
    if self.ln_jacobian_final.shape[1]:
      frames.append(schema.tidy_frame(schema.LN_JACOBIAN_FILE, cell, self.seeds, [self.config.L + 1],
                                      {1: self.ln_jacobian_final[:, :1]}, "ln"))
    return pd.concat(frames, ignore_index=True)

  def tables(self) -> dict[str, pd.DataFrame]:
    """Every results-store table of this cell, keyed by file name (``schema.TABLES``).

    The one list of what a measured cell contributes to a store: the sweep appends
    these and :func:`normtheory.measure_grid` returns them.
    """
    return {schema.HIDDEN_FILE: self.hidden_frame(), schema.LN_JACOBIAN_FILE: self.ln_jacobian_frame(),
            schema.GRAD_FILE: self.to_frame()}

  def __repr__(self) -> str:
    c = self.config
    w2 = self.grad_norm["W2"]
    head = (f"GradNorms(arch={c.arch}, loss={c.loss}, d={c.d}, L={c.L}, n={c.n}, batch={c.batch}, "
            f"attention={c.attention}, heads={c.heads}, inputs={c.inputs}, norm={c.norm}, ffn={c.ffn}, "
            f"causal={c.causal}, positions={c.positions}, seeds={len(self.seeds)})")
    rows = [f"  layer {l:3d}: ||dL/dW2|| = {w2[:, l - 1].mean():.4g} ± {w2[:, l - 1].std():.2g}"
            for l in range(1, c.L + 1)]
    return "\n".join([head, *rows])


def as_key(key: int | jax.Array) -> jax.Array:
  """A PRNG key from an int seed (with ``prng.DEFAULT_PRNG``) or an existing key."""
  if isinstance(key, (int, np.integer)):
    return prng.make_key(int(key), prng.DEFAULT_PRNG)
  return key


def check_chunk(chunk: int | None) -> int | None:
  """``chunk`` if it is None or an integer >= 1 (seeds per compiled call), else ``ValueError``."""
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
    raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
  return chunk


def seed_indices(seeds: int | Sequence[int]) -> np.ndarray:
  """``range(seeds)`` for an int, else the given indices; ``ValueError`` if empty or negative."""
  indices = np.arange(seeds) if isinstance(seeds, (int, np.integer)) else np.asarray(seeds, dtype=np.int64)
  if indices.ndim != 1 or indices.size == 0 or (indices < 0).any():
    raise ValueError(f"seeds must be a positive count or non-empty non-negative indices, got {seeds!r}")
  return indices


def grad_norms(
    cfg: Config,
    seeds: int | Sequence[int] = 8,
    key: int | jax.Array = 0,
    chunk: int | None = None,
    method: str = "engine",
) -> GradNorms:
  """Exact ``||dLoss/dW^l||_F`` for every layer l, weight W and seed.

  Args:
    cfg: the model (:class:`normtheory.Config`).
    seeds: number of samples (indices 0..seeds-1) or explicit seed indices.
    key: base PRNG key, or an int seed for a ``prng.DEFAULT_PRNG`` key; sample s draws
      everything from ``fold_in(key, s)``.
    chunk: seeds per compiled call (memory knob; results do not depend on it).
    method: "engine" (memory flat in depth, :mod:`normtheory.engine`) or
      "reference" (``jax.grad`` of the full NNX parameter pytree; explicit weights only).
      ``cfg.weights = "conditional"`` samples the weights from their conditional law
      (exact in law, never a d×d matrix, SPEC §6).

  Returns:
    :class:`GradNorms`.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
  if method == "reference" and cfg.weights != "explicit":
    raise ValueError(f"method='reference' draws every weight in full: needs weights='explicit', got {cfg.weights!r}")
  check_chunk(chunk)
  seeds_S = seed_indices(seeds)
  base_key = as_key(key)
  if method == "reference":
    result = reference.measure(cfg, seeds_S, base_key)
  else:
    result = engine.measure_depths(cfg, [cfg.L], seeds_S, base_key, chunk)[cfg.L]
  return GradNorms.from_depth_result(cfg, seeds_S, result)
