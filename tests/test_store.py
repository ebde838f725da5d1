"""The results store: Frames, typed Parquet parts, footers as the index, selections pushed into the read, the
CSV layout of older stores (load, convert on first write, export)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

import normtheory as nt
from normtheory import cli, parts, schema, store

OLD_STORE = Path(__file__).parent / "data" / "store_8807192"
OLD_SETTINGS = {"dtype": "float32", "eps": 1e-6, "base_seed": 0, "prng": "threefry2x32", "vocab": 11, "tied": False}


def test_load_reads_every_table_meta_and_fits(tiny_store, tiny_frames, tmp_path):
  """Every table comes back in its contract layout, typed as schema.read_table types a CSV store (the
  store's own CSV export reads back equal), with meta.json and fits.json; tables the sweep did not write
  are empty with their columns."""
  exported = tmp_path / "csv"
  nt.export_csv(tiny_store, exported)
  assert sorted(p.name for p in exported.iterdir()) == ["fits.json", "grad_norms.csv", "hidden_norms.csv",
                                                        "ln_jacobian.csv", "meta.json"]
  for field, table in store.FRAME_TABLES.items():
    frame = getattr(tiny_frames, field)
    assert list(frame.columns) == list(schema.TABLES[table])
    if not frame.empty:
      pd.testing.assert_frame_equal(frame, schema.read_table(exported, table), check_exact=True)
  assert len(tiny_frames.grad) == 3 * 6 * 2 * 2 * (1 + 2 + 4)  # seeds x params x archs x widths x layers
  assert tiny_frames.depth.empty
  # LN Jacobians: post 2 LayerNorms per layer; pre 2 per layer plus the final one (seeds x widths x ...)
  assert len(tiny_frames.ln_jacobian) == 3 * 2 * (2 * (1 + 2 + 4)) + 3 * 2 * (2 * (1 + 2 + 4) + 3)
  assert tiny_frames.meta == json.loads((tiny_store / "meta.json").read_text())
  assert tiny_frames.fits == json.loads((tiny_store / "fits.json").read_text())
  pd.testing.assert_frame_equal(nt.load(exported).grad, tiny_frames.grad, check_exact=True)


def test_every_table_folder_is_one_parquet_table_for_other_tools(tiny_store, tiny_frames):
  """pandas reads a table's folder as one table (what polars, DuckDB and R do too): the same rows as nt.load."""
  other = pd.read_parquet(tiny_store / "grad_norms")
  assert len(other) == len(tiny_frames.grad)
  np.testing.assert_array_equal(np.sort(other["grad_norm"].to_numpy()), np.sort(tiny_frames.grad["grad_norm"].to_numpy()))


def test_a_selection_reads_the_rows_a_pandas_filter_keeps(tiny_store, tiny_frames):
  """store.read with columns and a filter (pushed into the Parquet scan) equals the pandas selection of nt.load."""
  grad = tiny_frames.grad
  got = store.read(tiny_store, schema.GRAD_FILE, where=store.last_layer("W2"))
  expected = grad[(grad.param == "W2") & (grad.layer == grad.L)].reset_index(drop=True)
  pd.testing.assert_frame_equal(got, expected, check_exact=True)
  hidden = tiny_frames.hidden
  got = store.read(tiny_store, schema.HIDDEN_FILE, columns=["d", "L", "sq_norm"],
                   where=(pc.field("arch") == "pre") & (pc.field("layer") == pc.field("L") + 1))
  kept = hidden[(hidden.arch == "pre") & (hidden.layer == hidden.L + 1)][["d", "L", "sq_norm"]].reset_index(drop=True)
  pd.testing.assert_frame_equal(got, kept, check_exact=True)


@pytest.mark.parametrize("which", ["parts", "csv"])
def test_a_cell_reads_its_rows_of_the_whole_table_opening_only_the_parts_that_hold_it(which, tiny_store, monkeypatch):
  """Contents.cells lists a table's cells (from the footers; a CSV table from its rows), and read_cell gives each
  cell's rows of the whole table, in its order, reading only parts whose footers hold the cell."""
  path = tiny_store if which == "parts" else OLD_STORE
  contents, hidden = store.Contents(path), nt.load(path).hidden
  keys = list(schema.CELL_COLUMNS)
  assert contents.cells(schema.HIDDEN_FILE) == set(hidden[keys].drop_duplicates().itertuples(index=False, name=None))
  read, opened = parts.read, []
  monkeypatch.setattr(parts, "read", lambda some, *a, **k: opened.append(some) or read(some, *a, **k))
  for cell in contents.cells(schema.HIDDEN_FILE):
    got = contents.read_cell(schema.HIDDEN_FILE, cell, ["seed", "layer", "sq_norm"], pc.field("layer") > 1)
    rows = hidden[(hidden[keys] == pd.Series(cell, index=keys)).all(axis=1) & (hidden.layer > 1)]
    pd.testing.assert_frame_equal(got, rows[["seed", "layer", "sq_norm"]].reset_index(drop=True), check_exact=True)
    assert all(any(pair[:-1] == cell for pair in part.pairs) for some in opened for part in some)
    opened.clear()
  assert len(contents.cells(schema.HIDDEN_FILE)) > 1


def test_the_stored_pairs_come_from_the_footers_alone(tiny_store, tiny_frames, monkeypatch):
  """Listing the stored (cell, seed) pairs reads no value: with every value read disabled it equals the pairs
  of the loaded rows."""
  expected = {}
  for row in tiny_frames.grad[list(parts.key_columns())].drop_duplicates().itertuples(index=False):
    expected.setdefault(tuple(row[:-1]), set()).add(row[-1])
  monkeypatch.setattr(parts, "read", lambda *a, **k: pytest.fail("a value was read"))
  opened = store.ResultsStore(tiny_store, {"dtype": "float32", "eps": 1e-6, "base_seed": 0, "prng": "threefry2x32",
                                           "vocab": 1000})
  assert opened.stored_seeds() == expected


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


def _chunk(cell_seed_rows: list[tuple[int, float]]) -> dict[str, pd.DataFrame]:
  """One chunk's grad and hidden rows of the cell (pre, d = 8, L = 1): (seed, value) per row."""
  given = {"arch": "pre", "loss": "linear", "d": 8, "L": 1, "n": 4, "d_ff": 8}
  cell = {column: given.get(column, schema.CELL_DEFAULTS.get(column)) for column in schema.CELL_COLUMNS}
  grad = pd.DataFrame([{**cell, "seed": s, "layer": 1, "param": "W2", "grad_norm": v} for s, v in cell_seed_rows])
  hidden = pd.DataFrame([{**cell, "seed": s, "layer": 1, "sq_norm": v} for s, v in cell_seed_rows])
  return {schema.HIDDEN_FILE: hidden, schema.GRAD_FILE: grad}


def test_a_chunk_cut_short_is_ignored_then_removed_and_stored_pairs_are_never_written_twice(tmp_path):
  """A part whose chunk has no grad-norm part (killed between the renames) and a temporary file are not read
  and go at the next write; a chunk's rows of a pair already stored are left out; nothing is rewritten."""
  out = tmp_path / "store"
  opened = store.ResultsStore(out, OLD_SETTINGS)
  opened.write_chunk(_chunk([(0, 1.0), (1, 2.0)]))
  first = sorted((out / "grad_norms").iterdir())
  orphan = parts.write_part(out, schema.HIDDEN_FILE, parts.new_id(), _chunk([(2, 9.0)])[schema.HIDDEN_FILE])
  temporary = out / "grad_norms" / ".part-x.parquet.tmp"
  temporary.write_bytes(b"half a part")
  frames = nt.load(out)
  assert sorted(frames.hidden.seed) == [0, 1] and sorted(frames.grad.seed) == [0, 1]
  reopened = store.ResultsStore(out, OLD_SETTINGS)
  before = {p: p.read_bytes() for p in first}
  reopened.write_chunk(_chunk([(1, 7.0), (2, 3.0)]))
  assert not orphan.exists() and not temporary.exists()
  assert {p: p.read_bytes() for p in first} == before
  frames = nt.load(out)
  assert frames.grad.sort_values("seed").grad_norm.tolist() == [1.0, 2.0, 3.0]
  assert frames.hidden.sort_values("seed").sq_norm.tolist() == [1.0, 2.0, 3.0]


def test_the_committed_old_csv_store_loads_resumes_and_converts_on_its_first_write(tmp_path, monkeypatch):
  """tests/data/store_8807192 (CSVs, as written before Parquet): it loads as read_table reads it; the
  first write converts it (a write that dies before the converted grad-norm part is in place leaves the
  CSVs and a store that loads as before); after the conversion the CSVs are gone and the rows are the old
  ones plus the new chunk, bit for bit."""
  old = tmp_path / "old"
  shutil.copytree(OLD_STORE, old)
  csv = {table: schema.read_table(OLD_STORE, table) for table in schema.TABLES if (OLD_STORE / table).exists()}
  frames = nt.load(old)
  for field, table in store.FRAME_TABLES.items():
    if table in csv:
      pd.testing.assert_frame_equal(getattr(frames, field), csv[table], check_exact=True)
  opened = store.ResultsStore(old, OLD_SETTINGS)
  assert len(opened.stored_seeds()) == 6 * 3 * 2 and all(s == {0, 1} for s in opened.stored_seeds().values())
  real = parts.write_part

  def dies_at_the_grad_part(directory, table, part_id, frame):
    if table == schema.GRAD_FILE:
      raise KeyboardInterrupt
    return real(directory, table, part_id, frame)

  monkeypatch.setattr(parts, "write_part", dies_at_the_grad_part)
  with pytest.raises(KeyboardInterrupt):
    opened.write_chunk(_chunk([(5, 1.5)]))
  monkeypatch.setattr(parts, "write_part", real)
  assert all((old / table).exists() for table in csv)
  pd.testing.assert_frame_equal(nt.load(old).grad, csv[schema.GRAD_FILE], check_exact=True)
  store.ResultsStore(old, OLD_SETTINGS).write_chunk(_chunk([(5, 1.5)]))
  assert not any((old / table).exists() for table in csv)
  converted = nt.load(old)
  pd.testing.assert_frame_equal(converted.grad.iloc[: len(csv[schema.GRAD_FILE])], csv[schema.GRAD_FILE], check_exact=True)
  pd.testing.assert_frame_equal(converted.depth, csv[schema.DEPTH_FILE], check_exact=True)
  assert converted.grad.iloc[-1].seed == 5 and len(converted.grad) == len(csv[schema.GRAD_FILE]) + 1
  assert converted.meta["settings"] == json.loads((OLD_STORE / "meta.json").read_text())["settings"]


def test_a_cell_column_added_with_a_default_reads_old_parquet_and_csv_stores(tiny_store, tmp_path, monkeypatch):
  """Adding a cell column is one schema line (CELL_COLUMNS and its CELL_DEFAULTS value): parts and CSVs written
  without it read with the default, and their stored pairs carry it (a fake column "fake" here)."""
  exported = tmp_path / "csv"
  nt.export_csv(tiny_store, exported)
  cells = (*schema.CELL_COLUMNS, "fake")
  monkeypatch.setattr(schema, "CELL_COLUMNS", cells)
  monkeypatch.setattr(schema, "CELL_DEFAULTS", {**schema.CELL_DEFAULTS, "fake": "old"})
  monkeypatch.setattr(schema, "TABLES", {t: (*cells, *c[len(cells) - 1:]) for t, c in schema.TABLES.items()})
  for directory in (tiny_store, exported):
    hidden = store.read(directory, schema.HIDDEN_FILE, where=pc.field("fake") == "old")
    assert list(hidden.columns) == list(schema.TABLES[schema.HIDDEN_FILE]) and len(hidden) == 3 * 2 * 2 * (2 + 3 + 5)
    assert set(hidden["fake"]) == {"old"}
    assert store.read(directory, schema.HIDDEN_FILE, where=pc.field("fake") == "new").empty
    pairs = store.Contents(directory).pairs()
    assert len(pairs) == 3 * 12 and {p[len(cells) - 1] for p in pairs} == {"old"}


@pytest.mark.slow
def test_the_cli_resumes_the_committed_old_csv_store_and_reports_on_it(tmp_path, capsys):
  """The sweep CLI on tests/data/store_8807192 with one more seed: only seed 2 of the asked cells is measured,
  the store is converted (no CSV left), every old row is kept bit for bit, and the fits are written."""
  old = tmp_path / "old"
  shutil.copytree(OLD_STORE, old)
  before = nt.load(old)
  argv = ["--arch", "post", "--loss", "linear", "--d", "8", "--L", "1,3", "--seeds", "3", "--n", "4", "--vocab", "11",
          "--seed", "0", "--prng", "threefry2x32", "--n-boot", "10", "--out", str(old)]
  assert cli.main(argv) == 0
  assert "2 cells: 0 already stored" in capsys.readouterr().out
  after = nt.load(old)
  assert not list(old.glob("*.csv")) and (old / "fits.json").exists()
  pd.testing.assert_frame_equal(after.grad.iloc[: len(before.grad)], before.grad, check_exact=True)
  new = after.grad.iloc[len(before.grad):]
  assert set(new.seed) == {2} and set(zip(new.arch, new.L)) == {("post", 1), ("post", 3)}


def test_a_merge_cut_short_between_its_renames_is_completed_by_the_next_merge(tmp_path):
  """Process parts merge by renaming their files, grad norms last: a merge killed after moving a chunk's
  hidden-norm part (its grad part still in the process's folder) leaves that part in DIR, not removed as an
  orphan by the next write, and the next merge commits it; every row once, nothing lost."""
  from normtheory import distributed

  out = tmp_path / "store"
  for process, seeds in enumerate([[(0, 1.0)], [(1, 2.0)]]):
    store.ResultsStore(distributed.part_dir(out, process), OLD_SETTINGS).write_chunk(_chunk(seeds))
  hidden = next((out / "parts" / "process-1" / "hidden_norms").iterdir())
  (out / "hidden_norms").mkdir(parents=True)
  hidden.rename(out / "hidden_norms" / hidden.name)  # the merge died here
  main = store.ResultsStore(out, OLD_SETTINGS)
  assert main.stored_seeds() == {}
  merged = distributed.merge_parts(out, OLD_SETTINGS)
  frames = nt.load(out)
  assert sorted(frames.grad.seed) == [0, 1] and sorted(frames.hidden.seed) == [0, 1]
  assert not (out / "parts").exists() and {s for v in merged.stored_seeds().values() for s in v} == {0, 1}
