"""Exact per-layer gradient norms of a user's model at init (:func:`grad_norms`), and a stored sweep of them.

:func:`grad_norms` measures one model over seeds; :func:`depth_sweep` a grid of
depths and widths into ``probe_norms/`` (:func:`read_probe`); :func:`summary`
counts its rows. The package docstring (:mod:`normtheory.probe`) describes the
three functions a user gives and the keys each seed draws.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Section 3.3 and Theorem 1 (the measured ``||dLoss/dW^l||_F`` and its depth laws).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from normtheory import parts, sampling
from normtheory.measure import as_key, seed_indices
from normtheory.probe.fit import SWEEP_AXES, cell_columns, rows_of
from normtheory.probe.paths import Leaf, layout
from normtheory.schema import PROBE_COLUMNS, PROBE_FILE, PROBE_OPTIONAL_COLUMNS, StoreError


# ---------------------------------------------------------------- measurement


@dataclasses.dataclass(frozen=True)
class _Split:
  """One seed's model: what is differentiated, the rest, and how to rebuild what ``loss_fn`` takes."""

  params: Any  # the parameters (an nnx State of nnx.Param, or the user's pytree)
  rest: Any  # everything else of an NNX model (RNG state, batch statistics, ...); None otherwise
  rebuild: Callable  # (params, rest) -> the model handed to loss_fn
  pure: Callable  # a params-shaped tree -> plain pytree (the paths the layout reads)


def _split(made) -> _Split:
  """Split an ``nnx.Module`` or an ``(apply_fn, params)`` pair."""
  if isinstance(made, nnx.Module):
    graphdef, params, rest = nnx.split(made, nnx.Param, ...)
    return _Split(params, rest, lambda p, r: nnx.merge(graphdef, p, r), nnx.to_pure_dict)
  if isinstance(made, tuple) and len(made) == 2 and callable(made[0]):
    apply_fn, params = made
    return _Split(params, None, lambda p, r: functools.partial(apply_fn, p), lambda tree: tree)
  raise TypeError(f"make_model must return an nnx.Module or an (apply_fn, params) pair; got {type(made).__name__}")


def _sq_norms(taps, num_layers: int) -> jax.Array:
  """Mean squared norm over the last axis of the state entering each layer, ``(L,)``."""
  states = list(taps) if isinstance(taps, (list, tuple)) else [taps[l] for l in range(taps.shape[0])]
  if len(states) != num_layers:
    raise ValueError(f"loss_fn returned {len(states)} residual-stream taps for a stack of {num_layers} layers")
  return jnp.stack([(x**2).sum(-1).mean() for x in states])


def _reduce(leaves: Sequence[Leaf], grads_flat: list[jax.Array]) -> list[jax.Array]:
  """Frobenius norm of each gradient array, or of each slice along a stacked array's axis."""
  out = []
  for leaf, g in zip(leaves, grads_flat):
    axes = tuple(i for i in range(g.ndim) if i != leaf.axis)
    out.append(jnp.sqrt((g.astype(jnp.result_type(g, jnp.float32)) ** 2).sum(axes)))
  return out


def _step(model: _Split, make_batch, loss_fn, leaves, num_layers):
  """The jitted, seed-vmapped step: (params_S, rest_S, data keys_S) -> (loss_S, norms per leaf, sq_norm_SxL)."""

  def one(params, rest, data_key):
    batch = make_batch(data_key)

    def loss(p):
      out = loss_fn(model.rebuild(p, rest), batch)
      value, taps = out if isinstance(out, tuple) else (out, None)
      if jnp.shape(value) != ():
        raise ValueError(f"loss_fn must return a scalar (or (scalar, taps)); got shape {jnp.shape(value)}")
      return value, (None if taps is None else _sq_norms(taps, num_layers))

    (value, sq_L), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, _reduce(leaves, jax.tree.leaves(model.pure(grads))), sq_L

  return jax.jit(jax.vmap(one))


def _depth(leaves: Sequence[Leaf], arrays: list) -> int:
  """Number of layers a layout covers: its distinct layers, or the length of its stacked arrays."""
  stacked = {np.shape(a)[leaf.axis] for leaf, a in zip(leaves, arrays) if leaf.axis is not None}
  return max([len({leaf.layer for leaf in leaves if leaf.layer is not None}), *stacked])


