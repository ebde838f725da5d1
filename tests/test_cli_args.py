"""The scripts' shared command-line convention: bad input is one stderr line and exit status 2."""

import pytest

from normtheory import cli_args


def test_parser_errors_raise_usage_error_and_help_still_exits_0(capsys):
  """A bad or missing flag raises UsageError (nothing printed); --help prints and exits with status 0."""
  p = cli_args.ArgumentParser(prog="x.py")
  p.add_argument("--n", type=int, required=True)
  with pytest.raises(cli_args.UsageError, match="--n"):
    p.parse_args(["--n", "many"])
  with pytest.raises(cli_args.UsageError, match="required"):
    p.parse_args([])
  assert capsys.readouterr().err == ""
  with pytest.raises(SystemExit) as info:
    p.parse_args(["--help"])
  assert info.value.code == 0 and "--n" in capsys.readouterr().out


def test_usage_exit_prints_one_line_and_returns_2(capsys):
  """usage_exit prints 'prog: error: <first line>' on stderr only and returns 2."""
  assert cli_args.usage_exit("x.py", cli_args.UsageError("--n: bad\nmore detail")) == 2
  captured = capsys.readouterr()
  assert captured.err == "x.py: error: --n: bad\n" and captured.out == ""
