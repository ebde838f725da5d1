"""Multi-process sweeps: the cluster from flags or environment, real two-process runs on 127.0.0.1, and faults.

The two-process tests start the CLI twice with ``--distributed --coordinator 127.0.0.1:PORT`` (JAX's CPU
backend, coordination service in process 0), as a user would on one machine.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from normtheory import cli, distributed, schema, store

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "grad_scaling.py"
GRID = ["--d", "8,12", "--L", "1,2", "--seeds", "3", "--n", "4", "--n-boot", "10", "--quiet"]
TIMEOUT_S = 15  # --timeout of the two-process runs: long enough for a busy 2-core machine to start both
WAIT_S = 600  # the most any launched process may take before the test gives up on it


def test_flags_win_over_the_environment_and_unset_values_are_left_to_jax():
  """Each of coordinator, process count and process id: the flag if given, else its JAX_* variable, else None."""
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.cluster_spec(environ=env) == distributed.ClusterSpec("10.0.0.1:1234", 4, 3)
  assert distributed.cluster_spec("127.0.0.1:99", None, 1, environ=env) == distributed.ClusterSpec("127.0.0.1:99", 4, 1)
  assert distributed.cluster_spec(environ={}) == distributed.ClusterSpec(None, None, None)
  assert distributed.cluster_spec("[::1]:8476", 2, environ={}) == distributed.ClusterSpec("[::1]:8476", 2, None)


@pytest.mark.parametrize("flags, env, named", [
    (("localhost", None, None), {}, "--coordinator"),
    (("localhost:0", None, None), {}, "--coordinator"),
    ((None, 0, None), {}, "--num-processes"),
    ((None, None, -1), {}, "--process-id"),
    ((None, None, None), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "host"}, "JAX_COORDINATOR_ADDRESS"),
    ((None, 2, 2), {}, "process id 2 must be < the number of processes 2"),
])
def test_a_malformed_cluster_is_refused_naming_the_flag_or_variable(flags, env, named):
  with pytest.raises(ValueError, match=named):
    distributed.cluster_spec(*flags, environ=env)


@pytest.mark.parametrize("argv, named", [
    (["--coordinator", "127.0.0.1:1234"], "--coordinator needs --distributed"),
    (["--process-id", "1"], "--process-id needs --distributed"),
    (["--distributed", "--timeout", "0"], "--timeout"),
    (["--distributed", "--coordinator", "127.0.0.1"], "--coordinator"),
])
def test_the_cli_refuses_a_bad_cluster_with_exit_2_and_one_line(tmp_path, stderr_line, argv, named):
  out = tmp_path / "never"
  assert cli.main([*argv, "--out", str(out)]) == 2
  assert named in stderr_line()
  assert not out.exists()


# --- two real processes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One compilation cache for every run of this module, so that later runs compile little."""
  return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
  """The grid measured by one process without --distributed."""
  out = tmp_path_factory.mktemp("single") / "store"
  assert cli.main([*GRID, "--out", str(out), "--compile-cache", str(cache)]) == 0
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(out: Path, cache: Path, port: int, process: int, timeout: float = TIMEOUT_S, by_env: bool = False):
  """One process of a two-process sweep on 127.0.0.1 (the cluster given by flags, or by JAX_* variables)."""
  cluster = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(process)]
  env = dict(os.environ)
  if by_env:
    env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(process)}
    cluster = []
  argv = [*GRID, "--out", str(out), "--compile-cache", str(cache), "--distributed", *cluster, "--timeout", str(timeout)]
  return subprocess.Popen([sys.executable, str(SCRIPT), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)


def finish(processes) -> list[tuple[int, str]]:
  """(exit status, stderr) of each process; any still running after WAIT_S is killed and fails the test."""
  results = []
  try:
    for p in processes:
      _, err = p.communicate(timeout=WAIT_S)
      results.append((p.returncode, err))
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  return results


def assert_equal_stores(out: Path, reference: Path) -> None:
  """Every table of ``out`` holds the rows of ``reference``, each once, with bit-identical values."""
  for table in schema.TABLES:
    a, b = store.read(out, table), store.read(reference, table)
    keys = list(a.columns[:-1])
    assert not a.duplicated(keys).any()
    pd.testing.assert_frame_equal(a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True),
                                  check_exact=True)


def table_files(out: Path) -> list[str]:
  """The part files of the main store (not of its processes' parts)."""
  return sorted(p.name for table in schema.TABLES for p in (out / table.removesuffix(".csv")).glob("*.parquet"))


