#!/usr/bin/env bash
# Builds the real image from the Dockerfile and runs it, then the compose deployment, with podman:
#
#  1. base images: Debian bookworm from debootstrap (cached), a python:3.11-slim-bookworm and a
#     PostgreSQL stand-in made from Debian's packages (registries of images may be unreachable)
#  2. build: the Dockerfile as it is; only its build arguments point at the local base image and
#     at a local index of the torch CPU wheel (TORCH_WHEELS, default pip's find-links folder)
#  3. one container at a time, against the PostgreSQL stand-in: migrate, import MovieLens 100k
#     (MOVIELENS_DIR, else ../shared/data/ml-100k, else a synthetic set), train, serve with the
#     image's own CMD; /readyz and a recommendation from outside and inside the container; the
#     process runs as the non-root user; the image's HEALTHCHECK reports healthy
#  4. docker-compose.yml with podman-compose: every service up, the seed profile, a retrain job
#     that the worker takes, the API answering with the new version, `down` keeping the volume
#
# Prints each step's time, the image size and the answers it checked; exits non-zero on the
# first failure. Everything it starts is named saerec-check-* and removed at the end; the
# images are kept, so a second run reuses the base images and the build's cached layers.
#
#   scripts/container-check.sh                     # needs podman (root), debootstrap, runc
#   CHECK_NO_CACHE=1 scripts/container-check.sh    # rebuild the saerec image from scratch
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NAME=saerec-check
WORK=$ROOT/var/container-check
IMAGE=localhost/$NAME/saerec:latest
DEBIAN_IMAGE=localhost/$NAME/debian:bookworm-minbase
PYTHON_IMAGE=localhost/$NAME/python:3.11-slim-bookworm
POSTGRES_IMAGE=localhost/$NAME/postgres:15-bookworm
NETWORK=$NAME
PROJECT=$NAME-compose
ADMIN_TOKEN=$NAME-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
POSTGRES_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
HOST_PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"

# Waits are generous (minutes) and end as soon as the answer comes: on a busy 2-core host the
# compose API once took over 120 s to answer /readyz.

