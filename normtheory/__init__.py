"""normtheory: exact checks of where to put LayerNorm in a Transformer.

Submodules: ``fit`` (bounds, power laws, bootstrap CIs), ``theory`` (the paper's
lemmas and a mean-field predictor), ``depth_metrics`` (effective depth), ``probe``
(exact per-layer gradient norms of your own JAX/Flax model, with the same fits); import
``normtheory.plot`` for the figures and ``normtheory.training`` for the warm-up demo.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture".
"""

from normtheory import depth_metrics, fit, probe, schema, theory
from normtheory.architectures import ARCHITECTURES
from normtheory.config import ARCHS, LOSSES, PARAM_NAMES, Config
from normtheory.measure import GRAD_COLUMNS, HIDDEN_COLUMNS, GradNorms, grad_norms

__all__ = [
    "ARCHITECTURES",
    "ARCHS",
    "depth_metrics",
    "fit",
    "probe",
    "schema",
    "theory",
    "Config",
    "GRAD_COLUMNS",
    "GradNorms",
    "HIDDEN_COLUMNS",
    "LOSSES",
    "PARAM_NAMES",
    "grad_norms",
]
