#!/usr/bin/env bash
# cluster/local.sh: a multi-node Ray cluster on this one machine, addressed over loopback, for
# tests and laptops. One head node plus N worker nodes, each its own raylet with 1 CPU, so code
# that depends on "more than one node" (object transfer, spreading, node loss) is exercised.
#
#   cluster/local.sh start  [--port P] [--workers N] [--dashboard-port DP]
#                           [--object-store-memory BYTES] [--gpus G]
#   cluster/local.sh status [--port P]
#   cluster/local.sh stop   [--port P] [--purge]
#
# Defaults: P=6390, N=1 (2 nodes), DP=P+2000, 256 MiB object store per node, G=0.
# Uses the `ray` executable on PATH (activate the venv first). Then, in the client's shell:
#   export RAY_AUTH_MODE=token
#   ray job submit --address http://127.0.0.1:DP --working-dir . -- python jobs/<stage>.py --smoke-test
#
# Isolation from any other Ray on the machine (e.g. a pytest session's `ray.init(address="local")`):
#   * the head uses --temp-dir /tmp/raymmi-cluster-$P, worker i /tmp/raymmi-cluster-$P/worker-i:
#     session directories, sockets, logs and the `ray_current_cluster` address file stay out of
#     /tmp/ray, so a bare `ray.init()` elsewhere never attaches to this cluster by accident. Each
#     node has its own temp dir because nodes sharing one also share `runtime_resources/`, and
#     their runtime-env agents then race building the same job environment (measured with a
#     `pip` runtime_env: "dest dir ... exists", then workers dying with "No module named 'ray'");
#   * the ports Ray would otherwise fix (GCS 6379, dashboard 8265, Ray Client 10001, dashboard
#     agent 52365 on EVERY node) are derived from P: GCS P, Ray Client P+1, dashboard agents
#     P+10+i (node i, head i=0), dashboard DP. All other ports are picked free by Ray. Two
#     clusters side by side need ports at least 20 apart;
#   * `stop` never calls `ray stop` (that kills EVERY Ray process on the machine, the test
#     session's included). It signals only the processes whose command line names our temp dir
#     (GCS, raylets, dashboard, monitors), the Ray Client server (it names our GCS port), and
#     their descendants (agents and ray::IDLE workers rewrite their command line), in `ray stop`'s
#     order: raylets, then the rest, then the GCS.
#
# Network and authentication. Ray 2.60 on Linux replaces `--node-ip-address 127.0.0.1` with the
# machine's primary IP (ray._private.services.resolve_ip_for_localhost), and the GCS, raylets and
# agents listen on all interfaces whatever the node IP; only the dashboard / Jobs API (which we
# bind with --dashboard-host 127.0.0.1) is loopback-only. So the cluster is reachable from the
# network and runs whatever it is sent: token auth stays ON (RAY_AUTH_MODE=token on every node).
# The token is the default file ~/.ray/auth_token, created by `ray get-auth-token --generate` if
# missing and never overwritten (a local `ray.init()` creates and uses the same file). Clients
# need `export RAY_AUTH_MODE=token` BEFORE `import ray` (it is read once per process) for
# `ray job submit`, `ray status`, `JobSubmissionClient` and `ray.init(address=...)`.
# Why explicit: in 2.60 `ray start --head` turns token auth on only if a token file already
# exists, and `ray start --address` only if RAY_AUTH_MODE=token is set; we do not depend on the
# state of ~/.ray. A caller's explicit RAY_AUTH_MODE=disabled is respected, with a warning.
set -euo pipefail

usage() {
    # Help on stdout for --help, on stderr for a usage error.
    if [[ "${1:-2}" -eq 0 ]]; then
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    else
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    fi
    exit "${1:-2}"
}

cmd="${1:-}"
[[ -n "$cmd" ]] || usage 2
shift

