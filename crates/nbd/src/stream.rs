//! One client connection's byte stream: a non-blocking unix or TCP socket on the
//! event loop, optionally wrapped in TLS (rustls' `ServerConnection` driven by
//! `read_tls`/`write_tls` on loop readiness), with a read buffer.
//!
//! Reads happen in the connection task and writes in request tasks; both run on the
//! same loop thread and never hold the `RefCell`s across an `.await`.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use oxemu_aio::net::Async;
use rustls::{ServerConfig, ServerConnection};

/// The socket under a connection.
#[derive(Debug)]
pub enum Sock {
    /// A unix-domain stream.
    Unix(Async<UnixStream>),
    /// A TCP stream.
    Tcp(Async<TcpStream>),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Unix(s) => s.get_ref().as_raw_fd(),
            Sock::Tcp(s) => s.get_ref().as_raw_fd(),
        }
    }

    async fn readable(&self) -> io::Result<()> {
        oxemu_aio::poll_fd(self.fd(), libc::POLLIN)
            .await
            .map(|_| ())
    }

    async fn writable(&self) -> io::Result<()> {
        oxemu_aio::poll_fd(self.fd(), libc::POLLOUT)
            .await
            .map(|_| ())
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.get_ref().read(buf),
            Sock::Tcp(s) => s.get_ref().read(buf),
        }
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.get_ref().write_vectored(bufs),
            Sock::Tcp(s) => s.get_ref().write_vectored(bufs),
        }
    }
}

/// `Read`/`Write` over a non-blocking socket for rustls.
struct SockIo<'a>(&'a Sock);

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const READ_BUF: usize = 256 << 10;

/// A connection's stream; see the module documentation.
pub struct Stream {
    sock: Sock,
    tls: RefCell<Option<ServerConnection>>,
    /// Fixed-size read buffer; `rpos..rend` holds unread bytes.
    rbuf: RefCell<Box<[u8]>>,
    rpos: Cell<usize>,
    rend: Cell<usize>,
    broken: Cell<bool>,
    /// The last read returned less than it asked for: the socket is probably
    /// empty, so the next read waits for readiness first instead of paying for a
    /// read that fails with EAGAIN.
    drained: Cell<bool>,
    /// Hint from the connection that few requests are in flight, so waiting for
    /// readiness costs no throughput (see [`Stream::set_poll_first`]).
    poll_first: Cell<bool>,
}

impl Stream {
    /// Wraps a socket.
    pub fn new(sock: Sock) -> Self {
        Stream {
            sock,
            tls: RefCell::new(None),
            rbuf: RefCell::new(vec![0u8; READ_BUF].into_boxed_slice()),
            rpos: Cell::new(0),
            rend: Cell::new(0),
            broken: Cell::new(false),
            drained: Cell::new(false),
            poll_first: Cell::new(true),
        }
    }

    /// The socket's file descriptor.
    pub fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    /// True once a write failed; the connection is then being torn down.
    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    /// With `on`, a read that follows a short read waits for readiness before
    /// reading (saves an EAGAIN read when the client sends one request at a time);
    /// without, it reads first (cheaper when requests are pipelined).
    pub fn set_poll_first(&self, on: bool) {
        self.poll_first.set(on);
    }

    /// Shuts the socket down in both directions (wakes the reader).
    pub fn shutdown(&self) {
        // SAFETY: shutdown(2) on the fd we own; no memory is involved.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
    }

