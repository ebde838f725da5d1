"""Sweep reliability: out-of-memory retries, failed cells, non-finite values, multi-host merge; stores that
cannot be trusted, locked stores, and figures from stores that cannot be drawn."""

import errno
import fcntl
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from normtheory import cli, distributed, engine, parts, plot, prng, schema, store, sweep
from normtheory.config import Config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "grad_scaling.py"

# The grid of tests/conftest.py's tiny store, so these runs reuse its compiled steps.
TINY = ["--d", "8,16", "--L", "1..4", "--seeds", "3", "--n", "4", "--n-boot", "10", "--quiet"]
real_measure_archs = engine.measure_archs


@pytest.mark.slow
def test_out_of_memory_halves_the_chunk_and_retries(tmp_path, tiny_store, monkeypatch, capsys):
  """A RESOURCE_EXHAUSTED error on a chunk retries with half the chunk, says so, and stores the numbers of
  the tiny store (the same grid, every seed in one call)."""
  calls = []

  def flaky(cfg, archs, depths, seeds, key, chunk=None, **memory):
    calls.append(chunk)
    if chunk > 1:
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory allocating 1 TiB (simulated)")
    return real_measure_archs(cfg, archs, depths, seeds, key, chunk, **memory)

  monkeypatch.setattr(engine, "measure_archs", flaky)
  assert cli.main([*TINY, "--out", str(tmp_path / "retried"), "--chunk", "2"]) == 0
  assert calls[:2] == [2, 1]
  assert "retrying with 1" in capsys.readouterr().err
  in_order = lambda frame: frame.sort_values([*parts.key_columns(), "layer", "param"]).reset_index(drop=True)
  clean = in_order(store.read(tiny_store, schema.GRAD_FILE))
  retried = in_order(store.read(tmp_path / "retried", schema.GRAD_FILE))
  pd.testing.assert_frame_equal(clean, retried)


@pytest.mark.slow
def test_failed_cells_exit_1_after_storing_every_other_cell(tmp_path, monkeypatch, capsys):
  """A pass that raises is reported; the other cells are stored; the process exits non-zero."""

  def broken_for_d16(cfg, archs, depths, seeds, key, chunk=None, **memory):
    if cfg.d == 16:
      raise FloatingPointError("simulated failure")
    return real_measure_archs(cfg, archs, depths, seeds, key, chunk, **memory)

  monkeypatch.setattr(engine, "measure_archs", broken_for_d16)
  out = tmp_path / "partial"
  assert cli.main([*TINY, "--out", str(out)]) == 1
  assert "simulated failure" in capsys.readouterr().err
  grad = store.read(out, schema.GRAD_FILE)
  assert set(grad.d) == {8} and grad.groupby(["arch", "L"]).ngroups == 6
  meta = json.loads((out / "meta.json").read_text())
  assert any("failed_cells" in p for p in meta["problems"])


@pytest.mark.slow
def test_nonfinite_norms_are_flagged_never_averaged(tmp_path, nan_in_pre_w2, capsys):
  """A NaN norm is stored as NaN, warned about, listed in meta.json, shown as NON-FINITE in the summary,
  and left out of the fits (with a count)."""
  out = tmp_path / "nan"
  assert cli.main([a for a in TINY if a != "--quiet"] + ["--out", str(out)]) == 0
  captured = capsys.readouterr()
  assert "non-finite values in pre loss=linear d=8 L=2: W2 x1" in captured.err
  assert "NON-FINITE x1" in captured.out
  assert "1 non-finite values were left out" in captured.out
  grad = store.read(out, schema.GRAD_FILE)
  assert grad.grad_norm.isna().sum() == 1
  assert any("nonfinite" in p for p in json.loads((out / "meta.json").read_text())["problems"])


