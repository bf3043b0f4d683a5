"""uvicorn's access log without answered status polls (``BITDANCE_LOG_STATUS_POLLS`` off, the default)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from server.access_log import ACCESS_LOGGER, AnsweredStatusPolls, configure_api_logging

RID = "cdb120a7-2ee7-4933-872b-6c56cf05580a"


def access_record(method: str, path: str, status_code: int) -> logging.LogRecord:
    """A record as uvicorn's HTTP protocol writes it."""
    args = ("127.0.0.1:52176", method, path, "1.1", status_code)
    return logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


@pytest.mark.parametrize(
    ("method", "path", "status_code", "logged"),
    [
        ("GET", f"/queue/fal-ai/bitdance/requests/{RID}/status", 202, False),
        ("GET", f"/queue/fal-ai/bitdance/requests/{RID}/status", 200, False),
        ("GET", f"/queue/fal-ai/bitdance/requests/{RID}/status?logs=1", 202, False),
        ("GET", f"/fal-ai/bitdance/requests/{RID}/status", 202, False),  # on a queue.* host
        ("GET", f"/queue/fal-ai/bitdance/requests/{RID}/status", 404, True),  # failures are logged
        ("GET", f"/queue/fal-ai/bitdance/requests/{RID}/status", 503, True),
        ("GET", f"/queue/fal-ai/bitdance/requests/{RID}/status/stream", 200, True),  # once per stream
        ("GET", f"/queue/fal-ai/bitdance/requests/{RID}", 200, True),  # the result
        ("PUT", f"/queue/fal-ai/bitdance/requests/{RID}/cancel", 202, True),
        ("POST", "/queue/fal-ai/bitdance", 200, True),
        ("GET", "/health", 200, True),
    ],
)
def test_only_answered_status_polls_are_left_out(method: str, path: str, status_code: int, logged: bool) -> None:
    assert AnsweredStatusPolls().filter(access_record(method, path, status_code)) is logged


def test_other_records_pass() -> None:
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "plain message", None, None)
    assert AnsweredStatusPolls().filter(record)


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(ACCESS_LOGGER)
    saved_filters, saved_handlers = list(logger.filters), list(logging.getLogger().handlers)
    yield logger
    logger.filters[:] = saved_filters
    logging.getLogger().handlers[:] = saved_handlers


def test_the_setting_turns_the_filter_on_and_off(access_logger: logging.Logger) -> None:
    poll = access_record("GET", f"/queue/fal-ai/bitdance/requests/{RID}/status", 202)
    configure_api_logging("INFO", "text", log_status_polls=False)
    assert not access_logger.filter(poll)
    configure_api_logging("INFO", "text", log_status_polls=False)  # configured twice: still one filter
    assert sum(isinstance(f, AnsweredStatusPolls) for f in access_logger.filters) == 1
    configure_api_logging("INFO", "text", log_status_polls=True)
    assert access_logger.filter(poll)
