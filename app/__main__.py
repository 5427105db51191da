"""``python -m app ...`` is ``glpi-sync ...``."""

import sys

from app.cli import main

sys.exit(main())
