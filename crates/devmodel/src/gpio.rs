//! Interrupt and GPIO lines, as QEMU's `qemu_irq` and qdev GPIO lists.
//!
//! An input line ([`Irq`]) is a handler a device provides; an output line
//! ([`IrqOut`]) is a slot that a board connects to some input. Setting an output
//! calls whatever input it is connected to (nothing if unconnected). qtest's
//! interception replaces handlers or connections and forwards to the originals.

use std::sync::{Arc, Mutex};

/// An input line's handler: gets the new level.
pub type IrqHandler = Arc<dyn Fn(i32) + Send + Sync>;

/// An input line (`qemu_irq`).
#[derive(Clone)]
pub struct Irq {
    handler: Arc<Mutex<IrqHandler>>,
}

impl Irq {
    /// A line that calls `f` with each level set on it.
    pub fn new(f: impl Fn(i32) + Send + Sync + 'static) -> Self {
        Irq {
            handler: Arc::new(Mutex::new(Arc::new(f))),
        }
    }

    /// Sets the level (`qemu_set_irq`).
    pub fn set(&self, level: i32) {
        let h = self
            .handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        h(level);
    }

    /// Replaces the handler with `f`, which receives the original handler to
    /// forward to (`qemu_irq_intercept_in`).
    pub fn intercept(&self, f: impl Fn(&IrqHandler, i32) + Send + Sync + 'static) {
        let mut h = self.handler.lock().unwrap_or_else(|p| p.into_inner());
        let old = h.clone();
        *h = Arc::new(move |lvl| f(&old, lvl));
    }
}

/// An output line: a connection to some input, or none.
#[derive(Clone, Default)]
pub struct IrqOut {
    target: Arc<Mutex<Option<Irq>>>,
}

impl IrqOut {
    /// An unconnected output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the output to `irq` (`qdev_connect_gpio_out`), returning the old
    /// connection.
    pub fn connect(&self, irq: Option<Irq>) -> Option<Irq> {
        std::mem::replace(
            &mut *self.target.lock().unwrap_or_else(|p| p.into_inner()),
            irq,
        )
    }

    /// Whether something is connected.
    pub fn is_connected(&self) -> bool {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Drives the output to `level`.
    pub fn set(&self, level: i32) {
        let t = self
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(t) = t {
            t.set(level);
        }
    }
}

/// One named (or unnamed, `None`) list of lines of a device.
#[derive(Clone, Default)]
pub struct GpioList<T> {
    /// The list's name; `None` for the unnamed list.
    pub name: Option<String>,
    /// The lines.
    pub lines: Vec<T>,
}

/// A device's GPIO lists (`DeviceState.gpios`).
#[derive(Clone, Default)]
pub struct Gpios {
    /// Input lists.
    pub inputs: Vec<GpioList<Irq>>,
    /// Output lists.
    pub outputs: Vec<GpioList<IrqOut>>,
}

impl Gpios {
    /// Adds input lines to list `name`.
    pub fn add_in(&mut self, name: Option<&str>, lines: Vec<Irq>) {
        match self.inputs.iter_mut().find(|l| l.name.as_deref() == name) {
            Some(l) => l.lines.extend(lines),
            None => self.inputs.push(GpioList {
                name: name.map(String::from),
                lines,
            }),
        }
    }

    /// Adds output lines to list `name`.
    pub fn add_out(&mut self, name: Option<&str>, lines: Vec<IrqOut>) {
        match self.outputs.iter_mut().find(|l| l.name.as_deref() == name) {
            Some(l) => l.lines.extend(lines),
            None => self.outputs.push(GpioList {
                name: name.map(String::from),
                lines,
            }),
        }
    }

    /// Input line `n` of list `name`.
    pub fn input(&self, name: Option<&str>, n: usize) -> Option<&Irq> {
        self.inputs
            .iter()
            .find(|l| l.name.as_deref() == name)
            .and_then(|l| l.lines.get(n))
    }

    /// Output line `n` of list `name`.
    pub fn output(&self, name: Option<&str>, n: usize) -> Option<&IrqOut> {
        self.outputs
            .iter()
            .find(|l| l.name.as_deref() == name)
            .and_then(|l| l.lines.get(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};

    #[test]
    fn outputs_drive_connected_inputs_and_interception_forwards() {
        let seen = Arc::new(AtomicI32::new(-1));
        let s = seen.clone();
        let input = Irq::new(move |l| s.store(l, Ordering::SeqCst));
        let out = IrqOut::new();
        out.set(1); // unconnected: nothing happens
        assert_eq!(seen.load(Ordering::SeqCst), -1);
        out.connect(Some(input.clone()));
        out.set(1);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        let spy = Arc::new(Mutex::new(Vec::new()));
        let sp = spy.clone();
        input.intercept(move |orig, l| {
            sp.lock().unwrap().push(l);
            orig(l);
        });
        out.set(0);
        assert_eq!(*spy.lock().unwrap(), [0]);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        let mut g = Gpios::default();
        g.add_in(None, vec![input]);
        g.add_out(Some("sysbus-irq"), vec![out]);
        assert!(g.input(None, 0).is_some());
        assert!(g.input(None, 1).is_none());
        assert!(g.output(Some("sysbus-irq"), 0).unwrap().is_connected());
    }
}
