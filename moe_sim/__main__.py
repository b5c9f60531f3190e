"""`python -m moe_sim`: the moe-sim command line."""

import sys

from .cli import main

sys.exit(main())