    /// Runs the TLS server handshake. Bytes the client sent after `STARTTLS` must not
    /// have been consumed yet (the read buffer is empty at option boundaries, because
    /// clients wait for the ACK before sending the ClientHello).
    pub async fn start_tls(&self, cfg: Arc<ServerConfig>) -> io::Result<()> {
        let leftover = self.rend.get() - self.rpos.get();
        if leftover != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "client sent data before the TLS handshake",
            ));
        }
        let mut conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
        conn.set_buffer_limit(None);
        *self.tls.borrow_mut() = Some(conn);
        loop {
            let handshaking = self
                .tls
                .borrow()
                .as_ref()
                .is_some_and(|c| c.is_handshaking());
            if !handshaking {
                break;
            }
            self.flush_tls().await?;
            if !self.tls_read_more().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.flush_tls().await
    }

    /// Reads more TLS records from the socket; false at end of stream.
    async fn tls_read_more(&self) -> io::Result<bool> {
        loop {
            let r = {
                let mut t = self.tls.borrow_mut();
                let c = t.as_mut().expect("TLS active");
                match c.read_tls(&mut SockIo(&self.sock)) {
                    Ok(0) => Ok(false),
                    Ok(_) => {
                        if let Err(e) = c.process_new_packets() {
                            // Tell the peer why (alert), best effort.
                            let _ = c.write_tls(&mut SockIo(&self.sock));
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                        }
                        Ok(true)
                    }
                    Err(e) => Err(e),
                }
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sock.readable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(true) => {
                    self.flush_tls().await?;
                    return Ok(true);
                }
                r => return r,
            }
        }
    }

    async fn flush_tls(&self) -> io::Result<()> {
        loop {
            let r = {
                let mut t = self.tls.borrow_mut();
                let c = t.as_mut().expect("TLS active");
                if !c.wants_write() {
                    return Ok(());
                }
                c.write_tls(&mut SockIo(&self.sock))
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sock.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
    }

    /// Refills the (fully consumed) read buffer with whatever is available, at
    /// least one byte; 0 at end of stream.
    async fn fill(&self) -> io::Result<usize> {
        debug_assert_eq!(self.rpos.get(), self.rend.get());
        self.rpos.set(0);
        self.rend.set(0);
        if self.drained.get() && self.poll_first.get() && self.tls.borrow().is_none() {
            self.sock.readable().await?;
        }
        loop {
            let r = {
                let mut b = self.rbuf.borrow_mut();
                let mut t = self.tls.borrow_mut();
                let r = match t.as_mut() {
                    Some(c) => c.reader().read(&mut b[..]),
                    None => self.sock.try_read(&mut b[..]),
                };
                self.rend.set(*r.as_ref().unwrap_or(&0));
                self.drained.set(matches!(r, Ok(n) if n < b.len()));
                r
            };
            match r {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.tls.borrow().is_some() {
                        if !self.tls_read_more().await? {
                            return Ok(0);
                        }
                    } else {
                        self.sock.readable().await?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills `out` completely. `Ok(false)` if the stream ended cleanly before the
    /// first byte; `UnexpectedEof` if it ended in the middle.
    pub async fn read_exact(&self, out: &mut [u8]) -> io::Result<bool> {
        let mut done = 0;
        while done < out.len() {
            let avail = {
                let b = self.rbuf.borrow();
                let pos = self.rpos.get();
                let n = (self.rend.get() - pos).min(out.len() - done);
                out[done..done + n].copy_from_slice(&b[pos..pos + n]);
                self.rpos.set(pos + n);
                n
            };
            done += avail;
            if done == out.len() {
                break;
            }
            if self.fill().await? == 0 {
                if done == 0 {
                    return Ok(false);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(true)
    }

    /// Writes all of `parts`, in order, as one message. The caller serializes
    /// writers (the connection keeps one writer at a time).
    pub async fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        let r = self.write_all_inner(parts).await;
        if r.is_err() {
            self.broken.set(true);
            self.shutdown();
        }
        r
    }

    async fn write_all_inner(&self, parts: &[&[u8]]) -> io::Result<()> {
        if self.tls.borrow().is_some() {
            {
                let mut t = self.tls.borrow_mut();
                let c = t.as_mut().expect("TLS active");
                for p in parts {
                    c.writer().write_all(p)?;
                }
            }
            return self.flush_tls().await;
        }
        let mut idx = 0;
        let mut off = 0;
        loop {
            while idx < parts.len() && parts[idx].len() == off {
                idx += 1;
                off = 0;
            }
            if idx == parts.len() {
                break;
            }
            let slices: Vec<IoSlice<'_>> = std::iter::once(&parts[idx][off..])
                .chain(parts[idx + 1..].iter().copied())
                .take(64)
                .map(IoSlice::new)
                .collect();
            let n = match self.sock.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.sock.writable().await?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut n = n;
            while n > 0 && idx < parts.len() {
                let left = parts[idx].len() - off;
                if n >= left {
                    n -= left;
                    idx += 1;
                    off = 0;
                } else {
                    off += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}
