//! An NBD client as a [`BlockDriver`] (QEMU's `nbd` block driver).
//!
//! [`NbdClient::connect`] connects over TCP or a unix socket and negotiates with
//! [`negotiate::negotiate`]: fixed newstyle, structured replies,
//! `base:allocation` (and, when asked for, `qemu:allocation-depth`), then
//! `NBD_OPT_GO`, falling back to `NBD_OPT_EXPORT_NAME`. The handshake is blocking;
//! afterwards the socket is non-blocking and driven by whichever event loop runs
//! the request futures.
//!
//! Several requests are in flight on the one connection. Each request writes its
//! header and payload while holding the connection's send token, then waits for its
//! reply. Reading is done by one request at a time, the holder of the receive
//! token: it reads a reply header, and if the reply belongs to another request it
//! hands the token (with the header) to that request, whose future then reads the
//! payload straight into its own buffer. This keeps the driver independent of any
//! particular loop: no task is tied to the loop the connection was opened on.
//!
//! Replies are validated with the [`reply`] module: any protocol violation
//! (unknown cookie, oversize or out-of-range chunks, short reads) breaks the
//! connection, and every outstanding and later request fails with `EIO`.
//!
//! Requests respect the server's block-size constraints: lengths are split at the
//! maximum payload, and requests not aligned to the minimum block size are widened
//! (reads) or done as read-modify-write (writes; not atomic against concurrent
//! writes to the same block, as in QEMU's block layer).

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

use async_trait::async_trait;
use oxemu_aio::net::Async;
use oxemu_block::{
    BlockDriver, BlockResult, BlockStatus, IoVec, IoVecMut, NodeInfo, WriteFlags, ZeroFlags,
};

use crate::negotiate::{self, ExportDetails, NegotiateError, NegotiateOptions};
use crate::proto::{self, cflag, cmd, tflag, Request};
use crate::reply::{self, Decoded, Expect, Payload, ReplyHeader};
use oxemu_block::driver::errno;

/// The `base:allocation` metadata context.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// QEMU's allocation-depth metadata context.
pub const CONTEXT_ALLOCATION_DEPTH: &str = "qemu:allocation-depth";

/// Requests sent and not yet answered at once on one connection.
const MAX_IN_FLIGHT: usize = 64;

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdTarget {
    /// A unix-domain socket path.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

impl std::fmt::Display for NbdTarget {
    /// As QEMU names the address in connection errors: the path, or `host:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdTarget::Unix(p) => write!(f, "{}", p.display()),
            NbdTarget::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// How to open an NBD export.
#[derive(Clone, Debug)]
pub struct NbdClientOptions {
    /// The server.
    pub target: NbdTarget,
    /// Export name (`""` is the default export).
    pub export: String,
    /// Open read-only: writes fail with `EPERM`.
    pub read_only: bool,
    /// Also negotiate `qemu:allocation-depth` and report its depth in
    /// [`BlockDriver::block_status`] (0 = unallocated, 1 = the export's top layer,
    /// 2 = a backing layer), like QEMU's `x-dirty-bitmap=qemu:allocation-depth`.
    /// Off by default, so that `map` prints what qemu-img prints.
    pub allocation_depth: bool,
    /// The file name reported in [`NodeInfo`] (the URI the user gave).
    pub filename: String,
}

impl NbdClientOptions {
    /// Options for `export` on `target`, read-write, without allocation depth.
    pub fn new(target: NbdTarget, export: &str) -> Self {
        NbdClientOptions {
            filename: String::new(),
            target,
            export: export.to_string(),
            read_only: false,
            allocation_depth: false,
        }
    }
}

/// A connection failure, phrased as QEMU phrases it (`Failed to connect to ...`,
/// `Requested export not available` with a `server reported:` hint, ...).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.full())]
pub struct ConnectError(pub NegotiateError);

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> io::Error {
        io::Error::other(e.0.full())
    }
}

/// std's error text without the ` (os error N)` suffix, as strerror(3) prints it.
pub(crate) fn strerror(e: &io::Error) -> String {
    let m = e.to_string();
    m.split(" (os error").next().unwrap_or(&m).to_string()
}

enum Sock {
    Unix(Async<UnixStream>),
    Tcp(Async<TcpStream>),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Unix(s) => s.get_ref().as_raw_fd(),
            Sock::Tcp(s) => s.get_ref().as_raw_fd(),
        }
    }

    async fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.read_exact(buf).await,
            Sock::Tcp(s) => s.read_exact(buf).await,
        }
    }

    async fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.write_all(buf).await,
            Sock::Tcp(s) => s.write_all(buf).await,
        }
    }
}