PORT=6390                     # GCS port of the head (not 6379, the default of a plain `ray start`)
WORKERS=1                     # worker nodes besides the head: 1 gives a 2-node cluster
DASHBOARD_PORT=""             # default: PORT + 2000 (8390 for the default PORT)
OBJECT_STORE_MEMORY=$((256 * 1024 * 1024))  # per node; without it each node claims 30% of RAM
GPUS=0                        # GPUs of the first worker; the head and the other workers get 0, so
                              # one physical GPU is never counted once per node
PURGE=""                      # stop --purge: also delete the temp dir (logs included)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --workers) WORKERS="${2:?--workers needs a value}"; shift 2 ;;
        --dashboard-port) DASHBOARD_PORT="${2:?--dashboard-port needs a value}"; shift 2 ;;
        --object-store-memory) OBJECT_STORE_MEMORY="${2:?--object-store-memory needs a value}"; shift 2 ;;
        --gpus) GPUS="${2:?--gpus needs a value}"; shift 2 ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "local.sh: unknown option: $1" >&2; usage 2 ;;
    esac
done
for v in PORT WORKERS OBJECT_STORE_MEMORY GPUS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "local.sh: $v must be a non-negative integer" >&2; exit 2; }
done
if ((WORKERS > 9)); then
    echo "local.sh: at most 9 workers (the dashboard agent ports P+10..P+19 are reserved)" >&2
    exit 2
fi

TEMP_DIR="/tmp/raymmi-cluster-${PORT}"
STATE_FILE="${TEMP_DIR}/local-cluster.env"
# Our processes (see "Isolation" above). The temp dir must match as a whole path component, so
# port 6390 never matches /tmp/raymmi-cluster-63901.
PATTERN="${TEMP_DIR}(/|[[:space:]]|\$)|ray\.util\.client\.server .*--address=[^[:space:]]*:${PORT}([[:space:]]|\$)"

# `status`/`stop` need only --port: the dashboard port of a running cluster is in its state file.
if [[ -z "$DASHBOARD_PORT" && -f "$STATE_FILE" && "$cmd" != start ]]; then
    DASHBOARD_PORT="$(sed -n 's/^DASHBOARD_PORT=//p' "$STATE_FILE")"
fi
DASHBOARD_PORT="${DASHBOARD_PORT:-$((PORT + 2000))}"
CLIENT_PORT=$((PORT + 1))     # Ray Client server of the head
AGENT_BASE=$((PORT + 10))     # dashboard agent HTTP port of node i is AGENT_BASE + i; the head's
                              # agent runs submitted jobs, so it must not lose a port race

if [[ "$cmd" == start && -n "${RAY_AUTH_MODE:-}" && "${RAY_AUTH_MODE}" != token ]]; then
    echo "local.sh: WARNING: RAY_AUTH_MODE=${RAY_AUTH_MODE} from the environment: starting WITHOUT" \
        "token auth; Ray's internal ports listen on all interfaces, not only loopback." >&2
fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export RAY_USAGE_STATS_ENABLED=0

our_pids() {
    # PIDs of our processes (PATTERN) plus all their descendants; zombies left out. This script
    # and its ancestors are never included, even if a caller's command line names our temp dir
    # (e.g. `bash -c "cluster/local.sh stop; ls /tmp/raymmi-cluster-6390"`).
    local roots
    roots="$(pgrep -f -- "$PATTERN" || true)"
    [[ -n "$roots" ]] || return 0
    ps -eo pid=,ppid=,stat= | awk '$3 !~ /^Z/' | awk -v roots="$roots" -v self="$$" '
        BEGIN { n = split(roots, r, /[[:space:]]+/); for (i = 1; i <= n; i++) if (r[i] != "") keep[r[i]] = 1 }
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            for (p = self; p != "" && p != 0 && !(p in mine); p = parent[p]) mine[p] = 1
            for (p in mine) delete keep[p]
            changed = 1
            while (changed) {
                changed = 0
                for (i in pids) {
                    p = pids[i]
                    if (!(p in keep) && !(p in mine) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
                }
            }
            for (p in keep) print p
        }' | sort -n
}

