"""The grid grammar of the sweep CLI: ``512``, ``6,12,18``, ``6..96``, ``6..96:6``, ``4..64*4``.

* ``N``: one value;  ``A,B,C``: a list (each item may itself be a range);
* ``A..B``: doubling, A·2^k for every k with A·2^k <= B (``6..96`` = 6,12,24,48,96);
* ``A..B:S``: arithmetic, A, A+S, ... <= B;   ``A..B*F``: geometric, A·F^k <= B (F > 1).
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)\.\.(\d+)(?:([:*])(\d+))?$")


def parse_grid(text: str, name: str = "value", minimum: int = 1) -> list[int]:
  """Expand a grid expression into a sorted list of distinct integers.

  Args:
    text: the expression.
    name: the flag's name, for error messages.
    minimum: the smallest value allowed.

  Returns:
    the values, ascending, without repeats.

  Raises:
    ValueError: with a one-line message naming ``name`` and the accepted forms.
  """
  forms = "N, A,B,C, A..B (doubling), A..B:S (step S), A..B*F (factor F)"
  values: set[int] = set()
  items = str(text).strip().split(",")
  for item in items:
    item = item.strip()
    if re.fullmatch(r"-?\d+", item):
      values.add(int(item))
      continue
    match = _RANGE.match(item)
    if not match:
      raise ValueError(f"{name}: cannot parse {item!r}; use integers >= {minimum} as {forms}")
    start, stop, op, arg = int(match[1]), int(match[2]), match[3], match[4]
    if start > stop:
      raise ValueError(f"{name}: range {item!r} runs backwards; write A..B with A <= B")
    if op == ":":
      step = int(arg)
      if step < 1:
        raise ValueError(f"{name}: step in {item!r} must be >= 1")
      values.update(range(start, stop + 1, step))
      continue
    factor = 2 if op is None else int(arg)
    if factor < 2 or start < 1:
      raise ValueError(f"{name}: geometric range {item!r} needs A >= 1 and factor >= 2")
    value = start
    while value <= stop:
      values.add(value)
      value *= factor
  bad = sorted(v for v in values if v < minimum)
  if bad:
    raise ValueError(f"{name}: {bad[0]} is not allowed; values must be integers >= {minimum}")
  return sorted(values)
