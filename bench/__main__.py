"""`python -m bench` (what `make bench` runs), from the repository root."""

import sys

from .run import main

sys.exit(main())
