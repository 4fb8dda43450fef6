#!/usr/bin/env bash
# Side-by-side runs on loopback: streambus against the raw tonic baseline (with tonic's
# HTTP/2 defaults, and with streambus's own settings: "tonic-bus"), the article's Go
# server (grpc-go) and nats-server, each pair alternated A B A B, with the ratio of
# each pair. Bounded: every run lasts --duration seconds (default 10), servers are
# started fresh for each run (so peak RSS is that run's) and stopped after it.
#
#   bash crates/streambus-bench/compare.sh            # 10 s runs (about 20 minutes)
#   bash crates/streambus-bench/compare.sh --quick    # 3 s runs
#
# It ends with devices.sh (device fan-in over 100, 1k and 10k devices, against
# nats-server), which records the scaling curve in target/devices/.
#
# Needs: python3 (the summary); builds the release binaries, the Go server
# (peers/go-echo/build.sh, Debian packages) and installs nats-server with apt if
# missing. Results: target/compare/results.jsonl and the table printed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

duration=10
[ "${1:-}" = "--quick" ] && duration=3
out=target/compare
mkdir -p "$out"
: >"$out/results.jsonl"

cargo build --release -q -p streambus -p streambus-bench
go_echo=$(bash "$here/peers/go-echo/build.sh")
# shellcheck source=lib.sh
source "$here/lib.sh"
nats_bin=$(nats_bin)
bench=target/release/streambus-bench

trap stop EXIT

# start NAME: starts that server in the background, sets $pid and $port.
start() {
  case $1 in
    streambus) port=50061; RUST_LOG=warn target/release/streambus serve --grpc-addr "127.0.0.1:$port" --admin-addr 127.0.0.1:0 >/dev/null & ;;
    tonic) port=50062; $bench baseline-server --addr "127.0.0.1:$port" >/dev/null & ;;
    tonic-bus) port=50064; $bench baseline-server --bus-transport --addr "127.0.0.1:$port" >/dev/null & ;;
    grpc-go) port=50063; "$go_echo" -addr "127.0.0.1:$port" >/dev/null & ;;
    nats) port=4333; "$nats_bin" -a 127.0.0.1 -p "$port" >/dev/null 2>&1 & ;;
  esac
  pid=$!
  wait_port "$port"
}

# run LABEL SERVER WORKLOAD ARGS...: one measured run against a fresh server.
run() {
  local label=$1 server=$2 workload=$3
  shift 3
  start "$server"
  local target=()
  [ "$server" = nats ] && target=(--target nats)
  $bench "$workload" --addr "127.0.0.1:$port" "${target[@]}" --server-pid "$pid" --json "$@" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"], r["server"], r["pair"], r["subs"] = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]); print(json.dumps(r))' "$label" "$server" "$current_pair" "$(subs_of "$@")" \
      >>"$out/results.jsonl"
  stop
  echo "  $label $server done" >&2
}

# subs_of ARGS...: the --subs value among a workload's arguments (1 if none).
subs_of() {
  local subs=1
  while [ $# -gt 0 ]; do
    [ "$1" = --subs ] && subs=$2
    shift
  done
  echo "$subs"
}

# pair LABEL A B WORKLOAD ARGS...: A B A B.
current_pair=""
pair() {
  local label=$1 a=$2 b=$3
  shift 3
  current_pair="$label: $a vs $b"
  echo "$label: $a vs $b" >&2
  for _ in 1 2; do
    run "$label" "$a" "$@"
    run "$label" "$b" "$@"
  done
}

echo1k=(echo --conns 100 --size 1024 --duration "$duration")
echo4k=(echo --conns 100 --size 4096 --duration "$duration")
pair "echo 1KB x100" streambus tonic "${echo1k[@]}"
pair "echo 1KB x100" streambus tonic-bus "${echo1k[@]}"
pair "echo 1KB x100" streambus grpc-go "${echo1k[@]}"
pair "echo 4KB x100" streambus tonic "${echo4k[@]}"
# Cost per stream: the same small echo over 100 and 10,000 streams (one connection
# each), against raw tonic with the bus's HTTP/2 settings; "cpu µs" is the server's CPU
# per echo over the measured phase, its growth from 100 to 10,000 the per-stream cost.
pair "echo 128B x100" streambus tonic-bus echo --conns 100 --size 128 --duration "$duration"
pair "echo 128B x10000" streambus tonic-bus echo --conns 10000 --size 128 --duration "$duration"
pair "echo 4KB x100" streambus grpc-go "${echo4k[@]}"
pair "fan-in 1KB 10->1" streambus nats pubsub --pubs 10 --subs 1 --size 1024 --batch 100 --duration "$duration"
pair "fan-out 1KB 1->10" streambus nats pubsub --pubs 1 --subs 10 --size 1024 --batch 100 --duration "$duration"
# Open loop: the same fan-in offered at a fixed rate, below and above what one
# subscriber can take; "delivered" tells who keeps everything.
for rate in 400000 600000; do
  pair "fan-in 10->1 @${rate}/s" streambus nats pubsub --pubs 10 --subs 1 --size 1024 --batch 100 --rate "$rate" --duration "$duration"
done

python3 - "$out/results.jsonl" <<'PY'
import json, sys
from collections import defaultdict
runs = defaultdict(list)
pairs = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[(r["label"], r["server"])].append(r)
    pairs[r["pair"]][r["server"]].append(r)
def mean(xs): return sum(xs) / len(xs)
print(f"{'workload':<24} {'server':<10} {'msgs/s (runs)':<36} {'p99 µs':>9} {'peak RSS MB':>12} {'delivered':>10} {'cpu µs':>7}")
for (label, server), rs in runs.items():
    rates = [r["msgs_per_sec"] for r in rs]
    rss = [r.get("server_peak_rss_bytes", 0) / 1e6 for r in rs]
    errs = sum(len(r.get("errors", [])) for r in rs)
    shown = " / ".join(f"{x:,.0f}" for x in rates)
    # Every subscriber should get every published message.
    expected = sum(r.get("published_messages", r["messages"]) * r.get("subs", 1) for r in rs)
    delivered = f"{100 * sum(r['messages'] for r in rs) / expected:.1f}%" if expected else "-"
    cpu = [r["server_cpu_us_per_msg"] for r in rs if r.get("server_cpu_us_per_msg") is not None]
    cpu = f"{mean(cpu):.1f}" if cpu else "-"
    print(f"{label:<24} {server:<10} {shown:<36} {mean([r['latency_us']['p99'] for r in rs]):>9.0f} {max(rss):>12.1f} {delivered:>10} {cpu:>7}" + (f"  errors: {errs}" if errs else ""))
print()
print("ratios (streambus / peer, mean of the runs alternated with that peer):")
for pair, by_server in pairs.items():
    ours = by_server.get("streambus", [])
    for server, rs in by_server.items():
        if server == "streambus" or not ours:
            continue
        r_rate = mean([r["msgs_per_sec"] for r in ours]) / mean([r["msgs_per_sec"] for r in rs])
        r_rss = max(r.get("server_peak_rss_bytes", 0) for r in ours) / max(1, max(r.get("server_peak_rss_bytes", 0) for r in rs))
        label = ours[0]["label"]
        print(f"  {label:<24} vs {server:<9} throughput {r_rate:5.2f}x   peak RSS {r_rss:5.2f}x")
PY

# The scaling curve: device fan-in over a sweep of device counts, against nats-server.
echo
echo "device fan-in (crates/streambus-bench/devices.sh):"
bash "$here/devices.sh" --duration "$duration"
