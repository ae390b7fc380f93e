"""oxemu-storage-daemon driven through the `qemu.qmp` library, as QEMU users drive
qemu-storage-daemon, and compared with the real qemu-storage-daemon 7.2."""

import asyncio
import json
import os
import subprocess
from pathlib import Path

from qemu.qmp import ExecuteError, QMPClient


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def client(sock: Path) -> QMPClient:
    q = QMPClient("test")
    await q.connect(str(sock))
    return q


def test_greeting_and_version(oxemu):
    d = oxemu()

    async def go():
        q = await client(d.qmp[0])
        v = await q.execute("query-version")
        assert v["qemu"]["major"] == 7 and v["qemu"]["minor"] == 2
        cmds = {c["name"] for c in await q.execute("query-commands")}
        assert {"blockdev-add", "block-export-add", "query-named-block-nodes", "quit"} <= cmds
        schema = await q.execute("query-qmp-schema")
        assert any(e.get("name") == "blockdev-add" and e["meta-type"] == "command" for e in schema)
        await q.disconnect()

    run(go())


def test_blockdevs_and_exports_are_added_and_removed_at_run_time(oxemu, image, tmp_path):
    d = oxemu()
    nbd = tmp_path / "nbd.sock"

    async def go():
        q = await client(d.qmp[0])
        await q.execute("blockdev-add", {"driver": "file", "node-name": "f0", "filename": str(image)})
        await q.execute("blockdev-add", {"driver": "raw", "node-name": "r0", "file": "f0"})
        nodes = {n["node-name"]: n for n in await q.execute("query-named-block-nodes")}
        assert nodes["f0"]["drv"] == "file" and nodes["r0"]["drv"] == "raw"
        assert nodes["r0"]["image"]["virtual-size"] == 64 << 20
        await q.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(nbd)}}})
        await q.execute("block-export-add",
                        {"type": "nbd", "id": "e0", "node-name": "r0", "name": "disk", "writable": True})
        assert await q.execute("query-block-exports") == [
            {"id": "e0", "type": "nbd", "node-name": "r0", "shutting-down": False}]
        # A real client uses the export while it exists.
        uri = f"nbd+unix:///disk?socket={nbd}"
        out = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 8192", uri],
                             capture_output=True, text=True, check=True)
        assert "wrote 8192/8192" in out.stdout
        async with asyncio.timeout(10):
            events = q.events
            # qemu-io has exited, but the server may not have processed its disconnect
            # yet; safe mode refuses until then (QEMU words it the same way).
            while True:
                try:
                    await q.execute("block-export-del", {"id": "e0"})
                    break
                except ExecuteError as e:
                    assert e.error.error.desc == "export 'e0' still in use"
                    await asyncio.sleep(0.05)
            ev = await events.get()
            while ev["event"] != "BLOCK_EXPORT_DELETED":
                ev = await events.get()
        assert ev["data"] == {"id": "e0"}
        assert await q.execute("query-block-exports") == []
        await q.execute("blockdev-del", {"node-name": "r0"})
        await q.execute("blockdev-del", {"node-name": "f0"})
        assert await q.execute("query-named-block-nodes") == []
        await q.execute("nbd-server-stop")
        await q.disconnect()

    run(go())
    data = image.read_bytes()
    assert data[4096:4096 + 8192] == b"\x5a" * 8192 and data[:4096] == b"\0" * 4096


