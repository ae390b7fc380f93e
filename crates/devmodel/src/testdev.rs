//! `oxemu-test-device`: a small MMIO and port-I/O device for exercising the device
//! model, qtest and QMP. It is oxemu's own (QEMU has no such device).
//!
//! Registers (32 bits wide, little-endian, at `addr` in system memory; the same
//! register file also at `iobase` in port I/O space unless `iobase` is
//! `0xffffffff`):
//!
//! | offset | name     | access | meaning                                              |
//! |--------|----------|--------|------------------------------------------------------|
//! | 0x00   | ID       | RO     | `0x0e1e5700`                                         |
//! | 0x04   | REVISION | RO     | the `revision` property                              |
//! | 0x08   | SCRATCH  | RW     | 32 bits of storage, cleared by reset                 |
//! | 0x0c   | IRQ      | RW     | bit 0 drives output line 0                           |
//! | 0x10   | TIMER    | WO     | arms a one-shot timer that many ns ahead (0 cancels) |
//! | 0x14   | STATUS   | RW     | bit 0 set when the timer fired (also raises line 1); |
//! |        |          |        | writing 1 clears it and lowers line 1                |
//! | 0x18   | FIRED    | RO     | how many times the timer fired                       |
//! | 0x1c   | INPUTS   | RO     | bit n is the level of input line n (2 lines)         |
//!
//! The device accepts 1 to 4 byte accesses and implements only 4-byte ones, so byte
//! and word accesses are widened as QEMU's `access_with_adjusted_size` does.

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::clock::{Clock, TimerId};
use crate::gpio::{Irq, IrqOut};
use crate::memory::{AccessSizes, IoOps};
use crate::qom::{Behaviour, Context, PropDef, PropType, TypeInfo, TypeRegistry};

/// The type name.
pub const TYPE: &str = "oxemu-test-device";
/// Value of the ID register.
pub const ID: u32 = 0x0e1e_5700;
/// Size of the register file.
pub const SIZE: u64 = 0x100;

#[derive(Default)]
struct Regs {
    revision: u32,
    scratch: u32,
    irq: u32,
    status: u32,
    fired: u32,
    inputs: u32,
    out: Vec<IrqOut>,
    timer: Option<TimerId>,
    clock: Option<Clock>,
}

struct Ops(Arc<Mutex<Regs>>);

impl IoOps for Ops {
    fn read(&mut self, offset: u64, _size: u32) -> u64 {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Widened accesses arrive at their own (unaligned) offset: the register's
        // bytes from there on.
        let v = match offset & !3 {
            0x00 => ID,
            0x04 => r.revision,
            0x08 => r.scratch,
            0x0c => r.irq,
            0x14 => r.status,
            0x18 => r.fired,
            0x1c => r.inputs,
            _ => 0,
        };
        (v >> ((offset & 3) * 8)) as u64
    }

    fn write(&mut self, offset: u64, value: u64, _size: u32) {
        let v = value as u32;
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match offset & !3 {
            0x08 => r.scratch = v,
            0x0c => {
                r.irq = v & 1;
                let out = r.out.first().cloned();
                drop(r);
                if let Some(o) = out {
                    o.set((v & 1) as i32);
                }
            }
            0x10 => {
                if let (Some(c), Some(t)) = (r.clock.clone(), r.timer) {
                    drop(r);
                    if v == 0 {
                        c.timer_del(t);
                    } else {
                        c.timer_mod(t, c.now().saturating_add(v as i64));
                    }
                }
            }
            0x14 if v & 1 != 0 => {
                r.status &= !1;
                let out = r.out.get(1).cloned();
                drop(r);
                if let Some(o) = out {
                    o.set(0);
                }
            }
            _ => {}
        }
    }
}

struct TestDevice {
    regs: Arc<Mutex<Regs>>,
}

impl Behaviour for TestDevice {
    fn realize(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let addr = cx.prop_u64("addr").unwrap_or(0);
        let iobase = cx.prop_u64("iobase").unwrap_or(0xffff_ffff);
        if iobase != 0xffff_ffff && iobase + SIZE > 0x10000 {
            return Err(format!(
                "iobase 0x{iobase:x} does not fit the 64 KiB port I/O space"
            ));
        }
        let outs = vec![IrqOut::new(), IrqOut::new()];
        {
            let mut r = self.regs.lock().unwrap_or_else(|p| p.into_inner());
            r.revision = cx.prop_u64("revision").unwrap_or(0) as u32;
            r.out = outs.clone();
            r.clock = Some(cx.clock.clone());
            let regs = self.regs.clone();
            r.timer = Some(cx.clock.new_timer(Box::new(move |_now| {
                let mut r = regs.lock().unwrap_or_else(|p| p.into_inner());
                r.status |= 1;
                r.fired = r.fired.wrapping_add(1);
                let out = r.out.get(1).cloned();
                drop(r);
                if let Some(o) = out {
                    o.set(1);
                }
            })));
        }
        cx.gpios.add_out(None, outs);
        let ins = (0..2)
            .map(|n| {
                let regs = self.regs.clone();
                Irq::new(move |level| {
                    let mut r = regs.lock().unwrap_or_else(|p| p.into_inner());
                    if level != 0 {
                        r.inputs |= 1 << n;
                    } else {
                        r.inputs &= !(1 << n);
                    }
                })
            })
            .collect();
        cx.gpios.add_in(None, ins);
        let valid = AccessSizes::new(1, 4);
        let imp = AccessSizes::new(4, 4);
        let name = TYPE;
        let mmio = cx.memory.add_io(
            name,
            SIZE,
            Arc::new(Mutex::new(Ops(self.regs.clone()))),
            valid,
            imp,
        );
        cx.memory
            .add_subregion(cx.system_memory, addr, mmio, 0)
            .map_err(|e| e.to_string())?;
        cx.regions.push(mmio);
        if iobase != 0xffff_ffff {
            let pio = cx.memory.add_io(
                &format!("{name}-io"),
                SIZE,
                Arc::new(Mutex::new(Ops(self.regs.clone()))),
                valid,
                imp,
            );
            cx.memory
                .add_subregion(cx.system_io, iobase, pio, 0)
                .map_err(|e| e.to_string())?;
            cx.regions.push(pio);
        }
        Ok(())
    }

    fn unrealize(&mut self, cx: &mut Context<'_>) {
        let mut r = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = r.timer.take() {
            cx.clock.timer_free(t);
        }
        r.out.clear();
    }

    fn reset(&mut self) {
        let mut r = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        r.scratch = 0;
        r.status = 0;
        r.fired = 0;
        r.irq = 0;
        if let (Some(c), Some(t)) = (r.clock.clone(), r.timer) {
            c.timer_del(t);
        }
    }
}

/// Registers the test device type.
pub fn register(r: &mut TypeRegistry) {
    let mut t = TypeInfo::new(TYPE, "sys-bus-device")
        .prop(PropDef::new(
            "addr",
            PropType::U64,
            Some(json!(0x1000_0000u64)),
        ))
        .prop(PropDef::new(
            "iobase",
            PropType::U32,
            Some(json!(0xffff_ffffu32)),
        ))
        .prop(PropDef::new("revision", PropType::U32, Some(json!(2))))
        .factory(|| {
            Box::new(TestDevice {
                regs: Arc::new(Mutex::new(Regs::default())),
            })
        });
    t.description = Some("oxemu test device (MMIO, port I/O, IRQs, timer)".into());
    t.hotpluggable = true;
    t.category = Some("Misc devices");
    r.register(t).expect("test device type");
}
