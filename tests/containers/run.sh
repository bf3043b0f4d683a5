#!/usr/bin/env bash
# `make test-containers` (issue 21): from a fresh clone, with no manual step, the images and docker/compose.yaml
# as a user runs them: Docker from Debian if missing, a private dockerd if none answers (data root and socket
# under .run/containers/, stopped by PID at the end), base images from Debian packages when no registry answers
# (the official ones when it does), both targets built, compose up with Redis + API + nginx + a simulated
# worker, the checks of tests/containers/check.py through the published port, `down && up`, then
# `import torch` in the GPU worker image. Prints each step's time and the image sizes.
# Env: BITDANCE_TEST_PORT (published port, default 18080), SKIP_GPU_IMAGE=1 (skip the 5.7 GB worker image),
# KEEP_IMAGES=1 (keep the images in .run/containers/docker for the next run), EXTRA_CA_CERTS (PEM text).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
STATE="$ROOT/.run/containers"
PORT=${BITDANCE_TEST_PORT:-18080}
PROJECT=bitdance-test-containers
mkdir -p "$STATE"
T0=$(date +%s)
STEP_T=$T0
STEP_NAME=""
TIMES=()
step() {  # step NAME: closes the previous step (its time) and opens the next
  local now; now=$(date +%s)
  if [ -n "$STEP_NAME" ]; then TIMES+=("$(printf '%-44s %5ss' "$STEP_NAME" $((now - STEP_T)))"); fi
  STEP_NAME="$1"; STEP_T=$now
  [ -n "$1" ] && echo "=== $1"
  return 0
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "install docker.io, docker-compose, debootstrap"
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing from Debian: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "docker daemon"
DOCKERD_PID=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "${COMPOSE_UP:-}" ]; then
    if [ $rc != 0 ]; then compose ps; compose logs --tail 40; fi
    compose down -v --remove-orphans >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    if [ -z "${KEEP_IMAGES:-}" ]; then docker system prune -af --volumes >/dev/null 2>&1; fi
    echo "stopping dockerd (pid $DOCKERD_PID)"
    as_root kill "$DOCKERD_PID"
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && as_root kill -9 "$DOCKERD_PID"
    # dockerd leaves its data root's bind mount and the default netns mounted: unmount them, so .run is removable.
    grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | while read -r m; do as_root umount "$m"; done
  fi
}
trap cleanup EXIT
if [ -z "${DOCKER_HOST:-}" ] && docker info >/dev/null 2>&1; then
  echo "using the running daemon"
else
  export DOCKER_HOST="unix://$STATE/docker.sock"
  if ! docker info >/dev/null 2>&1; then
    mkdir -p "$STATE/docker" "$STATE/exec"
    # Its own data root, exec root, socket and pid file: nothing shared with a system daemon. No default
    # bridge (compose makes its own networks; builds use the host network), so it clashes with no docker0.
    rm -f "$STATE/dockerd.pid"
    as_root dockerd --data-root "$STATE/docker" --exec-root "$STATE/exec" -H "$DOCKER_HOST" \
      --pidfile "$STATE/dockerd.pid" --bridge none --storage-driver overlay2 >"$STATE/dockerd.log" 2>&1 &
    for _ in $(seq 60); do [ -s "$STATE/dockerd.pid" ] && break; sleep 1; done
    DOCKERD_PID=$(cat "$STATE/dockerd.pid")  # dockerd's own PID (not a wrapper's): what cleanup stops
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log"; exit 1; }
    echo "dockerd pid $DOCKERD_PID, data root $STATE/docker"
  fi
fi
docker version --format 'server {{.Server.Version}}, storage {{json .Server.Os}}' || true

