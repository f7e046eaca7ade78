"""``python -m gateway.cli``."""

import sys

from gateway.cli._main import main

sys.exit(main())
