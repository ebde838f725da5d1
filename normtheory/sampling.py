"""Keys, Xavier-Gaussian weights and inputs, as pure functions of a key.

Every random draw is addressed by ``jax.random.fold_in`` from one base key, so a
sample depends only on (base key, seed index) and a layer's weights only on
(sample, layer index): not on the depth L, the chunking of seeds, the number of
devices, or whether the weights are drawn all at once or one layer at a time.

  seed key      = fold_in(base, seed)
  params key    = fold_in(seed key, 0);  data key = fold_in(seed key, 1)
  layer key     = fold_in(params key, l)  (l = 1..L);  head key = fold_in(params key, 0)
  weight key    = fold_in(layer key, weight_index(name))  (PARAM_NAMES order; SwiGLU's W3 is 6)
  embedding key = fold_in(params key, EMBEDDING_INDEX)  (text inputs: the token embedding E)
  sequence key  = data key for sequence b = 0, fold_in(data key, b + 1) for b >= 1
  input key     = fold_in(sequence key, 0);  target key = fold_in(sequence key, 1)

Sequence 0 draws from the data key's children 0 and 1 exactly as a one-sequence
sample always has, so ``batch = 1`` reproduces the draws of stores made before
batches existed, and sequence b >= 1 uses the data key's child b + 1 (never 0 or 1).
Every key that draws numbers is a leaf: no key is both drawn from and folded further.

Conditional weights (``Config.weights = "conditional"``, SPEC §6) keep the weight key
above and draw from its children instead, never the weight itself
(:class:`ConditionalWeight`):

  stream key    = fold_in(weight key, stream)  (stream 0 for every architecture; per-arch draws, the
                                              stores before them: the arch's index in ARCHS)
  forward G_f   = fold_in(stream key, 0)                 (r × d_out: Qᵀ W)
  backward G_b  = fold_in(fold_in(stream key, 1), 0)     (d_in × r: W' δᵀ = G_b C, the unseen part; layer
                                                         weights: one draw all depths meet; the read-out: per depth L)
  embedding row = fold_in(embedding key, token)          (text inputs: row E[t] of the tokens present)

References:
  Glorot & Bengio 2010 (Xavier init); Xiong et al. 2020, Section 3.3 (W_Q = W_K = 0,
  Xavier-Gaussian W_V, W_O, W1, W2, Gaussian inputs).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from normtheory import layers, text
from normtheory.config import (ARCHS, CONDITIONAL_DRAWS, EMBEDDING, GATE, NORM_PARTS, PARAM_NAMES, Config,
                               norm_param_names)
from normtheory.layers import Params, embed

EMBEDDING_INDEX = 2**32 - 1  # the params key's child reserved for E (layers use 1..L, the head 0)


class Inputs(NamedTuple):
  """One sample's B sequences; arrays have a leading batch axis of size B only when
  B > 1 (:func:`batch_shape`).

  Attributes:
    x: Gaussian inputs ``x_Bxnxd ~ N(0, I)``, or text tokens ``t_Bxn`` (int32).
    target: loss targets: ``y_Bxnxd ~ N(0, I)`` (linear, mse), tokens ``t_Bxn``
      uniform over the vocabulary (xent on Gaussian inputs), or the next tokens (text).
  """

  x: jax.Array
  target: jax.Array


def xavier_std(fan_in: int, fan_out: int) -> float:
  """Standard deviation of Xavier-Gaussian init, sqrt(2/(fan_in+fan_out))."""
  return (2.0 / (fan_in + fan_out)) ** 0.5


@dataclasses.dataclass(frozen=True)
class ConditionalWeight:
  """A Gaussian weight ``W`` (``shape``, entries i.i.d. ``N(0, scale²)``) that is never drawn
  in full: :func:`normtheory.layers.dense` draws, from the key, only what the pass sees.

  Used once forward as ``H = X W`` (r rows, ``Xᵀ = Q R``) and once backward as ``W δᵀ``,
  W enters the pass only through ``G_f = Qᵀ W`` and ``(I - QQᵀ) W δᵀ``; given X, ``G_f``
  is i.i.d. ``N(0, scale²)`` and the unseen part ``(I - QQᵀ) W`` is independent of
  everything the forward pass computed, so
  :meth:`forward_normals` and :meth:`fresh_product` draw them fresh, and every
  number has exactly the law it has with W drawn in full.

  A pytree: ``key``, ``scale``, ``stream`` and ``depth`` are leaves (traced), the rest static.

  References:
    Bayati & Montanari 2011, "The dynamics of message passing on dense graphs",
      Lemma 1 (the conditional law of a Gaussian matrix given linear constraints);
    Bolthausen 2014, "An iterative construction of solutions of the TAP equations".

  Attributes:
    key: the weight key, the key an explicit draw of W would use (:func:`drawn_params`).
    scale: the entries' standard deviation.
    stream: which normals the draws are (:func:`stream_index`): 0 for every architecture
      (``Config.conditional_draws = "shared"``), or the index in ``ARCHS`` of the architecture
      whose pass uses W ("per-arch").
    depth: keys ``G_b``: 0 for a layer's weights (one draw every depth's cotangent meets),
      the cell's depth L for the read-out (drawn per depth, :func:`for_cell`).
    shape: ``(d_in, d_out)``.
    transposed: W is the transpose of the explicit draw from ``key`` (the read-out W_embᵀ).
    zero: W is 0, not drawn (W_Q, W_K under uniform attention).
    forward_draw: ``None``, or :meth:`draw_forward`'s normals drawn ahead (:func:`with_draws`).
    backward_draw: ``None``, or :meth:`draw_backward`'s normals drawn ahead.
  """

  key: jax.Array
  scale: jax.Array
  stream: jax.Array
  depth: jax.Array
  shape: tuple[int, int]
  transposed: bool = False
  zero: bool = False
  forward_draw: jax.Array | None = None
  backward_draw: jax.Array | None = None

  @property
  def T(self) -> ConditionalWeight:
    """The transposed weight (the same draws, read the other way)."""
    return dataclasses.replace(self, shape=self.shape[::-1], transposed=not self.transposed)

  def _stream(self) -> jax.Array:
    return jax.random.fold_in(self.key, self.stream)

  def draw_forward(self, rows: int, dtype) -> jax.Array:
    """The standard normals of ``G_f`` (rows × d_out), from the forward key: a function of W's keys
    and the number of rows seen only, so they may be drawn ahead of the product (:func:`with_draws`)."""
    return jax.random.normal(jax.random.fold_in(self._stream(), 0), (rows, self.shape[1]), dtype)

  def draw_backward(self, rows: int, dtype) -> jax.Array:
    """The standard normals of ``G_b`` (d_in × rows), from the backward key (keyed by :attr:`depth`)."""
    b_key = jax.random.fold_in(jax.random.fold_in(self._stream(), 1), self.depth)
    return jax.random.normal(b_key, (self.shape[0], rows), dtype)

  def forward_normals(self, qt_kxi: jax.Array) -> jax.Array:
    """``G_f = Qᵀ W`` (k × d_out) for the orthonormal rows ``Qᵀ`` (k × d_in) of the rows seen:
    i.i.d. ``N(0, scale²)`` from the forward key (only the shape of ``Qᵀ`` is read)."""
    k = qt_kxi.shape[0]
    g_kxo = (self.draw_forward(k, qt_kxi.dtype) if self.forward_draw is None
             else _ahead(self.forward_draw, (k, self.shape[1])))
    return g_kxo * self.scale

  def fresh_product(self, delta_rxo: jax.Array) -> jax.Array:
    """``W' δᵀ`` (d_in × r) for a fresh W' with W's law, from the backward key (keyed by
    :attr:`depth`): ``G_b C`` with ``G_b`` (d_in × r) i.i.d. ``N(0, scale²)`` and ``Cᵀ C = δ δᵀ``
    (:func:`normtheory.layers.gram_factor`), whose rows are ``N(0, scale² δ δᵀ)`` as ``W' δᵀ``'s are.
    The backward product keeps only its part outside the rows seen forward."""
    r = delta_rxo.shape[0]
    g_ixr = (self.draw_backward(r, delta_rxo.dtype) if self.backward_draw is None
             else _ahead(self.backward_draw, (self.shape[0], r))) * self.scale
    return jnp.matmul(g_ixr, layers.gram_factor(delta_rxo), precision=layers.HIGHEST)

  def rows(self, tokens: jax.Array, dtype) -> jax.Array:
    """Rows ``W[t]`` for integer ``tokens`` (any shape), each drawn from ``fold_in(key, t)``:
    the gather by one-hot rows sees exactly the rows of the tokens present, the same row
    for every occurrence and every architecture. Shape ``(*tokens.shape, d_out)``."""
    draw = lambda t: jax.random.normal(jax.random.fold_in(self.key, t), (self.shape[1],), dtype)
    rows_kxo = jax.vmap(draw)(tokens.reshape(-1).astype(jnp.uint32))
    return rows_kxo.reshape(*tokens.shape, self.shape[1]) * self.scale


jax.tree_util.register_dataclass(
    ConditionalWeight, data_fields=["key", "scale", "stream", "depth", "forward_draw", "backward_draw"],
    meta_fields=["shape", "transposed", "zero"])


def _ahead(normals: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Normals drawn ahead, checked against the shape the product asks for (at trace time)."""
  if normals.shape != shape:
    raise ValueError(f"normals drawn ahead have shape {normals.shape}; the product needs {shape}")
  return normals


