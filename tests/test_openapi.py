"""GET /v1/openapi.json: a valid OpenAPI 3.1 document that real answers of a running gateway
keep to, and that agrees with the validation on what a request may carry."""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from monitoring.metrics import process_metrics
from paxyo.money import MoneyError, parse_money
from paxyo.settings import Settings
from tests.support import ServerThread, free_port, http_json
from tests.test_http_api import AUTH, ORDER, api_settings
from wsgateway.app import create_app
from wsgateway.openapi import build_openapi, money_pattern

_DOC = "urn:paxyo:openapi"


def _serve(settings: Settings) -> Iterator[str]:
    with ServerThread(lambda: create_app(settings, process_metrics())) as server:
        yield server.url


@pytest.fixture
def gateway(sqlite_url: str, redis_url: str, redis_prefix: str) -> Iterator[str]:
    yield from _serve(api_settings(sqlite_url, redis_url, redis_prefix))


class Spec:
    """The served document and the validation of answers against it."""

    def __init__(self, url: str) -> None:
        self.url = url
        status, self.doc = http_json("GET", url + "/v1/openapi.json", headers={})
        assert status == 200, self.doc
        self.registry = Registry().with_resource(
            _DOC, Resource.from_contents(self.doc, default_specification=DRAFT202012))
        self.seen: set[tuple[str, str, str]] = set()

    def validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{_DOC}#{pointer}"}, registry=self.registry,
                                    format_checker=FormatChecker())

    def check(self, method: str, template: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None, expect: int | None = None) -> Any:
        """Send the request; assert its answer is documented and matches its schema."""
        status, answer = http_json(method, self.url + "/v1" + path, body,
                                   AUTH if headers is None else headers)
        if expect is not None:
            assert status == expect, (method, path, status, answer)
        operation = self.doc["paths"][template].get(method.lower())
        if operation is None:  # a method the path does not have: 405 with the Error shape
            assert status == 405, (method, path, status, answer)
            pointer = "/components/schemas/Error"
        else:
            assert str(status) in operation["responses"], f"{method} {template}: {status}"
            escaped = template.replace("~", "~0").replace("/", "~1")
            pointer = (f"/paths/{escaped}/{method.lower()}/responses/{status}"
                       "/content/application~1json/schema")
        errors = [e.message for e in self.validator(pointer).iter_errors(answer)]
        assert not errors, (method, path, status, answer, errors)
        self.seen.add((method, template, str(status)))
        return answer

    def request_schema(self, name: str) -> Draft202012Validator:
        return self.validator(f"/components/schemas/{name}")


def test_the_document_is_valid_openapi_3_1(sqlite_url, redis_url, redis_prefix) -> None:
    for decimals in ("0", "2", "8"):
        doc = build_openapi(api_settings(sqlite_url, redis_url, redis_prefix,
                                      PAXYO_MONEY_DECIMALS=decimals))
        validate(doc, cls=OpenAPIV31SpecValidator)
        assert doc["openapi"].startswith("3.1")


def test_the_document_needs_no_token_and_every_route_is_in_it(gateway: str) -> None:
    status, doc = http_json("GET", gateway + "/v1/openapi.json", headers={})
    assert status == 200
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert set(doc["paths"]) == {"/accounts/{user_id}/deposits", "/accounts/{user_id}",
                                 "/orders", "/orders/{order_id}", "/openapi.json"}
    assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    # every other route still needs the token
    assert http_json("GET", gateway + "/v1/accounts/111", headers={})[0] == 401


