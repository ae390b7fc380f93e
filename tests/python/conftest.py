"""Shared fixtures: start oxemu-storage-daemon (and qemu-storage-daemon for comparison)
with a QMP monitor on a unix socket in a temporary directory."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

BIN_DIR = Path(os.environ.get("OXEMU_BIN_DIR", Path(__file__).resolve().parents[2] / "target" / "debug"))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.02)


class Daemon:
    """A storage daemon process with one or more QMP monitors."""

    def __init__(self, program: str, tmp: Path, extra: list[str], monitors: int = 1):
        self.tmp = tmp
        self.qmp = [tmp / f"qmp{i}.sock" for i in range(monitors)]
        # Monitors last: options apply in order, so once the monitor sockets exist the
        # NBD server and exports named before them are up too.
        args = [program] + extra
        for i, sock in enumerate(self.qmp):
            args += ["--chardev", f"socket,id=m{i},path={sock},server=on,wait=off", "--monitor", f"chardev=m{i}"]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE)
        for sock in self.qmp:
            wait_for(sock, self.proc)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "disk.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(img), "64M"], check=True)
    return img


@pytest.fixture
def oxemu(tmp_path: Path):
    started = []

    def start(extra=(), monitors=1):
        d = Daemon(str(BIN_DIR / "oxemu-storage-daemon"), tmp_path, list(extra), monitors)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def qsd(tmp_path: Path):
    """The real qemu-storage-daemon, for side-by-side behaviour checks."""
    assert shutil.which("qemu-storage-daemon"), "scripts/install-deps installs qemu-storage-daemon"
    started = []
    sub = tmp_path / "qsd"
    sub.mkdir()

    def start(extra=(), monitors=1):
        d = Daemon("qemu-storage-daemon", sub, list(extra), monitors)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
