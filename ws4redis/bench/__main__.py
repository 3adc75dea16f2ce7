"""``python -m ws4redis.bench``: the same as the ``ws4redis-bench`` console script."""

import sys

from ws4redis.bench.cli import main

sys.exit(main())
