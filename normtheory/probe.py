"""Probe your own model: exact per-layer gradient norms at init, their depth and width exponents.

normtheory measures its own Transformers; this module measures *yours*. Give it
three functions and it returns ``||dLoss/dW||_F`` of every parameter array of the
model, per seed, with the layer each array belongs to read off its parameter path::

  make_model(key) -> nnx.Module            (or, for plain JAX / Linen, (apply_fn, params))
  make_batch(key) -> batch                 (any pytree)
  loss_fn(model, batch) -> scalar          (or (scalar, taps), see below)

For a plain-JAX model the ``model`` handed to ``loss_fn`` is ``apply_fn`` with the
parameters bound (``model(*args) = apply_fn(params, *args)``); for Linen return
``(module.apply, variables)``. Gradients are exact (``jax.grad``), vmapped over
seeds and jitted once per model shape. Sample ``s`` draws its model from
``sampling.params_key(k_s)`` and its batch from ``sampling.data_key(k_s)`` with
``k_s = fold_in(key, s)``, the keys normtheory's own sweep uses.

Which parameters form the layer stack (:func:`layout`):

1. **A list or dict of layers**: the first path component (above the array itself)
   that is an integer (``layers/3/mlp/w2/kernel``: an ``nnx.List`` or a Python
   list of layers, a dict with integer keys ``"0", "1", ...``) or ends in
   ``_<integer>`` (Linen's ``layers_3/...``). Components with the same parent
   path and stem form one candidate stack; the stack is the candidate with the
   most distinct indices (exactly ``num_layers`` of them when given; ties: plain
   integers before ``name_<i>``, then the shallowest). The array's ``param`` is
   the rest of its path (``mlp/w2/kernel``).
2. **Stacked (scanned) layers**, tried when no list/dict is found or ``axis`` is
   given (``nnx.vmap``/``nnx.scan`` style): the subtree whose arrays all have
   length ``num_layers`` along ``axis`` (default 0): the one with most arrays
   (ties: the deepest, so ``layers/W2`` has param ``W2``).
   Without ``num_layers`` this needs the ``axis=`` hint (then any common length).
   ``param`` is the path below that subtree; each slice along ``axis`` is a layer.

Layers are numbered 1..L from the bottom as in every normtheory table (1 + the
rank of the index among the stack's indices: a list's ``layers/0`` is layer 1 and
``layers/3`` layer 4; slice ``k`` of a stacked array is layer ``k + 1``). Arrays
outside the stack (embeddings, a final norm, a read-out) are reported with an
empty ``layer`` and ``param`` = their full path. Only a model in which no stack is
found at all raises :class:`LayoutError`, naming what was looked for. Override
the rules with ``layer_of(path) -> None | (layer, param) | (STACKED, param)``.

Taps: ``loss_fn`` may return ``(loss, taps)`` with ``taps`` the residual-stream
state entering each layer (a sequence of L arrays, or one array whose leading
axis is the layer, as ``nnx.scan`` returns it); every row then gets ``sq_norm``,
the mean squared norm over the last (feature) axis of the state entering its
layer (``||x_l||²/n`` of normtheory's tables).

A seed whose loss (or a gradient norm) is NaN/inf is not an error: its rows are
flagged (``nonfinite``), counted by :func:`summary` and :func:`report`, and left
out of the fits.

Example:
  >>> import normtheory as nt                                        # doctest: +SKIP
  >>> frame = nt.probe.grad_norms(make_model, make_batch, loss_fn, seeds=8)
  >>> frame[frame.param == "mlp/fc2/kernel"].groupby("layer").grad_norm.mean()
  >>> sweep = nt.probe.depth_sweep(make_model, [2, 4, 8, 16], [64], make_batch_d, loss_fn,
  ...                              cell={"arch": "pre"}, out="results/probe")
  >>> print(nt.probe.report(nt.probe.fit_groups(sweep)))

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1: the last layer's gradient is flat in L for Post-LN and falls like
    L^(-1/2) for Pre-LN; the classification of :func:`classify` names those two.
  Yang et al. 2021, "Tensor Programs V" (muP), ``coord_check``: per-layer scales of
    a user's own model as a tidy table.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from normtheory import fit, sampling, schema
from normtheory.measure import as_key, seed_indices
from normtheory.schema import PROBE_COLUMNS, PROBE_FILE, PROBE_OPTIONAL_COLUMNS, StoreError

STACKED = "stacked"  # layer_of's marker of an array stacked along `axis`, one layer per slice
FLAT_BAND = (-0.15, 0.15)  # gamma inside: flat in L, as Post-LN (Theorem 1: gamma = 0)
PRE_BAND = (0.35, 0.65)  # gamma inside: falls like L^-1/2, as Pre-LN (Theorem 1: gamma = 1/2)
POST_LIKE = "Post-LN-like (flat in L)"
PRE_LIKE = "Pre-LN-like (falls ≈ L^-½)"
NEITHER = "neither"
ZERO_RTOL = 1e-5  # a group below this times the model's median group norm is zero up to float rounding
SWEEP_AXES = ("d", "L")
# Columns of fit_groups after the model's cell columns.
GROUP_COLUMNS = ("param", "in_stack", "depths", "widths", "n_seeds", "nonfinite_seeds", "gamma", "gamma_lo",
                  "gamma_hi", "alpha", "alpha_lo", "alpha_hi", "r2", "verdict", "reason")
_INDEXED = re.compile(r"^(?:(?P<stem>.+)_)?(?P<index>\d+)$")


class LayoutError(ValueError):
  """No layer stack was found in a model's parameters (the message says what was looked for)."""


