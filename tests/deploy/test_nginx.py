"""deploy/k8s/base/nginx.conf, the reverse proxy of compose and Kubernetes: its bounds match the API's
settings, ``nginx -t`` accepts it, and, run by a real nginx (Debian's, ``make nginx``) in front of the
real API, it answers an oversized head with fal's 431, keeps the port in the URLs the API builds,
passes status-stream events as they happen, and streams uploads beyond the JSON body limit."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from core.settings import Settings
from server.__main__ import uvicorn_options
from stack.launcher import ManagedProcess, RedisProcess, base_url, free_port, start_api, wait_until_ready
from tests.conftest import KEY_A, stack_settings

from .conftest import DEPLOY, tool

CONF = DEPLOY / "k8s" / "base" / "nginx.conf"
APP = "fal-ai/bitdance"
AUTH = {"Authorization": f"Key {KEY_A}"}
SIZES = {"k": 1024, "m": 1024**2, "g": 1024**3}


def directive(name: str, text: str | None = None) -> list[str]:
    """The values of every ``name ...;`` line of the config (comments stripped)."""
    text = text if text is not None else CONF.read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line[len(name) :].strip().rstrip(";").strip() for line in lines if line.startswith(name + " ")]


def size_bytes(value: str) -> int:
    return int(value[:-1]) * SIZES[value[-1].lower()] if value[-1].isalpha() else int(value)


def seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def block(name: str) -> str:
    """The body of the first ``name {`` block (nested braces balanced)."""
    text = CONF.read_text()
    start = text.index(name + " {") + len(name) + 2
    depth, index = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        index += 1
    return text[start : index - 1]


def test_the_proxy_applies_the_apis_bounds_first() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]  # the defaults
    (buffers,) = directive("large_client_header_buffers")
    count, size = buffers.split()
    assert int(count) * size_bytes(size) == settings.max_header_bytes
    assert seconds(directive("client_header_timeout")[0]) == settings.header_timeout_s
    uploads = block("location /storage/upload/")
    assert size_bytes(directive("client_max_body_size", uploads)[0]) == settings.max_upload_bytes
    assert directive("proxy_request_buffering", uploads) == ["off"]
    assert size_bytes(directive("client_max_body_size")[0]) > settings.max_body_bytes  # the API's 413 shows first
    assert seconds(directive("proxy_read_timeout")[0]) > settings.run_timeout_s  # sync runs
    stream = block("location ~ /requests/[^/]+/status/stream$")
    assert directive("proxy_buffering", stream) == ["off"]


def test_upstream_connections_are_dropped_before_the_api_closes_them() -> None:
    """nginx must never reuse a keep-alive connection uvicorn is closing: a POST on it would get a 502."""
    upstream = block("upstream bitdance_api")
    config = uvicorn.Config("server.app:create_app", **uvicorn_options(Settings(_env_file=None), "127.0.0.1"))  # type: ignore[call-arg]
    assert seconds(directive("keepalive_timeout", upstream)[0]) < config.timeout_keep_alive
    assert directive("server", upstream) == ["api:8000"]  # the compose service; the pod itself in Kubernetes
    assert "Host              $http_host" in CONF.read_text()  # $host would drop the port from the URLs


def local_conf(root: Path, listen_port: int, api_port: int) -> Path:
    """The shipped config, run here: its upstream, port and /tmp paths moved onto this machine's."""
    work = root / "nginx"
    work.mkdir()
    work.chmod(0o777)  # nginx's workers (nobody, when started as root) write their temp files here
    text = CONF.read_text()
    text = text.replace("server api:8000;", f"server 127.0.0.1:{api_port};")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    text = text.replace("/tmp/", f"{work}/").replace("worker_processes auto;", "worker_processes 1;")
    assert text.count(str(work)) >= 6 and f"127.0.0.1:{api_port}" in text
    path = work / "nginx.conf"
    path.write_text(text)
    return path


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = local_conf(tmp_path, free_port(), free_port())
    checked = subprocess.run(
        [tool("nginx"), "-t", "-q", "-e", "stderr", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


@dataclass
class ProxiedApi:
    url: str  # through nginx
    port: int
    api: ManagedProcess


@pytest.fixture(scope="module")
def proxied_api(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedApi]:
    """The real API (its own key prefix: no worker) behind a real nginx running the shipped config."""
    binary = tool("nginx")  # skips before anything is started when there is none
    root = tmp_path_factory.mktemp("nginx-proxy")
    settings = stack_settings(redis_server, root / "storage", key_prefix=f"nginx{free_port()}")
    api = start_api(settings, None, root / "api.log")
    port = free_port()
    conf = local_conf(root, port, settings.port)
    argv = [binary, "-g", "daemon off;", "-e", "stderr", "-p", str(conf.parent), "-c", str(conf)]
    with open(root / "nginx.log", "wb") as log:
        nginx = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(base_url(settings), processes=(api,))
        wait_until_ready(f"http://127.0.0.1:{port}", processes=(api,))
        yield ProxiedApi(f"http://127.0.0.1:{port}", port, api)
    finally:
        nginx.terminate()
        nginx.wait(30)
        api.stop()


def test_an_oversized_head_gets_fals_431_from_the_proxy(proxied_api: ProxiedApi) -> None:
    response = httpx.get(f"{proxied_api.url}/health/live", headers={"X-Pad": "a" * 70_000}, timeout=30)
    assert response.status_code == 431
    assert response.json() == {"detail": "Request header fields too large", "error_type": "bad_request"}
    assert response.headers["x-fal-error-type"] == "bad_request"


def test_urls_keep_the_proxys_port_and_streams_are_not_buffered(proxied_api: ProxiedApi) -> None:
    with httpx.Client(base_url=proxied_api.url, headers=AUTH, timeout=30) as client:
        submitted = client.post(f"/queue/{APP}", json={"prompt": "p"}).json()
        assert submitted["status_url"].startswith(f"{proxied_api.url}/queue/")  # $http_host: the port kept
        events: list[tuple[float, str]] = []

        def read() -> None:
            with httpx.Client(headers=AUTH, timeout=60) as reader:
                with reader.stream("GET", submitted["status_url"] + "/stream") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("data: "):
                            events.append((time.monotonic(), json.loads(line[6:])["status"]))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [status for _, status in events] == ["IN_QUEUE"]  # while the stream is open: not held back
        cancelled_at = time.monotonic()
        assert client.put(submitted["cancel_url"]).status_code == 202
        thread.join(30)
    assert events[-1][1] == "COMPLETED" and events[-1][0] - cancelled_at < 5


def test_uploads_stream_through_beyond_the_json_limit(proxied_api: ProxiedApi) -> None:
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB: over the proxy's 2 MiB for everything but uploads
    with httpx.Client(base_url=proxied_api.url, headers=AUTH, timeout=60) as client:
        target = client.post("/storage/upload/initiate", json={"content_type": "image/png", "file_name": "a.png"})
        assert target.status_code == 200, target.text
        assert target.json()["upload_url"].startswith(proxied_api.url)
        assert httpx.put(target.json()["upload_url"], content=data, timeout=60).status_code == 200
        assert httpx.get(target.json()["file_url"], timeout=60).content == data
        too_big = client.post(f"/queue/{APP}", content=b'{"prompt": "' + b"a" * len(data) + b'"}')
    assert too_big.status_code == 413
    assert too_big.json() == {"detail": "Request body too large", "error_type": "bad_request"}


def test_a_half_sent_head_is_not_passed_to_the_api(proxied_api: ProxiedApi) -> None:
    """nginx holds slow heads itself (client_header_timeout); the API sees only whole requests."""
    with socket.create_connection(("127.0.0.1", proxied_api.port), timeout=5) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        metrics = httpx.get(f"{proxied_api.url}/metrics", timeout=10).text
    found = re.search(r"^bitdance_http_connections (\S+)$", metrics, re.M)
    assert found and float(found.group(1)) <= 2  # the scrape's upstream connection (and a kept-alive one)