ERROR_CASES = [
    # (setup commands, failing command) -> same error class and text as qemu-storage-daemon
    ([], ("blockdev-add", {"driver": "file"})),
    ([("blockdev-add", {"driver": "file", "node-name": "a", "filename": "IMG"})],
     ("blockdev-add", {"driver": "file", "node-name": "a", "filename": "IMG"})),
    ([], ("blockdev-del", {"node-name": "nope"})),
    ([], ("block-export-add", {"type": "nbd", "id": "e", "node-name": "a"})),
    ([("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "NBD"}}})],
     ("block-export-add", {"type": "nbd", "id": "e", "node-name": "nope"})),
    ([("blockdev-add", {"driver": "file", "node-name": "a", "filename": "IMG"}),
      ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "NBD"}}}),
      ("block-export-add", {"type": "nbd", "id": "e", "node-name": "a"})],
     ("block-export-add", {"type": "nbd", "id": "e", "node-name": "a"})),
    ([("blockdev-add", {"driver": "file", "node-name": "a", "filename": "IMG"}),
      ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "NBD"}}}),
      ("block-export-add", {"type": "nbd", "id": "e", "node-name": "a"})],
     ("blockdev-del", {"node-name": "a"})),
    ([], ("block-export-del", {"id": "nope"})),
    ([], ("object-del", {"id": "nope"})),
    ([("object-add", {"qom-type": "iothread", "id": "io0"})],
     ("object-add", {"qom-type": "iothread", "id": "io0"})),
    ([], ("blockdev-add", {"driver": "file", "node-name": 5, "filename": "x"})),
    ([], ("blockdev-add", {"driver": "file", "node-name": "z", "filename": "IMG", "bogus": 1})),
    ([], ("no-such-command", {})),
    ([], ("blockdev-add", {"driver": "nope", "node-name": "z"})),
    ([], ("block-export-add", {"type": "nope", "id": "e", "node-name": "z"})),
    ([], ("object-add", {"qom-type": "nope", "id": "x"})),
    ([], ("object-add", {"qom-type": "iothread"})),
    ([], ("object-add", {"qom-type": "iothread", "id": "bad id"})),
    ([], ("blockdev-add", {"driver": "file", "node-name": "a", "filename": "IMG", "aio": "bogus"})),
    ([], ("blockdev-add", {"driver": "raw", "node-name": "a", "file": "nope"})),
    ([], ("query-block-exports", {"x": 1})),
    ([], ("quit", {"x": 1})),
    ([], ("blockdev-add", {"driver": "file", "node-name": "a", "filename": "IMG", "read-only": "on"})),
]


def subst(v, img, nbd):
    if isinstance(v, dict):
        return {k: subst(x, img, nbd) for k, x in v.items()}
    if v == "IMG":
        return str(img)
    if v == "NBD":
        return str(nbd)
    return v


async def error_of(sock, setup, failing, img, nbd):
    q = await client(sock)
    try:
        for cmd, args in setup:
            await q.execute(cmd, subst(args, img, nbd))
        cmd, args = failing
        try:
            await q.execute(cmd, subst(args, img, nbd))
        except ExecuteError as e:
            return e.error.error.class_, e.error.error.desc
        raise AssertionError(f"{cmd} unexpectedly succeeded")
    finally:
        await q.disconnect()


def test_errors_match_qemu_storage_daemon(oxemu, qsd, tmp_path):
    for i, (setup, failing) in enumerate(ERROR_CASES):
        results = []
        for start, name in ((oxemu, "ox"), (qsd, "qsd")):
            img = tmp_path / f"{name}{i}.img"
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(img), "1M"], check=True)
            nbd = tmp_path / f"{name}{i}.nbd"
            d = start()
            try:
                results.append(run(error_of(d.qmp[0], setup, failing, img, nbd)))
            finally:
                d.stop()
                for s in d.qmp:
                    s.unlink(missing_ok=True)
        assert results[0] == results[1], f"case {i} {failing}: oxemu {results[0]} != qemu {results[1]}"


def test_several_monitors_all_see_events(oxemu, image, tmp_path):
    nbd = tmp_path / "n.sock"
    d = oxemu(["--blockdev", f"driver=file,node-name=f0,filename={image}",
               "--nbd-server", f"addr.type=unix,addr.path={nbd}",
               "--export", "type=nbd,id=e0,node-name=f0"], monitors=2)

    async def go():
        a = await client(d.qmp[0])
        b = await client(d.qmp[1])
        await a.execute("block-export-del", {"id": "e0", "mode": "hard"})
        for q in (a, b):
            async with asyncio.timeout(10):
                ev = await q.events.get()
                while ev["event"] != "BLOCK_EXPORT_DELETED":
                    ev = await q.events.get()
            assert ev["data"]["id"] == "e0" and "seconds" in ev["timestamp"]
        await a.disconnect()
        await b.disconnect()

    run(go())


