"""Every name of normtheory the README shows can be imported: ``nt.fit.fit_frame``, ``theory.mean_field_gap``, ...

The README's text (code blocks and inline code) is scanned for dotted names whose
head is ``nt``, ``normtheory`` or one of the package's modules, and for
``from normtheory... import ...`` / ``import normtheory...`` lines; each must resolve
(the longest importable module prefix, then attributes). A layout change that
moves a module without re-exporting its names fails here.
"""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import normtheory

README = Path(__file__).resolve().parents[1] / "README.md"
FILE_SUFFIXES = {"py", "csv", "json", "md", "ipynb", "png", "pdf", "toml"}  # `store.py`, `depth_metrics.csv`
MODULES = {m.name for m in pkgutil.iter_modules(normtheory.__path__)}


def shown_names(text: str) -> set[str]:
  """``normtheory.<path>`` of every dotted name and import of the package in ``text``."""
  names = set()
  for head, tail in re.findall(r"(?<![\w./-])([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)", text):
    if tail.rsplit(".", 1)[-1] in FILE_SUFFIXES:
      continue
    if head in ("nt", "normtheory"):
      names.add("normtheory" + tail)
    elif head in MODULES:
      names.add(f"normtheory.{head}{tail}")
  for module, imported in re.findall(r"^\s*from (normtheory(?:\.\w+)*) import ([\w, ]+)", text, re.M):
    names.update(f"{module}.{name.split(' as ')[0].strip()}" for name in imported.split(","))
  names.update(re.findall(r"^\s*import (normtheory(?:\.\w+)*)", text, re.M))
  return names


def resolve(dotted: str):
  """The object a dotted name of the package names: its longest importable module, then attributes."""
  parts = dotted.split(".")
  for cut in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:cut]))
    except ModuleNotFoundError:
      continue
    for attribute in parts[cut:]:
      obj = getattr(obj, attribute)
    return obj
  raise ModuleNotFoundError(dotted)


NAMES = sorted(shown_names(README.read_text(encoding="utf-8")))


def test_the_readme_shows_the_names_a_user_imports():
  """The scan finds the README's API (so an empty scan cannot pass the test below)."""
  for name in ("normtheory.fit.fit_frame", "normtheory.fit.report", "normtheory.probe.grad_norms",
               "normtheory.plot.fig_last_layer_vs_depth", "normtheory.Config"):
    assert name in NAMES


def test_shown_names_skip_files_and_resolve_imports():
  """File names are not names; ``from normtheory.x import a, b as c`` gives a and b."""
  text = "`store.py`, `depth_metrics.csv`, nt.fit.table\nfrom normtheory.probe import plot as probe_plot, fit\n"
  assert shown_names(text) == {"normtheory.fit.table", "normtheory.probe", "normtheory.probe.plot", "normtheory.probe.fit"}
  with pytest.raises(AttributeError):
    resolve("normtheory.fit.no_such_name")


@pytest.mark.parametrize("name", NAMES)
def test_every_name_the_readme_shows_imports(name):
  assert resolve(name) is not None
