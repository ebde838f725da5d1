"""Conditional weights (SPEC §6), the law: conditional and explicit samples (disjoint seeds) agree by
two-sample tests (z on means and on variances, Kolmogorov–Smirnov) with enough seeds to see a 2%
shift (slow; the algebra is ``test_conditional_algebra.py``).
"""

import dataclasses

import numpy as np
import pytest
from scipy import stats

import normtheory as nt
from normtheory import engine, prng

KEY = prng.make_key(0, "threefry2x32")
LAW_SEEDS = 1000
LAW_L = 4


def two_sample(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  """z of the difference of means, z of the difference of variances (asymptotic variance of the
  sample variance, ``(m4 - s^4)/n``), the Kolmogorov–Smirnov p-value, and the relative shift of
  the mean that a two-sided 5% z test sees with 80% power (2.8 standard errors)."""
  na, nb = len(a), len(b)
  z_mean = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / na + b.var(ddof=1) / nb)
  var_se = lambda x: (((x - x.mean()) ** 4).mean() - x.var() ** 2) / len(x)
  z_var = (a.var(ddof=1) - b.var(ddof=1)) / np.sqrt(var_se(a) + var_se(b))
  detectable = 2.8 * np.sqrt(a.var(ddof=1) / na + b.var(ddof=1) / nb) / abs(b.mean())
  return {"z_mean": float(z_mean), "z_var": float(z_var), "ks_p": float(stats.ks_2samp(a, b).pvalue),
          "detectable": float(detectable)}


def law_report(d: int, loss: str, seeds: int = LAW_SEEDS, L: int = LAW_L) -> dict[tuple, dict]:
  """(arch, quantity) -> :func:`two_sample` of explicit (seeds 0..S-1) against conditional
  (seeds S..2S-1), Post and Pre in one pass, n = 4: last-layer W2 and first-layer W_V norms,
  ``sq_norm`` at layers 1, L/2 and L + 1, and the first LN Jacobian of layer L/2."""
  cfg = nt.Config(d=d, n=4, loss=loss)
  explicit = engine.measure_archs(cfg, ("post", "pre"), (L,), np.arange(seeds), KEY)
  conditional = engine.measure_archs(dataclasses.replace(cfg, weights="conditional"), ("post", "pre"), (L,),
                                     np.arange(seeds, 2 * seeds), KEY)
  report = {}
  for arch in ("post", "pre"):
    quantities = lambda r: {
        "W2 layer L": r.grad_norms["W2"][:, L - 1], "W_V layer 1": r.grad_norms["W_V"][:, 0],
        "sq_norm 1": r.sq_norms[:, 0], "sq_norm L/2": r.sq_norms[:, L // 2 - 1], "sq_norm L+1": r.sq_norms[:, L],
        "ln_jacobian L/2": r.ln_jacobian[:, L // 2 - 1, 0], "loss": r.loss,
    }
    e, c = quantities(explicit[arch][L]), quantities(conditional[arch][L])
    for name in e:
      report[arch, name] = two_sample(c[name].astype(np.float64), e[name].astype(np.float64))
  return report


@pytest.mark.slow
@pytest.mark.parametrize("d", [64, 256])
@pytest.mark.parametrize("loss", ["linear", "xent"])
def test_conditional_weights_have_the_explicit_law(d, loss):
  """|z| <= 4.5 on means and variances and KS p >= 1e-4 for every quantity (about 60 tests
  per width over the suite: a 4.5-sigma threshold keeps a false alarm below 1e-3), with seeds
  enough to see a 2% shift of the last-layer gradient norm's mean (80% power at 5%). Drawing
  G_b without the projection (I - QQᵀ) fails it (README, "Where the asymptotics live")."""
  report = law_report(d, loss)
  for (arch, name), r in report.items():
    label = f"{arch} {name} d={d} {loss}: {r}"
    assert abs(r["z_mean"]) <= 4.5 and abs(r["z_var"]) <= 4.5 and r["ks_p"] >= 1e-4, label
    if name == "W2 layer L":
      assert r["detectable"] <= 0.02, label
