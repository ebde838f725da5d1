"""Probe your own model: exact per-layer gradient norms at init, their depth and width exponents.

One module per job, the public names re-exported here (``nt.probe.grad_norms``, ...):
:mod:`~normtheory.probe.measure` (the gradient norms and the stored sweep),
:mod:`~normtheory.probe.paths` (the layer of each array, read off its path),
:mod:`~normtheory.probe.fit` (exponents per parameter group, and their words) and
:mod:`~normtheory.probe.plot` (the figure of the exponents).

normtheory measures its own Transformers; this module measures *yours*. Give it
three functions and it returns ``||dLoss/dW||_F`` of every parameter array of the
model, per seed, with the layer each array belongs to read off its parameter path::

  make_model(key) -> nnx.Module            (or, for plain JAX / Linen, (apply_fn, params))
  make_batch(key) -> batch                 (any pytree)
  loss_fn(model, batch) -> scalar          (or (scalar, taps), see below)

For a plain-JAX model the ``model`` handed to ``loss_fn`` is ``apply_fn`` with the
parameters bound (``model(*args) = apply_fn(params, *args)``; ``apply_fn`` must not
depend on the key); for Linen return ``(module.apply, variables)``. Each seed's
model is built eagerly, then the gradients are exact (``jax.grad``), vmapped over
seeds and jitted once per model shape. Sample ``s`` draws its model from
``sampling.params_key(k_s)`` and its batch from ``sampling.data_key(k_s)`` with
``k_s = fold_in(key, s)``, the keys normtheory's own sweep uses.

The layer of each array comes from its path (:mod:`normtheory.probe.paths`: a
list or dict of layers, ``layers/3/...``; stacked, scanned layers found by
``num_layers=`` or the ``axis=`` hint; ``layer_of=`` overrides), numbered 1..L;
arrays outside the stack (embeddings, a final norm, a read-out) are reported with
an empty ``layer``.

Taps: ``loss_fn`` may return ``(loss, taps)`` with ``taps`` the residual-stream
state entering each layer (a sequence of L arrays, or one array whose leading
axis is the layer, as ``nnx.scan`` returns it); every row then gets ``sq_norm``,
the mean squared norm over the last (feature) axis of the state entering its
layer (``||x_l||²/n`` of normtheory's tables).

A seed whose loss (or a gradient norm) is NaN/inf is not an error: its rows are
flagged (``nonfinite``), counted by :func:`summary` and :func:`report`, and left
out of the fits. :func:`depth_sweep` stores a grid of depths and widths in
``probe_norms.csv``; :func:`fit_groups`, :func:`classify` and :func:`report`
(:mod:`normtheory.probe.fit`) give each parameter group's exponents and the
words; :func:`to_grad_table` feeds :mod:`normtheory.plot`, and
:func:`normtheory.probe.plot.fig_exponents` draws the groups' exponents.

Example::

  frame = nt.probe.grad_norms(make_model, make_batch, loss_fn, seeds=8)
  frame[frame.param == "mlp/fc2/kernel"].groupby("layer").grad_norm.mean()
  sweep = nt.probe.depth_sweep(make_model_Ld, [2, 4, 8, 16], [64], make_batch_d, loss_fn,
                               cell={"arch": "pre"}, out="results/probe")
  print(nt.probe.report(nt.probe.fit_groups(sweep), sweep))

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Section 3.3 and Theorem 1 (the measured ``||dLoss/dW^l||_F`` and its depth laws).
  Yang et al. 2021, "Tensor Programs V" (muP), ``coord_check``: per-layer scales of
    a user's own model as a tidy table.
"""

# The public names of normtheory.probe.
from normtheory.probe import plot
from normtheory.probe.fit import (FLAT_BAND, GROUP_COLUMNS, NEITHER, POST_LIKE, PRE_BAND, PRE_LIKE, SWEEP_AXES,
                                  ZERO_RTOL, cell_columns, classify, fit_groups, report, rows_of, to_grad_table)
from normtheory.probe.measure import depth_sweep, grad_norms, read_probe, summary
from normtheory.probe.paths import STACKED, LayoutError, Leaf, layout

__all__ = [
    "FLAT_BAND", "GROUP_COLUMNS", "NEITHER", "POST_LIKE", "PRE_BAND", "PRE_LIKE", "STACKED", "ZERO_RTOL",
    "LayoutError", "Leaf", "cell_columns", "classify", "depth_sweep", "fit_groups", "grad_norms", "layout",
    "plot", "read_probe", "report", "rows_of", "summary", "to_grad_table",
]
