"""Training the Post-LN and Pre-LN encoders on a synthetic task, with optax.

The consequence of Theorem 1 that Xiong et al. test in Section 3 / Fig. 2: the
last-layer gradient of Post-LN is large at initialisation, so Adam without a
learning-rate warm-up trains it badly, while Pre-LN trains without warm-up.

The model is the one :mod:`normtheory.architectures` describes (one head, LayerNorm
without gain or bias), made trainable: a token embedding plus fixed sinusoidal
positions in, ``L`` layers run with ``jax.lax.scan`` over a stacked per-layer dict,
the architecture's final LayerNorm, and a per-position softmax head out. W_Q and W_K
are Xavier-Gaussian (the theory's W_Q = W_K = 0 would leave attention uniform).

The task is sequence labelling generated in code: the input is ``n`` tokens drawn
uniformly from ``vocab``; the label at position i is the i-th smallest input token
("sort") or the input token at position ``n-1-i`` ("reverse").

Learning rate at update ``t = 1, 2, ...`` (warm-up ``w``, decay start ``t0``)::

    lr(t) = peak * min(1, t / w) * min(1, sqrt(max(w, t0) / t))      (w = 0: no ramp)

so for ``w >= t0`` it is Vaswani et al.'s ``peak * min(t/w, sqrt(w/t))``, and for
``w = 0`` it is ``peak * min(1, sqrt(t0/t))``: constant, then the same inverse-sqrt
decay. :func:`lr_schedule` builds it with ``optax.join_schedules``.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"
    (arXiv:2002.04745), Section 3 and Fig. 2 (warm-up for Post-LN, none for Pre-LN).
  Vaswani et al. 2017, "Attention Is All You Need", Eq. (3) (the schedule, Adam
    beta2 = 0.98, sinusoidal positions).
  Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond" (RAdam).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from normtheory import architectures, prng, sampling
from normtheory.config import PARAM_NAMES, Config
from normtheory.layers import HIGHEST

TASKS = ("sort", "reverse")
OPTIMIZERS = ("adam", "radam")
COLUMNS = ("arch", "L", "d", "optimizer", "warmup", "peak_lr", "seed", "step", "metric", "value")
METRICS = ("train_loss", "grad_norm_W2", "val_loss", "val_acc")

# {"embed": (V, d), "layers": {name: (L, ...)}, "head": (d, V)}, see init_params.
EncoderParams = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
  """A synthetic sequence-labelling data set.

  Attributes:
    name: "sort" or "reverse".
    vocab: number of token values.
    n: sequence length.
    n_train: number of training sequences.
    n_val: number of validation sequences (drawn after, and disjoint from, the
      training ones).
    seed: generator seed of the whole data set.
  """

  name: str = "sort"  # which labelling, see module docstring
  vocab: int = 64  # token values 0..vocab-1
  n: int = 16  # sequence length
  n_train: int = 16384  # training sequences
  n_val: int = 256  # validation sequences
  seed: int = 0  # data-generator seed

  def __post_init__(self):
    if self.name not in TASKS:
      raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.name!r}")
    for field, minimum in (("vocab", 2), ("n", 2), ("n_train", 1), ("n_val", 1)):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One optimiser configuration of the sweep.

  Attributes:
    optimizer: "adam" (``optax.adam``) or "radam" (``optax.radam``).
    warmup: linear warm-up length w in updates (0: none).
    peak_lr: the schedule's peak learning rate.
  """

  optimizer: str
  warmup: int
  peak_lr: float

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
    if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
      raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
    if not isinstance(self.peak_lr, (int, float)) or not self.peak_lr > 0:
      raise ValueError(f"peak_lr must be a number > 0, got {self.peak_lr!r}")


class Dataset(NamedTuple):
  """Token inputs and per-position labels, ``(rows, n)`` int32 each."""

  train_x: jax.Array
  train_y: jax.Array
  val_x: jax.Array
  val_y: jax.Array