def with_draws(params: Params, forward: dict, backward: dict | None = None) -> Params:
  """``params`` with the conditional weights named in ``forward`` (and ``backward``) holding their
  normals drawn ahead (:meth:`ConditionalWeight.draw_forward`, :meth:`~ConditionalWeight.draw_backward`):
  the same numbers as drawing them in the product, from a separate compiled program (the engine's
  draw steps), so the layer programs that read them do not each compile the sampler."""
  backward = backward or {}
  return {name: dataclasses.replace(w, forward_draw=forward[name], backward_draw=backward.get(name))
          if name in forward else w for name, w in params.items()}


def conditional_weight(key: jax.Array, shape: tuple[int, int], scale, zero: bool = False) -> ConditionalWeight:
  """A :class:`ConditionalWeight` of stream 0 and depth 0 (:func:`for_cell` sets them)."""
  return ConditionalWeight(key, jnp.asarray(scale), jnp.uint32(0), jnp.uint32(0), tuple(shape), zero=zero)


def stream_index(arch: str, draws: str = "shared") -> int:
  """The stream of normals that ``arch``'s conditional products draw (``Config.conditional_draws``):
  0 for every architecture ("shared"), or ``arch``'s index in ``ARCHS`` ("per-arch")."""
  if draws not in CONDITIONAL_DRAWS:
    raise ValueError(f"conditional draws must be one of {CONDITIONAL_DRAWS}, got {draws!r}")
  return ARCHS.index(arch) if draws == "per-arch" else 0


