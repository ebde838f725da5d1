"""Where the test suite's time goes: seconds of XLA compilation per test, from ``jax.monitoring``.

As a pytest plugin it records, for every test, its wall time and the tracing, lowering and backend
compilation seconds JAX reports while it runs, and each worker writes them to
``$COMPILE_PROFILE_DIR/compile_<worker>.json`` when the session ends. Run as a script it sums those
files per worker and per test file. Compilations inside a test's own subprocesses are not seen.

Usage::

  COMPILE_PROFILE_DIR=/tmp/prof PYTHONPATH=experiments pytest -q -p compile_profile
  python experiments/compile_profile.py /tmp/prof

References:
  README, "Tests" (the profiled run, and the LLVM optimization level the suite compiles at).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import time

import pytest

COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}
_current: collections.Counter = collections.Counter()
_per_test: dict[str, dict[str, float]] = {}


def _listen(event: str, duration: float, **_) -> None:
  if event in COMPILE_EVENTS:
    _current[COMPILE_EVENTS[event]] += duration
    _current["compiles"] += event.endswith("backend_compile_duration")


def pytest_configure(config) -> None:
  import jax

  jax.monitoring.register_event_duration_secs_listener(_listen)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Times one test (setup, call, teardown) and the compilations it caused."""
  _current.clear()
  start = time.perf_counter()
  result = yield
  _per_test[item.nodeid] = {"wall_s": time.perf_counter() - start, **_current}
  return result


def pytest_sessionfinish(session) -> None:
  out = pathlib.Path(os.environ.get("COMPILE_PROFILE_DIR", "."))
  out.mkdir(parents=True, exist_ok=True)
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  if _per_test:
    (out / f"compile_{worker}.json").write_text(json.dumps(_per_test, indent=0))


def summarize(directory: pathlib.Path) -> list[str]:
  """Lines: per worker its tests' wall and compile seconds, then the test files by wall time."""
  lines, files = [], collections.defaultdict(collections.Counter)
  for path in sorted(directory.glob("compile_*.json")):
    tests = json.loads(path.read_text())
    total = collections.Counter()
    for nodeid, row in tests.items():
      total.update(row)
      files[nodeid.split("::")[0]].update(row)
    lines.append(f"{path.stem[len('compile_'):]}: {len(tests)} tests, wall {total['wall_s']:.0f} s, backend compile "
                 f"{total['compile_s']:.0f} s in {total['compiles']:.0f} compilations, trace + lower "
                 f"{total['trace_s'] + total['lower_s']:.0f} s")
  for name, row in sorted(files.items(), key=lambda kv: -kv[1]["wall_s"]):
    lines.append(f"  {name:<40} wall {row['wall_s']:6.0f} s  backend compile {row['compile_s']:6.0f} s")
  return lines


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Sum a profiled pytest run's compile seconds per worker and file.")
  parser.add_argument("dir", type=pathlib.Path, help="the COMPILE_PROFILE_DIR of a run with -p compile_profile")
  args = parser.parse_args()
  if not sorted(args.dir.glob("compile_*.json")):
    parser.error(f"{args.dir}: no compile_*.json (run pytest with -p compile_profile first)")
  print("\n".join(summarize(args.dir)))