# ---------------------------------------------------------------- reporting
declare -a SUMMARY=()
STEP_NAME=""
STEP_START=0
now() { date +%s.%N; }
step() {
  finish_step
  STEP_NAME=$1
  STEP_START=$(now)
  echo "==> $STEP_NAME" >&2
}
finish_step() {
  if [ -n "$STEP_NAME" ]; then
    local took
    took=$(awk -v a="$STEP_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    SUMMARY+=("$(printf '%-44s %7s s' "$STEP_NAME" "$took")")
    echo "    $STEP_NAME: $took s" >&2
  fi
  STEP_NAME=""
}
note() { SUMMARY+=("  $*"); echo "    $*" >&2; }
fail() { echo "container check FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- the engine
command -v podman >/dev/null || fail "podman is not installed (apt-get install podman runc debootstrap)"
if [ -z "${CONTAINERS_CONF:-}" ]; then
  # this sandbox refuses the default rlimits and crun's cgroup handling (../shared/CONTAINERS.md)
  export CONTAINERS_CONF=$WORK/containers.conf
  cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
fi
COMPOSE=${PODMAN_COMPOSE:-}
if [ -z "$COMPOSE" ]; then
  if [ -x .venv/bin/podman-compose ]; then COMPOSE=$ROOT/.venv/bin/podman-compose
  else COMPOSE=$(command -v podman-compose) || fail "podman-compose is not installed (pip)"; fi
fi

cleanup() {
  local rc=$?
  stop_health_driver
  podman rm -f -t 2 "$NAME-run" "$NAME-api" "$NAME-pg" >/dev/null 2>&1 || true
  if [ -f "$WORK/compose.env" ]; then
    compose down -v -t 2 >/dev/null 2>&1 || true
  fi
  podman volume rm -f "$NAME-pgdata" >/dev/null 2>&1 || true
  podman network rm -f "$NETWORK" >/dev/null 2>&1 || true
  rm -f "$WORK/compose.env"
  exit "$rc"
}
trap cleanup EXIT

free_port() {
  "$HOST_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# GET a URL from this host; prints the body, fails on a non-2xx answer
http_get() {
  "$HOST_PYTHON" - "$@" <<'PY'
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers=dict(h.split(": ", 1) for h in sys.argv[2:]))
with urllib.request.urlopen(request, timeout=10) as answer:
    print(answer.read().decode())
PY
}

# wait_for URL SECONDS CONTAINER: polls until the URL answers 2xx; shows the container's log
# when it does not
wait_for() {
  local deadline=$((SECONDS + $2))
  until http_get "$1" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      podman logs --tail 40 "$3" >&2 || true
      fail "$1 did not answer within $2 s"
    fi
    sleep 1
  done
}

# json_field JSON EXPRESSION: evaluates a Python expression over the parsed JSON `j`
json_field() {
  "$HOST_PYTHON" -c 'import json, sys; j = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

# podman runs no HEALTHCHECK by itself without systemd (it schedules them as systemd timers):
# this loop stands in for those timers, running each container's check every 3 s.
HEALTH_DRIVER_PID=""
start_health_driver() {
  (
    while true; do
      for container in $(podman ps --filter "name=$NAME" --format '{{.Names}}'); do
        podman healthcheck run "$container" >/dev/null 2>&1 || true
      done
      sleep 3
    done
  ) &
  HEALTH_DRIVER_PID=$!
}
stop_health_driver() {
  if [ -n "$HEALTH_DRIVER_PID" ]; then
    kill "$HEALTH_DRIVER_PID" 2>/dev/null || true
    wait "$HEALTH_DRIVER_PID" 2>/dev/null || true
    HEALTH_DRIVER_PID=""
  fi
}
health_status() {
  podman inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null \
    || podman inspect --format '{{.State.Healthcheck.Status}}' "$1"
}
# wait_healthy CONTAINER SECONDS
wait_healthy() {
  local deadline=$((SECONDS + $2))
  until [ "$(health_status "$1")" = healthy ]; do
    [ $SECONDS -lt $deadline ] || fail "$1 is not healthy after $2 s: $(health_status "$1")"
    [ "$(podman inspect --format '{{.State.Running}}' "$1")" = true ] \
      || { podman logs --tail 30 "$1" >&2; fail "$1 stopped"; }
    sleep 1
  done
}

# ---------------------------------------------------------------- 1. base images
step "base image: Debian bookworm (debootstrap)"
if podman image exists "$DEBIAN_IMAGE"; then
  note "cached: $DEBIAN_IMAGE"
else
  command -v debootstrap >/dev/null || fail "debootstrap is not installed"
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 \
    || { tail "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
  tar -C "$rootfs" -c . | podman import - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

# stand_in VARIABLE DIR: tags the recipe in DIR by its content (an edited recipe builds a new
# image), builds it unless that image exists, and sets VARIABLE to the tag
stand_in() {
  local tag
  tag="${!1}-$(cat "$2"/* | sha256sum | cut -c1-12)"
  if podman image exists "$tag"; then
    note "cached: $tag"
  else
    podman build -q --network host --pull=never -t "$tag" "$2" >/dev/null
  fi
  printf -v "$1" '%s' "$tag"
}

step "base image: python:3.11-slim-bookworm stand-in"
rm -rf "$WORK/python-image" && mkdir -p "$WORK/python-image"
cat > "$WORK/python-image/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    python3-pip python-is-python3 ca-certificates && rm -rf /var/lib/apt/lists/*
EOF
stand_in PYTHON_IMAGE "$WORK/python-image"

step "base image: PostgreSQL stand-in (Debian's postgresql)"
rm -rf "$WORK/postgres-image" && mkdir -p "$WORK/postgres-image"
# the official image's interface: POSTGRES_USER/PASSWORD/DB, data in /var/lib/postgresql/data
cat > "$WORK/postgres-image/entrypoint.sh" <<'EOF'
#!/bin/sh
set -eu
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
as_postgres() { setpriv --reuid postgres --regid postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "$POSTGRES_PASSWORD" > /tmp/pwfile && chown postgres /tmp/pwfile
  as_postgres initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  as_postgres psql -q -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec setpriv --reuid postgres --regid postgres --init-groups postgres -D "$PGDATA" \
  -c listen_addresses='*'
EOF
cat > "$WORK/postgres-image/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:\$PATH PGDATA=/var/lib/postgresql/data
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
RUN chmod 755 /usr/local/bin/entrypoint.sh
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
EOF
stand_in POSTGRES_IMAGE "$WORK/postgres-image"

# ---------------------------------------------------------------- 2. build
step "build the Dockerfile"
WHEELS=${TORCH_WHEELS:-$("$HOST_PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
[ -n "$WHEELS" ] && ls "$WHEELS"/torch-*.whl >/dev/null 2>&1 \
  || fail "no torch wheel in TORCH_WHEELS=${WHEELS:-(unset)}: set it to a folder holding the CPU wheel"
# a PEP 503 index of that folder, which is what the Dockerfile's TORCH_INDEX_URL expects
rm -rf "$WORK/torch-index" && mkdir -p "$WORK/torch-index/torch"
{
  echo '<!DOCTYPE html><html><body>'
  for wheel in "$WHEELS"/torch-*.whl; do
    echo "<a href=\"file:///wheels/$(basename "$wheel")\">$(basename "$wheel")</a>"
  done
  echo '</body></html>'
} > "$WORK/torch-index/torch/index.html"
build_args=(--network host --pull=never --format docker -t "$IMAGE"
  --build-arg "BASE_IMAGE=$PYTHON_IMAGE"
  --build-arg "TORCH_INDEX_URL=file:///torch-index"
  -v "$WHEELS:/wheels:ro" -v "$WORK/torch-index:/torch-index:ro")
if [ -f "$CA_BUNDLE" ]; then
  build_args+=(--build-arg "PIP_CERT=$CA_BUNDLE" -v "$CA_BUNDLE:$CA_BUNDLE:ro")
fi
[ -n "${CHECK_NO_CACHE:-}" ] && build_args+=(--no-cache)
podman build "${build_args[@]}" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "podman build"; }
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
note "image $IMAGE: $((size / 1000000)) MB"
IMAGE_SIZE_MB=$((size / 1000000))

# ---------------------------------------------------------------- 3. the image, one role at a time
step "PostgreSQL stand-in up"
podman network exists "$NETWORK" || podman network create "$NETWORK" >/dev/null
podman run -d --name "$NAME-pg" --network "$NETWORK" -v "$NAME-pgdata:/var/lib/postgresql/data" \
  -e POSTGRES_USER=saerec -e POSTGRES_PASSWORD="$POSTGRES_PASSWORD" -e POSTGRES_DB=saerec \
  "$POSTGRES_IMAGE" >/dev/null
deadline=$((SECONDS + 60))
until podman exec "$NAME-pg" pg_isready -q -h 127.0.0.1 -U saerec -d saerec 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || { podman logs "$NAME-pg" >&2; fail "PostgreSQL did not start"; }
  sleep 1
done

DATA=${MOVIELENS_DIR:-}
if [ -z "$DATA" ] && [ -f ../shared/data/ml-100k/u.data ]; then DATA=$(cd ../shared/data/ml-100k && pwd); fi
if [ -z "$DATA" ]; then
  # no MovieLens here: 300 users x 200 movies in ml-100k's layout (u.item: id, title,
  # release date, video date, URL, 19 genre flags), fixed seed
  DATA=$WORK/synthetic-ml-100k
  mkdir -p "$DATA"
  "$HOST_PYTHON" - "$DATA" <<'PY'
import random, sys
from pathlib import Path
folder, rng = Path(sys.argv[1]), random.Random(7)
genres = [rng.randrange(19) for _ in range(200)]
with open(folder / "u.item", "w", encoding="latin-1") as items:
    for movie in range(1, 201):
        flags = ["1" if g == genres[movie - 1] else "0" for g in range(19)]
        items.write(f"{movie}|Movie {movie} (1990)|01-Jan-1990|||" + "|".join(flags) + "\n")
with open(folder / "u.data", "w") as ratings:
    for user in range(1, 301):
        taste = rng.randrange(19)
        for movie in rng.sample(range(1, 201), 30):
            stars = 5 if genres[movie - 1] == taste else rng.randint(1, 4)
            ratings.write(f"{user}\t{movie}\t{stars}\t{880000000 + user * 100 + movie}\n")
PY
  note "data: synthetic set (no MovieLens 100k found)"
else
  note "data: $DATA"
fi

DATABASE_URL="postgresql+psycopg://saerec:$POSTGRES_PASSWORD@$NAME-pg:5432/saerec"
saerec_run() {
  podman run --rm --name "$NAME-run" --no-healthcheck --network "$NETWORK" -e DATABASE_URL="$DATABASE_URL" -e AUTO_MIGRATE=false \
    -e TRAIN_PRESET=fast -e TRAIN_BUDGET_SECONDS=0 "$@"
}

step "saerec migrate"
saerec_run "$IMAGE" saerec migrate

step "saerec import-movielens"
saerec_run -v "$DATA:/data:ro" "$IMAGE" saerec import-movielens /data --no-progress

step "saerec train (preset fast)"
saerec_run "$IMAGE" saerec train --no-progress >"$WORK/train.log" 2>&1 \
  || { tail -30 "$WORK/train.log" >&2; fail "saerec train"; }

step "saerec serve: /readyz from outside"
PORT=$(free_port)
start_health_driver
podman run -d --name "$NAME-api" --network "$NETWORK" -p "127.0.0.1:$PORT:8000" \
  -e DATABASE_URL="$DATABASE_URL" -e AUTO_MIGRATE=false -e ADMIN_TOKEN="$ADMIN_TOKEN" \
  "$IMAGE" >/dev/null 2>"$WORK/serve.log"  # podman: no systemd for healthcheck timers
served_at=$SECONDS
wait_for "http://127.0.0.1:$PORT/readyz" 300 "$NAME-api"
note "readyz: $(http_get "http://127.0.0.1:$PORT/readyz")"

step "HEALTHCHECK reports healthy"
wait_healthy "$NAME-api" 300
note "health: $(health_status "$NAME-api") $((SECONDS - served_at)) s after start"
TIME_TO_HEALTHY=$((SECONDS - served_at))

step "recommendation from outside and inside"
outside=$(http_get "http://127.0.0.1:$PORT/users/1/recommendations?n=3")
inside=$(podman exec "$NAME-api" python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/users/1/recommendations?n=3', timeout=5).read().decode())")
for answer in "$outside" "$inside"; do
  [ "$(json_field "$answer" 'j["strategy"]')" = autoencoder ] || fail "not the model's answer: $answer"
  [ "$(json_field "$answer" 'len(j["items"])')" = 3 ] || fail "not 3 items: $answer"
done
[ "$(json_field "$outside" 'j["model_version"]')" = "$(json_field "$inside" 'j["model_version"]')" ] \
  || fail "inside and outside name different versions"
note "user 1 (outside = inside): $(json_field "$outside" '"; ".join("%s %s (%.2f)" % (i["movie_id"], i["title"], i["score"]) for i in j["items"]) + " by " + j["model_version"]')"
podman exec "$NAME-api" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=5)" \
  || fail "/readyz from inside"

step "runs as the non-root user"
image_user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
process_uid=$(podman exec "$NAME-api" sh -c 'awk "/^Uid:/ { print \$2 }" /proc/1/status')
whoami_inside=$(podman exec "$NAME-api" id -un)
[ "$process_uid" = 10001 ] && [ "$whoami_inside" = saerec ] \
  || fail "the server runs as uid $process_uid ($whoami_inside), not saerec (10001)"
podman exec "$NAME-api" sh -c 'touch /opt/venv/x' 2>/dev/null && fail "the venv is writable by the server"
note "USER $image_user; PID 1 uid $process_uid ($whoami_inside); the venv is read-only to it"
stop_health_driver
podman rm -f -t 5 "$NAME-api" "$NAME-pg" >/dev/null
podman volume rm -f "$NAME-pgdata" >/dev/null

# ---------------------------------------------------------------- 4. compose
API_PORT=$(free_port)
cat > "$WORK/compose.env" <<EOF
ADMIN_TOKEN=$ADMIN_TOKEN
POSTGRES_PASSWORD=$POSTGRES_PASSWORD
SAEREC_IMAGE=$IMAGE
POSTGRES_IMAGE=$POSTGRES_IMAGE
API_PORT=$API_PORT
MOVIELENS_DIR=$DATA
EOF
# the quick preset for the check's own training runs; the compose file itself is used as it is
cat > "$WORK/compose.check.yml" <<'EOF'
services:
  worker:
    environment:
      TRAIN_PRESET: fast
      TRAIN_BUDGET_SECONDS: "0"
  seed:
    environment:
      TRAIN_PRESET: fast
      TRAIN_BUDGET_SECONDS: "0"
EOF
compose() {
  "$COMPOSE" --env-file "$WORK/compose.env" -p "$PROJECT" \
    -f "$ROOT/docker-compose.yml" -f "$WORK/compose.check.yml" "$@"
}
container_of() { echo "${PROJECT}_$1_1"; }
compose_state() { podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$(container_of "$1")"; }

# The services come up in the order of their depends_on conditions, one `up --no-deps` each:
# podman-compose waits on service_healthy only with podman >= 4.6, and podman 4.3 fails to
# start a container whose --requires chain holds an exited one (migrate) ("generating
# dependency graph ... not found in input list"). So this script waits as compose would.
step "compose up: db healthy"
start_health_driver
compose up -d db >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log" >&2; fail "compose up db"; }
wait_healthy "$(container_of db)" 90

step "compose up: migrate completes, then api and worker"
compose up -d --no-deps migrate >>"$WORK/compose.log" 2>&1 \
  || { tail -30 "$WORK/compose.log" >&2; fail "compose up migrate"; }
deadline=$((SECONDS + 120))
until [ "$(compose_state migrate)" = "exited 0" ]; do
  [ $SECONDS -lt $deadline ] || { podman logs "$(container_of migrate)" >&2; fail "migrate: $(compose_state migrate)"; }
  sleep 1
done
compose up -d --no-deps api worker >>"$WORK/compose.log" 2>&1 \
  || { tail -30 "$WORK/compose.log" >&2; fail "compose up api worker"; }
wait_for "http://127.0.0.1:$API_PORT/readyz" 300 "$(container_of api)"
wait_healthy "$(container_of api)" 300
for service in db api worker; do
  [ "$(compose_state $service)" = "running 0" ] || fail "$service is $(compose_state $service)"
done
note "services: db running (healthy), migrate exited 0, api running (healthy), worker running"

step "compose seed profile: import and train"
compose --profile seed run --rm --no-deps seed >>"$WORK/compose.log" 2>&1 \
  || { tail -30 "$WORK/compose.log" >&2; fail "seed"; }
first=$(http_get "http://127.0.0.1:$API_PORT/users/1/recommendations?n=3")
first_version=$(json_field "$first" 'j["model_version"]')
[ "$(json_field "$first" 'j["strategy"]')" = autoencoder ] || fail "the seeded model does not answer: $first"
note "api serves $first_version"

step "retrain job taken by the worker"
auth="Authorization: Bearer $ADMIN_TOKEN"
job=$("$HOST_PYTHON" - "http://127.0.0.1:$API_PORT/admin/retrain" "$auth" <<'PY'
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], data=b"{}", method="POST", headers={
    "Authorization": sys.argv[2].split(": ", 1)[1], "Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=10).read().decode())
PY
)
job_id=$(json_field "$job" 'j["job_id"]')
deadline=$((SECONDS + 600))
while true; do
  state=$(http_get "http://127.0.0.1:$API_PORT/admin/jobs/$job_id" "$auth")
  status=$(json_field "$state" 'j["status"]')
  case $status in
    succeeded) break ;;
    failed) fail "retrain failed: $state" ;;
  esac
  [ $SECONDS -lt $deadline ] || fail "retrain still $status after 600 s"
  sleep 2
done
new_version=$(json_field "$state" 'j["model_version"]')
podman logs "$(container_of worker)" >"$WORK/worker.log" 2>&1
grep -q "\"job_started\"" "$WORK/worker.log" && grep -q "$job_id" "$WORK/worker.log" \
  || fail "the worker's log does not say it started job $job_id"
note "job $job_id succeeded in the worker: $new_version"

step "api serves the new version"
after=$(http_get "http://127.0.0.1:$API_PORT/users/1/recommendations?n=3")
served=$(json_field "$after" 'j["model_version"]')
[ "$served" = "$new_version" ] && [ "$served" != "$first_version" ] \
  || fail "api serves $served; the job made $new_version (before: $first_version)"
note "api serves $served (was $first_version)"

step "compose down keeps the volume"
compose down -t 5 >>"$WORK/compose.log" 2>&1 || { tail -30 "$WORK/compose.log" >&2; fail "compose down"; }
[ -z "$(podman ps -a --filter "name=$PROJECT" --format '{{.Names}}')" ] || fail "containers left after down"
podman volume exists "${PROJECT}_pgdata" || fail "down removed the pgdata volume"
note "volume ${PROJECT}_pgdata is still there after down"
compose down -v >>"$WORK/compose.log" 2>&1
rm -f "$WORK/compose.env"
stop_health_driver
finish_step

echo
echo "container check passed"
printf '%s\n' "${SUMMARY[@]}"
echo "image size: ${IMAGE_SIZE_MB} MB; time to healthy: ${TIME_TO_HEALTHY} s"
