"""The web process: HTTP API for the panel, WebSocket push, health and metrics.

Lifecycle: :func:`wsgateway.app.create_app` builds the application; its resources (database
engine, Redis clients, outbox relay, a bounded thread pool) are opened on startup by a
``cleanup_ctx`` and closed on shutdown. State lives under typed ``web.AppKey``s.

Concurrency: the event loop never blocks. Database work is synchronous SQLAlchemy and runs in
the app's thread pool (:func:`wsgateway.app.run_blocking`); so does publishing committed outbox
rows to Redis. A Redis outage never fails an HTTP answer: the event stays in the outbox and
the sweeper publishes it later.
"""
