#!/usr/bin/env bash
# `make deploy-test`: run deploy/docker-compose.yml for real, with podman.
#
#   bash deploy/podman/deploy-test.sh        (as root; no TTY needed)
#   bash deploy/podman/deploy-test.sh down   (remove a kept or interrupted run)
#
# 1. installs what it needs, idempotently: podman, runc, catatonit, debootstrap
#    (apt), podman-compose (pinned, pip, into $STATE/venv);
# 2. builds the images it lacks (cached in podman's store, tagged with a hash of
#    what they are built from): a Debian bookworm base by debootstrap (no image
#    registry is reachable), stand-ins for the third-party services from Debian's
#    packages (images/*/Containerfile), and the project's image from
#    deploy/Dockerfile (podman's layer cache makes an unchanged rebuild quick);
# 3. `podman-compose up` of docker-compose.yml + compose.test.yml (this test's
#    override: images, published ports, 2 worker replicas, no grafana), service
#    by service in depends_on order, each waiting for its dependencies'
#    conditions (service_healthy from the compose healthchecks, which this
#    script runs itself: podman runs them from systemd timers and there is no
#    systemd here; service_completed_successfully from the exit code);
# 4. checks: migrate exited 0; producer, both workers, reconciler and every
#    stand-in healthy; a seeded school gets one batch of every action over HTTP
#    and each completes; the SMTP sink got the invitations; Prometheus scrapes
#    every target and has the charted metrics;
# 5. `podman-compose down -v` (always, from a trap) and checks that no container,
#    pod, volume or network of the project is left.
#
# Exit 0 when everything passed; otherwise non-zero, naming the step that failed
# and printing the logs of the failing containers.
#
# Environment: DEPLOY_TEST_STATE (cache and run dir, default
# /var/tmp/batch-actions-deploytest), DEPLOY_TEST_PROJECT (compose project,
# default batch-actions-deploytest), DEPLOY_TEST_KEEP=1 (leave the stack up on
# success, for poking at it; `down` it yourself; =always: on failure too),
# DEPLOY_TEST_REBUILD=1 (rebuild every image).
set -Eeuo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy="$(cd "$here/.." && pwd)"
repo="$(cd "$deploy/.." && pwd)"
STATE="${DEPLOY_TEST_STATE:-/var/tmp/batch-actions-deploytest}"
PROJECT="${DEPLOY_TEST_PROJECT:-batch-actions-deploytest}"
PODMAN_COMPOSE_VERSION=1.6.0
WORKERS=2 # compose.test.yml: worker deploy.replicas
IMAGE_PREFIX=localhost/batch-actions-deploytest
APP_IMAGE=batch-actions:local # docker-compose.yml's image for the app services
STANDINS=(postgres rabbitmq redis mailpit prometheus)
NOFILE=16384 # containers.conf default_ulimits

export CONTAINERS_CONF="$here/containers.conf"
export PYTHONDONTWRITEBYTECODE=1
RUN="$STATE/run/$PROJECT" # logs of the last run
LABEL="label=io.podman.compose.project=$PROJECT"
T0=$SECONDS
CURRENT_STEP="start"
BG_JOBS=() # process groups started here (image builds, healthcheck ticker)
STACK_UP=0

log() { printf '[deploy-test %4ss] %s\n' "$((SECONDS - T0))" "$*"; }
step() {
    CURRENT_STEP="$*"
    log "==> $*"
}
die() {
    log "FAILED: $*" >&2
    exit 1
}

pc() {
    timeout 600 "$STATE/venv/bin/podman-compose" -p "$PROJECT" \
        -f "$deploy/docker-compose.yml" -f "$here/compose.test.yml" "$@"
}

# Run "$@" in the background in a process group of its own (job control), so
# that stop_jobs ends it with everything it started.
bg_job() {
    set -m
    "$@" &
    BG_JOBS+=("$!")
    set +m
}
stop_jobs() {
    local pgid
    for pgid in "${BG_JOBS[@]}"; do
        kill -TERM -- "-$pgid" 2>/dev/null || true
    done
    BG_JOBS=()
}

# ------------------------------------------------------------------ teardown

