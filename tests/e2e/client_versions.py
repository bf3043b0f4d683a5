"""The older fal client releases of the e2e version matrix: which they are, where they live, how they run.

Python: the releases listed in ``fal-client-versions.txt``, each installed by ``make py-clients`` into
its own folder ``.run/fal-clients/<version>`` (``pip install --no-deps --target``) and run by putting
that folder first on ``PYTHONPATH``; their few dependencies (httpx, httpx-sse, msgpack, websockets) come
from the test venv, which ``test_e2e_python_client_versions`` checks satisfies each release's own
requirements. JavaScript: the npm aliases in ``js/package.json`` (``fal-ai-client-1.8.5`` ->
``npm:@fal-ai/client@1.8.5``) and ``@fal-ai/serverless-client``, installed side by side by ``make js-deps``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]
PYTHON_VERSIONS_FILE = E2E_DIR / "fal-client-versions.txt"
PYTHON_CLIENTS_DIR = REPO_ROOT / ".run" / "fal-clients"
PYTHON_ROUND = E2E_DIR / "python_client_round.py"
JS_PACKAGE_JSON = E2E_DIR / "js" / "package.json"
JS_ROUND = E2E_DIR / "js" / "client_round.mjs"

# fal-client releases that read FAL_QUEUE_RUN_HOST (before it, the queue host is "queue." + FAL_RUN_HOST).
QUEUE_HOST_SETTING_SINCE = (0, 11, 0)
# fal-client releases with cancel and the by-id status/result/cancel functions.
CANCEL_SINCE = (0, 5, 3)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class PythonClient:
    """One pinned ``fal-client`` release and why the matrix holds it."""

    version: str
    why: str

    @property
    def folder(self) -> Path:
        return PYTHON_CLIENTS_DIR / self.version

    @property
    def reads_queue_host_setting(self) -> bool:
        return version_tuple(self.version) >= QUEUE_HOST_SETTING_SINCE

    @property
    def can_cancel(self) -> bool:
        return version_tuple(self.version) >= CANCEL_SINCE

    def installed_folder(self) -> Path:
        if not (self.folder / "fal_client" / "__init__.py").is_file():
            raise AssertionError(f"fal-client {self.version} is not installed in {self.folder}: run `make py-clients`")
        return self.folder


def pinned_python_clients() -> list[PythonClient]:
    clients = []
    for line in PYTHON_VERSIONS_FILE.read_text().splitlines():
        version, _, why = line.partition("#")
        if version.strip():
            clients.append(PythonClient(version.strip(), why.strip()))
    return clients


@dataclass(frozen=True)
class JsClient:
    """One pinned JS client package: its name in package.json, the package it is, and its version."""

    dependency: str  # what the round script requires: "fal-ai-client-1.8.5", "@fal-ai/serverless-client"
    package: str  # "@fal-ai/client", "@fal-ai/serverless-client"
    version: str


_ALIAS = re.compile(r"^npm:(?P<package>@?[^@]+)@(?P<version>\d+\.\d+\.\d+)$")


def pinned_js_clients() -> list[JsClient]:
    """The older @fal-ai/client pins (npm aliases) and the serverless client, newest client excluded."""
    dependencies: dict[str, str] = json.loads(JS_PACKAGE_JSON.read_text())["dependencies"]
    clients = []
    for name, spec in sorted(dependencies.items()):
        alias = _ALIAS.match(spec)
        if alias and alias["package"] == "@fal-ai/client":
            clients.append(JsClient(name, alias["package"], alias["version"]))
        elif name == "@fal-ai/serverless-client":
            clients.append(JsClient(name, name, spec))
    return sorted(clients, key=lambda client: (client.package, version_tuple(client.version)))
