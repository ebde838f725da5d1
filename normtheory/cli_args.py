"""Command-line conventions shared by every script: bad input is one stderr line and exit status 2.

``experiments/grad_scaling.py`` (:mod:`normtheory.cli`), ``experiments/make_figures.py``
and ``experiments/warmup.py`` parse with :class:`ArgumentParser`, whose errors raise
:class:`UsageError` instead of printing the usage and exiting; each script's ``main``
validates everything before it writes anything, turns a ``UsageError`` into one line
on stderr with :func:`usage_exit`, and returns the exit status::

  def main(argv=None) -> int:
    try:
      args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
      return usage_exit("make_figures.py", error)
    ...
    return 0

  if __name__ == "__main__":
    sys.exit(main())
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2  # the exit status of bad input (argparse's and the shells' convention)


class UsageError(ValueError):
  """A bad command line; its message is printed as the one stderr line."""


class ArgumentParser(argparse.ArgumentParser):
  """An ``argparse.ArgumentParser`` whose errors raise :class:`UsageError`.

  ``--help`` still prints the help and exits with status 0.
  """

  def error(self, message: str):
    raise UsageError(message)


def usage_exit(prog: str, error: BaseException) -> int:
  """Print ``prog: error: <message>`` (its first line only) on stderr; returns ``EXIT_USAGE``.

  Args:
    prog: the script's name, e.g. ``"grad_scaling.py"``.
    error: the exception whose message explains what is wrong.

  Returns:
    2, the exit status of bad input.
  """
  message = str(error).strip().splitlines()
  print(f"{prog}: error: {message[0] if message else type(error).__name__}", file=sys.stderr)
  return EXIT_USAGE
