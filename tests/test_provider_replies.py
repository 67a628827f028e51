"""Reply parsing: every shape of smm-api-v2.md, and the bodies that must be refused."""

from decimal import Decimal

import orjson
import pytest

from providers.replies import (
    EntryError,
    ProviderErrorReply,
    ReplyError,
    StatusEntry,
    parse_add,
    parse_balance,
    parse_cancel,
    parse_multi_status,
    parse_remains,
    parse_services,
    parse_single_status,
)

DOC_MULTI = (
    b'{"1":{"charge":"0.27819","start_count":"3572","status":"Partial","remains":"157",'
    b'"currency":"USD"},"10":{"error":"Incorrect order ID"},"100":{"charge":"1.44219",'
    b'"start_count":"234","status":"In progress","remains":"10","currency":"USD"}}'
)

NO_STATUS = EntryError("entry without a status string", "bad_entry")


def body(value: object) -> bytes:
    return orjson.dumps(value)


def test_multi_status_doc_example() -> None:
    assert parse_multi_status(DOC_MULTI, ["1", "10", "100"]) == {
        "1": StatusEntry("Partial", 157, "0.27819", "USD"),
        "10": EntryError("Incorrect order ID"),
        "100": StatusEntry("In progress", 10, "1.44219", "USD"),
    }


def test_multi_status_missing_ids_are_absent_and_extra_keys_ignored() -> None:
    result = parse_multi_status(DOC_MULTI, ["1", "2"])
    assert set(result) == {"1"}


def test_multi_status_numbers_as_numbers_and_lowercase_status() -> None:
    reply = {"7": {"charge": 0.27819, "start_count": 3572, "status": " processing ",
                   "remains": 157, "currency": "USD", "order": 7}}
    assert parse_multi_status(body(reply), ["7"]) == {
        "7": StatusEntry("processing", 157, "0.27819", "USD")
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("157", 157), (157, 157), ("157.0", 157), (157.0, 157), ("-5", -5), (-5, -5),
        (5000, 5000), (" 12 ", 12), ("0", 0), (0, 0),
        ("Unknown", None), ("", None), (None, None), ("12.5", None), ("+5", None),
        (True, None), ("NaN", None), ("Infinity", None), ([1], None), ("1,000", None),
    ],
)
def test_remains_variants(raw: object, expected: int | None) -> None:
    assert parse_remains(raw) == expected


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("Incorrect order ID", EntryError("Incorrect order ID")),
        ({"error": "Incorrect order ID"}, EntryError("Incorrect order ID")),
        ({"error": ""}, EntryError("empty error")),
        ({"charge": "1.0", "remains": "5"}, NO_STATUS),
        ({"status": None}, NO_STATUS),
        ({"status": {"error": "x"}}, NO_STATUS),
        ([1, 2], EntryError("entry is a list", "bad_entry")),
        (42, EntryError("entry is a int", "bad_entry")),
        (None, EntryError("entry is a NoneType", "bad_entry")),
        ({"status": "Completed"}, StatusEntry("Completed", None, None, None)),
        ({"status": "Partial", "remains": "Unknown"}, StatusEntry("Partial", None, None, None)),
    ],
)
def test_per_id_entry_variants(entry: object, expected: object) -> None:
    assert parse_multi_status(body({"5": entry}), ["5"]) == {"5": expected}


def test_single_id_request_answered_in_single_shape() -> None:
    reply = {"charge": "0.27819", "start_count": "3572", "status": "Partial",
             "remains": "157", "currency": "USD"}
    assert parse_multi_status(body(reply), ["23501"]) == {
        "23501": StatusEntry("Partial", 157, "0.27819", "USD")
    }
    assert parse_multi_status(body({"error": "Incorrect order ID"}), ["9"]) == {
        "9": EntryError("Incorrect order ID")
    }


def test_list_of_entries_with_order_field() -> None:
    reply = [{"order": 5, "status": "Completed", "remains": "0"}, {"order": "6", "error": "x"}]
    assert parse_multi_status(body(reply), ["5", "6", "7"]) == {
        "5": StatusEntry("Completed", 0, None, None),
        "6": EntryError("x"),
    }


def test_padded_keys_match_requested_ids() -> None:
    reply = {"0012": {"status": "Pending", "remains": "1"}}
    assert parse_multi_status(body(reply), ["12"]) == {"12": StatusEntry("Pending", 1, None, None)}


