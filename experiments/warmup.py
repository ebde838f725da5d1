"""Post-LN needs learning-rate warm-up, Pre-LN does not: train both on a synthetic task.

Trains the Post-LN and Pre-LN encoders (:mod:`normtheory.warmup`) with Adam for
every (warm-up, peak lr) and with RAdam without warm-up, writes the tidy log to
``--out`` and the figure ``fig_warmup`` to ``--figures``.

The defaults fit in about ten minutes on two CPU cores, so they are smaller than
the paper's grid (L in {6, 12}, warm-up {0, 500, 4000}, lr {5e-4, 1e-3}, thousands of
steps): L = 6, 400 steps of batch 16, lr 1e-3, warm-up {0, 100}, decay from step 100.
The full grid is::

  python experiments/warmup.py --L 6 12 --lr 5e-4 1e-3 --warmup 0 500 4000 --steps 20000

References:
  Xiong et al. 2020, Section 3 and Fig. 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from normtheory import warmup
from normtheory.cli_args import ArgumentParser, UsageError, usage_exit
from normtheory.schema import atomic_write

PROG = "warmup.py"


def parse(argv: list[str]) -> argparse.Namespace:
  """Parse and check ``argv``; bad input raises ``UsageError`` before anything is written."""
  p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  p.add_argument("--arch", nargs="+", default=["post", "pre"], help="architectures")
  p.add_argument("--L", nargs="+", type=int, default=[6], help="depths")
  p.add_argument("--d", type=int, default=128, help="model width")
  p.add_argument("--steps", type=int, default=400, help="updates per run")
  p.add_argument("--batch", type=int, default=16, help="training batch size")
  p.add_argument("--eval-every", type=int, default=25, help="updates between validation passes")
  p.add_argument("--seeds", type=int, default=3, help="seeds per setting (trained together)")
  p.add_argument("--lr", nargs="+", type=float, default=[1e-3], help="peak learning rates")
  p.add_argument("--warmup", nargs="+", type=int, default=[0, 100], help="Adam warm-up lengths")
  p.add_argument("--decay-start", type=int, default=None,
                 help="t0: inverse-sqrt decay start for short warm-ups (default: max warm-up, or 100)")
  p.add_argument("--no-radam", action="store_true", help="skip RAdam (no warm-up)")
  p.add_argument("--task", default="sort", choices=warmup.TASKS, help="synthetic task")
  p.add_argument("--vocab", type=int, default=64, help="vocabulary size")
  p.add_argument("--n", type=int, default=16, help="sequence length")
  p.add_argument("--out", default="results/warmup.csv", help="tidy CSV log")
  p.add_argument("--figures", default="figures", help="folder for fig_warmup.png/.pdf")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  args = p.parse_args(argv)
  for name in ("L", "steps", "batch", "eval_every", "seeds"):
    values = getattr(args, name)
    if min(values if isinstance(values, list) else [values]) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {values}")
  if min(args.warmup) < 0 or (args.decay_start is not None and args.decay_start < 1):
    p.error("--warmup must be >= 0 and --decay-start >= 1")
  if min(args.lr) <= 0:
    p.error(f"--lr must be > 0, got {args.lr}")
  try:
    args.task = warmup.Task(args.task, args.vocab, args.n)
    args.settings = [warmup.Setting("adam", w, lr) for lr in args.lr for w in args.warmup]
    args.settings += [] if args.no_radam else [warmup.Setting("radam", 0, lr) for lr in args.lr]
    for arch in args.arch:
      for L in args.L:
        warmup.model_config(arch, L, args.d, args.task)
  except ValueError as e:
    p.error(str(e))
  if args.decay_start is None:
    args.decay_start = max(args.warmup) or 100
  return args


def main(argv: list[str] | None = None) -> int:
  """Train, write the log and the figure, print the final metrics; returns the exit status (0, or 2 on bad input)."""
  try:
    args = parse(sys.argv[1:] if argv is None else argv)
  except UsageError as e:
    return usage_exit(PROG, e)
  start = time.time()
  frame = warmup.sweep(args.arch, args.L, args.settings, args.task, args.d, range(args.seeds),
                       args.steps, args.batch, args.eval_every, args.decay_start,
                       progress=not args.no_progress)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  atomic_write(args.out, frame.to_csv(index=False))
  warmup.fig_warmup(frame, args.figures)
  print(warmup.final_metrics(frame).to_string(index=False, float_format="%.3f"))
  print(f"wrote {args.out} and {args.figures}/fig_warmup.{{png,pdf}} in {time.time() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