@pytest.mark.slow
def test_two_processes_store_what_one_process_stores_bit_for_bit(tmp_path, cache, reference):
  """Two processes on 127.0.0.1 (one given the cluster by flags, one by JAX_* variables) exit 0; the merged store
  equals the single-process run row for row, meta.json records both processes of 2, and no part or lock is left."""
  out, port = tmp_path / "store", free_port()
  results = finish([launch(out, cache, port, 0), launch(out, cache, port, 1, by_env=True)])
  assert [status for status, _ in results] == [0, 0], results
  assert_equal_stores(out, reference)
  runs = json.loads((out / "meta.json").read_text())["runs"]
  assert sorted((r["process_index"], r["process_count"]) for r in runs) == [(0, 2), (1, 2)]
  assert not (out / "parts").exists() and not list(out.rglob(".lock"))


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_stops_the_other_in_bounded_time_and_the_same_command_resumes(tmp_path, cache, reference, victim):
  """SIGKILL one process as soon as it has started measuring: the other exits with status 3 within the
  --timeout (process 1 killed: its missing heartbeat; process 0 killed: JAX aborts process 1 at once and its
  supervisor says so) with a last stderr line naming the cause; nothing reaches the main store. The same
  command on both processes then completes: the store equals the single-process run, no row twice."""
  out, port = tmp_path / "store", free_port()
  processes = [launch(out, cache, port, 0), launch(out, cache, port, 1)]
  try:
    started = out / "parts" / f"process-{victim}" / "meta.json"
    deadline = time.monotonic() + WAIT_S
    while not started.exists() and time.monotonic() < deadline and processes[victim].poll() is None:
      time.sleep(0.01)
    assert processes[victim].poll() is None, "the victim ended before it could be killed"
    processes[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = processes[1 - victim]
    _, err = survivor.communicate(timeout=WAIT_S)
    elapsed = time.monotonic() - killed_at
  finally:
    finish(processes)
  last = err.strip().splitlines()[-1]
  assert survivor.returncode == distributed.EXIT_CLUSTER, err
  assert elapsed < TIMEOUT_S + 15, elapsed
  assert last.startswith(f"grad_scaling.py: error: process {1 - victim}: "), last
  assert ("process 1 sent no heartbeat" if victim == 1 else "the coordinator (process 0)") in last, last
  assert "run the same command on every process to resume" in last
  assert table_files(out) == []
  port = free_port()
  results = finish([launch(out, cache, port, 0), launch(out, cache, port, 1)])
  assert [status for status, _ in results] == [0, 0], results
  assert_equal_stores(out, reference)
  assert not (out / "parts").exists() and not list(out.rglob(".lock"))


@pytest.mark.slow
@pytest.mark.parametrize("process, words", [
    (1, "cannot reach the coordinator"),
    (0, "answers, but not all 2 processes joined"),
])
def test_a_cluster_that_never_forms_ends_within_the_timeout_with_one_line(tmp_path, cache, process, words):
  """Process 1 with no coordinator listening, or process 0 whose peer never comes: exit status 3 after the
  --timeout (plus start-up), one stderr line saying which, nothing written."""
  out, timeout = tmp_path / "store", 5
  start = time.monotonic()
  (status, err), = finish([launch(out, cache, free_port(), process, timeout=timeout)])
  assert status == distributed.EXIT_CLUSTER, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and words in lines[0], lines
  assert time.monotonic() - start < timeout + 60  # 60 s: two Python + JAX start-ups on a busy machine
  assert not out.exists()


@pytest.mark.slow
def test_a_process_that_refuses_its_part_stops_every_process_with_its_message(tmp_path, cache):
  """Process 1 finds its part's meta.json corrupt: it exits 2 naming the file, and process 0 exits 2 with the
  same message attributed to process 1; the corrupt file is left as it was."""
  out, port = tmp_path / "store", free_port()
  bad = out / "parts" / "process-1" / "meta.json"
  bad.parent.mkdir(parents=True)
  bad.write_text("{not json")
  (status0, err0), (status1, err1) = finish([launch(out, cache, port, 0), launch(out, cache, port, 1)])
  assert (status0, status1) == (2, 2), (err0, err1)
  assert err1.strip().splitlines()[-1].startswith(f"grad_scaling.py: error: process 1: {bad}: not JSON"), err1
  assert "process 0: stopped because process 1 failed" in err0 and str(bad) in err0
  assert bad.read_text() == "{not json"
  assert table_files(out) == []