def labels(task: Task, x_bxn: jax.Array) -> jax.Array:
  """The task's per-position labels of the inputs ``x_bxn``."""
  return jnp.sort(x_bxn, axis=-1) if task.name == "sort" else x_bxn[:, ::-1]


def make_data(task: Task) -> Dataset:
  """The data set of ``task``, a pure function of ``task`` (its seed included).

  Rows are drawn without repetition, so no validation sequence is in the training set.

  Returns:
    a :class:`Dataset`: the first ``n_train`` distinct sequences train, the next
    ``n_val`` validate.
  """
  rows = task.n_train + task.n_val
  rng = np.random.default_rng(task.seed)
  x = rng.integers(0, task.vocab, (2 * rows, task.n), dtype=np.int32)
  _, first = np.unique(x, axis=0, return_index=True)
  if first.size < rows:
    raise ValueError(f"vocab^n is too small for {rows} distinct sequences")
  x_rxn = jnp.asarray(x[np.sort(first)[:rows]])
  y_rxn = labels(task, x_rxn)
  return Dataset(x_rxn[: task.n_train], y_rxn[: task.n_train], x_rxn[task.n_train :], y_rxn[task.n_train :])


def model_config(arch: str, L: int, d: int, task: Task, d_ff: int | None = None) -> Config:
  """The :class:`normtheory.Config` of the trained encoder (xent read-out over the vocab)."""
  return Config(arch=arch, d=d, L=L, n=task.n, d_ff=d_ff, loss="xent", vocab=task.vocab)


def sinusoidal_positions(n: int, d: int) -> jax.Array:
  """Vaswani et al.'s fixed position code, ``(n, d)``: sin on even, cos on odd features."""
  pos_n1 = jnp.arange(n, dtype=jnp.float32)[:, None]
  freq_h = 10000.0 ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  angle_nxh = pos_n1 * freq_h
  return jnp.stack([jnp.sin(angle_nxh), jnp.cos(angle_nxh)], axis=-1).reshape(n, -1)[:, :d]


def init_params(cfg: Config, key: jax.Array) -> EncoderParams:
  """Trainable parameters of the encoder at initialisation.

  Layer l's W_V, W_O, W1, W2, b1, b2 are :func:`normtheory.sampling.layer_params`
  (Xavier-Gaussian, zero biases, the architecture's weight scale); W_Q and W_K are
  replaced by Xavier-Gaussian draws (from the keys :mod:`normtheory.sampling`
  reserves for them) so attention can learn.

  Args:
    cfg: the model (``cfg.vocab`` tokens, ``xent`` read-out).
    key: the run's params key.

  Returns:
    ``{"embed": (V, d) N(0, 1), "layers": {name: (L, ...)}, "head": (d, V) Xavier}``.
  """
  arch = architectures.get(cfg.arch)
  d, dtype = cfg.d, jnp.dtype(cfg.dtype)
  std = sampling.xavier_std(d, d)

  def layer(l):
    p = sampling.layer_params(cfg, key, l, arch.weight_scale(cfg.L))
    for name in ("W_Q", "W_K"):
      w_key = jax.random.fold_in(jax.random.fold_in(key, l), PARAM_NAMES.index(name))
      p[name] = jax.random.normal(w_key, (d, d), dtype) * std
    return p

  embed_key, head_key = jax.random.split(jax.random.fold_in(key, 0))
  return {
      "embed": jax.random.normal(embed_key, (cfg.vocab, d), dtype),
      "layers": jax.vmap(layer)(jnp.arange(1, cfg.L + 1)),
      "head": jax.random.normal(head_key, (d, cfg.vocab), dtype) * sampling.xavier_std(d, cfg.vocab),
  }


def encode(cfg: Config, params: EncoderParams, x_n: jax.Array) -> jax.Array:
  """One sequence's final representation ``(n, d)``: embed, the L layers, final LN."""
  arch = architectures.get(cfg.arch)
  h_nxd = params["embed"][x_n] + sinusoidal_positions(x_n.shape[0], cfg.d)

  def step(h_nxd, layer):
    p, l = layer
    return arch.layer(p, h_nxd, l, cfg.L, cfg), None

  h_nxd, _ = jax.lax.scan(step, h_nxd, (params["layers"], jnp.arange(1, cfg.L + 1)))
  return arch.final(h_nxd, cfg.eps)


