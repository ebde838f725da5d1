"""One model at initialization, described by a frozen dataclass.

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"
  (arXiv:2002.04745), Table 1 and Section 3.3: the single-head encoder whose
  last-layer FFN gradient Theorem 1 bounds.
"""

from __future__ import annotations

import dataclasses

ARCHS = ("post", "pre", "deepnorm", "sandwich", "lns", "mixln", "residual")
LOSSES = ("linear", "xent", "mse")
DTYPES = ("float32", "float64")
ATTENTIONS = ("uniform", "xavier")
INPUTS = ("gaussian", "text")
NORMS = ("layernorm", "rmsnorm", "dyt", "derf")
FFNS = ("relu", "gelu", "swiglu")
POSITIONS = ("none", "sinusoidal", "rope")
WEIGHTS = ("explicit", "conditional")  # how the weights are sampled (normtheory.sampling)
# Conditional weights: one stream of normals for every architecture, or one per architecture (the stores
# written before the setting; normtheory.sampling.for_cell).
CONDITIONAL_DRAWS = ("shared", "per-arch")
PARAM_NAMES = ("W_Q", "W_K", "W_V", "W_O", "W1", "W2")
GATE = "W3"  # SwiGLU's third matrix (its weight key is the layer key's child len(PARAM_NAMES))
# The parameters of each pointwise norm, per norm site k: param name f"{norm}{k}_{part}".
# DyT (Zhu et al. 2025, Eq. (2)): gamma * tanh(alpha x) + beta; Derf (Chen et al. 2025,
# Eq. (10)): gamma * erf(alpha x + s) + beta. alpha and s are scalars, gamma and beta d-vectors.
NORM_PARTS = {"layernorm": (), "rmsnorm": (), "dyt": ("alpha", "gamma", "beta"),
              "derf": ("alpha", "shift", "gamma", "beta")}
DEFAULT_ALPHA0 = 0.5  # DyT's alpha_0 (Zhu et al. 2025, Section 7) and Derf's (its code's alpha_init_value)
PLACEMENTS_OF_POINTWISE_NORMS = ("post", "pre")  # the archs DyT / Derf are built for
EMBEDDING = "E"  # the token embedding's param name (text inputs; reported at layer 0)
DEFAULT_VOCAB = 1000  # vocabulary of the xent read-out on Gaussian inputs
TEXT_VOCAB = 256  # text inputs: the byte-level vocabulary (normtheory.text)

# Named settings of the relaxation fields; explicit values win over a preset's.
PRESETS: dict[str, dict] = {
    "paper": {"attention": "uniform", "heads": 1, "inputs": "gaussian"},  # Theorem 1's idealisation
    "realistic": {"attention": "xavier", "heads": 8, "inputs": "text"},  # a real encoder reading text
    # A LLaMA-style decoder block (Touvron et al. 2023): Pre-RMSNorm, SwiGLU, causal, RoPE.
    "llama": {"arch": "pre", "norm": "rmsnorm", "ffn": "swiglu", "causal": True, "positions": "rope",
              "attention": "xavier", "inputs": "text"},
    # The same block without normalisation: DyT at every norm site (Zhu et al. 2025).
    "dyt": {"arch": "pre", "norm": "dyt", "ffn": "swiglu", "causal": True, "positions": "rope",
            "attention": "xavier", "inputs": "text"},
}


def default_d_ff(d: int, ffn: str = "relu") -> int:
  """The FFN width when none is given: d (Theorem 1's d×d matrices), and ``round(2d/3)``
  for SwiGLU, whose three d×d_ff matrices then hold the same 2d² parameters (Shazeer 2020,
  Section 2: the GLU variants' width is cut by 2/3 to keep the parameter count; LLaMA's
  ``2/3 · 4d`` is that rule applied to a 4d-wide FFN)."""
  return max(1, round(2 * d / 3)) if ffn == "swiglu" else d


