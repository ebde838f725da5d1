"""Multi-process sweeps: every process measures its share of the seeds; process 0 merges.

Start the same command once per process with ``--distributed``. Where the cluster
comes from, first match wins, each of the three values on its own:

1. the flags ``--coordinator HOST:PORT``, ``--num-processes P``, ``--process-id I``;
2. the environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
   ``JAX_PROCESS_ID``;
3. JAX's own detection in ``jax.distributed.initialize`` (Slurm, Cloud TPU, Open MPI)
   for whatever is still unset.

Process p measures the seeds s with ``s % P == p`` on its local devices (the engine's
mesh) and writes only its own rows, to ``DIR/parts/process-p`` (under that part's
:class:`~normtheory.store.StoreLock`). Process 0, the only writer of ``DIR`` (under
``DIR``'s lock), waits until every process is done, moves every part's files into ``DIR``
by renaming them (:func:`merge_parts`; a (cell, seed) is never stored twice) and deletes
what is left of the parts. A
sample depends only on (base key, seed), so the merged store equals a single-process
run's, bit for bit.

Failures end in bounded time with one line on stderr (:class:`Cluster`), through the
key-value store of JAX's coordination service (hosted by process 0):

* every process must join within ``timeout`` seconds, else each stops with exit status
  3, saying whether the coordinator could be reached at all;
* a watchdog thread in every process beats every ``timeout / 10`` seconds; a process
  that has not finished and sends no beat for ``timeout`` seconds (killed, hung, cut
  off) stops every other process with status 3, naming it;
* a process that fails (a store it refuses, Ctrl-C, an exception) tells the others,
  which stop with its message (status 2 if it refused its input, else 3).

A process that stops this way has written only its own part, so ``DIR`` is as it was
and the same command on every process resumes (each part keeps its measured seeds). If
process 0 itself dies, the others lose the coordination service and JAX's runtime
aborts them at once ("Terminating process because the JAX distributed service detected
fatal errors"), where no Python code runs any more. So every process runs as the child
of a small supervisor (:func:`supervise`, the command the user started), which
outlives such an abort and ends with the same kind of one-line error.

References:
  JAX documentation, "Multi-process environments" (``jax.distributed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax

from normtheory import parts, store
from normtheory.schema import META_FILE, TABLES

ENV_COORDINATOR, ENV_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
EXIT_CLUSTER = 3  # exit status of a process stopped because the cluster failed
DEFAULT_TIMEOUT_S = 120.0
_NS = "normtheory"  # key-value namespace; the coordination service lives for one launch
SUPERVISOR_ENV = "NORMTHEORY_SUPERVISOR_PID"  # set in the child: its supervisor's pid


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """The cluster as given by flags or environment; None: left to JAX's detection."""

  coordinator: str | None = None  # "HOST:PORT" of process 0's coordination service
  num_processes: int | None = None
  process_id: int | None = None


def cluster_spec(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> ClusterSpec:
  """The cluster from the flags, else the environment variables, else None (JAX detects it).

  Args:
    coordinator, num_processes, process_id: the flag values (None: not given).
    environ: where ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
      ``JAX_PROCESS_ID`` are read.

  Raises:
    ValueError: a value is malformed; the message names the flag or variable.
  """

  def pick(flag, value, env, parse):
    if value is not None:
      return parse(value, flag)
    if environ.get(env, "").strip():
      return parse(environ[env].strip(), env)
    return None

  spec = ClusterSpec(
      pick("--coordinator", coordinator, ENV_COORDINATOR, _address),
      pick("--num-processes", num_processes, ENV_PROCESSES, lambda v, name: _integer(v, name, 1)),
      pick("--process-id", process_id, ENV_PROCESS_ID, lambda v, name: _integer(v, name, 0)),
  )
  if None not in (spec.num_processes, spec.process_id) and spec.process_id >= spec.num_processes:
    raise ValueError(f"process id {spec.process_id} must be < the number of processes {spec.num_processes}")
  return spec


def _integer(value, name: str, minimum: int) -> int:
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
  if number < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return number


def _address(value: str, name: str) -> str:
  match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d+)", value)
  if not match or not 1 <= int(match.group(2)) <= 65535:
    raise ValueError(f"{name} must be HOST:PORT (port 1-65535), got {value!r}")
  return value


def _die(message: str, status: int, cleanups: list[Callable[[], None]]) -> None:
  """Run ``cleanups``, print ``message`` as one stderr line, and end the process now (any thread)."""
  for cleanup in cleanups:
    with contextlib.suppress(Exception):
      cleanup()
  with contextlib.suppress(Exception):
    sys.stdout.flush()
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
  os._exit(status)


