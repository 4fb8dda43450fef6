#!/usr/bin/env bash
# Soak: a streambus server under 80 % of its measured maximum for a long time, with its
# RSS sampled and its log checked. Bounded: loopback only, stops by itself.
#
#   bash crates/streambus-bench/soak.sh                 # 10 minutes (the long mode)
#   bash crates/streambus-bench/soak.sh --seconds 60    # shorter
#
# First a 10 s closed-loop fan-in (4 publishers -> 2 subscribers, 256 B) measures the
# maximum delivered rate; then the same shape runs open loop at 80 % of it. Prints the
# RSS at the end of the first minute and at the end, the drift between them, and the
# count of ERROR lines the server logged; results in target/soak/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
seconds=600
[ "${1:-}" = "--seconds" ] && seconds=$2
out=target/soak
mkdir -p "$out"
cargo build --release -q -p streambus -p streambus-bench
# shellcheck source=lib.sh
source "$here/lib.sh"
bench=target/release/streambus-bench
port=29081

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

RUST_LOG=warn target/release/streambus serve --grpc-addr "127.0.0.1:$port" --admin-addr 127.0.0.1:0 >"$out/server.log" 2>&1 &
pid=$!
trap stop EXIT
wait_port "$port"

shape=(--pubs 4 --subs 2 --size 256 --topics 4 --batch 100)
$bench pubsub --addr "127.0.0.1:$port" "${shape[@]}" --duration 10 --json >"$out/max.json"
max=$(python3 -c 'import json; print(int(json.load(open("target/soak/max.json"))["msgs_per_sec"]))')
rate=$((max * 8 / 10 / 2)) # per published message (each reaches 2 subscribers)
echo "maximum: $max deliveries/s; soak at 80 %: $rate msgs/s published for $seconds s" >&2

$bench pubsub --addr "127.0.0.1:$port" "${shape[@]}" --rate "$rate" --duration "$seconds" --json >"$out/soak.json" &
load=$!
: >"$out/rss.txt"
elapsed=0
while kill -0 "$load" 2>/dev/null; do
  sleep 10
  elapsed=$((elapsed + 10))
  echo "$elapsed $(rss_kb $pid)" >>"$out/rss.txt"
done
wait "$load"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [tuple(map(int, l.split())) for l in open(f"{out}/rss.txt") if l.strip()]
first = next(kb for t, kb in rows if t >= 60) if any(t >= 60 for t, _ in rows) else rows[0][1]
last = rows[-1][1]
errors = sum(1 for l in open(f"{out}/server.log") if " ERROR " in l)
r = json.load(open(f"{out}/soak.json"))
print(json.dumps({
    "delivered_per_sec": round(r["msgs_per_sec"]),
    "latency_us": r.get("latency_us"),
    "rss_mb_after_1_min": round(first / 1024, 1),
    "rss_mb_at_end": round(last / 1024, 1),
    "rss_drift_percent": round((last - first) * 100 / first, 1),
    "server_error_lines": errors,
}, indent=2))
PY
