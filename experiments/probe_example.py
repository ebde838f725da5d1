"""Worked example of ``normtheory.probe``: a small GPT built only from Flax's own layers.

The model is ``nnx.Embed`` (tokens and positions), L blocks of ``nnx.LayerNorm``,
causal ``nnx.MultiHeadAttention`` and a ReLU MLP of two ``nnx.Linear``, and an
``nnx.Linear`` read-out, with Flax's default initializers, on batches of uniform
random tokens and the next-token cross-entropy. Two placements of LayerNorm:

* ``post``: ``x = LN(x + Attn(x)); x = LN(x + MLP(x))`` (no final LayerNorm);
* ``pre``:  ``x = x + Attn(LN(x)); x = x + MLP(LN(x))``, then a final LayerNorm.

Each is built two ways: a list of blocks (``nnx.List``, run in a Python loop) and
stacked blocks (``nnx.vmap`` over split RNGs, run with ``nnx.scan``), the two
layouts :func:`normtheory.probe.layout` recognises. The script probes all four over
a grid of depths, stores ``probe_norms/`` (Parquet parts), prints the fitted depth exponent and
the classification of every parameter group, and draws the figures::

  python experiments/probe_example.py                 # L in {2,4,8,16,32}, d = 64, 8 seeds
  python experiments/probe_example.py --depths 2,4,8 --widths 32,64 --seeds 4

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Theorem 1 (Post-LN flat in L, Pre-LN falling like L^(-1/2)) and Table 1.
  Radford et al. 2019 (GPT-2): the Pre-LN block with a final LayerNorm.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import pandas as pd
from flax import nnx

from normtheory import plot, probe, schema
from normtheory.probe import plot as probe_plot

VOCAB = 256  # token vocabulary
SEQ = 16  # tokens per sequence
BATCH = 4  # sequences per batch
HEADS = 4  # attention heads (must divide d)
MLP_RATIO = 4  # MLP width / d
PLACEMENTS = ("post", "pre")
LAYOUTS = ("list", "scan")
GROUP = "fc2/kernel"  # the block's last weight, Theorem 1's W2
CAPTIONS = {
    "fig_probe_last_layer_vs_depth": (
        "The example GPT (list of blocks, Flax default init, random tokens, next-token cross-entropy): "
        "||dLoss/d fc2/kernel|| of the last block vs depth L (log-log), mean over seeds with a 5-95% band; dotted: "
        "the fit C L^-gamma; gray: Theorem 1's shapes C d sqrt(ln d) (Post) and C d sqrt(ln d / L) (Pre) scaled by "
        "the envelope max g/shape (normtheory.plot.fig_last_layer_vs_depth of normtheory.probe.to_grad_table)."),
    "fig_probe_layer_profile": (
        "The example GPT: mean ||dLoss/d fc2/kernel|| of every block l for several depths L, one panel per "
        "placement (the analogue of Xiong et al. Fig. 3(a,b))."),
}


class Block(nnx.Module):
  """One Transformer block with LayerNorm after (``post``) or before (``pre``) each residual branch."""

  def __init__(self, d: int, placement: str, rngs: nnx.Rngs):
    self.placement = placement
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(HEADS, d, decode=False, keep_rngs=False, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.fc1 = nnx.Linear(d, MLP_RATIO * d, rngs=rngs)
    self.fc2 = nnx.Linear(MLP_RATIO * d, d, rngs=rngs)

  def mlp(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x)))

  def __call__(self, x_BxNxD, mask):
    if self.placement == "post":
      x_BxNxD = self.ln1(x_BxNxD + self.attn(x_BxNxD, mask=mask))
      return self.ln2(x_BxNxD + self.mlp(x_BxNxD))
    x_BxNxD = x_BxNxD + self.attn(self.ln1(x_BxNxD), mask=mask)
    return x_BxNxD + self.mlp(self.ln2(x_BxNxD))


class GPT(nnx.Module):
  """Token and position embeddings, L blocks (a list, or stacked and scanned), a final LN for Pre-LN, a read-out."""

  def __init__(self, L: int, d: int, placement: str, layout: str, rngs: nnx.Rngs):
    self.layout = layout
    self.tokens = nnx.Embed(VOCAB, d, rngs=rngs)
    self.positions = nnx.Embed(SEQ, d, rngs=rngs)
    if layout == "list":
      self.blocks = nnx.List([Block(d, placement, rngs) for _ in range(L)])
    else:
      @nnx.split_rngs(splits=L)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def stack(rngs):
        return Block(d, placement, rngs)

      self.blocks = stack(rngs)
    self.ln_f = nnx.LayerNorm(d, rngs=rngs) if placement == "pre" else None
    self.head = nnx.Linear(d, VOCAB, rngs=rngs)

  def __call__(self, tokens_BxN):
    """Logits ``(B, N, VOCAB)`` and the residual stream entering each block (the probe's taps)."""
    x_BxNxD = self.tokens(tokens_BxN) + self.positions(jnp.arange(tokens_BxN.shape[1]))
    mask = nnx.make_causal_mask(tokens_BxN)
    if self.layout == "list":
      taps = []
      for block in self.blocks:
        taps.append(x_BxNxD)
        x_BxNxD = block(x_BxNxD, mask)
    else:
      @nnx.scan(in_axes=(0, nnx.Carry, None), out_axes=(nnx.Carry, 0))
      def run(block, x_BxNxD, mask):
        return block(x_BxNxD, mask), x_BxNxD

      x_BxNxD, taps = run(self.blocks, x_BxNxD, mask)
    if self.ln_f is not None:
      x_BxNxD = self.ln_f(x_BxNxD)
    return self.head(x_BxNxD), taps


def model_factory(placement: str, layout: str):
  """``make_model(L, d, key)`` of one placement and layout, for :func:`normtheory.probe.depth_sweep`."""
  return lambda L, d, key: GPT(L, d, placement, layout, nnx.Rngs(key))


def make_batch(d: int, key: jax.Array) -> jax.Array:
  """``BATCH`` sequences of ``SEQ + 1`` uniform random tokens (inputs and next-token targets)."""
  return jax.random.randint(key, (BATCH, SEQ + 1), 0, VOCAB)


def loss_fn(model: GPT, tokens_BxM):
  """Mean next-token cross-entropy, and the residual-stream taps."""
  logits_BxNxV, taps = model(tokens_BxM[:, :-1])
  logp_BxNxV = jax.nn.log_softmax(logits_BxNxV, axis=-1)
  return -jnp.take_along_axis(logp_BxNxV, tokens_BxM[:, 1:, None], axis=-1).mean(), taps


def _ints(text: str) -> list[int]:
  values = [int(v) for v in text.split(",")]
  if not values or min(values) < 1:
    raise ValueError(f"expected positive integers, got {text!r}")
  return values


class _Parser(argparse.ArgumentParser):
  """Bad input: one line on stderr and exit status 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv) -> argparse.Namespace:
  p = _Parser(prog="probe_example.py", description=__doc__.splitlines()[0])
  p.add_argument("--depths", default="2,4,8,16,32", help="comma list of depths L")
  p.add_argument("--widths", default="64", help=f"comma list of widths d (multiples of {HEADS})")
  p.add_argument("--seeds", type=int, default=8, help="samples per (d, L)")
  p.add_argument("--layouts", default="list,scan", help="comma list of list, scan")
  p.add_argument("--out", default="results/probe", help="results store (probe_norms/)")
  p.add_argument("--figures", default="figures/probe", help="folder for the PNG/PDF figures")
  p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the fits")
  p.add_argument("--dpi", type=int, default=120, help="PNG resolution")
  args = p.parse_args(argv)
  try:
    args.depths, args.widths = _ints(args.depths), _ints(args.widths)
  except ValueError as e:
    p.error(str(e))
  args.layouts = args.layouts.split(",")
  if len(set(args.depths)) < 2 or any(d % HEADS for d in args.widths) or args.seeds < 2 or args.n_boot < 2 \
      or not set(args.layouts) <= set(LAYOUTS):
    p.error(f"need >= 2 depths, widths divisible by {HEADS}, --seeds >= 2, --n-boot >= 2 and layouts from "
            f"{','.join(LAYOUTS)}")
  return args


def main(argv=None) -> dict:
  """Run the sweep, print the verdicts, write the figures; returns the fitted groups and figure paths."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse(argv)
  frames = []
  for layout in args.layouts:
    for placement in PLACEMENTS:
      frames.append(probe.depth_sweep(
          model_factory(placement, layout), args.depths, args.widths, make_batch, loss_fn, args.seeds, key=0,
          cell={"arch": placement, "layers": layout}, out=args.out, progress=lambda line: print(line, flush=True)))
  frame = pd.concat(frames, ignore_index=True)
  groups = probe.fit_groups(frame, n_boot=args.n_boot)
  print(probe.report(groups, frame))
  print(f"\nTheorem 1's W2 is each block's {GROUP}:")
  for _, g in groups[groups["param"] == GROUP].iterrows():
    print(f"  {g['arch']:>4} ({g['layers']}): gamma = {g['gamma']:.3f} [{g['gamma_lo']:.3f}, {g['gamma_hi']:.3f}]"
          f" -> {g['verdict']}")
  grad = probe.to_grad_table(frame[frame["layers"] == args.layouts[0]], arch="arch")
  figures = {
      "fig_probe_last_layer_vs_depth": plot.fig_last_layer_vs_depth(grad, param=GROUP),
      "fig_probe_layer_profile": plot.fig_layer_profile(grad, param=GROUP),
      "fig_probe_exponents": probe_plot.fig_exponents(groups),
  }
  paths = {name: plot.save(fig, args.figures, name, dpi=args.dpi) for name, fig in figures.items()}
  captions = {**CAPTIONS, "fig_probe_exponents": probe_plot.CAPTION}
  captions = "\n".join(f"- `{name}`: {captions[name]}" for name in figures)
  command = " ".join(["python experiments/probe_example.py", *argv])
  schema.atomic_write(pathlib.Path(args.figures) / "captions.md", f"# Figures of `{command}`\n\n{captions}\n")
  print(f"wrote {args.out}/probe_norms/ and {len(paths)} figures to {args.figures}/")
  return {"groups": groups, "figures": paths}


if __name__ == "__main__":
  main()
