//! Real QEMU guests (TCG, Debian's cloud kernel, a busybox initramfs built here) on
//! vhost-user-blk exports of oxemu-storage-daemon.
//!
//! Needs the peers that `scripts/install-deps` installs (qemu-system-x86, busybox-static,
//! cpio) and the kernel that `scripts/fetch-guest-kernel` extracts to `target/guest/`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn guest_dir() -> PathBuf {
    let d = std::env::var_os("OXEMU_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/guest"));
    if !d.join("vmlinuz").exists() {
        let st = Command::new(repo().join("scripts/fetch-guest-kernel"))
            .status()
            .expect("run fetch-guest-kernel");
        assert!(st.success(), "scripts/fetch-guest-kernel failed");
    }
    d
}

/// Builds an initramfs whose /init loads the virtio modules, runs `script` against
/// /dev/vda (and /dev/vdb...) and powers off.
fn initramfs(dir: &Path, script: &str) -> PathBuf {
    let root = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "lib", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let g = guest_dir();
    for m in MODULES {
        std::fs::copy(
            g.join("modules").join(format!("{m}.ko")),
            root.join("lib").join(format!("{m}.ko")),
        )
        .unwrap();
    }
    let mut init = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n",
    );
    for m in MODULES {
        init += &format!("insmod /lib/{m}.ko\n");
    }
    init += "for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done\n";
    init += script;
    init += "\necho GUEST-DONE\npoweroff -f\n";
    let p = root.join("init");
    std::fs::write(&p, init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("initrd.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// Boots a guest with one vhost-user-blk device per socket; returns its console output.
fn boot(dir: &Path, sockets: &[&Path], script: &str) -> String {
    let initrd = initramfs(dir, script);
    let g = guest_dir();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args([
        "-object",
        "memory-backend-memfd,id=mem,size=512M,share=on",
        "-numa",
        "node,memdev=mem",
    ]);
    for (i, s) in sockets.iter().enumerate() {
        cmd.args(["-chardev", &format!("socket,id=c{i},path={}", s.display())])
            .args([
                "-device",
                &format!("vhost-user-blk-pci,chardev=c{i},num-queues=2"),
            ]);
    }
    cmd.args(["-kernel", g.join("vmlinuz").to_str().unwrap()])
        .args(["-initrd", initrd.to_str().unwrap()])
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("qemu-system-x86_64 is installed");
    let out = wait_output(&mut child, Duration::from_secs(180));
    assert!(out.contains("GUEST-DONE"), "guest did not finish:\n{out}");
    out
}

fn wait_output(child: &mut Child, limit: Duration) -> String {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let mut e = String::new();
        let _ = stderr.read_to_string(&mut e);
        s + &e
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    t.join().unwrap()
}

struct Daemon {
    child: Child,
    qmp: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, args: &[String]) -> Daemon {
        let qmp = dir.join("qmp.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_oxemu-storage-daemon"))
            .args([
                "--chardev",
                &format!("socket,id=m0,path={},server=on,wait=off", qmp.display()),
            ])
            .args(["--monitor", "chardev=m0"])
            .args(args)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !qmp.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, qmp }
    }

    fn stop(mut self) {
        // SIGTERM: clean shutdown, within a bounded time.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "daemon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(st.success(), "daemon exit status {st}");
        assert!(!self.qmp.exists(), "monitor socket left behind");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // After a failed assertion: never leave the daemon running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn export_args(id: &str, img: &Path, sock: &Path) -> Vec<String> {
    vec![
        "--blockdev".into(),
        format!("driver=file,node-name={id}-f,filename={},aio=io_uring,discard=unmap", img.display()),
        "--export".into(),
        format!("type=vhost-user-blk,id={id},node-name={id}-f,addr.type=unix,addr.path={},writable=on,num-queues=2", sock.display()),
    ]
}

fn make_image(path: &Path, fill: u8) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&vec![fill; 16 << 20]).unwrap();
}

