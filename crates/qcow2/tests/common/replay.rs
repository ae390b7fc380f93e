//! Crash-state replay for qcow2: a workload runs on an image whose file child is a
//! `BlkLogWrites` node, so every write, discard and flush the driver sends to its
//! file is logged; a guest-level model remembers which values each guest sector
//! may hold. Replay rebuilds the image file as a power failure could have left it
//! (initial bytes plus the log up to a flush, plus any subset of the writes after
//! it) and checks each state with `qemu-img check` and `qemu-img convert`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use oxemu_block::blklogwrites::{read_log, BlkLogWrites, BlkLogWritesOptions, Log};
use oxemu_block::{
    BlockDriver, BlockResult, BlockStatus, FileDriver, FileOptions, IoVec, IoVecMut, NodeInfo,
    WriteFlags, ZeroFlags,
};
use oxemu_qcow2::{create, Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use rand::{Rng, SeedableRng};

const MAGIC: u64 = 0x4f58_5250_4c41_5921;

/// Guest sector content for value `id` of `sector` (0 is all zeroes).
pub fn pattern(sector: u64, id: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&sector.to_le_bytes());
    out[16..24].copy_from_slice(&id.to_le_bytes());
    out[24..512].fill(id as u8 | 1);
}

/// The value a guest sector holds: `Some(0)` for zeroes, `Some(id)` for a pattern of
/// this sector, `None` for anything else.
pub fn decode(sector: u64, b: &[u8]) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(b[16..24].try_into().unwrap());
    let ok = u64::from_le_bytes(b[..8].try_into().unwrap()) == MAGIC
        && u64::from_le_bytes(b[8..16].try_into().unwrap()) == sector
        && b[24..512].iter().all(|&x| x == id as u8 | 1);
    ok.then_some(id)
}

/// One change of a guest sector: in batch `batch`, value `id` (0: zeroes); a
/// discard may also have left the previous value.
#[derive(Clone, Copy, Debug)]
struct Change {
    batch: u32,
    id: u64,
    discard: bool,
}

/// A filter over the logging node that records truncations (which the log does
/// not hold, as in QEMU) with the log position at which they completed.
struct TruncRec {
    inner: Arc<BlkLogWrites>,
    truncs: Mutex<Vec<(u64, u64)>>,
}

#[async_trait(?Send)]
impl BlockDriver for TruncRec {
    fn info(&self) -> NodeInfo {
        self.inner.info()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn request_alignment(&self) -> u32 {
        self.inner.request_alignment()
    }
    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        self.inner.readv(offset, iov).await
    }
    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        self.inner.writev(offset, iov, flags).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.inner.write_zeroes(offset, len, flags).await
    }
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        self.inner.block_status(offset, len).await
    }
    async fn truncate(&self, size: u64) -> BlockResult<()> {
        self.inner.truncate(size).await?;
        self.truncs
            .lock()
            .unwrap()
            .push((self.inner.nr_entries(), size));
        Ok(())
    }
    async fn close(&self) -> BlockResult<()> {
        self.inner.close().await
    }
}

/// A guest operation of a batch (byte offsets and lengths, multiples of 512).
#[derive(Clone, Copy, Debug)]
pub enum GOp {
    Write(u64, u64),
    Zero(u64, u64),
    Discard(u64, u64),
    /// A compressed write of the (unallocated) cluster at this offset.
    Compressed(u64),
}

/// The workload's view: the image, and the model of what each sector may hold.
pub struct Guest {
    pub q: Arc<Qcow2>,
    rec: Arc<TruncRec>,
    pub cluster: u64,
    pub size: u64,
    batch: u32,
    next_id: u64,
    hist: Vec<Vec<Change>>,
    /// (first batch not covered, log entries at completion) of each guest flush.
    flushes: Vec<(u32, u64)>,
    /// (batch, new size) of each resize.
    sizes: Vec<(u32, u64)>,
    base: Vec<u8>,
    log_path: PathBuf,
}

impl Guest {
    /// Creates the image at `img` and opens it over a logging node writing `log`.
    pub async fn start(img: &Path, log: &Path, o: &Qcow2CreateOptions) -> Guest {
        Self::start_prepared(img, log, o, |_| {}).await
    }

