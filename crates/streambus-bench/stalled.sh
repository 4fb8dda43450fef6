#!/usr/bin/env bash
# The long form of the stalled-subscriber run: for each overflow policy, a fresh
# streambus server with a 64 MiB memory budget, one subscriber that never reads on
# `load.>` over 200 topics, and 50 publishers at full speed (1 KiB payloads) for 60 s.
# The server's RSS is sampled every second. Bounded: loopback only, stops by itself.
#
#   bash crates/streambus-bench/stalled.sh                 # 60 s per policy
#   bash crates/streambus-bench/stalled.sh --seconds 10    # shorter
#
# Prints one JSON line per policy (published, RSS before / peak / at the end) and the
# count of ERROR lines in the server's log; results in target/stalled/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
seconds=60
[ "${1:-}" = "--seconds" ] && seconds=$2
out=target/stalled
mkdir -p "$out"
cargo build --release -q -p streambus -p streambus-bench
# shellcheck source=lib.sh
source "$here/lib.sh"
trap stop EXIT
bench=target/release/streambus-bench
port=29083
budget=$((64 * 1024 * 1024))
cat >"$out/streambus.toml" <<TOML
[grpc]
addr = "127.0.0.1:$port"

[limits]
max_memory_bytes = $budget
TOML

for policy in block drop_oldest drop_newest disconnect; do
  RUST_LOG=warn target/release/streambus serve --config "$out/streambus.toml" --admin-addr 127.0.0.1:0 >"$out/server-$policy.log" 2>&1 &
  pid=$!
  wait_port "$port"
  $bench stalled --addr "127.0.0.1:$port" --policy "$policy" --pubs 50 --topics 200 --size 1024 \
    --duration "$seconds" --server-pid "$pid" >"$out/$policy.json"
  stop
  python3 - "$out" "$policy" "$budget" <<'PY'
import json, sys
out, policy, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(f"{out}/{policy}.json"))
errors = sum(1 for l in open(f"{out}/server-{policy}.log") if " ERROR " in l)
r["budget_mb"] = budget / 2**20
r["error_lines"] = errors
print(json.dumps(r))
PY
done
