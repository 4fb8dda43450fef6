#!/usr/bin/env bash
# Builds go-echo (the article's Go server) offline from Debian packages, in GOPATH mode:
# golang-go, golang-google-grpc-dev, golang-goprotobuf-dev (protoc-gen-go with the grpc
# plugin) and protobuf-compiler, installed with apt when missing.
#
#   bash crates/streambus-bench/peers/go-echo/build.sh   # prints the binary's path
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
out=$root/target/go-echo

need=()
command -v go >/dev/null || need+=(golang-go)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v protoc-gen-go >/dev/null || need+=(golang-goprotobuf-dev)
[ -d /usr/share/gocode/src/google.golang.org/grpc ] || need+=(golang-google-grpc-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -q "${need[@]}" >&2 || {
    $sudo apt-get update -q >&2
    $sudo apt-get install -y -q "${need[@]}" >&2
  }
fi

gopath=$out/gopath
pkg=$gopath/src/goecho
rm -rf "$gopath"
mkdir -p "$pkg/stream"
cp "$here/main.go" "$pkg/"
protoc --proto_path="$root/proto/stream" --go_out=plugins=grpc:"$pkg/stream" chat.proto
export GOPATH=$gopath:/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE=$out/cache
(cd "$pkg" && go build -o "$out/go-echo" .)
echo "$out/go-echo"
