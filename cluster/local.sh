#!/usr/bin/env bash
# cluster/local.sh: a multi-node Ray cluster on loopback, on this one machine, for tests and
# laptops. One head node plus N worker nodes, each a separate raylet with 1 CPU, so code that
# depends on "more than one node" (object transfer, spreading, node failure) is exercised.
#
#   cluster/local.sh start  [--port P] [--workers N] [--dashboard-port DP]
#                           [--object-store-memory BYTES] [--gpus G]
#   cluster/local.sh status [--port P]
#   cluster/local.sh stop   [--port P]
#
# Uses the `ray` executable on PATH (activate the venv first).
#
# Isolation from any other Ray on the machine (e.g. a pytest session's `ray.init(address="local")`):
#   * every node uses --temp-dir /tmp/raymmi-cluster-$PORT, so the session directory, sockets,
#     logs and the `ray_current_cluster` address file never touch /tmp/ray; a bare `ray.init()`
#     elsewhere does not attach to this cluster by accident;
#   * the ports Ray would otherwise fix (GCS 6379, dashboard 8265, client server 10001, dashboard
#     agent 52365) are derived from $PORT; all other ports are picked free by Ray;
#   * `stop` never calls `ray stop` (that kills EVERY Ray process of the user on the machine): it
#     signals only the processes whose command line names our temp dir, and their descendants
#     (the ray::IDLE workers rewrite their command line, so they are found through their parent).
#
# Authentication: token auth stays ON. Everything binds to 127.0.0.1, but other users of the
# same machine can reach loopback ports, and a Ray cluster executes whatever it is sent. The
# token is the default one, ~/.ray/auth_token (created by `ray get-auth-token --generate` when
# missing, never overwritten; a local `ray.init()` uses the same file). Clients need
#   export RAY_AUTH_MODE=token
# for `ray job submit`, `ray status`, `JobSubmissionClient` and `ray.init(address=...)`.
# (Ray 2.60: `ray start --head` enables token auth only if a token file already exists, and a
# `ray start --address` worker only if RAY_AUTH_MODE=token is set, so we set it explicitly
# instead of depending on the state of ~/.ray.)
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

cmd="${1:-}"
[[ -n "$cmd" ]] || usage 2
shift

PORT=6390                     # GCS port of the head (not 6379, the default of a plain `ray start`)
WORKERS=1                     # worker nodes besides the head: 1 gives a 2-node cluster
DASHBOARD_PORT=""             # default: PORT + 2000 (8390 for the default PORT)
OBJECT_STORE_MEMORY=$((256 * 1024 * 1024))  # per node; without it each node claims 30% of RAM
GPUS=0                        # GPUs of the first worker; the others (and the head) get 0 so one
                              # physical GPU is never counted once per node
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --dashboard-port) DASHBOARD_PORT="$2"; shift 2 ;;
        --object-store-memory) OBJECT_STORE_MEMORY="$2"; shift 2 ;;
        --gpus) GPUS="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "local.sh: unknown option: $1" >&2; usage 2 ;;
    esac
done
for v in PORT WORKERS OBJECT_STORE_MEMORY GPUS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "local.sh: $v must be a non-negative integer" >&2; exit 2; }
done

TEMP_DIR="/tmp/raymmi-cluster-${PORT}"
STATE_FILE="${TEMP_DIR}/local-cluster.env"
# Our processes: every one whose command line names our temp dir as a whole path component (so
# port 6390 never matches 63901), plus the Ray Client server, the one process `ray start --head`
# spawns without the temp dir in its arguments (it names the GCS address, whose port is ours).
PATTERN="${TEMP_DIR}(/|[[:space:]]|\$)|ray\.util\.client\.server .*--address=[^[:space:]]*:${PORT}([[:space:]]|\$)"

# The dashboard port of a running cluster comes from its state file, so `status`/`stop` need only
# --port.
if [[ -z "$DASHBOARD_PORT" && -f "$STATE_FILE" && "$cmd" != start ]]; then
    DASHBOARD_PORT="$(sed -n 's/^DASHBOARD_PORT=//p' "$STATE_FILE")"
fi
DASHBOARD_PORT="${DASHBOARD_PORT:-$((PORT + 2000))}"
CLIENT_PORT=$((PORT + 1))     # Ray Client server of the head (default 10001 would collide)
# Dashboard agent HTTP port of node i is AGENT_BASE + i (default 52365 for every node would collide:
# the head's agent is the one that runs submitted jobs, so it must bind).
AGENT_BASE=$((PORT + 10))

export RAY_AUTH_MODE=token     # see "Authentication" above
export RAY_USAGE_STATS_ENABLED=0

