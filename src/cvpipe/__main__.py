"""`python -m cvpipe` (and `torchrun -m cvpipe`) runs the command line."""

import sys

from cvpipe.cli import main

sys.exit(main())