fn md5_of(data: &[u8]) -> String {
    let mut c = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Writes 1 MiB of random data at 1 MiB, reads it back uncached and compares,
/// discards 1 MiB at 8 MiB, flushes, and reports the data's md5.
const WRITE_SCRIPT: &str = r#"
dd if=/dev/urandom of=/tmp/pat bs=4096 count=256 2>/dev/null
dd if=/tmp/pat of=/dev/vda bs=4096 seek=256 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=4096 skip=256 count=256 2>/dev/null
cmp /tmp/pat /tmp/back && echo PATTERN-OK
echo "MD5=$(md5sum /tmp/pat | cut -d' ' -f1)"
blkdiscard -o 8388608 -l 1048576 /dev/vda && echo DISCARD-OK
sync
blockdev --flushbufs /dev/vda && echo FLUSH-OK
"#;

fn guest_md5(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("MD5="))
        .expect("guest printed MD5")
        .trim()
        .to_string()
}

#[test]
fn guest_writes_reads_discards_and_flushes_through_vhost_user_blk() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    make_image(&img, 0xaa);
    let sock = dir.path().join("vhost.sock");
    let d = Daemon::start(dir.path(), &export_args("e0", &img, &sock));
    let out = boot(dir.path(), &[&sock], WRITE_SCRIPT);
    for marker in ["PATTERN-OK", "DISCARD-OK", "FLUSH-OK"] {
        assert!(out.contains(marker), "missing {marker}:\n{out}");
    }
    d.stop();
    // Check the image from the host.
    let data = std::fs::read(&img).unwrap();
    assert_eq!(
        md5_of(&data[1 << 20..2 << 20]),
        guest_md5(&out),
        "written data differs on the host"
    );
    assert!(
        data[8 << 20..9 << 20].iter().all(|&b| b == 0),
        "discarded range does not read as zeroes"
    );
    assert!(
        data[..1 << 20].iter().all(|&b| b == 0xaa),
        "data outside the written range changed"
    );
}

#[test]
fn two_guests_on_two_exports_of_one_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    make_image(&a, 1);
    make_image(&b, 2);
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let mut args = export_args("ea", &a, &sa);
    args.extend(export_args("eb", &b, &sb));
    let d = Daemon::start(dir.path(), &args);
    let (da, db) = (dir.path().join("ga"), dir.path().join("gb"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let script = "dd if=/dev/vda bs=4096 count=1 2>/dev/null | od -A n -t x1 | head -n 1\n"
        .to_string()
        + WRITE_SCRIPT;
    let (sa2, sb2) = (sa.clone(), sb.clone());
    let s1 = script.clone();
    let ta = std::thread::spawn(move || boot(&da, &[&sa2], &s1));
    let tb = std::thread::spawn(move || boot(&db, &[&sb2], &script));
    let (oa, ob) = (ta.join().unwrap(), tb.join().unwrap());
    assert!(
        oa.contains(" 01 01 01 01") && oa.contains("PATTERN-OK"),
        "guest A:\n{oa}"
    );
    assert!(
        ob.contains(" 02 02 02 02") && ob.contains("PATTERN-OK"),
        "guest B:\n{ob}"
    );
    d.stop();
    let (ia, ib) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(md5_of(&ia[1 << 20..2 << 20]), guest_md5(&oa));
    assert_eq!(md5_of(&ib[1 << 20..2 << 20]), guest_md5(&ob));
}

#[test]
fn restarted_qemu_reconnects_and_sees_earlier_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    make_image(&img, 0);
    let sock = dir.path().join("vhost.sock");
    let d = Daemon::start(dir.path(), &export_args("e0", &img, &sock));
    let first = boot(dir.path(), &[&sock], WRITE_SCRIPT);
    assert!(first.contains("PATTERN-OK"), "{first}");
    let md5 = guest_md5(&first);
    // A new QEMU process on the same export reads what the first one wrote.
    let second = boot(
        dir.path(),
        &[&sock],
        "echo \"READ-MD5=$(dd if=/dev/vda bs=4096 skip=256 count=256 2>/dev/null | md5sum | cut -d' ' -f1)\"",
    );
    assert!(
        second.contains(&format!("READ-MD5={md5}")),
        "second boot:\n{second}"
    );
    d.stop();
}
