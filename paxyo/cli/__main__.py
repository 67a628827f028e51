"""``python -m paxyo.cli``: the same as the ``paxyo`` command."""

import sys

from paxyo.cli.main import main

sys.exit(main())
