"""``python -m smtp_tarpit`` runs the CLI."""

import sys

from smtp_tarpit.cli import main

sys.exit(main())
