#!/usr/bin/env bash
# Starts N agents on this machine, all on one private discovery port, runs
# `codara-agent discover --timeout 1` and checks that it lists every one of them; then stops
# them all. Usage: scripts/fleet.sh N   (e.g. 1000; ~1.3 MB of memory and 16 threads each)
#
# Loopback only: every agent binds 127.0.0.1 and sends discovery packets to
# 127.255.255.255 on a private port, and so does `discover`.
# Environment: BIN (default target/release/codara-agent, built if missing), DISCOVER_BIN
# (the binary that runs `discover`, default BIN: to compare builds), DISCOVERY_PORT (default:
# a free one), TIMEOUT (discover's --timeout, default 1), KEEP=1 keeps the temporary
# directory (the agents' logs) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:?usage: scripts/fleet.sh N}
[[ $n =~ ^[0-9]+$ && $n -ge 1 ]] || { echo "fleet.sh: N must be a positive number, not '$n'" >&2; exit 2; }
for tool in jq ss; do
    command -v $tool >/dev/null || { echo "fleet.sh: needs $tool (apt-get install jq iproute2)" >&2; exit 2; }
done
bin=${BIN:-target/release/codara-agent}
if [ ! -x "$bin" ]; then cargo build --release --bin codara-agent; fi
bin=$(realpath "$bin")
discover_bin=$(realpath "${DISCOVER_BIN:-$bin}")
timeout=${TIMEOUT:-1}

# A free UDP port, not an ephemeral one another program may be given meanwhile.
port=${DISCOVERY_PORT:-}
while [ -z "$port" ]; do
    p=$((20000 + RANDOM % 12000))
    if [ -z "$(ss -Hlun "sport = :$p")" ]; then port=$p; fi
done

dir=$(mktemp -d -t codara-fleet.XXXXXX)
pids=()
# No agent outlives the script: TERM to each (by pid), then KILL what is left. Each agent
# also gets SIGKILL from the kernel if this shell dies without running the trap (setpriv).
cleanup() {
    trap - EXIT INT TERM
    if [ ${#pids[@]} -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "${pids[@]}" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "fleet.sh: logs kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pdeath=()
if setpriv --pdeathsig KILL true 2>/dev/null; then pdeath=(setpriv --pdeathsig KILL); fi

# Frugal agents: one task slot, a short history, small output tails; announcements and stats
# far apart, so discover finds them by its probe, not by what they broadcast anyway.
agent_env=(
    env -i PATH="$PATH" RUST_LOG=info
    CLUSTER_SECRET=fleet-secret-0123456789abcdef CLUSTER_PORT=0 BIND_ADDRESS=127.0.0.1
    DISCOVERY_ENABLED=true DISCOVERY_PORT="$port" DISCOVERY_ADDRESSES=127.255.255.255
    ANNOUNCE_INTERVAL=3600000 STATS_INTERVAL=3600000
    MAX_CONCURRENT_TASKS=1 TASK_HISTORY=10 MAX_OUTPUT_BYTES=4096
)
echo "fleet.sh: starting $n agents ($bin) on UDP port $port, files in $dir"
t0=$(date +%s%N)
for i in $(seq "$n"); do
    mkdir -p "$dir/$i"
    (cd "$dir/$i" && exec "${pdeath[@]}" "${agent_env[@]}" DATA_DIR="$dir/$i/data" "$bin" >"$dir/$i/log" 2>&1) &
    pids+=($!)
done

# Up = its discovery socket is bound (that line comes after the HTTP port's).
deadline=$(($(date +%s) + 60 + n / 10))
while :; do
    up=$(grep -l -s 'discovery: UDP port' "$dir"/*/log | wc -l)
    [ "$up" -ge "$n" ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "fleet.sh: only $up of $n agents started; first failures:" >&2
        grep -L -s 'discovery: UDP port' "$dir"/*/log | head -3 | xargs -r tail -n 3 >&2
        exit 1
    fi
    sleep 0.5
done
echo "fleet.sh: $n agents up in $((($(date +%s%N) - t0) / 1000000)) ms"
# Resident memory counts the binary's shared pages in full for each; PSS shares them out.
mem() { for p in "${pids[@]}"; do awk -v k="$1:" '$1 == k {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null; done \
    | awk '{s+=$1} END {if (NR) printf "%d", s/NR}'; }
echo "fleet.sh: memory per agent: $(mem Rss) KiB resident, $(mem Pss) KiB proportional (PSS)"
# Let the start-up announcements (n of them, each heard by n sockets) settle.
sleep 2

expected=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$dir"/*/log | sort -u)
# Datagrams the kernel dropped for a full receive buffer (host-wide, so others' count too).
rcvbuf_errors() { awk '/^Udp:/ && ++n == 2 {print $6}' /proc/net/snmp; }
drops=$(rcvbuf_errors)
t1=$(date +%s%N)
if ! "${agent_env[@]}" "$discover_bin" discover --timeout "$timeout" --json >"$dir/discover.json" 2>"$dir/discover.err"; then
    echo "fleet.sh: discover failed:" >&2
    cat "$dir/discover.err" >&2
    exit 1
fi
took=$((($(date +%s%N) - t1) / 1000000))
drops=$(($(rcvbuf_errors) - drops))
listed=$(jq -r '.[].address | sub(".*:"; "")' "$dir/discover.json" | sort -u)
found=$(comm -12 <(echo "$expected") <(echo "$listed") | wc -l)
answered=$(jq '[.[] | select(.answeredProbe)] | length' "$dir/discover.json")
# The last reply came this long after the probe (discover probes as it starts).
last=$(jq --argjson t "$timeout" '[.[].secondsSinceSeen] | min // $t | $t - . | . * 1000 | round' "$dir/discover.json")
echo "fleet.sh: discover --timeout $timeout ran $took ms, listed $found of $n agents ($answered answered the probe; the last ~$last ms after it); $drops datagrams dropped by full receive buffers meanwhile"
if [ -s "$dir/discover.err" ]; then sed 's/^/discover: /' "$dir/discover.err" >&2; fi
if [ "$found" -ne "$n" ]; then
    echo "fleet.sh: FAILED: $((n - found)) agents not listed" >&2
    exit 1
fi
echo "fleet.sh: OK"
