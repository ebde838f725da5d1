"""nt.load reads a whole results store into Frames; Frames has a field for every table of the contract."""

import json

import pandas as pd
import pytest

import normtheory as nt
from normtheory import schema, store


def test_load_reads_every_table_meta_and_fits(tiny_store, tiny_frames):
  """Every table comes back in its contract layout (equal to schema.read_table), with meta.json and
  fits.json; tables the sweep did not write are empty with their columns."""
  for field, table in store.FRAME_TABLES.items():
    frame = getattr(tiny_frames, field)
    assert list(frame.columns) == list(schema.TABLES[table])
    pd.testing.assert_frame_equal(frame, schema.read_table(tiny_store, table))
  assert len(tiny_frames.grad) == 3 * 6 * 2 * 2 * (1 + 2 + 4)  # seeds x params x archs x widths x layers
  assert tiny_frames.depth.empty
  # LN Jacobians: post 2 LayerNorms per layer; pre 2 per layer plus the final one (seeds x widths x ...)
  assert len(tiny_frames.ln_jacobian) == 3 * 2 * (2 * (1 + 2 + 4)) + 3 * 2 * (2 * (1 + 2 + 4) + 3)
  assert tiny_frames.meta == json.loads((tiny_store / "meta.json").read_text())
  assert tiny_frames.fits == json.loads((tiny_store / "fits.json").read_text())


def test_frames_has_a_field_for_every_table_of_the_contract():
  """A table added to schema.TABLES needs its Frames field (else load and measure_grid would drop it)."""
  assert sorted(store.FRAME_TABLES.values()) == sorted(schema.TABLES)
  assert list(nt.Frames._fields) == [*store.FRAME_TABLES, "meta", "fits"]
  with pytest.raises(ValueError, match="probe_norms.csv"):
    nt.Frames.from_tables({"probe_norms.csv": pd.DataFrame()})


def test_load_upgrades_an_old_layout_and_refuses_what_it_cannot_read(tmp_path):
  """A store written before the newer cell columns loads with their defaults; a missing directory raises
  FileNotFoundError, a meta.json that is not JSON a StoreError naming the file."""
  with pytest.raises(FileNotFoundError, match="no results directory"):
    nt.load(tmp_path / "nowhere")
  (tmp_path / "grad_norms.csv").write_text("arch,loss,d,L,n,d_ff,seed,layer,param,grad_norm\npre,linear,8,1,4,8,0,1,W2,0.5\n")
  frames = nt.load(tmp_path)
  assert frames.grad.loc[0, ["heads", "inputs", "grad_norm"]].tolist() == [1, "gaussian", 0.5]
  assert frames.hidden.empty and frames.meta is None and frames.fits is None
  (tmp_path / "meta.json").write_text('{"settings": ')
  with pytest.raises(schema.StoreError, match="meta.json"):
    nt.load(tmp_path)
