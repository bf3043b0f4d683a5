"""What a `docker build` of docker/Dockerfile sends and copies, offline (issue 21): no COPY takes the whole
context, .dockerignore keeps secrets and state out, no frontend from a registry, the build backend pinned
with hashes, and an extra CA bundle reaches apt and pip."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

from .conftest import DOCKER, ROOT

DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "offline" / "Dockerfile"]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", text)
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def copy_sources(text: str) -> list[str]:
    """Every source of every COPY/ADD from the context, with ARG defaults substituted (as a build without
    --build-arg sees them)."""
    defaults: dict[str, str] = {}
    sources = []
    for word, rest in instructions(text):
        if word == "ARG":
            name, _, value = rest.partition("=")
            defaults[name] = value.strip().strip('"')
        elif word in ("COPY", "ADD"):
            parts = rest.split()
            if any(p.startswith("--from") for p in parts):
                continue
            parts = [p for p in parts if not p.startswith("--")]
            for source in parts[:-1]:
                sources.append(re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), ""), source))
    return sources


def test_no_copy_takes_the_whole_build_context() -> None:
    """An empty FLASH_ATTN_WHEEL made `COPY pyproject.toml README.md ${FLASH_ATTN_WHEEL} ./` copy the
    context root (.git, tests, docker/.env with the keys) into /app."""
    for dockerfile in DOCKERFILES:
        for source in copy_sources(dockerfile.read_text()):
            normalized = str(PurePosixPath(source)) if source else ""
            assert normalized not in ("", ".", "/", "*", "./*"), f"{dockerfile.name}: COPY of the whole context"
            assert (ROOT / normalized).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go's filepath.Match plus `**`: `*` stays within a folder)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = pattern_regex(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            result = not negate
    return result


def dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    assert path.exists(), "no .dockerignore: every build sends the whole checkout (.git, .venv, docker/.env)"
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerignore_keeps_state_and_secrets_out_of_the_context() -> None:
    patterns = dockerignore()
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".run/redis/appendonly.aof",
        "docker/.env",
        "tests/deploy/test_compose.py",
        "deploy/k8s/base/nginx.conf",
        "weights/tiny-64x/config.json",
        "node_modules/x/index.js",
        "core/__pycache__/settings.cpython-311.pyc",
    ):
        assert ignored(patterns, path), f"{path} is sent to the daemon"
    # ... and what the Dockerfiles copy is still there.
    for source in {s for d in DOCKERFILES for s in copy_sources(d.read_text())}:
        target = ROOT / source
        files = [p for p in target.rglob("*") if p.is_file()] if target.is_dir() else [target]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative and not relative.endswith((".pyc", ".whl")):
                assert not ignored(patterns, relative), f"{relative} is copied but ignored"


def test_no_syntax_directive_that_fetches_a_frontend_from_a_registry() -> None:
    for dockerfile in DOCKERFILES:
        head = dockerfile.read_text().splitlines()
        assert not any(re.match(r"#\s*syntax\s*=", line, flags=re.I) for line in head), dockerfile.name


def test_the_build_backend_is_pinned_with_hashes_and_not_fetched_by_pip() -> None:
    """`pip install --no-deps .` fetched an unpinned, unhashed setuptools into an isolated build env."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    lock = (ROOT / "requirements" / "build.txt").read_text()
    for requirement in map(Requirement, requires):
        pinned = re.search(rf"^{requirement.name}==(\S+)\s*\\\s*\n\s*--hash=sha256:[0-9a-f]{{64}}", lock, flags=re.M)
        assert pinned, f"{requirement.name} is not pinned with a hash in requirements/build.txt"
        assert requirement.specifier.contains(pinned.group(1))
    text = (DOCKER / "Dockerfile").read_text()
    steps = [rest for word, rest in instructions(text) if word == "RUN" and "pip install" in rest]
    project = [s for s in steps if re.search(r"pip install .*\s\.(\s|$)", s)]
    assert len(project) == 2  # the api and worker targets
    for step in project:
        assert "--no-build-isolation" in step and "--no-deps" in step
    for target in ("api", "worker"):
        assert any("--require-hashes" in s and "/tmp/build.txt" in s and f"/tmp/{target}.txt" in s for s in steps)


def pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), flags=re.M))


def test_the_build_lock_agrees_with_the_image_locks() -> None:
    """Installed with api.txt or worker.txt in one pip run: a package pinned in both at two versions
    (worker.txt's setuptools for torch) makes the worker build fail with ResolutionImpossible."""
    build = pins(ROOT / "requirements" / "build.txt")
    for lock in ("api.txt", "worker.txt"):
        image = pins(ROOT / "requirements" / lock)
        for name, version in build.items():
            assert image.get(name, version) == version, f"{name}: {version} in build.txt, {image[name]} in {lock}"


def test_an_extra_ca_bundle_reaches_apt_and_pip() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    steps = instructions(text)
    base = steps[[w for w, _ in steps].index("FROM") :]
    arg = next(i for i, (w, r) in enumerate(base) if w == "ARG" and r.startswith("EXTRA_CA_CERTS"))
    first_install = next(i for i, (w, r) in enumerate(base) if w == "RUN" and ("apt-get" in r or "pip " in r))
    assert arg < first_install, "the CA must be in place before apt or pip runs"
    env = " ".join(r for w, r in base if w == "ENV")
    assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in env
    setup = next(r for w, r in base if w == "RUN" and "EXTRA_CA_CERTS" in r)
    assert "update-ca-certificates" in setup and "/usr/local/share/ca-certificates/" in setup
    assert 'Acquire::https::CAInfo "/etc/ssl/certs/ca-certificates.crt"' in setup
