#!/usr/bin/env bash
# Builds the Dockerfile's image with Podman and runs it for real, with no Docker engine or registry:
#
#   1. a Debian bookworm base image made with debootstrap (python3 3.11, git, ssh, tini) and imported;
#   2. `podman build --build-arg BASE=<that image> --build-context extra-ca=<host CAs>`;
#   3. a temporary bare git repository holding the example deploy_specs/, mounted into the container
#      and followed as a file:// remote (RECONCILER_REPO), with the example's Lambda versions published
#      first into the state volume by a one-off container of the same image;
#   4. the daemon from the image's default command, as the Kubernetes manifests run it: a read-only root
#      filesystem with two writable mounts (the state volume and /tmp), and RECONCILER_LISTEN moved off
#      the default port (the HEALTHCHECK must follow it); waits for /readyz, checks that /status shows the
#      pushed commit applied, that a second commit is fetched and applied, that /metrics counts the
#      reconciles, that logs are JSON lines without the webhook secret, that it runs as the image's
#      numeric non-root user under tini, that the HEALTHCHECK passes, and that SIGTERM (podman stop)
#      ends it with exit code 0 well within the 10 s the design allows.
#
# Everything Podman keeps (images, containers, volumes, networks, events) lives in one temporary
# directory, removed on exit with the containers in it; nothing is left on the host.  Needs root;
# installs podman, runc, debootstrap and slirp4netns with apt-get when they are missing.
#
# Environment: RECONCILER_CONTAINER_CACHE=DIR keeps the debootstrap tarball there between runs
# (default: none, every run starts from scratch); DEBIAN_MIRROR overrides the mirror read from
# /etc/apt/sources.list*; EXTRA_CA_DIR names the CA certificates (*.crt) given to the build
# (default /usr/local/share/ca-certificates); PIP_INDEX_URL, PIP_EXTRA_INDEX_URL and PIP_TRUSTED_HOST,
# or pip's own configuration (`pip config get global.index-url`, ...), are passed on as build args.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
start=$SECONDS
say() { printf '[container %3ss] %s\n' "$((SECONDS - start))" "$*"; }
fail() {
    printf '[container %3ss] FAIL: %s\n' "$((SECONDS - start))" "$*" >&2
    exit 1
}

if [[ $(id -u) != 0 ]]; then
    fail "needs root (rootful podman with its state in a temporary directory)"
fi

# ------------------------------------------------- podman state, all in $tmp
# Short paths: slirp4netns's API socket lives below tmp_dir and a socket path must stay under 108 bytes.
tmp=$(mktemp -d /tmp/rcc.XXXXXX)
state="$tmp/p"
mkdir -p "$state/conf"
export CONTAINERS_STORAGE_CONF="$state/conf/storage.conf" CONTAINERS_CONF="$state/conf/containers.conf"
cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$state/storage"
runroot = "$state/run"
EOF
# runc: crun refuses hybrid cgroup hosts; ulimits: higher ones are refused on these machines.
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$state/events.log"
tmp_dir = "$state/t"
volume_path = "$state/volumes"

[network]
network_config_dir = "$state/networks"
EOF

name="reconciler-ci-$$"
image="localhost/reconciler:ci"
base="localhost/pybase:bookworm"
volume="$name-state"
secret="ci-webhook-secret-$RANDOM$RANDOM"

# Rootful Podman makes these host paths whatever its configuration says (network namespaces are
# always in /run/netns); those that did not exist before this run are removed after it.
host_paths=(/run/netns /run/containers /run/libpod /etc/containers/networks /var/lib/cni)
new_paths=()
for path in "${host_paths[@]}"; do
    [[ -e $path ]] || new_paths+=("$path")
done

