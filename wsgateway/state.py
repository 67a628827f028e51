"""The gateway's shared state: typed app keys and the helpers every route module uses.

Route modules (http_api, ws, health) import this module and never each other or the app
factory (wsgateway.app), which imports them all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.helpers import ChainMapProxy
from sqlalchemy import Engine

from monitoring.metrics import Metrics
from paxyo.events import PendingEvent
from paxyo.relay import OutboxRelay
from paxyo.settings import Settings

log = logging.getLogger("wsgateway")

T = TypeVar("T")
State = web.Application | ChainMapProxy


SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
REDIS = web.AppKey("redis", aioredis.Redis)  # async client for the event loop
RELAY = web.AppKey("relay", OutboxRelay)  # publishes committed outbox rows (sync, in a thread)
METRICS = web.AppKey("metrics", Metrics)  # this process's registry, built by its entry point


async def run_blocking(state: State, fn: Callable[..., T], *args: object) -> T:
    """Run a blocking call (database, sync Redis) in the app's bounded thread pool.

    ``state`` is the app or, from a sub-app's handler, ``request.config_dict``.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state[EXECUTOR], functools.partial(fn, *args))


async def publish_event(state: State, event: PendingEvent | None) -> None:
    """Publish a just-committed event; if Redis is down the sweeper publishes it later."""
    if event is None:
        return
    try:
        await run_blocking(state, state[RELAY].publish_ids, [event.outbox_id])
    except redis.RedisError as exc:
        log.warning("event %s not published now (Redis: %s); the sweeper will", event.id, exc)
    except Exception:
        log.exception("event %s not published now; the sweeper will", event.id)