def _stack(trees: list):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def grad_norms(
    make_model: Callable,
    make_batch: Callable,
    loss_fn: Callable,
    seeds: int | Sequence[int] = 8,
    key=0,
    *,
    num_layers: int | None = None,
    axis: int | None = None,
    layer_of: Callable | None = None,
    chunk: int | None = None,
) -> pd.DataFrame:
  """Exact ``||dLoss/dW||_F`` of every parameter array of your model, per seed.

  Args:
    make_model: ``key -> nnx.Module`` or ``key -> (apply_fn, params)``.
    make_batch: ``key -> batch``.
    loss_fn: ``(model, batch) -> loss`` (a scalar) or ``(loss, taps)`` with the
      residual-stream state entering each layer (adds ``sq_norm``).
    seeds: number of samples (0..seeds-1) or explicit seed indices.
    key: base PRNG key, or an int seed.
    num_layers, axis, layer_of: how to find the layer stack (:func:`layout`).
    chunk: seeds per compiled call (a memory knob; the numbers do not depend on it).

  Returns:
    Tidy frame, one row per (seed, parameter array[, layer of a stacked array]):
    ``seed, path, layer, param, grad_norm, loss, nonfinite`` (+ ``sq_norm``).
    ``layer`` is 1-based (nullable integer; empty outside the stack); ``loss`` is
    the seed's loss; ``nonfinite`` flags rows whose loss or norm is NaN/inf.

  Raises:
    LayoutError: no layer stack in the model's parameters.
  """
  seeds_S = seed_indices(seeds)
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
    raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
  keys_S = sampling.seed_keys(as_key(key), seeds_S)
  size = len(seeds_S) if chunk is None else int(chunk)
  step, parts = None, []
  for start in range(0, len(seeds_S), size):
    keys_C = keys_S[start: start + size]
    keys_C = jnp.concatenate([keys_C, jnp.repeat(keys_C[-1:], size - keys_C.shape[0], axis=0)])  # pad the last
    # Built eagerly, seed by seed: initializers run op by op instead of being compiled into the step.
    models = [_split(make_model(sampling.params_key(k))) for k in keys_C]
    if step is None:
      arrays = jax.tree.leaves(models[0].pure(models[0].params))
      leaves = layout(models[0].pure(models[0].params), num_layers, axis, layer_of)
      step = _step(models[0], make_batch, loss_fn, leaves, _depth(leaves, arrays))
    data_keys_C = jax.vmap(sampling.data_key)(keys_C)
    out = step(_stack([m.params for m in models]), _stack([m.rest for m in models]), data_keys_C)
    parts.append(jax.tree.map(lambda a, k=min(size, len(seeds_S) - start): np.asarray(a)[:k], out))
  loss_S, norms, sq_SxL = jax.tree.map(lambda *a: np.concatenate(a), *parts)
  return _frame(seeds_S, leaves, loss_S, norms, sq_SxL)


def _frame(seeds_S, leaves, loss_S, norms, sq_SxL) -> pd.DataFrame:
  blocks = []
  for leaf, norm in zip(leaves, norms):
    norm_SxK = np.asarray(norm, np.float64).reshape(len(seeds_S), -1)
    K = norm_SxK.shape[1]
    layers_K = np.arange(1, K + 1) if leaf.axis is not None else [leaf.layer]
    blocks.append(pd.DataFrame({
        "seed": np.repeat(seeds_S, K),
        "path": leaf.path,
        "layer": pd.array(np.tile(layers_K, len(seeds_S)), dtype="Int64"),
        "param": leaf.param,
        "grad_norm": norm_SxK.reshape(-1),
        "loss": np.repeat(np.asarray(loss_S, np.float64), K),
    }))
  frame = pd.concat(blocks, ignore_index=True).sort_values("seed", kind="stable", ignore_index=True)
  frame["nonfinite"] = ~(np.isfinite(frame["loss"]) & np.isfinite(frame["grad_norm"]))
  if sq_SxL is not None:
    sq_SxL = np.asarray(sq_SxL, np.float64)
    row = pd.Series(np.arange(len(seeds_S)), index=seeds_S)[frame["seed"]].to_numpy()
    layer = frame["layer"].to_numpy(dtype=np.float64, na_value=np.nan)
    ok = ~np.isnan(layer)
    frame["sq_norm"] = np.nan
    frame.loc[ok, "sq_norm"] = sq_SxL[row[ok], layer[ok].astype(int) - 1]
  return frame


