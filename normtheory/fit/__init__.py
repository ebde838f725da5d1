"""Estimators of the results store: power-law fits, paired bootstrap CIs, Theorem 1's verdicts.

One module per job, every public name re-exported here (``nt.fit.fit_frame``, ...):
:mod:`~normtheory.fit.readers` (the store's tables, through :mod:`normtheory.store`),
:mod:`~normtheory.fit.estimators` (seed summaries, the paired bootstrap, least squares),
:mod:`~normtheory.fit.verdicts` (one-sided checks, tightness comparisons, the bound's verdict),
:mod:`~normtheory.fit.series` (per-series orchestration, ``fits.json``) and
:mod:`~normtheory.fit.reporting` (the verdict text, short and full, and the tidy table).

The one home of the package's estimators (log-log least squares, the paired
bootstrap and its CI level); the theorem's formulas live in :mod:`normtheory.theory`.
Input is the tidy table of the results store (``DIR/grad_norms.csv``, one row per
seed, layer and weight). The fitted quantity is one weight's gradient norm at one
layer, by default ``g = ||dLoss/dW2||_F`` at the last layer ``l = L``, in every
(d, L) cell of a *series*: one value of every cell column but d and L (arch, loss,
n, d_ff, batch, attention, heads, inputs; ``SERIES_KEYS``). Per series:

* bound shape   ``g = C · d √(ln d) · L^(−γ)``  (fit ln C and γ);
* power law     ``g = C · d^α · L^(−γ)``         (log-log least squares);
* envelope      ``max g / shape`` over the grid and the slopes of ``ln(g / shape)`` in
  ln L and ln d, with ``shape`` Theorem 1's bound (:func:`normtheory.theory.bound_shape`);
* local exponents ``−Δln g / Δln L`` between consecutive depths of the grid;
* **checks** (Theorem 1's claim, one-sided, Post-LN and Pre-LN only): γ at least the
  theorem's (Post 0, Pre ½), α at most the effective exponent of ``d √ln d`` on the
  grid's widths, envelope slopes at most 0. A CI entirely on the wrong side is a
  violation (with the miss); a CI containing the limit holds at the limit;
* **tightness** (informational, never a violation): whether α and γ equal the
  theorem's, and how they compare with the mean field
  (:func:`normtheory.theory.last_layer_w2_curve`) fitted on the same cells, or,
  for another loss, with the store's linear-loss series of the same cells;
* Lemma 2's band for Pre-LN's ``q_{L+1} = E||x_{L+1}||²/d`` (needs ``hidden_norms.csv``
  with the row ``layer = L + 1``, the state after the last layer).

Per pair of Post and Pre series with the same other keys: the ratio
``g_post/g_pre ∝ L^β`` (Theorem 1's bounds differ by √L), the check of
``g_pre/g_post = √(3 / (2 q_{L+1}))`` (:func:`normtheory.theory.pre_post_ratio`) in
every cell, and SPEC §5's law ``a / √(1 + c L)`` where it converges.

Point estimates fit the per-cell means over seeds. Every number carries a 95%
percentile CI from a *paired* bootstrap: seed s has the same inputs, targets and
weights in every cell of a pass and every arch, so each replicate resamples the
seed indices once (:func:`paired_bootstrap_means`) and reuses them for every cell,
arch and table; ratios and differences keep the pairing. The CIs cover the seed
noise on the given grid only, not the extrapolation beyond it. R² is that of the
point fit, on ln g.

Example:
  >>> fits = fit_frame(frame, n_boot=200)          # doctest: +SKIP
  >>> print(report(fits))                          # doctest: +SKIP

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (the two bounds), Lemma 2 (growth of the Pre-LN residual stream),
    Lemma 3 (the LayerNorm Jacobian).
  Su 2022, "Why is Pre Norm worse than Post Norm?" (kexue.fm/archives/9009): the
    effective-depth argument.
  Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 13 (percentile CIs).
"""

# The public names of normtheory.fit, and the private helpers other modules use.
from normtheory.fit.estimators import (
    CI_LEVEL,
    CI_SCOPE,
    QUANTILES,
    UpdateExponent,
    bound_shape_fit,
    ci,
    envelope_fit,
    fit_update_exponent,
    lemma2_law_fit,
    local_exponents,
    log_scale,
    paired_bootstrap_means,
    power_law_curve,
    power_law_fit,
    select,
    summarize,
)
from normtheory.fit.readers import read_depth_metrics, read_grad_norms, read_hidden_norms, read_ln_jacobian
from normtheory.fit.reporting import _fmt, report, short_report, table
from normtheory.fit.series import (
    SERIES_DEFAULTS,
    SERIES_KEYS,
    arch_key,
    effective_depth_fits,
    fit_frame,
    fit_store,
    series_name,
    write_fits,
)
from normtheory.fit.verdicts import (
    AT_LIMIT,
    HOLDS,
    VIOLATED,
    bound_checks,
    bound_verdict,
    compare,
    one_sided_check,
    relaxed_assumptions,
)