def for_cell(params: Params, arch: str, depth=0, draws: str = "shared") -> Params:
  """``params`` with every conditional weight's draws made those of ``arch`` (:func:`stream_index`
  under ``draws``) and depth ``depth`` (arrays are returned as they are): a cell's numbers then
  depend only on its own keys, not on which other architectures or depths share the pass. The
  layers keep ``depth = 0`` (every depth meets one ``G_b``); the read-out takes its cell's L."""
  index = jnp.uint32(stream_index(arch, draws))
  return {name: dataclasses.replace(w, stream=index, depth=jnp.asarray(depth, jnp.uint32))
          if isinstance(w, ConditionalWeight) else w for name, w in params.items()}


def seed_keys(base_key: jax.Array, seeds) -> jax.Array:
  """Per-sample keys ``fold_in(base_key, s)`` for an array of seed indices."""
  return jax.vmap(lambda s: jax.random.fold_in(base_key, s))(jnp.asarray(seeds, jnp.uint32))


def params_key(seed_key: jax.Array) -> jax.Array:
  return jax.random.fold_in(seed_key, 0)


def data_key(seed_key: jax.Array) -> jax.Array:
  return jax.random.fold_in(seed_key, 1)


def weight_shapes(cfg: Config) -> dict[str, tuple[int, int]]:
  """Shape (fan_in, fan_out) of each per-layer weight; SwiGLU adds W3 (d×d_ff) last."""
  d, f = cfg.d, cfg.d_ff
  shapes = {"W_Q": (d, d), "W_K": (d, d), "W_V": (d, d), "W_O": (d, d), "W1": (d, f), "W2": (f, d)}
  if cfg.ffn == "swiglu":
    shapes[GATE] = (d, f)
  return shapes


