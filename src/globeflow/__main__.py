"""``python -m globeflow`` runs the command-line interface."""

import sys

from globeflow.cli import main

sys.exit(main())
