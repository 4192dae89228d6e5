"""``python -m calogen`` runs the command line."""

import sys

from calogen.cli import main

sys.exit(main())