def test_sigterm_removes_sockets_and_pidfile(oxemu, image, tmp_path):
    nbd = tmp_path / "n.sock"
    pid = tmp_path / "d.pid"
    d = oxemu(["--blockdev", f"driver=file,node-name=f0,filename={image}",
               "--nbd-server", f"addr.type=unix,addr.path={nbd}",
               "--export", "type=nbd,id=e0,node-name=f0,writable=on", "--pidfile", str(pid)])
    assert int(pid.read_text()) == d.proc.pid
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 1 0 4096", f"nbd+unix:///f0?socket={nbd}"], check=True,
                   capture_output=True)
    assert d.stop() == 0
    assert not nbd.exists() and not pid.exists() and not d.qmp[0].exists()
    assert image.read_bytes()[:4096] == b"\x01" * 4096


def test_quit_shuts_down(oxemu):
    d = oxemu()

    async def go():
        q = await client(d.qmp[0])
        await q.execute("quit")

    run(go())
    assert d.proc.wait(timeout=10) == 0
    assert not d.qmp[0].exists()


def test_qmp_shell_works_against_the_daemon(oxemu, image):
    d = oxemu(["--blockdev", f"driver=file,node-name=f0,filename={image}"])
    out = subprocess.run(["qmp-shell", "-p", str(d.qmp[0])], input="query-version\nquery-named-block-nodes\n",
                         capture_output=True, text=True, timeout=60)
    assert '"major": 7' in out.stdout, out.stdout + out.stderr
    assert '"node-name": "f0"' in out.stdout, out.stdout + out.stderr


def test_command_line_errors_name_the_option(tmp_path, image):
    from conftest import BIN_DIR
    prog = str(BIN_DIR / "oxemu-storage-daemon")
    r = subprocess.run([prog, "--blockdev", "driver=file,node-name=x"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip() == "oxemu-storage-daemon: --blockdev driver=file,node-name=x: Parameter 'filename' is missing"
    r = subprocess.run([prog, "--bogus"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "unrecognized option '--bogus'" in r.stderr
    r = subprocess.run([prog, "--blockdev", f"driver=file,node-name=f,filename={image}",
                        "--export", "type=nbd,id=e,node-name=f"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "--export type=nbd,id=e,node-name=f: NBD server not running" in r.stderr
    r = subprocess.run([prog, "--export", "type=nbd,id=e,node-name=nope"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Cannot find device='' nor node-name='nope'" in r.stderr
    r = subprocess.run([prog, "-V"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "oxemu-storage-daemon version" in r.stdout


def test_daemonize_returns_after_start_up(tmp_path, image):
    from conftest import BIN_DIR, wait_for
    sock = tmp_path / "q.sock"
    pid = tmp_path / "p.pid"
    r = subprocess.run([str(BIN_DIR / "oxemu-storage-daemon"), "--daemonize", "--pidfile", str(pid),
                        "--chardev", f"socket,id=m,path={sock},server=on,wait=off", "--monitor", "m",
                        "--blockdev", f"driver=file,node-name=f0,filename={image}"], timeout=30)
    assert r.returncode == 0
    assert sock.exists() and pid.exists()
    os.kill(int(pid.read_text()), 15)
    for _ in range(200):
        if not pid.exists():
            break
        import time
        time.sleep(0.05)
    assert not pid.exists() and not sock.exists()


def test_qcow2_blockdev_with_backing_chain_served_over_nbd(oxemu, tmp_path):
    base = tmp_path / "base.raw"
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top)], check=True)
    nbd = tmp_path / "n.sock"
    d = oxemu(["--blockdev", f"driver=qcow2,node-name=q0,file.driver=file,file.filename={top}",
               "--nbd-server", f"addr.type=unix,addr.path={nbd}",
               "--export", "type=nbd,id=e0,node-name=q0,name=disk,writable=on"])
    uri = f"nbd+unix:///disk?socket={nbd}"
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x22 512k 64k", uri], check=True, capture_output=True)

    async def go():
        q = await client(d.qmp[0])
        nodes = {n["node-name"]: n for n in await q.execute("query-named-block-nodes")}
        assert nodes["q0"]["drv"] == "qcow2"
        await q.disconnect()

    run(go())
    assert d.stop() == 0
    # The overlay holds the new data over the backing file's, and QEMU agrees.
    chk = subprocess.run(["qemu-img", "check", str(top)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 512k", "-c", "read -P 0x22 512k 64k",
                          "-c", "read -P 0x11 576k 448k", str(top)], capture_output=True, text=True, check=True)
    assert "Pattern verification failed" not in out.stdout, out.stdout


async def backing_sequence(sock, d: Path):
    """blockdev-add/del of qcow2 nodes whose backing is another node; returns what
    each step answered and the named nodes' backing depths."""
    q = await client(sock)
    log = []

    async def x(cmd, args):
        try:
            await q.execute(cmd, args)
            log.append((cmd, "ok"))
        except ExecuteError as e:
            log.append((cmd, e.error.error.class_, e.error.error.desc))

    async def depths():
        nodes = await q.execute("query-named-block-nodes")
        log.append(sorted((n["node-name"], n["backing_file_depth"])
                          for n in nodes if not n["node-name"].startswith("#")))
        log.append(sum(n["node-name"].startswith("#") for n in nodes))

    top_file = {"driver": "file", "filename": str(d / "top.qcow2")}
    await x("blockdev-add", {"driver": "file", "node-name": "bf", "filename": str(d / "base.qcow2")})
    await x("blockdev-add", {"driver": "qcow2", "node-name": "base", "file": "bf"})
    await x("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": top_file, "backing": "base"})
    await x("blockdev-add", {"driver": "qcow2", "node-name": "t2",
                             "file": {**top_file, "locking": "off"}, "backing": "nope"})
    await x("blockdev-add", {"driver": "qcow2", "node-name": "t3",
                             "file": {**top_file, "locking": "off"}, "backing": 5})
    await depths()
    await x("blockdev-del", {"node-name": "base"})
    await x("blockdev-del", {"node-name": "top"})
    await x("blockdev-del", {"node-name": "base"})
    # Nested options: the backing node is created with the image and goes with it.
    await x("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": top_file,
                             "backing": {"driver": "qcow2", "file": {"driver": "file",
                                                                     "filename": str(d / "base.qcow2")}}})
    await depths()
    await x("blockdev-del", {"node-name": "top"})
    await depths()
    await q.disconnect()
    return log


def test_qcow2_backing_node_references_behave_like_qemu_storage_daemon(oxemu, qsd, tmp_path):
    logs = []
    for start, name in ((oxemu, "ox"), (qsd, "qsd")):
        d = tmp_path / f"images-{name}"
        d.mkdir()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "base.qcow2"), "4M"], check=True)
        subprocess.run(["qemu-io", "-c", "write -P 0x11 0 4M", str(d / "base.qcow2")],
                       check=True, capture_output=True)
        # The overlay names no backing file: the node reference supplies it.
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "top.qcow2"), "4M"], check=True)
        s = start()
        try:
            logs.append(run(backing_sequence(s.qmp[0], d)))
        finally:
            s.stop()
    assert logs[0] == logs[1], f"oxemu {logs[0]}\nqemu {logs[1]}"


