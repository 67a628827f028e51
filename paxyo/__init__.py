"""Paxyo Realtime: order status sync, exactly-once refunds and realtime push for SMM panels.

This package holds the shared domain (money, statuses, refund rule), the SQL store and the
``paxyo`` command line. Provider I/O lives in ``providers``; process types live in
``dispatcher``, ``workers`` and ``wsgateway``.
"""

__version__ = "0.1.0"
