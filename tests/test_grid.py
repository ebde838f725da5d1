"""The grid grammar of --d / --L (property-based)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normtheory.grid import parse_grid


def test_documented_examples():
  """The README's examples expand as documented."""
  assert parse_grid("6..96") == [6, 12, 24, 48, 96]
  assert parse_grid("6..96:6") == list(range(6, 97, 6))
  assert parse_grid("4..100*3") == [4, 12, 36]
  assert parse_grid("512") == [512]
  assert parse_grid("6,12,18") == [6, 12, 18]
  assert parse_grid("1..4,10") == [1, 2, 4, 10]


@given(st.integers(1, 10_000), st.integers(0, 20_000), st.integers(2, 5))
def test_geometric_range_is_every_power_up_to_the_end(start, extra, factor):
  """A..B*F is exactly {A·F^k : A·F^k <= B}, ascending, starting at A."""
  stop = start + extra
  values = parse_grid(f"{start}..{stop}*{factor}")
  assert values[0] == start and values[-1] <= stop < values[-1] * factor
  assert all(b == a * factor for a, b in zip(values, values[1:]))
  if factor == 2:
    assert parse_grid(f"{start}..{stop}") == values


@given(st.integers(1, 1000), st.integers(0, 1000), st.integers(1, 50))
def test_arithmetic_range_matches_python_range(start, extra, step):
  """A..B:S equals range(A, B+1, S)."""
  assert parse_grid(f"{start}..{start + extra}:{step}") == list(range(start, start + extra + 1, step))


@given(st.lists(st.integers(1, 500), min_size=1, max_size=6))
def test_comma_list_is_sorted_and_deduplicated(values):
  """A comma list gives its distinct values in ascending order."""
  assert parse_grid(",".join(map(str, values))) == sorted(set(values))


@pytest.mark.parametrize("text", ["96..6", "0", "abc", "-4", "6..96:0", "6..96*1", "", "1..", "2..8*x"])
def test_bad_expressions_raise_value_error_naming_the_flag(text):
  """Backwards ranges, values below the minimum, garbage and zero steps raise ValueError naming the flag."""
  with pytest.raises(ValueError, match="--L"):
    parse_grid(text, "--L", minimum=1)
