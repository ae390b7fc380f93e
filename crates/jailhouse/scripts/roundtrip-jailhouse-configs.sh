#!/bin/sh
# Round trip of Jailhouse's own configs through the decompiler:
# binary (compiled by compile-jailhouse-configs.sh) -> oxemu-jailhouse config
# dump --format=c -> gcc/objcopy with the real headers and the flags of
# Jailhouse's configs/Makefile -> compare with the original bytes.
# Usage: roundtrip-jailhouse-configs.sh JAILHOUSE_SRC CELLS_DIR [OXEMU_JAILHOUSE]
# CELLS_DIR is compile-jailhouse-configs.sh's OUTDIR (with x86/ and arm64/).
set -eu
src=$1
cells=$2
bin=${3:-oxemu-jailhouse}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ok=0
bad=0
for arch in x86 arm64; do
    case $arch in
    x86) inc="-I $src/hypervisor/arch/x86/include" ;;
    arm64) inc="-I $src/hypervisor/arch/arm64/include -I $src/hypervisor/arch/arm-common/include" ;;
    esac
    for f in "$cells"/$arch/*.cell; do
        n=$(basename "$f" .cell)
        # shellcheck disable=SC2086
        if "$bin" config dump --format=c "$f" >"$work/$n.c" &&
            gcc -c -Werror -Wall -Wextra -D__LINUX_COMPILER_TYPES_H $inc \
                -I "$src/hypervisor/include" -I "$src/include" "$work/$n.c" -o "$work/$n.o" &&
            objcopy -O binary --remove-section=.note.gnu.property "$work/$n.o" "$work/$n.cell" &&
            cmp -s "$f" "$work/$n.cell"; then
            ok=$((ok + 1))
        else
            echo "DIFFERS: $arch/$n"
            bad=$((bad + 1))
        fi
    done
done
echo "round trip: $ok identical, $bad different"
[ "$bad" -eq 0 ]
