//! qtest command lines: any byte stream fed to an in-process qtest server (a `none`
//! machine with RAM and an `oxemu-test-device`) must get one reply per line, each
//! starting with `OK`, `FAIL` or (QEMU's) `IRQ`, without a panic, a hang or an
//! allocation beyond the protocol's limits.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use oxemu_devmodel::boards::machine_types;
use oxemu_devmodel::machine::{Machine, MachineConfig};
use oxemu_devmodel::qom::TypeRegistry;
use oxemu_devmodel::types::register_standard;
use oxemu_qtest::server::QtestServer;

struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = oxemu_qtest::protocol::parse(&String::from_utf8_lossy(data));
    let mut reg = TypeRegistry::new();
    register_standard(&mut reg);
    let mut m = Machine::new(reg, &machine_types()[0], &[]);
    m.init(&MachineConfig { ram_size: Some(1 << 16), ..Default::default() })
        .unwrap();
    m.device_add(
        "oxemu-test-device",
        Some("t0"),
        &[("addr".into(), "0x1000".into()), ("iobase".into(), "0x10".into())],
    )
    .unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let s = QtestServer::new(Arc::new(Mutex::new(m)), true, Box::new(Sink(out.clone())), None);
    s.serve(data);
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    for l in text.lines() {
        assert!(l.starts_with("OK") || l.starts_with("FAIL") || l.starts_with("IRQ "), "{l}");
    }
});
