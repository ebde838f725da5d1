"""normtheory.fit, moved into a package (split into one module per job in the next commit)."""

from normtheory.fit.series import *  # noqa: F401,F403
from normtheory.fit.series import _fmt  # noqa: F401
