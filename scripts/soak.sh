#!/usr/bin/env bash
# Long soak run: the same code as the CI soak (`cargo test --test soak`, tests/soak.rs), in a
# release build, for as many minutes as asked. It prints a summary at the end and fails on the
# first check that does not hold. Everything stays on 127.0.0.1 (discovery on a private port,
# announcements to 127.255.255.255), is bounded in time, and stops by itself.
#
#   scripts/soak.sh --minutes 60                 # an hour at the CI soak's settings
#   scripts/soak.sh --minutes 30 --ping-ms 30000 # the agent's default ping interval
#
# The output also goes to target/soak-<date>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: scripts/soak.sh [--minutes N] [--ping-ms MS] [--submitters N] [--max-tasks N]
                       [--pause-ms MS] [--rss-mib N]
  --minutes N      how long the workload runs (default 30); SOAK_SECONDS=N*60
  --ping-ms MS     the agent's WS_PING_INTERVAL (default 2000); with 3 intervals longer than
                   the run, the client that answers no ping must last the whole run
  --submitters N   task submitters, 1-8 (default 5)
  --max-tasks N    the agent's MAX_CONCURRENT_TASKS, 1-8 (default 4)
  --pause-ms MS    how long the agent is stopped once (SIGSTOP/SIGCONT), 0 = never (default 500)
  --rss-mib N      the bound on the agent's RSS (default 64)
EOF
}

need_value() {
    [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "soak.sh: $1 needs a whole number" >&2; usage >&2; exit 2; }
}

minutes=30
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) need_value "$@"; minutes=$2 ;;
        --ping-ms) need_value "$@"; export SOAK_PING_MS=$2 ;;
        --submitters) need_value "$@"; export SOAK_SUBMITTERS=$2 ;;
        --max-tasks) need_value "$@"; export SOAK_MAX_TASKS=$2 ;;
        --pause-ms) need_value "$@"; export SOAK_PAUSE_MS=$2 ;;
        --rss-mib) need_value "$@"; export SOAK_RSS_MIB=$2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "soak.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift 2
done
if [ "$minutes" -lt 1 ]; then
    echo "soak.sh: --minutes must be at least 1" >&2
    exit 2
fi
export SOAK_SECONDS=$((minutes * 60))

mkdir -p target
log="target/soak-$(date +%Y%m%d-%H%M%S).log"
echo "soak.sh: ${minutes} min; output also in $log"
cargo test --release --test soak -- --nocapture 2>&1 | tee "$log"