def summary(frame: pd.DataFrame) -> str:
  """A few lines on a probe frame: seeds, arrays in and outside the stack, non-finite seeds."""
  seeds = frame["seed"].unique()
  arrays = frame.drop_duplicates("path")
  in_stack = frame["layer"].notna()
  bad = sorted(frame.loc[~np.isfinite(frame["loss"]), "seed"].unique())
  lines = [
      f"{len(seeds)} seeds, {len(arrays)} parameter arrays: {frame.loc[in_stack, 'param'].nunique()} parameter "
      f"groups over {frame.loc[in_stack, 'layer'].nunique()} layers, "
      f"{frame.loc[~in_stack, 'path'].nunique()} arrays outside the layer stack.",
      f"non-finite loss: {len(bad)} of {len(seeds)} seeds" + (f" ({', '.join(map(str, bad))})" if bad else "")
      + f"; {int(frame['nonfinite'].sum())} rows flagged nonfinite.",
  ]
  return "\n".join(lines)


# ------------------------------------------------------------------ the store


def _probe_columns(frame: pd.DataFrame) -> list[str]:
  return [*PROBE_COLUMNS, *(c for c in PROBE_OPTIONAL_COLUMNS if c in frame.columns)]


def read_probe(out_dir) -> pd.DataFrame:
  """The probe table of ``DIR`` (empty if none): ``DIR/probe_norms.csv`` of stores written before Parquet,
  then the parts of ``DIR/probe_norms/`` (:func:`normtheory.parts.read_frames`); ``StoreError`` naming the
  file that cannot be read."""
  path = pathlib.Path(out_dir) / PROBE_FILE
  frames = [] if not path.exists() else [_read_probe_csv(path)]
  stored = parts.read_frames(pathlib.Path(out_dir) / parts.folder(PROBE_FILE))
  if stored is not None:
    _check_columns(pathlib.Path(out_dir) / parts.folder(PROBE_FILE), stored)
    if frames:
      _check_header(path, frames[0], list(stored.columns))
    frames.append(stored)
  if not frames:
    return pd.DataFrame()
  frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
  frame["layer"] = frame["layer"].astype("Int64")
  return frame


def _read_probe_csv(path: pathlib.Path) -> pd.DataFrame:
  try:
    frame = pd.read_csv(path, dtype={"path": str, "param": str}, keep_default_na=False, na_values={
        c: [""] for c in ("layer", "grad_norm", "loss", "sq_norm")})
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
    first = str(error).splitlines()[0]
    raise StoreError(f"{path}: not a readable probe table ({type(error).__name__}: {first})") from None
  _check_columns(path, frame)
  frame["nonfinite"] = frame["nonfinite"].astype(str).str.lower() == "true"
  return frame


def _check_columns(path: pathlib.Path, frame: pd.DataFrame) -> None:
  missing = [c for c in (*PROBE_COLUMNS, *SWEEP_AXES) if c not in frame.columns]
  if missing:
    raise StoreError(f"{path}: header is {','.join(frame.columns)}; a probe table needs {', '.join(missing)}")


def _write_probe(out_dir: pathlib.Path, frame: pd.DataFrame) -> None:
  """Add the rows of one measured (d, L) as a new part of ``DIR/probe_norms/`` (nothing stored is rewritten)."""
  parts.write_frame(out_dir / parts.folder(PROBE_FILE), frame)


def _check_header(path: pathlib.Path, stored: pd.DataFrame, columns: list[str]) -> None:
  """Refuse a store written with other cell columns (or without/with taps when this sweep differs)."""
  if list(stored.columns) != columns:
    raise StoreError(f"{path}: header is {','.join(stored.columns)}; this sweep writes {','.join(columns)} "
                     "(other cell columns or taps: use another directory)")