def apply(cfg: Config, params: EncoderParams, x_bxn: jax.Array) -> jax.Array:
  """Per-position logits ``(b, n, V)`` of a batch of token sequences."""
  h_bxnxd = jax.vmap(lambda x_n: encode(cfg, params, x_n))(x_bxn)
  return jnp.matmul(h_bxnxd, params["head"], precision=HIGHEST)


class LossAndAccuracy(NamedTuple):
  """Mean per-position cross-entropy and token accuracy of a batch (scalars)."""

  loss: jax.Array
  accuracy: jax.Array


def loss_and_accuracy(cfg: Config, params: EncoderParams, x_bxn: jax.Array, y_bxn: jax.Array) -> LossAndAccuracy:
  """Mean per-position cross-entropy and token accuracy of a batch."""
  logits_bxnxv = apply(cfg, params, x_bxn)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits_bxnxv, y_bxn).mean()
  return LossAndAccuracy(loss, (logits_bxnxv.argmax(-1) == y_bxn).mean())


def lr_schedule(peak_lr: float, warmup: int, decay_start: int) -> optax.Schedule:
  """The learning rate as an optax schedule of the update count ``c = t - 1``.

  ``lr(t) = peak * min(1, t/w) * min(1, sqrt(max(w, t0)/t))`` at update t (1-based):
  a linear ramp to ``peak`` over the first ``w`` updates, constant until update
  ``t0`` if ``t0 > w``, then inverse-sqrt decay (see the module docstring).

  Args:
    peak_lr: peak learning rate.
    warmup: warm-up length w (0: start at ``peak``).
    decay_start: t0, the update at which decay starts when ``warmup < t0``.

  Returns:
    ``optax.join_schedules`` of ``linear_schedule`` (ramp), ``constant_schedule``
    (hold) and the inverse-sqrt decay.
  """
  t_d = max(warmup, decay_start)
  decay = lambda s: peak_lr * jnp.sqrt(t_d / (s + t_d + 1.0))
  hold = optax.constant_schedule(peak_lr)
  if warmup == 0:
    return optax.join_schedules([hold, decay], [t_d])
  ramp = optax.linear_schedule(peak_lr / warmup, peak_lr, warmup - 1)
  return optax.join_schedules([ramp, hold, decay], [warmup, t_d])


def optimizer(name: str, schedule: optax.Schedule) -> optax.GradientTransformation:
  """``optax.adam`` or ``optax.radam`` with Vaswani et al.'s betas (0.9, 0.98)."""
  make = {"adam": optax.adam, "radam": optax.radam}[name]
  return make(learning_rate=schedule, b1=0.9, b2=0.98, eps=1e-9)


class TrainState(NamedTuple):
  """Parameters and optimiser state (each leaf with a leading seed axis when vmapped)."""

  params: EncoderParams
  opt_state: optax.OptState


class ChunkResult(NamedTuple):
  """The state after a chunk of updates and the per-update metrics of the chunk.

  Attributes:
    params, opt_state: as in :class:`TrainState`.
    per_step: ``{"train_loss", "grad_norm_W2"}`` -> ``(S, chunk)`` arrays.
  """

  params: EncoderParams
  opt_state: optax.OptState
  per_step: dict[str, jax.Array]


class Runner(NamedTuple):
  """Jitted functions of one (model, optimiser), each vmapped over seeds.

  Attributes:
    init: ``params_key_S -> TrainState``.
    chunk: ``(params, opt_state, batch_key_S, lr_T, start) -> ChunkResult``: the
      updates ``start .. start + chunk - 1`` (0-based optax counts; update c uses
      ``lr_T[c]`` and the batch ``fold_in(batch_key, c)``); ``per_step`` holds
      ``(S, chunk)`` arrays ``train_loss`` and ``grad_norm_W2``
      (``||dLoss/dW2^L||_F`` on the update's batch, before the update).
    evaluate: ``params -> {"val_loss", "val_acc"}`` on the validation set.
  """

  init: Callable
  chunk: Callable
  evaluate: Callable