head_running() {
    pgrep -f -- "gcs_server.*${TEMP_DIR}(/|[[:space:]]|\$)" >/dev/null 2>&1
}

port_busy() {
    # True if something accepts TCP connections on 127.0.0.1:$1 (Ray's servers listen on all
    # interfaces, so loopback sees them too).
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

print_addresses() {
    local auth_line="export RAY_AUTH_MODE=token"
    [[ "$RAY_AUTH_MODE" == token ]] || auth_line="(token auth is OFF: RAY_AUTH_MODE=${RAY_AUTH_MODE})"
    cat <<EOF
Ray cluster (head + ${1} worker node(s)), temp dir ${TEMP_DIR}
  GCS address     : 127.0.0.1:${PORT}   (ray.init(address="127.0.0.1:${PORT}"), ray status --address ...)
  dashboard / jobs: http://127.0.0.1:${DASHBOARD_PORT}   (ray job submit --address ..., JobSubmissionClient(...))
In the client's shell:
  ${auth_line}
  ray job submit --address http://127.0.0.1:${DASHBOARD_PORT} --working-dir . -- python jobs/<stage>.py --smoke-test
EOF
}

secs() {
    # Seconds between two `date +%s%N` stamps, with one decimal.
    local ds=$((($2 - $1) / 100000000))
    echo "$((ds / 10)).$((ds % 10))"
}

start() {
    if head_running; then
        echo "local.sh: already running"
        print_addresses "$(sed -n 's/^WORKERS=//p' "$STATE_FILE" 2>/dev/null || echo '?')"
        return 0
    fi
    # Leftovers of a crashed run (a raylet whose GCS died) would confuse the new cluster.
    stop_cluster quiet
    local p i
    for p in "$PORT" "$CLIENT_PORT" "$DASHBOARD_PORT" $(seq "$AGENT_BASE" $((AGENT_BASE + WORKERS))); do
        if port_busy "$p"; then
            echo "local.sh: port $p is in use; pick another --port / --dashboard-port" >&2
            return 1
        fi
    done
    mkdir -p "$TEMP_DIR"
    if [[ "$RAY_AUTH_MODE" == token ]]; then
        # Create the default token once; keep an existing one (other clusters of this user use it).
        ray get-auth-token --generate >/dev/null 2>"${TEMP_DIR}/get-auth-token.log" \
            || { cat "${TEMP_DIR}/get-auth-token.log" >&2; return 1; }
    fi

    local t0 th t1
    t0=$(date +%s%N)
    # --node-ip-address 127.0.0.1: states the intent; Ray 2.60 on Linux rewrites it (see header).
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
    th=$(date +%s%N)
    for ((i = 1; i <= WORKERS; i++)); do
        local gpus=0
        ((i == 1)) && gpus="$GPUS"
        ray start \
            --address "127.0.0.1:${PORT}" \
            --node-ip-address 127.0.0.1 \
            --num-cpus 1 --num-gpus "$gpus" \
            --object-store-memory "$OBJECT_STORE_MEMORY" \
            --temp-dir "${TEMP_DIR}/worker-${i}" \
            --dashboard-agent-listen-port "$((AGENT_BASE + i))" \
            --disable-usage-stats \
            >"${TEMP_DIR}/start-worker-${i}.log" 2>&1 \
            || { cat "${TEMP_DIR}/start-worker-${i}.log" >&2; stop_cluster quiet; return 1; }
    done
    t1=$(date +%s%N)
    printf 'PORT=%s\nDASHBOARD_PORT=%s\nWORKERS=%s\n' "$PORT" "$DASHBOARD_PORT" "$WORKERS" >"$STATE_FILE"
    echo "local.sh: started in $(secs "$t0" "$t1") s (head $(secs "$t0" "$th") s, ${WORKERS} worker(s) $(secs "$th" "$t1") s)"
    print_addresses "$WORKERS"
}

status() {
    if ! head_running; then
        echo "local.sh: not running (temp dir ${TEMP_DIR})"
        return 1
    fi
    print_addresses "$(sed -n 's/^WORKERS=//p' "$STATE_FILE" 2>/dev/null || echo '?')"
    # `ray status` is the autoscaler's summary, refreshed every few seconds: right after `start`
    # it may list only the head although every node is registered (ray.nodes() sees them all).
    echo
    ray status --address "127.0.0.1:${PORT}"
}

alive() {
    # The PIDs among "$@" that still run (zombies excluded: dead, only not yet reaped).
    local p st
    for p in "$@"; do
        st="$(ps -o stat= -p "$p" 2>/dev/null || true)"
        [[ -n "$st" && "$st" != Z* ]] && echo "$p"
    done
    return 0
}

term_wait() {
    # SIGTERM the PIDs "${@:2}", then wait up to $1 tenths of a second for them to exit.
    local tenths="$1" i
    shift
    [[ $# -gt 0 ]] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for ((i = 0; i < tenths; i++)); do
        [[ -z "$(alive "$@")" ]] && return 0
        sleep 0.1
    done
}

stop_cluster() {
    # `ray stop`'s order: raylets first (their agents and workers fate-share), then the other
    # processes, then the GCS; SIGTERM with a grace period per step, then SIGKILL what is left.
    # Exits 0 when nothing runs.
    local quiet="${1:-}" all p comm left
    local -a raylets=() others=() gcs=()
    all="$(our_pids)"
    if [[ -z "$all" ]]; then
        [[ -n "$quiet" ]] || echo "local.sh: nothing to stop (temp dir ${TEMP_DIR})"
        cleanup_temp_dir
        return 0
    fi
    # The PID set is taken once, up front: once a raylet is gone its workers are re-parented to
    # init and can no longer be found as its descendants.
    for p in $all; do
        comm="$(ps -o comm= -p "$p" 2>/dev/null || true)"
        case "$comm" in
            raylet) raylets+=("$p") ;;
            gcs_server) gcs+=("$p") ;;
            "") ;;
            *) others+=("$p") ;;
        esac
    done
    term_wait 50 "${raylets[@]}"
    # shellcheck disable=SC2046
    term_wait 50 $(alive "${others[@]}")
    # The GCS state is throwaway (no external Redis), and its graceful shutdown waits on a metrics
    # export to the agents stopped above (measured: ~9 s): 3 s of grace, then SIGKILL.
    term_wait 30 "${gcs[@]}"
    # shellcheck disable=SC2046,SC2086
    left="$(alive $all $(our_pids))"
    if [[ -n "$left" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
    fi
    cleanup_temp_dir
    if [[ -z "$quiet" ]]; then
        if [[ -n "$PURGE" ]]; then
            echo "local.sh: stopped (temp dir ${TEMP_DIR} deleted)"
        else
            echo "local.sh: stopped (logs kept under ${TEMP_DIR}; --purge deletes them)"
        fi
    fi
}

cleanup_temp_dir() {
    # Once nothing runs: drop the state file and the job environments (a `pip` runtime_env
    # clones the whole venv per node: ~2 GB here), keep the logs unless --purge.
    rm -f "$STATE_FILE"
    if [[ -n "$PURGE" ]]; then
        rm -rf "$TEMP_DIR"
    elif [[ -d "$TEMP_DIR" ]]; then
        find "$TEMP_DIR" -mindepth 2 -maxdepth 3 -type d -name runtime_resources -prune \
            -exec rm -rf {} + 2>/dev/null || true
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop_cluster ;;
    status) status ;;
    -h|--help) usage 0 ;;
    *) echo "local.sh: unknown command: $cmd" >&2; usage 2 ;;
esac
