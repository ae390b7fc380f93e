#!/usr/bin/env bash
# Times `oxemu-img check` against `qemu-img check` on the same image: 4 GiB with
# 512-byte clusters (8 M clusters), every cluster allocated.
#   bench/check.sh [DIR] [fill]
# DIR defaults to /dev/shm. The image is made with preallocation=metadata (every L2
# entry set, data sparse); with "fill", it is written with qemu-io instead (data
# clusters interleaved with L2 tables as a guest would leave them; slow to build).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/dev/shm}
img="$dir/oxemu-check-bench.qcow2"
cargo build --release -q -p oxemu-img
if [ "${2:-}" = fill ]; then
    qemu-img create -q -f qcow2 -o cluster_size=512 "$img" 4G
    qemu-io -c 'write -P 1 0 1G' -c 'write -P 2 1G 1G' -c 'write -P 3 2G 1G' \
        -c 'write -P 4 3G 1G' "$img" >/dev/null
else
    qemu-img create -q -f qcow2 -o cluster_size=512,preallocation=metadata "$img" 4G
fi
trap 'rm -f "$img"' EXIT
target/release/oxemu-img check "$img"
farm-bench -n 5 --timeout 600 --vs "qemu-img check $img" -- target/release/oxemu-img check "$img"
