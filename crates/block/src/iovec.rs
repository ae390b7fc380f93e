//! Scatter-gather buffers handed to block drivers.
//!
//! Requests carry a list of `(pointer, length)` segments so that exports can read
//! straight into guest memory (vhost-user-blk) or into a socket buffer (NBD) without
//! copying. [`IoVecMut`] is the destination of a read and [`IoVec`] the source of a
//! write. Both borrow their memory for `'a`, so safe code can only build them from
//! slices it owns; code that owns memory the borrow checker cannot see (guest RAM
//! mapped by vm-memory) uses the `unsafe` raw constructors.

use std::marker::PhantomData;

/// One segment of a scatter-gather list, layout-compatible with `struct iovec`.
pub type RawIoVec = libc::iovec;

/// Segments of a list: up to four inline (the common requests have one or two, so
/// building a list allocates nothing), more on the heap.
type Segs = smallvec::SmallVec<[RawIoVec; 4]>;

macro_rules! iovec_common {
    ($name:ident) => {
        impl<'a> $name<'a> {
            /// An empty list; extend it with `push`.
            pub fn new() -> Self {
                Self {
                    segs: Segs::new(),
                    len: 0,
                    _borrow: PhantomData,
                }
            }

            /// Total number of bytes in all segments.
            pub fn len(&self) -> usize {
                self.len
            }

            /// True when the list holds no bytes.
            pub fn is_empty(&self) -> bool {
                self.len == 0
            }

            /// The segments, ready for `preadv`/`pwritev` or an io_uring SQE.
            pub fn as_raw(&self) -> &[RawIoVec] {
                &self.segs
            }

            /// True when every segment's address and length are multiples of `align`.
            pub fn is_aligned(&self, align: usize) -> bool {
                self.segs
                    .iter()
                    .all(|s| (s.iov_base as usize) % align == 0 && s.iov_len % align == 0)
            }

            /// Appends a raw segment.
            ///
            /// # Safety
            /// `base..base+len` must be valid for the access this list is used for
            /// (reads for [`IoVec`], writes for [`IoVecMut`]) for all of `'a`, and must
            /// not be accessed through any other path while a request using it is in
            /// flight.
            pub unsafe fn push_raw(&mut self, base: *mut u8, len: usize) {
                if len == 0 {
                    return;
                }
                self.segs.push(RawIoVec {
                    iov_base: base.cast(),
                    iov_len: len,
                });
                self.len += len;
            }

            /// Builds a list from raw segments.
            ///
            /// # Safety
            /// Same contract as [`Self::push_raw`] for every segment.
            pub unsafe fn from_raw(segs: &[RawIoVec]) -> Self {
                let mut v = Self::new();
                for s in segs {
                    // SAFETY: forwarded to the caller.
                    unsafe { v.push_raw(s.iov_base.cast(), s.iov_len) };
                }
                v
            }

            /// The sub-range `offset..offset+len` of this list, borrowing the same memory
            /// (private: for `IoVecMut` only `slice_mut`, under `&mut self`, may hand it
            /// out).
            ///
            /// Panics if the range is out of bounds; callers derive it from `len()`.
            fn sub(&self, offset: usize, len: usize) -> $name<'_> {
                assert!(offset.checked_add(len).is_some_and(|e| e <= self.len));
                let mut out = $name::new();
                let mut skip = offset;
                let mut left = len;
                for s in &self.segs {
                    if left == 0 {
                        break;
                    }
                    if skip >= s.iov_len {
                        skip -= s.iov_len;
                        continue;
                    }
                    let take = (s.iov_len - skip).min(left);
                    // SAFETY: a sub-range of a segment this list already borrows for 'a.
                    unsafe { out.push_raw((s.iov_base as *mut u8).add(skip), take) };
                    left -= take;
                    skip = 0;
                }
                out
            }

            /// Copies `len()` bytes out of the list into `dst`, which must be at least that long.
            pub fn copy_to_slice(&self, dst: &mut [u8]) {
                let mut pos = 0;
                for s in &self.segs {
                    // SAFETY: the segment is readable for 'a (both list kinds allow reads
                    // by the owner of the list).
                    let src =
                        unsafe { std::slice::from_raw_parts(s.iov_base as *const u8, s.iov_len) };
                    dst[pos..pos + s.iov_len].copy_from_slice(src);
                    pos += s.iov_len;
                }
            }
        }

        impl Default for $name<'_> {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("segments", &self.segs.len())
                    .field("len", &self.len)
                    .finish()
            }
        }
    };
}

/// A scatter-gather list that a request reads *into*.
///
/// Writable sub-lists come only from [`IoVecMut::slice_mut`], under `&mut self`, so
/// two writable views of the same memory never coexist:
///
/// ```compile_fail
/// let mut buf = [0u8; 8];
/// let v = oxemu_block::IoVecMut::from_slice(&mut buf);
/// let (a, b) = (v.slice(0, 4), v.slice(0, 4)); // no `slice` from a shared borrow
/// ```
///
/// ```
/// let mut buf = [0u8; 8];
/// let mut v = oxemu_block::IoVecMut::from_slice(&mut buf);
/// v.slice_mut(4, 4).copy_from_slice(&[1; 4]);
/// v.as_iovec().slice(0, 4).copy_to_slice(&mut [0u8; 4]);
/// assert_eq!(buf, [0, 0, 0, 0, 1, 1, 1, 1]);
/// ```
pub struct IoVecMut<'a> {
    segs: Segs,
    len: usize,
    _borrow: PhantomData<&'a mut [u8]>,
}