@pytest.mark.parametrize("message", ["Invalid API key", "Incorrect request"])
def test_multi_status_top_level_error(message: str) -> None:
    with pytest.raises(ProviderErrorReply) as raised:
        parse_multi_status(body({"error": message}), ["1", "2"])
    assert raised.value.message == message


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty body"),
        (b"   \n", "empty body"),
        (b"<!DOCTYPE html><html><title>Just a moment...</title></html>", "HTML page"),
        (b"<html><body>502 Bad Gateway</body></html>", "HTML page"),
        (b"Internal Server Error", "not JSON"),
        (b'{"1": {"status": "Pending"', "not JSON"),
        (b'"Incorrect order ID"', "status reply is a str, not an object"),
        (b"null", "status reply is a NoneType, not an object"),
        (b"42", "status reply is a int, not an object"),
    ],
)
def test_unusable_bodies_raise_reply_error(raw: bytes, reason: str) -> None:
    with pytest.raises(ReplyError) as raised:
        parse_multi_status(raw, ["1", "2"])
    assert raised.value.reason == reason


def test_reply_error_message_carries_the_first_200_chars() -> None:
    page = b"<html>" + b"x" * 1000 + b"</html>"
    with pytest.raises(ReplyError) as raised:
        parse_multi_status(page, ["1"])
    assert raised.value.snippet == page[:200].decode()
    assert page[:200].decode() in str(raised.value)
    assert page[:201].decode() not in str(raised.value)


def test_single_status() -> None:
    reply = {"charge": "0.27819", "start_count": "3572", "status": "Partial",
             "remains": "157", "currency": "USD", "order": 23501}
    assert parse_single_status(body(reply)) == StatusEntry("Partial", 157, "0.27819", "USD")
    with pytest.raises(ProviderErrorReply, match="Incorrect order ID"):
        parse_single_status(body({"error": "Incorrect order ID"}))
    with pytest.raises(ReplyError):
        parse_single_status(body({"charge": "1"}))
    with pytest.raises(ReplyError):
        parse_single_status(b"<html></html>")


@pytest.mark.parametrize(
    "reply",
    [{"order": 23501}, {"order": "23501"}, {"status": "success", "order": 23501},
     {"order": 23501.0}],
)
def test_add_variants(reply: object) -> None:
    assert parse_add(body(reply)) == "23501"


@pytest.mark.parametrize("reply", [{}, {"order": None}, {"order": True}, {"order": ""}, []])
def test_add_without_id_is_a_reply_error(reply: object) -> None:
    with pytest.raises(ReplyError):
        parse_add(body(reply))


@pytest.mark.parametrize(
    "message",
    ["Incorrect service ID", "Not enough funds on balance", "Quantity less than minimal 50",
     "You have active order with this link. Please wait until order being completed."],
)
def test_add_errors(message: str) -> None:
    with pytest.raises(ProviderErrorReply) as raised:
        parse_add(body({"error": message}))
    assert raised.value.message == message


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"balance": "100.84292", "currency": "USD"}, (Decimal("100.84292"), "USD")),
        ({"status": "success", "balance": 100.84292, "currency": "EUR"},
         (Decimal("100.84292"), "EUR")),
        ({"balance": 0.27}, (Decimal("0.27"), None)),
        ({"balance": 5}, (Decimal(5), None)),
    ],
)
def test_balance_variants(reply: object, expected: tuple[Decimal, str | None]) -> None:
    balance, currency = parse_balance(body(reply))
    assert (balance, currency) == expected
    assert str(balance) == str(expected[0])


@pytest.mark.parametrize("reply", [{}, {"balance": "lots"}, {"balance": None}, {"balance": "NaN"}])
def test_bad_balance(reply: object) -> None:
    with pytest.raises(ReplyError):
        parse_balance(body(reply))


def test_services() -> None:
    reply = [{"service": 1, "name": "Followers", "type": "Default", "category": "First",
              "rate": "0.90", "min": "50", "max": "10000", "refill": True, "cancel": True},
             "junk"]
    assert parse_services(body(reply)) == reply[:1]
    with pytest.raises(ProviderErrorReply):
        parse_services(body({"error": "Invalid API key"}))
    with pytest.raises(ReplyError):
        parse_services(body({"1": {}}))


def test_cancel_variants() -> None:
    reply = [{"order": 9, "cancel": {"error": "Incorrect order ID"}}, {"order": 2, "cancel": 1},
             {"order": "3", "cancel": "1"}, {"order": 4, "cancel": True},
             {"order": 5, "cancel": 0}, "junk", {"cancel": 1}]
    assert parse_cancel(body(reply)) == {
        "9": "Incorrect order ID", "2": True, "3": True, "4": True,
        "5": "cancel not accepted (0)",
    }
    with pytest.raises(ProviderErrorReply):
        parse_cancel(body({"error": "Incorrect request"}))
    with pytest.raises(ReplyError):
        parse_cancel(b"")
