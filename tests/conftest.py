"""Shared fixtures, and the two test tiers.

``pytest -q`` runs every test (what ``.ci/run`` calls). ``pytest -q -m "not slow"`` is
the fast tier. Both run on two pytest-xdist workers, one per core, each test file on one worker
(``-n 2 --dist loadfile --no-loadscope-reorder`` in pyproject.toml's ``addopts``, longest files first:
:func:`pytest_collection_modifyitems`; ``-n 0`` runs in one process), so the
tests of a file share their compiled programs (``--dist worksteal`` was measured: a file's tests
then compile the same programs on both workers, and the suite took 1844 s against 1800 s). The
long tests (fresh interpreters, two-process runs, the notebook, forced multi-device runs, Flax-built
models, d = 256 / L = 96 models, training) and every test that compiles a model of its own (the
engine, the reference model, a probed model: seconds of XLA compilation each, cold) carry
``@pytest.mark.slow`` (the marker is registered in pyproject.toml). The fast tier is then the
closed-form lemmas, the fitters, the PRNG, the QR and Gram factor, and the store, CLI, figure and
report contracts on the session's :func:`tiny_store`: under a minute cold.

The whole session uses the sweep CLI's persistent compilation cache
(``~/.cache/normtheory/xla``): a cold cache compiles every program once, a warm one
almost nothing.

After each module, :func:`jax.clear_caches` drops the module's compiled programs (a later
module that needs one again reads it from the persistent cache). Each CPU
executable holds about 6 memory mappings; the suite compiles thousands of programs, and one
process that keeps them all reaches Linux's ``vm.max_map_count`` (65530), where XLA's next
compilation dies with a segmentation fault (seen in ``backend_compile_and_load``, and in the
persistent cache's read and write).

Tests that read a results store share :func:`tiny_store`, written once per session by
the sweep CLI, instead of each building its own; its grid is small enough that the
engine compiles in seconds. Tests that reuse its grid (:func:`tiny_grid`,
:func:`tiny_argv`) reuse the compiled steps too. Under pytest-xdist the controller starts
writing it in a child process before the workers start (:func:`pytest_sessionstart`), and the
test files that read it or run its grid run after the others (:func:`pytest_collection_modifyitems`),
so no worker sits idle waiting for it.
"""

from __future__ import annotations

import os

# As normtheory sets it on import, but before this file imports numpy (which reads it once): OpenBLAS's
# own threads made the conditional engine's LAPACK QR ~30x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# XLA's CPU backend compiles the tests' programs at LLVM optimization level 1, not its default 3, and with
# its older CPU fusion emitters (the elemental IR emitter, ``--xla_cpu_use_fusion_emitters=false``), set
# before jax starts (XLA reads XLA_FLAGS once; subprocesses, the notebook's kernel included, inherit them;
# a flag set in the shell wins). Most tests' time is XLA compiling small programs, not running them.
# Measured cold, one process (experiments/compile_profile.py): tests/test_blocks.py compiled for 57.5 s
# at level 2, 33.2 s at level 1 and 26.9 s at level 0 (the law test at d = 64, run-bound, took
# 17.7 s, 17.0 s and 25.6 s); with the older emitters at level 1, 29 s against 43 s (2026-12-03). The
# whole suite, cold, two workers, back to back: 1473 s at level 1, 1275 s with the older emitters too
# (backend compilation 1491 s -> 1195 s of the workers' time). The numbers differ from a default build's
# in their last bits (experiments/opt_level_bits.py: of 1408 grad and hidden norms, 262 at level 1 alone,
# 389 under both flags, at most 1.8e-6 relative), within every test's tolerance; the bit-identity tests
# compare runs made under the same flags.
for flag, value in (("xla_backend_optimization_level", "1"), ("xla_cpu_use_fusion_emitters", "false")):
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{flag}={value}".strip()

import fcntl  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import normtheory as nt  # noqa: E402
from normtheory import cli, engine  # noqa: E402

matplotlib.use("Agg")  # no test opens a window (normtheory itself never chooses a backend)
# The sweep CLI's compilation cache, from the first test on (not only after the first cli.main):
# a program compiled by two tests, or by two runs of the suite, is compiled once.
cli.enable_compile_cache()

# post and pre, d in {8, 16}, L in {1, 2, 4}, seeds 0..2, n = 4, base seed 0 (threefry2x32)
TINY = {"archs": ("post", "pre"), "widths": (8, 16), "depths": (1, 2, 4), "seeds": 3, "n": 4}
TINY_ARGV = ["--d", "8,16", "--L", "1..4", "--seeds", "3", "--n", "4", "--seed", "0", "--prng", "threefry2x32",
             "--n-boot", "20", "--quiet"]