    /// As [`Guest::start`], with `prepare` run on the new image (say, qemu-io
    /// writing zeroes) before logging starts; what it leaves must read as zeroes.
    pub async fn start_prepared(
        img: &Path,
        log: &Path,
        o: &Qcow2CreateOptions,
        prepare: impl FnOnce(&Path),
    ) -> Guest {
        create(img, o).await.unwrap();
        prepare(img);
        std::fs::write(log, b"").unwrap();
        let base = std::fs::read(img).unwrap();
        let f = Arc::new(FileDriver::open(&FileOptions::new(img)).unwrap());
        let l = Arc::new(FileDriver::open(&FileOptions::new(log)).unwrap());
        let blw = Arc::new(
            BlkLogWrites::open(f, l, &BlkLogWritesOptions::default())
                .await
                .unwrap(),
        );
        let rec = Arc::new(TruncRec {
            inner: blw,
            truncs: Mutex::new(Vec::new()),
        });
        let q = Qcow2::open(rec.clone(), Qcow2OpenOptions::default())
            .await
            .unwrap();
        Guest {
            q,
            rec,
            cluster: o.cluster_size,
            size: o.size,
            batch: 0,
            next_id: 1,
            hist: vec![Vec::new(); (o.size / 512) as usize],
            flushes: Vec::new(),
            sizes: vec![(0, o.size)],
            base,
            log_path: log.to_path_buf(),
        }
    }

    fn note(&mut self, off: u64, len: u64, id: Option<u64>, discard: bool) {
        for s in off / 512..(off + len) / 512 {
            let id = match id {
                Some(first) => first + s - off / 512,
                None => 0,
            };
            self.hist[s as usize].push(Change {
                batch: self.batch,
                id,
                discard,
            });
        }
    }

    /// Runs `ops` (on disjoint ranges) all at once; every write has unique values.
    pub async fn batch(&mut self, ops: &[GOp]) {
        let mut futs = Vec::new();
        let mut notes = Vec::new();
        for &op in ops {
            let q = self.q.clone();
            let cs = self.cluster;
            let (off, len, id, discard) = match op {
                GOp::Write(o, l) => (o, l, Some(self.next_id), false),
                GOp::Compressed(o) => (o, cs, Some(self.next_id), false),
                GOp::Zero(o, l) => (o, l, None, false),
                GOp::Discard(o, l) => (o, l, None, true),
            };
            if id.is_some() {
                self.next_id += len / 512;
            }
            notes.push((off, len, id, discard));
            futs.push(async move {
                let mk = || {
                    let mut b = vec![0u8; len as usize];
                    for (i, c) in b.chunks_mut(512).enumerate() {
                        pattern(off / 512 + i as u64, id.unwrap() + i as u64, c);
                    }
                    b
                };
                match op {
                    GOp::Write(..) => {
                        let b = mk();
                        q.writev(off, &IoVec::from_slice(&b), WriteFlags::default())
                            .await
                    }
                    GOp::Compressed(_) => q.write_compressed(off, &mk()).await,
                    GOp::Zero(..) => q.write_zeroes(off, len, ZeroFlags::default()).await,
                    GOp::Discard(..) => q.discard(off, len).await,
                }
                .unwrap_or_else(|e| panic!("{op:?}: {e}"));
            });
        }
        futures::future::join_all(futs).await;
        for (off, len, id, discard) in notes {
            self.note(off, len, id, discard);
        }
        self.batch += 1;
    }

    /// A guest flush; notes the log position at its completion.
    pub async fn flush(&mut self) {
        self.q.flush().await.unwrap();
        self.flushes.push((self.batch, self.rec.inner.nr_entries()));
    }

    /// Grows the image to `size`.
    pub async fn resize(&mut self, size: u64) {
        self.q.resize(size).await.unwrap();
        self.size = size;
        self.hist.resize((size / 512) as usize, Vec::new());
        self.sizes.push((self.batch, size));
        self.batch += 1;
    }

    /// Empties the image (`qemu-img commit`'s last step; no backing file, so every
    /// sector reads as zeroes).
    pub async fn make_empty(&mut self) {
        self.q.make_empty().await.unwrap();
        let n = self.size;
        self.note(0, n, None, false);
        self.batch += 1;
    }

    /// Closes the image and returns what replay needs.
    pub async fn finish(self) -> Recorded {
        self.q.close().await.unwrap();
        self.rec.close().await.unwrap();
        let truncs = self.rec.truncs.lock().unwrap().clone();
        Recorded {
            base: self.base,
            log: read_log(&self.log_path).unwrap(),
            truncs,
            hist: self.hist,
            flushes: self.flushes,
            sizes: self.sizes,
        }
    }
}

/// A recorded workload.
pub struct Recorded {
    base: Vec<u8>,
    pub log: Log,
    truncs: Vec<(u64, u64)>,
    hist: Vec<Vec<Change>>,
    flushes: Vec<(u32, u64)>,
    sizes: Vec<(u32, u64)>,
}

/// Replay results.
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub states: usize,
    pub corrupt: usize,
    pub lost: usize,
    pub flush_points: usize,
    pub repaired: usize,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.states += o.states;
        self.corrupt += o.corrupt;
        self.lost += o.lost;
        self.flush_points += o.flush_points;
        self.repaired += o.repaired;
    }
}

