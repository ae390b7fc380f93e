//! `oxemu-img bench`: qemu-img bench's options, defaults and output, on one event loop
//! with `depth` request tasks that re-use pre-allocated (and, for io_uring,
//! registered) buffers.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use oxemu_aio::spawn_local;
use oxemu_block::{
    Aio, AlignedBuf, BlockDriver, EventLoop, EventLoopConfig, IoVec, IoVecMut, WriteFlags,
};

use crate::image::{self, OpenOpts};
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt, Parsed};

const SPEC: &[Opt] = &[
    opt(Some('c'), None, true),
    opt(Some('d'), None, true),
    opt(Some('f'), None, true),
    opt(Some('i'), None, true),
    opt(Some('n'), None, false),
    opt(Some('o'), None, true),
    opt(Some('q'), None, false),
    opt(Some('s'), None, true),
    opt(Some('S'), None, true),
    opt(Some('t'), None, true),
    opt(Some('w'), None, false),
    opt(Some('U'), Some("force-share"), false),
    opt(None, Some("pattern"), true),
    opt(None, Some("flush-interval"), true),
    opt(None, Some("no-drain"), false),
    opt(None, Some("random"), false),
];

/// Everything a run needs, after validation.
#[derive(Debug, Clone)]
struct Params {
    count: u64,
    depth: usize,
    bufsize: usize,
    offset: u64,
    step: u64,
    write: bool,
    pattern: u8,
    flush_interval: u64,
    drain: bool,
    /// oxemu extension: uniformly random offsets (multiples of the step) instead of
    /// qemu-img's sequential walk.
    random: bool,
}

fn number(p: &Parsed, key: &str, what: &str, default: u64) -> Result<u64, Error> {
    match p.get(key) {
        None => Ok(default),
        Some(s) => oxemu_opts::size::parse_size(s)
            .ok()
            .filter(|_| !s.starts_with('-'))
            .ok_or_else(|| Error::Msg(format!("Invalid {what} specified: '{s}'"))),
    }
}

fn params(p: &Parsed) -> Result<Params, Error> {
    let count = number(p, "c", "request count", 75000)?;
    let depth = number(p, "d", "queue depth", 64)?;
    if depth == 0 || depth > 1 << 16 {
        return Err(Error::Msg(format!(
            "Invalid queue depth specified: {depth} (1 to 65536)"
        )));
    }
    let bufsize = number(p, "s", "buffer size", 4096)?;
    if bufsize == 0 || bufsize > i32::MAX as u64 {
        return Err(Error::Msg(format!(
            "Invalid buffer size specified: {bufsize} (must be between 1 byte and 2 GiB)"
        )));
    }
    let offset = number(p, "o", "offset", 0)?;
    let step = number(p, "S", "step size", bufsize)?;
    let write = p.has("w");
    let pattern = match p.get("pattern") {
        None => 0,
        Some(s) => s
            .parse::<u8>()
            .map_err(|_| Error::Msg(format!("Invalid pattern byte specified: '{s}'")))?,
    };
    let flush_interval = match p.get("flush-interval") {
        None => 0,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| Error::Msg(format!("Invalid flush interval specified: '{s}'")))?,
    };
    if flush_interval > 0 && !write {
        return Err(Error::Msg(
            "--flush-interval is only available in write tests".into(),
        ));
    }
    let drain = !p.has("no-drain");
    if !drain && flush_interval == 0 {
        return Err(Error::Msg("--no-drain requires --flush-interval".into()));
    }
    let random = p.has("random");
    if random && step == 0 {
        return Err(Error::Msg("--random needs a non-zero step size".into()));
    }
    Ok(Params {
        count,
        depth: depth as usize,
        bufsize: bufsize as usize,
        offset,
        step,
        write,
        pattern,
        flush_interval,
        drain,
        random,
    })
}