def make_runner(cfg: Config, name: str, data: Dataset, batch: int, chunk: int) -> Runner:
  """The :class:`Runner` of model ``cfg`` trained with optimiser ``name`` on ``data``.

  The learning rates come in as an array ``lr_T``, so one compilation serves every
  warm-up and peak learning rate.

  Args:
    cfg: the model.
    name: the optimiser, see :func:`optimizer`.
    data: the data set; batches of ``batch`` rows are drawn with replacement.
    batch: training batch size.
    chunk: number of updates per ``chunk`` call.

  Returns:
    the jitted, seed-vmapped ``init``, ``chunk`` and ``evaluate``.
  """
  loss_grad = jax.value_and_grad(lambda p, x, y: loss_and_accuracy(cfg, p, x, y).loss)

  def init(p_key):
    params = init_params(cfg, p_key)  # the optimiser state does not depend on the schedule
    return TrainState(params, optimizer(name, optax.constant_schedule(0.0)).init(params))

  def run(params, opt_state, batch_key, lr_T, start):
    tx = optimizer(name, lambda c: lr_T[jnp.minimum(c, lr_T.shape[0] - 1)])

    def update(state, count):
      params, opt_state = state
      rows_b = jax.random.randint(jax.random.fold_in(batch_key, count), (batch,), 0, data.train_x.shape[0])
      loss, grads = loss_grad(params, data.train_x[rows_b], data.train_y[rows_b])
      updates, opt_state = tx.update(grads, opt_state, params)
      metrics = {"train_loss": loss, "grad_norm_W2": jnp.linalg.norm(grads["layers"]["W2"][-1])}
      return (optax.apply_updates(params, updates), opt_state), metrics

    (params, opt_state), per_step = jax.lax.scan(update, (params, opt_state), start + jnp.arange(chunk))
    return ChunkResult(params, opt_state, per_step)

  def evaluate(params):
    val = loss_and_accuracy(cfg, params, data.val_x, data.val_y)
    return {"val_loss": val.loss, "val_acc": val.accuracy}

  return Runner(
      jax.jit(jax.vmap(init)),
      jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None, None))),
      jax.jit(jax.vmap(evaluate)),
  )


class RunKeys(NamedTuple):
  """Per-seed keys of a training run, ``(S,)`` typed key arrays each."""

  params: jax.Array  # draws the initial weights (init_params)
  batches: jax.Array  # draws the training batches (update c: fold_in(batches, c))


def init_and_data_keys(seeds: Iterable[int], base_seed: int = 0) -> RunKeys:
  """Per-seed keys: ``fold_in(fold_in(prng.make_key(base_seed), s), 0)`` for the weights, ``..., 1)`` for the batches.

  The same addressing as the measurements (:mod:`normtheory.sampling`): seed s's
  keys depend only on (base seed, s).

  Args:
    seeds: seed indices s.
    base_seed: seed of the base key (``prng.DEFAULT_PRNG``).

  Returns:
    :class:`RunKeys`.
  """
  base_S = sampling.seed_keys(prng.make_key(base_seed), np.asarray(list(seeds)))
  return RunKeys(jax.vmap(sampling.params_key)(base_S), jax.vmap(sampling.data_key)(base_S))


