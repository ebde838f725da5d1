"""The fits as words and as a tidy table: the verdict text (:func:`report`, :func:`short_report`), :func:`table`.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (the bounds the verdicts name), Lemmas 2 and 3 (the ratio lines).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from normtheory import theory
from normtheory.fit.estimators import CI_LEVEL
from normtheory.fit.series import SERIES_KEYS, _extras, series_name
from normtheory.fit.verdicts import AT_LIMIT, VIOLATED, bound_verdict, relaxed_assumptions
from normtheory.schema import CELL_COLUMNS, FITS_FILE


def table(fits: dict) -> pd.DataFrame:
  """Every estimate of :func:`fit_frame`'s result as a tidy frame, one row per estimate.

  Columns: ``scope`` ("series", "ratio", "effective_depth"), the series keys
  (``SERIES_KEYS``; ratio rows have no arch; effective-depth rows add d and L),
  ``fit`` (e.g. "power_law", "envelope", "tightness"), ``quantity`` (e.g. "gamma",
  "slope_ln_L", "6-12" for a local exponent), ``value``, ``ci_lo``, ``ci_hi``.
  """
  rows = []

  def add(scope, keys, fit, quantity, estimate):
    lo, hi = estimate["ci"] if estimate.get("ci") else (None, None)
    rows.append({"scope": scope, **keys, "fit": fit, "quantity": quantity, "value": estimate["value"],
                 "ci_lo": lo, "ci_hi": hi})

  def estimates(scope, keys, fit, block):
    for quantity, estimate in block.items():
      if isinstance(estimate, dict) and "value" in estimate and "ci" in estimate:
        add(scope, keys, fit, quantity, estimate)

  for s in fits["series"]:
    keys = {k: s[k] for k in SERIES_KEYS}
    for fit in ("bound_shape", "power_law", "envelope"):
      estimates("series", keys, fit, s[fit])
    for step in s["local_exponents"]:
      add("series", keys, "local_exponent", f"{step['L'][0]}-{step['L'][1]}", step["gamma"])
  for r in fits["ratios"]:
    keys = {k: r[k] for k in SERIES_KEYS if k in r}
    estimates("ratio", keys, "power_law", r["power_law"])
    add("ratio", keys, "ratio", "beta", r["beta"])
    for c in r.get("lemma2_ratio", {}).get("cells", []):
      add("ratio", {**keys, "d": c["d"], "L": c["L"]}, "lemma2_ratio", "measured_over_predicted",
          c["measured_over_predicted"])
  for e in fits.get("effective_depth", []):
    add("effective_depth", {k: e[k] for k in CELL_COLUMNS}, "update_exponent", "kappa", e["kappa"])
  return pd.DataFrame(rows)



# ---------------------------------------------------------------------- report


def _num(x: float, digits: int = 3) -> str:
  """``%.{digits}g``, with float rounding noise (|x| < 1e-12) shown as 0."""
  return f"{0.0 if abs(x) < 1e-12 else x:.{digits}g}"


def _fmt(estimate: dict, digits: int = 3) -> str:
  if estimate["value"] is None or estimate["ci"] is None:
    return "n/a"
  lo, hi = estimate["ci"]
  return f"{_num(estimate['value'], digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _span(values) -> str:
  lo, hi = min(values), max(values)
  return f"{lo}" if lo == hi else f"[{lo}, {hi}]"


def _grid(cells: list[dict]) -> str:
  ds = sorted({c["d"] for c in cells})
  Ls = sorted({c["L"] for c in cells})
  seeds = sorted({c["n_seeds"] for c in cells})
  s = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
  return f"d in {{{', '.join(map(str, ds))}}}, L in {{{', '.join(map(str, Ls))}}}, {s} seeds/cell"



def _check_line(check: dict, relaxed: bool = False) -> str:
  head = f"  {check['name']} = {_fmt(check)}"
  if check["status"] == VIOLATED:
    return (f"{head}: {'FAILS' if relaxed else 'VIOLATED'} ({check['claim']}): the CI misses the limit by "
            f"{check['miss']:.3g}.")
  if check["status"] == AT_LIMIT:
    return (f"{head}: holds at the limit ({check['claim']}; the CI contains {_num(check['limit'])}: "
            "cannot tell it from the limit on this grid).")
  return f"{head}: holds ({check['claim']})."


_RELATION_WORDS = {
    "gamma": {"larger": "falls faster than", "smaller": "falls slower than", "equal": "equals"},
    "alpha": {"larger": "grows faster in d than", "smaller": "grows slower in d than", "equal": "is within"},
    "beta": {"larger": "grows faster than", "smaller": "grows slower than", "equal": "equals"},
}


def _theorem_words(item: dict) -> str:
  t = item["theorem"]
  lo, hi = t["expected"]
  target = {"gamma": f"the theorem's L^-{lo:g}", "alpha": f"d sqrt(ln d)'s range [{lo:g}, {hi:.3f}]",
            "beta": f"the theorem's sqrt(L) (beta = {lo:g})"}[item["name"]]
  gap = f" by {t['gap']:.3g}" if t["relation"] != "equal" else ""
  return f"{_RELATION_WORDS[item['name']][t['relation']]} {target}{gap}"


def _tightness_line(item: dict, note: str | None) -> str:
  axis = {"gamma": "L", "alpha": "d", "beta": "L"}[item["name"]]
  parts = [f"  tightness: {item['name']} = {_fmt(item)} over {axis} in {_span(item['over'])}"]
  if "theorem" in item:
    parts.append(_theorem_words(item))
  for source, label in (("mean_field", "mean field on the same cells"), ("linear_baseline", "linear loss")):
    if source in item:
      ref = item[source]
      inside = "the measured CI contains it" if ref["contains"] else "outside the measured CI"
      parts.append(f"{label} {_num(ref['value'])} (difference {_fmt(ref['difference'])}; {inside})")
  if "mean_field" not in item and note:
    parts.append(f"no mean-field prediction ({note})")
  return "; ".join(parts) + "."



def _series_lines(s: dict, theorem: bool) -> list[str]:
  b, p, e = s["bound_shape"], s["power_law"], s["envelope"]
  lines = [f"{series_name(s)}: {_grid(s['cells'])}"]
  bound = f"C = {_fmt(b['C'])}" + (f", gamma = {_fmt(b['gamma'])}" if "gamma" in b else "")
  lines.append(f"  bound shape C d sqrt(ln d) L^-gamma: {bound}, R^2 = {_r2_text(b['r2'])}")
  terms = [f"{k} = {_fmt(p[k])}" for k in ("alpha", "gamma") if k in p]
  lines.append(f"  power law C d^alpha L^-gamma: C = {_fmt(p['C'])}, {', '.join(terms) or 'one cell'}, "
               f"R^2 = {_r2_text(p['r2'])}")
  slopes = [f"slope in ln {k[-1]} = {_fmt(e[k])}" for k in ("slope_ln_L", "slope_ln_d") if k in e]
  lines.append(f"  envelope max g/({e['shape']}) = {_fmt(e['max'])}" + ("; " + ", ".join(slopes) if slopes else ""))
  if not theorem:
    return lines
  if not s["checks"]:
    lines.append(f"  no Theorem 1 bound for {s['arch']}; the fits above are descriptive.")
  else:
    lines.append(f"  Theorem 1's bound O({theory.THEOREM_SHAPE[s['arch']]}), one-sided, "
                 f"{100 * CI_LEVEL:.0f}% CIs over seeds:")
    lines.extend(_check_line(c, bool(relaxed_assumptions(s))) for c in s["checks"])
    lines.append(f"  => {s['arch']}: {bound_verdict(s)}.")
  note = s["mean_field"].get("note")
  lines.extend(_tightness_line(item, note) for item in s["tightness"])
  lines.extend(_local_lines(s))
  if s.get("lemma2_band"):
    lines.append(_band_line(s["lemma2_band"]))
  return lines


def _local_lines(s: dict) -> list[str]:
  steps = s["local_exponents"]
  if len(steps) < 2:
    return []
  parts = []
  for step in steps:
    mf = f" (mf {_num(step['mean_field'])})" if "mean_field" in step else ""
    parts.append(f"{step['L'][0]}->{step['L'][1]}: {_fmt(step['gamma'])}{mf}")
  return [f"  local exponent -dln g/dln L between consecutive depths (mean over d): {'; '.join(parts)}."]


def _band_line(band: dict) -> str:
  cells = band["cells"]
  count = {status: sum(c["status"] == status for c in cells) for status in ("inside", "at an edge", "outside")}
  deep = max(cells, key=lambda c: (c["L"], c["d"]))
  return (f"  Lemma 2: q_(L+1) = E||x_(L+1)||^2/d, CI inside [1 + L/2, 1 + 3L/2] in {count['inside']}/{len(cells)} "
          f"cells, across an edge in {count['at an edge']}, outside in {count['outside']}; "
          f"at d = {deep['d']}, L = {deep['L']}: {_fmt(deep['q'])}, band "
          f"[{deep['band'][0]:g}, {deep['band'][1]:g}], {deep['position']:.2f} of the way up.")


def _ratio_lines(r: dict) -> list[str]:
  lines = [f"post vs pre {series_name(r)}: g_post/g_pre ~ L^beta, beta = {_fmt(r['beta'])}"]
  lines.extend(_tightness_line(item, None) for item in r.get("tightness", []))
  if "lemma2_ratio" in r:
    cells = r["lemma2_ratio"]["cells"]
    over = [c["measured_over_predicted"]["value"] for c in cells]
    apart = [c for c in cells if not c["agrees"]]
    listed = "; ".join(f"d = {c['d']}, L = {c['L']}: {_fmt(c['measured_over_predicted'], 4)}" for c in apart[:4])
    lines.append(
        f"  Mean-field ratio (Lemmas 2, 3): measured g_pre/g_post over sqrt(3/(2 q_(L+1))), q measured: "
        f"{min(over):.3f} to {max(over):.3f} over {len(cells)} cells (median |difference| "
        f"{100 * np.median(np.abs(np.subtract(over, 1))):.1f}%); the CI contains 1 in {len(cells) - len(apart)}"
        + (f", not in {listed}{' ...' if len(apart) > 4 else ''}." if apart else "."))
  elif "lemma2_ratio_note" in r:
    lines.append(f"  Mean-field ratio check (Lemmas 2, 3) skipped: {r['lemma2_ratio_note']}.")
  if "lemma2_law" in r:
    law = r["lemma2_law"]
    lines.append(f"  (descriptive) SPEC law g_pre/g_post = a/sqrt(1 + c L): a = {_fmt(law['a'])}, "
                 f"c = {_fmt(law['c'])}, R^2 = {_r2_text(law['r2'])}.")
  return lines


def _title_lines(meta: dict) -> list[str]:
  """What was fitted and what the CIs cover, and a warning if non-finite values were left out."""
  layer = "the last layer L" if meta["layer"] == "L" else f"layer {meta['layer']}"
  title = "Theorem 1 on the grid" if meta["theorem"] else "Descriptive fits (Theorem 1 concerns W2 at layer L)"
  lines = [
      f"{title}: ||dLoss/d{meta['param']}|| at {layer}; {100 * meta['ci']:.0f}% CIs from a paired bootstrap "
      f"over seeds ({meta['n_boot']} replicates, seed {meta['seed']}): they cover seed noise on this grid only."
  ]
  if meta.get("dropped_nonfinite"):
    lines.append(f"  WARNING: {meta['dropped_nonfinite']} non-finite values were left out of these fits.")
  return lines


def report(fits: dict) -> str:
  """Plain-text verdict of :func:`fit_frame`'s result, one block per series and per Post/Pre pair.

  The bound (Theorem 1's one-sided claim: holds / holds at the limit / VIOLATED) and
  the tightness (whether the exponents equal the theorem's, and the mean field's on
  the same cells) are separate lines; tightness is never a violation.
  """
  meta = fits["meta"]
  lines = _title_lines(meta)
  for s in fits["series"]:
    lines.extend(_series_lines(s, meta["theorem"]))
  for r in fits["ratios"]:
    lines.extend(_ratio_lines(r))
  lines.extend(_effective_depth_lines(fits.get("effective_depth", [])))
  return "\n".join(lines)


def _short_bound_line(s: dict) -> str:
  """``series: <bound_verdict>; gamma = x [lo, hi] (<its claim>).`` (the power law's gamma where it has no check)."""
  gamma = next((c for c in s["checks"] if c["name"] == "gamma"), None)
  if gamma is not None:
    exponent = f"gamma = {_fmt(gamma)} ({gamma['claim']})"
  else:
    exponent = f"gamma = {_fmt(s['power_law']['gamma'])}" if "gamma" in s["power_law"] else "one depth"
  return f"{series_name(s)}: {bound_verdict(s)}; {exponent}."


def short_report(fits: dict) -> str:
  """The sweep CLI's default verdict text: per series its bound and tightness, the Post/Pre ratio, where the rest is.

  Every line is built by the same code as :func:`report`'s (the verdicts' words are
  the same): :func:`report`'s title (and non-finite warning), then per series one line
  with :func:`bound_verdict` and the depth exponent gamma with its CI and claim, and
  its gamma tightness line; per Post/Pre pair the ratio's first line; and one line
  naming where the rest is (``fits.json``, and ``--report full`` for :func:`report`'s text).

  Args:
    fits: :func:`fit_frame`'s (or :func:`fit_store`'s) result.

  Returns:
    The text, one line per item above.
  """
  meta = fits["meta"]
  lines = _title_lines(meta)
  for s in fits["series"]:
    lines.append(_short_bound_line(s))
    note = s.get("mean_field", {}).get("note")
    lines.extend(_tightness_line(item, note) for item in s.get("tightness", []) if item["name"] == "gamma")
  for r in fits["ratios"]:
    lines.append(_ratio_lines(r)[0])
  rest = "every one-sided check, alpha's tightness, local exponents, Lemma 2, the mean-field ratio"
  if fits.get("effective_depth"):
    rest += ", the effective depth"
  where = pathlib.Path(meta["results_dir"]) / FITS_FILE if "results_dir" in meta else FITS_FILE
  lines.append(f"The rest ({rest}): {where}; --report full prints it all as text.")
  return "\n".join(lines)


def _effective_depth_lines(entries: list[dict]) -> list[str]:
  if not entries:
    return []
  lines = [f"Effective depth: {entries[0]['metric']} ∝ l^-kappa over layers 1..L, {100 * CI_LEVEL:.0f}% paired "
           "bootstrap CI over seeds (the argument predicts kappa = 1/2 for pre, 0 for post):"]
  for e in entries:
    expected = "" if e["expected"] is None else f"; argument {e['expected']:g}"
    mf = "no mean-field model" if e["kappa_mean_field"] is None else f"mean field {e['kappa_mean_field']:.3g}"
    model = f"loss={e['loss']}, d={e['d']}, n={e['n']}, L={e['L']}{_extras(e)}"
    lines.append(f"  {e['arch']} ({model}, {e['n_seeds']} seeds): "
                 f"kappa = {_fmt(e['kappa'])}, R^2 = {_r2_text(e['r2'])}; {mf}{expected}")
  return lines


def _r2_text(r2: float | None) -> str:
  return "n/a" if r2 is None else f"{r2:.3f}"
