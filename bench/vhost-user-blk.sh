#!/usr/bin/env bash
# vhost-user-blk exports side by side: oxemu-storage-daemon vs qemu-storage-daemon 7.2,
# same 1 GiB image on tmpfs, same run, driven by the blkio crate's
# virtio-blk-vhost-user driver (bench/blkio-bench, no guest). 4 KiB random reads and
# writes at QD32 per queue, with 1 and 2 queues. Also reports each server's CPU time
# per request (utime+stime from /proc over the run / requests).
# Usage: bench/vhost-user-blk.sh [SECONDS]   (env RUNS, default 3: best of RUNS;
#        DIR=/path/on/ext4 puts the image there instead of tmpfs, read once first so
#        that it sits in the page cache, as users' images do)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
RUNS=${RUNS:-3}
cargo build --release -q -p oxemu-storage-daemon
(cd bench/blkio-bench && cargo build --release -q)
CLIENT=bench/blkio-bench/target/release/blkio-bench
dir=$(mktemp -d "${DIR:-/dev/shm}/oxemu-vub.XXXXXX")
trap 'kill $srv 2>/dev/null || true; rm -rf "$dir"' EXIT
img=$dir/disk.img
head -c 1G /dev/urandom > "$img"
cat "$img" > /dev/null
fs=$(stat -f -c %T "$dir")
hz=$(getconf CLK_TCK)

start() { # oxemu|qemu -> sets srv
    rm -f "$dir/sock"
    local common=(--blockdev "driver=file,node-name=f0,filename=$img,aio=io_uring"
        --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$dir/sock,num-queues=2,writable=on")
    if [ "$1" = oxemu ]; then
        target/release/oxemu-storage-daemon "${common[@]}" & srv=$!
    else
        qemu-storage-daemon "${common[@]}" & srv=$!
    fi
    for _ in $(seq 100); do [ -S "$dir/sock" ] && return; sleep 0.05; done
    echo "server did not start" >&2; exit 1
}
cpu() { awk '{print $14 + $15}' "/proc/$srv/stat"; }

declare -A IOPS CPU
for server in oxemu qemu; do
    start $server
    for q in 1 2; do
        for rw in read write; do
            best=0; bestcpu=0
            for _ in $(seq "$RUNS"); do
                c0=$(cpu)
                read -r iops reqs < <("$CLIENT" "$dir/sock" $q 32 $rw "$SECS")
                c1=$(cpu)
                if [ "$iops" -gt "$best" ]; then
                    best=$iops
                    bestcpu=$(awk -v t=$((c1 - c0)) -v hz="$hz" -v r="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / r}')
                fi
            done
            IOPS[$server,$q,$rw]=$best; CPU[$server,$q,$rw]=$bestcpu
        done
    done
    kill $srv; wait $srv 2>/dev/null || true
done

echo "vhost-user-blk, 1 GiB image on $fs (page cache), aio=io_uring, 4 KiB random I/O, QD32 per queue, ${SECS}s, best of $RUNS"
printf '%-7s %-6s %-10s %-10s %-8s %-16s %s\n' queues rw oxemu qemu ratio "oxemu CPU us/req" "qemu CPU us/req"
for q in 1 2; do
    for rw in read write; do
        printf '%-7s %-6s %-10s %-10s %-8s %-16s %s\n' $q $rw "${IOPS[oxemu,$q,$rw]}" "${IOPS[qemu,$q,$rw]}" \
            "$(awk -v a="${IOPS[oxemu,$q,$rw]}" -v b="${IOPS[qemu,$q,$rw]}" 'BEGIN {printf "%.2f", a / b}')" \
            "${CPU[oxemu,$q,$rw]}" "${CPU[qemu,$q,$rw]}"
    done
done
