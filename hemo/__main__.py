"""``python -m hemo`` runs the CLI."""

import sys

from hemo.cli import main

sys.exit(main())
