"""Sweep the exact per-layer gradient norms of Post-LN / Pre-LN Transformers at init.

  python experiments/grad_scaling.py --d 512 --L 6..96

See ``python experiments/grad_scaling.py --help`` and :mod:`normtheory.cli`.
"""

import sys

from normtheory.cli import main

if __name__ == "__main__":
  sys.exit(main())
