"""How the last layer's batch-gradient norm scales with the batch size B (the paper's Fig. 3 statistic).

A training step sees the gradient of the loss averaged over B sequences that share
the weights. For the linear loss with independent zero-mean targets the B
per-sequence gradients are uncorrelated, so ``E||g_B||² = E||g_1||²/B``: the norm
falls like ``1/√B``. For cross-entropy the per-sequence gradients may share a part
that does not average out (the softmax of shared weights is not uniform), which would
put a floor under ``1/√B`` at large B; the table shows whether one is visible on the
grid measured. One store per B::

  python experiments/batch_scaling.py --out results/batch

runs ``python experiments/grad_scaling.py --arch post,pre --loss linear,xent --d 64
--L 6,24 --seeds 8 --batch B --out results/batch/B<B>`` for B in {1, 2, 4, 8, 16}
(printed before each starts; an interrupted run resumes), then prints, per arch,
loss and L, the mean last-layer ``||dLoss/dW2||_F`` over seeds for every B, its ratio
to B = 1, and ``sqrt(B) * ratio`` (1 where the norm falls like ``1/√B``).

References:
  Xiong et al. 2020, Section 3.4 and Fig. 3 (gradient norms of a batch at init).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import pandas as pd

from normtheory import cli, schema, store


def command(B: int, args: argparse.Namespace) -> list[str]:
  """The grad_scaling.py arguments for batch size B."""
  return ["--arch", args.arch, "--loss", "linear,xent", "--d", args.d, "--L", args.L, "--seeds", str(args.seeds),
          "--batch", str(B), "--n-boot", "50", "--quiet", "--out", str(pathlib.Path(args.out) / f"B{B}")]


def table(out: pathlib.Path, batches: list[int]) -> pd.DataFrame:
  """Mean last-layer W2 norm per (arch, loss, d, L) and B, its ratio to B = 1, and sqrt(B) times that."""
  frames = [store.read(out / f"B{B}", schema.GRAD_FILE, where=store.last_layer("W2")) for B in batches]
  last = pd.concat(frames, ignore_index=True)
  mean = last.groupby(["arch", "loss", "d", "L", "batch"])["grad_norm"].mean().unstack("batch")
  rows = []
  for key, g_B in mean.iterrows():
    for B in batches:
      ratio = g_B[B] / g_B[batches[0]]
      rows.append((*key, B, g_B[B], ratio, np.sqrt(B / batches[0]) * ratio))
  return pd.DataFrame(rows, columns=["arch", "loss", "d", "L", "B", "mean_grad_norm", "ratio_to_B1", "sqrtB_x_ratio"])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="results/batch", help="one store per B under this folder")
  p.add_argument("--batches", default="1,2,4,8,16", help="comma list of batch sizes (the first is the reference)")
  p.add_argument("--arch", default="post,pre")
  p.add_argument("--d", default="64")
  p.add_argument("--L", default="6,24")
  p.add_argument("--seeds", type=int, default=8)
  p.add_argument("--table-only", action="store_true", help="skip the sweeps; tabulate the stores")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  batches = [int(b) for b in args.batches.split(",")]
  for B in batches if not args.table_only else ():
    argv_B = command(B, args)
    print("python experiments/grad_scaling.py " + " ".join(argv_B), flush=True)
    status = cli.main(argv_B)
    if status != 0:
      return status
  with pd.option_context("display.width", 200, "display.max_rows", 500):
    print(table(pathlib.Path(args.out), batches).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