BUILD=(docker build --network host -f)
# A network that re-signs TLS: EXTRA_CA_CERTS, else the CAs this host added itself (update-ca-certificates).
if [ -z "${EXTRA_CA_CERTS:-}" ] && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  EXTRA_CA_CERTS=$(cat /usr/local/share/ca-certificates/*.crt)
  echo "EXTRA_CA_CERTS: this host's own CAs ($(ls /usr/local/share/ca-certificates/*.crt | tr '\n' ' '))"
fi
CA_ARG=(--build-arg "EXTRA_CA_CERTS=${EXTRA_CA_CERTS:-}")
step "base images"
if timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1 \
  && timeout 60 docker pull -q redis:7-alpine >/dev/null 2>&1 \
  && timeout 60 docker pull -q nginx:1.27-alpine >/dev/null 2>&1; then
  echo "registry reachable: official python, redis and nginx images"
  PYTHON_IMAGE=python:3.11-slim-bookworm
  export BITDANCE_REDIS_IMAGE=redis:7-alpine BITDANCE_NGINX_IMAGE=nginx:1.27-alpine
else
  echo "no registry: base images from Debian packages (debootstrap --variant=minbase bookworm)"
  if ! docker image inspect bitdance-debian:bookworm >/dev/null 2>&1; then
    rootfs="$STATE/rootfs"
    as_root rm -rf "$rootfs"
    as_root debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1 \
      || { tail -20 "$STATE/debootstrap.log"; exit 1; }
    as_root rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
    as_root tar -C "$rootfs" -c . | docker import - bitdance-debian:bookworm >/dev/null
    as_root rm -rf "$rootfs"
  fi
  for target in python redis nginx; do
    tag=$([ $target = python ] && echo bitdance-python:3.11-bookworm || echo bitdance-$target:bookworm)
    "${BUILD[@]}" docker/offline/Dockerfile --build-arg DEBIAN_IMAGE=bitdance-debian:bookworm "${CA_ARG[@]}" \
      --target $target -t "$tag" -q . >/dev/null
  done
  PYTHON_IMAGE=bitdance-python:3.11-bookworm
  export BITDANCE_REDIS_IMAGE=bitdance-redis:bookworm BITDANCE_NGINX_IMAGE=bitdance-nginx:bookworm
fi

step "build the api image"
"${BUILD[@]}" docker/Dockerfile --build-arg PYTHON_IMAGE=$PYTHON_IMAGE "${CA_ARG[@]}" --target api \
  -t bitdance-server-api:latest . >"$STATE/build-api.log" 2>&1 || { tail -30 "$STATE/build-api.log"; exit 1; }
# Fix 1: /app holds the project only, never the build context.
app=$(docker run --rm --entrypoint ls bitdance-server-api:latest -A /app | tr '\n' ' ')
echo "/app: $app"
for bad in .git tests deploy docker .venv .run; do
  case " $app " in *" $bad "*) echo "FAIL: $bad in the api image's /app"; exit 1;; esac
done

step "compose up (redis, api, proxy, worker-simulated)"
env_dir="$STATE/compose"
rm -rf "$env_dir" && mkdir -p "$env_dir"
KEY=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
cp docker/compose.yaml "$env_dir/compose.yaml"
sed -i "s|\.\./deploy/|$ROOT/deploy/|; s|context: \.\.|context: $ROOT|" "$env_dir/compose.yaml"
cat >"$env_dir/.env" <<ENV
BITDANCE_API_KEYS=$KEY
WEIGHTS_DIR=$STATE/no-weights
MODEL=simulated
COMPOSE_PROFILES=simulated
BITDANCE_PUBLISH_PORT=$PORT
BITDANCE_SIMULATED_SPEED=20
ENV
compose() { docker-compose -p "$PROJECT" -f "$env_dir/compose.yaml" --env-file "$env_dir/.env" "$@"; }
COMPOSE_UP=1
compose up -d --no-build
check() { python3 tests/containers/check.py --url "http://127.0.0.1:$PORT" --key "$KEY" --project "$PROJECT" "$@"; }
check --wait-healthy

step "checks: ready, submit/stream/result/image, 401"
check --round-trip --state "$env_dir/state.json"

step "down && up keeps a result and a queued request"
compose stop worker-simulated
check --submit-queued --state "$env_dir/state.json"
compose down
COMPOSE_UP=""
compose up -d --no-build --scale worker-simulated=0
COMPOSE_UP=1
check --wait-healthy --services redis,api,proxy
check --still-queued --state "$env_dir/state.json"
compose up -d --no-build
check --wait-healthy
check --after-restart --state "$env_dir/state.json"
compose down -v
COMPOSE_UP=""

if [ -z "${SKIP_GPU_IMAGE:-}" ]; then
  step "build the GPU worker image (CUDA torch lock)"
  df -h "$STATE" | tail -1
  "${BUILD[@]}" docker/Dockerfile --build-arg PYTHON_IMAGE=$PYTHON_IMAGE "${CA_ARG[@]}" --target worker \
    -t bitdance-server-worker:latest . >"$STATE/build-worker.log" 2>&1 || { tail -30 "$STATE/build-worker.log"; exit 1; }
  step "import torch in the worker image"
  docker run --rm bitdance-server-worker:latest python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
fi

step ""
echo "=== image sizes"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E 'bitdance|redis|nginx|python' | sort
echo "=== step times"
printf '%s\n' "${TIMES[@]}"
echo "total $(( $(date +%s) - T0 ))s"
echo "test-containers: OK"
