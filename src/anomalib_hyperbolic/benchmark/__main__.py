"""``python -m anomalib_hyperbolic.benchmark``: the benchmark command (and each cell's subprocess)."""

import sys

from anomalib_hyperbolic.benchmark.grid import main

sys.exit(main())
