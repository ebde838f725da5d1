"""The table contract: cell columns, old layouts upgraded with defaults, bad headers refused."""

import numpy as np
import pandas as pd
import pytest

from normtheory import schema
from normtheory.config import Config

OLD_GRAD_HEADER = "arch,loss,d,L,n,d_ff,seed,layer,param,grad_norm"


def test_cell_of_a_config_holds_every_cell_column_with_the_theorem_defaults():
  """cell_of(Config()) names every cell column; the fields added later default to the theorem's setting."""
  cell = schema.cell_of(Config(arch="post", d=32, L=3))
  assert tuple(cell) == schema.CELL_COLUMNS
  assert {k: cell[k] for k in schema.CELL_DEFAULTS} == schema.CELL_DEFAULTS


def test_tidy_frame_has_one_row_per_label_seed_and_layer_in_table_order():
  """(labels x seeds x layers) rows, values where they belong, columns exactly TABLES[table]."""
  cfg = Config(d=8, L=2)
  values = {"W1": np.array([[1.0, 2.0], [3.0, 4.0]]), "W2": np.array([[5.0, 6.0], [7.0, 8.0]])}
  frame = schema.tidy_frame(schema.GRAD_FILE, schema.cell_of(cfg), [4, 9], [1, 2], values, "param")
  assert list(frame.columns) == list(schema.GRAD_COLUMNS)
  assert len(frame) == 8
  row = frame[(frame.param == "W2") & (frame.seed == 9) & (frame.layer == 1)]
  assert row.grad_norm.item() == 7.0
  with pytest.raises(ValueError, match="shape"):
    schema.tidy_frame(schema.HIDDEN_FILE, schema.cell_of(cfg), [0], [1, 2], np.ones((2, 2)))


def test_a_store_written_before_the_new_columns_loads_with_their_defaults(tmp_path):
  """An old-layout grad_norms.csv reads as the new layout, the added columns at their defaults."""
  (tmp_path / schema.GRAD_FILE).write_text(f"{OLD_GRAD_HEADER}\npre,linear,8,1,4,8,0,1,W2,0.5\n")
  frame = schema.read_table(tmp_path, schema.GRAD_FILE)
  assert list(frame.columns) == list(schema.GRAD_COLUMNS)
  assert frame.loc[0, ["batch", "attention", "heads", "inputs", "grad_norm"]].tolist() == [1, "uniform", 1, "gaussian", 0.5]


@pytest.mark.parametrize("text", ["arch,loss,d,L,n,d_ff,seed,layer,param,wrong\n", "arch,d\npre,8\n"])
def test_a_header_from_another_table_or_version_is_refused_naming_the_file(tmp_path, text):
  """A header that is no layout of the table raises StoreError naming the file."""
  (tmp_path / schema.GRAD_FILE).write_text(text)
  with pytest.raises(schema.StoreError, match="grad_norms.csv"):
    schema.read_table(tmp_path, schema.GRAD_FILE)


def test_a_missing_table_reads_as_empty_with_its_columns(tmp_path):
  frame = schema.read_table(tmp_path, schema.LN_JACOBIAN_FILE)
  assert frame.empty and list(frame.columns) == list(schema.LN_JACOBIAN_COLUMNS)


def test_with_defaults_keeps_a_current_frame_unchanged():
  frame = pd.DataFrame([dict(zip(schema.HIDDEN_COLUMNS, ["pre", "linear", 8, 1, 4, 8, 2, "xavier", 2, "text", "dyt",
                                                          "swiglu", 1, "rope", 0, 1, 1.5]))])
  pd.testing.assert_frame_equal(schema.with_defaults(frame, schema.HIDDEN_FILE), frame)
