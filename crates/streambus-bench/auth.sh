#!/usr/bin/env bash
# What authentication costs: the echo (100 streams, 1 KiB) and a fan-in (100
# publishers → 1 subscriber, 100 topics, 128 B) against two servers from the same
# release build, one with `[auth]` off and one with a token user whose role allows
# everything (so every publish and subscribe is checked), alternated for three rounds;
# then the server's instructions per echo under callgrind (20 streams, 8 s), which
# the machine's noise does not move. Loopback only; stops by itself.
#
#   bash crates/streambus-bench/auth.sh
#
# Results in target/auth-bench/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
out=target/auth-bench
mkdir -p "$out"
cargo build --release -q -p streambus -p streambus-bench
# shellcheck source=lib.sh
source "$here/lib.sh"
bin=target/release/streambus
bench=target/release/streambus-bench
token=$("$bin" passwd --token | awk '/^token:/ {print $2}')
hash=$(printf '%s' "$token" | sha256sum | awk '{print "sha256:" $1}')
cat >"$out/auth.toml" <<TOML
[auth]
enabled = true

[[auth.users]]
name = "bench"
token_hash = "$hash"
roles = ["bench"]

[[auth.roles]]
name = "bench"
publish = { allow = [">", "\$chat.>"] }
subscribe = { allow = [">", "\$chat.>"] }
TOML
summary='import json, sys; d = json.load(sys.stdin); print("%.0f msgs/s, p99 %s us" % (d["msgs_per_sec"], d["latency_us"]["p99"]))'
off=29091
on=29092
"$bin" serve --grpc-addr "127.0.0.1:$off" --no-admin >"$out/off.log" 2>&1 &
pid_off=$!
"$bin" serve --grpc-addr "127.0.0.1:$on" --no-admin --config "$out/auth.toml" >"$out/on.log" 2>&1 &
pid_on=$!
trap 'kill $pid_off $pid_on 2>/dev/null || true' EXIT
wait_port $off
wait_port $on
for round in 1 2 3; do
  echo "-- round $round"
  echo -n "echo    off: "; "$bench" echo --addr "127.0.0.1:$off" --conns 100 --size 1024 --duration 8 --json | python3 -c "$summary"
  echo -n "echo    on:  "; "$bench" --token "$token" echo --addr "127.0.0.1:$on" --conns 100 --size 1024 --duration 8 --json | python3 -c "$summary"
  echo -n "fan-in  off: "; "$bench" pubsub --addr "127.0.0.1:$off" --pubs 100 --subs 1 --topics 100 --size 128 --duration 8 --json | python3 -c "$summary"
  echo -n "fan-in  on:  "; "$bench" --token "$token" pubsub --addr "127.0.0.1:$on" --pubs 100 --subs 1 --topics 100 --size 128 --duration 8 --json | python3 -c "$summary"
done
kill -INT $pid_off $pid_on
wait $pid_off $pid_on 2>/dev/null || true
trap - EXIT

echo "-- instructions per echo (callgrind, server side, start-up included)"
for mode in off on; do
  port=$off; config=(); auth=()
  if [ $mode = on ]; then port=$on; config=(--config "$out/auth.toml"); auth=(--token "$token"); fi
  valgrind --tool=callgrind --callgrind-out-file="$out/callgrind-$mode.out" \
    "$bin" serve --grpc-addr "127.0.0.1:$port" --no-admin "${config[@]}" >"$out/callgrind-$mode.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  "$bench" "${auth[@]}" echo --addr "127.0.0.1:$port" --conns 20 --size 1024 --duration 8 --json >"$out/callgrind-$mode.json"
  kill -INT $pid
  wait $pid 2>/dev/null || true
  echoes=$(python3 -c "import json; print(json.load(open('$out/callgrind-$mode.json'))['messages'])")
  ir=$(callgrind_annotate "$out/callgrind-$mode.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
  echo "$mode: $echoes echoes, $ir instructions, $((ir / echoes)) per echo"
done