def weight_index(name: str) -> int:
  """The layer key's child that draws weight ``name``: its place in ``PARAM_NAMES``, and
  ``len(PARAM_NAMES)`` for W3 (so adding W3 changes no other weight's draw)."""
  return len(PARAM_NAMES) if name == GATE else PARAM_NAMES.index(name)


def norm_params(cfg: Config, sites: int) -> Params:
  """The pointwise norms' parameters of ``sites`` norm sites at init (none for LayerNorm,
  RMSNorm): alpha = ``cfg.alpha0`` and Derf's shift s = 0 (scalars), gamma = 1, beta = 0.

  References:
    Zhu et al. 2025 (arXiv:2503.10622), Eq. (2) and Section 7 (alpha_0 = 0.5); Chen et al.
    2025 (arXiv:2512.10938), Eq. (10) (alpha 0.5, s 0 in the authors' code).
  """
  dtype = jnp.dtype(cfg.dtype)
  init = {"alpha": jnp.asarray(cfg.alpha0, dtype), "shift": jnp.zeros((), dtype),
          "gamma": jnp.ones((cfg.d,), dtype), "beta": jnp.zeros((cfg.d,), dtype)}
  names = norm_param_names(cfg, sites)
  return {name: init[name.rsplit("_", 1)[1]] for name in names} if NORM_PARTS[cfg.norm] else {}


def drawn_names(cfg: Config) -> tuple[str, ...]:
  """The per-layer weights drawn at random, in ``weight_shapes`` order: all of them, but
  W_Q and W_K only under ``attention="xavier"`` (uniform attention keeps them at 0)."""
  return tuple(name for name in weight_shapes(cfg) if cfg.attention == "xavier" or name not in ("W_Q", "W_K"))


def drawn_params(cfg: Config, p_key: jax.Array, layer, scale=1.0) -> Params:
  """The drawn weights of layer ``layer`` (1-based), :func:`drawn_names`: what a kept layer holds.

  Args:
    cfg: the model.
    p_key: the sample's params key.
    layer: 1-based layer index (Python int or traced integer).
    scale: multiplies the Xavier draws of W_V, W_O, W1, W2 (DeepNorm's beta; DeepNet
      keeps W_Q and W_K at gain 1).

  Returns:
    name -> Xavier-Gaussian ``(fan_in, fan_out)`` array, for each of :func:`drawn_names`.
  """
  dtype = jnp.dtype(cfg.dtype)
  layer_key = jax.random.fold_in(p_key, layer)
  shapes = weight_shapes(cfg)
  params = {}
  for name in drawn_names(cfg):
    fan_in, fan_out = shapes[name]
    w_key = jax.random.fold_in(layer_key, weight_index(name))
    std = (1.0 if name in ("W_Q", "W_K") else scale) * xavier_std(fan_in, fan_out)
    if cfg.weights == "conditional":
      params[name] = conditional_weight(w_key, (fan_in, fan_out), jnp.asarray(std, dtype))
    else:
      params[name] = jax.random.normal(w_key, (fan_in, fan_out), dtype) * std
  return params


def with_constants(cfg: Config, drawn: Params) -> Params:
  """A layer's full weights from its drawn ones: W_Q = W_K = 0 when not drawn (conditional
  weights: a zero :class:`ConditionalWeight`, never a d×d array), the zero biases b1, b2,
  and the pointwise norms' parameters of its two norm sites (:func:`norm_params`)."""
  dtype = jnp.dtype(cfg.dtype)
  zero = ((lambda shape: conditional_weight(jax.random.key(0), shape, jnp.zeros((), dtype), zero=True))
          if cfg.weights == "conditional" else (lambda shape: jnp.zeros(shape, dtype)))
  params = {name: drawn[name] if name in drawn else zero(shape) for name, shape in weight_shapes(cfg).items()}
  params["b1"] = jnp.zeros((cfg.d_ff,), dtype)
  params["b2"] = jnp.zeros((cfg.d,), dtype)
  return params | norm_params(cfg, 2)


