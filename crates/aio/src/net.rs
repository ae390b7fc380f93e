//! Non-blocking sockets on the event loop: readiness comes from `POLL_ADD` on the
//! loop's ring, so sockets and disk I/O share one `io_uring_enter` per turn.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use super::poll_fd;

/// A socket (or pipe, or any fd) switched to non-blocking mode and driven by the
/// current event loop. `T` is the std type (`TcpStream`, `UnixStream`, listeners).
#[derive(Debug)]
pub struct Async<T: AsRawFd> {
    inner: T,
}

impl<T: AsRawFd> Async<T> {
    /// Takes ownership of `inner` and makes it non-blocking.
    pub fn new(inner: T) -> io::Result<Self> {
        set_nonblocking(inner.as_raw_fd())?;
        Ok(Async { inner })
    }

    /// The wrapped object.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Gives the wrapped object back (still non-blocking).
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Waits until the fd is readable (or has an error/hang-up condition).
    pub async fn readable(&self) -> io::Result<()> {
        poll_fd(self.inner.as_raw_fd(), libc::POLLIN)
            .await
            .map(|_| ())
    }

    /// Waits until the fd is writable.
    pub async fn writable(&self) -> io::Result<()> {
        poll_fd(self.inner.as_raw_fd(), libc::POLLOUT)
            .await
            .map(|_| ())
    }

    /// Runs the non-blocking `op` until it stops returning `WouldBlock`, waiting for
    /// `events` readiness in between.
    pub async fn io<R>(
        &self,
        events: i16,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match op(&self.inner) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fd(self.inner.as_raw_fd(), events).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl<T: AsRawFd> Async<T>
where
    for<'a> &'a T: Read + Write,
{
    /// Reads some bytes; 0 means end of stream.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io(libc::POLLIN, |mut s| s.read(buf)).await
    }

    /// Fills `buf` completely; `UnexpectedEof` if the peer closes first.
    pub async fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.read(&mut buf[done..]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }

    /// Writes some bytes.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.io(libc::POLLOUT, |mut s| s.write(buf)).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.write(&buf[done..]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => done += n,
            }
        }
        Ok(())
    }
}

impl Async<std::net::TcpListener> {
    /// Accepts a connection; the new stream is non-blocking too.
    pub async fn accept(&self) -> io::Result<(Async<std::net::TcpStream>, std::net::SocketAddr)> {
        let (s, a) = self.io(libc::POLLIN, |l| l.accept()).await?;
        Ok((Async::new(s)?, a))
    }
}

impl Async<std::os::unix::net::UnixListener> {
    /// Accepts a connection; the new stream is non-blocking too.
    pub async fn accept(&self) -> io::Result<Async<std::os::unix::net::UnixStream>> {
        let (s, _) = self.io(libc::POLLIN, |l| l.accept()).await?;
        Async::new(s)
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; no pointers involved.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Binds a listening unix socket at `path` as QEMU does: a socket file left behind
/// by an earlier server (one that was killed, say) is removed first, so that a
/// restarted server starts. Anything else at `path` is left alone and the bind fails
/// with `EADDRINUSE`, so a mistyped path never deletes a file.
pub fn bind_unix_listener(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    std::os::unix::net::UnixListener::bind(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{spawn_local, EventLoop};
    use std::os::unix::net::UnixStream;

    #[test]
    fn unix_stream_round_trip_on_the_ring() {
        let lp = EventLoop::with_defaults().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        lp.block_on(async move {
            let a = Async::new(a).unwrap();
            let b = Async::new(b).unwrap();
            let reader = spawn_local(async move {
                let mut buf = vec![0u8; 1 << 20];
                b.read_exact(&mut buf).await.unwrap();
                buf
            });
            let data: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
            a.write_all(&data).await.unwrap();
            assert_eq!(reader.await, data);
        });
    }
}