def train(
    cfg: Config,
    setting: Setting,
    data: Dataset,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 400,
    batch: int = 16,
    eval_every: int = 25,
    decay_start: int = 100,
    runner: Runner | None = None,
    progress: bool = True,
) -> pd.DataFrame:
  """Train one model from several seeds at once (vmapped) with one optimiser setting.

  Args:
    cfg: the model (see :func:`model_config`).
    setting: optimiser, warm-up and peak learning rate.
    data: the task's data set (:func:`make_data`).
    seeds: seed indices; seed s draws the weights and the batches.
    steps: number of updates (rounded up to a multiple of ``eval_every``).
    batch: training batch size.
    eval_every: updates between validation passes.
    decay_start: t0 of :func:`lr_schedule`.
    runner: a :func:`make_runner` result to reuse (same model, optimiser, data,
      batch and ``eval_every``).
    progress: show a tqdm bar.

  Returns:
    tidy frame with ``COLUMNS``: ``train_loss`` and ``grad_norm_W2`` at every update
    (step t is the t-th update, measured on its batch before the update), ``val_loss``
    and ``val_acc`` after every ``eval_every`` updates and at step 0.
  """
  chunks = -(-steps // eval_every)
  runner = runner or make_runner(cfg, setting.optimizer, data, batch, eval_every)
  lr_T = lr_schedule(setting.peak_lr, setting.warmup, decay_start)(jnp.arange(chunks * eval_every))
  seeds_S = np.asarray(seeds)
  keys = init_and_data_keys(seeds_S)
  params, opt_state = runner.init(keys.params)
  logs = {"train_loss": [], "grad_norm_W2": [], **{k: [(0, v)] for k, v in runner.evaluate(params).items()}}
  label = f"{cfg.arch} L={cfg.L} {setting.optimizer} w={setting.warmup} lr={setting.peak_lr:g}"
  for i in tqdm(range(chunks), desc=label, disable=not progress, leave=False):
    params, opt_state, per_step = runner.chunk(params, opt_state, keys.batches, lr_T, i * eval_every)
    for metric, value in per_step.items():
      logs[metric].append((i * eval_every + 1, value))
    for metric, value in runner.evaluate(params).items():
      logs[metric].append(((i + 1) * eval_every, value))
  return _frame(cfg, setting, seeds_S, logs)


def _frame(cfg: Config, setting: Setting, seeds_S: np.ndarray, logs: dict) -> pd.DataFrame:
  """Tidy rows from ``metric -> [(first step, (S,) or (S, k) values), ...]``."""
  parts = []
  for metric, entries in logs.items():
    for first, value in entries:
      value_Sxk = np.asarray(value, np.float64).reshape(len(seeds_S), -1)
      k = value_Sxk.shape[1]
      parts.append(pd.DataFrame({
          "seed": np.repeat(seeds_S, k),
          "step": np.tile(first + np.arange(k), len(seeds_S)),
          "metric": metric,
          "value": value_Sxk.ravel(),
      }))
  frame = pd.concat(parts, ignore_index=True)
  keys = {"arch": cfg.arch, "L": cfg.L, "d": cfg.d, "optimizer": setting.optimizer,
          "warmup": setting.warmup, "peak_lr": setting.peak_lr}
  frame = frame.assign(**keys)[list(COLUMNS)]
  return frame.sort_values(["metric", "seed", "step"], ignore_index=True)


def sweep(
    archs: Sequence[str],
    depths: Sequence[int],
    settings: Sequence[Setting],
    task: Task,
    d: int = 128,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 400,
    batch: int = 16,
    eval_every: int = 25,
    decay_start: int = 100,
    progress: bool = True,
) -> pd.DataFrame:
  """:func:`train` every (arch, L, setting); one compilation per (arch, L, optimiser).

  Args:
    archs: architecture names (``normtheory.ARCHS``).
    depths: numbers of layers L.
    settings: :class:`Setting` s.
    task: the data set's description (:func:`make_data` is called once).
    d: model width.
    seeds, steps, batch, eval_every, decay_start, progress: as in :func:`train`.

  Returns:
    the concatenated tidy frames, ``COLUMNS``.
  """
  data = make_data(task)
  frames = []
  for arch in archs:
    for L in depths:
      cfg = model_config(arch, L, d, task)
      runners = {}
      for setting in settings:
        if setting.optimizer not in runners:
          runners[setting.optimizer] = make_runner(cfg, setting.optimizer, data, batch, eval_every)
        frames.append(train(cfg, setting, data, seeds, steps, batch, eval_every, decay_start,
                            runners[setting.optimizer], progress))
  return pd.concat(frames, ignore_index=True)
