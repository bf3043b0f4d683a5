"""The parts behind issue 8's fixes, one by one: 422 rendering, lifecycle parsing, file types,
webhook targets, multipart assembly and the staging janitor."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.exceptions import RequestValidationError

from core.requests.records import RequestRecord, is_request_id
from core.settings import Settings
from core.storage import LocalStorage, MissingPartError, UploadTooLargeError, new_token
from core.webhooks.targets import (
    WebhookTargetError,
    check_webhook_url,
    is_public_address,
    pinned_target,
    webhook_targets,
)
from server.error_handlers import json_safe, validation_items
from server.file_types import OCTET_STREAM, download_headers, is_valid_content_type
from server.object_lifecycle import parse_object_lifecycle


def test_json_safe_makes_any_validation_item_strict_json() -> None:
    errors = [
        {"loc": ("body", "seed"), "msg": "m", "type": "t", "input": float("inf"), "ctx": {"ge": float("-inf")}},
        {"loc": ("body", "prompt"), "msg": "m", "type": "t", "input": "x\ud800", "url": "https://errors.pydantic.dev"},
        {"loc": ("body",), "msg": "m", "type": "t", "input": b"\xff{", "ctx": {"error": ValueError("bad")}},
        {"loc": ("body", "x"), "msg": "m", "type": "t", "input": [float("nan"), {1: (2, 3)}]},
    ]
    items = validation_items(errors)
    text = json.dumps(items, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")  # no lone surrogate left
    assert items[0]["input"] == "Infinity" and items[0]["ctx"] == {"ge": "-Infinity"}
    assert items[1]["input"] == "x\ufffd" and "url" not in items[1]  # fal's keys only
    assert items[2]["input"] == "\ufffd{" and items[2]["ctx"] == {"error": "bad"}
    assert items[3]["input"] == ["NaN", {"1": [2, 3]}]
    assert json_safe("fox \U0001f98a") == "fox \U0001f98a"  # real text is untouched


def test_request_ids_are_canonical_uuids() -> None:
    assert is_request_id("764cabcf-b745-4b3e-ae38-1200304cf45b")
    for bad in ("764CABCF-B745-4B3E-AE38-1200304CF45B", "764cabcf-b745-4b3e-ae38-1200304cf45b:logs", "", None, 5):
        assert not is_request_id(bad)
    assert not is_request_id("764cabcf-b745-4b3e-ae38-1200304cf45b\n")


def test_lifecycle_header_parses_to_its_validated_value() -> None:
    assert parse_object_lifecycle(None) is None and parse_object_lifecycle("  ") is None
    parsed = parse_object_lifecycle('{"expiration_duration_seconds": 3600, "initial_acl": {"default": "hide"}}')
    assert parsed is not None and parsed.to_record() == {"expiration_duration_seconds": 3600}
    assert parse_object_lifecycle('{"expiration_duration_seconds": 60.0}').to_record() == {  # type: ignore[union-attr]
        "expiration_duration_seconds": 60
    }
    assert parse_object_lifecycle("{}").to_record() is None  # type: ignore[union-attr]
    with pytest.raises(RequestValidationError) as raised:
        parse_object_lifecycle('{"expiration_duration_seconds": 0}', "x-fal-object-lifecycle")
    assert raised.value.errors()[0]["loc"] == ["header", "x-fal-object-lifecycle", "expiration_duration_seconds"]


def test_worker_side_ttl_ignores_anything_but_a_positive_integer() -> None:
    def ttl(lifecycle: object) -> int | None:
        data = {"status": "IN_QUEUE", "lifecycle": json.dumps(lifecycle)}
        return RequestRecord.from_hash("764cabcf-b745-4b3e-ae38-1200304cf45b", data).file_ttl_s

    assert ttl({"expiration_duration_seconds": 60}) == 60
    for garbage in ("abc", 0, -5, 1.5, True, None, [1]):  # written by an API before validation existed
        assert ttl({"expiration_duration_seconds": garbage}) is None


@pytest.mark.parametrize(
    "declared,served,attachment",
    [
        ("image/png", "image/png", False),
        ("image/JPEG", "image/jpeg", False),
        ("image/webp; q=1", "image/webp", False),
        ("video/mp4", "video/mp4", False),
        ("application/octet-stream", OCTET_STREAM, False),
        ("text/plain; charset=utf-8", "text/plain", False),
        ("text/csv", OCTET_STREAM, True),
        ("text/html", OCTET_STREAM, True),
        ("text/html; charset=utf-8", OCTET_STREAM, True),
        ("image/svg+xml", OCTET_STREAM, True),
        ("application/xhtml+xml", OCTET_STREAM, True),
        ("application/pdf", OCTET_STREAM, True),
        ("text/plain\r\nX-Evil: 1", OCTET_STREAM, True),  # stored before validation existed
        ("", OCTET_STREAM, True),
    ],
)
def test_download_headers(declared: str, served: str, attachment: bool) -> None:
    media_type, headers = download_headers(declared, "file.bin")
    assert media_type == served
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert ("Content-Disposition" in headers) is attachment
    if attachment:
        assert headers["Content-Disposition"] == 'attachment; filename="file.bin"'


def test_content_type_grammar() -> None:
    for good in ("image/png", "application/vnd.api+json", 'text/plain; charset="utf-8"', "a/b;x=y"):
        assert is_valid_content_type(good), good
    for bad in (
        "image/png\r\n",
        "image/png\n",
        "image",
        "/png",
        "image/",
        "image/p ng",
        "imäge/png",
        "a/b;x",
        "x" * 300,
    ):
        assert not is_valid_content_type(bad), bad


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("239.255.255.250", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_webhook_url_checks() -> None:
    check_webhook_url("https://8.8.8.8/hook", allow_private=False)
    check_webhook_url("http://127.0.0.1:9/hook", allow_private=True)
    for refused in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://[fe80::1]/h", "http://0x7f000001/"):
        with pytest.raises(WebhookTargetError):
            check_webhook_url(refused, allow_private=False)
    for malformed in ("file:///etc/passwd", "ftp://8.8.8.8/", "http://", "//8.8.8.8/", "http://8.8.8.8:0x50/"):
        with pytest.raises(WebhookTargetError):
            check_webhook_url(malformed, allow_private=True)
    with pytest.raises(WebhookTargetError, match="resolved"):
        check_webhook_url("http://no-such-host.invalid/hook", allow_private=False)


def test_delivery_is_pinned_to_the_checked_address() -> None:
    [target] = webhook_targets("https://user:pw@8.8.8.8:8443/hook?a=1", allow_private=False)
    assert target.url == "https://user:pw@8.8.8.8:8443/hook?a=1"
    assert target.headers == {"Host": "8.8.8.8:8443"} and target.extensions == {"sni_hostname": "8.8.8.8"}
    pinned = pinned_target(urlsplit("https://hooks.example.com/x"), ipaddress.ip_address("2001:db8::1"))
    assert pinned.url == "https://[2001:db8::1]/x"
    assert pinned.headers == {"Host": "hooks.example.com"}
    assert pinned.extensions == {"sni_hostname": "hooks.example.com"}
    [unpinned] = webhook_targets("http://localhost:9/hook", allow_private=True)
    assert unpinned.url == "http://localhost:9/hook" and not unpinned.headers


def put_part(storage: LocalStorage, token: str, data: bytes) -> str:
    """A received part (the ledger would record which number it is); its file name."""
    incoming = storage.new_incoming_part(token)
    incoming.write_bytes(data)
    return incoming.name


def staged_files(storage: LocalStorage) -> list[str]:
    return sorted(entry.name for entry in storage.staging.iterdir() if entry.is_file())


def test_assembly_streams_caps_and_cleans_up(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    token = new_token()
    second = put_part(storage, token, b"b" * 10)
    first = put_part(storage, token, b"A" * 5)
    gone = put_part(storage, token, b"a" * 10)
    storage.discard_part(token, gone)  # a replaced copy
    with pytest.raises(MissingPartError):
        storage.assemble_parts(token, [(1, first), (3, gone)], max_bytes=100)
    with pytest.raises(UploadTooLargeError):
        storage.assemble_parts(token, [(1, first), (2, second), (3, first), (4, second)], max_bytes=20)
    with pytest.raises(ValueError):
        storage.assemble_parts(token, [(1, "../../etc/passwd")], max_bytes=100)  # only names it made
    assert staged_files(storage) == []  # no half-assembled file left by a failure
    staged = storage.assemble_parts(token, [(1, first), (2, second)], max_bytes=15)
    assert staged.read_bytes() == b"A" * 5 + b"b" * 10
    storage.delete_parts(token)  # after the commit
    assert not storage.parts_folder(token).exists()


def test_a_token_is_committed_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    token = new_token()
    first = storage.new_staged_path()
    first.write_bytes(b"first")
    storage.commit(first, file_name="f.txt", content_type="text/plain", owner="o", token=token)
    second = storage.new_staged_path()
    second.write_bytes(b"")
    with pytest.raises(FileExistsError):
        storage.commit(second, file_name="f.txt", content_type="text/plain", owner="o", token=token)
    assert not second.exists()
    found = storage.lookup(token, "f.txt")
    assert found is not None and found[1].read_bytes() == b"first"


def test_janitor_removes_abandoned_staging_only(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    old_token, live_token = new_token(), new_token()
    old_part = put_part(storage, old_token, b"x")
    live_part = put_part(storage, live_token, b"y")
    stale = storage.new_staged_path()
    fresh = storage.new_staged_path()
    long_ago = time.time() - 7200
    for path in (stale, storage.parts_folder(old_token), storage.part_path(old_token, old_part)):
        os.utime(path, (long_ago, long_ago))
    assert storage.delete_abandoned_staging(max_age_s=3600) == 2
    assert not stale.exists() and not storage.parts_folder(old_token).exists()
    assert fresh.exists() and storage.part_path(live_token, live_part).exists()


def test_settings_document_their_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.webhook_allow_private is False
    assert settings.is_metrics_keyed is False  # default host is loopback
    assert Settings(_env_file=None, host="0.0.0.0").is_metrics_keyed is True
    assert Settings(_env_file=None, host="::1").is_metrics_keyed is False
    assert Settings(_env_file=None, host="0.0.0.0", metrics_require_key=False).is_metrics_keyed is False