struct Job {
    image: Vec<u8>,
    /// Index of the next flush entry after the state's prefix (or the number of
    /// entries): the crash may have happened at any time before it was logged.
    horizon: usize,
    what: String,
}

impl Recorded {
    /// Batches covered by the last guest flush that completed before entry
    /// `horizon` was logged: a crash state between two flush entries may come from
    /// any time before the second, so every flush acknowledged by then must hold.
    fn covered(&self, horizon: usize) -> u32 {
        self.flushes
            .iter()
            .filter(|f| f.1 as usize <= horizon)
            .map(|f| f.0)
            .max()
            .unwrap_or(0)
    }

    /// Values sector `s` may hold when batches `< b` are durable.
    fn allowed(&self, s: usize, b: u32) -> Vec<u64> {
        let h = &self.hist[s];
        let mut out = Vec::new();
        let durable: Vec<&Change> = h.iter().filter(|c| c.batch < b).collect();
        let mut i = durable.len();
        loop {
            if i == 0 {
                out.push(0);
                break;
            }
            i -= 1;
            out.push(durable[i].id);
            if !durable[i].discard {
                break;
            }
        }
        out.extend(h.iter().filter(|c| c.batch >= b).map(|c| c.id));
        out
    }

    fn apply(&self, img: &mut Vec<u8>, i: usize, zero_discards: bool) {
        let e = &self.log.entries[i];
        if e.is_flush() {
            return;
        }
        let r = e.range(self.log.sector_size());
        let (a, b) = (r.start as usize, r.end as usize);
        if e.is_discard() {
            if zero_discards {
                let end = b.min(img.len());
                if a < end {
                    img[a..end].fill(0);
                }
            }
            return;
        }
        if img.len() < b {
            img.resize(b, 0);
        }
        img[a..b].copy_from_slice(self.log.data(e));
    }

    fn truncate_at(&self, img: &mut Vec<u8>, pos: usize) {
        for &(p, size) in &self.truncs {
            if p as usize == pos {
                img.resize(size as usize, 0);
            }
        }
    }

    /// Replays about `target` crash states (every flush entry of the log is a
    /// point; a point gives its prefix and random subsets of the writes up to the
    /// next flush entry), checking each with qemu-img in `workers` threads.
    pub fn replay(
        &self,
        target: usize,
        seed: u64,
        dir: &Path,
        workers: usize,
    ) -> (Stats, Vec<String>) {
        let n = self.log.entries.len();
        let points: Vec<usize> = (0..n).filter(|&i| self.log.entries[i].is_flush()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // States per point: its prefix, plus subsets; `per` of them at `target / per`
        // random points.
        let per = target.div_ceil(points.len().max(1)).max(1);
        let chosen: std::collections::HashSet<usize> = rand::seq::index::sample(
            &mut rng,
            points.len(),
            target.div_ceil(per).min(points.len()),
        )
        .into_iter()
        .collect();
        let stats = Mutex::new(Stats {
            flush_points: points.len(),
            ..Default::default()
        });
        let fails = Mutex::new(Vec::new());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(workers * 2);
        let rx = Mutex::new(rx);
        std::thread::scope(|sc| {
            for w in 0..workers {
                let (rx, stats, fails) = (&rx, &stats, &fails);
                sc.spawn(move || loop {
                    // Up to BATCH states: one qemu-img check each, one convert for all.
                    let mut jobs = Vec::new();
                    {
                        let rx = rx.lock().unwrap();
                        match rx.recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => return,
                        }
                        while jobs.len() < BATCH {
                            match rx.try_recv() {
                                Ok(j) => jobs.push(j),
                                Err(_) => break,
                            }
                        }
                    }
                    let paths: Vec<PathBuf> = (0..jobs.len())
                        .map(|k| dir.join(format!("state{w}-{k}.qcow2")))
                        .collect();
                    let raw = dir.join(format!("state{w}.raw"));
                    let results = self.check_states(&jobs, &paths, &raw);
                    let mut s = stats.lock().unwrap();
                    for (job, r) in jobs.iter().zip(results) {
                        s.states += 1;
                        match r {
                            Ok(repaired) => s.repaired += repaired as usize,
                            Err((corrupt, msg)) => {
                                if corrupt {
                                    s.corrupt += 1;
                                } else {
                                    s.lost += 1;
                                }
                                let mut f = fails.lock().unwrap();
                                if f.len() < 10 {
                                    f.push(format!("{}: {msg}", job.what));
                                }
                            }
                        }
                    }
                });
            }
            let mut img = self.base.clone();
            let mut next = 0;
            for (pi, &f) in points.iter().enumerate() {
                while next <= f {
                    self.truncate_at(&mut img, next);
                    self.apply(&mut img, next, true);
                    next += 1;
                }
                if !chosen.contains(&pi) {
                    continue;
                }
                let end = points.get(pi + 1).copied().unwrap_or(n);
                tx.send(Job {
                    image: img.clone(),
                    horizon: end,
                    what: format!("prefix of {} entries", f + 1),
                })
                .unwrap();
                if end == f + 1 {
                    continue;
                }
                for _ in 1..per {
                    let mut s = img.clone();
                    let mut took = Vec::new();
                    for i in f + 1..end {
                        if rng.gen_bool(0.5) {
                            self.truncate_at(&mut s, i);
                            let z = rng.gen_bool(0.5);
                            self.apply(&mut s, i, z);
                            took.push(i);
                        }
                    }
                    tx.send(Job {
                        image: s,
                        horizon: end,
                        what: format!("prefix of {} entries + entries {took:?}", f + 1),
                    })
                    .unwrap();
                }
            }
            drop(tx);
        });
        (stats.into_inner().unwrap(), fails.into_inner().unwrap())
    }