@pytest.mark.slow
def test_merged_process_parts_equal_a_single_process_run(tmp_path, tiny_store):
  """Two processes' parts (seeds split s % 2) merged by process 0 equal one process measuring all seeds.
  (After the session's tiny store: its d = 8 programs, three seeds per call, are the ones run here.)"""
  settings = {"dtype": "float32", "eps": 1e-6, "base_seed": 0, "prng": "threefry2x32", "vocab": 1000}
  base = Config(d=8, n=4)
  key = prng.make_key(0, "threefry2x32")
  for process, seeds in enumerate([{0, 2, 4}, {1, 3, 5}]):
    part = store.ResultsStore(distributed.part_dir(tmp_path / "multi", process), settings)
    passes, _ = sweep.plan(base, ["post", "pre"], ["linear"], [8], [1, 2, 4], seeds, {})
    assert not sweep.run(passes, part, key, None)
  merged = distributed.merge_parts(tmp_path / "multi", settings).read()
  assert not (tmp_path / "multi" / "parts").exists()
  single = store.ResultsStore(tmp_path / "single", settings)
  passes, _ = sweep.plan(base, ["post", "pre"], ["linear"], [8], [1, 2, 4], range(6), {})
  sweep.run(passes, single, key, 3)
  keys = ["arch", "loss", "d", "L", "n", "d_ff", "seed", "layer", "param"]
  a = merged.sort_values(keys).reset_index(drop=True)
  b = single.read().sort_values(keys).reset_index(drop=True)
  pd.testing.assert_frame_equal(a, b, check_exact=True)
  assert distributed.my_seeds(5) == {0, 1, 2, 3, 4}  # one process takes every seed


# --- The store under bad or concurrent use -------------------------------------------------------

# The session's tiny store (conftest) holds every cell of this grid: a sweep of STORE_ARGS on a copy of it
# measures nothing. Tests copy it before they change it.
STORE_ARGS = ["--d", "8", "--L", "1,2", "--seeds", "2", "--n", "4", "--n-boot", "10", "--quiet"]


def snapshot(directory: Path) -> dict[str, bytes]:
  """Every file under ``directory`` (hidden ones included), path -> bytes."""
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _replace_line(text: str, number: int, edit) -> str:
  lines = text.splitlines(keepends=True)
  lines[number] = edit(lines[number])
  return "".join(lines)


def _field(line: str, column: int, value: str) -> str:
  fields = line.rstrip("\n").split(",")
  fields[column] = value
  return ",".join(fields) + "\n"