project_leftovers() {
    {
        podman ps -a --filter "$LABEL" --format 'container {{.Names}} ({{.Status}})'
        podman pod ps --filter "$LABEL" --format 'pod {{.Name}} ({{.Status}})'
        podman pod ps --filter "name=pod_$PROJECT" --format 'pod {{.Name}} ({{.Status}})'
        podman volume ls --filter "$LABEL" --format 'volume {{.Name}}'
        podman network ls --filter "$LABEL" --format 'network {{.Name}}'
    } 2>/dev/null | sort -u
}

dump_failing() {
    local name status exit_code health any=0
    echo "---------------------------------------------------------------- containers"
    podman ps -a --filter "$LABEL" --format '{{.Names}}\t{{.Status}}' 2>/dev/null || true
    for name in $(podman ps -a --filter "$LABEL" --format '{{.Names}}' 2>/dev/null); do
        read -r status exit_code health < <(podman inspect -f \
            '{{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' \
            "$name" 2>/dev/null) || continue
        if [[ "$status" == running && "$health" != unhealthy && "$health" != starting ]] ||
            [[ "$status" == exited && "$exit_code" == 0 ]]; then
            continue
        fi
        any=1
        echo "--------------------------- $name: $status, exit $exit_code, health ${health:-none}"
        podman logs --tail 80 "$name" 2>&1 || true
        if [[ -n "$health" ]]; then
            echo "--- last healthcheck results of $name (exit code, output):"
            podman inspect -f '{{range .State.Health.Log}}{{.ExitCode}} {{.Output}}{{println}}{{end}}' \
                "$name" 2>/dev/null | tail -n 5 || true
        fi
    done
    if ((!any)); then
        # Every container looks fine: the failure is in what they did.
        for name in $(podman ps -a --filter "$LABEL" --format '{{.Names}}' 2>/dev/null); do
            case "$name" in *producer* | *worker* | *reconciler* | *migrate*) ;; *) continue ;; esac
            echo "--------------------------- $name (last 40 lines)"
            podman logs --tail 40 "$name" 2>&1 || true
        done
    fi
    echo "---------------------------------------------------------------------------"
}

teardown() {
    local left
    stop_jobs
    ((STACK_UP)) || [[ -n "$(project_leftovers)" ]] || return 0
    log "==> podman-compose down -v"
    local t=$SECONDS var
    # compose interpolates the whole file even for `down`: placeholders for
    # whatever is not set yet (leftovers of an earlier run, `deploy-test.sh down`).
    for var in SIGNING_KEY POSTGRES_PASSWORD RABBITMQ_PASSWORD REDIS_PASSWORD GRAFANA_ADMIN_PASSWORD \
        DT_IMAGE_POSTGRES DT_IMAGE_RABBITMQ DT_IMAGE_REDIS DT_IMAGE_MAILPIT DT_IMAGE_PROMETHEUS; do
        [[ -n "${!var:-}" ]] || export "$var=unused-by-down"
    done
    pc down -v >"$RUN/down.log" 2>&1 || { cat "$RUN/down.log"; log "podman-compose down failed"; }
    left="$(project_leftovers)"
    if [[ -n "$left" ]]; then
        log "FAILED: podman-compose down left these behind (removing them now):"
        echo "$left"
        podman ps -aq --filter "$LABEL" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
        podman pod ps -q --filter "$LABEL" | xargs -r podman pod rm -f >/dev/null 2>&1 || true
        podman volume ls -q --filter "$LABEL" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
        podman network ls -q --filter "$LABEL" | xargs -r podman network rm -f >/dev/null 2>&1 || true
        return 1
    fi
    STACK_UP=0
    log "    down in $((SECONDS - t))s: no container, pod, volume or network of $PROJECT is left"
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # A signal's trap runs inside whatever redirection was active (a build or
    # podman-compose log): report on the script's own stdout/stderr.
    exec 1>&3 2>&4
    if ((rc != 0)); then
        echo
        log "deploy-test FAILED at step: $CURRENT_STEP (exit $rc)" >&2
        ((STACK_UP)) && dump_failing >&2
    fi
    if [[ "${DEPLOY_TEST_KEEP:-0}" == always || ("${DEPLOY_TEST_KEEP:-0}" == 1 && $rc == 0) ]]; then
        stop_jobs
        log "DEPLOY_TEST_KEEP=${DEPLOY_TEST_KEEP}: the stack stays up (CONTAINERS_CONF=$CONTAINERS_CONF podman ps);" \
            "remove it with: DEPLOY_TEST_PROJECT=$PROJECT bash $here/deploy-test.sh down"
    elif ! teardown; then
        log "deploy-test FAILED at step: down (something was left running)" >&2
        ((rc == 0)) && rc=1
    fi
    if ((rc == 0)) && [[ "$CURRENT_STEP" == "down only" ]]; then
        log "down: nothing of $PROJECT is left"
    elif ((rc == 0)); then
        log "deploy-test passed in $((SECONDS - T0))s"
    else
        log "deploy-test FAILED (step: $CURRENT_STEP) after $((SECONDS - T0))s" >&2
    fi
    exit "$rc"
}
exec 3>&1 4>&2
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# `deploy-test.sh down`: only remove what a kept (DEPLOY_TEST_KEEP) or
# interrupted run left.
if [[ "${1:-}" == down ]]; then
    CURRENT_STEP="down only"
    mkdir -p "$RUN"
    STACK_UP=1
    exit 0 # on_exit runs teardown
