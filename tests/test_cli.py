"""The sweep CLI and its results store: contract, resume, atomicity, bad input.

``tiny_store`` (tests/conftest.py) is ``cli.main`` on post and pre, d in {8, 16}, L in {1, 2, 4},
3 seeds, n = 4.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import jax

import normtheory as nt
from normtheory import architectures, cli, fit, parts, prng, sampling, schema, store
from normtheory.layers import Taps, layer_norm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "grad_scaling.py"


def run_cli(*argv: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=600)


def test_store_has_the_contract_columns_and_every_row(tiny_store):
  """grad_norms/ hidden_norms/ ln_jacobian/ have exactly the contract columns and one row per measurement:
  hidden norms for layers 1..L+1, LN Jacobians for every LN of every layer (Post-LN 2, Pre-LN 2 plus the
  final LN at layer L+1); every part's file has the typed columns of its table."""
  grad = store.read(tiny_store, schema.GRAD_FILE)
  hidden = store.read(tiny_store, schema.HIDDEN_FILE)
  ln_jac = store.read(tiny_store, schema.LN_JACOBIAN_FILE)
  for table in (schema.GRAD_FILE, schema.HIDDEN_FILE, schema.LN_JACOBIAN_FILE):
    for path in (tiny_store / parts.folder(table)).glob("part-*.parquet"):
      assert pq.read_schema(path).remove_metadata() == parts.arrow_schema(table), path
  cell = "arch,loss,d,L,n,d_ff,batch,attention,heads,inputs,norm,ffn,causal,positions"
  assert list(grad.columns) == f"{cell},seed,layer,param,grad_norm".split(",")
  assert list(hidden.columns) == f"{cell},seed,layer,sq_norm".split(",")
  assert list(ln_jac.columns) == f"{cell},seed,layer,ln,value".split(",")
  cells = 2 * 2 * 3  # arch x d x L
  assert len(grad) == 3 * 6 * 2 * 2 * (1 + 2 + 4)  # seeds x params x arch x d x sum(L)
  assert len(hidden) == 3 * 2 * 2 * (2 + 3 + 5)  # seeds x arch x d x sum(L + 1)
  assert len(ln_jac) == 3 * 2 * (2 * (1 + 2 + 4) + 2 * (1 + 2 + 4) + 3)  # seeds x d x (post + pre + pre's final)
  assert set(hidden.groupby(["arch", "d", "L"])["layer"].max().reset_index().eval("layer == L + 1")) == {True}
  final = ln_jac[ln_jac["layer"] == ln_jac["L"] + 1]
  assert set(final["arch"]) == {"pre"} and set(final["ln"]) == {1}
  assert not grad.duplicated(["arch", "loss", "d", "L", "n", "d_ff", "seed", "layer", "param"]).any()
  assert grad.groupby(["arch", "d", "L"]).ngroups == cells
  meta = (tiny_store / "meta.json").read_text()
  for word in ("argv", "versions", "backend", "device_kind", "wall_time_s", "threefry2x32"):
    assert word in meta
  assert (tiny_store / "fits.json").exists()


@pytest.mark.slow
def test_stored_ln_jacobians_and_last_state_equal_their_definitions(tiny_store):
  """Lemma 3 on the store: every ln_jacobian.csv value of Pre-LN (d=8, L=4) equals the spectral norm
  of the LayerNorm's Jacobian computed numerically (jax.jacfwd, then SVD) at that LN's input in a plain
  forward loop over the same samples, averaged over positions, to 1e-5; the final LN is layer L+1, and
  hidden_norms.csv's layer L+1 is ||x_{L+1}||²/n of the state leaving the last layer."""
  cfg = nt.Config(arch="pre", d=8, L=4, n=4)
  arch = architectures.get("pre")
  rows = store.read(tiny_store, schema.LN_JACOBIAN_FILE)
  rows = rows[(rows.arch == "pre") & (rows.d == 8) & (rows.L == 4)]
  hidden = store.read(tiny_store, schema.HIDDEN_FILE)
  hidden = hidden[(hidden.arch == "pre") & (hidden.d == 8) & (hidden.L == 4) & (hidden.layer == 5)]
  jacobian = jax.jit(jax.vmap(jax.jacfwd(lambda r_d: layer_norm(r_d, cfg.eps))))

  def spectral_mean(z_nxd):
    return np.mean([np.linalg.norm(j, 2) for j in np.asarray(jacobian(z_nxd), np.float64)])

  for seed, seed_key in enumerate(sampling.seed_keys(nt.measure.as_key(0), np.arange(3))):
    p_key = sampling.params_key(seed_key)
    x_nxd = sampling.inputs(cfg, sampling.data_key(seed_key)).x
    expected = {}
    for l in range(1, cfg.L + 1):
      taps = Taps()
      x_nxd = arch.layer(sampling.layer_params(cfg, p_key, l), x_nxd, l, cfg.L, cfg, taps)
      expected |= {(l, k + 1): spectral_mean(z) for k, z in enumerate(taps.ln_inputs)}
    taps = Taps()
    arch.final(x_nxd, cfg.eps, taps)
    expected[(cfg.L + 1, 1)] = spectral_mean(taps.ln_inputs[0])
    got = rows[rows.seed == seed].set_index(["layer", "ln"])["value"]
    assert sorted(got.index) == sorted(expected)
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)
    stored = hidden[hidden.seed == seed]["sq_norm"].item()
    assert stored == pytest.approx(float((x_nxd**2).sum(-1).mean()), rel=1e-6)


