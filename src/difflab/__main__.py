"""`python -m difflab ...`: the same as the `difflab` command."""

import sys

from difflab.launch import main

sys.exit(main())
