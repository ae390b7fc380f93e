#!/usr/bin/env bash
# qcow2: oxemu-img vs qemu-img on the same images in one run (issue 3 performance).
#   read:    4 KiB reads at QD32 on a fully allocated 1 GiB qcow2 on tmpfs
#   write:   allocating 4 KiB writes at QD32 into an empty qcow2 on tmpfs
#   convert: 1 GiB qcow2 -> raw and raw -> qcow2 (wall time)
# Both bench tools walk sequentially by step (qemu-img bench cannot do random offsets).
# Each cell is the best of $RUNS runs (default 3) with the (min-max) spread.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
COUNT=${COUNT:-500000}
WCOUNT=${WCOUNT:-200000}
cargo build --release -q -p oxemu-img
OX=${CARGO_TARGET_DIR:-target}/release/oxemu-img
d=/dev/shm/oxemu-qcow2-bench
mkdir -p "$d"
trap 'rm -rf "$d"' EXIT
head -c 1G /dev/urandom > "$d/src.raw"
qemu-img convert -f raw -O qcow2 "$d/src.raw" "$d/full.qcow2"

best() { sort -g | awk '{a[NR]=$1} END {printf "%s %s %s\n", a[NR], a[1], a[NR]}'; }
worst_time() { sort -g | awk '{a[NR]=$1} END {printf "%s %s %s\n", a[1], a[1], a[NR]}'; }
iops() { # tool args...
    local t
    t=$("$@" | awk '/Run completed in/ {print $4}')
    awk -v c="$COUNT" -v t="$t" 'BEGIN {printf "%d\n", c / t}'
}
wiops() { # tool args...  (fresh empty image each run)
    local tool=$1 t
    shift
    qemu-img create -q -f qcow2 "$d/empty.qcow2" 1G
    t=$("$tool" bench -q -w -f qcow2 -c "$WCOUNT" -d 32 -s 4k -t none -i io_uring "$d/empty.qcow2" |
        awk '/Run completed in/ {print $4}')
    awk -v c="$WCOUNT" -v t="$t" 'BEGIN {printf "%d\n", c / t}'
}
secs() { # command...
    local s e
    rm -f "$d/out"
    s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
    awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f\n", e - s}'
}
measure() { local out=(); for _ in $(seq "$RUNS"); do out+=("$("$@")"); done; printf '%s\n' "${out[@]}"; }

rb() { iops "$1" bench -q -f qcow2 -c "$COUNT" -d 32 -s 4k -i io_uring "$d/full.qcow2"; }
R_OX=$(measure rb "$OX" | best); R_QI=$(measure rb qemu-img | best)
W_OX=$(measure wiops "$OX" | best); W_QI=$(measure wiops qemu-img | best)
C1_OX=$(measure secs "$OX" convert -O raw "$d/full.qcow2" "$d/out" | worst_time)
C1_QI=$(measure secs qemu-img convert -O raw "$d/full.qcow2" "$d/out" | worst_time)
C2_OX=$(measure secs "$OX" convert -f raw -O qcow2 "$d/src.raw" "$d/out" | worst_time)
C2_QI=$(measure secs qemu-img convert -f raw -O qcow2 "$d/src.raw" "$d/out" | worst_time)

echo "qcow2 on tmpfs, 1 GiB, best of $RUNS (min-max); bench: 4 KiB, QD32, io_uring, sequential by step"
printf '%-32s %-30s %-30s %s\n' case oxemu-img qemu-img ratio
row() { # label unit ox qi higher-is-better
    read -r o omin omax <<<"$3"; read -r q qmin qmax <<<"$4"
    local r
    if [ "$5" = up ]; then r=$(awk -v a="$o" -v b="$q" 'BEGIN {printf "%.2f", a / b}')
    else r=$(awk -v a="$o" -v b="$q" 'BEGIN {printf "%.2f (speedup)", b / a}'); fi
    printf '%-32s %-30s %-30s %s\n' "$1" "$o $2 ($omin-$omax)" "$q $2 ($qmin-$qmax)" "$r"
}
row "read, fully allocated" IOPS "$R_OX" "$R_QI" up
row "allocating write, empty image" IOPS "$W_OX" "$W_QI" up
row "convert qcow2 -> raw" s "$C1_OX" "$C1_QI" down
row "convert raw -> qcow2" s "$C2_OX" "$C2_QI" down