def _require_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _require_choice(name: str, value, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class Config:
  """An L-layer Transformer encoder at initialization.

  The defaults are Theorem 1's idealisation: one head, ``W_Q = W_K = 0`` (uniform
  attention), i.i.d. Gaussian inputs, one sequence per sample. Each relaxation is a
  field (``attention``, ``heads``, ``inputs``, ``batch``; :data:`PRESETS` names two
  combinations).

  Text inputs (``inputs="text"``) are byte sequences of the standard library's
  language reference (:mod:`normtheory.text`) read through a token embedding E plus
  sinusoidal positions, with next-token cross-entropy: they need ``loss="xent"`` and
  the byte vocabulary, ``vocab = 256`` (``vocab=None`` picks it).

  Example:
    >>> Config(arch="pre", d=64, L=6).d_ff
    64

  Attributes:
    arch: where LayerNorm sits: one of ``ARCHS`` ("post", "pre", ...).
    d: model width; every attention matrix is d×d.
    L: number of layers.
    n: sequence length (positions per sample).
    d_ff: FFN hidden width; ``None`` means :func:`default_d_ff`: d, as in Theorem 1, and
      round(2d/3) for SwiGLU (its three d×d_ff matrices then hold the 2d² parameters of
      the theorem's two d×d ones).
    eps: LayerNorm epsilon (the theory uses 0).
    loss: read-out loss, one of ``LOSSES`` (SPEC §2).
    vocab: vocabulary size V of the ``xent`` loss; ``None`` means 1000 for Gaussian
      inputs and 256 (bytes) for text, the only value text allows.
    dtype: "float32" or "float64" (the latter runs under ``jax.enable_x64``).
    mixln_rho: Mix-LN's fraction rho of leading Post-LN layers (floor(rho L) of them).
    batch: input sequences per sample that share its weights; the loss is their mean.
    attention: "uniform" (W_Q = W_K = 0, the theorem's assumption) or "xavier"
      (W_Q, W_K drawn like the other weights).
    heads: attention heads, each of width d / heads (must divide d).
    inputs: "gaussian" (rows ~ N(0, I), the theorem's assumption) or "text".
    tied: text inputs only: the read-out reuses the token embedding E (no W_emb).
    norm: what every norm site of the placement holds (final norm included):
      "layernorm" (the theorem's), "rmsnorm" ``x / sqrt(mean(x²) + eps)``, or the
      pointwise "dyt" / "derf" (learned alpha at ``alpha0``, gamma = 1, beta = 0, Derf's
      shift s = 0); the pointwise ones are built for Post and Pre.
    alpha0: the initial alpha of DyT and Derf (> 0).
    ffn: "relu" (the theorem's), "gelu", or "swiglu" ``(silu(x W1) ⊙ x W3) W2``
      (the third matrix W3 is d×d_ff).
    causal: position i attends to positions 1..i only.
    positions: how positions enter: "none" (no position code), "sinusoidal" (added to
      text embeddings) or "rope" (rotary positions on queries and keys; text embeddings
      then carry none). ``None`` picks what each input kind always had: "sinusoidal" for
      text, "none" for Gaussian rows. RoPE only changes scores, so it needs
      ``attention="xavier"``.
    weights: "explicit" (every weight drawn in full) or "conditional" (each product
      drawn from its Gaussian conditional law given what the pass has seen, exact in
      law, never a d×d matrix: SPEC §6, :class:`normtheory.sampling.ConditionalWeight`).
      Conditional needs fewer rows per sample than every weight's input width
      (``batch · n < min(d, d_ff)``) and no tied read-out (a weight used twice).
    conditional_draws: conditional weights only: "shared" (every architecture's products
      draw the same normals, those of ``ARCHS[0]``, so Post-LN's numbers are the same
      either way) or "per-arch" (each architecture its own normals: the conditional stores
      whose meta.json has no ``conditional_draws``, which resume so). Each cell's law is the same.
  """

  arch: str = "pre"  # LayerNorm placement, see normtheory.architectures
  d: int = 64  # width of the residual stream
  L: int = 6  # depth (number of layers)
  n: int = 16  # sequence length
  d_ff: int | None = None  # FFN width; None -> d
  eps: float = 1e-6  # LayerNorm epsilon
  loss: str = "linear"  # "linear" | "xent" | "mse"
  vocab: int | None = None  # xent vocabulary; None -> 1000 (Gaussian) or 256 (text)
  dtype: str = "float32"  # "float32" | "float64"
  mixln_rho: float = 0.25  # Mix-LN: fraction of leading Post-LN layers
  batch: int = 1  # sequences per sample sharing its weights (loss = their mean)
  attention: str = "uniform"  # "uniform" (W_Q = W_K = 0) | "xavier"
  heads: int = 1  # attention heads of width d / heads
  inputs: str = "gaussian"  # "gaussian" | "text" (needs loss="xent", vocab=256)
  tied: bool = False  # text inputs: read-out tied to the token embedding
  norm: str = "layernorm"  # "layernorm" | "rmsnorm" | "dyt" | "derf", at every norm site
  alpha0: float = DEFAULT_ALPHA0  # DyT / Derf: the initial alpha
  ffn: str = "relu"  # "relu" | "gelu" | "swiglu"
  causal: bool = False  # causal attention mask
  positions: str | None = None  # "none" | "sinusoidal" | "rope"; None -> sinusoidal (text) or none
  weights: str = "explicit"  # "explicit" | "conditional" (exact in law, SPEC §6)
  conditional_draws: str = "shared"  # "shared" | "per-arch": whose normals each architecture's products read

  def __post_init__(self):
    _require_choice("arch", self.arch, ARCHS)
    _require_int("d", self.d, 2)
    _require_int("L", self.L, 1)
    _require_int("n", self.n, 1)
    _require_choice("ffn", self.ffn, FFNS)
    if self.d_ff is None:
      object.__setattr__(self, "d_ff", default_d_ff(self.d, self.ffn))
    _require_int("d_ff", self.d_ff, 1)
    if not isinstance(self.eps, (int, float)) or not self.eps >= 0:
      raise ValueError(f"eps must be a number >= 0, got {self.eps!r}")
    _require_choice("loss", self.loss, LOSSES)
    if self.vocab is None:
      object.__setattr__(self, "vocab", TEXT_VOCAB if self.inputs == "text" else DEFAULT_VOCAB)
    _require_int("vocab", self.vocab, 2)
    _require_choice("dtype", self.dtype, DTYPES)
    if not isinstance(self.mixln_rho, (int, float)) or not 0 <= self.mixln_rho <= 1:
      raise ValueError(f"mixln_rho must be a number in [0, 1], got {self.mixln_rho!r}")
    _require_int("batch", self.batch, 1)
    _require_choice("attention", self.attention, ATTENTIONS)
    _require_int("heads", self.heads, 1)
    if self.d % self.heads:
      raise ValueError(f"heads must divide d; got heads={self.heads}, d={self.d}")
    _require_choice("inputs", self.inputs, INPUTS)
    if self.inputs == "text" and (self.loss != "xent" or self.vocab != TEXT_VOCAB):
      raise ValueError(f"inputs='text' needs loss='xent' and vocab={TEXT_VOCAB} (bytes); "
                       f"got loss={self.loss!r}, vocab={self.vocab!r}")
    if not isinstance(self.tied, bool) or (self.tied and self.inputs != "text"):
      raise ValueError(f"tied must be a bool and needs inputs='text'; got tied={self.tied!r}, inputs={self.inputs!r}")
    _require_choice("norm", self.norm, NORMS)
    if self.norm in ("dyt", "derf") and self.arch not in PLACEMENTS_OF_POINTWISE_NORMS:
      raise ValueError(f"norm={self.norm!r} is built for arch {' or '.join(PLACEMENTS_OF_POINTWISE_NORMS)}; "
                       f"got arch={self.arch!r}")
    if isinstance(self.alpha0, bool) or not isinstance(self.alpha0, (int, float)) or not self.alpha0 > 0:
      raise ValueError(f"alpha0 must be a number > 0, got {self.alpha0!r}")
    if not isinstance(self.causal, bool):
      raise ValueError(f"causal must be a bool, got {self.causal!r}")
    if self.positions is None:
      object.__setattr__(self, "positions", "sinusoidal" if self.inputs == "text" else "none")
    _require_choice("positions", self.positions, POSITIONS)
    if self.positions == "rope" and self.attention != "xavier":
      raise ValueError("positions='rope' rotates queries and keys, which are zero under attention='uniform': "
                       "it needs attention='xavier'")
    if self.positions == "rope" and (self.d // self.heads) % 2:
      raise ValueError(f"positions='rope' rotates pairs of features: the head width d/heads must be even, "
                       f"got {self.d // self.heads}")
    if self.positions == "sinusoidal" and self.inputs != "text":
      raise ValueError("positions='sinusoidal' is added to text embeddings: it needs inputs='text' "
                       "(Gaussian inputs carry no position code)")
    _require_choice("weights", self.weights, WEIGHTS)
    _require_choice("conditional_draws", self.conditional_draws, CONDITIONAL_DRAWS)
    if self.weights == "conditional":
      check_conditional(self.batch * self.n, min(self.d, self.d_ff), self.tied)


def check_conditional(rows: int, width: int, tied: bool) -> None:
  """``ValueError`` naming the setting unless conditional weights can sample this model.

  Args:
    rows: rows each weight meets per sample, ``batch · n``.
    width: the smallest input width of a weight, ``min(d, d_ff)``.
    tied: whether the read-out is the token embedding (used twice: refused).
  """
  if rows >= width:
    raise ValueError(f"weights='conditional' needs batch*n < min(d, d_ff) (rows below every weight's input width); "
                     f"got batch*n={rows}, min(d, d_ff)={width}: use weights='explicit'")
  if tied:
    raise ValueError("weights='conditional' does not support tied=True (the embedding is used twice: by the input "
                     "and by the read-out); use weights='explicit'")


def norm_param_names(cfg: Config, sites: int) -> tuple[str, ...]:
  """The pointwise norms' parameter names of ``sites`` norm sites, ``f"{norm}{k}_{part}"``
  (k = 1..sites, parts of ``NORM_PARTS``); empty for LayerNorm and RMSNorm."""
  return tuple(f"{cfg.norm}{k}_{part}" for k in range(1, sites + 1) for part in NORM_PARTS[cfg.norm])


def layer_param_names(cfg: Config) -> tuple[str, ...]:
  """The per-layer weights whose gradient norms are measured: ``PARAM_NAMES``, W3 for
  SwiGLU, and the pointwise norms' parameters of the layer's two norm sites."""
  gate = (GATE,) if cfg.ffn == "swiglu" else ()
  return (*PARAM_NAMES, *gate, *norm_param_names(cfg, 2))


def final_param_names(cfg: Config) -> tuple[str, ...]:
  """The parameters of the norm after the last layer (reported at layer L + 1): site 1's
  names of :func:`norm_param_names` when the arch has a final norm and it has parameters."""
  return norm_param_names(cfg, 1) if cfg.arch == "pre" else ()


def reported_params(cfg: Config) -> tuple[str, ...]:
  """The weights whose gradient norms are measured: :func:`layer_param_names` per layer,
  the token embedding ``E`` (layer 0) for text inputs, and :func:`final_param_names`
  (layer L + 1; their names are site 1's, so each name is listed once)."""
  text = (EMBEDDING,) if cfg.inputs == "text" else ()
  return tuple(dict.fromkeys((*layer_param_names(cfg), *text, *final_param_names(cfg))))


def preset(name: str) -> dict:
  """The fields a preset sets (a copy of ``PRESETS[name]``); ``ValueError`` for an unknown name."""
  _require_choice("preset", name, tuple(PRESETS))
  return dict(PRESETS[name])