struct Slot {
    expect: Expect,
    /// A header read by another request for this one; the receive token came with it.
    header: Option<ReplyHeader>,
    waker: Option<Waker>,
    sent: bool,
    /// The request's future was dropped after sending: its reply is drained.
    abandoned: bool,
}

#[derive(Default)]
struct State {
    next_cookie: u64,
    slots: HashMap<u64, Slot>,
    recv_owner: Option<u64>,
    send_owner: Option<u64>,
    send_waiters: VecDeque<Waker>,
    slot_waiters: VecDeque<Waker>,
    /// Why the connection is unusable.
    dead: Option<String>,
}

/// Where a request's reply goes.
enum Sink<'a> {
    None,
    Read(&'a mut [u8]),
    Status(&'a mut Vec<(u32, Vec<(u32, u32)>)>),
}

struct Conn {
    sock: Sock,
    structured: bool,
    st: Mutex<State>,
}

fn eio() -> io::Error {
    errno(libc::EIO)
}

/// Drops of request futures in the middle of their exchange.
struct SlotGuard<'a> {
    conn: &'a Conn,
    cookie: u64,
    done: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.conn.lock();
        if st.recv_owner == Some(self.cookie) || st.send_owner == Some(self.cookie) {
            drop(st);
            self.conn.kill("request cancelled during a transfer");
            return;
        }
        let alive = st.dead.is_none();
        match st.slots.get_mut(&self.cookie) {
            Some(s) if s.sent && alive => s.abandoned = true,
            Some(_) => {
                st.slots.remove(&self.cookie);
                if let Some(w) = st.slot_waiters.pop_front() {
                    w.wake();
                }
            }
            None => {}
        }
    }
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Breaks the connection: every waiting and later request fails with `EIO`.
    fn kill(&self, why: &str) {
        let mut st = self.lock();
        if st.dead.is_none() {
            tracing::warn!("nbd client: {why}; connection closed");
            st.dead = Some(why.to_string());
        }
        // SAFETY: shutdown(2) on the socket this connection owns; wakes pending polls.
        unsafe { libc::shutdown(self.sock.fd(), libc::SHUT_RDWR) };
        let mut wakers: Vec<Waker> = st
            .slots
            .values_mut()
            .filter_map(|s| s.waker.take())
            .collect();
        wakers.extend(st.send_waiters.drain(..));
        wakers.extend(st.slot_waiters.drain(..));
        drop(st);
        for w in wakers {
            w.wake();
        }
    }

    fn wake_readers(st: &mut State) -> Vec<Waker> {
        st.slots
            .values_mut()
            .filter(|s| s.header.is_none())
            .filter_map(|s| s.waker.take())
            .collect()
    }

    /// Sends one request and collects its reply into `sink`. The result is the
    /// server's error for the request (as an errno) or a broken connection (`EIO`).
    async fn call(
        &self,
        req: Request,
        payload: Option<&[u8]>,
        mut sink: Sink<'_>,
    ) -> io::Result<()> {
        let expect = Expect {
            ty: req.ty,
            offset: req.offset,
            len: req.len as u32,
        };
        // A slot among the requests in flight.
        let cookie = poll_fn(|cx| {
            let mut st = self.lock();
            if st.dead.is_some() {
                return Poll::Ready(Err(eio()));
            }
            if st.slots.len() < MAX_IN_FLIGHT {
                st.next_cookie = st.next_cookie.wrapping_add(1);
                let c = st.next_cookie;
                st.slots.insert(
                    c,
                    Slot {
                        expect,
                        header: None,
                        waker: None,
                        sent: false,
                        abandoned: false,
                    },
                );
                Poll::Ready(Ok(c))
            } else {
                st.slot_waiters.push_back(cx.waker().clone());
                Poll::Pending
            }
        })
        .await?;
        let mut guard = SlotGuard {
            conn: self,
            cookie,
            done: false,
        };
        let r = self.exchange(cookie, req, payload, &mut sink).await;
        guard.done = true;
        let mut st = self.lock();
        st.slots.remove(&cookie);
        if st.recv_owner == Some(cookie) {
            st.recv_owner = None;
        }
        let mut w = Self::wake_readers(&mut st);
        w.extend(st.slot_waiters.pop_front());
        drop(st);
        w.into_iter().for_each(Waker::wake);
        r
    }

    async fn exchange(
        &self,
        cookie: u64,
        mut req: Request,
        payload: Option<&[u8]>,
        sink: &mut Sink<'_>,
    ) -> io::Result<()> {
        req.cookie = cookie;
        // Send under the send token.
        poll_fn(|cx| {
            let mut st = self.lock();
            if st.dead.is_some() {
                return Poll::Ready(Err(eio()));
            }
            if st.send_owner.is_none() {
                st.send_owner = Some(cookie);
                // Counted as sent from the first byte on: the server may answer
                // before write_all returns here.
                if let Some(s) = st.slots.get_mut(&cookie) {
                    s.sent = true;
                }
                Poll::Ready(Ok(()))
            } else {
                st.send_waiters.push_back(cx.waker().clone());
                Poll::Pending
            }
        })
        .await?;
        let mut head = req.encode(false);
        let w = match payload {
            Some(p) if p.len() <= 64 << 10 => {
                head.extend_from_slice(p);
                self.sock.write_all(&head).await
            }
            Some(p) => match self.sock.write_all(&head).await {
                Ok(()) => self.sock.write_all(p).await,
                e => e,
            },
            None => self.sock.write_all(&head).await,
        };
        {
            let mut st = self.lock();
            st.send_owner = None;
            if let Some(wk) = st.send_waiters.pop_front() {
                wk.wake();
            }
        }
        if let Err(e) = w {
            self.kill(&format!("failed to send a request: {}", strerror(&e)));
            return Err(eio());
        }
        if req.ty == cmd::DISC {
            return Ok(());
        }
        // Receive.
        let mut error: Option<u32> = None;
        let mut filled: u64 = 0;
        loop {
            let h = self.next_header(cookie).await?;
            let h = match h {
                Some(h) => h,
                None => continue,
            };
            match self
                .consume(&h, &req_expect(&req), sink, &mut error, &mut filled)
                .await
            {
                Ok(()) => {}
                Err(why) => {
                    self.kill(&why);
                    return Err(eio());
                }
            }
            // Give up the receive token.
            let last = h.is_last();
            {
                let mut st = self.lock();
                st.recv_owner = None;
                let w = Self::wake_readers(&mut st);
                drop(st);
                w.into_iter().for_each(Waker::wake);
            }
            if last {
                break;
            }
        }
        if let Some(code) = error {
            return Err(errno(reply::nbd_to_errno(code)));
        }
        if let Sink::Read(buf) = sink {
            if filled != buf.len() as u64 {
                self.kill("read reply does not cover the request");
                return Err(eio());
            }
        }
        Ok(())
    }

    /// Waits for a header addressed to `cookie`, reading headers (and handing them
    /// over) while holding the receive token. Returns with the token held. `None`:
    /// look again.
    async fn next_header(&self, cookie: u64) -> io::Result<Option<ReplyHeader>> {
        enum Got {
            Mine(ReplyHeader),
            Read,
        }
        let got = poll_fn(|cx| {
            let mut st = self.lock();
            if st.dead.is_some() {
                return Poll::Ready(Err(eio()));
            }
            let free = st.recv_owner.is_none();
            let Some(slot) = st.slots.get_mut(&cookie) else {
                return Poll::Ready(Err(eio()));
            };
            if let Some(h) = slot.header.take() {
                return Poll::Ready(Ok(Got::Mine(h)));
            }
            if free {
                st.recv_owner = Some(cookie);
                return Poll::Ready(Ok(Got::Read));
            }
            slot.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        let h = match got {
            Got::Mine(h) => return Ok(Some(h)),
            Got::Read => match self.read_header().await {
                Ok(h) => h,
                Err(why) => {
                    self.kill(&why);
                    return Err(eio());
                }
            },
        };
        let other = h.cookie();
        if other == cookie {
            return Ok(Some(h));
        }
        // Decide under the lock, act without it.
        let abandoned = {
            let mut st = self.lock();
            match st.slots.get_mut(&other) {
                Some(s) if s.sent && !s.abandoned => {
                    s.header = Some(h);
                    let w = s.waker.take();
                    st.recv_owner = Some(other);
                    drop(st);
                    if let Some(w) = w {
                        w.wake();
                    }
                    return Ok(None);
                }
                Some(s) if s.sent => s.expect,
                _ => {
                    drop(st);
                    self.kill(&reply::ReplyError::UnknownCookie(other).to_string());
                    return Err(eio());
                }
            }
        };
        // The owner is gone: drain its reply here.
        let expect = abandoned;
        let mut scratch = vec![
            0u8;
            if expect.ty == cmd::READ {
                expect.len as usize
            } else {
                0
            }
        ];
        let mut status = Vec::new();
        let mut sink = if expect.ty == cmd::READ {
            Sink::Read(&mut scratch)
        } else {
            Sink::Status(&mut status)
        };
        let (mut e, mut f) = (None, 0);
        if let Err(why) = self.consume(&h, &expect, &mut sink, &mut e, &mut f).await {
            self.kill(&why);
            return Err(eio());
        }
        let mut st = self.lock();
        st.recv_owner = None;
        if h.is_last() {
            st.slots.remove(&other);
            if let Some(w) = st.slot_waiters.pop_front() {
                w.wake();
            }
        }
        let w = Self::wake_readers(&mut st);
        drop(st);
        w.into_iter().for_each(Waker::wake);
        Ok(None)
    }

    async fn read_header(&self) -> Result<ReplyHeader, String> {
        let mut b = [0u8; reply::CHUNK_HEADER_LEN];
        let short = |e: io::Error| format!("failed to read a reply: {}", strerror(&e));
        self.sock.read_exact(&mut b[..4]).await.map_err(short)?;
        let magic = [b[0], b[1], b[2], b[3]];
        let n = reply::header_len(&magic, self.structured).map_err(|e| e.to_string())?;
        self.sock.read_exact(&mut b[4..n]).await.map_err(short)?;
        reply::parse_header(&b[..n], self.structured).map_err(|e| e.to_string())
    }

    /// Reads and applies the payload that follows `h`.
    async fn consume(
        &self,
        h: &ReplyHeader,
        req: &Expect,
        sink: &mut Sink<'_>,
        error: &mut Option<u32>,
        filled: &mut u64,
    ) -> Result<(), String> {
        let short = |e: io::Error| format!("failed to read a reply payload: {}", strerror(&e));
        let plan = reply::check_header(h, req).map_err(|e| e.to_string())?;
        match (*h, plan) {
            (ReplyHeader::Simple { error: code, .. }, _) if code != 0 => {
                error.get_or_insert(code);
            }
            (ReplyHeader::Simple { .. }, Payload::Data { len }) => {
                let Sink::Read(buf) = sink else {
                    return Err("data for a request without a buffer".into());
                };
                self.sock
                    .read_exact(&mut buf[..len as usize])
                    .await
                    .map_err(short)?;
                *filled += len as u64;
            }
            (ReplyHeader::Chunk { ty, len, .. }, Payload::Small { len: small }) => {
                let mut b = vec![0u8; small as usize];
                self.sock.read_exact(&mut b).await.map_err(short)?;
                if ty == proto::chunk::OFFSET_DATA {
                    let rel =
                        reply::check_data_offset(&b, len, req).map_err(|e| e.to_string())? as usize;
                    let n = (len - 8) as usize;
                    let Sink::Read(buf) = sink else {
                        return Err("data for a request without a buffer".into());
                    };
                    self.sock
                        .read_exact(&mut buf[rel..rel + n])
                        .await
                        .map_err(short)?;
                    *filled += n as u64;
                } else {
                    match reply::parse_payload(ty, &b, req).map_err(|e| e.to_string())? {
                        Decoded::Hole { rel, len } => {
                            let Sink::Read(buf) = sink else {
                                return Err("hole for a request without a buffer".into());
                            };
                            buf[rel as usize..rel as usize + len as usize].fill(0);
                            *filled += len as u64;
                        }
                        Decoded::Status { context, extents } => {
                            if let Sink::Status(v) = sink {
                                v.push((context, extents));
                            }
                        }
                        Decoded::Error { code, message } => {
                            if !message.is_empty() {
                                tracing::debug!("nbd client: server error {code}: {message}");
                            }
                            error.get_or_insert(code);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn req_expect(r: &Request) -> Expect {
    Expect {
        ty: r.ty,
        offset: r.offset,
        len: r.len as u32,
    }
}

/// An NBD export opened as a block node; see the module documentation.
pub struct NbdClient {
    conn: Conn,
    details: ExportDetails,
    read_only: bool,
    filename: String,
    /// Request alignment (the server's minimum block size, or QEMU's default).
    align: u32,
    /// Largest READ/WRITE payload and WRITE_ZEROES length.
    max_payload: u32,
    base_ctx: Option<u32>,
    depth_ctx: Option<u32>,
    /// NBD_CMD_DISC was sent.
    closed: AtomicBool,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("details", &self.details)
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn connect_stream(t: &NbdTarget) -> Result<Sock, NegotiateError> {
    let fail = |e: io::Error| NegotiateError {
        msg: format!("Failed to connect to '{t}': {}", strerror(&e)),
        hint: String::new(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    };
    match t {
        NbdTarget::Unix(p) => {
            let s = UnixStream::connect(p).map_err(fail)?;
            Ok(Sock::Unix(Async::new(s).map_err(fail)?))
        }
        NbdTarget::Tcp { host, port } => {
            let addrs: Vec<_> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| NegotiateError {
                    msg: format!("address resolution failed for {t}: {}", strerror(&e)),
                    hint: String::new(),
                    errno: libc::EINVAL,
                })?
                .collect();
            let mut last = io::Error::from(io::ErrorKind::AddrNotAvailable);
            for a in addrs {
                match TcpStream::connect(a) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Sock::Tcp(Async::new(s).map_err(fail)?));
                    }
                    Err(e) => last = e,
                }
            }
            Err(fail(last))
        }
    }
}

/// Blocking `Read + Write` over the (non-blocking) socket for the handshake.
struct Blocking<'a>(&'a Sock);

fn wait_fd(fd: RawFd, ev: i16) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: ev,
        revents: 0,
    };
    loop {
        // SAFETY: poll(2) on one pollfd we own.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Read for Blocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self.0 {
                Sock::Unix(s) => s.get_ref().read(buf),
                Sock::Tcp(s) => s.get_ref().read(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.0.fd(), libc::POLLIN)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl Write for Blocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let r = match self.0 {
                Sock::Unix(s) => s.get_ref().write(buf),
                Sock::Tcp(s) => s.get_ref().write(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.0.fd(), libc::POLLOUT)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `target` and lists its exports (`oxemu-nbd --list`).
pub fn list_exports(target: &NbdTarget) -> Result<Vec<ExportDetails>, ConnectError> {
    let sock = connect_stream(target).map_err(ConnectError)?;
    negotiate::list_exports(&mut Blocking(&sock)).map_err(ConnectError)
}

impl NbdClient {
    /// Connects and negotiates (blocking; callable inside or outside an event loop).
    /// Errors carry QEMU's texts.
    pub fn connect(o: &NbdClientOptions) -> Result<NbdClient, ConnectError> {
        let sock = connect_stream(&o.target).map_err(ConnectError)?;
        let mut contexts = vec![CONTEXT_BASE_ALLOCATION.to_string()];
        if o.allocation_depth {
            contexts.push(CONTEXT_ALLOCATION_DEPTH.to_string());
        }
        let d = negotiate::negotiate(
            &mut Blocking(&sock),
            &NegotiateOptions {
                export: o.export.clone(),
                structured: true,
                contexts,
            },
        )
        .map_err(ConnectError)?;
        let ctx = |n: &str| d.contexts.iter().find(|(_, c)| c == n).map(|(id, _)| *id);
        let base_ctx = ctx(CONTEXT_BASE_ALLOCATION);
        let depth_ctx = if o.allocation_depth {
            ctx(CONTEXT_ALLOCATION_DEPTH)
        } else {
            None
        };
        // QEMU's defaults when the server names no minimum block size.
        let align = if d.min_block != 0 {
            d.min_block
        } else if d.size % 512 != 0 || base_ctx.is_some() {
            1
        } else {
            512
        };
        let max = if d.max_block != 0 {
            d.max_block.min(proto::MAX_PAYLOAD)
        } else {
            proto::MAX_PAYLOAD
        };
        let max_payload = (max / align * align).max(align);
        Ok(NbdClient {
            conn: Conn {
                sock,
                structured: d.structured,
                st: Mutex::new(State::default()),
            },
            read_only: o.read_only || d.flags & tflag::READ_ONLY != 0,
            filename: o.filename.clone(),
            details: d,
            align,
            max_payload,
            base_ctx,
            depth_ctx,
            closed: AtomicBool::new(false),
        })
    }

    /// What the handshake reported about the export.
    pub fn details(&self) -> &ExportDetails {
        &self.details
    }

    /// True when the server exports the image read-only.
    pub fn export_read_only(&self) -> bool {
        self.details.flags & tflag::READ_ONLY != 0
    }

    fn has(&self, f: u16) -> bool {
        self.details.flags & f != 0
    }

    fn check_range(&self, offset: u64, len: u64) -> BlockResult<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.details.size => Ok(()),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    fn check_writable(&self) -> BlockResult<()> {
        if self.read_only {
            Err(errno(libc::EPERM))
        } else {
            Ok(())
        }
    }

    fn req(&self, ty: u16, flags: u16, offset: u64, len: u64) -> Request {
        Request {
            flags,
            ty,
            cookie: 0,
            offset,
            len,
        }
    }

    /// Reads `buf.len()` bytes at an aligned offset, in pieces of at most the
    /// maximum payload.
    async fn read_aligned(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_payload as usize);
            let r = self.req(cmd::READ, 0, offset + done as u64, n as u64);
            self.conn
                .call(r, None, Sink::Read(&mut buf[done..done + n]))
                .await?;
            done += n;
        }
        Ok(())
    }

    async fn write_aligned(&self, offset: u64, buf: &[u8], fua: bool) -> BlockResult<()> {
        let flags = if fua && self.has(tflag::SEND_FUA) {
            cflag::FUA
        } else {
            0
        };
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_payload as usize);
            let r = self.req(cmd::WRITE, flags, offset + done as u64, n as u64);
            self.conn
                .call(r, Some(&buf[done..done + n]), Sink::None)
                .await?;
            done += n;
        }
        if fua && !self.has(tflag::SEND_FUA) {
            self.flush().await?;
        }
        Ok(())
    }

    /// The aligned cover of `offset..offset+len`, clipped to the export size.
    fn cover(&self, offset: u64, len: u64) -> (u64, u64) {
        let a = self.align as u64;
        let start = offset / a * a;
        let end = (offset + len).div_ceil(a) * a;
        (start, end.min(self.details.size.max(offset + len)))
    }

    async fn write_bytes(&self, offset: u64, data: &[u8], fua: bool) -> BlockResult<()> {
        let (start, end) = self.cover(offset, data.len() as u64);
        if start == offset && end == offset + data.len() as u64 {
            return self.write_aligned(offset, data, fua).await;
        }
        // Read-modify-write of the partial blocks.
        let mut buf = vec![0u8; (end - start) as usize];
        self.read_aligned(start, &mut buf).await?;
        let rel = (offset - start) as usize;
        buf[rel..rel + data.len()].copy_from_slice(data);
        self.write_aligned(start, &buf, fua).await
    }

    /// The allocation-depth status of the range (first extent), when negotiated.
    fn pick(
        replies: &[(u32, Vec<(u32, u32)>)],
        ctx: u32,
        align: u32,
        max: u64,
    ) -> BlockResult<(u64, u32)> {
        let Some((_, ext)) = replies.iter().find(|(c, _)| *c == ctx) else {
            return Err(errno(libc::EIO));
        };
        let (mut len, mut flags) = ext[0];
        if len == 0 {
            return Err(errno(libc::EIO));
        }
        // Unaligned extents (QEMU's workaround for old servers).
        if align > 1 && len % align != 0 {
            if len > align {
                len = len / align * align;
            } else {
                len = align;
                flags = 0;
            }
        }
        Ok(((len as u64).min(max), flags))
    }
}

impl Drop for NbdClient {
    /// Sends NBD_CMD_DISC (best effort, without waiting) unless `close` did, so that
    /// servers see an orderly disconnect.
    fn drop(&mut self) {
        let st = self.conn.lock();
        if st.dead.is_some() || st.send_owner.is_some() || self.closed.load(Ordering::Relaxed) {
            return;
        }
        drop(st);
        let b = self.req(cmd::DISC, 0, 0, 0).encode(false);
        // SAFETY: send(2) of a local buffer on our socket; never blocks or raises SIGPIPE.
        unsafe {
            libc::send(
                self.conn.sock.fd(),
                b.as_ptr().cast(),
                b.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}

#[async_trait(?Send)]
impl BlockDriver for NbdClient {
    fn info(&self) -> NodeInfo {
        NodeInfo {
            driver: "nbd".into(),
            filename: self.filename.clone(),
            read_only: self.read_only,
            direct: false,
            no_flush: false,
        }
    }

    fn size(&self) -> u64 {
        self.details.size
    }

    fn request_alignment(&self) -> u32 {
        self.align
    }

    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        let len = iov.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.check_range(offset, len)?;
        let (start, end) = self.cover(offset, len);
        let mut buf = vec![0u8; (end - start) as usize];
        self.read_aligned(start, &mut buf).await?;
        let rel = (offset - start) as usize;
        iov.copy_from_slice(&buf[rel..rel + len as usize]);
        Ok(())
    }

    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        self.check_writable()?;
        let len = iov.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.check_range(offset, len)?;
        let mut data = vec![0u8; len as usize];
        iov.copy_to_slice(&mut data);
        self.write_bytes(offset, &data, flags.fua).await
    }

    async fn flush(&self) -> BlockResult<()> {
        if !self.has(tflag::SEND_FLUSH) || self.read_only {
            return Ok(());
        }
        self.conn
            .call(self.req(cmd::FLUSH, 0, 0, 0), None, Sink::None)
            .await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if !self.has(tflag::SEND_TRIM) {
            return Ok(());
        }
        // Advisory: only the aligned interior is trimmed.
        let a = self.align as u64;
        let mut off = offset.div_ceil(a) * a;
        let end = (offset + len) / a * a;
        let max = (i32::MAX as u64) / a * a;
        while off < end {
            let n = (end - off).min(max);
            self.conn
                .call(self.req(cmd::TRIM, 0, off, n), None, Sink::None)
                .await?;
            off += n;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if !self.has(tflag::SEND_WRITE_ZEROES)
            || (flags.no_fallback && !self.has(tflag::SEND_FAST_ZERO))
        {
            if flags.no_fallback {
                return Err(errno(libc::ENOTSUP));
            }
            let mut off = offset;
            let zero = vec![0u8; len.min(self.max_payload as u64) as usize];
            while off < offset + len {
                let n = (offset + len - off).min(zero.len() as u64) as usize;
                self.write_bytes(off, &zero[..n], flags.fua).await?;
                off += n as u64;
            }
            return Ok(());
        }
        let a = self.align as u64;
        let end = offset + len;
        let head_end = (offset.div_ceil(a) * a).min(end);
        let tail_start = (end / a * a).max(head_end);
        if head_end > offset {
            let z = vec![0u8; (head_end - offset) as usize];
            self.write_bytes(offset, &z, flags.fua).await?;
        }
        if end > tail_start {
            let z = vec![0u8; (end - tail_start) as usize];
            self.write_bytes(tail_start, &z, flags.fua).await?;
        }
        let mut cf = 0;
        if !flags.may_unmap {
            cf |= cflag::NO_HOLE;
        }
        if flags.fua && self.has(tflag::SEND_FUA) {
            cf |= cflag::FUA;
        }
        if flags.no_fallback {
            cf |= cflag::FAST_ZERO;
        }
        let mut off = head_end;
        while off < tail_start {
            let n = (tail_start - off).min(self.max_payload as u64);
            self.conn
                .call(self.req(cmd::WRITE_ZEROES, cf, off, n), None, Sink::None)
                .await?;
            off += n;
        }
        if flags.fua && !self.has(tflag::SEND_FUA) {
            self.flush().await?;
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        let size = self.details.size;
        if offset >= size {
            return Err(errno(libc::EINVAL));
        }
        let len = len.min(size - offset);
        let Some(base) = self.base_ctx else {
            return Ok(BlockStatus {
                len,
                data: true,
                zero: false,
                depth: 1,
                offset: Some(offset),
            });
        };
        let a = self.align as u64;
        let mut n = len.min((i32::MAX as u64) / a * a);
        if !n.is_multiple_of(a) && offset + n != size {
            n = (n / a * a).max(a);
        }
        let mut replies = Vec::new();
        self.conn
            .call(
                self.req(cmd::BLOCK_STATUS, cflag::REQ_ONE, offset, n),
                None,
                Sink::Status(&mut replies),
            )
            .await?;
        let (l, f) = Self::pick(&replies, base, self.align, n)?;
        let mut st = BlockStatus {
            len: l,
            data: f & proto::STATE_HOLE == 0,
            zero: f & proto::STATE_ZERO != 0,
            depth: 1,
            offset: Some(offset),
        };
        if let Some(dc) = self.depth_ctx {
            let (dl, depth) = Self::pick(&replies, dc, self.align, n)?;
            st.len = st.len.min(dl);
            st.depth = depth.min(2);
            if depth == 0 {
                st.offset = None;
            }
        }
        Ok(st)
    }

    async fn truncate(&self, size: u64) -> BlockResult<()> {
        if size == self.details.size {
            Ok(())
        } else {
            Err(errno(libc::ENOTSUP))
        }
    }

    async fn close(&self) -> BlockResult<()> {
        let r = self.flush().await;
        let _ = self
            .conn
            .call(self.req(cmd::DISC, 0, 0, 0), None, Sink::None)
            .await;
        self.closed.store(true, Ordering::Relaxed);
        // SAFETY: shutdown(2) on our own socket.
        unsafe { libc::shutdown(self.conn.sock.fd(), libc::SHUT_RDWR) };
        r
    }
}