def test_backing_node_reference_reads_through_and_takes_writes_over_nbd(oxemu, tmp_path):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "4M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x11 0 4M", str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(top), "4M"], check=True)
    nbd = tmp_path / "n.sock"
    d = oxemu(["--blockdev", f"driver=file,node-name=bf,filename={base},read-only=on",
               "--blockdev", "driver=qcow2,node-name=base,file=bf,read-only=on",
               "--blockdev", f"driver=qcow2,node-name=top,file.driver=file,file.filename={top},backing=base",
               "--nbd-server", f"addr.type=unix,addr.path={nbd}",
               "--export", "type=nbd,id=e0,node-name=top,name=disk,writable=on"])
    uri = f"nbd+unix:///disk?socket={nbd}"
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x22 1M 64k", uri], check=True, capture_output=True)
    out = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 64k",
                          "-c", "read -P 0x11 1088k 2944k", uri], capture_output=True, text=True, check=True)
    assert "Pattern verification failed" not in out.stdout, out.stdout
    assert d.stop() == 0
    # The write went to the overlay only; the base is untouched.
    chk = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 4M", str(base)],
                         capture_output=True, text=True, check=True)
    assert "Pattern verification failed" not in chk.stdout
    m = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", str(top)],
                       capture_output=True, text=True, check=True)
    data = [e for e in json.loads(m.stdout) if e["data"]]
    assert [(e["start"], e["length"]) for e in data] == [(1 << 20, 65536)], m.stdout
