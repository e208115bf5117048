#!/usr/bin/env bash
# Runs the codara-agent performance benchmark (scripts/bench/agent.rs) and writes
# target/bench-report.md. Loopback only: every agent it starts binds 127.0.0.1 and
# broadcasts discovery to 127.255.255.255 on a private port. A run takes about 80 s (its
# budget is 270 s). Arguments go to the bench:
#   scripts/bench.sh --runs 3            three runs (3 x that), and the spread of figures 1, 2, 3, 3b, 7
#   scripts/bench.sh --only 1,3 --quick  those figures, reduced counts (to check the bench itself)
set -euo pipefail
cd "$(dirname "$0")/.."

# 1,000 WebSocket clients need ~1,100 descriptors in the bench and in the agent it starts
# (the agent inherits this limit).
want=8192
hard=$(ulimit -Hn)
if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
ulimit -n "$want" 2>/dev/null || echo "bench.sh: could not raise the open-file limit (now $(ulimit -n))" >&2

cargo build --release --bin codara-agent
exec cargo bench --bench agent -- "$@"