fi

# ------------------------------------------------------------------- install

step "prerequisites"
((EUID == 0)) || die "run as root (podman with the machine's network and cgroups)"
if (($(ulimit -Hn) < NOFILE)); then
    die "open-files hard limit $(ulimit -Hn) < $NOFILE (containers.conf default_ulimits)"
fi
mkdir -p "$STATE" "$RUN"
rm -f "$RUN"/*.log "$RUN"/*.err
need=()
# netavark (podman's network stack) runs iptables: without it every container
# with a network fails with "netavark: No such file or directory".
for pair in podman:podman runc:runc debootstrap:debootstrap catatonit:catatonit \
    /usr/lib/podman/aardvark-dns:aardvark-dns /usr/lib/podman/netavark:netavark \
    iptables:iptables; do
    tool="${pair%%:*}" pkg="${pair##*:}"
    if [[ "$tool" == /* ]]; then [[ -e "$tool" ]] || need+=("$pkg"); else
        command -v "$tool" >/dev/null 2>&1 || need+=("$pkg")
    fi
done
if ((${#need[@]})); then
    log "    apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" >"$RUN/apt.log" 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq "${need[@]}" >"$RUN/apt.log" 2>&1; } ||
        { cat "$RUN/apt.log"; die "apt-get install ${need[*]}"; }
fi
# podman-compose from PyPI, pinned: Debian's 1.0.3 ignores depends_on
# conditions, healthcheck.disable, profiles and !override.
if [[ "$("$STATE/venv/bin/podman-compose" --version 2>/dev/null | grep -o 'podman-compose version [0-9.]*')" != \
    "podman-compose version $PODMAN_COMPOSE_VERSION" ]]; then
    python3 -m venv "$STATE/venv"
    "$STATE/venv/bin/pip" install -q --disable-pip-version-check \
        "podman-compose==$PODMAN_COMPOSE_VERSION" >"$RUN/pip.log" 2>&1 ||
        { cat "$RUN/pip.log"; die "pip install podman-compose==$PODMAN_COMPOSE_VERSION"; }
fi
log "    $(podman --version), podman-compose $PODMAN_COMPOSE_VERSION, runtime $(podman info -f '{{.Host.OCIRuntime.Name}}' 2>/dev/null)"

# Leftovers of an interrupted earlier run would clash with this one.
if [[ -n "$(project_leftovers)" ]]; then
    log "    removing the leftovers of an earlier run of $PROJECT"
    STACK_UP=1
    teardown || true
fi

# -------------------------------------------------------------------- images

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# Files a container needs to reach the package registries the way this machine
# does: the CA bundle (the proxy re-signs TLS), pip's and apt's settings.
host_net_files() {
    local f
    for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf /etc/apt/sources.list \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/apt.conf.d/*; do
        [[ -f "$f" ]] && echo "$f"
    done
}

# Remove older builds of the same image (other hashes); keeps the store small.
prune_tags() {
    local repo="$1" keep="$2" ref
    for ref in $(podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$repo" 2>/dev/null); do
        [[ "$ref" == "$repo:$keep" ]] || podman rmi "$ref" >/dev/null 2>&1 || true
    done
}

step "images: Debian bookworm base"
base_hash="$(hash_of "$here/images/base/build-base.sh" $(host_net_files))"
BASE_IMAGE="$IMAGE_PREFIX/base:$base_hash"
if [[ "${DEPLOY_TEST_REBUILD:-0}" != 1 ]] && podman image exists "$BASE_IMAGE"; then
    log "    cached: $BASE_IMAGE"
else
    t=$SECONDS
    bash "$here/images/base/build-base.sh" "$STATE/rootfs" "$BASE_IMAGE" >"$RUN/base.log" 2>&1 ||
        { tail -n 30 "$RUN/base.log"; die "building the base image (log: $RUN/base.log)"; }
    prune_tags "$IMAGE_PREFIX/base" "$base_hash"
    log "    built $BASE_IMAGE in $((SECONDS - t))s"
fi

build_standin() {
    local name="$1" tag="$2" h="$3" t=$SECONDS
    podman build --format docker --layers=false --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$tag" "$here/images/$name" >"$RUN/build-$name.log" 2>&1 || return 1
    log "    built $tag in $((SECONDS - t))s"
    prune_tags "$IMAGE_PREFIX/$name" "$h"
}
build_app() {
    local t=$SECONDS old
    old="$(podman image inspect -f '{{.Id}}' "$APP_IMAGE" 2>/dev/null || true)"
    # --ignorefile: podman 4.3 does not look for <Dockerfile>.dockerignore by itself.
    podman build --format docker --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
        --ignorefile "$deploy/Dockerfile.dockerignore" \
        -f "$deploy/Dockerfile" -t "$APP_IMAGE" "$repo" >"$RUN/build-app.log" 2>&1 || return 1
    log "    built $APP_IMAGE in $((SECONDS - t))s"
    # The image it replaced (now untagged); its layers stay as build cache.
    if [[ -n "$old" && "$old" != "$(podman image inspect -f '{{.Id}}' "$APP_IMAGE")" ]]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
}

step "images: stand-ins (${STANDINS[*]}) and the app image, in parallel"
declare -A build_pid=() standin_tag=()
for name in "${STANDINS[@]}"; do
    h="$(hash_of <(echo "$BASE_IMAGE") $(find "$here/images/$name" -type f | sort))"
    tag="$IMAGE_PREFIX/$name:$h"
    standin_tag[$name]="$tag"
    if [[ "${DEPLOY_TEST_REBUILD:-0}" != 1 ]] && podman image exists "$tag"; then
        log "    cached: $tag"
        continue
    fi
    bg_job build_standin "$name" "$tag" "$h"
    build_pid[$name]=$!
done
# The project's image exactly as docker-compose.yml's `build:` describes it
# (context: the repo root, deploy/Dockerfile), with the base as its FROM.
# --format docker keeps the HEALTHCHECK (OCI images have none).
bg_job build_app
build_pid[app]=$!
failed=()
for name in "${!build_pid[@]}"; do
    wait "${build_pid[$name]}" || failed+=("$name")
done
for name in "${failed[@]}"; do
    echo "--- $RUN/build-$name.log (last 40 lines)"
    tail -n 40 "$RUN/build-$name.log"
done
((${#failed[@]} == 0)) || die "image build failed: ${failed[*]}"
[[ "$(podman image inspect -f '{{if .HealthCheck}}yes{{end}}' "$APP_IMAGE")" == yes ]] ||
    die "$APP_IMAGE has no HEALTHCHECK (deploy/Dockerfile)"
export DT_IMAGE_POSTGRES="${standin_tag[postgres]}" DT_IMAGE_RABBITMQ="${standin_tag[rabbitmq]}" \
    DT_IMAGE_REDIS="${standin_tag[redis]}" DT_IMAGE_MAILPIT="${standin_tag[mailpit]}" \
    DT_IMAGE_PROMETHEUS="${standin_tag[prometheus]}"

# ------------------------------------------------------------------- compose

step "compose: required secrets and the merged configuration"
# Random values for every secret docker-compose.yml requires (URL-safe: hex).
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export SIGNING_KEY="$(rand_hex 32)" POSTGRES_PASSWORD="$(rand_hex 16)" \
    RABBITMQ_PASSWORD="$(rand_hex 16)" REDIS_PASSWORD="$(rand_hex 16)" \
    GRAFANA_ADMIN_PASSWORD="$(rand_hex 16)"
for var in SIGNING_KEY POSTGRES_PASSWORD RABBITMQ_PASSWORD REDIS_PASSWORD GRAFANA_ADMIN_PASSWORD; do
    if env -u "$var" "$STATE/venv/bin/podman-compose" -p "$PROJECT" -f "$deploy/docker-compose.yml" \
        -f "$here/compose.test.yml" config >/dev/null 2>"$RUN/config-$var.err" ||
        ! grep -q "required variable $var" "$RUN/config-$var.err"; then
        die "docker-compose.yml does not require $var (it starts without it)"
    fi
done
log "    compose refuses to start without each of the 5 secrets"
pc config >"$RUN/compose.merged.yml" 2>"$RUN/config.err" ||
    { cat "$RUN/config.err"; die "podman-compose config"; }
"$STATE/venv/bin/python" "$here/stack.py" waves "$RUN/compose.merged.yml" >"$RUN/waves" ||
    die "reading depends_on from the merged compose file"

# podman runs a container's healthcheck from a systemd timer; without systemd
# (this machine, CI) nothing runs it and nothing ever gets healthy. Run each
# running container's compose healthcheck ourselves, as Docker would: at the
# container's `interval`, and during its `start_period`, until the first pass,
# every 2 s (Docker's start_interval; failures there do not count). podman
# keeps the status: `retries` failures in a row after start_period = unhealthy.
health_loop() {
    local id="$1" interval="$2" timeout="$3" start_period="$4" passed=0 state
    local until=$((SECONDS + start_period))
    while state="$(podman inspect -f '{{.State.Status}}' "$id" 2>/dev/null)"; do
        if [[ "$state" == running ]] &&
            timeout "$((timeout + 10))" podman healthcheck run "$id" >/dev/null 2>&1; then
            passed=1
        fi
        if ((!passed && SECONDS < until)); then sleep 2; else sleep "$interval"; fi
    done
}
health_ticker() {
    declare -A seen=()
    local id interval timeout start
    while :; do
        while read -r id interval timeout start; do
            [[ -n "$id" && -n "$interval" && -z "${seen[$id]:-}" ]] || continue
            seen[$id]=1
            health_loop "$id" "${interval%.*}" "${timeout%.*}" "${start%.*}" &
        done < <(podman ps --filter "$LABEL" --format '{{.ID}}' 2>/dev/null |
            xargs -r podman inspect -f \
                '{{.Id}} {{if .Config.Healthcheck}}{{.Config.Healthcheck.Interval.Seconds}} {{.Config.Healthcheck.Timeout.Seconds}} {{.Config.Healthcheck.StartPeriod.Seconds}}{{end}}' \
                2>/dev/null)
        sleep 1
    done
}

containers_of() { podman ps -a --filter "$LABEL" --filter "label=com.docker.compose.service=$1" --format '{{.Names}}'; }

# Wait until every container of service $1 meets compose condition $2.
wait_for() {
    local svc="$1" cond="$2" limit="${3:-240}" start=$SECONDS c state code health ok names
    while :; do
        names="$(containers_of "$svc")"
        [[ -n "$names" ]] || die "$svc: no container"
        ok=1
        for c in $names; do
            state="$(podman inspect -f '{{.State.Status}}' "$c")"
            code="$(podman inspect -f '{{.State.ExitCode}}' "$c")"
            health="$(podman inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c")"
            case "$cond" in
            service_completed_successfully)
                if [[ "$state" == exited ]]; then
                    ((code == 0)) || die "$c exited with status $code ($svc must complete successfully)"
                else ok=0; fi
                ;;
            service_healthy)
                [[ -n "$health" ]] || die "$c has no healthcheck ($svc must become healthy)"
                [[ "$health" == unhealthy ]] && die "$c is unhealthy"
                [[ "$state" == running && "$health" == healthy ]] || ok=0
                ;;
            *) [[ "$state" == running ]] || ok=0 ;;
            esac
            if [[ "$state" == exited && "$cond" != service_completed_successfully ]]; then
                log "    $c exited with status $code (restart policy may bring it back)"
            fi
        done
        ((ok)) && { log "    $svc: ${cond#service_} ($((SECONDS - start))s)"; return 0; }
        ((SECONDS - start < limit)) || die "$svc not ${cond#service_} after ${limit}s"
        sleep 1
    done
}

step "compose up: services in depends_on order"
STACK_UP=1
bg_job health_ticker >/dev/null 2>&1
while IFS='|' read -r services waits; do
    for w in $waits; do
        wait_for "${w%%=*}" "${w#*=}"
    done
    [[ -n "$services" ]] || continue
    log "    podman-compose up -d $services"
    # shellcheck disable=SC2086 # a list of service names
    pc up -d --no-build --no-deps $services >>"$RUN/up.log" 2>&1 ||
        { tail -n 40 "$RUN/up.log"; die "podman-compose up -d $services"; }
done <"$RUN/waves"

step "healthy: every service with a healthcheck, migrate completed"
wait_for migrate service_completed_successfully
for svc in postgres rabbitmq redis mailpit prometheus producer worker reconciler; do
    wait_for "$svc" service_healthy
done
n="$(containers_of worker | wc -l)"
((n == WORKERS)) || die "$n worker containers, expected $WORKERS"
log "    $WORKERS worker replicas: $(containers_of worker | tr '\n' ' ')"

port_of() { podman port "$(containers_of "$1" | head -n 1)" "$2" | head -n 1; }
PRODUCER="http://$(port_of producer 8000/tcp)"
PROMETHEUS="http://$(port_of prometheus 9090/tcp)"
MAILPIT="http://$(port_of mailpit 8025/tcp)"
log "    producer $PRODUCER, prometheus $PROMETHEUS, smtp sink $MAILPIT"

step "seed a school (batchctl seed in the producer container)"
producer_ctr="$(containers_of producer | head -n 1)"
seed="$(podman exec "$producer_ctr" batchctl seed --learners 200 --groups 3 --courses 4 --json | tail -n 1)" ||
    die "batchctl seed"
read -r school token < <("$STATE/venv/bin/python" -c \
    'import json,sys; d=json.loads(sys.argv[1]); print(d["school_id"], d["token"])' "$seed") ||
    die "batchctl seed printed no JSON: $seed"
psql_q() {
    podman exec "$(containers_of postgres | head -n 1)" \
        psql -U batch -d batch_actions -tAc "$1"
}
group_id="$(psql_q "SELECT min(id) FROM groups WHERE school_id = $school")"
course_id="$(psql_q "SELECT min(id) FROM courses WHERE school_id = $school")"
[[ "$group_id" =~ ^[0-9]+$ && "$course_id" =~ ^[0-9]+$ ]] ||
    die "no group/course in school $school ($group_id, $course_id)"
log "    school $school: group $group_id, course $course_id"

step "one batch of every action over HTTP, and Prometheus scrapes every target"
"$STATE/venv/bin/python" "$here/stack.py" check --producer "$PRODUCER" --prometheus "$PROMETHEUS" \
    --mailpit "$MAILPIT" --token "$token" --group-id "$group_id" --course-id "$course_id" \
    --workers "$WORKERS" || die "end-to-end checks"

step "still healthy after the batches"
for svc in producer worker reconciler; do
    for c in $(containers_of "$svc"); do
        restarts="$(podman inspect -f '{{.RestartCount}}' "$c")"
        ((restarts == 0)) || die "$c restarted $restarts times"
    done
    wait_for "$svc" service_healthy 30
done

step "down"
