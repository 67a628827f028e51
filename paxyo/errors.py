"""Domain errors that the HTTP API maps to status codes."""


class NotFound(Exception):
    """404: no such account or order."""


class Conflict(Exception):
    """409: the request contradicts what is stored (reused id or reference, low balance)."""
