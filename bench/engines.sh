#!/usr/bin/env bash
# AIO engines side by side: oxemu-img bench vs qemu-img bench vs fio, on the same
# 1 GiB raw image of random data, 4 KiB reads at queue depth 32, in one run.
#   (a) CPU-bound:    image on tmpfs (/dev/shm), page cache
#   (b) device-bound: image on the work disk, cache=none (O_DIRECT)
#   (c) page cache:   image on the work disk (ext4), read once first, cache=writeback
#       (where users' images live; io_uring completes cache hits inline there for
#       every tool alike)
# Each cell is the best of $RUNS runs (default 3); the spread (min-max) is printed too.
# Usage: bench/engines.sh [--random]   (--random: random offsets for oxemu and fio;
#        qemu-img bench can only walk sequentially, so its column stays sequential)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
COUNT=${COUNT:-1000000}
FIO_SECS=${FIO_SECS:-3}
PATTERN=${1:-}
cargo build --release -q -p oxemu-img
OX=target/release/oxemu-img
work=target/bench
mkdir -p "$work"
shm_img=/dev/shm/oxemu-engines.img
disk_img=$work/oxemu-engines.img
trap 'rm -f "$shm_img"' EXIT
[ -f "$disk_img" ] && [ "$(stat -c %s "$disk_img")" = 1073741824 ] || head -c 1G /dev/urandom > "$disk_img"
cp "$disk_img" "$shm_img"

best() { sort -g | awk '{a[NR]=$1} END {printf "%d %d %d\n", a[NR], a[1], a[NR]}'; }

run_ox() { # engine cache image
    "$OX" bench -q -f raw -c "$COUNT" -d 32 -s 4k -i "$1" -t "$2" ${PATTERN:+--random} "$3" |
        awk '/^IOPS:/ {print $2}'
}
run_qemu() {
    local t
    t=$(qemu-img bench -q -f raw -c "$COUNT" -d 32 -s 4k -i "$1" -t "$2" "$3" |
        awk '/Run completed in/ {print $4}')
    awk -v c="$COUNT" -v t="$t" 'BEGIN {printf "%d\n", c / t}'
}
run_fio() { # ioengine direct image
    local rw=read par=(--iodepth=32)
    [ -n "$PATTERN" ] && rw=randread
    # psync is synchronous: 32 threads give it the same 32 requests in flight.
    [ "$1" = psync ] && par=(--numjobs=32 --thread --group_reporting)
    # Give fio its best batching (and, for io_uring, registered files and buffers),
    # so that it is the strongest peer it can be.
    [ "$1" = libaio ] && par+=(--iodepth_batch_submit=32 --iodepth_batch_complete_max=32)
    [ "$1" = io_uring ] && par+=(--iodepth_batch_submit=32 --iodepth_batch_complete_max=32
        --fixedbufs=1 --registerfiles=1)
    fio --name=b --filename="$3" --ioengine="$1" --direct="$2" --rw=$rw --bs=4k "${par[@]}" \
        --time_based --runtime="$FIO_SECS" --size=1G --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; t=sys.stdin.read(); print(int(json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"]))'
}
measure() { # label cmd...
    local out=()
    for _ in $(seq "$RUNS"); do out+=("$("$@")"); done
    printf '%s\n' "${out[@]}" | best
}

declare -A R
for setting in a b c; do
    if [ $setting = a ]; then img=$shm_img; cache=writeback; ncache=none; direct=0
    elif [ $setting = b ]; then img=$disk_img; cache=none; ncache=none; direct=1
    else img=$disk_img; cache=writeback; ncache=none; direct=0; cat "$img" >/dev/null; fi
    for e in threads native io_uring; do
        c=$cache; [ $e = native ] && c=$ncache
        R[$setting,ox,$e]=$(measure run_ox $e $c "$img")
        R[$setting,qi,$e]=$(measure run_qemu $e $c "$img")
    done
    R[$setting,fio,io_uring]=$(measure run_fio io_uring $direct "$img")
    R[$setting,fio,native]=$(measure run_fio libaio 1 "$img")
    R[$setting,fio,threads]=$(measure run_fio psync $direct "$img")
done

pat="sequential (qemu-img bench's walk; fio rw=read)"
[ -n "$PATTERN" ] && pat="random for oxemu and fio, sequential for qemu-img"
echo "4 KiB reads, QD32, 1 GiB image, best of $RUNS (min-max), access: $pat"
printf '%-3s %-9s %-9s %-24s %-24s %-9s %-24s %-13s %s\n' set engine cache oxemu-img qemu-img fio-eng fio ox/qemu-img ox/fio
for setting in a b c; do
    for e in threads native io_uring; do
        c=writeback; [ $setting = b ] || [ $e = native ] && c=none
        fe=$e; [ $e = native ] && fe=libaio; [ $e = threads ] && fe=psync
        read -r o omin omax <<<"${R[$setting,ox,$e]}"
        read -r q qmin qmax <<<"${R[$setting,qi,$e]}"
        read -r f fmin fmax <<<"${R[$setting,fio,$e]}"
        printf '%-3s %-9s %-9s %-24s %-24s %-9s %-24s %-13s %s\n' "$setting" "$e" "$c" \
            "$o ($omin-$omax)" "$q ($qmin-$qmax)" "$fe" "$f ($fmin-$fmax)" \
            "$(awk -v a="$o" -v b="$q" 'BEGIN {printf "%.2f", a / b}')" \
            "$(awk -v a="$o" -v b="$f" 'BEGIN {printf "%.2f", a / b}')"
    done
done
