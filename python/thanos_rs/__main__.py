"""``python -m thanos_rs`` is ``python -m thanos_rs.prune``."""

import sys

from .prune import main

sys.exit(main())
