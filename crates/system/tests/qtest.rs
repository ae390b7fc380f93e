//! Every qtest command against oxemu-system-aarch64 over the socket, started
//! the way libqtest starts QEMU, with exact replies.

use oxemu_qtest::client::QTest;

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-system-aarch64");

fn start(args: &str) -> QTest {
    QTest::start(BIN, args).expect("start oxemu-system-aarch64")
}

fn raw(q: &mut QTest, lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| q.command(l).unwrap()).collect()
}

#[test]
fn every_qtest_command_replies_as_qemu() {
    let mut q = start("-M none, -m 64M -device oxemu-test-device,id=t0,iobase=0x100");
    assert_eq!(
        raw(
            &mut q,
            &[
                "endianness",
                "writeb 0x10 0xab",
                "readb 0x10",
                "writew 0x20 0xbeef",
                "readw 0x20",
                "writel 0x30 0xdeadbeef",
                "readl 0x30",
                "writeq 0x40 0x0123456789abcdef",
                "readq 0x40",
                "read 0x40 8",
                "b64read 0x40 3",
                "write 0x80 4 0x01020304",
                "read 0x80 4",
                "b64write 0x90 2 /w8=",
                "read 0x90 2",
                "memset 0xa0 3 0x77",
                "read 0xa0 4",
                "readl 0x10000000",
                "writel 0x10000008 0x55aa",
                "readw 0x10000008",
                "inl 0x100",
                "outw 0x108 0x1234",
                "inb 0x109",
                "outb 0x108 0x1",
                "inl 0x108",
                "outl 0x108 0x0",
                "readq 0x7000000000",
                "inw 0xf000",
                "module_load block curl",
            ]
        ),
        [
            "OK little",
            "OK",
            "OK 0x00000000000000ab",
            "OK",
            "OK 0x000000000000beef",
            "OK",
            "OK 0x00000000deadbeef",
            "OK",
            "OK 0x0123456789abcdef",
            "OK 0xefcdab8967452301",
            "OK 782r",
            "OK",
            "OK 0x01020304",
            "OK",
            "OK 0xff0f",
            "OK",
            "OK 0x77777700",
            "OK 0x000000000e1e5700",
            "OK",
            "OK 0x00000000000055aa",
            "OK 0xe1e5700",
            "OK",
            "OK 0x0012",
            "OK",
            "OK 0x0001",
            "OK",
            "OK 0x0000000000000000",
            "OK 0xffff",
            "FAIL",
        ]
    );
    // The typed client helpers agree.
    q.writel(0x1000_0008, 0xfeed).unwrap();
    assert_eq!(q.readl(0x1000_0008).unwrap(), 0xfeed);
    q.memwrite(0x200, b"hello").unwrap();
    assert_eq!(q.memread(0x200, 5).unwrap(), b"hello");
    q.bufwrite(0x300, &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!(q.bufread(0x300, 5).unwrap(), [1, 2, 3, 4, 5]);
    q.memset(0x300, 2, 9).unwrap();
    assert_eq!(q.memread(0x300, 3).unwrap(), [9, 9, 3]);
    q.outl(0x108, 7).unwrap();
    assert_eq!(q.inl(0x108).unwrap(), 7);
    assert_eq!(q.inw(0x108).unwrap(), 7);
    assert_eq!(q.inb(0x108).unwrap(), 7);
    q.writeb(0x400, 1).unwrap();
    q.writew(0x402, 2).unwrap();
    q.writeq(0x408, 3).unwrap();
    assert_eq!(q.readb(0x400).unwrap(), 1);
    assert_eq!(q.readw(0x402).unwrap(), 2);
    assert_eq!(q.readq(0x408).unwrap(), 3);
    q.outb(0x108, 1).unwrap();
    q.outw(0x108, 1).unwrap();
    assert!(
        q.terminate().unwrap().success(),
        "SIGTERM exits with status 0"
    );
}

#[test]
fn clock_timers_and_irqs() {
    let mut q = start("-M oxemu-test");
    let dev = "/machine/unattached/device[1]";
    assert_eq!(
        q.qmp(&format!(
            r#"{{"execute":"qom-get","arguments":{{"path":"{dev}","property":"type"}}}}"#
        ))
        .unwrap()["return"],
        "oxemu-test-device"
    );
    assert_eq!(
        raw(
            &mut q,
            &[
                "clock_step",
                "clock_step 1000",
                "clock_set 500",
                "clock_set 2000"
            ]
        ),
        ["OK 0", "OK 1000", "OK 1000", "OK 2000"]
    );
    q.irq_intercept_out(dev).unwrap();
    assert_eq!(
        q.command("irq_intercept_in /machine/unattached/device[0]")
            .unwrap(),
        "FAIL IRQ intercept already enabled"
    );
    assert!(!q.get_irq(0));
    q.writel(0x1000_000c, 1).unwrap();
    assert!(q.get_irq(0));
    q.writel(0x1000_000c, 0).unwrap();
    assert!(!q.get_irq(0));
    // A timer 300 ns ahead: clock_step without argument stops at its deadline.
    q.writel(0x1000_0010, 300).unwrap();
    assert_eq!(q.clock_step(None).unwrap(), 2300);
    assert!(q.get_irq(1));
    assert_eq!(q.readl(0x1000_0014).unwrap(), 1);
    q.writel(0x1000_0014, 1).unwrap();
    assert!(!q.get_irq(1));
    assert_eq!(q.clock_set(3000).unwrap(), 3000);
    q.set_irq_in(dev, None, 0, 1).unwrap();
    assert_eq!(q.readl(0x1000_001c).unwrap(), 1);
    assert_eq!(
        q.command(&format!("set_irq_in {dev} unnamed-gpio-in 5 1"))
            .unwrap(),
        format!("FAIL No GPIO input 'unnamed-gpio-in'[5] on {dev}")
    );
    // Version 1.0 of the board has the compat revision.
    assert_eq!(q.readl(0x1000_0004).unwrap(), 2);
    let mut old = start("-M oxemu-test-1.0");
    assert_eq!(old.readl(0x1000_0004).unwrap(), 1);
    let mut g = start("-M oxemu-test-1.0 -global oxemu-test-device.revision=9");
    assert_eq!(g.readl(0x1000_0004).unwrap(), 9);
}

#[test]
fn intercepting_inputs() {
    let mut q = start("-M none -device oxemu-test-device,id=t0");
    q.irq_intercept_in("/machine/peripheral/t0").unwrap();
    q.set_irq_in("/machine/peripheral/t0", None, 1, 1).unwrap();
    assert!(q.get_irq(1));
    assert_eq!(q.readl(0x1000_001c).unwrap(), 2, "forwarded to the device");
    assert_eq!(
        q.command("irq_intercept_in t0").unwrap(),
        "OK",
        "same device, partial path"
    );
}

#[test]
fn malformed_lines_fail_without_killing_the_machine() {
    let mut q = start("-M none -m 1M");
    assert_eq!(
        raw(
            &mut q,
            &[
                "read 0x0 0x10000000000",
                "b64read 0x0 0x1000001",
                "memset 0 0x10000000000 0",
                "readl",
                "writel 0x0",
                "readl banana",
                "outb 0x10000 1",
                "write 0 4 zz",
                "b64write 0 4 ***",
                "set_irq_in /machine/peripheral/none unnamed-gpio-in 0 1",
                "irq_intercept_out /machine/nothing",
                "fly_to_the_moon",
                "readb 0",
            ]
        ),
        [
            "FAIL read: size 0x10000000000 exceeds the limit of 0x1000000 bytes",
            "FAIL b64read: size 0x1000001 exceeds the limit of 0x1000000 bytes",
            "FAIL memset: size 0x10000000000 exceeds the limit of 0x1000000 bytes",
            "FAIL readl: missing address",
            "FAIL writel: missing value",
            "FAIL readl: invalid address 'banana'",
            "FAIL outb: port 0x10000 is above 0xffff",
            "FAIL write: data must start with 0x",
            "FAIL b64write: invalid base64 character at offset 0",
            "FAIL Unknown device",
            "FAIL Unknown device",
            "FAIL Unknown command 'fly_to_the_moon'",
            "OK 0x0000000000000000",
        ]
    );
    // A large but allowed read works.
    assert_eq!(q.bufread(0, 1 << 20).unwrap().len(), 1 << 20);
    assert!(q.terminate().unwrap().success());
}

#[test]
fn qtest_log_records_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("qtest.log");
    // A later -qtest-log replaces libqtest's /dev/null.
    let mut q = start(&format!("-M none -qtest-log {}", log.display()));
    q.command("readb 0x0").unwrap();
    assert!(q.terminate().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("[I +") && lines[0].ends_with("] OPENED"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[R +") && l.ends_with("] readb 0x0")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[S +") && l.ends_with("] OK 0x0000000000000000")),
        "{text}"
    );
}
