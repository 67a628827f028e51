"""What a shard is and how long its job may take: shared by the dispatcher and the workers.

A shard is at most 100 orders of one provider, checked with one mass-status call; one RQ
job carries up to ``PAXYO_SHARDS_PER_JOB`` shards, whose calls are in flight at once.
Retries multiply: up to ``PAXYO_PROVIDER_ATTEMPTS`` HTTP attempts per run, and up to
``JOB_RETRIES + 1`` runs per job.
"""

from __future__ import annotations

from paxyo.settings import Settings

SHARD_SIZE = 100          # ids per status call: the SMM API v2 limit
JOB_RETRIES = 2
RETRY_INTERVALS = [5, 20]


def job_timeout(attempts: int, request_timeout: float, shards: int = 1) -> int:
    """Long enough for every tenacity attempt plus backoff and the apply steps (the shards'
    calls run at the same time; their replies are applied one after another)."""
    return int(attempts * (request_timeout + 8) + 30 + 5 * (shards - 1))


def queued_lease_seconds(settings: Settings) -> float:
    """How long a queued shard's orders stay leased before another shard may take them."""
    if settings.lease_seconds is not None:
        return settings.lease_seconds
    return max(60.0, 2 * settings.poll_interval)


def running_lease_seconds(settings: Settings) -> float:
    """How long a running shard holds its orders: its whole job, with room to spare."""
    if settings.lease_seconds is not None:
        return settings.lease_seconds
    return job_timeout(settings.provider_attempts, settings.provider_timeout,
                       settings.shards_per_job) + 30
