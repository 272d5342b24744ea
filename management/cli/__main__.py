"""``python -m management.cli`` runs the ``baetyl`` command."""

import sys

from management.cli import main

sys.exit(main())
