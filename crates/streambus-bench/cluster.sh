#!/usr/bin/env bash
# What the backplane costs: a fan-in (publishers → one subscriber, 100 topics, 128 B)
# on a lone node, on node A of a federated pair with the subscriber on A too, and with
# the publishers on A and the subscriber on C (three private nats-servers in a cluster
# on loopback, A and C each on its own server), alternated for three rounds; then the
# same fan-in straight through nats-server (publishers on server 1, the subscriber on
# server 3) as the peer: what NATS alone does across its own cluster. Each twice:
# closed loop (throughput) and open loop at 20,000 msgs/s (the latency the backplane
# adds, below saturation). Loopback only; stops by itself.
#
#   bash crates/streambus-bench/cluster.sh [seconds per run, default 8] [publishers, default 20]
#
# Results in target/cluster-bench/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
secs=${1:-8}
pubs=${2:-20}
out=target/cluster-bench
rm -rf "$out"
mkdir -p "$out"
cargo build --release -q -p streambus -p streambus-bench
# shellcheck source=lib.sh
source "$here/lib.sh"
nats=$(nats_bin)
bin=target/release/streambus
bench=target/release/streambus-bench
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
routes=nats://127.0.0.1:29621,nats://127.0.0.1:29622,nats://127.0.0.1:29623
for i in 1 2 3; do
  "$nats" -a 127.0.0.1 -p "2942$i" -n "n$i" --cluster_name bench --cluster "nats://127.0.0.1:2962$i" \
    --routes "$routes" -js -sd "$out/n$i" -l "$out/n$i.log" &
  pids+=($!)
done
for i in 1 2 3; do wait_port "2942$i"; done
urls() { echo "nats://127.0.0.1:2942$1,nats://127.0.0.1:2942$2,nats://127.0.0.1:2942$3"; }
"$bin" serve --grpc-addr 127.0.0.1:29501 --no-admin --cluster "$(urls 1 2 3)" --node a >"$out/a.log" 2>&1 &
pids+=($!)
"$bin" serve --grpc-addr 127.0.0.1:29503 --no-admin --cluster "$(urls 3 1 2)" --node c >"$out/c.log" 2>&1 &
pids+=($!)
"$bin" serve --grpc-addr 127.0.0.1:29500 --no-admin >"$out/alone.log" 2>&1 &
pids+=($!)
for p in 29500 29501 29503; do wait_port $p; done
sleep 1
summary='import json, sys; d = json.load(sys.stdin); print("%8.0f msgs/s delivered, p50 %7s us, p99 %8s us" % (d["msgs_per_sec"], d["latency_us"]["p50"], d["latency_us"]["p99"]))'
run() {
  "$bench" pubsub "$@" --pubs "$pubs" --subs 1 --topics 100 --size 128 --duration "$secs" --json | python3 -c "$summary"
}
for round in 1 2 3; do
  for load in "closed loop" "--rate 20000"; do
    extra=()
    [ "$load" = "closed loop" ] || extra=($load)
    echo "-- round $round, $load"
    echo -n "lone node              "; run --addr 127.0.0.1:29500 "${extra[@]}"
    echo -n "node a, in the cluster "; run --addr 127.0.0.1:29501 "${extra[@]}"
    echo -n "across nodes, a -> c   "; run --addr 127.0.0.1:29501 --sub-addr 127.0.0.1:29503 "${extra[@]}"
    echo -n "nats-server, 1 -> 3    "; run --target nats --addr 127.0.0.1:29421 --sub-addr 127.0.0.1:29423 "${extra[@]}"
  done
done
