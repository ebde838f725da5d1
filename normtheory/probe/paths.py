"""Where each parameter array of a model sits: its layer of the stack, and its parameter group.

Rules (:func:`layout`):

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
   (ties: the deepest, so ``layers/W2`` has param ``W2``). Without
   ``num_layers`` this needs the ``axis=`` hint (then any common length).
   ``param`` is the path below that subtree; each slice along ``axis`` is a layer.

Layers are numbered 1..L from the bottom as in every normtheory table (1 + the
rank of the index among the stack's indices: a list's ``layers/0`` is layer 1 and
``layers/3`` layer 4; slice ``k`` of a stacked array is layer ``k + 1``). Arrays
outside the stack (embeddings, a final norm, a read-out) have no layer and
``param`` = their full path. Only parameters in which no stack is found at all
raise :class:`LayoutError`, naming what was looked for. ``layer_of(path) -> None |
(layer, param) | (STACKED, param)`` overrides the rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

import jax
import numpy as np

STACKED = "stacked"  # layer_of's marker of an array stacked along `axis`, one layer per slice
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
    length = num_layers if num_layers is not None else "K"
    stacked = f"a subtree whose arrays all have length {length} along axis {axis or 0}: none"
  paths = ", ".join(f"{_join(c)} {s}" for c, s in flat[:12]) + (", ..." if len(flat) > 12 else "")
  looked = ("" if axis is not None else
            "(1) a list or dict of layers: a path component above the array that is an integer or ends in "
            f"_<integer>, with {size}{found}; ")
  return (f"no layer stack found among {len(flat)} parameter arrays. Looked for {looked}"
          f"(2) stacked layers: {stacked}. Parameters: {paths}. "
          "Pass num_layers=, axis= or layer_of=(path -> None | (layer, param) | (STACKED, param)).")


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

  Example:
    Sibling lists of arrays, ``{"ws": [w_0, ..], "bs": [b_0, ..]}``, are not a
    stack by the rules (the index is the array itself); name them with::

      layer_of=lambda path: (int(path.split("/")[1]) + 1, path.split("/")[0])
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
