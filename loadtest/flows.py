"""One request end to end, timed per phase: over HTTP with Locust's client, or through ``fal-client``.

Every HTTP call goes through the Locust user's session, so Locust's own statistics see each call
(named ``submit``, ``status``, ``status_stream``, ``result``, ``run``, ``download``) next to the
per-phase figures these flows return.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from loadtest.config import LoadConfig
from loadtest.samples import Sample

Clock = Callable[[], float]


class Response(Protocol):
    status_code: int
    content: bytes | None
    headers: Any


class Session(Protocol):
    """What the flows need of Locust's ``FastHttpSession``."""

    def request(self, method: str, url: str, **kwargs: Any) -> Any: ...


class Timeline:
    """Monotonic instants of one request, turned into phases at the end."""

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self.start = clock()
        self.submitted: float | None = None
        self.in_progress: float | None = None
        self.completed: float | None = None

    def now(self) -> float:
        return self.clock()

    def see(self, status: str) -> None:
        now = self.clock()
        if status == "IN_PROGRESS" and self.in_progress is None:
            self.in_progress = now
        elif status == "COMPLETED" and self.completed is None:
            self.completed = now


def error_kind(status_code: int) -> str:
    return "connection" if status_code == 0 else f"http_{status_code}"


def _json(response: Any) -> Any:
    try:
        return json.loads(response.content or b"")
    except ValueError:
        return None


class HttpFlow:
    """fal's queue flow (submit, status polling or stream, result, download) or the sync run route."""

    def __init__(self, session: Session, config: LoadConfig, clock: Clock = time.perf_counter) -> None:
        self.session = session
        self.config = config
        self.clock = clock
        self.headers = config.auth_headers

    def run(self, payload: dict[str, Any]) -> Sample:
        sample = Sample(started_at=time.time())
        line = Timeline(self.clock)
        try:
            if self.config.flow == "run":
                output = self._sync_run(payload, sample, line)
            else:
                output = self._queued(payload, sample, line)
            if output is not None and sample.error is None and self.config.download:
                self._download(output, sample)
            elif output is not None:
                sample.images = len(output.get("images", []))
        except Exception as exc:  # a flow never takes the user down: the error becomes the sample's kind
            sample.error = sample.error or f"exception_{type(exc).__name__}"
        sample.phases["e2e"] = line.now() - line.start
        return sample

    def _queued(self, payload: dict[str, Any], sample: Sample, line: Timeline) -> dict[str, Any] | None:
        response = self.session.request("POST", self.config.submit_url, name="submit", json=payload,
                                        headers=self.headers)  # fmt: skip
        line.submitted = line.now()
        sample.phases["submit"] = line.submitted - line.start
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, dict) or "status_url" not in body:
            sample.error = error_kind(response.status_code) if response.status_code != 200 else "protocol"
            return None
        sample.request_id = body.get("request_id")
        deadline = line.start + self.config.timeout_s
        if self.config.status == "stream":
            final = self._stream_until_completed(body["status_url"], line, deadline)
        else:
            final = self._poll_until_completed(body["status_url"], line, deadline)
        if final is None:
            sample.error = "lost"
            return None
        sample.completed = True
        self._split_phases(final, sample, line)
        if final.get("error"):
            sample.error = final.get("error_type") or "error"
        started = line.now()
        response = self.session.request("GET", body["response_url"], name="result", headers=self.headers)
        sample.phases["result"] = line.now() - started
        output = _json(response)
        if sample.error is None and (response.status_code != 200 or not isinstance(output, dict)):
            sample.error = error_kind(response.status_code) if response.status_code != 200 else "protocol"
        return output if isinstance(output, dict) else None

    def _split_phases(self, final: dict[str, Any], sample: Sample, line: Timeline) -> None:
        reported = (final.get("metrics") or {}).get("inference_time")
        sample.reported_inference_s = float(reported) if isinstance(reported, (int, float)) else None
        assert line.submitted is not None and line.completed is not None
        if line.in_progress is not None:
            sample.in_progress_seen = True
            in_progress = line.in_progress
        else:  # went from IN_QUEUE to COMPLETED between two looks: split with the reported time
            in_progress = max(line.submitted, line.completed - (sample.reported_inference_s or 0.0))
        sample.phases["queue_wait"] = in_progress - line.submitted
        sample.phases["inference"] = line.completed - in_progress

    def _status_query(self) -> str:
        return "?logs=1" if self.config.with_logs else ""

    def _poll_until_completed(self, status_url: str, line: Timeline, deadline: float) -> dict[str, Any] | None:
        url = status_url + self._status_query()
        while line.now() < deadline:
            response = self.session.request("GET", url, name="status", headers=self.headers)
            body = _json(response)
            if isinstance(body, dict) and "status" in body:
                line.see(body["status"])
                if body["status"] == "COMPLETED":
                    return body
            time.sleep(self.config.poll_interval_s)
        return None

    def _stream_until_completed(self, status_url: str, line: Timeline, deadline: float) -> dict[str, Any] | None:
        """Read server-sent events until COMPLETED; reconnect if the stream ends early."""
        headers = {**self.headers, "Accept": "text/event-stream", "Accept-Encoding": "identity"}
        url = f"{status_url}/stream{self._status_query()}"
        while line.now() < deadline:
            response = self.session.request("GET", url, name="status_stream", headers=headers, stream=True)
            if response.status_code != 200:
                time.sleep(self.config.poll_interval_s)
                continue
            final = self._read_events(response, line)
            if final is not None:
                return final
        return None

    @staticmethod
    def _read_events(response: Any, line: Timeline) -> dict[str, Any] | None:
        raw = response._response  # geventhttpclient's response: readline() returns each line as it arrives
        final = None
        while True:
            text = raw.readline(b"\n")
            if not text:
                return final
            if final is not None or not text.startswith(b"data:"):
                continue
            body = json.loads(text[5:])
            line.see(body.get("status", ""))
            if body.get("status") == "COMPLETED":
                final = body  # keep reading: the server closes the stream right after, freeing the connection

    def _sync_run(self, payload: dict[str, Any], sample: Sample, line: Timeline) -> dict[str, Any] | None:
        response = self.session.request("POST", self.config.run_url, name="run", json=payload, headers=self.headers)
        sample.phases["run"] = line.now() - line.start
        output = _json(response)
        if response.status_code != 200 or not isinstance(output, dict):
            detail = output if isinstance(output, dict) else {}
            sample.error = detail.get("error_type") or error_kind(response.status_code)
            return None
        sample.completed = True
        return output

    def _download(self, output: dict[str, Any], sample: Sample) -> None:
        started = self.clock()
        for image in output.get("images", []):
            url = image.get("url", "")
            if url.startswith("data:"):  # sync_mode: the image is inline
                sample.images += 1
                continue
            response = self.session.request("GET", url, name="download")
            size = len(response.content or b"")
            if response.status_code != 200:
                sample.error = error_kind(response.status_code)
                break
            if image.get("file_size") not in (None, size):
                sample.error = "image_size_mismatch"
                break
            sample.images += 1
            sample.image_bytes += size
        sample.phases["download"] = self.clock() - started


