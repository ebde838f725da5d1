"""Read-out losses on the final representation, averaged over positions (SPEC §2).

Every loss is the mean over all positions of all B sequences of a sample, which is
the mean over the batch of the per-sequence losses (every sequence has n positions).

References:
  Xiong et al. 2020, Section 3.3 (the cross-entropy read-out of Theorem 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from normtheory.config import EMBEDDING
from normtheory.layers import Params, dense


def linear_loss(x_nxd, y_nxd, head: Params):
  """``(1/n) sum_i <y_i, x_i>``: a random linear read-out."""
  return (x_nxd * y_nxd).sum(-1).mean()


def xent_loss(x_nxd, t_n, head: Params):
  """``-(1/n) sum_i log softmax(W_emb x_i)[t_i]``, W_emb (V×d) Xavier-Gaussian.

  The read-out is ``head["W_emb"]``, or the token embedding ``head["E"]`` when it is
  tied to it (``Config.tied``: then the head has no W_emb); an array or a conditional
  weight (:func:`normtheory.layers.dense`).
  """
  w_emb_vxd = head["W_emb"] if "W_emb" in head else head[EMBEDDING]
  logits_nxv = dense("W_emb", x_nxd, w_emb_vxd.T, None)
  logp_nxv = jax.nn.log_softmax(logits_nxv, axis=-1)
  return -jnp.take_along_axis(logp_nxv, t_n[..., None], axis=-1).mean()


def mse_loss(x_nxd, y_nxd, head: Params):
  """``(1/(2n)) sum_i ||x_i - y_i||^2``."""
  return 0.5 * ((x_nxd - y_nxd) ** 2).sum(-1).mean()


LOSS_FUNCTIONS = {"linear": linear_loss, "xent": xent_loss, "mse": mse_loss}