/// A scatter-gather list that a request writes *from*.
pub struct IoVec<'a> {
    segs: Segs,
    len: usize,
    _borrow: PhantomData<&'a [u8]>,
}

iovec_common!(IoVecMut);
iovec_common!(IoVec);

// SAFETY: the lists only hold addresses of memory borrowed for 'a; sending them to
// another thread (the AIO thread pool) is as safe as sending the borrowed slices.
unsafe impl Send for IoVecMut<'_> {}
// SAFETY: see above; `IoVec` only permits reads.
unsafe impl Send for IoVec<'_> {}
// SAFETY: shared references to the list permit no mutation of the list itself.
unsafe impl Sync for IoVec<'_> {}

impl<'a> IoVecMut<'a> {
    /// A one-segment list over `buf`.
    pub fn from_slice(buf: &'a mut [u8]) -> Self {
        let mut v = Self::new();
        // SAFETY: `buf` is exclusively borrowed for 'a.
        unsafe { v.push_raw(buf.as_mut_ptr(), buf.len()) };
        v
    }

    /// Adds `buf` as a further segment.
    pub fn push(&mut self, buf: &'a mut [u8]) {
        // SAFETY: `buf` is exclusively borrowed for 'a.
        unsafe { self.push_raw(buf.as_mut_ptr(), buf.len()) };
    }

    /// Fills `offset..offset+len` of the list with zeroes.
    pub fn zero_range(&mut self, offset: usize, len: usize) {
        let part = self.slice_mut(offset, len);
        for s in part.as_raw() {
            // SAFETY: the segment is writable for 'a by the contract of IoVecMut.
            unsafe { std::ptr::write_bytes(s.iov_base as *mut u8, 0, s.iov_len) };
        }
    }

    /// Copies `src` into the start of the list; `src` must not be longer than `len()`.
    pub fn copy_from_slice(&mut self, src: &[u8]) {
        assert!(src.len() <= self.len);
        let mut pos = 0;
        for s in &self.segs {
            if pos == src.len() {
                break;
            }
            let n = s.iov_len.min(src.len() - pos);
            // SAFETY: the segment is writable for 'a and `n` fits in it.
            unsafe { std::ptr::copy_nonoverlapping(src[pos..].as_ptr(), s.iov_base as *mut u8, n) };
            pos += n;
        }
    }

    /// The same memory viewed as a write source.
    pub fn as_iovec(&self) -> IoVec<'_> {
        // SAFETY: a mutable borrow implies a readable one for the shorter lifetime.
        unsafe { IoVec::from_raw(&self.segs) }
    }

    /// A mutable sub-range `offset..offset+len` of this list.
    pub fn slice_mut(&mut self, offset: usize, len: usize) -> IoVecMut<'_> {
        // `&mut self` keeps the parent from being used while the sub-list lives.
        self.sub(offset, len)
    }
}

impl<'a> IoVec<'a> {
    /// The sub-range `offset..offset+len` of this list, borrowing the same memory.
    ///
    /// Panics if the range is out of bounds; callers derive it from `len()`.
    pub fn slice(&self, offset: usize, len: usize) -> IoVec<'_> {
        self.sub(offset, len)
    }

    /// A one-segment list over `buf`.
    pub fn from_slice(buf: &'a [u8]) -> Self {
        let mut v = Self::new();
        // SAFETY: `buf` is borrowed for 'a; IoVec is only ever read from.
        unsafe { v.push_raw(buf.as_ptr() as *mut u8, buf.len()) };
        v
    }

    /// Adds `buf` as a further segment.
    pub fn push(&mut self, buf: &'a [u8]) {
        // SAFETY: see `from_slice`.
        unsafe { self.push_raw(buf.as_ptr() as *mut u8, buf.len()) };
    }

    /// True when every byte in the list is zero.
    pub fn is_zero(&self) -> bool {
        self.segs.iter().all(|s| {
            // SAFETY: the segment is readable for 'a.
            let b = unsafe { std::slice::from_raw_parts(s.iov_base as *const u8, s.iov_len) };
            crate::buffer::is_zero(b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_spans_segments() {
        let mut a = [1u8; 4];
        let mut b = [2u8; 4];
        let mut v = IoVecMut::new();
        v.push(&mut a);
        v.push(&mut b);
        let s = v.slice_mut(2, 4);
        assert_eq!(s.len(), 4);
        let mut out = [0u8; 4];
        s.copy_to_slice(&mut out);
        assert_eq!(out, [1, 1, 2, 2]);
    }

    #[test]
    fn zero_range_only_touches_range() {
        let mut a = [7u8; 8];
        let mut v = IoVecMut::from_slice(&mut a);
        v.zero_range(2, 3);
        drop(v);
        assert_eq!(a, [7, 7, 0, 0, 0, 7, 7, 7]);
    }
}
