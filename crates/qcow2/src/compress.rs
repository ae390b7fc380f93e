//! Compressed clusters: raw deflate (zlib type) and zstd, framed as QEMU frames them
//! (one zstd frame per cluster; trailing sector padding is ignored on decompression).

use std::io;

use crate::header::CompressionType;

fn err(what: impl std::fmt::Display, host: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("qcow2: compressed cluster at host offset {host:#x} cannot be decompressed: {what}"),
    )
}

/// Decompresses `src` into exactly `dst.len()` bytes.
pub fn decompress(kind: CompressionType, src: &[u8], dst: &mut [u8], host: u64) -> io::Result<()> {
    match kind {
        CompressionType::Zlib => {
            let mut d = flate2::Decompress::new(false);
            let st = d
                .decompress(src, dst, flate2::FlushDecompress::Finish)
                .map_err(|e| err(e, host))?;
            if d.total_out() as usize != dst.len() {
                return Err(err(format!("{st:?} after {} of {} bytes", d.total_out(), dst.len()), host));
            }
            Ok(())
        }
        CompressionType::Zstd => {
            use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
            let mut d = Decoder::new().map_err(|e| err(e, host))?;
            let mut input = InBuffer::around(src);
            let want = dst.len();
            let mut output = OutBuffer::around(dst);
            while output.pos() < want {
                let before = (input.pos, output.pos());
                let hint = d.run(&mut input, &mut output).map_err(|e| err(e, host))?;
                if (input.pos, output.pos()) == before || (hint == 0 && output.pos() < want) {
                    return Err(err(format!("stream ended after {} of {want} bytes", output.pos()), host));
                }
            }
            Ok(())
        }
    }
}

/// Compresses one cluster; returns `None` when the result would not be smaller than
/// `limit` bytes (the caller then writes the cluster uncompressed).
pub fn compress(kind: CompressionType, src: &[u8], limit: usize) -> io::Result<Option<Vec<u8>>> {
    match kind {
        CompressionType::Zlib => {
            // QEMU uses deflateInit2(Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, ...).
            let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
            let mut out = Vec::with_capacity(limit);
            let st = c
                .compress_vec(src, &mut out, flate2::FlushCompress::Finish)
                .map_err(io::Error::other)?;
            if st != flate2::Status::StreamEnd || out.len() >= limit {
                return Ok(None);
            }
            Ok(Some(out))
        }
        CompressionType::Zstd => {
            let out = zstd::bulk::compress(src, 0).map_err(io::Error::other)?;
            Ok((out.len() < limit).then_some(out))
        }
    }
}