def layer_params(cfg: Config, p_key: jax.Array, layer, scale=1.0) -> Params:
  """The weights of layer ``layer`` (1-based) at initialization.

  The one place a layer's weights are drawn: the engine, the NNX reference model and
  the depth metrics all call it (through :func:`drawn_params`).

  Args:
    cfg, p_key, layer, scale: as :func:`drawn_params`.

  Returns:
    dict with W_Q, W_K (zeros under ``attention="uniform"``, Xavier-Gaussian under
    "xavier"), W_V, W_O, W1, W2 (Xavier-Gaussian) and b1, b2 (zeros).
  """
  return with_constants(cfg, drawn_params(cfg, p_key, layer, scale))


def head_params(cfg: Config, p_key: jax.Array) -> Params:
  """The weights outside the layers: read-out ``W_emb`` and token embedding ``E``.

  Returns:
    dict with ``W_emb`` (V×d, Xavier-Gaussian) for the xent loss unless tied, and
    ``E`` (V×d, Xavier-Gaussian, :func:`normtheory.layers.embed` scales it) for text
    inputs; with ``tied`` the read-out is E and there is no W_emb; the final norm's
    parameters (DyT, Derf: site 1 of :func:`norm_params`; read only by archs with a
    final norm). Empty otherwise.
  """
  dtype = jnp.dtype(cfg.dtype)
  shape = (cfg.vocab, cfg.d)
  if cfg.weights == "conditional":
    draw = lambda key: conditional_weight(key, shape, jnp.asarray(xavier_std(*shape), dtype))
  else:
    draw = lambda key: jax.random.normal(key, shape, dtype) * xavier_std(*shape)
  head = {}
  if cfg.loss == "xent" and not cfg.tied:
    head["W_emb"] = draw(jax.random.fold_in(p_key, 0))
  if cfg.inputs == "text":
    head[EMBEDDING] = draw(jax.random.fold_in(p_key, EMBEDDING_INDEX))
  return head | norm_params(cfg, 1)


def sequence_key(d_key: jax.Array, b: int) -> jax.Array:
  """Sequence b's key: the data key itself for b = 0, ``fold_in(d_key, b + 1)`` after."""
  return d_key if b == 0 else jax.random.fold_in(d_key, b + 1)


def _sequence(cfg: Config, s_key: jax.Array) -> Inputs:
  """One sequence's inputs and targets (no batch axis)."""
  x_key, t_key = jax.random.fold_in(s_key, 0), jax.random.fold_in(s_key, 1)
  if cfg.inputs == "text":
    return Inputs(*text.window(x_key, cfg.n))
  dtype = jnp.dtype(cfg.dtype)
  x_nxd = jax.random.normal(x_key, (cfg.n, cfg.d), dtype)
  if cfg.loss == "xent":
    return Inputs(x_nxd, jax.random.randint(t_key, (cfg.n,), 0, cfg.vocab))
  return Inputs(x_nxd, jax.random.normal(t_key, (cfg.n, cfg.d), dtype))


def batch_shape(cfg: Config) -> tuple[int, ...]:
  """The leading batch axes of a sample's arrays: ``(B,)``, or none for one sequence.

  A one-sequence sample carries no batch axis, so its programs, and so its numbers,
  are bit for bit those of stores made before batches existed (a batched matmul with
  a batch of one is not always rounded like the plain one).
  """
  return (cfg.batch,) if cfg.batch > 1 else ()


def inputs(cfg: Config, d_key: jax.Array) -> Inputs:
  """One sample's ``cfg.batch`` sequences, stacked on a leading batch axis if B > 1.

  Args:
    cfg: the model.
    d_key: the sample's data key; sequence b draws from :func:`sequence_key`.

  Returns:
    :class:`Inputs` with arrays of shape ``(*batch_shape(cfg), n, ...)``.
  """
  sequences = [_sequence(cfg, sequence_key(d_key, b)) for b in range(cfg.batch)]
  if cfg.batch == 1:
    return sequences[0]
  return Inputs(*(jnp.stack(parts) for parts in zip(*sequences)))


def first_state(cfg: Config, head: Params, x) -> jax.Array:
  """The state entering layer 1: the Gaussian inputs themselves, or embedded text tokens
  (:func:`normtheory.layers.embed` of ``head["E"]``, with the sinusoidal code when
  ``cfg.positions`` says so)."""
  return embed(x, head[EMBEDDING], cfg.positions == "sinusoidal", jnp.dtype(cfg.dtype)) if cfg.inputs == "text" else x
