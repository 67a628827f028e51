"""paxyo.events: the exact bytes of an event, its bodies, and its outbox row."""

from datetime import datetime
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import select

from paxyo.events import (
    BALANCE_UPDATED,
    ORDER_UPDATED,
    balance_event_body,
    event_bytes,
    event_id,
    order_event_body,
    parse_event_id,
    record_event,
)
from paxyo.store.schema import outbox

D = Decimal
AT = datetime(2025, 12, 14, 19, 15, 2, 987654)


def test_event_bytes_put_type_and_id_first_then_the_payload_verbatim():
    payload = b'{"order_id":123,"note":"caf\xc3\xa9 \\u0000","refund":"7.00"}'
    assert event_bytes(42, ORDER_UPDATED, payload) == (
        b'{"type":"order.updated","id":"0000000000000042",'
        b'"order_id":123,"note":"caf\xc3\xa9 \\u0000","refund":"7.00"}')


def test_event_bytes_of_an_empty_payload_is_just_type_and_id():
    assert event_bytes(7, BALANCE_UPDATED, b"{}") == \
        b'{"type":"balance.updated","id":"0000000000000007"}'


def test_event_ids_sort_as_strings_and_parse_back():
    ids = [1, 9, 10, 99, 100, 12345678901234]
    assert sorted(event_id(i) for i in ids) == [event_id(i) for i in ids]
    assert all(parse_event_id(event_id(i)) == i for i in ids)
    assert parse_event_id(" 0042 ") == 42


@pytest.mark.parametrize("value", ["", " ", "abc", "-1", "+1", "1.0", "1e3", "0x10",
                                   "\uff11", "\u00b2", "\u0663", "1\x00", "9" * 21])
def test_a_value_that_is_not_one_of_our_ids_parses_to_none(value):
    assert parse_event_id(value) is None


def test_order_event_body_formats_money_to_the_decimals_and_keeps_the_rest():
    body = order_event_body(order_id=123, user_id=111, status="Partial",
                            previous_status="In progress", remains=700, quantity=1000,
                            refund=D("7"), balance=D("22.009"), decimals=2)
    assert body == {"order_id": 123, "user_id": 111, "status": "Partial",
                    "previous_status": "In progress", "remains": 700, "quantity": 1000,
                    "refund": "7.00", "balance": "22.00"}
    none = order_event_body(order_id=1, user_id=2, status="Pending", previous_status=None,
                            remains=None, quantity=5, refund=D("0"), balance=D("0.5"),
                            decimals=4)
    assert (none["refund"], none["balance"], none["remains"]) == ("0.0000", "0.5000", None)


def test_balance_event_body_formats_signed_amounts():
    body = balance_event_body(user_id=111, amount=D("-10.129"), balance=D("1E+1"),
                              reason="charge", reference="charge:5", decimals=2)
    assert body == {"user_id": 111, "reason": "charge", "amount": "-10.12",
                    "reference": "charge:5", "balance": "10.00"}


def test_record_event_writes_a_row_whose_bytes_round_trip(engine):
    body = order_event_body(order_id=123, user_id=111, status="Partial",
                            previous_status="In progress", remains=700, quantity=1000,
                            refund=D("7.00"), balance=D("22.00"), decimals=2)
    with engine.begin() as conn:
        first = record_event(conn, 111, ORDER_UPDATED, body, AT)
        second = record_event(conn, 222, BALANCE_UPDATED, {"user_id": 222}, AT)
    assert second.outbox_id > first.outbox_id
    assert (first.user_id, first.id) == (111, event_id(first.outbox_id))
    with engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.id == first.outbox_id)).one()
    assert (row.user_id, row.type, row.created_at, row.published_at) == (
        111, ORDER_UPDATED, AT, None)
    sent = event_bytes(row.id, row.type, row.payload)
    decoded = orjson.loads(sent)
    assert decoded == {"type": "order.updated", "id": first.id, **body,
                       "at": "2025-12-14T19:15:02Z"}
    assert list(decoded)[:2] == ["type", "id"]
    assert orjson.dumps(decoded) == sent  # the same JSON, byte for byte