@contextlib.contextmanager
def _deadline(seconds: float, on_expiry: Callable[[], None]):
  """Call ``on_expiry`` (from a thread) if the block has not finished after ``seconds``."""
  finished = threading.Event()
  watcher = threading.Thread(target=lambda: finished.wait(seconds) or on_expiry(), daemon=True)
  watcher.start()
  try:
    yield
  finally:
    finished.set()


def _reachable(address: str | None) -> bool:
  if address is None:
    return False
  host, port = address.rsplit(":", 1)
  try:
    socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    return True
  except OSError:
    return False


def initialize(spec: ClusterSpec, timeout: float, prog: str) -> "Cluster":
  """Join the cluster within ``timeout`` seconds; returns this process's :class:`Cluster`.

  If the cluster is not complete after ``timeout`` seconds this process prints one line
  (``prog: error: ...``: coordinator unreachable, or reachable but not every process
  joined) and exits with ``EXIT_CLUSTER``. JAX's own timeouts are set beyond ours, so
  its less readable fatal errors do not come first.

  Raises:
    ValueError: no cluster is described (no flags, variables or detectable scheduler).
  """

  def expired():
    where = spec.coordinator or os.environ.get(ENV_COORDINATOR) or "the coordinator"
    processes = f"all {spec.num_processes} processes" if spec.num_processes else "every process"
    if _reachable(spec.coordinator):
      why = f"the coordinator {where} answers, but not {processes} joined within {timeout:g} s (is every --process-id started?)"
    else:
      why = f"cannot reach the coordinator {where} within {timeout:g} s (is process 0 running there, and the port open?)"
    _die(f"{prog}: error: --distributed: {why}", EXIT_CLUSTER, [])

  jax_timeout = int(2 * timeout) + 30
  with _deadline(timeout, expired):
    try:
      jax.distributed.initialize(
          spec.coordinator, spec.num_processes, spec.process_id,
          initialization_timeout=jax_timeout, heartbeat_timeout_seconds=jax_timeout,
          shutdown_timeout_seconds=jax_timeout)
    except (ValueError, TypeError) as error:
      raise ValueError(f"--distributed: {error} Give --coordinator, --num-processes and --process-id (or "
                       f"{ENV_COORDINATOR}, {ENV_PROCESSES}, {ENV_PROCESS_ID}); Slurm and Cloud TPU are detected") from None
    index, count = jax.process_index(), jax.process_count()  # the backend's start exchanges topology with every process
  coordinator = spec.coordinator or os.environ.get(ENV_COORDINATOR) or "process 0"
  return Cluster(_client(), index, count, timeout, prog, coordinator)


def _client():
  """The coordination service's client (the key-value store); the handle Orbax uses too."""
  from jax._src import distributed as jax_distributed  # noqa: PLC0415 - no public accessor in jax 0.10

  return jax_distributed.global_state.client