def depth_sweep(
    make_model: Callable,
    depths: Sequence[int],
    widths: Sequence[int],
    make_batch: Callable,
    loss_fn: Callable,
    seeds: int | Sequence[int] = 8,
    key=0,
    *,
    cell: Mapping | None = None,
    out=None,
    axis: int | None = None,
    layer_of: Callable | None = None,
    chunk: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
  """:func:`grad_norms` over a grid of depths L and widths d, optionally into a results store.

  Every (d, L) model is measured with the same seeds (the sample pairs the fits
  resample together) and its layer stack is found with ``num_layers=L``. With
  ``out``, the rows of each measured (d, L) become a new Parquet part of
  ``out/probe_norms/`` (written atomically; an older ``out/probe_norms.csv`` is read and
  kept as it is); a second call skips every stored (cell, d, L, seed), so an interrupted
  sweep resumes and a larger ``seeds`` adds only the new ones.

  Args:
    make_model: ``(L, d, key) -> nnx.Module`` or ``(apply_fn, params)``.
    depths, widths: the grid.
    make_batch: ``(d, key) -> batch``.
    loss_fn: ``(model, batch) -> loss`` or ``(loss, taps)``, as in :func:`grad_norms`.
    seeds, key, axis, layer_of, chunk: as in :func:`grad_norms`.
    cell: the cell columns naming this model in the store, e.g. ``{"arch": "pre"}``;
      ``d`` and ``L`` are added. A store holds one set of cell columns.
    out: the store directory (created if needed), or None to keep rows in memory.
    progress: called with one line per (d, L) measured or skipped (e.g. ``print``).

  Returns:
    This cell's rows for the whole grid: the cell columns, ``d, L``, then the
    columns of :func:`grad_norms`.

  Raises:
    StoreError: ``out`` holds a table with other columns, or cannot be read.
    ValueError: a cell column is named like a measured column, ``d`` or ``L``.
  """
  cell = dict(cell or {})
  clash = [c for c in cell if c in (*SWEEP_AXES, *PROBE_COLUMNS, *PROBE_OPTIONAL_COLUMNS)]
  if clash:
    raise ValueError(f"cell columns {', '.join(clash)} are reserved (d, L and the measured columns)")
  seeds_S = seed_indices(seeds)
  keys = [*cell, *SWEEP_AXES]
  path = None if out is None else pathlib.Path(out) / PROBE_FILE
  if path is not None and not path.exists():
    path = path.parent / parts.folder(PROBE_FILE)  # what error lines name: the CSV of an older store, else the parts
  stored = pd.DataFrame()
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = read_probe(out)
    if not stored.empty and cell_columns(stored) != keys:
      raise StoreError(f"{path}: cell columns are {','.join(cell_columns(stored))}; this sweep names {','.join(keys)}")
  mine = []
  for d in widths:
    for L in depths:
      here = {**cell, "d": d, "L": L}
      done = rows_of(stored, here)
      have = set() if done.empty else set(done["seed"])
      todo = [s for s in seeds_S if s not in have]
      if todo:
        frame = grad_norms(lambda k, L=L, d=d: make_model(L, d, k), lambda k, d=d: make_batch(d, k), loss_fn,
                           todo, key, num_layers=L, axis=axis, layer_of=layer_of, chunk=chunk)
        frame = pd.concat([pd.DataFrame({c: [v] * len(frame) for c, v in here.items()}), frame], axis=1)
        if path is not None:
          if not stored.empty:
            _check_header(path, stored, [*keys, *_probe_columns(frame)])
          _write_probe(path.parent, frame)
          stored = pd.concat([stored, frame], ignore_index=True) if not stored.empty else frame
        done = pd.concat([done, frame], ignore_index=True) if not done.empty else frame
      if progress is not None:
        verb = f"measured {len(todo)} seeds" if todo else "stored, skipped"
        progress(f"{', '.join(f'{k}={v}' for k, v in here.items())}: {verb}")
      mine.append(done[done["seed"].isin(seeds_S)])
  return pd.concat(mine, ignore_index=True)
