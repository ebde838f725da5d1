"""Theorem 1's one-sided checks, the comparisons of tightness, and the bound's verdict in words.

A check is violated only by a CI entirely on the wrong side of its limit; a CI
containing the limit holds at the limit. Tightness (:func:`compare`) is a separate,
informational question, never a violation.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (the two bounds, upper bounds: checked one-sided).
"""

from __future__ import annotations

import numpy as np

from normtheory import theory
from normtheory.fit.estimators import ci
from normtheory.schema import CELL_DEFAULTS


HOLDS, AT_LIMIT, VIOLATED = "holds", "at the limit", "violated"


def one_sided_check(name: str, estimate: dict, limit: float, side: str, claim: str) -> dict:
  """Whether an estimate's CI respects ``value >= limit`` (side ">=") or ``value <= limit`` ("<=").

  Returns:
    ``{"name", "claim", "limit", "value", "ci", "status", "holds", "miss"}``: status "holds"
    (the CI lies on the allowed side), "at the limit" (the CI contains the limit:
    consistent with the bound, not distinguishable from its limit on this grid) or
    "violated" (the CI lies on the wrong side; ``miss`` is its distance to the limit).
  """
  lo, hi = estimate["ci"]
  wrong, right = (hi < limit, lo >= limit) if side == ">=" else (lo > limit, hi <= limit)
  miss = float(limit - hi if side == ">=" else lo - limit) if wrong else 0.0
  status = VIOLATED if wrong else HOLDS if right else AT_LIMIT
  return {"name": name, "claim": claim, "limit": float(limit), "value": estimate["value"], "ci": estimate["ci"],
          "status": status, "holds": not wrong, "miss": miss}


def bound_checks(arch: str, d_C: np.ndarray, power: dict, envelope: dict) -> list[dict]:
  """Theorem 1's one-sided claims against the CIs of one series (none for archs it does not cover)."""
  if arch not in theory.THEOREM_GAMMA:
    return []
  gamma = theory.THEOREM_GAMMA[arch]
  checks = []
  if "gamma" in power:
    checks.append(one_sided_check("gamma", power["gamma"], gamma, ">=", f"gamma >= {gamma:g}"))
  if "alpha" in power:
    top = theory.bound_d_exponent(d_C.min(), d_C.max())
    checks.append(one_sided_check("alpha", power["alpha"], top, "<=",
                                  f"alpha <= {top:.3f}, d sqrt(ln d)'s exponent over these widths"))
  for axis in ("slope_ln_L", "slope_ln_d"):
    if axis in envelope:
      checks.append(one_sided_check(f"envelope {axis}", envelope[axis], 0.0, "<=",
                                    f"slope <= 0: g/({envelope['shape']}) not growing in ln {axis[-1]}"))
  return checks


def compare(estimate: dict, lo: float, hi: float | None = None) -> dict:
  """Where an estimate's CI lies relative to a value (or interval ``[lo, hi]``).

  Returns:
    ``{"relation": "equal" | "larger" | "smaller", "gap": distance from the CI to
    the value (0 if equal)}``; "equal" means the CI meets it.
  """
  hi = lo if hi is None else hi
  ci_lo, ci_hi = estimate["ci"]
  if ci_lo > hi:
    return {"relation": "larger", "gap": float(ci_lo - hi)}
  if ci_hi < lo:
    return {"relation": "smaller", "gap": float(lo - ci_hi)}
  return {"relation": "equal", "gap": 0.0}


def _difference(estimate: dict, boot_B: np.ndarray, other: float, other_B: np.ndarray | float) -> dict:
  """Measured minus a reference (a constant or paired replicates), and whether the CI contains the reference."""
  diff = ci(estimate["value"] - other, boot_B - other_B)
  lo, hi = estimate["ci"]
  return {"value": float(other), "difference": diff, "contains": bool(lo <= other <= hi)}


def relaxed_assumptions(series: dict) -> list[str]:
  """The assumptions of Theorem 1 a series does not meet, as ``column=value``.

  Theorem 1 is stated for the cell defaults (``schema.CELL_DEFAULTS``): uniform
  attention (W_Q = W_K = 0), one head, i.i.d. Gaussian inputs, one sequence, the 2020
  block (LayerNorm, ReLU, no mask, no positions). A series measured otherwise
  (``--attention``, ``--heads``, ``--inputs``, ``--batch``, ``--norm``, ...) tests
  whether the bound's *shape* survives; the theorem itself says nothing there.
  """
  def default(column):  # text inputs always carried sinusoidal positions: not a further relaxation
    return "sinusoidal" if column == "positions" and series.get("inputs") == "text" else CELL_DEFAULTS[column]

  return [f"{column}={series[column]}" for column in CELL_DEFAULTS
          if column in series and series[column] != default(column)]


def bound_verdict(series: dict) -> str:
  """The one-sided verdict of a ``fits.json`` series' bound checks, in the report's words.

  Args:
    series: one entry of ``fits["series"]`` (its ``checks`` and cell columns).

  Returns:
    "Theorem 1's bound holds on this grid" (naming the checks whose CI contains the
    limit: cannot be told from it) or "VIOLATES Theorem 1's bound on this grid (...)"
    with each miss in numbers; for a series outside the theorem's assumptions
    (:func:`relaxed_assumptions`), whether the bound's shape holds or FAILS there, never
    a violation of the theorem; "no Theorem 1 bound for <arch>" where it has none.
  """
  checks = series["checks"]
  if not checks:
    return f"no Theorem 1 bound for {series['arch']}"
  relaxed = relaxed_assumptions(series)
  subject = (f"outside Theorem 1's assumptions ({', '.join(relaxed)}): its bound's shape" if relaxed
             else "Theorem 1's bound")
  violated = [c for c in checks if c["status"] == VIOLATED]
  if violated:
    misses = ", ".join(f"{c['name']} by {c['miss']:.3g}" for c in violated)
    return (f"{subject} FAILS on this grid ({misses})" if relaxed
            else f"VIOLATES {subject} on this grid ({misses})")
  at_limit = [c["name"] for c in checks if c["status"] == AT_LIMIT]
  return f"{subject} holds on this grid" + (f" ({', '.join(at_limit)} at the limit)" if at_limit else "")