def write_tiny_store(root: pathlib.Path) -> pathlib.Path:
  """``root/tiny_store``, written by ``cli.main(TINY_ARGV)`` unless it is already there: under a lock
  file in ``root``, so the one process that writes it is the first to take the lock, and a
  ``tiny_store.done`` marker says it is complete."""
  out, done = root / "tiny_store", root / "tiny_store.done"
  with open(root / "tiny_store.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      assert cli.main([*TINY_ARGV, "--out", str(out)]) == 0
      done.touch()
  return out


_WRITE_TINY_STORE = ("import pathlib, sys; sys.path.insert(0, sys.argv[2]); import conftest; "
                     "conftest.write_tiny_store(pathlib.Path(sys.argv[1]))")


def pytest_sessionstart(session):
  """The xdist controller starts :func:`write_tiny_store` in a child process (a worker that takes the
  lock first, or finds no finished store after a failed child, writes it itself)."""
  config = session.config
  if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
    return
  root = config._tmp_path_factory.getbasetemp()  # the workers' temporary folders are under it (xdist's own use)
  config._tiny_store_writer = subprocess.Popen([sys.executable, "-c", _WRITE_TINY_STORE, str(root),
                                                str(pathlib.Path(__file__).parent)], stdout=subprocess.DEVNULL)


def pytest_sessionfinish(session):
  """A run that never needed the tiny store (``-k``, a few files) does not wait for it."""
  writer = getattr(session.config, "_tiny_store_writer", None)
  if writer is not None:
    writer.terminate()
    writer.wait()


TINY_FIXTURES = {"tiny_store", "tiny_grid", "tiny_argv"}  # tests that reuse the tiny store's compiled steps
# The files that took longest, longest first (each over 60 s of a worker's time in the profiled run of
# 2026-12-03, experiments/compile_profile.py): handed out first, so that the two workers end together.
# Only the order depends on it: a stale list costs balance, never a check.
LONGEST_FILES = ("test_conditional_algebra.py", "test_keep_weights.py", "test_distributed.py",
                 "test_relaxations.py", "test_conditional_law.py", "test_gradients.py", "test_notebook.py",
                 "test_probe.py", "test_flax_equality.py", "test_theory_blocks.py", "test_plot.py",
                 "test_sharding.py", "test_reliability.py", "test_cli.py", "test_flax_blocks.py", "test_blocks.py")


def pytest_collection_modifyitems(items):
  """Files in the order the workers take them (pyproject's ``--no-loadscope-reorder`` keeps it): the
  longest first (:data:`LONGEST_FILES`), then the others, those that read :func:`tiny_store` or run its
  grid last, by when the store and its compiled steps are there; the order within a file kept."""
  late = {item.path for item in items if TINY_FIXTURES & set(getattr(item, "fixturenames", ()))}
  rank = lambda path: LONGEST_FILES.index(path.name) if path.name in LONGEST_FILES else len(LONGEST_FILES)
  items.sort(key=lambda item: (rank(item.path), item.path in late))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Every module starts from the same JAX caches and leaves nothing compiled behind it."""
  yield
  jax.clear_caches()


@pytest.fixture(scope="session")
def tiny_grid() -> dict:
  """The grid of :func:`tiny_store` as ``measure_grid`` arguments."""
  return dict(TINY)


@pytest.fixture(scope="session")
def tiny_argv() -> list[str]:
  """The sweep CLI's flags of :func:`tiny_store`, without ``--out``."""
  return list(TINY_ARGV)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, worker_id) -> pathlib.Path:
  """The store of ``cli.main(TINY_ARGV)``: grad and hidden norms, meta.json and fits.json. Read-only:
  a test that changes a store works on :func:`tiny_store_copy`.

  Under pytest-xdist the workers share one store: the first to take the lock (a file next to the
  workers' temporary folders) writes it, the others wait for it and read it.
  """
  root = tmp_path_factory.mktemp("tiny") if worker_id == "master" else tmp_path_factory.getbasetemp().parent
  return write_tiny_store(root)


@pytest.fixture
def tiny_store_copy(tiny_store, tmp_path) -> pathlib.Path:
  """A private copy of :func:`tiny_store` that a test may change."""
  return pathlib.Path(shutil.copytree(tiny_store, tmp_path / "store"))


@pytest.fixture(scope="session")
def tiny_frames(tiny_store) -> nt.Frames:
  """``nt.load(tiny_store)``: its tables, meta and fits."""
  return nt.load(tiny_store)


@pytest.fixture
def nan_in_pre_w2(monkeypatch) -> None:
  """The engine measures as usual, except that at d = 8 Pre-LN's W2 at layer 2 of L = 2 is NaN for the first
  seed of each call (a non-finite measurement to flag, store and leave out of the fits)."""
  real = engine.measure_archs

  def with_nan(cfg, archs, depths, seeds, key, chunk=None, **memory):
    out = real(cfg, archs, depths, seeds, key, chunk, **memory)
    if cfg.d == 8:
      out["pre"][2].grad_norms["W2"][0, -1] = np.nan
    return out

  monkeypatch.setattr(engine, "measure_archs", with_nan)


@pytest.fixture
def stderr_line(capsys):
  """Reads the one line a refused command wrote to stderr (the CLIs' bad-input contract): the test fails
  unless there is exactly one."""

  def read() -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]

  return read
