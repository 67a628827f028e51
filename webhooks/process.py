"""``paxyo webhooks run``: the sender as a process, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

import redis
from sqlalchemy import Engine

from monitoring.metrics import Metrics
from monitoring.push import MetricsPusher, serve_process_metrics
from paxyo.keys import Keys
from paxyo.settings import Settings, SettingsError
from webhooks.sender import SenderConfig, WebhookSender

log = logging.getLogger("paxyo.webhooks")


def sender_config(settings: Settings) -> SenderConfig:
    if settings.webhook_url is None or settings.webhook_secret is None:
        raise SettingsError("PAXYO_WEBHOOK_URL", "is required to send webhooks")
    timeout = settings.webhook_timeout
    # a claim outlives its POST (and the writes around it) by a wide margin, and a sender
    # killed mid-delivery holds its event no longer than this
    return SenderConfig(url=settings.webhook_url, secret=settings.webhook_secret,
                        timeout=timeout, lease_seconds=3 * timeout + 5)


def run_webhook_sender(settings: Settings, engine: Engine, client: redis.Redis,
                       metrics: Metrics) -> None:
    """Send until SIGTERM or SIGINT; the caller built engine, Redis client and metrics.

    Redis only carries this process's metrics to web's /metrics: deliveries go on while it is
    down.
    """
    sender = WebhookSender(engine, sender_config(settings), metrics)
    pusher = MetricsPusher(metrics.registry, client, Keys(settings.redis_prefix),
                           "webhooks").start()
    serve_process_metrics(metrics.registry, settings.metrics_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sender.stop)
        log.info("webhook sender %s started: POST to %s", sender.sender_id,
                 settings.webhook_url_label)
        await sender.run()

    try:
        asyncio.run(main())
    finally:
        pusher.stop()
        log.info("webhook sender stopped")