@pytest.mark.slow
def test_cli_values_equal_the_library_api(tiny_store):
  """A CLI run's store holds the values nt.grad_norms returns for the same seeds and base seed: the same
  samples, equal to float32 rounding (the CLI's pass batches the cotangents of several depths)."""
  grad = store.read(tiny_store, schema.GRAD_FILE)
  for arch, d, L in [("post", 16, 4), ("pre", 8, 2)]:
    api = nt.grad_norms(nt.Config(arch=arch, d=d, L=L, n=4), seeds=3, key=0).to_frame()
    rows = grad[(grad.arch == arch) & (grad.d == d) & (grad.L == L)]
    merged = rows.merge(api, on=["seed", "layer", "param"], suffixes=("_cli", "_api"))
    assert len(merged) == len(api)
    np.testing.assert_allclose(merged["grad_norm_cli"], merged["grad_norm_api"], rtol=2e-6, atol=1e-7)


@pytest.mark.slow
def test_an_unpartitioned_prng_store_holds_its_own_draws_and_refuses_the_default(tmp_path, capsys):
  """--prng threefry2x32-unpartitioned: meta.json records it, the stored norms are the library's with a key
  of that name (not the default layout's), and extending the store with the default --prng exits 2."""
  out = tmp_path / "unpartitioned"
  argv = ["--arch", "pre", "--d", "8", "--L", "2", "--seeds", "2", "--n", "4", "--n-boot", "10", "--quiet"]
  assert cli.main([*argv, "--prng", prng.UNPARTITIONED, "--out", str(out)]) == 0
  assert json.loads((out / "meta.json").read_text())["settings"]["prng"] == prng.UNPARTITIONED
  grad = store.read(out, schema.GRAD_FILE).sort_values(["seed", "layer", "param"])
  cfg = nt.Config(arch="pre", d=8, L=2, n=4)
  own = nt.grad_norms(cfg, seeds=2, key=prng.make_key(0, prng.UNPARTITIONED)).to_frame()
  default = nt.grad_norms(cfg, seeds=2, key=0).to_frame()
  for api, equal in [(own, True), (default, False)]:
    api = api.sort_values(["seed", "layer", "param"])
    assert np.allclose(grad["grad_norm"].to_numpy(), api["grad_norm"].to_numpy(), rtol=2e-6) == equal
  capsys.readouterr()
  assert cli.main([*argv, "--out", str(out)]) == 2
  assert "prng" in capsys.readouterr().err


def snapshot(directory: Path) -> dict[str, bytes]:
  """Every file under ``directory`` (hidden ones included), path -> bytes."""
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags, words", [([], fit.short_report), (["--report", "full"], fit.report)])
def test_the_run_ends_with_the_short_report_and_report_full_prints_the_whole_text(tiny_store_copy, tiny_argv,
                                                                                  capsys, flags, words):
  """After the table the sweep prints fit.short_report of the fits.json it wrote (7 lines on post and pre),
  or with --report full fit.report's text (every fit in words), and nothing after it."""
  assert cli.main([*[a for a in tiny_argv if a != "--quiet"], *flags, "--out", str(tiny_store_copy)]) == 0
  out = capsys.readouterr().out
  text = words(json.loads((tiny_store_copy / "fits.json").read_text()))
  assert out.endswith("\n" + text + "\n")
  assert (len(text.splitlines()) == 7) == (not flags)


