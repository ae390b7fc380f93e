//! Aligned I/O buffers, as O_DIRECT and registered io_uring buffers need them.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment used for buffers the block layer allocates itself: one 4 KiB page, which
/// satisfies O_DIRECT on every device with up to 4 KiB logical blocks.
pub const BUFFER_ALIGN: usize = 4096;

/// A zero-initialised heap buffer whose start is aligned to [`BUFFER_ALIGN`] (or more).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `Deref`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to [`BUFFER_ALIGN`].
    pub fn new(len: usize) -> Self {
        Self::with_alignment(len, BUFFER_ALIGN)
    }

    /// Allocates `len` zeroed bytes aligned to `align` (a power of two).
    pub fn with_alignment(len: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("bad buffer layout");
        // SAFETY: layout has non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, layout }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_alignment` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// True when every byte of `buf` is zero (used to detect zero writes and holes).
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets.
        unsafe { buf.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let b = AlignedBuf::new(10000);
        assert_eq!(b.as_ptr() as usize % BUFFER_ALIGN, 0);
        assert!(is_zero(&b));
    }

    #[test]
    fn is_zero_sees_a_single_set_byte() {
        let mut v = vec![0u8; 1000];
        assert!(is_zero(&v));
        v[999] = 1;
        assert!(!is_zero(&v));
        assert!(!is_zero(&v[3..]));
    }
}
