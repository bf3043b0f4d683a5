"""Issue 19, item 6: multipart uploads under concurrency, through the real HTTP API (uvicorn, Redis).

Many small rounds, each firing its requests at once from threads: parts sent in parallel share the
upload's ``max_upload_bytes`` (1 MiB on this API), one completion wins and the others get its answer
or 409, a second PUT never replaces the first file, and a refusal leaves nothing on disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import HARDENED_MAX_UPLOAD_BYTES, HardenedApi

PART = 600 << 10  # two of them are more than the 1 MiB cap


def at_once(calls: Sequence[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls together (released by one barrier), each on its own thread and connection."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def initiate(api: HardenedApi, multipart: bool = True) -> str:
    route = "/storage/upload/initiate-multipart" if multipart else "/storage/upload/initiate"
    with api.client() as client:
        response = client.post(route, json={"content_type": "application/octet-stream", "file_name": "f.bin"})
    assert response.status_code == 200, response.text
    upload_url: str = response.json()["upload_url"]
    return upload_url


def parts_on_disk(api: HardenedApi, upload_url: str) -> list[int]:
    folder = api.settings.storage_dir / ".staging" / f"parts-{upload_url.rsplit('/', 1)[1]}"
    return sorted(entry.stat().st_size for entry in folder.iterdir()) if folder.exists() else []


def chunked(data: bytes, size: int = 64 << 10) -> Iterator[bytes]:
    """A body without Content-Length: reserved chunk by chunk."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def put_part(base: str, number: int, declared: bool) -> Callable[[], httpx.Response]:
    body: Any = b"p" * PART if declared else chunked(b"p" * PART)
    return lambda: httpx.put(f"{base}/{number}", content=body, timeout=30)


def put_body(url: str, body: bytes) -> Callable[[], httpx.Response]:
    return lambda: httpx.put(url, content=body, timeout=30)


def post_json(url: str, body: dict[str, Any]) -> Callable[[], httpx.Response]:
    return lambda: httpx.post(url, json=body, timeout=30)


def test_parallel_parts_share_the_upload_cap(hardened_api: HardenedApi) -> None:
    for round_number in range(8):
        base = initiate(hardened_api)

        declared = round_number % 2 == 0
        answers = at_once([put_part(base, number, declared) for number in (1, 2, 3)])
        codes = sorted(response.status_code for response in answers)
        # before: [200, 200, 200], 1.8 MB kept. A declared part reserves its whole Content-Length up front,
        # so exactly one fits; chunked parts reserve chunk by chunk, so all three may run out together.
        expected = [[200, 413, 413]] if declared else [[200, 413, 413], [413, 413, 413]]
        assert codes in expected, (round_number, codes)
        winners = [response.json() for response in answers if response.status_code == 200]
        assert parts_on_disk(hardened_api, base) == [PART] * len(winners)  # refused parts left nothing behind
        if not winners:
            continue
        done = httpx.post(f"{base}/complete", json={"parts": winners})
        assert done.status_code == 200 and done.json()["size"] == PART <= HARDENED_MAX_UPLOAD_BYTES
        assert parts_on_disk(hardened_api, base) == []


def test_concurrent_completions_one_wins(hardened_api: HardenedApi) -> None:
    for round_number in range(20):
        base = initiate(hardened_api)
        content = f"round {round_number}".encode()
        part = httpx.put(f"{base}/1", content=content)
        assert part.status_code == 200
        listed = {"parts": [part.json()]} if round_number % 2 else {"parts": []}  # []: every part received
        answers = at_once([post_json(f"{base}/complete", listed)] * 3)
        codes = [response.status_code for response in answers]
        assert set(codes) <= {200, 409} and 200 in codes, (round_number, codes)  # before: 0-byte files, 500s
        urls = {response.json()["file_url"] for response in answers if response.status_code == 200}
        assert len(urls) == 1  # later completions get the winner's answer
        served = httpx.get(urls.pop())
        assert served.status_code == 200 and served.content == content
        again = httpx.post(f"{base}/complete", json=listed)  # a client retrying after the answer was lost
        assert again.status_code == 200 and again.json()["size"] == len(content)


def test_a_second_put_never_replaces_the_file(hardened_api: HardenedApi) -> None:
    for round_number in range(10):
        upload_url = initiate(hardened_api, multipart=False)
        bodies = [f"first {round_number}".encode() * 100, f"second {round_number}".encode() * 150]
        answers = at_once([put_body(upload_url, body) for body in bodies])
        codes = sorted(response.status_code for response in answers)
        assert codes == [200, 409], (round_number, codes)
        winner = next(response for response in answers if response.status_code == 200)
        served = httpx.get(winner.json()["file_url"]).content
        assert served in bodies and len(served) == winner.json()["size"]
        assert httpx.put(upload_url, content=b"late").status_code == 409


def test_parts_after_the_completion_are_refused(hardened_api: HardenedApi) -> None:
    base = initiate(hardened_api)
    first = httpx.put(f"{base}/1", content=b"a" * 1000)
    assert httpx.post(f"{base}/complete", json={"parts": [first.json()]}).status_code == 200
    assert httpx.put(f"{base}/2", content=b"b" * 1000).status_code == 409
    assert parts_on_disk(hardened_api, base) == []
    no_parts = initiate(hardened_api)
    assert httpx.post(f"{no_parts}/complete", json={"parts": []}).status_code == 400  # before: an empty file
