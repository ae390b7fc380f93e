#!/usr/bin/env bash
# Startup time (exec to QMP greeting) and qtest readl/writel round trips per second,
# oxemu-system-aarch64 vs qemu-system-aarch64 7.2. Debian's QEMU lacks the qtest
# accelerator, so QEMU's startup is measured with -accel tcg -S (-M none and -M virt)
# and it has no round-trip number.
# Usage: bench/system.sh [OXEMU_BINARY]   (default: target/release/oxemu-system-aarch64)
set -euo pipefail
OX=${1:-${CARGO_TARGET_DIR:-target}/release/oxemu-system-aarch64}
N=${N:-20}
python3 - "$OX" "$N" <<'PY'
import os, socket, subprocess, sys, tempfile, time
ox, n = sys.argv[1], int(sys.argv[2])
def startup(cmd):
    ts = []
    for _ in range(n):
        d = tempfile.mkdtemp(); p = d + "/qmp"
        s = socket.socket(socket.AF_UNIX); s.bind(p); s.listen(1)
        t0 = time.perf_counter()
        pr = subprocess.Popen(cmd + ["-chardev", f"socket,path={p},id=c0", "-mon", "chardev=c0,mode=control",
                                     "-display", "none", "-nodefaults"], stderr=subprocess.DEVNULL)
        c, _ = s.accept(); c.recv(4096); ts.append(time.perf_counter() - t0)
        pr.terminate(); pr.wait(); c.close(); s.close()
    ts.sort(); return ts[len(ts)//2] * 1000
def rtt(cmd, secs=2.0):
    d = tempfile.mkdtemp(); qp, mp = d + "/qt", d + "/qmp"
    qs = socket.socket(socket.AF_UNIX); qs.bind(qp); qs.listen(1)
    ms = socket.socket(socket.AF_UNIX); ms.bind(mp); ms.listen(1)
    pr = subprocess.Popen(cmd + ["-qtest", f"unix:{qp}", "-qtest-log", "none", "-chardev", f"socket,path={mp},id=c0",
                                 "-mon", "chardev=c0,mode=control", "-display", "none"], stderr=subprocess.DEVNULL)
    q, _ = qs.accept(); m, _ = ms.accept(); f = q.makefile("rwb", buffering=0)
    k = 0; t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        f.write(b"writel 0x10000008 0x1234\n"); f.readline()
        f.write(b"readl 0x10000008\n"); f.readline(); k += 2
    r = k / (time.perf_counter() - t0); pr.terminate(); pr.wait(); return r
print(f"startup, exec to QMP greeting, median of {n}:")
print(f"  oxemu-system-aarch64 -M none -accel qtest      {startup([ox, '-M', 'none', '-accel', 'qtest']):8.2f} ms")
print(f"  qemu-system-aarch64  -M none -accel tcg -S     {startup(['qemu-system-aarch64', '-M', 'none', '-accel', 'tcg', '-S']):8.2f} ms")
print(f"  qemu-system-aarch64  -M virt -accel tcg -S     {startup(['qemu-system-aarch64', '-M', 'virt', '-accel', 'tcg', '-S']):8.2f} ms")
print("qtest readl/writel round trips per second (one client, 2 s):")
print(f"  oxemu-system-aarch64 -M oxemu-test             {rtt([ox, '-M', 'oxemu-test', '-accel', 'qtest']):8.0f} /s")
print("  qemu-system-aarch64: not measurable here (Debian's build has no qtest accelerator)")
PY