@pytest.mark.slow
def test_rerun_measures_nothing_and_more_seeds_adds_only_new_ones(tiny_store_copy, tiny_argv, capsys):
  """The same command again stores nothing new; --seeds 4 adds seed 3 only, as new parts: every stored part
  keeps its bytes."""
  stored_parts = {k: v for k, v in snapshot(tiny_store_copy).items() if k.endswith(".parquet")}
  before = nt.load(tiny_store_copy).grad
  assert cli.main([*[a for a in tiny_argv if a != "--quiet"], "--out", str(tiny_store_copy)]) == 0
  assert "12 already stored" in capsys.readouterr().out
  assert {k: v for k, v in snapshot(tiny_store_copy).items() if k.endswith(".parquet")} == stored_parts
  args = [*tiny_argv, "--out", str(tiny_store_copy)]
  args[args.index("--seeds") + 1] = "4"
  assert cli.main(args) == 0
  after = snapshot(tiny_store_copy)
  assert all(after[k] == v for k, v in stored_parts.items())
  grad = nt.load(tiny_store_copy).grad
  assert sorted(grad.seed.unique()) == [0, 1, 2, 3]
  pd.testing.assert_frame_equal(grad.iloc[: len(before)], before, check_exact=True)


# Run by a fresh interpreter: the sweep CLI, killed by SIGKILL right after the first part of its third seed
# chunk is written (a chunk cut short between its renames).
KILLED_AT_THE_THIRD_CHUNK = """
import os, signal, sys
from normtheory import cli, parts
real, chunks = parts.write_part, []
def write_part(directory, table, part_id, frame):
  chunks.append(part_id) if part_id not in chunks else None
  path = real(directory, table, part_id, frame)
  if len(chunks) == 3:
    os.kill(os.getpid(), signal.SIGKILL)
  return path
parts.write_part = write_part
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_sweep_killed_in_the_middle_of_a_pass_keeps_its_finished_chunks_and_resumes(tmp_path):
  """SIGKILL while the third of four seed chunks of one pass is being stored: the two finished chunks are
  stored (and nothing of the third), the lock is left behind; the same command takes the stale lock over,
  measures only the missing seeds and ends with every row once, bit for bit as an uninterrupted run."""
  out = tmp_path / "killed"
  args = ["--d", "8", "--L", "1,2", "--seeds", "4", "--chunk", "1", "--n", "4", "--n-boot", "10", "--quiet"]
  killed = subprocess.run([sys.executable, "-c", KILLED_AT_THE_THIRD_CHUNK, *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert (out / ".lock").exists()
  stored = store.ResultsStore(out, {"dtype": "float32", "eps": 1e-6, "base_seed": 0, "prng": "threefry2x32",
                                    "vocab": 1000}).stored_seeds()
  assert len(stored) == 4 and all(seeds == {0, 1} for seeds in stored.values()), stored
  assert len(list((out / "hidden_norms").glob("part-*"))) == 3  # the third chunk's hidden norms, an orphan
  assert cli.main([*args, "--out", str(out)]) == 0
  assert not (out / ".lock").exists() and len(list((out / "hidden_norms").glob("part-*"))) == 4
  assert cli.main([*args, "--out", str(tmp_path / "clean")]) == 0
  for field in ("grad", "hidden", "ln_jacobian"):
    resumed, clean = getattr(nt.load(out), field), getattr(nt.load(tmp_path / "clean"), field)
    keys = list(clean.columns[:-1])
    assert not resumed.duplicated(keys).any()
    pd.testing.assert_frame_equal(resumed.sort_values(keys).reset_index(drop=True),
                                  clean.sort_values(keys).reset_index(drop=True), check_exact=True)


# Run by a fresh interpreter: the sweep CLI, killed by SIGKILL when it starts its fits.
KILLED_IN_THE_FITS = """
import os, signal, sys
from normtheory import cli, fit
fit.write_fits = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_lock_left_by_a_sweep_killed_during_its_fits_is_taken_over(tmp_path):
  """SIGKILL during the fits leaves DIR/.lock (naming the dead pid) and every measured row; the same command
  takes the lock over, measures nothing, writes fits.json and removes the lock."""
  out = tmp_path / "store"
  args = ["--d", "8", "--L", "1,2", "--seeds", "2", "--n", "4", "--n-boot", "10", "--quiet", "--out", str(out)]
  killed = subprocess.run([sys.executable, "-c", KILLED_IN_THE_FITS, *args], capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert (out / ".lock").exists() and not (out / "fits.json").exists()
  rows = nt.load(out).grad
  assert cli.main(args) == 0
  assert not (out / ".lock").exists() and (out / "fits.json").exists()
  pd.testing.assert_frame_equal(nt.load(out).grad, rows, check_exact=True)


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
  """An exception while writing a CSV (e.g. Ctrl-C) leaves the old file complete and no partial rows."""
  target = tmp_path / "grad_norms.csv"
  target.write_text("old\n")

  class Interrupted(BaseException):
    pass

  def broken_fsync(fd):
    raise Interrupted

  monkeypatch.setattr(os, "fsync", broken_fsync)
  with pytest.raises(Interrupted):
    schema.atomic_write(target, "new,rows\n" * 1000)
  assert target.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["grad_norms.csv"]


@pytest.mark.parametrize(
    "flag_args, flag",
    [
        (["--L", "96..6"], "--L"),
        (["--L", "0"], "--L"),
        (["--L", "abc"], "--L"),
        (["--d", "-4"], "--d"),
        (["--d", "6..96:0"], "--d"),
        (["--arch", "middle"], "--arch"),
        (["--loss", "hinge"], "--loss"),
        (["--seeds", "0"], "--seeds"),
        (["--prng", "mt"], "--prng"),
        (["--dtype", "int8"], "--dtype"),
        (["--heads", "3", "--d", "64,96"], "--heads"),
        (["--heads", "0"], "--heads"),
        (["--attention", "softmax"], "--attention"),
        (["--inputs", "images"], "--inputs"),
        (["--tied"], "--tied"),
        (["--inputs", "text", "--loss", "linear"], "--inputs"),
        (["--inputs", "text", "--vocab", "1000"], "--vocab"),
        (["--batch", "0"], "--batch"),
        (["--preset", "huge"], "--preset"),
        (["--max-memory", "lots"], "--max-memory"),
        (["--max-memory", "0"], "--max-memory"),
        (["--report", "long"], "--report"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_flag_and_writes_nothing(tmp_path, stderr_line, flag_args, flag):
  """Each bad flag: exit status 2, exactly one stderr line naming the flag, no output directory created."""
  out = tmp_path / "never"
  assert cli.main([*flag_args, "--out", str(out)]) == 2
  assert flag in stderr_line()
  assert not out.exists()


def test_unwritable_out_and_settings_mismatch_exit_2(tmp_path, tiny_store, tiny_argv, stderr_line):
  """--out that cannot be a directory (under a regular file), or a store made with other settings:
  exit 2, one stderr line, nothing written."""
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  assert cli.main(["--out", str(blocker / "sub")]) == 2
  assert "--out" in stderr_line()
  assert blocker.read_text() == ""
  before = sorted(os.listdir(tiny_store))
  assert cli.main([*tiny_argv, "--dtype", "float64", "--out", str(tiny_store)]) == 2
  assert sorted(os.listdir(tiny_store)) == before


@pytest.mark.slow
def test_subprocess_exit_code_is_2_on_bad_input(tmp_path):
  """The script itself (not just main) exits with status 2 and one stderr line."""
  result = run_cli("--L", "96..6", "--out", str(tmp_path / "x"))
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1 and "--L" in result.stderr


def test_presets_set_the_relaxation_flags_and_explicit_flags_win(tmp_path):
  """--preset realistic = xavier attention, 8 heads, text inputs (so the xent loss and the byte
  vocabulary); an explicit --heads or --attention overrides the preset; no preset is the theorem's setting."""
  out = ["--out", str(tmp_path / "x")]
  args, axes = cli.parse(["--preset", "realistic", "--d", "64,128", *out])
  cfg = cli.base_config(args, axes)
  assert (cfg.attention, cfg.heads, cfg.inputs, cfg.loss, cfg.vocab) == ("xavier", 8, "text", "xent", 256)
  args, axes = cli.parse(["--preset", "realistic", "--heads", "4", "--attention", "uniform", *out])
  assert (args.heads, args.attention, args.inputs) == (4, "uniform", "text")
  args, axes = cli.parse(out)
  cfg = cli.base_config(args, axes)
  assert (cfg.attention, cfg.heads, cfg.inputs, cfg.loss, cfg.batch, cfg.tied) == ("uniform", 1, "gaussian", "linear", 1, False)
  assert not (tmp_path / "x").exists()
