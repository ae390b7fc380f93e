#!/usr/bin/env bash
# The cost of issue 11's checks on the qcow2 hot paths: an older oxemu-img (OLD, built
# from a commit before the flush latch, blkdebug events, overlap checks and write
# guards) against the current one, in turn, on the same images (farm-bench --vs).
#   usage: OLD=/path/to/old/oxemu-img bench/limits-cost.sh [tmpfs-dir] [ext4-dir]
# Cases (4 KiB, QD32, io_uring, 100k requests): reads of a fully allocated 256 MiB
# image, in-place writes into it, allocating writes into a fresh empty image.
# ext4: the image file sits in the page cache (read once first), cache=writeback.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OLD:?set OLD to an older oxemu-img binary}"
cargo build --release -q -p oxemu-img
NEW=${CARGO_TARGET_DIR:-target}/release/oxemu-img
FB=${FB:-farm-bench}
N=${N:-100000}
for dir in "${1:-/dev/shm/oxemu-limits}" "${2:-$PWD/target/limits-bench}"; do
    mkdir -p "$dir"
    head -c 256M /dev/urandom > "$dir/src.raw"
    qemu-img convert -f raw -O qcow2 "$dir/src.raw" "$dir/full.qcow2"
    cat "$dir/full.qcow2" > /dev/null
    echo "== $dir ($(stat -f -c %T "$dir"))"
    for case in read overwrite allocate; do
        case $case in
            read) a="bench -q -f qcow2 -c $N -d 32 -s 4k -i io_uring $dir/full.qcow2" ;;
            overwrite) a="bench -q -w -f qcow2 -c $N -d 32 -s 4k -i io_uring $dir/full.qcow2" ;;
            allocate) a="bench -q -w -f qcow2 -c $N -d 32 -s 4k -t none -i io_uring $dir/empty.qcow2" ;;
        esac
        if [ $case = allocate ]; then
            mk="qemu-img create -q -f qcow2 $dir/empty.qcow2 1G"
            echo "-- $case (new: A, old: B)"
            "$FB" -n 7 --vs "sh -c '$mk && exec $OLD $a'" -- sh -c "$mk && exec $NEW $a" | grep -E "wall|^A/B|ratio" || true
        else
            echo "-- $case (new: A, old: B)"
            "$FB" -n 7 --vs "$OLD $a" -- $NEW $a | grep -E "wall|^A/B|ratio" || true
        fi
    done
    rm -rf "$dir"
done
