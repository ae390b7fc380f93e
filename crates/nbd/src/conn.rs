//! One client connection: the handshake's I/O around [`Negotiation`], then the
//! transmission loop. The loop reads requests in order and spawns one task per
//! request on the event loop, so requests complete (and reply) out of order; reply
//! writes are serialized by an async mutex so each reply is contiguous on the wire.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use oxemu_aio::spawn_local;
use oxemu_block::{AlignedBuf, BlockDriver, BlockStatus, IoVec, IoVecMut, WriteFlags, ZeroFlags};

use crate::handshake::{
    MetaContexts, Negotiation, Session, Step, CONTEXT_ALLOCATION_DEPTH, CONTEXT_BASE_ALLOCATION,
};
use crate::proto::{self, chunk, errno_to_nbd, ReplyMode, Request};
use crate::server::{NbdExport, ServerShared};
use crate::stream::Stream;
use crate::transmission::{self, Command};

/// Requests executing at once on one connection (as QEMU's NBD server,
/// `NBD_MAX_REQUESTS`); the reader stops reading requests beyond this.
pub const MAX_IN_FLIGHT: usize = 16;
/// Request and reply data bytes held at once for one connection (write payloads
/// read, read buffers, cache buffers): the reader waits before reading a request
/// that would exceed it, unless nothing else is in flight, so one maximal (32 MiB)
/// request still goes through. With [`PENDING_HIGH`] this bounds what one client
/// can make the server hold, including a client that never reads its replies.
pub const MAX_BYTES_IN_FLIGHT: usize = 4 << 20;
/// Bytes one NBD_CMD_CACHE request prefetches at most (in 1 MiB pieces); the rest of a longer range
/// is ignored (the command is advisory) and the request succeeds.
pub const MAX_CACHE: u64 = 4 << 20;
/// Piece read at a time by NBD_CMD_CACHE.
const CACHE_CHUNK: u64 = 1 << 20;
/// Block-status extents reported per context and request.
const MAX_EXTENTS: usize = 2048;
/// Granularity at which structured reads detect zero ranges for hole chunks.
const HOLE_GRANULE: usize = 64 << 10;
/// Queued reply bytes above which senders wait for the writer.
pub const PENDING_HIGH: usize = 1 << 20;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Serves one connection until it ends.
pub(crate) async fn serve(sh: Arc<ServerShared>, stream: Stream, id: u64) {
    let stream = Rc::new(stream);
    let r = match handshake(&sh, &stream).await {
        Ok(Some((session, export))) => {
            if sh.attach(id, &session.export.name) {
                transmission(stream.clone(), session, export).await
            } else {
                Ok(())
            }
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::debug!("nbd: connection closed: {e}");
    }
    stream.shutdown();
}

async fn handshake(
    sh: &Arc<ServerShared>,
    stream: &Stream,
) -> io::Result<Option<(Session, Arc<NbdExport>)>> {
    stream.write_all(&[&proto::greeting()]).await?;
    let mut flags = [0u8; 4];
    if !stream.read_exact(&mut flags).await? {
        return Ok(None);
    }
    let flags = proto::parse_client_flags(flags).map_err(|e| invalid(e.to_string()))?;
    let mut neg = Negotiation::new(flags, sh.tls.is_some());
    loop {
        let mut hdr = [0u8; proto::OPTION_HEADER_LEN];
        if !stream.read_exact(&mut hdr).await? {
            return Ok(None);
        }
        let h = proto::OptionHeader::parse(&hdr).map_err(|e| invalid(e.to_string()))?;
        let data = if h.len > proto::MAX_OPTION_LEN {
            if h.len > proto::MAX_PAYLOAD {
                return Err(invalid(format!("option {} of {} bytes", h.option, h.len)));
            }
            let mut left = h.len as usize;
            let mut sink = vec![0u8; 64 << 10];
            while left > 0 {
                let n = left.min(sink.len());
                if !stream.read_exact(&mut sink[..n]).await? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n;
            }
            None
        } else {
            let mut d = vec![0u8; h.len as usize];
            if !stream.read_exact(&mut d).await? && !d.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Some(d)
        };
        let mut out = Vec::new();
        let step = neg.handle_option(h.option, data.as_deref(), &**sh, &mut out);
        if !out.is_empty() {
            stream.write_all(&[&out]).await?;
        }
        match step {
            Step::Continue => {}
            Step::StartTls => {
                let cfg = sh.tls.clone().expect("STARTTLS accepted without TLS");
                stream.start_tls(cfg).await?;
                neg.tls_started();
            }
            Step::Close(why) => {
                tracing::debug!("nbd: handshake ended: {why}");
                return Ok(None);
            }
            Step::Enter(s) => {
                return Ok(sh.export(&s.export.name).map(|e| (s, e)));
            }
        }
    }
}

struct Conn {
    stream: Rc<Stream>,
    session: Session,
    export: Arc<NbdExport>,
    in_flight: Cell<usize>,
    /// Data bytes held by requests in flight (see [`MAX_BYTES_IN_FLIGHT`]).
    bytes: Cell<usize>,
    waiter: RefCell<Option<Waker>>,
    /// Reply bytes not yet handed to the socket.
    pending: RefCell<Vec<u8>>,
    /// A task is writing `pending` out.
    writing: Cell<bool>,
    /// Bytes of the batch being written.
    writing_len: Cell<usize>,
    /// Tasks waiting for `pending` to drain below [`PENDING_HIGH`].
    drain_waiters: RefCell<Vec<Waker>>,
}

impl Conn {
    /// Queues one complete reply. Replies completed in the same loop turn are
    /// written with one system call: the first sender becomes the writer, yields
    /// once so that other ready tasks can queue theirs, then writes the batch. Other
    /// senders first wait while the queue is at or above [`PENDING_HIGH`]
    /// (back-pressure against clients that do not read their replies).
    async fn send(&self, parts: &[&[u8]]) {
        if self.stream.is_broken() {
            return;
        }
        if self.writing.get() {
            // Room first, then queue: the queue never holds much more than
            // PENDING_HIGH, however many tasks complete at once.
            poll_fn(|cx| {
                if self.pending.borrow().len() < PENDING_HIGH || self.stream.is_broken() {
                    Poll::Ready(())
                } else {
                    self.drain_waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            if self.stream.is_broken() {
                return;
            }
            let mut p = self.pending.borrow_mut();
            for part in parts {
                p.extend_from_slice(part);
            }
            return;
        }
        {
            let mut p = self.pending.borrow_mut();
            for part in parts {
                p.extend_from_slice(part);
            }
        }
        self.writing.set(true);
        if self.in_flight.get() > 1 {
            oxemu_aio::yield_now().await;
        }
        let mut spare = Vec::new();
        loop {
            let buf = std::mem::replace(&mut *self.pending.borrow_mut(), spare);
            if buf.is_empty() {
                break;
            }
            self.writing_len.set(buf.len());
            self.wake_drain_waiters();
            let r = self.stream.write_all(&[&buf]).await;
            self.writing_len.set(0);
            if r.is_err() {
                break;
            }
            spare = buf;
            spare.clear();
            if spare.capacity() > 4 * PENDING_HIGH {
                spare = Vec::new();
            }
        }
        self.writing.set(false);
        self.wake_drain_waiters();
    }

    fn wake_drain_waiters(&self) {
        for w in self.drain_waiters.borrow_mut().drain(..) {
            w.wake();
        }
        // The request reader counts queued reply bytes too.
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Data bytes this connection holds: requests in flight plus replies queued
    /// or being written.
    fn held(&self) -> usize {
        self.bytes.get() + self.pending.borrow().len() + self.writing_len.get()
    }

    async fn send_status(&self, req: &Request, error: u32, msg: &str) {
        let mut out = Vec::with_capacity(64);
        if error != 0 && self.session.mode != ReplyMode::Simple && !msg.is_empty() {
            let structured = matches!(req.ty, proto::cmd::READ | proto::cmd::BLOCK_STATUS);
            if structured || self.session.mode == ReplyMode::Extended {
                proto::put_error_chunk(&mut out, self.session.mode, req, error, msg);
                return self.send(&[&out]).await;
            }
        }
        proto::put_status_reply(&mut out, self.session.mode, req, error);
        self.send(&[&out]).await
    }

    fn done(&self, bytes: usize) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.bytes.set(self.bytes.get() - bytes);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until fewer than `n` requests are in flight and `bytes` more data bytes
    /// fit in [`MAX_BYTES_IN_FLIGHT`] (always true with nothing in flight).
    async fn wait_in_flight_below(&self, n: usize, bytes: usize) {
        poll_fn(|cx| {
            let fits = self.in_flight.get() == 0 || self.held() + bytes <= MAX_BYTES_IN_FLIGHT;
            if self.in_flight.get() < n && fits {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

async fn transmission(
    stream: Rc<Stream>,
    session: Session,
    export: Arc<NbdExport>,
) -> io::Result<()> {
    let extended = session.mode == ReplyMode::Extended;
    let conn = Rc::new(Conn {
        stream,
        session,
        export,
        in_flight: Cell::new(0),
        bytes: Cell::new(0),
        waiter: RefCell::new(None),
        pending: RefCell::new(Vec::new()),
        writing: Cell::new(false),
        writing_len: Cell::new(0),
        drain_waiters: RefCell::new(Vec::new()),
    });
    let r = request_loop(&conn, extended).await;
    conn.wait_in_flight_below(1, 0).await;
    r
}

async fn request_loop(conn: &Rc<Conn>, extended: bool) -> io::Result<()> {
    let node = conn.export.node.clone();
    let mut hdr = [0u8; proto::EXT_REQUEST_LEN];
    let hlen = Request::header_len(extended);
    loop {
        conn.wait_in_flight_below(MAX_IN_FLIGHT, 0).await;
        conn.stream.set_poll_first(conn.in_flight.get() <= 1);
        if !conn.stream.read_exact(&mut hdr[..hlen]).await? {
            return Ok(());
        }
        let req = Request::parse(&hdr[..hlen], extended).map_err(|e| invalid(e.to_string()))?;
        let plen = match transmission::payload_len(&req, conn.session.mode) {
            Ok(n) => n as usize,
            Err(r) => {
                conn.send_status(&req, r.error, &r.message).await;
                return Err(invalid(r.message));
            }
        };
        // Data this request will hold: its payload, or its read/cache buffer.
        let held = plen
            + match req.ty {
                proto::cmd::READ => req.len.min(proto::MAX_PAYLOAD as u64) as usize,
                proto::cmd::CACHE => req.len.min(CACHE_CHUNK) as usize,
                _ => 0,
            };
        conn.wait_in_flight_below(MAX_IN_FLIGHT, held).await;
        let mut payload = AlignedBuf::with_alignment(plen, node.memory_alignment().max(512));
        if plen > 0 && !conn.stream.read_exact(&mut payload).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let cmd = match transmission::validate(&req, &payload, &conn.session, node.size()) {
            Ok(c) => c,
            Err(r) => {
                tracing::debug!("nbd: request refused: {}", r.message);
                conn.send_status(&req, r.error, &r.message).await;
                continue;
            }
        };
        if cmd == Command::Disc {
            return Ok(());
        }
        conn.in_flight.set(conn.in_flight.get() + 1);
        conn.bytes.set(conn.bytes.get() + held);
        let c = conn.clone();
        let node = node.clone();
        spawn_local(async move {
            execute(&c, &*node, &req, cmd, payload).await;
            c.done(held);
        });
    }
}

async fn execute(
    c: &Conn,
    node: &dyn BlockDriver,
    req: &Request,
    cmd: Command,
    payload: AlignedBuf,
) {
    let r = match cmd {
        Command::Read { offset, len, df } => return read(c, node, req, offset, len, df).await,
        Command::BlockStatus {
            offset,
            len,
            req_one,
            contexts,
        } => return block_status(c, node, req, offset, len, req_one, contexts).await,
        Command::Write { offset, fua } => {
            node.writev(offset, &IoVec::from_slice(&payload), WriteFlags { fua })
                .await
        }
        Command::Flush => node.flush().await,
        Command::Trim { offset, len, fua } => match node.discard(offset, len).await {
            Ok(()) if fua => node.flush().await,
            r => r,
        },
        Command::WriteZeroes {
            offset,
            len,
            fua,
            no_hole,
            fast,
        } => {
            let flags = ZeroFlags {
                may_unmap: !no_hole,
                no_fallback: fast,
                fua,
            };
            node.write_zeroes(offset, len, flags).await
        }
        Command::Cache { offset, len } => cache(node, offset, len).await,
        Command::Disc => Ok(()),
    };
    match r {
        Ok(()) => c.send_status(req, 0, "").await,
        Err(e) => {
            let msg = e.to_string();
            c.send_status(
                req,
                errno_to_nbd(e.raw_os_error().unwrap_or(libc::EIO)),
                &msg,
            )
            .await
        }
    }
}

/// Prefetches the first [`MAX_CACHE`] bytes of the range, [`CACHE_CHUNK`] at a time.
async fn cache(node: &dyn BlockDriver, offset: u64, len: u64) -> io::Result<()> {
    let step = CACHE_CHUNK;
    let len = len.min(MAX_CACHE);
    if len == 0 {
        return Ok(());
    }
    let mut buf =
        AlignedBuf::with_alignment(step.min(len) as usize, node.memory_alignment().max(512));
    let mut pos = 0;
    while pos < len {
        let n = step.min(len - pos) as usize;
        node.readv(offset + pos, &mut IoVecMut::from_slice(&mut buf[..n]))
            .await?;
        pos += n as u64;
    }
    Ok(())
}

async fn read(c: &Conn, node: &dyn BlockDriver, req: &Request, offset: u64, len: u32, df: bool) {
    let mut buf = AlignedBuf::with_alignment(len as usize, node.memory_alignment().max(512));
    if let Err(e) = node
        .readv(offset, &mut IoVecMut::from_slice(&mut buf))
        .await
    {
        let errno = errno_to_nbd(e.raw_os_error().unwrap_or(libc::EIO));
        return c.send_status(req, errno, &e.to_string()).await;
    }
    let mode = c.session.mode;
    if mode == ReplyMode::Simple {
        let mut h = Vec::with_capacity(16);
        proto::put_simple_reply(&mut h, 0, req.cookie);
        return c.send(&[&h, &buf]).await;
    }
    if len == 0 {
        let mut h = Vec::new();
        proto::put_chunk_header(
            &mut h,
            mode,
            chunk::FLAG_DONE,
            chunk::NONE,
            req.cookie,
            offset,
            0,
        );
        return c.send(&[&h]).await;
    }
    // (start, len, reads as zeroes)
    let mut pieces: Vec<(usize, usize, bool)> = Vec::new();
    if df || buf.len() <= HOLE_GRANULE {
        pieces.push((0, buf.len(), false));
    } else {
        for (i, g) in buf.chunks(HOLE_GRANULE).enumerate() {
            let z = oxemu_block::buffer::is_zero(g);
            match pieces.last_mut() {
                Some(p) if p.2 == z => p.1 += g.len(),
                _ => pieces.push((i * HOLE_GRANULE, g.len(), z)),
            }
        }
    }
    let mut headers = Vec::with_capacity(pieces.len());
    for (i, &(start, n, zero)) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() {
            chunk::FLAG_DONE
        } else {
            0
        };
        let mut h = Vec::with_capacity(44);
        let at = offset + start as u64;
        if zero {
            proto::put_chunk_header(
                &mut h,
                mode,
                flags,
                chunk::OFFSET_HOLE,
                req.cookie,
                offset,
                12,
            );
            h.extend_from_slice(&at.to_be_bytes());
            h.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            let plen = 8 + n as u64;
            proto::put_chunk_header(
                &mut h,
                mode,
                flags,
                chunk::OFFSET_DATA,
                req.cookie,
                offset,
                plen,
            );
            h.extend_from_slice(&at.to_be_bytes());
        }
        headers.push(h);
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * pieces.len());
    for (h, &(start, n, zero)) in headers.iter().zip(&pieces) {
        parts.push(h);
        if !zero {
            parts.push(&buf[start..start + n]);
        }
    }
    c.send(&parts).await
}

fn merge(extents: &mut Vec<(u64, u32)>, len: u64, flags: u32) {
    match extents.last_mut() {
        Some(last) if last.1 == flags && last.0 + len <= u32::MAX as u64 => last.0 += len,
        _ => extents.push((len, flags)),
    }
}

async fn block_status(
    c: &Conn,
    node: &dyn BlockDriver,
    req: &Request,
    offset: u64,
    len: u64,
    req_one: bool,
    contexts: MetaContexts,
) {
    let mut statuses: Vec<BlockStatus> = Vec::new();
    let mut pos = 0u64;
    // Compact replies carry 32-bit lengths: keep each queried piece below 4 GiB.
    let piece_max = if c.session.mode == ReplyMode::Extended {
        u64::MAX
    } else {
        (u32::MAX as u64) & !((c.session.export.min_block.max(1) as u64) - 1)
    };
    while pos < len && statuses.len() < MAX_EXTENTS {
        match node
            .block_status(offset + pos, (len - pos).min(piece_max))
            .await
        {
            Ok(mut s) => {
                s.len = s.len.clamp(1, (len - pos).min(piece_max));
                pos += s.len;
                statuses.push(s);
            }
            Err(e) => {
                let errno = errno_to_nbd(e.raw_os_error().unwrap_or(libc::EIO));
                return c.send_status(req, errno, &e.to_string()).await;
            }
        }
        if req_one {
            break;
        }
    }
    let mut bodies = Vec::new();
    let mut lists: Vec<(u32, Vec<(u64, u32)>)> = Vec::new();
    if contexts.base_allocation {
        let mut ext = Vec::new();
        for s in &statuses {
            let f = if s.data { 0 } else { proto::STATE_HOLE }
                | if s.zero { proto::STATE_ZERO } else { 0 };
            merge(&mut ext, s.len, f);
        }
        lists.push((CONTEXT_BASE_ALLOCATION, ext));
    }
    if contexts.allocation_depth {
        let mut ext = Vec::new();
        for s in &statuses {
            merge(&mut ext, s.len, s.depth);
        }
        lists.push((CONTEXT_ALLOCATION_DEPTH, ext));
    }
    let n = lists.len();
    for (i, (id, ext)) in lists.iter().enumerate() {
        proto::put_block_status(&mut bodies, c.session.mode, req, *id, ext, i + 1 == n);
    }
    c.send(&[&bodies]).await
}
