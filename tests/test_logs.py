"""Log lines: human-readable by default, one JSON object per line with PAXYO_LOG_FORMAT=json."""

from __future__ import annotations

import logging

import orjson
import pytest

from paxyo.logs import configure_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines(restore_logging, capsys):
    configure_logging("json")
    logging.getLogger("paxyo.refunds").info("REFUND: $7.00 for Order #123 (Partial, 700 remains)")
    try:
        raise ValueError("bad reply")
    except ValueError:
        logging.getLogger("paxyo.workers").exception("shard failed")
    lines = capsys.readouterr().err.strip().splitlines()
    first, second = (orjson.loads(line) for line in lines)
    assert first["msg"] == "REFUND: $7.00 for Order #123 (Partial, 700 remains)"
    assert first["level"] == "info" and first["logger"] == "paxyo.refunds"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "error" and "ValueError: bad reply" in second["exc"]


def test_text_lines_keep_the_seed_refund_line(restore_logging, capsys):
    configure_logging("text")
    logging.getLogger("paxyo.dispatcher").info("became leader (term %s)", 3)
    logging.getLogger("paxyo.refunds").info("REFUND: $10.00 for Order #123 (Canceled)")
    err = capsys.readouterr().err
    assert " INFO    paxyo.dispatcher: became leader (term 3)\n" in err
    assert err.rstrip().endswith("paxyo.refunds: REFUND: $10.00 for Order #123 (Canceled)")
