"""normtheory: exact checks of where to put LayerNorm in a Transformer.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture".
"""

from normtheory.architectures import ARCHITECTURES
from normtheory.config import ARCHS, LOSSES, PARAM_NAMES, Config
from normtheory.measure import GRAD_COLUMNS, HIDDEN_COLUMNS, GradNorms, grad_norms

__all__ = [
    "ARCHITECTURES",
    "ARCHS",
    "Config",
    "GRAD_COLUMNS",
    "GradNorms",
    "HIDDEN_COLUMNS",
    "LOSSES",
    "PARAM_NAMES",
    "grad_norms",
]
