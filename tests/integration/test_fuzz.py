"""Bounded fuzzing of the real API (uvicorn + redis-server): no input ever gets a 5xx or a dropped
connection, and every 422 is fal's shape in strict JSON.

Two parts, each kept to a fixed number of examples (about a minute together on two cores):

- hypothesis strategies for the endpoint's inputs (every field hostile or plausible: NaN,
  ``1e999``, huge integers, lone surrogates, wrong types) on submit, run and the proxy, and for
  the hostile headers and request ids of issue 8;
- schemathesis over our own OpenAPI document (``/openapi.json``), every operation but ``/health``
  (whose 503 without a worker is its designed answer), valid and invalid cases alike.

Both run against ``hardened_api``: no worker serves its queue and its queue limit is 0, so valid
runs answer 429 at once and nothing reaches the session's worker (submits meant to be stored go to
its ``accept_url``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

from tests.conftest import KEY_A, HardenedApi
from tests.integration.helpers import APP

SUBMIT = f"/queue/{APP}"
RUN = f"/{APP}"
PROXY = "/api/fal/proxy"
FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=list(HealthCheck),
)

# ------------------------------------------------------------------ strategies

# JSON number tokens Python's encoder never writes but clients can send
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e309", "9" * 400, "-0", "1e-400", "0.5"]
HOSTILE_TEXT = ["\ud800", "x\udfff", "\x00", "\r\n", "\u2028", "{{", "' OR 1=1", "\U0001f98a", " ", ""]


class RawNumber(str):
    """A number token spliced verbatim into the JSON body."""


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(RAW_NUMBERS).map(RawNumber),
    st.text(max_size=20),
    st.sampled_from(HOSTILE_TEXT),
)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def field(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(plausible, plausible, any_json)


input_fields = st.fixed_dictionaries(
    {},
    optional={
        "prompt": field(st.text(min_size=1, max_size=40) | st.sampled_from(HOSTILE_TEXT)),
        "image_size": field(
            st.sampled_from(["square", "square_hd", "landscape_4_3"])
            | st.fixed_dictionaries({"width": field(st.integers(200, 2100)), "height": field(st.integers(200, 2100))})
        ),
        "num_inference_steps": field(st.integers(0, 120)),
        "guidance_scale": field(st.floats(0, 20)),
        "seed": field(st.integers(-10, 2**64)),
        "num_images": field(st.integers(0, 6)),
        "enable_safety_checker": field(st.booleans()),
        "output_format": field(st.sampled_from(["jpeg", "png", "webp"])),
        "sync_mode": field(st.booleans()),
    },
)


def to_json(value: Any) -> str:
    """JSON text as a hostile client may write it: raw number tokens, lone surrogates as escapes."""
    if isinstance(value, RawNumber):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value, allow_nan=True)  # NaN / Infinity tokens
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: a lone surrogate becomes "\ud800"


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60)
HOSTILE_HEADERS = [
    "[" * 3000,
    "{" * 3000,
    '{"expiration_duration_seconds": 1e309}',
    '{"expiration_duration_seconds": NaN}',
    '{"expiration_duration_seconds": "abc"}',
    '{"expiration_duration_seconds": -5}',
    "null",
    "[]",
    '"x"',
]
hostile_header = st.one_of(
    st.sampled_from(HOSTILE_HEADERS),
    header_text,
    st.sampled_from(RAW_NUMBERS),
    any_json.map(to_json).filter(lambda s: all(0x20 <= ord(c) <= 0xFF and c != "\x7f" for c in s)),
)
request_ids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: f"{u}:logs"),
    st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, exclude_categories=("Cs",)), max_size=40),
    st.sampled_from(["%00", "%0d%0a", "..", "%2e%2e%2f", "*", "1" * 500]),
)

# ------------------------------------------------------------------ checks


def strict_json(response: httpx.Response) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(response.content.decode("utf-8"), parse_constant=refuse)


def check_answer(response: httpx.Response) -> None:
    """Never a 5xx; a 422 is fal's shape; the request id header is always an id we issue."""
    assert response.status_code < 500, (response.status_code, response.text)
    rid = response.headers.get("x-fal-request-id")
    assert rid is not None and str(uuid.UUID(rid)) == rid
    if response.status_code == 422:
        detail = strict_json(response)["detail"]
        assert isinstance(detail, list) and detail
        for item in detail:
            assert isinstance(item["loc"], list) and isinstance(item["msg"], str) and isinstance(item["type"], str)