    /// Checks states: for each, `Ok(repaired)` or `Err((corrupt, why))`.
    fn check_states(
        &self,
        jobs: &[Job],
        paths: &[PathBuf],
        raw: &Path,
    ) -> Vec<Result<bool, (bool, String)>> {
        let mut res: Vec<Result<bool, (bool, String)>> = Vec::new();
        for (job, path) in jobs.iter().zip(paths) {
            std::fs::write(path, &job.image).unwrap();
            res.push(qemu_check(path, &job.image));
        }
        // The guest content of every state that passed, concatenated by one convert.
        let ok: Vec<usize> = (0..jobs.len()).filter(|&i| res[i].is_ok()).collect();
        if ok.is_empty() {
            return res;
        }
        let out = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .args(ok.iter().map(|&i| &paths[i]))
            .arg(raw)
            .output()
            .unwrap();
        if !out.status.success() {
            let msg = format!("qemu-img convert: {}", String::from_utf8_lossy(&out.stderr));
            for &i in &ok {
                res[i] = Err((true, msg.clone()));
            }
            return res;
        }
        let data = std::fs::read(raw).unwrap();
        let mut at = 0usize;
        for &i in &ok {
            // The virtual size, from the header qemu-img went by (after any repair).
            let h = std::fs::read(&paths[i]).unwrap();
            let size = u64::from_be_bytes(h[24..32].try_into().unwrap());
            let part = &data[at.min(data.len())..(at + size as usize).min(data.len())];
            at += size as usize;
            if let Err(e) = self.verify(jobs[i].horizon, size, part) {
                res[i] = Err((false, e));
            }
        }
        res
    }

    fn verify(&self, horizon: usize, size: u64, data: &[u8]) -> Result<(), String> {
        let b = self.covered(horizon);
        let durable = self.sizes.iter().rposition(|&(sb, _)| sb < b).unwrap_or(0);
        if !self.sizes[durable..].iter().any(|&(_, sz)| sz == size) || data.len() as u64 != size {
            return Err(format!(
                "virtual size {size} not possible after batch {b} ({:?})",
                self.sizes
            ));
        }
        for (s, sec) in data.chunks(512).enumerate() {
            let got = decode(s as u64, sec);
            let allowed = self.allowed(s, b);
            if !got.is_some_and(|g| allowed.contains(&g)) {
                return Err(format!(
                    "guest sector {s}: holds {got:?}, allowed {allowed:?} (durable batches < {b})"
                ));
            }
        }
        Ok(())
    }
}

/// States a worker takes at once.
const BATCH: usize = 8;

/// `qemu-img check` of one state: `Ok(repaired)` or `Err((true, why))`.
fn qemu_check(path: &Path, image: &[u8]) -> Result<bool, (bool, String)> {
    // Lazy refcounts: a dirty image is repaired on open by design, so check it
    // with -r all (what any read-write open does) and require nothing left.
    let dirty = image.len() >= 80 && image[79] & 1 != 0 && image[7] >= 3;
    let mut c = Command::new("qemu-img");
    c.arg("check").arg("--output=json");
    if dirty {
        c.args(["-r", "all"]);
    }
    let out = c.arg(path).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        (
            true,
            format!("qemu-img check: {}", String::from_utf8_lossy(&out.stderr)),
        )
    })?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    if n("corruptions") > 0 || n("check-errors") > 0 {
        return Err((true, format!("qemu-img check: {v}")));
    }
    Ok(dirty)
}
