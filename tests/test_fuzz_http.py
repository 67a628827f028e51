"""Generated requests against a real gateway on each database: no 5xx, errors always
``{"error": str}``, no loose acceptance, and afterwards every balance equals its ledger.

Bounded (a few hundred requests per database) so that it runs in CI; ``bench/fuzz.py`` sends
tens of thousands with the same strategies.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from monitoring.metrics import process_metrics
from paxyo.ledger import ledger_mismatches
from paxyo.settings import Settings
from paxyo.store.engine import open_engine
from tests.fuzz_http import (
    ADMIN_TOKEN,
    JWT_SECRET,
    USERS,
    Client,
    check_reply,
    http_requests,
    ws_requests,
)
from tests.support import ServerThread
from wsgateway.app import create_app
from wsgateway.auth import mint_token

EXAMPLES = {"sqlite": 120, "postgresql": 60, "mysql": 60}  # x up to 6 requests each
TOKENS = {user: mint_token(JWT_SECRET, user) for user in USERS}


@pytest.fixture
def gateway(any_database_url: str, redis_url: str, redis_prefix: str) -> Iterator[ServerThread]:
    settings = Settings.from_env({
        "DATABASE_URL": any_database_url, "REDIS_URL": redis_url,
        "PAXYO_REDIS_PREFIX": redis_prefix,
        "PAXYO_PROVIDER_SIM_URL": "http://127.0.0.1:9/api/v2",  # never called by /v1
        "PAXYO_PROVIDER_SIM_KEY": "k",
        "PAXYO_JWT_SECRET": JWT_SECRET, "PAXYO_ADMIN_TOKEN": ADMIN_TOKEN,
    })
    server = ServerThread(lambda: create_app(settings, process_metrics()))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_generated_requests_keep_the_contract(gateway: ServerThread, any_database_url: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    client = Client("127.0.0.1", gateway.port)
    statuses: Counter[int] = Counter()
    kind = any_database_url.split(":", 1)[0].split("+")[0]

    @settings(max_examples=EXAMPLES.get(kind, 60), deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(http_requests(), http_requests(), ws_requests(TOKENS)),
                    min_size=1, max_size=6))
    def exchange(requests) -> None:  # type: ignore[no-untyped-def]
        for request in requests:
            reply = client.send(request)
            statuses[reply.status] += 1
            problem = check_reply(request, reply)
            assert problem is None, (request, problem)

    try:
        exchange()
    finally:
        client.close()
    engine = open_engine(any_database_url)
    try:
        with engine.connect() as conn:
            assert ledger_mismatches(conn) == []
    finally:
        engine.dispose()
    tracebacks = [r.getMessage() for r in caplog.records
                  if r.levelno >= logging.ERROR or r.exc_info]
    assert tracebacks == []
    # the mix reached the domain, not only the validators
    assert statuses[201] > 0 and statuses[400] > 0 and statuses[101] > 0, statuses
