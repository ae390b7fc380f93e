use std::io::Write;
use std::sync::{Arc, Mutex};

use oxemu_devmodel::boards::machine_types;
use oxemu_devmodel::machine::{Machine, MachineConfig};
use oxemu_devmodel::qom::TypeRegistry;
use oxemu_devmodel::types::register_standard;
use serde_json::json;

use crate::server::QtestServer;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Buf {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

fn server(qtest: bool) -> (QtestServer, Buf, Buf) {
    let mut reg = TypeRegistry::new();
    register_standard(&mut reg);
    let mt = &machine_types()[0];
    let mut m = Machine::new(reg, mt, &[]);
    m.init(&MachineConfig {
        ram_size: Some(1 << 20),
        ..Default::default()
    })
    .unwrap();
    m.device_add(
        "oxemu-test-device",
        Some("t0"),
        &[
            ("addr".into(), json!("0x10000000")),
            ("iobase".into(), json!("0x100")),
        ],
    )
    .unwrap();
    let out = Buf::default();
    let log = Buf::default();
    let s = QtestServer::new(
        Arc::new(Mutex::new(m)),
        qtest,
        Box::new(out.clone()),
        Some(Box::new(log.clone())),
    );
    (s, out, log)
}

fn run(s: &QtestServer, out: &Buf, lines: &[&str]) -> String {
    for l in lines {
        s.handle_line(l);
    }
    out.take()
}

#[test]
fn memory_commands_reply_as_qemu() {
    let (s, out, _) = server(true);
    assert_eq!(
        run(&s, &out, &[
            "endianness",
            "writeb 0x10 0x1ff",
            "readb 0x10",
            "writew 0x20 0xbeef",
            "readw 0x20",
            "writel 0x30 0xdeadbeef",
            "readl 0x30",
            "writeq 0x40 0x0123456789abcdef",
            "readq 0x40",
            "read 0x40 4",
            "b64read 0x40 4",
            "write 0x50 3 0xaabbcc",
            "read 0x50 3",
            "b64write 0x60 3 AQID",
            "read 0x60 3",
            "memset 0x70 4 0x5a",
            "readl 0x70",
            "memset 0x70 0 1",
            "b64read 0x0 0",
        ]),
        "OK little\nOK\nOK 0x00000000000000ff\nOK\nOK 0x000000000000beef\nOK\nOK 0x00000000deadbeef\n\
OK\nOK 0x0123456789abcdef\nOK 0xefcdab89\nOK 782riQ==\nOK\nOK 0xaabbcc\nOK\nOK 0x010203\nOK\n\
OK 0x000000005a5a5a5a\nOK\nOK \n"
    );
}

#[test]
fn mmio_pio_and_unassigned() {
    let (s, out, _) = server(true);
    assert_eq!(
        run(&s, &out, &[
            "readl 0x10000000",
            "writel 0x10000008 0x12345678",
            "readb 0x10000009",
            "inl 0x100",
            "outl 0x108 0x55",
            "inw 0x108",
            "inb 0x108",
            "readq 0x900000000",
            "inb 0x8000",
            "writel 0xffffffffffffffff 1",
        ]),
        "OK 0x000000000e1e5700\nOK\nOK 0x0000000000000056\nOK 0xe1e5700\nOK\nOK 0x0055\nOK 0x0055\n\
OK 0x0000000000000000\nOK 0x00ff\nOK\n"
    );
}

#[test]
fn clock_and_timers() {
    let (s, out, _) = server(true);
    assert_eq!(
        run(
            &s,
            &out,
            &[
                "clock_step",
                "clock_step 100",
                "writel 0x10000010 1000",
                "clock_step",
                "readl 0x10000014",
                "clock_set 5000",
                "clock_set 10",
                "clock_step -5",
            ]
        ),
        "OK 0\nOK 100\nOK\nOK 1100\nOK 0x0000000000000001\nOK 5000\nOK 5000\nOK 5000\n"
    );
    let (s, out, _) = server(false);
    assert_eq!(
        run(&s, &out, &["clock_step", "clock_set 1"]),
        "FAIL Unknown command 'clock_step'\nFAIL Unknown command 'clock_set'\n"
    );
}

#[test]
fn irq_interception_reports_before_the_reply() {
    let (s, out, _) = server(true);
    let p = "/machine/peripheral/t0";
    assert_eq!(
        run(&s, &out, &[
            "irq_intercept_out /machine/nothing",
            &format!("irq_intercept_out {p}"),
            &format!("irq_intercept_out {p}"),
            "irq_intercept_in /machine/unattached/sysbus",
            "writel 0x1000000c 1",
            "writel 0x1000000c 1",
            "writel 0x1000000c 0",
            "writel 0x10000010 10",
            "clock_step 10",
            "writel 0x10000014 1",
        ]),
        "FAIL Unknown device\nOK\nOK\nFAIL Unknown device\nIRQ raise 0\nOK\nOK\nIRQ lower 0\nOK\nOK\n\
IRQ raise 1\nOK 10\nIRQ lower 1\nOK\n"
    );
    assert_eq!(
        run(&s, &out, &[
            &format!("set_irq_in {p} unnamed-gpio-in 1 1"),
            "readl 0x1000001c",
            &format!("set_irq_in {p} unnamed-gpio-in 2 1"),
            &format!("set_irq_in {p} other 0 1"),
            "set_irq_in /nope unnamed-gpio-in 0 1",
        ]),
        "OK\nOK 0x0000000000000002\nFAIL No GPIO input 'unnamed-gpio-in'[2] on /machine/peripheral/t0\n\
FAIL No GPIO input 'other'[0] on /machine/peripheral/t0\nFAIL Unknown device\n"
    );
}

#[test]
fn intercepting_inputs_forwards_and_reports() {
    let (s, out, _) = server(true);
    let p = "/machine/peripheral/t0";
    assert_eq!(
        run(
            &s,
            &out,
            &[
                &format!("irq_intercept_in {p}"),
                "irq_intercept_in /machine/peripheral",
                &format!("set_irq_in {p} unnamed-gpio-in 0 1"),
                "readl 0x1000001c",
            ]
        ),
        "OK\nFAIL Unknown device\nIRQ raise 0\nOK\nOK 0x0000000000000001\n"
    );
}

#[test]
fn malformed_lines_fail_and_the_server_goes_on() {
    let (s, out, _) = server(true);
    assert_eq!(
        run(
            &s,
            &out,
            &[
                "frobnicate 1",
                "readl",
                "read 0x0 0x10000000000",
                "memset 0 0xffffffffffffffff 0",
                "outb 0x10000 0",
                "module_load a b",
                "readl 0x10000000",
            ]
        ),
        "FAIL Unknown command 'frobnicate'\nFAIL readl: missing address\n\
FAIL read: size 0x10000000000 exceeds the limit of 0x1000000 bytes\n\
FAIL memset: size 0xffffffffffffffff exceeds the limit of 0x1000000 bytes\n\
FAIL outb: port 0x10000 is above 0xffff\nFAIL\nOK 0x000000000e1e5700\n"
    );
}

#[test]
fn serve_splits_lines_refuses_huge_ones_and_logs() {
    let (s, out, log) = server(true);
    let mut input = b"readb 0x10\nwriteb 0x10 1\nreadb 0x10\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', crate::protocol::MAX_LINE + 10));
    input.extend_from_slice(b"\nendianness\n");
    s.serve(&input[..]);
    assert_eq!(
        out.take(),
        format!(
            "OK 0x0000000000000000\nOK\nOK 0x0000000000000001\nFAIL line longer than {} bytes\nOK little\n",
            crate::protocol::MAX_LINE
        )
    );
    let l = log.take();
    let lines: Vec<&str> = l.lines().collect();
    assert!(
        lines[0].starts_with("[I +0.0") && lines[0].ends_with("] OPENED"),
        "{l}"
    );
    assert!(
        lines[1].starts_with("[R +") && lines[1].ends_with("] readb 0x10"),
        "{l}"
    );
    assert!(
        lines[2].starts_with("[S +") && lines[2].ends_with("] OK 0x0000000000000000"),
        "{l}"
    );
    assert!(lines.last().unwrap().ends_with("] CLOSED"));
}
