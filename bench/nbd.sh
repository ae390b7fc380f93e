#!/bin/bash
# NBD benchmark: fio's nbd engine, 4 KiB random reads and writes at QD1 and QD32,
# against oxemu-nbd and qemu-storage-daemon's NBD export of the same image, in one
# run; with the image on tmpfs, on the work disk in the page cache (ext4, read once
# first, cache=writeback: where users' images live), and on the work disk with
# cache=none (O_DIRECT).
#
# Usage: bench/nbd.sh [RUNTIME_SECONDS]    (env: SIZE=256M, REPEAT=1, WORKDIR=...)
# Needs: fio (with the nbd engine), qemu-storage-daemon 7.2, a release build of
# oxemu-nbd (built here with `cargo build --release -p oxemu-nbd`).
set -euo pipefail
RUNTIME=${1:-5}
SIZE=${SIZE:-256M}
REPEAT=${REPEAT:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -q -p oxemu-nbd --manifest-path "$ROOT/Cargo.toml"
OXNBD=$TARGET/release/oxemu-nbd
TMPFS_DIR=$(mktemp -d /dev/shm/oxemu-nbd-bench.XXXXXX)
mkdir -p "${WORKDIR:-$TARGET}"
DISK_DIR=$(mktemp -d "${WORKDIR:-$TARGET}/oxemu-nbd-bench.XXXXXX")
SRV_PID=
cleanup() {
    [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null || true
    rm -rf "$TMPFS_DIR" "$DISK_DIR"
}
trap cleanup EXIT

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

# start_server KIND DIR CACHE: starts the server, sets SRV_PID and SOCK.
start_server() {
    local kind=$1 dir=$2 cache=$3
    SOCK=$dir/$kind.sock
    rm -f "$SOCK"
    if [ "$kind" = oxemu ]; then
        "$OXNBD" -t -e 0 -x disk -f raw -k "$SOCK" --cache="$cache" --aio=io_uring "$dir/img.raw" &
    else
        local direct=off
        [ "$cache" = none ] && direct=on
        qemu-storage-daemon \
            --blockdev driver=file,node-name=f0,filename="$dir/img.raw",aio=io_uring,cache.direct=$direct \
            --nbd-server addr.type=unix,addr.path="$SOCK" \
            --export type=nbd,id=e0,node-name=f0,name=disk,writable=on &
    fi
    SRV_PID=$!
    wait_sock "$SOCK"
}

stop_server() { kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=; }

# run_fio RW QD -> IOPS
run_fio() {
    fio --name=nbd --ioengine=nbd --uri="nbd+unix:///disk?socket=$SOCK" \
        --rw="$1" --bs=4k --iodepth="$2" --runtime="$RUNTIME" --time_based \
        --output-format=json 2>/dev/null |
        python3 -c 'import sys,json; t=sys.stdin.read(); j=json.loads(t[t.index("{"):]); job=j["jobs"][0]; print(int(job["read"]["iops"]+job["write"]["iops"]))'
}

printf '%-8s %-10s %-4s %12s %12s %7s\n' storage workload qd oxemu_iops qsd_iops ratio
for storage in tmpfs pagecache disk; do
    case $storage in
        tmpfs) dir=$TMPFS_DIR; cache=writeback ;;
        pagecache) dir=$DISK_DIR; cache=writeback ;;
        disk) dir=$DISK_DIR; cache=none ;;
    esac
    head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom > "$dir/img.raw"
    cat "$dir/img.raw" > /dev/null
    for rw in randread randwrite; do
        for qd in 1 32; do
            best_ox=0; best_q=0
            for _ in $(seq "$REPEAT"); do
                for kind in oxemu qsd; do
                    start_server $kind "$dir" $cache
                    iops=$(run_fio $rw $qd)
                    stop_server
                    if [ $kind = oxemu ]; then [ "$iops" -gt "$best_ox" ] && best_ox=$iops
                    else [ "$iops" -gt "$best_q" ] && best_q=$iops; fi
                done
            done
            ratio=$(python3 -c "print(f'{$best_ox/max($best_q,1):.2f}')")
            printf '%-8s %-10s %-4s %12s %12s %7s\n' $storage $rw $qd "$best_ox" "$best_q" "$ratio"
        done
    done
done
