"""Run a client process where ``queue.localhost`` resolves to this machine, as README tells users to arrange.

``fal-client`` before 0.11 has no ``FAL_QUEUE_RUN_HOST``: it sends every queue call to ``queue.`` +
``FAL_RUN_HOST``. With ``FAL_RUN_HOST=localhost:PORT`` that is ``queue.localhost``, which resolves to
loopback wherever the resolver implements RFC 6761's localhost names (systemd-resolved, nss-myhostname:
most desktop Linux and CI images). Plain glibc that reads only ``/etc/hosts`` and DNS (Debian without
systemd-resolved, many containers, this project's machines) does not, and needs the one hosts line
README gives (``HOSTS_LINE``).

The tests use the machine's own resolution when it has it. Otherwise they add that line the way a user
does, to the hosts file glibc reads, but only for the client's process: in a private mount namespace
(``unshare``; a user namespace too when not root) a copy of ``/etc/hosts`` with the line is bind-mounted
over ``/etc/hosts``, so the client resolves through the real resolver and nothing else sees the change.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

QUEUE_LOCALHOST = "queue.localhost"
HOSTS_LINE = f"127.0.0.1 {QUEUE_LOCALHOST}"
# Bind-mount $0 (the hosts file) over /etc/hosts, then exec the command ("$@").
_WITH_HOSTS_FILE = 'mount --bind "$0" /etc/hosts && exec "$@"'
_PROBE = f"import socket; socket.getaddrinfo({QUEUE_LOCALHOST!r}, 443)"


def resolves_to_loopback(name: str) -> bool:
    """Whether this process resolves ``name`` to loopback addresses only."""
    try:
        infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def hosts_file_with_queue_localhost(directory: Path) -> Path:
    """This machine's hosts file plus README's line for ``queue.localhost``."""
    hosts = directory / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + f"\n{HOSTS_LINE}\n")
    return hosts


def _namespace_prefixes() -> list[list[str]]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    prefixes = [[unshare, "--user", "--map-root-user", "--mount"]]
    if os.geteuid() == 0:
        prefixes.insert(0, [unshare, "--mount"])
    return prefixes


@functools.cache
def _working_prefix(hosts: Path) -> tuple[str, ...] | None:
    for prefix in _namespace_prefixes():
        probe = [*prefix, "sh", "-c", _WITH_HOSTS_FILE, str(hosts), sys.executable, "-c", _PROBE]
        if subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0:
            return tuple(prefix)
    return None


def with_queue_localhost(command: list[str], scratch: Path) -> list[str] | None:
    """``command`` as it must be run for ``queue.localhost`` to resolve to loopback in it, or None when
    this machine neither resolves the name nor lets the tests add a hosts line for one process."""
    if resolves_to_loopback(QUEUE_LOCALHOST):
        return command
    hosts = hosts_file_with_queue_localhost(scratch)
    prefix = _working_prefix(hosts)
    if prefix is None:
        return None
    return [*prefix, "sh", "-c", _WITH_HOSTS_FILE, str(hosts), *command]
