#!/bin/sh
# Compile Jailhouse's own C configs into binary .cell files, the way
# Jailhouse's build does (cc -c, then objcopy -O binary), without building
# the hypervisor. Usage: compile-jailhouse-configs.sh JAILHOUSE_SRC OUTDIR
# Output: OUTDIR/x86/*.cell and OUTDIR/arm64/*.cell. Needs gcc and objcopy.
set -eu
src=$1
out=$2
mkdir -p "$out/x86" "$out/arm64"
for arch in x86 arm64; do
    case $arch in
    x86) inc="-I $src/hypervisor/arch/x86/include" ;;
    arm64) inc="-I $src/hypervisor/arch/arm64/include -I $src/hypervisor/arch/arm-common/include" ;;
    esac
    for c in "$src"/configs/$arch/*.c; do
        n=$(basename "$c" .c)
        # shellcheck disable=SC2086
        gcc -c -O0 -I "$src/include" -I "$src/hypervisor/include" $inc \
            -include "$src/hypervisor/include/jailhouse/types.h" "$c" -o "$out/$arch/$n.o"
        objcopy -O binary --remove-section=.note.gnu.property "$out/$arch/$n.o" "$out/$arch/$n.cell"
        rm -f "$out/$arch/$n.o"
    done
done
echo "compiled $(ls "$out"/*/*.cell | wc -l) configs into $out"
