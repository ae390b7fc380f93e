#!/usr/bin/env bash
# qcow2: oxemu-img vs qemu-img on the same images in one run (issue 3 performance).
#   read:    4 KiB reads at QD32 on a fully allocated 1 GiB qcow2 on tmpfs
#   write:   allocating 4 KiB writes at QD32 into an empty qcow2 on tmpfs
#   convert: 1 GiB qcow2 -> raw and raw -> qcow2 (wall time)
#   convert -c: 256 MiB of compressible text, raw -> compressed qcow2 (zlib), and
#   that compressed qcow2 (made by qemu-img) back to raw
# Both bench tools walk sequentially by step (qemu-img bench cannot do random offsets).
# Each cell is the median of $RUNS runs (default 5) with the (min-max) spread.
# DIR=/path/on/ext4 puts the images there instead of tmpfs (read once first, so they
# sit in the page cache, as users' images do).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
COUNT=${COUNT:-500000}
WCOUNT=${WCOUNT:-200000}
cargo build --release -q -p oxemu-img
OX=${CARGO_TARGET_DIR:-target}/release/oxemu-img
d=${DIR:-/dev/shm}/oxemu-qcow2-bench
mkdir -p "$d"
trap 'rm -rf "$d"' EXIT
head -c 1G /dev/urandom > "$d/src.raw"
qemu-img convert -f raw -O qcow2 "$d/src.raw" "$d/full.qcow2"
# Compressible input: random words from a small vocabulary.
python3 - "$d/text.raw" <<'PY'
import random, sys
random.seed(1)
words = [''.join(random.choice('abcdefghij ') for _ in range(8)).encode() for _ in range(5000)]
block = b' '.join(random.choice(words) for _ in range(4 * 1024 * 1024 // 9))
with open(sys.argv[1], 'wb') as f:
    for _ in range(64):
        f.write(block)
    f.truncate(256 * 1024 * 1024)
PY
qemu-img convert -c -f raw -O qcow2 "$d/text.raw" "$d/text.qcow2"
cat "$d"/* > /dev/null

# Each cell: the median of the runs, then the range (min-max).
median() { sort -g | awk '{a[NR]=$1} END {printf "%s %s %s\n", a[int((NR+1)/2)], a[1], a[NR]}'; }
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
# Runs two commands alternately $RUNS times (so drift on the machine hits both alike)
# and sets OXR and QIR to the median and range of each.
pair() { # "oxemu command" "qemu command"
    local ox=() qi=()
    for _ in $(seq "$RUNS"); do
        ox+=("$(eval "$1")")
        qi+=("$(eval "$2")")
    done
    OXR=$(printf '%s\n' "${ox[@]}" | median)
    QIR=$(printf '%s\n' "${qi[@]}" | median)
}

rb() { iops "$1" bench -q -f qcow2 -c "$COUNT" -d 32 -s 4k -i io_uring "$d/full.qcow2"; }
pair 'rb "$OX"' 'rb qemu-img'; R_OX=$OXR; R_QI=$QIR
pair 'wiops "$OX"' 'wiops qemu-img'; W_OX=$OXR; W_QI=$QIR
pair 'secs "$OX" convert -O raw "$d/full.qcow2" "$d/out"' \
    'secs qemu-img convert -O raw "$d/full.qcow2" "$d/out"'
C1_OX=$OXR; C1_QI=$QIR
pair 'secs "$OX" convert -f raw -O qcow2 "$d/src.raw" "$d/out"' \
    'secs qemu-img convert -f raw -O qcow2 "$d/src.raw" "$d/out"'
C2_OX=$OXR; C2_QI=$QIR
pair 'secs "$OX" convert -c -f raw -O qcow2 "$d/text.raw" "$d/out"' \
    'secs qemu-img convert -c -f raw -O qcow2 "$d/text.raw" "$d/out"'
C3_OX=$OXR; C3_QI=$QIR
pair 'secs "$OX" convert -O raw "$d/text.qcow2" "$d/out"' \
    'secs qemu-img convert -O raw "$d/text.qcow2" "$d/out"'
C4_OX=$OXR; C4_QI=$QIR

echo "qcow2 on $(stat -f -c %T "$d") (page cache), 1 GiB, median of $RUNS (min-max); bench: 4 KiB, QD32, io_uring, sequential by step"
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
row "convert -c text -> qcow2 (zlib)" s "$C3_OX" "$C3_QI" down
row "convert compressed -> raw" s "$C4_OX" "$C4_QI" down