class Cluster:
  """This process's part in a multi-process sweep: liveness, failures and the end-of-run handshake.

  After :meth:`start`, a daemon thread beats every ``timeout / 10`` s and watches the
  others: a process not yet done (or process 0 before it merged) that sends no beat
  for ``timeout`` s, an unanswering coordinator, or a failure announced by another
  process ends this one (cleanups, one stderr line, ``os._exit``).

  Args:
    client: the coordination service client (key-value store).
    index, count: this process's index and the number of processes.
    timeout: seconds of silence after which a process counts as lost.
    prog: the program name that starts every error line.
    coordinator: the coordinator address, for messages.
  """

  def __init__(self, client, index: int, count: int, timeout: float, prog: str, coordinator: str):
    self.client, self.index, self.count = client, index, count
    self.timeout, self.prog, self.coordinator = timeout, prog, coordinator
    self.cleanups: list[Callable[[], None]] = []  # run before a failure ends the process (lock releases)
    self.hint = ""  # appended to failure messages: what is kept, how to resume
    self._stop = threading.Event()
    self._watcher: threading.Thread | None = None
    self._interval = max(0.05, timeout / 10)

  @property
  def leader(self) -> bool:
    """Whether this is process 0 (the merger and coordinator)."""
    return self.index == 0

  def start(self) -> None:
    """Start beating and watching the other processes."""
    self._watcher = threading.Thread(target=self._watch, name="normtheory-watchdog", daemon=True)
    self._watcher.start()

  def _entries(self) -> dict[str, str]:
    return dict(self.client.key_value_dir_get(f"{_NS}/"))

  def _fail(self, message: str, status: int = EXIT_CLUSTER) -> None:
    """One stderr line (with the resume hint, unless the input was refused: status 2), then end the process."""
    hint = f"; {self.hint}" if self.hint and status != 2 else ""
    _die(f"{self.prog}: error: process {self.index}: {message}{hint}", status, self.cleanups)

  def _watch(self) -> None:
    beat, last_ok, error = 0, time.monotonic(), None
    seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.index}
    while not self._stop.is_set():
      entries = None
      try:
        self.client.key_value_set(f"{_NS}/beat/{self.index}", str(beat), allow_overwrite=True)
        entries = self._entries()
        last_ok, beat = time.monotonic(), beat + 1
      except Exception as err:  # noqa: BLE001 - judged below by how long it lasts
        error = err
      now = time.monotonic()
      if entries is not None:
        if f"{_NS}/abort" in entries:
          self._follow_abort(json.loads(entries[f"{_NS}/abort"]))
        for p, (value, since) in seen.items():
          value_now = entries.get(f"{_NS}/beat/{p}")
          if value_now != value:
            seen[p] = (value_now, now)
          elif now - since > self.timeout and self._watching(p, entries):
            self._fail(f"process {p} sent no heartbeat for {self.timeout:g} s (killed, hung or cut off)")
      elif now - last_ok > self.timeout:
        reason = str(error).splitlines()[0] if error else "no answer"
        self._fail(f"lost the coordinator {self.coordinator} for {self.timeout:g} s ({reason})")
      self._stop.wait(self._interval)

  def _watching(self, p: int, entries: dict[str, str]) -> bool:
    """A process matters until it is done; process 0 until it has merged."""
    if self._stop.is_set():
      return False
    if p == 0 and f"{_NS}/merged" not in entries:
      return True
    return f"{_NS}/done/{p}" not in entries

  def _follow_abort(self, record: dict) -> None:
    if record.get("process") == self.index:
      return
    with contextlib.suppress(Exception):
      self.client.key_value_set(f"{_NS}/ack/{self.index}", "1", allow_overwrite=True)
    self._await_acks(origin=record.get("process"))
    status = 2 if record.get("status") == 2 else EXIT_CLUSTER
    self._fail(f"stopped because process {record.get('process')} failed: {record.get('message')}", status)

  def _await_acks(self, origin) -> None:
    """Process 0 hosts the service: it leaves only once every other process has heard of the failure."""
    if not self.leader:
      return
    others = [f"{_NS}/ack/{p}" for p in range(self.count) if p not in (self.index, origin)]
    deadline = time.monotonic() + self.timeout
    while time.monotonic() < deadline:
      try:
        entries = self._entries()
      except Exception:  # noqa: BLE001 - the service is unusable: nobody left to tell
        return
      if all(k in entries for k in others):
        return
      time.sleep(self._interval)

  def abort(self, status: int, message: str) -> None:
    """End this process with ``message`` and ``status``, after telling the others (which stop too); never returns."""
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    record = {"process": self.index, "status": status, "message": message}
    try:
      self.client.key_value_set(f"{_NS}/abort", json.dumps(record))
    except Exception:  # noqa: BLE001 - another process failed first (its failure is followed) or the service is gone
      pass
    self._await_acks(origin=self.index)
    self._fail(message, status)

  def done(self, failures: int) -> None:
    """Say that this process has measured (and stored in its part) everything; ``failures``: failed passes."""
    self.client.key_value_set(f"{_NS}/done/{self.index}", str(failures))

  def _wait_for(self, ready: Callable[[dict[str, str]], bool]) -> dict[str, str]:
    """Poll the key-value store until ``ready``; the watchdog ends the process if that never comes."""
    while True:
      with contextlib.suppress(Exception):  # a lasting failure is the watchdog's to judge
        entries = self._entries()
        if ready(entries):
          return entries
      time.sleep(self._interval)

  def wait_all_done(self) -> dict[int, int]:
    """Process 0: wait (the watchdog bounds it) until every process is done; process -> failed passes."""
    keys = [f"{_NS}/done/{p}" for p in range(self.count)]
    entries = self._wait_for(lambda e: all(k in e for k in keys))
    return {p: int(entries[k]) for p, k in enumerate(keys)}

  def announce_merged(self) -> None:
    """Process 0: the parts are merged into the main store."""
    self.client.key_value_set(f"{_NS}/merged", "1")

  def wait_merged(self) -> None:
    """Every other process: wait (the watchdog bounds it) until process 0 has merged."""
    self._wait_for(lambda e: f"{_NS}/merged" in e)

  def close(self) -> None:
    """Stop the watchdog and leave the cluster together (``jax.distributed.shutdown``, within ``timeout``)."""
    self._stop.set()
    if self._watcher is not None:
      self._watcher.join()

    def expired():
      _die(f"{self.prog}: error: process {self.index}: the processes did not shut down together within "
           f"{self.timeout:g} s (the results are stored)", EXIT_CLUSTER, self.cleanups)

    with _deadline(self.timeout, expired):
      jax.distributed.shutdown()


