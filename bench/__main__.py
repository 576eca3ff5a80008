"""``python -m bench``: same as ``python -m bench.loadgen``."""

import sys

from bench.loadgen import main

sys.exit(main())
