"""The ``paxyo`` command: a thin layer that parses, builds settings and calls one function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from paxyo.logs import configure_logging
from paxyo.settings import Settings, SettingsError

Command = Callable[[argparse.Namespace, Settings], int]


def _settings(args: argparse.Namespace) -> Settings:
    # --database-url and --redis-url stand in for the variables, checked and normalised as
    # they are (a postgres:// URL gets its driver)
    env = dict(os.environ)
    for option, var in (("database_url", "DATABASE_URL"), ("redis_url", "REDIS_URL")):
        if getattr(args, option, None) is not None:
            env[var] = getattr(args, option)
    overrides = {k: getattr(args, k, None) for k in ("port", "poll_interval", "metrics_port")}
    return Settings.from_env(env, **overrides)


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from paxyo.store.migrate import MigrationError, current_revision, upgrade

    try:
        upgrade(settings.database_url)
    except MigrationError as exc:
        print(f"paxyo db upgrade: {exc}", file=sys.stderr)
        return 1
    print(f"database at revision {current_revision(settings.database_url)}")
    return 0


def cmd_check_once(args: argparse.Namespace, settings: Settings) -> int:
    from paxyo.cli.check_once import run_cycle
    from paxyo.store.migrate import MigrationError, upgrade

    settings.require_providers()
    try:
        upgrade(settings.database_url)
    except MigrationError as exc:
        print(f"paxyo check-once: {exc}", file=sys.stderr)
        return 1
    summary = run_cycle(settings, emit=_print_flush)
    return 1 if summary.failed_providers else 0


def cmd_simulator(args: argparse.Namespace, settings: Settings) -> int:
    from providers.simulator import run_simulator

    run_simulator(args.host, args.port, args.key, args.seed)
    return 0


def cmd_gateway(args: argparse.Namespace, settings: Settings) -> int:
    from monitoring.metrics import process_metrics
    from paxyo.cli.demo_web import setup_demo
    from wsgateway.server import run_gateway

    settings.require_secrets()
    run_gateway(settings, process_metrics(), host=args.host, extend=setup_demo)
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from wsgateway.auth import mint_token

    if not settings.jwt_secret:
        raise SettingsError("PAXYO_JWT_SECRET", "is required to mint a token")
    print(mint_token(settings.jwt_secret, args.user_id, ttl=args.ttl))
    return 0


def cmd_dispatcher(args: argparse.Namespace, settings: Settings) -> int:
    import redis

    from dispatcher.loop import Dispatcher, run_dispatcher
    from monitoring.metrics import process_metrics
    from paxyo.store.engine import open_engine

    settings.require_providers()
    engine = open_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                  socket_connect_timeout=5)
    try:
        run_dispatcher(Dispatcher(settings, engine, client, process_metrics()))
    finally:
        client.close()
        engine.dispose()
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from monitoring.metrics import process_metrics
    from workers.context import build_context
    from workers.runner import run_worker

    settings.require_providers()
    # this process's context, from the settings its command line parsed
    ctx = build_context(settings, process_metrics())
    try:
        run_worker(ctx, burst=args.burst)
    finally:
        ctx.close()
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from paxyo.cli.demo import run_demo

    return run_demo(settings, port=args.port or settings.port, workers=args.workers)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import redis
    from sqlalchemy.exc import SQLAlchemyError

    from paxyo import ops
    from paxyo.store.engine import open_engine
    from paxyo.store.migrate import current_revision
    from paxyo.store.server_settings import server_warnings

    engine = open_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        if current_revision(settings.database_url) is None:
            print("paxyo status: the database has no schema yet; run `paxyo db upgrade`",
                  file=sys.stderr)
            return 1
        db = ops.read_database_status(engine)
        print(ops.format_status(db, ops.read_redis_status(client, settings, db.open_orders)))
        for warning in server_warnings(engine):
            print(f"warning: {warning}")
    except (SQLAlchemyError, redis.RedisError) as exc:
        return _failed("paxyo status", exc)
    finally:
        engine.dispose()
        client.close()
    return 0


def cmd_failed(args: argparse.Namespace, settings: Settings) -> int:
    import redis

    from paxyo import ops

    command = f"paxyo failed {args.failed_command}"
    if args.failed_command == "requeue" and not args.all and not args.job_ids:
        print(f"{command}: give JOB_ID... or --all", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        if args.failed_command == "list":
            print(ops.format_failed(ops.list_failed(client, settings.queue_name)))
            return 0
        requeued = ops.requeue_failed(client, settings.queue_name,
                                      None if args.all else args.job_ids)
    except ops.NotFailedJobs as exc:
        print(f"{command}: not a failed job of queue {settings.queue_name}: {exc}; "
              "nothing requeued (see `paxyo failed list`)", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        return _failed(command, exc)
    finally:
        client.close()
    print(f"requeued {len(requeued)} job(s)")
    return 0


def cmd_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from paxyo import webhook_queue
    from paxyo.clock import utcnow
    from paxyo.events import parse_event_id
    from paxyo.ops import format_webhook_status
    from paxyo.store.engine import open_engine

    command = f"paxyo webhooks {args.webhooks_command}"
    ids: list[int] | None = None
    if args.webhooks_command == "retry":
        if args.all == bool(args.event_ids):
            print(f"{command}: give EVENT_ID... or --all", file=sys.stderr)
            return 2
        parsed = [(raw, parse_event_id(raw)) for raw in args.event_ids]
        bad = [raw for raw, value in parsed if value is None]
        if bad:
            print(f"{command}: not an event id: {', '.join(map(repr, bad))}", file=sys.stderr)
            return 2
        ids = None if args.all else [value for _, value in parsed if value is not None]
    engine = open_engine(settings.database_url)
    try:
        if args.webhooks_command == "status":
            print(format_webhook_status(webhook_queue.read_status(engine), settings, utcnow()))
            return 0
        queued = webhook_queue.retry(engine, ids, utcnow())
    except webhook_queue.UnknownEvents as exc:
        missing = exc.args[0]
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        print(f"{command}: no such event: {', '.join(map(str, missing[:10]))}{more}; "
              "nothing queued", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        return _failed(command, exc)
    finally:
        engine.dispose()
    print(f"queued {queued} event(s) for delivery")
    return 0


def cmd_webhooks_run(args: argparse.Namespace, settings: Settings) -> int:
    import redis

    from monitoring.metrics import process_metrics
    from paxyo.store.engine import open_engine
    from webhooks.process import run_webhook_sender

    engine = open_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                  socket_connect_timeout=5)
    try:
        run_webhook_sender(settings, engine, client, process_metrics())
    finally:
        client.close()
        engine.dispose()
    return 0


def _failed(command: str, exc: Exception) -> int:
    """A store that failed, as one line naming the command; exit status 1."""
    print(f"{command}: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
    return 1


def _print_flush(line: str) -> None:
    print(line, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paxyo", description=__doc__)
    parser.add_argument("--database-url", help="overrides DATABASE_URL")
    parser.add_argument("--redis-url", help="overrides REDIS_URL")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply migrations (the release phase)").set_defaults(
        func=cmd_db_upgrade)

    check = sub.add_parser("check-once", help="one whole status cycle in-process")
    check.set_defaults(func=cmd_check_once)

    sim = sub.add_parser("simulator", help="run the SMM API v2 provider simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--key", required=True)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulator)

    gw = sub.add_parser("gateway", help="the web process: HTTP API, WebSocket, metrics")
    gw.add_argument("--host", default="0.0.0.0")
    gw.add_argument("--port", type=int, help="overrides PORT")
    gw.set_defaults(func=cmd_gateway)

    disp = sub.add_parser("dispatcher", help="enqueue due shards (leader-elected)")
    disp.add_argument("--poll-interval", type=float, help="overrides PAXYO_POLL_INTERVAL")
    disp.set_defaults(func=cmd_dispatcher)

    worker = sub.add_parser("worker", help="RQ worker that checks shards")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)
    hooks = sub.add_parser("webhooks", help="signed event POSTs to PAXYO_WEBHOOK_URL")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    hooks_run = hooks_sub.add_parser("run", help="the sender process (Procfile webhooks)")
    hooks_run.set_defaults(func=cmd_webhooks_run)
    hooks_sub.add_parser("status", help="backlog, oldest undelivered, last error").set_defaults(
        func=cmd_webhooks)
    hooks_retry = hooks_sub.add_parser("retry", help="deliver events again")
    hooks_retry.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    hooks_retry.add_argument("--all", action="store_true", help="every failed event")
    hooks_retry.set_defaults(func=cmd_webhooks)
    for proc in (disp, worker, hooks_run):
        proc.add_argument("--metrics-port", type=int,
                          help="also serve this process's metrics here (PAXYO_METRICS_PORT)")

    status = sub.add_parser("status", help="open orders, queue, dispatcher, outbox, gateways")
    status.set_defaults(func=cmd_status)
    failed = sub.add_parser("failed", help="RQ jobs that failed every retry")
    failed_sub = failed.add_subparsers(dest="failed_command", required=True, metavar="ACTION")
    failed_sub.add_parser("list", help="list failed jobs").set_defaults(func=cmd_failed)
    requeue = failed_sub.add_parser("requeue", help="put failed jobs back on the queue")
    requeue.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    requeue.add_argument("--all", action="store_true", help="requeue every failed job")
    requeue.set_defaults(func=cmd_failed)

    demo = sub.add_parser("demo", help="run everything on this machine with demo data")
    demo.add_argument("--port", type=int, help="overrides PORT (default 8080)")
    demo.add_argument("--workers", type=int, default=2, help="worker processes")
    demo.set_defaults(func=cmd_demo)

    token = sub.add_parser("token", help="print a WebSocket token for a user (testing)")
    token.add_argument("user_id", type=int)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        configure_logging(settings.log_format)
        return args.func(args, settings)
    except SettingsError as exc:
        print(f"paxyo: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

