"""RQ workers: one job checks one shard (≤100 orders of one provider) and applies the answers.

A job's life: claim its leased orders → ask the provider (rate limit and circuit breaker
shared by all workers through Redis; tenacity retries transient failures inside) → apply the
whole reply in one transaction, each change in its own savepoint, the leases released in that
same transaction → publish the committed events. Every step is idempotent, so RQ's retry of a
job, or a rerun after a crash, changes nothing twice. A job finds its process's context (engine,
HTTP session, metrics) through the paxyo worker that runs it (workers.context.job_context).
Retries multiply: up to ``PAXYO_PROVIDER_ATTEMPTS`` HTTP attempts per run, and up to
``JOB_RETRIES + 1`` runs per job.
"""