our_pids() {
    # PIDs of processes whose command line names our temp dir, plus all their descendants.
    local roots
    roots="$(pgrep -f -- "$PATTERN" || true)"
    [[ -n "$roots" ]] || return 0
    ps -eo pid=,ppid= | awk -v roots="$roots" '
        BEGIN { n = split(roots, r, /[[:space:]]+/); for (i = 1; i <= n; i++) if (r[i] != "") keep[r[i]] = 1 }
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            }
            for (p in keep) print p
        }' | sort -n
}

head_running() {
    pgrep -f -- "gcs_server.*${TEMP_DIR}(/|[[:space:]]|\$)" >/dev/null 2>&1
}

print_addresses() {
    cat <<EOF
Ray cluster (head + ${1} worker node(s)) on loopback, temp dir ${TEMP_DIR}
  GCS address     : 127.0.0.1:${PORT}        (ray.init(address="127.0.0.1:${PORT}"))
  dashboard / jobs: http://127.0.0.1:${DASHBOARD_PORT}
Token auth is on. In the shell that talks to the cluster:
  export RAY_AUTH_MODE=token
  ray job submit --address http://127.0.0.1:${DASHBOARD_PORT} --working-dir . -- python jobs/<stage>.py --smoke-test
  ray status --address 127.0.0.1:${PORT}
EOF
}

start() {
    if head_running; then
        echo "local.sh: already running"
        print_addresses "$(sed -n 's/^WORKERS=//p' "$STATE_FILE" 2>/dev/null || echo '?')"
        return 0
    fi
    # Leftovers of a crashed run (a raylet without its GCS) would confuse the new cluster.
    stop_cluster quiet
    mkdir -p "$TEMP_DIR"
    # Create the default token once; keep an existing one (other clusters of this user use it).
    ray get-auth-token --generate >/dev/null

    local t0 t1 i
    t0=$(date +%s%N)
    ray start --head \
        --node-ip-address 127.0.0.1 \
        --port "$PORT" \
        --num-cpus 1 --num-gpus 0 \
        --object-store-memory "$OBJECT_STORE_MEMORY" \
        --temp-dir "$TEMP_DIR" \
        --include-dashboard true \
        --dashboard-host 127.0.0.1 \
        --dashboard-port "$DASHBOARD_PORT" \
        --dashboard-agent-listen-port "$AGENT_BASE" \
        --ray-client-server-port "$CLIENT_PORT" \
        --disable-usage-stats \
        >"${TEMP_DIR}/start-head.log" 2>&1 \
        || { cat "${TEMP_DIR}/start-head.log" >&2; stop_cluster quiet; return 1; }
    for ((i = 1; i <= WORKERS; i++)); do
        local gpus=0
        [[ $i -eq 1 ]] && gpus="$GPUS"
        ray start \
            --address "127.0.0.1:${PORT}" \
            --node-ip-address 127.0.0.1 \
            --num-cpus 1 --num-gpus "$gpus" \
            --object-store-memory "$OBJECT_STORE_MEMORY" \
            --temp-dir "$TEMP_DIR" \
            --dashboard-agent-listen-port "$((AGENT_BASE + i))" \
            --disable-usage-stats \
            >"${TEMP_DIR}/start-worker-${i}.log" 2>&1 \
            || { cat "${TEMP_DIR}/start-worker-${i}.log" >&2; stop_cluster quiet; return 1; }
    done
    t1=$(date +%s%N)
    printf 'PORT=%s\nDASHBOARD_PORT=%s\nWORKERS=%s\n' "$PORT" "$DASHBOARD_PORT" "$WORKERS" >"$STATE_FILE"
    local ms=$(((t1 - t0) / 1000000))
    printf 'local.sh: started in %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
    print_addresses "$WORKERS"
}

status() {
    if ! head_running; then
        echo "local.sh: not running (temp dir ${TEMP_DIR})"
        return 1
    fi
    print_addresses "$(sed -n 's/^WORKERS=//p' "$STATE_FILE" 2>/dev/null || echo '?')"
    echo
    ray status --address "127.0.0.1:${PORT}"
}

stop_cluster() {
    # SIGTERM our processes, wait up to 10 s, then SIGKILL what is left. Exit 0 if nothing runs.
    local quiet="${1:-}" pids i
    pids="$(our_pids)"
    if [[ -z "$pids" ]]; then
        [[ -n "$quiet" ]] || echo "local.sh: nothing to stop (temp dir ${TEMP_DIR})"
        return 0
    fi
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pids="$(our_pids)"
        [[ -z "$pids" ]] && break
        sleep 0.2
    done
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.5
    fi
    # The plasma store files live in /dev/shm; they are freed with the raylets.
    rm -f "$STATE_FILE"
    [[ -n "$quiet" ]] || echo "local.sh: stopped (temp dir ${TEMP_DIR}; logs kept under it)"
}

case "$cmd" in
    start) start ;;
    stop) stop_cluster ;;
    status) status ;;
    -h|--help) usage 0 ;;
    *) echo "local.sh: unknown command: $cmd" >&2; usage 2 ;;
esac