cleanup() {
    local code=$?
    set +e
    if [[ $code != 0 ]] && podman container exists "$name" 2>/dev/null; then
        echo "---- container log (last 40 lines)" >&2
        podman logs --tail 40 "$name" >&2
    fi
    podman rm --all --force --time 0 >/dev/null 2>&1
    podman volume rm --all --force >/dev/null 2>&1
    podman system reset --force >/dev/null 2>&1
    # Whatever podman left mounted below $tmp must go before the files do.
    findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$tmp"
    for path in "${new_paths[@]}"; do
        if [[ $path == /run/netns ]] && mountpoint -q /run/netns; then
            rmdir /run/netns/* 2>/dev/null
            umount /run/netns 2>/dev/null
        fi
        [[ -e $path ]] && rm -rf "$path"
    done
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ tools
missing=()
for tool in podman runc debootstrap slirp4netns; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]} with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap slirp4netns uidmap fuse-overlayfs; } >"$tmp/apt.log" 2>&1 ||
        { tail -n 20 "$tmp/apt.log" >&2; fail "apt-get install failed"; }
fi

# -------------------------------------------------------------- base image
debian_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' |
        grep -E '/debian/?$' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

make_base() {
    local cache="${RECONCILER_CONTAINER_CACHE:-}" tarball="$tmp/base.tar"
    if [[ -n $cache && -s $cache/pybase-bookworm.tar ]]; then
        tarball="$cache/pybase-bookworm.tar"
        say "base image from the cached $tarball"
    else
        local mirror
        mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
        say "debootstrap bookworm from $mirror"
        debootstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates,openssh-client,tini \
            bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
            { tail -n 20 "$tmp/debootstrap.log" >&2; fail "debootstrap failed"; }
        rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
        tar -C "$tmp/rootfs" -cf "$tarball" .
        rm -rf "$tmp/rootfs"
        if [[ -n $cache ]]; then
            mkdir -p "$cache" && cp "$tarball" "$cache/pybase-bookworm.tar"
        fi
    fi
    podman import --quiet --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" "$base" >/dev/null
}

# --------------------------------------------------------------- the image
pip_setting() { # $1: env var, $2: pip config key; URLs only: the host's file:// indexes are not in the build
    local value="${!1:-}" word kept=()
    if [[ -z $value ]] && python3 -m pip --version >/dev/null 2>&1; then
        value=$(python3 -m pip config get "global.$2" 2>/dev/null || true)
    fi
    for word in $value; do
        [[ $1 == PIP_TRUSTED_HOST || $word == http://* || $word == https://* ]] && kept+=("$word")
    done
    echo "${kept[*]}"
}

build_image() {
    local args=(--format docker --network host --build-arg "BASE=$base" --tag "$image")
    local ca_dir="${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
    if compgen -G "$ca_dir/*.crt" >/dev/null; then
        args+=(--build-context "extra-ca=$ca_dir")
    fi
    local var key value
    for var in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url PIP_TRUSTED_HOST:trusted-host; do
        key=${var#*:} var=${var%%:*}
        value=$(pip_setting "$var" "$key")
        [[ -n $value ]] && args+=(--build-arg "$var=$value")
    done
    say "podman build (extra CAs: $(compgen -G "$ca_dir/*.crt" | wc -l))"
    podman build "${args[@]}" "$root" >"$tmp/build.log" 2>&1 ||
        { tail -n 30 "$tmp/build.log" >&2; fail "podman build failed"; }
}

# ------------------------------------------------------------ the git remote
# git refuses a repository owned by another user (safe.directory), so the remote belongs to the
# container's user, and this script's own git commands (root) trust it through their own global config.
make_remote() {
    local uid=$1
    printf '[safe]\n\tdirectory = *\n[user]\n\tname = ci\n\temail = ci@localhost\n' >"$tmp/gitconfig"
    export GIT_CONFIG_GLOBAL="$tmp/gitconfig" GIT_CONFIG_NOSYSTEM=1
    git init -q --bare -b main "$tmp/remote.git"
    chown -R "$uid:$uid" "$tmp/remote.git"
    git clone -q "$tmp/remote.git" "$tmp/checkout" 2>/dev/null
    cp -r "$root/deploy_specs" "$tmp/checkout/"
}

commit_specs() { # $1: message; prints the new commit
    git -C "$tmp/checkout" add -A
    git -C "$tmp/checkout" commit -q -m "$1"
    git -C "$tmp/checkout" push -q origin HEAD:main
    git -C "$tmp/checkout" rev-parse HEAD
}

# ---------------------------------------------------------------- checks
http_get() { # $1: path; prints the body, fails on a non-2xx status
    curl -fsS --max-time 5 "http://127.0.0.1:$port$1"
}

json_field() { # $1: JSON document, $2: top-level field
    python3 -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

wait_for() { # $1: seconds, $2...: a command that succeeds when ready
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        if [[ $(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
            fail "the container stopped: $(podman inspect --format '{{.State.ExitCode}}' "$name" 2>/dev/null)"
        fi
        sleep 0.5
    done
}

applied_is() { # $1: revision
    [[ $(json_field "$(http_get /status)" applied_revision) == "$1" ]]
}

# ------------------------------------------------------------------- main
make_base
build_image
say "image built: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec)"

user=$(podman image inspect --format '{{.Config.User}}' "$image")
uid=${user%%:*}
[[ $uid =~ ^[0-9]+$ && $uid != 0 ]] || fail "the image's USER is '$user', expected a numeric non-root user"
[[ -n $(podman image inspect --format '{{.Config.Healthcheck}}' "$image") ]] || fail "the image has no HEALTHCHECK"
title=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.title"}}' "$image")
[[ $title == reconciler ]] || fail "the image's org.opencontainers.image.title label is '$title'"

make_remote "$uid"
first=$(commit_specs "example specs")
# As deploy/kubernetes/deployment.yaml: readOnlyRootFilesystem, and two writable emptyDirs (state, /tmp).
podman volume create "$volume-tmp" >/dev/null
mounts=(--read-only --read-only-tmpfs=false --volume "$volume:/var/lib/reconciler" --volume "$volume-tmp:/tmp"
    --volume "$tmp/remote.git:/remote.git:ro")

say "publishing the example's Lambda versions into the state volume"
podman volume create "$volume" >/dev/null
versions=$(podman run --rm --no-healthcheck --network none "${mounts[@]}" "$image" sh -c \
    'for n in 1 2; do reconciler local publish-version orders-handler --repo /remote.git; done')
[[ ${versions//$'\n'/ } == "1 2" ]] || fail "publish-version printed '$versions', expected 1 and 2"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "starting the daemon (default command, read-only root) on 127.0.0.1:$port, following file:///remote.git"
podman run --detach --name "$name" \
    --network slirp4netns:port_handler=slirp4netns --publish "127.0.0.1:$port:9090" \
    "${mounts[@]}" \
    --env RECONCILER_LISTEN=0.0.0.0:9090 \
    --env RECONCILER_REPO=file:///remote.git --env RECONCILER_INTERVAL=1 \
    --env RECONCILER_WEBHOOK_SECRET="$secret" \
    "$image" >/dev/null 2>"$tmp/run.err" || { cat "$tmp/run.err" >&2; fail "podman run failed"; }

wait_for 60 http_get /readyz || fail "/readyz did not answer 200 within 60 s"
http_get /healthz >/dev/null || fail "/healthz did not answer 200"
wait_for 30 applied_is "$first" || fail "/status never showed $first applied: $(http_get /status)"
say "ready; /status shows the first commit applied"

# The remote moves on: prod sends 10 % to version 2; the daemon fetches it within --interval.
sed -i 's/routing: {"1": 95, "2": 5}/routing: {"1": 90, "2": 10}/' "$tmp/checkout/deploy_specs/aliases.yaml"
second=$(commit_specs "prod: 10 % to version 2")
wait_for 30 applied_is "$second" || fail "the second commit was not applied: $(http_get /status)"
routing=$(http_get /status | python3 -c 'import json, sys; print(json.load(sys.stdin)["aliases"]["orders-handler/prod"]["routing"])')
[[ $routing == "{'1': 90, '2': 10}" ]] || fail "prod routing is $routing after the second commit"
say "the second commit was fetched and applied"

metrics=$(http_get /metrics)
successes=$(sed -nE 's/^reconciler_reconciles_total\{result="success"\} ([0-9.e+]+)$/\1/p' <<<"$metrics")
python3 -c 'import sys; sys.exit(float(sys.argv[1] or 0) < 2)' "$successes" ||
    fail "/metrics counts '${successes:-no}' successful reconciles, expected at least 2"
grep -qF "revision=\"$second\"" <<<"$metrics" || fail "/metrics has no reconciler_applied_revision_info for $second"

[[ $(podman exec "$name" id -u) == "$uid" ]] || fail "the daemon does not run as uid $uid"
[[ $(podman exec "$name" cat /proc/1/comm) == tini ]] || fail "PID 1 is not tini"
podman healthcheck run "$name" >/dev/null 2>&1 || fail "the image's HEALTHCHECK failed (port moved to 9090)"
if podman exec "$name" touch /home/reconciler/written 2>/dev/null; then
    fail "the root filesystem is writable, expected --read-only"
fi
say "runs as uid $uid under tini on a read-only root; HEALTHCHECK passes on the moved port"

stop_start=$SECONDS
# (podman reports that it has no systemd to remove the healthcheck timer from: noise, kept out of sight)
podman stop --time 20 "$name" >/dev/null 2>"$tmp/stop.err" || { cat "$tmp/stop.err" >&2; fail "podman stop failed"; }
took=$((SECONDS - stop_start))
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[[ $code == 0 ]] || fail "exit code $code after SIGTERM, expected 0"
((took <= 10)) || fail "took ${took} s to stop after SIGTERM, expected at most 10"

podman logs "$name" >"$tmp/daemon.log" 2>&1
python3 - "$tmp/daemon.log" <<'EOF' || fail "the daemon's log is not one JSON object a line"
import json, sys
lines = [line for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
assert lines, "no log lines"
for line in lines:
    assert isinstance(json.loads(line), dict), line
EOF
if grep -qF "$secret" "$tmp/daemon.log"; then
    fail "the webhook secret appears in the log"
fi
say "stopped by SIGTERM in ${took} s with exit code 0; $(wc -l <"$tmp/daemon.log") JSON log lines, no secret"
say "passed"