/// Runs `bench [options] filename`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let prm = params(&p)?;
    let cache = image::parse_cache(p.get("t").unwrap_or("writeback"))?;
    let aio = match p.get("i") {
        Some(s) => image::parse_aio(s)?,
        None if p.has("n") => Aio::Native,
        None => Aio::Threads,
    };
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: p.get("f"),
            cache,
            aio,
            read_only: !prm.write,
            force_share: p.has("force-share"),
            no_backing: false,
            no_share: false,
        },
    )?;
    let node = img.node.clone();
    let size = node.size();
    if size == 0 {
        return Err(Error::Msg(format!(
            "'{file}' is empty: nothing to benchmark"
        )));
    }
    let align = node.request_alignment() as u64;
    if cache.direct {
        for (what, v) in [
            ("offset (-o)", prm.offset),
            ("buffer size (-s)", prm.bufsize as u64),
            ("step size (-S)", prm.step),
        ] {
            if v % align != 0 {
                return Err(Error::Msg(format!(
                    "{what} {v} is not a multiple of the {align}-byte alignment that cache=none requires on '{file}'"
                )));
            }
        }
    }
    if !p.has("q") {
        let rw = match (prm.write, prm.random) {
            (false, false) => "read",
            (true, false) => "write",
            (false, true) => "random read",
            (true, true) => "random write",
        };
        println!(
            "Sending {} {rw} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            prm.count, prm.bufsize, prm.depth, prm.offset, prm.step
        );
        if prm.flush_interval > 0 {
            println!("Sending flush every {} requests", prm.flush_interval);
        }
    }
    let secs = execute(node, &prm, size, cache.writethrough, aio)?;
    println!("Run completed in {secs:.3} seconds.");
    let iops = prm.count as f64 / secs.max(1e-9);
    println!("IOPS: {iops:.0}");
    println!(
        "Throughput: {:.2} MiB/s",
        iops * prm.bufsize as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Shared state of the request tasks.
#[derive(Default)]
struct Run {
    next: Cell<u64>,
    in_flight: Cell<usize>,
    flushing: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
    drained: RefCell<Option<Waker>>,
    error: RefCell<Option<std::io::Error>>,
}

impl Run {
    async fn wait_flush_done(&self) {
        std::future::poll_fn(|cx| {
            if self.flushing.get() {
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await
    }

    async fn wait_drained(&self) {
        std::future::poll_fn(|cx| {
            if self.in_flight.get() > 0 {
                *self.drained.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await
    }

    fn end_flush(&self) {
        self.flushing.set(false);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    fn request_done(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if self.in_flight.get() == 0 {
            if let Some(w) = self.drained.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

fn offset_of(prm: &Params, idx: u64, size: u64) -> u64 {
    if prm.random {
        // splitmix64 of the request index: reproducible, no shared RNG state.
        let mut z = idx.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let slots = (size.saturating_sub(prm.offset + prm.bufsize as u64) / prm.step) + 1;
        return prm.offset + (z % slots) * prm.step;
    }
    if idx == 0 {
        return prm.offset;
    }
    ((prm.offset as u128 + idx as u128 * prm.step as u128) % size as u128) as u64
}

async fn worker(
    node: Arc<dyn BlockDriver>,
    run: Rc<Run>,
    prm: Rc<Params>,
    size: u64,
    mut buf: AlignedBuf,
    fua: bool,
) {
    loop {
        run.wait_flush_done().await;
        let idx = run.next.get();
        if idx >= prm.count || run.error.borrow().is_some() {
            return;
        }
        run.next.set(idx + 1);
        if prm.flush_interval > 0 && idx > 0 && idx.is_multiple_of(prm.flush_interval) {
            if prm.drain {
                run.flushing.set(true);
                run.wait_drained().await;
            }
            let r = node.flush().await;
            run.end_flush();
            if let Err(e) = r {
                run.error.borrow_mut().get_or_insert(e);
                return;
            }
        }
        let off = offset_of(&prm, idx, size);
        run.in_flight.set(run.in_flight.get() + 1);
        let r = if prm.write {
            node.writev(off, &IoVec::from_slice(&buf), WriteFlags { fua })
                .await
        } else {
            node.readv(off, &mut IoVecMut::from_slice(&mut buf)).await
        };
        run.request_done();
        if let Err(e) = r {
            run.error.borrow_mut().get_or_insert(e);
            return;
        }
    }
}

fn execute(
    node: Arc<dyn BlockDriver>,
    prm: &Params,
    size: u64,
    fua: bool,
    aio: Aio,
) -> Result<f64, Error> {
    let cfg = EventLoopConfig {
        queue_depth: (prm.depth as u32).clamp(64, 4096),
        ..Default::default()
    };
    let lp = EventLoop::new(cfg)
        .map_err(|e| Error::Msg(format!("Could not set up the event loop: {e}")))?;
    let tasks = prm.depth.min(prm.count.max(1) as usize);
    let mut bufs: Vec<AlignedBuf> = (0..tasks)
        .map(|_| {
            let mut b = AlignedBuf::new(prm.bufsize);
            b.fill(prm.pattern);
            b
        })
        .collect();
    if aio == Aio::IoUring {
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the buffers move into the tasks, which all finish inside block_on
        // below; the loop (and its registration) is dropped before they are freed.
        // Registration failing (e.g. RLIMIT_MEMLOCK) only loses the optimisation.
        let _ = unsafe { lp.register_buffers(&iov) };
    }
    let run = Rc::new(Run::default());
    let prm = Rc::new(prm.clone());
    let start = Instant::now();
    lp.block_on(async {
        let handles: Vec<_> = bufs
            .into_iter()
            .map(|b| spawn_local(worker(node.clone(), run.clone(), prm.clone(), size, b, fua)))
            .collect();
        for h in handles {
            h.await;
        }
        if prm.write && run.error.borrow().is_none() {
            if let Err(e) = node.close().await {
                run.error.borrow_mut().get_or_insert(e);
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    drop(lp);
    if let Some(e) = run.error.borrow_mut().take() {
        return Err(Error::Msg(format!(
            "Failed request: {}",
            crate::strip_os_errors(&e.to_string())
        )));
    }
    Ok(secs)
}
