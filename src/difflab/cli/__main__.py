"""`python -m difflab.cli ...`: what torchrun runs (`torchrun ... -m difflab.cli train ...`)
and what a run's command.sh falls back to where no `difflab` launcher is on PATH."""

import sys

from difflab.cli import main

sys.exit(main())