def supervised() -> bool:
  """Whether this process is the child of :func:`supervise`."""
  return SUPERVISOR_ENV in os.environ


def supervise(argv: list[str], prog: str, who: str, hint: str) -> int:
  """Run ``python -m normtheory.cli ARGV`` as a child; say in one line why it died if a signal ended it.

  The child is the real sweep process; this one only waits. SIGTERM and SIGHUP are
  passed on; Ctrl-C reaches the child from the terminal, so it is ignored here. A
  child aborted by JAX's runtime (SIGABRT: the coordinator or another process is gone)
  ends with ``EXIT_CLUSTER``, another signal with 128 + its number.

  Args:
    argv: the command line of the sweep (with ``--distributed``).
    prog: the program name that starts the error line.
    who: this process, for the error line (e.g. "process 1").
    hint: what is kept and how to resume, for the error line.

  Returns:
    the child's exit status.
  """
  child = subprocess.Popen([sys.executable, "-m", "normtheory.cli", *argv],
                           env={**os.environ, SUPERVISOR_ENV: str(os.getpid())})
  handlers = {s: signal.signal(s, lambda signum, frame: child.send_signal(signum)) for s in (signal.SIGTERM, signal.SIGHUP)}
  handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    status = child.wait()
  finally:
    for s, handler in handlers.items():
      signal.signal(s, handler)
  if status >= 0:
    return status
  if -status == signal.SIGABRT:
    why = ("JAX's distributed runtime aborted it (its message is above): the coordinator (process 0) or "
           "another process died or became unreachable")
  else:
    why = f"it was ended by {signal.Signals(-status).name}"
  sys.stderr.write(f"{prog}: error: {who}: {why}; {hint}\n")
  return EXIT_CLUSTER if -status == signal.SIGABRT else 128 - status


def follow_supervisor() -> None:
  """In the child of :func:`supervise`: end this process if the supervisor dies (e.g. SIGKILLed)."""
  supervisor = int(os.environ[SUPERVISOR_ENV])

  def watch():
    while os.getppid() == supervisor:
      time.sleep(0.2)
    os._exit(EXIT_CLUSTER)

  threading.Thread(target=watch, name="normtheory-supervisor-watch", daemon=True).start()


def my_seeds(n_seeds: int) -> set[int]:
  """The seeds this process measures: ``s % process_count == process_index``."""
  return {s for s in range(n_seeds) if s % jax.process_count() == jax.process_index()}


def part_dir(out_dir: str | Path, process: int | None = None) -> Path:
  """Where process ``process`` (default: this one) writes its rows."""
  return Path(out_dir) / "parts" / f"process-{jax.process_index() if process is None else process}"


def merge_parts(out_dir: str | Path, settings: dict) -> store.ResultsStore:
  """Process 0: move every ``DIR/parts/process-*`` store's parts into ``DIR``, then delete what is left of them.

  A part moves by a rename (:meth:`normtheory.store.ResultsStore.absorb`), grad norms
  last, so a crash during the merge leaves each chunk either in its process's part or
  in ``DIR``, never in both; the same command merges the rest. Lock files of running
  processes stay.
  """
  target = store.ResultsStore(out_dir, settings)
  folders = sorted((Path(out_dir) / "parts").glob("process-*"))
  for folder in folders:
    target.absorb(store.ResultsStore(folder, settings))
  for folder in folders:
    for name in (*TABLES, META_FILE):
      (folder / name).unlink(missing_ok=True)
    for table in TABLES:
      table_dir = folder / parts.folder(table)
      if table_dir.is_dir():
        parts.remove(table_dir.iterdir())
        table_dir.rmdir()
  remove_empty_parts(out_dir)
  return target


def remove_empty_parts(out_dir: str | Path) -> None:
  """Remove ``DIR/parts/process-*`` folders that are empty, then ``DIR/parts`` if it is."""
  parts = Path(out_dir) / "parts"
  for folder in [*sorted(parts.glob("process-*")), parts]:
    with contextlib.suppress(OSError):
      folder.rmdir()