CORRUPTIONS = {
    # name: (file, edit of its text or bytes, words the error line must hold)
    "truncated last line": ("grad_norms.csv", lambda t: t[: len(t) - 7], "truncated"),
    "missing field": ("grad_norms.csv", lambda t: _replace_line(t, 3, lambda l: l.rsplit(",", 1)[0] + "\n"), "line 4"),
    "extra field": ("hidden_norms.csv", lambda t: _replace_line(t, 2, lambda l: l.rstrip("\n") + ",7\n"), "line 3"),
    "non-numeric value": ("grad_norms.csv", lambda t: _replace_line(t, 5, lambda l: _field(l, schema.GRAD_COLUMNS.index("grad_norm"), "0.5x")),
                          "line 6, column grad_norm"),
    "non-integer width": ("hidden_norms.csv", lambda t: _replace_line(t, 1, lambda l: _field(l, 2, "8.5")), "column d"),
    "NaN seed": ("grad_norms.csv", lambda t: _replace_line(t, 2, lambda l: _field(l, schema.GRAD_COLUMNS.index("seed"), "")), "column seed"),
    "infinite layer": ("grad_norms.csv", lambda t: _replace_line(t, 4, lambda l: _field(l, schema.GRAD_COLUMNS.index("layer"), "inf")),
                       "line 5, column layer"),
    "empty arch": ("grad_norms.csv", lambda t: _replace_line(t, 2, lambda l: _field(l, 0, "")), "column arch"),
    "repeated row": ("grad_norms.csv", lambda t: t + t.splitlines(keepends=True)[1], "repeats the key"),
    "header of another version": ("grad_norms.csv", lambda t: t.replace("grad_norm\n", "gradient_norm\n", 1), "header"),
    "empty file": ("hidden_norms.csv", lambda t: "", "empty file"),
    "not UTF-8": ("grad_norms.csv", lambda t: t.encode() + b"\xff\xfe,\n", "UTF-8"),
    "meta.json not JSON": ("meta.json", lambda t: t[: len(t) // 2], "not JSON"),
    "meta.json without settings": ("meta.json", lambda t: json.dumps({"runs": []}), "settings"),
    "meta.json missing": ("meta.json", None, "missing"),
}


@pytest.fixture(scope="module")
def csv_template(tiny_store, tmp_path_factory):
  """The template store in the CSV layout of stores written before Parquet (its own export)."""
  out = tmp_path_factory.mktemp("csv_template") / "store"
  store.export_csv(tiny_store, out)
  return out


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_csv_store_that_cannot_be_trusted_is_refused_with_one_line_and_left_byte_for_byte(
    csv_template, tmp_path, stderr_line, name):
  """A store of the older CSV layout with a truncated or malformed table, a meta.json that is not JSON / has no
  settings / is missing, or columns of another version: exit status 2, one stderr line naming the file, and
  every byte of the store unchanged (no lock file, temporary file or conversion left behind)."""
  out = tmp_path / "store"
  shutil.copytree(csv_template, out)
  filename, edit, words = CORRUPTIONS[name]
  target = out / filename
  if edit is None:
    target.unlink()
  else:
    edited = edit(target.read_text())
    target.write_bytes(edited if isinstance(edited, bytes) else edited.encode())
  before = snapshot(out)
  assert cli.main([*STORE_ARGS, "--out", str(out)]) == 2
  line = stderr_line()
  assert filename in line and words in line, line
  assert snapshot(out) == before


def _one_part(out: Path, table: str = schema.GRAD_FILE) -> Path:
  return sorted((out / parts.folder(table)).glob("part-*.parquet"))[0]


def _rewrite(path: Path, edit) -> None:
  """Replace a part by a file pyarrow writes from ``edit(table)`` (its footer record kept unless edit drops it)."""
  pq.write_table(edit(pq.read_table(path)), path)


def _copy_of_a_part(out: Path) -> None:
  source = _one_part(out)
  shutil.copy(source, source.parent / f"{parts.new_id()}.parquet")


PART_CORRUPTIONS = {
    # name: (edit of the store, words the error line must hold); the line names the part it refuses
    "truncated part": (lambda out: _one_part(out).write_bytes(_one_part(out).read_bytes()[:-100]), "not a readable Parquet"),
    "not Parquet": (lambda out: _one_part(out, schema.HIDDEN_FILE).write_bytes(b"arch,loss\n"), "not a readable Parquet"),
    "no footer record": (lambda out: _rewrite(_one_part(out), lambda t: t.replace_schema_metadata(None)), "no readable normtheory"),
    "rows not its record's": (lambda out: _rewrite(_one_part(out), lambda t: t.slice(1)), "rows, its footer record says"),
    "column of another type": (lambda out: _rewrite(_one_part(out), lambda t: t.set_column(2, "d", t.column(2).cast("float64"))),
                               "column d is double"),
    "column renamed": (lambda out: _rewrite(_one_part(out), lambda t: t.rename_columns([*t.column_names[:-1], "norm"])),
                       "columns are"),
    "pairs stored twice": (_copy_of_a_part, "repeats"),
}


@pytest.mark.parametrize("name", list(PART_CORRUPTIONS))
def test_a_part_that_cannot_be_trusted_is_refused_with_one_line_and_left_byte_for_byte(
    tiny_store, tmp_path, stderr_line, name):
  """A half-written or unreadable part, one without its footer record or disagreeing with it, one of another
  layout, or a part that repeats stored (cell, seed) pairs: exit status 2, one stderr line naming that file,
  and every byte of the store unchanged."""
  out = tmp_path / "store"
  shutil.copytree(tiny_store, out)
  edit, words = PART_CORRUPTIONS[name]
  files = set(out.rglob("*.parquet"))
  edit(out)
  changed = [p for p in out.rglob("*.parquet") if p not in files or p.read_bytes() != (tiny_store / p.relative_to(out)).read_bytes()]
  before = snapshot(out)
  assert cli.main([*STORE_ARGS, "--out", str(out)]) == 2
  line = stderr_line()
  assert words in line and any(str(p) in line for p in changed), line
  assert snapshot(out) == before


def test_the_value_column_keeps_nan_and_inf_but_key_columns_do_not(tmp_path):
  """Non-finite measurements are stored as measured (empty field, nan, inf, -inf read back as such);
  the same in a key column is refused."""
  header = ",".join(schema.HIDDEN_COLUMNS)
  rows = [f"pre,linear,8,1,4,8,1,uniform,1,gaussian,layernorm,relu,0,none,{seed},1,{value}" for seed, value in
          enumerate(['""', "", "nan", "inf", "-inf", "1e-300"])]
  (tmp_path / schema.HIDDEN_FILE).write_text("\n".join([header, *rows]) + "\n")
  values = schema.read_table(tmp_path, schema.HIDDEN_FILE).sq_norm.to_numpy()
  assert np.isnan(values[:3]).all() and values[3] == np.inf and values[4] == -np.inf and values[5] == 1e-300
  (tmp_path / schema.HIDDEN_FILE).write_text(f"{header}\npre,linear,8,1,4,8,1,uniform,1,gaussian,layernorm,relu,0,none,nan,1,0.5\n")
  with pytest.raises(schema.StoreError, match="line 2, column seed: not an integer"):
    schema.read_table(tmp_path, schema.HIDDEN_FILE)


def test_a_setting_missing_from_an_old_meta_json_counts_as_its_default(tmp_path):
  """meta.json written before a setting existed opens with that setting at its default, and refuses another value;
  a setting the store has and this run lacks is refused too."""
  settings = {"dtype": "float32", "eps": 1e-6, "base_seed": 0, "prng": "threefry2x32", "vocab": 1000}
  (tmp_path / "meta.json").write_text(json.dumps({"settings": settings, "runs": [], "passes": []}))
  assert store.ResultsStore(tmp_path, settings | {"tied": False}, defaults={"tied": False}).settings["tied"] is False
  with pytest.raises(schema.StoreError, match="tied"):
    store.ResultsStore(tmp_path, settings | {"tied": True}, defaults={"tied": False})
  with pytest.raises(schema.StoreError, match="vocab"):
    store.ResultsStore(tmp_path, {k: v for k, v in settings.items() if k != "vocab"}, defaults={})


def test_a_second_sweep_on_a_locked_store_refuses_naming_the_owner(tiny_store, tmp_path, stderr_line):
  """While another writer holds DIR/.lock, the CLI exits 2 with one line naming the owner's pid and the lock
  file, and writes nothing; the holder's release removes the lock file."""
  out = tmp_path / "store"
  shutil.copytree(tiny_store, out)
  with store.StoreLock(out):
    before = snapshot(out)
    assert cli.main([*STORE_ARGS, "--out", str(out)]) == 2
    line = stderr_line()
    assert f"pid {os.getpid()}" in line and ".lock" in line, line
    assert snapshot(out) == before
  assert not (out / ".lock").exists()


def dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_store, tmp_path):
  """A lock file left by a killed sweep (its pid dead, no flock held) does not block the next sweep, which
  completes and removes it."""
  out = tmp_path / "store"
  shutil.copytree(tiny_store, out)
  stale = {"pid": dead_pid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}
  (out / ".lock").write_text(json.dumps(stale))
  assert cli.main([*STORE_ARGS, "--out", str(out)]) == 0
  assert not (out / ".lock").exists()


def test_without_flock_the_owner_record_decides(tmp_path, monkeypatch):
  """On a file system without flock, a lock whose pid runs on this host is respected, one whose pid is dead
  is taken over, and the lock is released on an exception."""

  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_flock)
  host = socket.gethostname()
  (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": host}))
  with pytest.raises(schema.StoreError, match=f"pid {os.getpid()} on {host}"):
    store.StoreLock(tmp_path).acquire()
  (tmp_path / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": host}))
  with pytest.raises(RuntimeError), store.StoreLock(tmp_path):
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    raise RuntimeError("boom")
  assert not (tmp_path / ".lock").exists()


def test_a_lock_in_a_new_directory_leaves_nothing_when_released(tmp_path):
  """Locking a store that does not exist yet creates its directories; releasing with nothing written removes them."""
  with store.StoreLock(tmp_path / "a" / "b"):
    assert (tmp_path / "a" / "b" / ".lock").exists()
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_sweeps_started_on_one_store_the_second_refuses(tmp_path, stderr_line):
  """A real sweep in another process holds the lock: a second sweep on the same --out exits 2 naming that
  process, and the first completes undisturbed."""
  out = tmp_path / "store"
  first = subprocess.Popen([sys.executable, str(SCRIPT), *STORE_ARGS, "--d", "8,12", "--out", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not (out / ".lock").exists() and first.poll() is None and time.time() < deadline:
      time.sleep(0.01)
    assert first.poll() is None, "the first sweep ended before it could be raced"
    assert cli.main([*STORE_ARGS, "--out", str(out)]) == 2
    assert f"pid {first.pid}" in stderr_line()
    assert first.wait(timeout=600) == 0, first.stderr.read()
  finally:
    if first.poll() is None:
      first.kill()
  assert not (out / ".lock").exists()
  assert len(store.read(out, schema.GRAD_FILE)) == 2 * 2 * 6 * (1 + 2) * 2  # arch x d x params x sum(L) x seeds


def test_atomic_write_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
  """A new file gets the umask's permissions (not mkstemp's 0600); a replaced file keeps its own."""
  umask = os.umask(0o022)
  os.umask(umask)
  schema.atomic_write(tmp_path / "new.csv", "a\n")
  assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o666 & ~umask
  (tmp_path / "new.csv").chmod(0o640)
  schema.atomic_write(tmp_path / "new.csv", b"b\n")
  assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o640
  assert (tmp_path / "new.csv").read_bytes() == b"b\n"


# --- make_figures.py on stores it cannot draw -------------------------------------------------------


def _make_figures():
  spec = importlib.util.spec_from_file_location("make_figures", ROOT / "experiments" / "make_figures.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _header_only(out: Path):
  for table in schema.TABLES:
    for path in (out / parts.folder(table)).glob("part-*.parquet"):
      _rewrite(path, lambda t: t.slice(0, 0).replace_schema_metadata({b"normtheory": json.dumps(
          {"table": table, "columns": list(parts.key_columns()), "pairs": [], "rows": 0})}))


def _no_last_layer(out: Path):
  """Grad norms below the last layer only (and no cell of one layer, which would have none left)."""
  for table in schema.TABLES:
    for path in (out / parts.folder(table)).glob("part-*.parquet"):
      frame = parts.to_frame(pq.read_table(path))
      keep = (frame.layer < frame.L) if table == schema.GRAD_FILE else (frame.L > 1)
      parts.write_part(out, table, path.name.removesuffix(".parquet"), frame[keep])


FIGURE_STORES = {
    "missing directory": (lambda out: shutil.rmtree(out), "no results directory"),
    "empty directory": (lambda out: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in out.iterdir()], "missing"),
    "header only": (_header_only, "no rows"),
    "hidden norms missing": (lambda out: shutil.rmtree(out / "hidden_norms"), "hidden_norms"),
    "truncated table": (lambda out: _one_part(out).write_bytes(_one_part(out).read_bytes()[:-5]), "not a readable Parquet"),
    "no last-layer rows": (_no_last_layer, "cannot draw figures"),
}


@pytest.mark.parametrize("name", list(FIGURE_STORES))
def test_make_figures_on_an_empty_missing_or_partial_store_exits_2_and_writes_nothing(
    tiny_store, tmp_path, stderr_line, name):
  """make_figures.py on a store it cannot draw: exit status 2, one stderr line, and no figure folder."""
  results = tmp_path / "store"
  shutil.copytree(tiny_store, results)
  damage, words = FIGURE_STORES[name]
  damage(results)
  assert _make_figures().main(["--results", str(results), "--out", str(tmp_path / "figs"), "--n-boot", "10"]) == 2
  assert words in stderr_line()
  assert not (tmp_path / "figs").exists()


@pytest.mark.slow
def test_make_figures_writes_no_file_when_a_figure_fails_to_draw(tiny_store, tmp_path, monkeypatch, capsys):
  """Every figure is drawn in memory first: one that fails leaves the output folder exactly as it was."""
  figs = tmp_path / "figs"
  figs.mkdir()
  (figs / "fig_last_layer_vs_depth.png").write_bytes(b"an older figure")
  before = snapshot(figs)
  real_render = plot.render

  def failing_render(fig, name, dpi=200):
    if name == "fig_hidden_norms":
      raise ValueError("simulated drawing failure")
    return real_render(fig, name, dpi)

  monkeypatch.setattr(plot, "render", failing_render)
  status = _make_figures().main(["--results", str(tiny_store), "--out", str(figs), "--n-boot", "10"])
  assert status == 2 and "simulated drawing failure" in capsys.readouterr().err
  assert snapshot(figs) == before
