"""``python -m globeflow.cli`` (e.g. under ``torchrun``) runs the command-line interface."""

import sys

from globeflow.cli import main

sys.exit(main())