@pytest.fixture(scope="module")
def client(hardened_api: HardenedApi) -> Any:
    with hardened_api.client(headers={"Content-Type": "application/json"}) as http:
        yield http


def test_fuzzed_inputs_never_get_a_server_error(client: httpx.Client, hardened_api: HardenedApi) -> None:
    accepting = hardened_api.accept_url + SUBMIT  # no queue bound there: valid inputs are stored
    routes = st.sampled_from(
        [
            (accepting, {}, {}),
            (RUN, {}, {}),
            (PROXY, {"x-fal-target-url": f"https://queue.fal.run/{APP}"}, {}),
            (PROXY, {"x-fal-target-url": f"https://fal.run/{APP}"}, {}),
        ]
    )

    @FUZZ
    @given(body=input_fields | any_json, route=routes)
    def fuzz(body: Any, route: tuple[str, dict[str, str], dict[str, str]]) -> None:
        path, headers, params = route
        response = client.post(path, content=to_json(body).encode(), headers=headers, params=params)
        check_answer(response)
        assert response.status_code in (200, 422, 429), response.text
        if response.status_code == 200:
            assert path == accepting and uuid.UUID(strict_json(response)["request_id"])

    fuzz()


def test_fuzzed_headers_and_query_never_get_a_server_error(client: httpx.Client, hardened_api: HardenedApi) -> None:
    names = ["x-fal-object-lifecycle-preference", "x-fal-request-timeout", "x-fal-queue-priority", "x-fal-target-url"]

    @FUZZ
    @given(
        headers=st.fixed_dictionaries({}, optional=dict.fromkeys(names, hostile_header)),
        webhook=st.none() | header_text,
        path=st.sampled_from([SUBMIT, RUN, PROXY]),
    )
    def fuzz(headers: dict[str, str], webhook: str | None, path: str) -> None:
        params = {"fal_webhook": webhook} if webhook is not None else {}
        if path == SUBMIT:  # to the API with no queue bound: every header gets parsed
            path = hardened_api.accept_url + SUBMIT
        if path == PROXY:
            headers.setdefault("x-fal-target-url", f"https://queue.fal.run/{APP}")
        # As sent on the wire: a field value has no leading or trailing whitespace (RFC 9110, 5.5; h11 and
        # every client refuse to send one), so what a server can receive is the stripped value.
        raw = {name: value.strip(" \t").encode("latin-1") for name, value in headers.items()}
        response = client.post(path, content=b'{"prompt": "p"}', headers=raw, params=params)
        check_answer(response)

    fuzz()


def test_fuzzed_request_ids_never_get_a_server_error(client: httpx.Client) -> None:
    routes = st.sampled_from([("GET", "/status"), ("GET", ""), ("PUT", "/cancel"), ("GET", "/status/stream")])

    @FUZZ
    @given(rid=request_ids, route=routes)
    def fuzz(rid: str, route: tuple[str, str]) -> None:
        method, suffix = route
        response = client.request(method, f"{SUBMIT}/requests/{quote(rid, safe='')}{suffix}")
        check_answer(response)
        assert response.status_code in (400, 404, 405, 422), (rid, response.status_code)

    fuzz()


def test_schemathesis_finds_no_server_error(hardened_api: HardenedApi) -> None:
    schema = schemathesis.openapi.from_url(f"{hardened_api.url}/openapi.json")
    auth = {"Authorization": f"Key {KEY_A}"}
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/health":
            continue
        tested += 1
        cases = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def check(case: Any) -> None:
            response = case.call(base_url=hardened_api.url, headers=auth, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except (AssertionError, FailureGroup) as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert tested >= 10  # the document lists the queue, run, storage, file and ops routes
    assert not failures, "\n".join(failures)
