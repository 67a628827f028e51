"""The entry package: the ``paxyo`` command and everything it starts.

The only place that wires the other packages together. Each command parses its flags, builds
the process's settings (and, for the long-running processes, its engine, Redis clients and
metrics registry) and calls one public function of the package that does the work. The core
(``paxyo`` outside this package) never imports from here.
"""

from paxyo.cli.main import main

__all__ = ["main"]