class FalClientFlow:
    """The same flow through the real ``fal-client`` (``SyncClient``): submit, status events, result.

    Images are downloaded with the Locust session. ``fal_client`` reads its hosts from the
    environment at import time; ``runner.configure_fal_client_hosts`` sets them first.
    """

    def __init__(self, session: Session, config: LoadConfig, clock: Clock = time.perf_counter) -> None:
        import fal_client

        self.fal_client = fal_client
        self.client = fal_client.SyncClient(key=config.key)
        self.http = HttpFlow(session, config, clock)
        self.config = config
        self.clock = clock

    def run(self, payload: dict[str, Any]) -> Sample:
        fal = self.fal_client
        sample = Sample(started_at=time.time())
        line = Timeline(self.clock)
        try:
            handle = self.client.submit(self.config.endpoint, arguments=payload)
            line.submitted = line.now()
            sample.phases["submit"] = line.submitted - line.start
            sample.request_id = handle.request_id
            final = None
            interval = self.config.poll_interval_s
            for status in handle.iter_events(with_logs=self.config.with_logs, interval=interval):
                if isinstance(status, fal.InProgress):
                    line.see("IN_PROGRESS")
                elif isinstance(status, fal.Completed):
                    line.see("COMPLETED")
                    final = {"metrics": status.metrics, "error": status.error, "error_type": status.error_type}
                if line.now() > line.start + self.config.timeout_s:
                    break
            if final is None:
                sample.error = "lost"
            else:
                sample.completed = True
                self.http._split_phases(final, sample, line)
                if final.get("error"):
                    sample.error = final.get("error_type") or "error"
                started = line.now()
                try:
                    output = self.client.result(self.config.endpoint, handle.request_id)
                except fal.client.FalClientHTTPError as exc:
                    sample.error = sample.error or f"http_{exc.status_code}"
                    output = None
                sample.phases["result"] = line.now() - started
                if output is not None and sample.error is None:
                    if self.config.download:
                        self.http._download(output, sample)
                    else:
                        sample.images = len(output.get("images", []))
        except fal.client.FalClientHTTPError as exc:
            sample.error = sample.error or f"http_{exc.status_code}"
        except Exception as exc:  # the error becomes the sample's kind, never the user's death
            sample.error = sample.error or f"exception_{type(exc).__name__}"
        sample.phases["e2e"] = line.now() - line.start
        return sample
