#!/usr/bin/env bash
# Device fan-in against streambus and nats-server, alternated, over a sweep of device
# counts: N device streams connect at once, each publishes 10 msgs/s (128 B) round
# robin over 4 topics `sensors.<device>.m<k>`, one subscriber takes `sensors.>`.
# Servers are started fresh for each run (so peak RSS is that run's). Bounded:
# loopback only, every run lasts --duration seconds and stops by itself.
#
#   bash crates/streambus-bench/devices.sh                       # 100, 1k, 10k devices, 10 s runs
#   bash crates/streambus-bench/devices.sh --duration 5 --sweep "1000 10000"
#   bash crates/streambus-bench/devices.sh --total 20000 --sweep "100 10000"   # same load, more devices
#
# `--total R` shares R msgs/s among however many devices a run has (R/N each), so the
# sweep changes only the number of streams: the server's CPU per message at 100 and at
# 10,000 devices then measures what a stream costs, not how busy the server is.
# Results: target/devices/results.jsonl and the table printed at the end. Ports are
# below the ephemeral range: with thousands of connections a client socket may hold
# any port in it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
duration=10
sweep="100 1000 10000"
rate=10
total=
while [ $# -gt 0 ]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --sweep) sweep=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --total) total=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
out=target/devices
mkdir -p "$out"
: >"$out/results.jsonl"
# Every device is a connection, on both ends.
ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p streambus -p streambus-bench
# shellcheck source=lib.sh
source "$here/lib.sh"
nats_bin=$(nats_bin)
bench=target/release/streambus-bench

trap stop EXIT

for n in $sweep; do
  if [ -n "$total" ]; then
    rate=$(python3 -c 'import sys; print(float(sys.argv[1]) / int(sys.argv[2]))' "$total" "$n")
  fi
  for _ in 1 2; do
    for server in streambus nats; do
      case $server in
        streambus) port=29065; RUST_LOG=warn target/release/streambus serve --grpc-addr "127.0.0.1:$port" --admin-addr 127.0.0.1:0 >/dev/null & ;;
        nats) port=4334; "$nats_bin" -a 127.0.0.1 -p "$port" >/dev/null 2>&1 & ;;
      esac
      pid=$!
      wait_port "$port"
      $bench devices --target "$server" --addr "127.0.0.1:$port" --devices "$n" --rate "$rate" --metrics 4 \
        --subs 1 --size 128 --duration "$duration" --server-pid "$pid" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r["server"]=sys.argv[1]; print(json.dumps(r))' "$server" \
          >>"$out/results.jsonl"
      stop
      echo "  $n devices: $server done" >&2
    done
  done
done

python3 - "$out/results.jsonl" <<'PY'
import json, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[(r["devices"], r["server"])].append(r)
def mean(xs): return sum(xs) / len(xs)
print(f"{'devices':>8} {'server':<10} {'connect s':>9} {'delivered/s':>12} {'of sent':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'RSS MB':>8} {'CPU µs/msg':>10}")
for (n, server), rs in sorted(runs.items()):
    got = sum(r["delivered"] for r in rs) / max(1, sum(r["expected"] for r in rs))
    print(f"{n:>8} {server:<10} {mean([r['connect_seconds'] for r in rs]):>9.2f} {mean([r['delivered_per_sec'] for r in rs]):>12,.0f} {100*got:>7.1f}% "
          f"{mean([r['latency_us']['p50'] for r in rs])/1000:>8.1f} {mean([r['latency_us']['p99'] for r in rs])/1000:>8.1f} "
          f"{mean([r['latency_us']['p999'] for r in rs])/1000:>9.1f} {max(r['server_peak_rss_mb'] or 0 for r in rs):>8.0f} "
          f"{mean([r['server_cpu_us_per_msg'] or 0 for r in rs]):>10.1f}")
print()
for n in sorted({n for n, _ in runs}):
    a, b = runs.get((n, "streambus")), runs.get((n, "nats"))
    if a and b:
        print(f"{n:>8} devices: delivered {mean([r['delivered_per_sec'] for r in a]) / mean([r['delivered_per_sec'] for r in b]):.2f}x nats, "
              f"p99 {mean([r['latency_us']['p99'] for r in a]) / 1000:.1f} ms vs {mean([r['latency_us']['p99'] for r in b]) / 1000:.1f} ms")
PY
