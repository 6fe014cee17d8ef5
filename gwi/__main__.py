"""``python -m gwi`` runs the CLI, for environments without the console script."""

import sys

from .cli import main

sys.exit(main())
