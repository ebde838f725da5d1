"""normtheory: exact checks of where to put LayerNorm in a Transformer.

One model: :func:`grad_norms`. A grid of models, with the sweep's depth-sharing
engine and no store: :func:`measure_grid`. A results store written by the sweep CLI:
:func:`load` (:func:`export_csv` writes it as CSVs). Both give :class:`Frames`, the tidy tables that ``fit`` (bounds, power
laws, bootstrap CIs) and ``plot`` (the figures) take. ``theory`` has the paper's
lemmas and a mean-field predictor, ``depth_metrics`` the effective-depth metrics,
``probe`` exact per-layer gradient norms of your own JAX/Flax model with the same fits;
``import normtheory.warmup`` for the warm-up training demo.

Example:
  >>> import normtheory as nt
  >>> frames = nt.measure_grid(["post", "pre"], [16, 32], [2, 4], seeds=2, n=4)  # doctest: +SKIP
  >>> fits = nt.fit.fit_frame(frames.grad)  # doctest: +SKIP
  >>> nt.plot.fig_last_layer_vs_depth(frames.grad, fits)  # doctest: +SKIP

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture".
"""

import os

# LAPACK (the QRs of conditional weights, the fits' least squares) runs on OpenBLAS, whose
# threads fight XLA's thread pool: a 65536×16 QR took 600 ms with them and 10-20 ms
# without, on 2 loaded cores. It must be set before numpy loads OpenBLAS; a user's own wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from normtheory import depth_metrics, fit, plot, probe, schema, store, theory  # noqa: E402
from normtheory.architectures import ARCHITECTURES
from normtheory.config import ARCHS, LOSSES, PARAM_NAMES, Config
from normtheory.measure import GRAD_COLUMNS, HIDDEN_COLUMNS, GradNorms, grad_norms
from normtheory.store import Frames, export_csv, load
from normtheory.sweep import measure_grid

__all__ = [
    "ARCHITECTURES",
    "ARCHS",
    "depth_metrics",
    "fit",
    "plot",
    "probe",
    "schema",
    "store",
    "theory",
    "Config",
    "Frames",
    "GRAD_COLUMNS",
    "GradNorms",
    "HIDDEN_COLUMNS",
    "LOSSES",
    "PARAM_NAMES",
    "export_csv",
    "grad_norms",
    "load",
    "measure_grid",
]
