"""The ``webhooks`` process: POSTs every event to the panel's own server, signed, in order."""