@pytest.fixture
def dead_database_gateway(redis_url: str, redis_prefix: str) -> Iterator[str]:
    """A gateway whose PostgreSQL does not answer (nothing listens on its port)."""
    yield from _serve(api_settings(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone", redis_url, redis_prefix))


def test_real_answers_match_the_document(gateway: str, dead_database_gateway: str) -> None:
    spec = Spec(gateway)
    deposits = "/accounts/{user_id}/deposits"
    body = {"amount": "25.00", "reference": "pay-981"}
    spec.check("POST", deposits, "/accounts/111/deposits", body, expect=201)
    spec.check("POST", deposits, "/accounts/111/deposits", body, expect=200)
    spec.check("POST", deposits, "/accounts/111/deposits", {**body, "amount": "2"}, expect=409)
    spec.check("POST", deposits, "/accounts/111/deposits", {**body, "amount": 1.5}, expect=400)
    spec.check("POST", deposits, "/accounts/0/deposits", body, expect=400)
    spec.check("POST", deposits, "/accounts/111/deposits", body, headers={}, expect=401)
    spec.check("GET", deposits, "/accounts/111/deposits", expect=405)
    spec.check("POST", deposits, "/accounts/111/deposits", b"x" * (3 << 20), expect=413)

    account = "/accounts/{user_id}"
    spec.check("GET", account, "/accounts/111", expect=200)
    spec.check("GET", account, "/accounts/222", expect=404)
    spec.check("GET", account, "/accounts/x1", expect=400)
    spec.check("GET", account, "/accounts/111", headers={"Authorization": "Bearer no"},
               expect=401)
    spec.check("POST", account, "/accounts/111", {}, expect=405)

    orders = "/orders"
    placed = spec.check("POST", orders, "/orders", ORDER, expect=201)
    assert placed["charge"] == "10.00" and placed["refunded"] == "0.00"
    spec.check("POST", orders, "/orders", ORDER, expect=200)
    spec.check("POST", orders, "/orders", {**ORDER, "quantity": 5}, expect=409)
    spec.check("POST", orders, "/orders", {**ORDER, "id": 124, "charge": "100.00"}, expect=409)
    spec.check("POST", orders, "/orders", {**ORDER, "provider_order_id": "1,2"}, expect=400)
    spec.check("POST", orders, "/orders", ORDER, headers={}, expect=401)
    spec.check("GET", orders, "/orders", expect=405)
    spec.check("POST", orders, "/orders", gzip.compress(b"x" * (3 << 20)),
               headers={**AUTH, "Content-Encoding": "gzip"}, expect=413)
    minimal = {k: ORDER[k] for k in ("user_id", "provider", "provider_order_id", "quantity")}
    spec.check("POST", orders, "/orders", {**minimal, "id": 125, "charge": 1}, expect=201)

    order = "/orders/{order_id}"
    spec.check("GET", order, "/orders/123", expect=200)
    spec.check("GET", order, "/orders/125", expect=200)
    spec.check("GET", order, "/orders/999", expect=404)
    spec.check("GET", order, "/orders/9223372036854775808", expect=400)
    spec.check("GET", order, "/orders/123", headers={}, expect=401)
    spec.check("DELETE", order, "/orders/123", expect=405)

    spec.check("GET", "/openapi.json", "/openapi.json", headers={}, expect=200)
    spec.check("POST", "/openapi.json", "/openapi.json", {}, expect=405)

    # the same routes on a gateway whose database does not answer
    spec.url = dead_database_gateway
    spec.check("POST", deposits, "/accounts/111/deposits", body, expect=503)
    spec.check("GET", account, "/accounts/111", expect=503)
    spec.check("POST", orders, "/orders", ORDER, expect=503)
    spec.check("GET", order, "/orders/123", expect=503)

    documented = {(method.upper(), path, status)
                  for path, item in spec.doc["paths"].items()
                  for method, operation in item.items() if method != "parameters"
                  for status in operation["responses"]}
    assert documented <= spec.seen, documented - spec.seen


# Values the document and the validation must agree on: accepted by the schema exactly when
# the gateway accepts them.
AMOUNTS = ["25.00", "25", "1.5", "1.500", "0.01", "0000000001.00", "9999999999.99", 25, 1,
           9_999_999_999, "0", "0.00", "0.001", "1.005", "10000000000", "10000000000.00",
           10_000_000_000, 0, -1, "-1", "+1", "1.", ".5", "1E2", "1_000", " 1", "1 ", "٣", "\uff15",
           "1,5", "", "1" * 41, "1." + "0" * 41, "1.5" + "0" * 38, True, 1.5, None, [], {}]
TEXTS = ["pay-981", "a" * 150, "a" * 151, "", " ", "\t", "a\x00b", "a\nb", "a\x85b", "ü €",
         7, None]
ORDER_FIELDS: dict[str, list[Any]] = {
    "provider": ["godofpanel", "GodOfPanel", "GODOFPANEL", "other", "", "godofpanel ",
                 "godofpaneł", 1, None],
    "provider_order_id": ["23501", "a" * 64, "a" * 65, "1,2", "1 2", "", "é", 0, -1, 1,
                          2**64 - 1, 2**64, 10**64 - 1, True, None],
    "quantity": [1, 10**9, 0, 10**9 + 1, -1, "5", True, None],
    "service": [1, "1", "a" * 64, "a" * 65, 0, -3, "", " ", "a\x00", None, True, 2**63],
    "link": ["https://x", "a" * 4096, "a" * 4097, "", "a\nb", None, 5],
    "user_id": [1, 2**63 - 1, 2**63, 0, -1, "1", True, None],
}


@pytest.mark.parametrize("decimals", [0, 2, 8])
def test_the_money_pattern_is_parse_money(decimals: int) -> None:
    pattern = re.compile(money_pattern(decimals))
    for value in [a for a in AMOUNTS if isinstance(a, str)] + [
            "1", "1.0", "1.00000000", "1.00000001", "1.000000010", "0.1", "0." + "0" * 7 + "1",
            "00000000000000000000000000000000000000001", "9999999999", "99999999999"]:
        try:
            parse_money(value, decimals)
            accepted = True
        except MoneyError:
            accepted = False
        assert (pattern.search(value) is not None) == accepted, (value, decimals)


def test_the_request_schemas_say_what_the_gateway_accepts(gateway: str) -> None:
    spec = Spec(gateway)
    deposit_schema, order_schema = spec.request_schema("Deposit"), spec.request_schema("NewOrder")
    users = itertools.count(1000)
    disagreements = []
    for amount in AMOUNTS:
        body = {"amount": amount, "reference": "r"}
        status, answer = http_json("POST", f"{gateway}/v1/accounts/{next(users)}/deposits",
                                   body, AUTH)
        if deposit_schema.is_valid(body) != (status in (200, 201)):
            disagreements.append((body, status, answer))
    for text in TEXTS:
        body = {"amount": "1", "reference": text}
        status, answer = http_json("POST", f"{gateway}/v1/accounts/{next(users)}/deposits",
                                   body, AUTH)
        if deposit_schema.is_valid(body) != (status in (200, 201)):
            disagreements.append((body, status, answer))
    assert http_json("POST", f"{gateway}/v1/accounts/1/deposits",
                     {"amount": "5000", "reference": "funds"}, AUTH)[0] == 201
    ids = itertools.count(1)
    for field, values in ORDER_FIELDS.items():
        for value in values:
            body = {**ORDER, "id": next(ids), "user_id": 1, "charge": "0.01", field: value}
            # json, not orjson: provider_order_id may be an integer beyond 64 bits
            status, answer = http_json("POST", f"{gateway}/v1/orders",
                                       json.dumps(body).encode(), AUTH)
            accepted = status in (200, 201) or (status == 404 and field == "user_id")
            if field == "user_id" and status == 409:  # a valid id without an account
                accepted = True
            if order_schema.is_valid(body) != accepted:
                disagreements.append((field, value, status, answer))
    assert not disagreements


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_schema(gateway: str) -> None:
    """A bounded schemathesis run against the live gateway, from its own /v1/openapi.json."""
    schema = schemathesis.openapi.from_url(gateway + "/v1/openapi.json")
    # no 5xx, answers as documented; and what the schema refuses, the gateway refuses (4xx)
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance,
              content_type_conformance, negative_data_rejection, unsupported_method]
    http_json("POST", f"{gateway}/v1/accounts/1/deposits",  # some orders can then be placed
              {"amount": "9000000000", "reference": "funds"}, AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {  # schemathesis leaves out the document's own
        "POST /accounts/{user_id}/deposits", "GET /accounts/{user_id}", "POST /orders",
        "GET /orders/{order_id}"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(max_examples=25, deadline=None, database=None,
                                 derandomize=True, suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                response = case.call(base_url=gateway + "/v1", headers=AUTH, timeout=10)
                case.validate_response(response, checks=checks)

            run()