@dataclasses.dataclass(frozen=True)
class Leaf:
  """Where one parameter array sits in the model.

  Attributes:
    path: the array's path, components joined by "/" (``layers/3/mlp/w2/kernel``).
    param: the parameter group: the path inside its layer, or the full path outside the stack.
    layer: 1-based layer of an array of a list/dict of layers; None otherwise.
    axis: the stacking axis of a stacked array (slice k is layer k + 1); None otherwise.
  """

  path: str
  param: str
  layer: int | None = None
  axis: int | None = None


# ----------------------------------------------------------------------- layout


def _component(key) -> str | int:
  """One key of a JAX key path as a path component (ints stay ints)."""
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


def _flat(tree) -> list[tuple[tuple, tuple]]:
  """(components, shape) of every array of a pytree, in ``jax.tree.leaves`` order."""
  return [(tuple(_component(k) for k in path), tuple(np.shape(leaf)))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _join(components: Iterable) -> str:
  return "/".join(map(str, components))


def _index(component) -> tuple[str, int] | None:
  """(stem, index) of a component that names a layer of a list/dict (``3``, ``"3"``, ``"layers_3"``)."""
  if isinstance(component, (int, np.integer)) and not isinstance(component, bool):
    return "", int(component)
  match = _INDEXED.match(str(component))
  return (match["stem"] or "", int(match["index"])) if match else None


def _indexed_stacks(flat) -> dict[tuple, dict]:
  """Candidate list/dict stacks: (parent path, stem) -> {"indices": set, "position": int}."""
  stacks: dict[tuple, dict] = {}
  for components, _ in flat:
    for i, component in enumerate(components[:-1]):
      found = _index(component)
      if found is not None:
        stack = stacks.setdefault((components[:i], found[0]), {"indices": set(), "position": i})
        stack["indices"].add(found[1])
        break
  return stacks


def _stacked_subtrees(flat, num_layers: int | None, axis: int) -> dict[tuple, int]:
  """Candidate stacked subtrees: prefix -> number of arrays, all of one length along ``axis``."""
  out = {}
  prefixes = {components[:i] for components, _ in flat for i in range(len(components))}
  for prefix in prefixes:
    shapes = [shape for components, shape in flat if components[: len(prefix)] == prefix]
    if not all(len(shape) > axis for shape in shapes):
      continue
    lengths = {shape[axis] for shape in shapes}
    if len(lengths) == 1 and (num_layers is None or lengths == {num_layers}):
      out[prefix] = len(shapes)
  return out


def _by_rules(flat, num_layers: int | None, axis: int | None) -> list[Leaf]:
  stacks = _indexed_stacks(flat) if axis is None else {}
  fitting = {k: v for k, v in stacks.items() if num_layers is None or len(v["indices"]) == num_layers}
  if fitting:
    (parent, stem), stack = max(fitting.items(), key=lambda kv: (len(kv[1]["indices"]), kv[0][1] == "", -len(kv[0][0])))
    rank = {index: r + 1 for r, index in enumerate(sorted(stack["indices"]))}
    i = stack["position"]
    leaves = []
    for components, _ in flat:
      found = _index(components[i]) if len(components) > i + 1 and components[:i] == parent else None
      if found is not None and found[0] == stem:
        leaves.append(Leaf(_join(components), _join(components[i + 1:]), layer=rank[found[1]]))
      else:
        leaves.append(Leaf(_join(components), _join(components)))
    return leaves
  if num_layers is not None or axis is not None:
    subtrees = _stacked_subtrees(flat, num_layers, axis or 0)
    if subtrees:
      prefix = max(subtrees, key=lambda p: (subtrees[p], len(p)))  # most arrays, then the deepest
      return [Leaf(_join(c), _join(c[len(prefix):]), axis=axis or 0) if c[: len(prefix)] == prefix
              else Leaf(_join(c), _join(c)) for c, _ in flat]
  raise LayoutError(_no_stack_message(flat, stacks, num_layers, axis))


def _no_stack_message(flat, stacks, num_layers, axis) -> str:
  size = f"exactly num_layers={num_layers} distinct indices" if num_layers is not None else "any number of indices"
  found = "; found " + ", ".join(
      f"{_join((*parent, (stem + '_<i>') if stem else '<i>'))} with {len(s['indices'])}"
      for (parent, stem), s in stacks.items()) if stacks else "; found none"
  if num_layers is None and axis is None:
    stacked = "not tried: stacked layers are recognised by num_layers= (or the axis= hint)"
  else:
    stacked = f"a subtree whose arrays all have length {num_layers if num_layers is not None else 'K'} along axis {axis or 0}: none"
  paths = ", ".join(f"{_join(c)} {s}" for c, s in flat[:12]) + (", ..." if len(flat) > 12 else "")
  looked = ("" if axis is not None else
            f"(1) a list or dict of layers: a path component that is an integer or ends in _<integer>, "
            f"with {size}{found}; ")
  return (f"no layer stack found among {len(flat)} parameter arrays. Looked for {looked}"
          f"(2) stacked layers: {stacked}. Parameters: {paths}. "
          f"Pass num_layers=, axis= or layer_of=(path -> None | (layer, param) | (STACKED, param)).")


def layout(
    params, num_layers: int | None = None, axis: int | None = None, layer_of: Callable | None = None
) -> list[Leaf]:
  """Where each array of a parameter pytree sits: its layer (or stacking axis) and parameter group.

  Args:
    params: a pytree of arrays (a plain dict, ``nnx.to_pure_dict`` of an NNX
      ``State``, Linen variables, ...), or of ``jax.ShapeDtypeStruct``.
    num_layers: the model's depth, if known: selects the list/dict stack with that
      many layers, and enables stacked-layer detection (arrays of that length
      along ``axis``).
    axis: stacked layers along this axis (skips the list/dict rule).
    layer_of: override, ``path -> None`` (outside the stack), ``(layer, param)``
      (1-based layer) or ``(STACKED, param)`` (stacked along ``axis``, default 0).

  Returns:
    One :class:`Leaf` per array, in ``jax.tree.leaves`` order.

  Raises:
    LayoutError: no layer stack is found (without ``layer_of``).
  """
  flat = _flat(params)
  if layer_of is None:
    return _by_rules(flat, num_layers, axis)
  leaves = []
  for components, shape in flat:
    path = _join(components)
    slot = layer_of(path)
    if slot is None:
      leaves.append(Leaf(path, path))
    elif slot[0] == STACKED:
      leaves.append(Leaf(path, slot[1], axis=axis or 0))
    else:
      leaves.append(Leaf(path, slot[1], layer=int(slot[0])))
  return leaves


def _num_layers(leaves: Sequence[Leaf], flat) -> int:
  """Number of layers a layout covers (distinct layers, or the stacked length)."""
  stacked = {shape[leaf.axis] for leaf, (_, shape) in zip(leaves, flat) if leaf.axis is not None}
  listed = {leaf.layer for leaf in leaves if leaf.layer is not None}
  return max([len(listed), *stacked])


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
      leaves = layout(models[0].pure(models[0].params), num_layers, axis, layer_of)
      flat = _flat(models[0].pure(models[0].params))
      step = _step(models[0], make_batch, loss_fn, leaves, _num_layers(leaves, flat))
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


def cell_columns(frame: pd.DataFrame) -> list[str]:
  """The cell columns of a probe table (every column that is not a measurement), in order."""
  return [c for c in frame.columns if c not in (*PROBE_COLUMNS, *PROBE_OPTIONAL_COLUMNS)]


def read_probe(out_dir) -> pd.DataFrame:
  """``DIR/probe_norms.csv`` as a frame (empty if absent); ``StoreError`` naming the file if unreadable."""
  path = pathlib.Path(out_dir) / PROBE_FILE
  if not path.exists():
    return pd.DataFrame()
  try:
    frame = pd.read_csv(path, dtype={"path": str, "param": str}, keep_default_na=False, na_values={
        c: [""] for c in ("layer", "grad_norm", "loss", "sq_norm")})
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
    raise StoreError(f"{path}: not a readable probe table ({type(error).__name__}: {str(error).splitlines()[0]})") from None
  missing = [c for c in (*PROBE_COLUMNS, *SWEEP_AXES) if c not in frame.columns]
  if missing:
    raise StoreError(f"{path}: header is {','.join(frame.columns)}; a probe table needs {', '.join(missing)}")
  frame["layer"] = frame["layer"].astype("Int64")
  frame["nonfinite"] = frame["nonfinite"].astype(str).str.lower() == "true"
  return frame


def _write_probe(out_dir: pathlib.Path, frame: pd.DataFrame) -> None:
  schema.atomic_write(out_dir / PROBE_FILE, frame.to_csv(index=False))


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
  ``out``, rows go to ``out/probe_norms.csv`` (written atomically after each
  (d, L)); a second call skips every stored (cell, d, L, seed), so an interrupted
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
      done = _rows_of(stored, here)
      have = set() if done.empty else set(done["seed"])
      todo = [s for s in seeds_S if s not in have]
      if todo:
        frame = grad_norms(lambda k, L=L, d=d: make_model(L, d, k), lambda k, d=d: make_batch(d, k), loss_fn,
                           todo, key, num_layers=L, axis=axis, layer_of=layer_of, chunk=chunk)
        frame = pd.concat([pd.DataFrame({c: [v] * len(frame) for c, v in here.items()}), frame], axis=1)
        if path is not None:
          if not stored.empty:
            _check_header(path, stored, [*keys, *_probe_columns(frame)])
          stored = pd.concat([stored, frame], ignore_index=True) if not stored.empty else frame
          _write_probe(path.parent, stored)
        done = pd.concat([done, frame], ignore_index=True) if not done.empty else frame
      if progress is not None:
        verb = f"measured {len(todo)} seeds" if todo else "stored, skipped"
        progress(f"{', '.join(f'{k}={v}' for k, v in here.items())}: {verb}")
      mine.append(done[done["seed"].isin(seeds_S)])
  return pd.concat(mine, ignore_index=True)


def _rows_of(frame: pd.DataFrame, cell: Mapping) -> pd.DataFrame:
  """Rows of one cell (values compared as text, so a CSV round trip matches)."""
  if frame.empty:
    return frame
  mask = np.ones(len(frame), bool)
  for column, value in cell.items():
    mask &= frame[column].astype(str).to_numpy() == str(value)
  return frame[mask]


# ------------------------------------------------------------- fits and words


def _paired_bootstrap_means(values_SxC: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
  """``(n_boot, C)`` means over one seed resample per replicate, shared by every column (NaN = absent)."""
  # TODO(integrator): use fit.paired_bootstrap_means (this local copy has its signature; delete at merge).
  idx_BxS = rng.integers(0, values_SxC.shape[0], size=(n_boot, values_SxC.shape[0]))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicate of a cell -> NaN
    return np.nanmean(values_SxC[idx_BxS], axis=1)


paired_bootstrap_means = getattr(fit, "paired_bootstrap_means", _paired_bootstrap_means)


def classify(ci: Sequence[float] | None) -> tuple[str, str]:
  """The behaviour in depth of one parameter group, in words, from the CI of its γ (``g ∝ L^-γ``).

  Rule: "Post-LN-like (flat in L)" if the whole CI lies in ``FLAT_BAND`` = [-0.15,
  0.15]; "Pre-LN-like (falls ≈ L^-½)" if it lies in ``PRE_BAND`` = [0.35, 0.65];
  otherwise "neither", with the reason. The bands are centred on Theorem 1's
  two exponents (0 and ½), each ±0.15 wide: a group is named only when the data
  exclude the other behaviour, and the 0.2-wide gap between the bands belongs to
  neither. (normtheory's own Pre-LN measures γ = 0.57 [0.55, 0.58] over d = 64..512,
  L = 6..96: inside the band, although not equal to ½.)

  Args:
    ci: ``[lo, hi]`` of γ, or None (no fit).

  Returns:
    (verdict, reason).
  """
  if ci is None:
    return NEITHER, "no depth exponent (needs >= 2 depths with positive finite norms)"
  lo, hi = ci
  inside = lambda band: band[0] <= lo and hi <= band[1]
  if inside(FLAT_BAND):
    return POST_LIKE, f"CI inside [{FLAT_BAND[0]:g}, {FLAT_BAND[1]:g}]"
  if inside(PRE_BAND):
    return PRE_LIKE, f"CI inside [{PRE_BAND[0]:g}, {PRE_BAND[1]:g}]"
  if hi < FLAT_BAND[0]:
    return NEITHER, "grows with L"
  if lo > PRE_BAND[1]:
    return NEITHER, "falls faster than L^-1/2"
  if lo > FLAT_BAND[1] and hi < PRE_BAND[0]:
    return NEITHER, "falls, slower than L^-1/2"
  if lo <= FLAT_BAND[1] and hi >= PRE_BAND[0]:
    return NEITHER, "CI meets both bands (undetermined: more seeds or depths)"
  return NEITHER, "CI crosses the edge of a band"


def _estimate(fits: dict, name: str) -> tuple[float, float, float]:
  e = fits.get(name)
  if e is None or e["value"] is None or e["ci"] is None:
    return np.nan, np.nan, np.nan
  return e["value"], *e["ci"]


def fit_groups(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
  """γ (and α) of ``g = C d^α L^-γ`` per model and parameter group, with paired-bootstrap CIs and words.

  A group inside the stack is fitted at the last layer of each model (layer = L,
  the layer of Theorem 1); an array outside the stack by its one value per model.
  Point estimates fit the per-cell means over finite seeds
  (:func:`normtheory.fit.power_law_fit`); each bootstrap replicate resamples the
  seed indices once for every cell of the group (the cells of one seed share its
  keys), averages and refits; 95% percentile CIs. A group whose gradient is zero
  up to float rounding (every cell mean below ``ZERO_RTOL`` times the model's
  median group norm, e.g. an attention key bias, which softmax ignores) is not
  fitted: its exponent would be that of rounding noise.

  Args:
    frame: a probe table with ``d`` and ``L`` columns (:func:`depth_sweep`).
    n_boot: bootstrap replicates per group.
    seed: seed of the resampling.

  Returns:
    One row per (model, param): the model's cell columns, ``param``, ``in_stack``,
    ``depths``, ``widths``, ``n_seeds``, ``nonfinite_seeds`` (seeds with a flagged
    row, left out), ``gamma, gamma_lo, gamma_hi``, ``alpha, alpha_lo, alpha_hi``
    (NaN with one width, or not fitted), ``r2``, ``verdict`` (:func:`classify`)
    and ``reason``.
  """
  if n_boot < 2:
    raise ValueError(f"n_boot must be >= 2, got {n_boot!r}")
  missing = [c for c in SWEEP_AXES if c not in frame.columns]
  if missing:
    raise ValueError(f"fit_groups needs the columns d and L of a depth sweep; missing {', '.join(missing)}")
  models = [c for c in cell_columns(frame) if c not in SWEEP_AXES]
  rows = []
  for model, part in (frame.groupby(models, sort=False) if models else [((), frame)]):
    model = dict(zip(models, model if isinstance(model, tuple) else (model,)))
    in_stack = part["layer"].notna().to_numpy()
    last = in_stack & (part["layer"].to_numpy(dtype=np.float64, na_value=np.nan) == part["L"].to_numpy())
    chosen = part[last | ~in_stack]
    groups = {key: _cells_of(group) for key, group in chosen.groupby([chosen["param"], chosen["layer"].notna()],
                                                                      sort=False)}
    scale = np.nanmedian([_largest(g[2]) for g in groups.values()])
    for (param, stacked), (cells, v_SxC, g_C, out) in groups.items():
      rng = np.random.default_rng([seed, zlib.crc32("/".join(map(str, (*model.values(), param))).encode())])
      rows.append({**model, "param": param, "in_stack": bool(stacked), **out,
                   **_fit_cells(cells, v_SxC, g_C, scale, n_boot, rng)})
  return pd.DataFrame(rows)


def _cells_of(group: pd.DataFrame) -> tuple:
  """(cells (d, L), values_SxC with NaN for flagged rows, per-cell means g_C, descriptive columns) of one group."""
  if group.duplicated(["d", "L", "seed"]).any():
    raise ValueError(f"several rows share (d, L, seed) for param {group['param'].iloc[0]!r}: "
                     "one array per group per layer is expected (name groups apart with layer_of=)")
  values = group["grad_norm"].where(~group["nonfinite"])
  values_SxC = group.assign(value=values).pivot(index="seed", columns=["d", "L"], values="value")
  cells = values_SxC.columns.to_frame(index=False)
  v_SxC = values_SxC.to_numpy(np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a cell with no finite seed -> NaN
    g_C = np.nanmean(v_SxC, axis=0)
  out = {"depths": ",".join(map(str, sorted(cells["L"].unique()))),
         "widths": ",".join(map(str, sorted(cells["d"].unique()))),
         "n_seeds": v_SxC.shape[0],
         "nonfinite_seeds": int(group.loc[group["nonfinite"], "seed"].nunique())}
  return cells, v_SxC, g_C, out


def _largest(g_C: np.ndarray) -> float:
  finite = g_C[np.isfinite(g_C)]
  return float(finite.max()) if finite.size else np.nan


def _fit_cells(cells, v_SxC, g_C, scale: float, n_boot: int, rng: np.random.Generator) -> dict:
  """The power-law fit, its words, and why not where it is not fitted."""
  nan3 = (np.nan, np.nan, np.nan)
  keep = np.isfinite(g_C) & (g_C > 0)
  top = _largest(g_C)
  if keep.any() and top < ZERO_RTOL * scale:
    fits, (verdict, reason) = {}, (NEITHER, f"zero up to float rounding (largest mean {top:.2g} < {ZERO_RTOL:g} x "
                                             f"the model's median group norm {scale:.2g})")
  else:
    d_C, L_C = cells["d"].to_numpy(np.float64)[keep], cells["L"].to_numpy(np.float64)[keep]
    fits = {}
    if np.unique(L_C).size >= 2:
      fits = fit.power_law_fit(d_C, L_C, g_C[keep], paired_bootstrap_means(v_SxC[:, keep], n_boot, rng))
    gamma = _estimate(fits, "gamma")
    verdict, reason = classify(None if np.isnan(gamma[0]) else gamma[1:])
    if not keep.all():
      reason += f"; {int((~keep).sum())} cells without a positive finite mean left out"
  gamma, alpha = (_estimate(fits, "gamma"), _estimate(fits, "alpha")) if fits else (nan3, nan3)
  return {"gamma": gamma[0], "gamma_lo": gamma[1], "gamma_hi": gamma[2],
          "alpha": alpha[0], "alpha_lo": alpha[1], "alpha_hi": alpha[2],
          "r2": np.nan if fits.get("r2") is None else fits["r2"], "verdict": verdict, "reason": reason}


def _interval(value: float, lo: float, hi: float) -> str:
  return "n/a" if np.isnan(value) else f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def report(groups: pd.DataFrame, frame: pd.DataFrame | None = None) -> str:
  """Plain-text verdicts of :func:`fit_groups`, one block per model, one line per parameter group.

  Args:
    groups: :func:`fit_groups`'s result.
    frame: the probe table it was fitted from, to count seeds with a non-finite loss.
  """
  lo_f, hi_f = FLAT_BAND
  lo_p, hi_p = PRE_BAND
  lines = [
      "Probe: gradient norm of each parameter group (inside the stack: at the last layer L) vs depth,",
      "g = C d^alpha L^-gamma, 95% paired-bootstrap CIs over seeds. Words: Post-LN-like if the CI of gamma",
      f"lies in [{lo_f:g}, {hi_f:g}], Pre-LN-like if it lies in [{lo_p:g}, {hi_p:g}], otherwise neither.",
  ]
  models = [c for c in groups.columns if c not in GROUP_COLUMNS]
  for model, part in (groups.groupby(models, sort=False) if models else [((), groups)]):
    model = model if isinstance(model, tuple) else (model,)
    first = part.iloc[0]
    name = ", ".join(f"{k}={v}" for k, v in zip(models, model)) or "model"
    lines.append(f"{name}: L in {{{first['depths']}}}, d in {{{first['widths']}}}, {first['n_seeds']} seeds")
    if frame is not None:
      mine = _rows_of(frame, dict(zip(models, model)))
      bad = mine.loc[~np.isfinite(mine["loss"]), ["d", "L", "seed"]].drop_duplicates()
      if len(bad):
        lines.append(f"  WARNING: {len(bad)} (d, L, seed) samples have a non-finite loss; their rows are flagged "
                     "nonfinite and left out of the fits.")
    width = max(len(p) for p in part["param"])
    for _, g in part.iterrows():
      where = "layer L" if g["in_stack"] else "outside"
      alpha = "" if np.isnan(g["alpha"]) else f", alpha = {_interval(g['alpha'], g['alpha_lo'], g['alpha_hi'])}"
      bad = f" ({g['nonfinite_seeds']} seeds with non-finite values)" if g["nonfinite_seeds"] else ""
      lines.append(f"  {g['param']:<{width}} ({where}): gamma = {_interval(g['gamma'], g['gamma_lo'], g['gamma_hi'])}"
                   f"{alpha} -> {g['verdict']}" + ("" if g["verdict"] != NEITHER else f": {g['reason']}") + bad)
  return "\n".join(lines)



# ----------------------------------------------------- for normtheory.plot


def to_grad_table(frame: pd.DataFrame, arch: str | None = None) -> pd.DataFrame:
  """A probe table in the layout of ``grad_norms.csv``, for :mod:`normtheory.plot` and :mod:`normtheory.fit`.

  Rows inside the layer stack with finite values are kept. ``arch`` is the label
  of each model (the value of the cell column ``arch``, or all model cell values
  joined by "/"; the names "post" and "pre" get normtheory's Post-/Pre-LN
  styles); ``loss`` is "probe" (so no mean-field overlay of normtheory's own
  model is drawn); ``n = 0`` and ``d_ff = d`` are placeholders the probe does not
  know; the other cell columns take ``schema.CELL_DEFAULTS``.

  Args:
    frame: a probe table with ``d`` and ``L`` (:func:`depth_sweep`).
    arch: the cell column that labels models (default: see above).

  Returns:
    Frame with the columns ``schema.GRAD_COLUMNS``.
  """
  models = [c for c in cell_columns(frame) if c not in SWEEP_AXES]
  rows = frame[frame["layer"].notna() & ~frame["nonfinite"]]
  if arch is not None:
    labels = rows[arch].astype(str)
  elif models:
    labels = rows[models].astype(str).agg("/".join, axis=1)
  else:
    labels = pd.Series("model", index=rows.index)
  out = pd.DataFrame({
      "arch": labels.to_numpy(), "loss": "probe", "d": rows["d"].to_numpy(), "L": rows["L"].to_numpy(), "n": 0,
      "d_ff": rows["d"].to_numpy(), **schema.CELL_DEFAULTS, "seed": rows["seed"].to_numpy(),
      "layer": rows["layer"].to_numpy(dtype=np.int64), "param": rows["param"].to_numpy(),
      "grad_norm": rows["grad_norm"].to_numpy(np.float64)})
  return out[list(schema.GRAD_COLUMNS)]
