//! The client side of transmission replies, sans-IO: reply headers (simple and
//! structured), validation of each chunk against the request it answers, and the
//! decoding of chunk payloads. Everything a server sends is checked before it is
//! used: payload lengths are bounded by what the request can legitimately receive,
//! offsets must fall inside the request, and unknown chunk types are refused, so a
//! malicious server can make a request fail (`EIO`) but never make the client
//! allocate without bound or index out of range.
//!
//! [`ReplyStream`] combines these into a decoder of a whole reply stream for a set
//! of outstanding requests; it is what the fuzz target drives, and the
//! client module uses the same functions step by step.

use std::collections::HashMap;

use crate::proto::{self, be16, be32, be64, chunk, cmd};

/// Length of a simple reply header.
pub const SIMPLE_HEADER_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Largest block-status payload accepted (bytes). A `REQ_ONE` request needs one
/// extent per context; generous room is left for servers that send more.
pub const MAX_STATUS_PAYLOAD: u32 = 64 << 10;
/// Largest error-chunk payload accepted: code, length and a message of at most
/// [`proto::MAX_STRING`] bytes.
pub const MAX_ERROR_PAYLOAD: u32 = 6 + proto::MAX_STRING as u32;

/// A malformed or unexpected reply; it ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The header's magic is neither a simple nor (when negotiated) a structured one.
    #[error("invalid magic (got {0:#x})")]
    BadMagic(u32),
    /// The cookie names no outstanding request.
    #[error("unexpected cookie {0:#x}")]
    UnknownCookie(u64),
    /// The chunk does not fit the request it answers.
    #[error("protocol error: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ReplyError {
    ReplyError::Invalid(msg.into())
}

/// A decoded reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply; a successful READ's data follows it.
    Simple {
        /// NBD error code (0 = success).
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// One chunk of a structured reply; `len` payload bytes follow.
    Chunk {
        /// `NBD_REPLY_FLAG_*`.
        flags: u16,
        /// `NBD_REPLY_TYPE_*`.
        ty: u16,
        /// The request's cookie.
        cookie: u64,
        /// Payload length.
        len: u32,
    },
}

impl ReplyHeader {
    /// The cookie of the request this reply answers.
    pub fn cookie(&self) -> u64 {
        match *self {
            ReplyHeader::Simple { cookie, .. } | ReplyHeader::Chunk { cookie, .. } => cookie,
        }
    }

    /// True when no further chunk follows for this cookie.
    pub fn is_last(&self) -> bool {
        match *self {
            ReplyHeader::Simple { .. } => true,
            ReplyHeader::Chunk { flags, .. } => flags & chunk::FLAG_DONE != 0,
        }
    }
}

/// The total header length announced by the first four bytes (the magic).
pub fn header_len(magic: &[u8; 4], structured: bool) -> Result<usize, ReplyError> {
    match u32::from_be_bytes(*magic) {
        proto::SIMPLE_REPLY_MAGIC => Ok(SIMPLE_HEADER_LEN),
        proto::STRUCTURED_REPLY_MAGIC if structured => Ok(CHUNK_HEADER_LEN),
        m => Err(ReplyError::BadMagic(m)),
    }
}

/// Decodes a header of exactly [`header_len`] bytes.
pub fn parse_header(b: &[u8], structured: bool) -> Result<ReplyHeader, ReplyError> {
    if b.len() < 4 {
        return Err(invalid("short reply header"));
    }
    let magic: [u8; 4] = [b[0], b[1], b[2], b[3]];
    let want = header_len(&magic, structured)?;
    if b.len() != want {
        return Err(invalid("short reply header"));
    }
    Ok(if want == SIMPLE_HEADER_LEN {
        ReplyHeader::Simple {
            error: be32(&b[4..]),
            cookie: be64(&b[8..]),
        }
    } else {
        ReplyHeader::Chunk {
            flags: be16(&b[4..]),
            ty: be16(&b[6..]),
            cookie: be64(&b[8..]),
            len: be32(&b[16..]),
        }
    })
}

/// What a reply must match: the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// `NBD_CMD_*` of the request.
    pub ty: u16,
    /// Request offset.
    pub offset: u64,
    /// Request length.
    pub len: u32,
}

/// How the payload that follows a header is to be consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Nothing follows.
    None,
    /// `len` bytes of read data follow, for `offset` relative to the request.
    /// For `OFFSET_DATA` chunks this comes after an 8-byte offset prefix (see
    /// [`check_data_offset`]); for simple replies it is the whole request.
    Data {
        /// Byte length.
        len: u32,
    },
    /// `len` bytes to decode with [`parse_payload`] (hole, status and error chunks,
    /// and the offset prefix of a data chunk).
    Small {
        /// Byte length.
        len: u32,
    },
}

/// Validates a header against its request and says what follows.
pub fn check_header(h: &ReplyHeader, req: &Expect) -> Result<Payload, ReplyError> {
    match *h {
        ReplyHeader::Simple { error, .. } => {
            if error == 0 && req.ty == cmd::READ {
                Ok(Payload::Data { len: req.len })
            } else {
                Ok(Payload::None)
            }
        }
        ReplyHeader::Chunk { flags, ty, len, .. } => {
            if flags & !chunk::FLAG_DONE != 0 {
                return Err(invalid(format!("unknown reply flags {flags:#x}")));
            }
            match ty {
                chunk::NONE => {
                    if len != 0 {
                        return Err(invalid("NBD_REPLY_TYPE_NONE with a payload"));
                    }
                    if flags & chunk::FLAG_DONE == 0 {
                        return Err(invalid("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE"));
                    }
                    Ok(Payload::None)
                }
                chunk::OFFSET_DATA => {
                    if req.ty != cmd::READ {
                        return Err(invalid("data chunk for a request other than READ"));
                    }
                    if len <= 8 || len - 8 > req.len {
                        return Err(invalid(format!("data chunk of {len} bytes")));
                    }
                    Ok(Payload::Small { len: 8 })
                }
                chunk::OFFSET_HOLE => {
                    if req.ty != cmd::READ {
                        return Err(invalid("hole chunk for a request other than READ"));
                    }
                    if len != 12 {
                        return Err(invalid(format!("hole chunk of {len} bytes")));
                    }
                    Ok(Payload::Small { len })
                }
                chunk::BLOCK_STATUS => {
                    if req.ty != cmd::BLOCK_STATUS {
                        return Err(invalid(
                            "status chunk for a request other than BLOCK_STATUS",
                        ));
                    }
                    if len < 12 || (len - 4) % 8 != 0 || len > MAX_STATUS_PAYLOAD {
                        return Err(invalid(format!("status chunk of {len} bytes")));
                    }
                    Ok(Payload::Small { len })
                }
                t if t & (1 << 15) != 0 => {
                    if !(6..=MAX_ERROR_PAYLOAD).contains(&len) {
                        return Err(invalid(format!("error chunk of {len} bytes")));
                    }
                    Ok(Payload::Small { len })
                }
                t => Err(invalid(format!("unknown reply type {t}"))),
            }
        }
    }
}

/// The offset prefix of an `OFFSET_DATA` chunk of `chunk_len` bytes: the data goes to
/// `rel..rel + chunk_len - 8` of the request's buffer; returns `rel`.
pub fn check_data_offset(prefix: &[u8], chunk_len: u32, req: &Expect) -> Result<u64, ReplyError> {
    if prefix.len() != 8 || chunk_len <= 8 {
        return Err(invalid("short data chunk"));
    }
    let off = be64(prefix);
    let n = (chunk_len - 8) as u64;
    let rel = off
        .checked_sub(req.offset)
        .filter(|r| r.checked_add(n).is_some_and(|e| e <= req.len as u64))
        .ok_or_else(|| invalid(format!("data chunk at {off} outside the request")))?;
    Ok(rel)
}

/// A decoded small payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// `len` bytes at `rel` (relative to the request) read as zeroes.
    Hole {
        /// Offset relative to the request.
        rel: u64,
        /// Length.
        len: u32,
    },
    /// Extents of one metadata context: `(length, flags)` pairs, at least one.
    Status {
        /// Context id.
        context: u32,
        /// The extents.
        extents: Vec<(u32, u32)>,
    },
    /// The server reports an error for the request.
    Error {
        /// NBD error code.
        code: u32,
        /// Human-readable message (may be empty).
        message: String,
    },
}

/// Decodes the payload of a hole, status or error chunk of type `ty`.
pub fn parse_payload(ty: u16, b: &[u8], req: &Expect) -> Result<Decoded, ReplyError> {
    match ty {
        chunk::OFFSET_HOLE if b.len() == 12 => {
            let off = be64(b);
            let len = be32(&b[8..]);
            let rel = off
                .checked_sub(req.offset)
                .filter(|r| {
                    len > 0
                        && r.checked_add(len as u64)
                            .is_some_and(|e| e <= req.len as u64)
                })
                .ok_or_else(|| invalid(format!("hole chunk at {off} outside the request")))?;
            Ok(Decoded::Hole { rel, len })
        }
        chunk::BLOCK_STATUS if b.len() >= 12 && (b.len() - 4).is_multiple_of(8) => {
            let context = be32(b);
            let extents = b[4..]
                .chunks_exact(8)
                .map(|e| (be32(e), be32(&e[4..])))
                .collect();
            Ok(Decoded::Status { context, extents })
        }
        t if t & (1 << 15) != 0 && b.len() >= 6 => {
            let code = be32(b);
            let mlen = be16(&b[4..]) as usize;
            // Error-offset chunks carry 8 more bytes after the message.
            let extra = if t == chunk::ERROR + 1 { 8 } else { 0 };
            if 6 + mlen + extra != b.len() {
                return Err(invalid("error chunk with a bad message length"));
            }
            if code == 0 {
                return Err(invalid("error chunk with error code 0"));
            }
            let message = String::from_utf8_lossy(&b[6..6 + mlen]).into_owned();
            Ok(Decoded::Error { code, message })
        }
        _ => Err(invalid(format!("malformed payload for reply type {ty}"))),
    }
}

/// Maps an NBD error code to the errno the block layer reports (unknown codes
/// become `EINVAL`, as in QEMU).
pub fn nbd_to_errno(code: u32) -> i32 {
    match code {
        proto::err::EPERM => libc::EPERM,
        proto::err::EIO => libc::EIO,
        proto::err::ENOMEM => libc::ENOMEM,
        proto::err::ENOSPC => libc::ENOSPC,
        proto::err::EOVERFLOW => libc::EOVERFLOW,
        proto::err::ENOTSUP => libc::ENOTSUP,
        proto::err::ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EINVAL,
    }
}

/// The outcome of one request as [`ReplyStream`] decodes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// First error the server reported (NBD code), if any.
    pub error: Option<u32>,
    /// Bytes of the read buffer that were filled by data or hole chunks.
    pub filled: u64,
    /// Extents received, per context.
    pub extents: Vec<(u32, Vec<(u32, u32)>)>,
}

/// A sans-IO decoder of a whole reply stream for a set of outstanding requests:
/// feed it bytes, take finished requests out. It owns bounded state only (the
/// outstanding requests and at most one partial header or payload).
#[derive(Debug)]
pub struct ReplyStream {
    structured: bool,
    pending: HashMap<u64, (Expect, Outcome, Vec<u8>)>,
    buf: Vec<u8>,
    done: Vec<(u64, Outcome, Vec<u8>)>,
    broken: Option<ReplyError>,
}

impl ReplyStream {
    /// A decoder for a connection with (or without) structured replies.
    pub fn new(structured: bool) -> Self {
        ReplyStream {
            structured,
            pending: HashMap::new(),
            buf: Vec::new(),
            done: Vec::new(),
            broken: None,
        }
    }

    /// Registers an outstanding request; a READ gets a zeroed buffer of its length.
    pub fn expect(&mut self, cookie: u64, req: Expect) {
        let data = if req.ty == cmd::READ {
            vec![0u8; req.len as usize]
        } else {
            Vec::new()
        };
        self.pending.insert(cookie, (req, Outcome::default(), data));
    }

    /// The protocol error that broke the stream, if any; no more input is decoded.
    pub fn error(&self) -> Option<&ReplyError> {
        self.broken.as_ref()
    }

    /// Requests whose reply is complete: cookie, outcome, read data.
    pub fn take_done(&mut self) -> Vec<(u64, Outcome, Vec<u8>)> {
        std::mem::take(&mut self.done)
    }

    /// Decodes as much of `input` as possible.
    pub fn feed(&mut self, input: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        self.buf.extend_from_slice(input);
        loop {
            match self.step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.broken = Some(e);
                    self.buf.clear();
                    break;
                }
            }
        }
    }

    /// Decodes one complete reply or chunk from the buffer; false if more input is
    /// needed.
    fn step(&mut self) -> Result<bool, ReplyError> {
        if self.buf.len() < 4 {
            return Ok(false);
        }
        let magic = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
        let hl = header_len(&magic, self.structured)?;
        if self.buf.len() < hl {
            return Ok(false);
        }
        let h = parse_header(&self.buf[..hl], self.structured)?;
        let cookie = h.cookie();
        let (req, _, _) = self
            .pending
            .get(&cookie)
            .ok_or(ReplyError::UnknownCookie(cookie))?;
        let req = *req;
        let plan = check_header(&h, &req)?;
        let total = match (h, plan) {
            (_, Payload::None) => 0,
            (ReplyHeader::Simple { .. }, Payload::Data { len }) => len as usize,
            (ReplyHeader::Chunk { len, .. }, _) => len as usize,
            _ => 0,
        };
        if self.buf.len() < hl + total {
            return Ok(false);
        }
        let body: Vec<u8> = self.buf[hl..hl + total].to_vec();
        self.buf.drain(..hl + total);
        let entry = self.pending.get_mut(&cookie).expect("looked up above");
        match h {
            ReplyHeader::Simple { error, .. } => {
                if error != 0 {
                    entry.1.error.get_or_insert(error);
                } else if req.ty == cmd::READ {
                    entry.2.copy_from_slice(&body);
                    entry.1.filled = req.len as u64;
                }
            }
            ReplyHeader::Chunk { ty, len, .. } => match ty {
                chunk::NONE => {}
                chunk::OFFSET_DATA => {
                    let rel = check_data_offset(&body[..8], len, &req)? as usize;
                    entry.2[rel..rel + body.len() - 8].copy_from_slice(&body[8..]);
                    entry.1.filled += body.len() as u64 - 8;
                }
                _ => match parse_payload(ty, &body, &req)? {
                    Decoded::Hole { rel, len } => {
                        entry.2[rel as usize..rel as usize + len as usize].fill(0);
                        entry.1.filled += len as u64;
                    }
                    Decoded::Status { context, extents } => {
                        entry.1.extents.push((context, extents))
                    }
                    Decoded::Error { code, .. } => {
                        entry.1.error.get_or_insert(code);
                    }
                },
            },
        }
        if h.is_last() {
            let (_, out, data) = self.pending.remove(&cookie).expect("looked up above");
            self.done.push((cookie, out, data));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{put_chunk_header, put_simple_reply, ReplyMode};

    fn read_req(offset: u64, len: u32) -> Expect {
        Expect {
            ty: cmd::READ,
            offset,
            len,
        }
    }

    #[test]
    fn structured_read_with_data_and_hole_chunks() {
        let mut s = ReplyStream::new(true);
        s.expect(7, read_req(4096, 8));
        let mut b = Vec::new();
        put_chunk_header(
            &mut b,
            ReplyMode::Structured,
            0,
            chunk::OFFSET_DATA,
            7,
            0,
            12,
        );
        b.extend_from_slice(&4096u64.to_be_bytes());
        b.extend_from_slice(b"abcd");
        put_chunk_header(
            &mut b,
            ReplyMode::Structured,
            chunk::FLAG_DONE,
            chunk::OFFSET_HOLE,
            7,
            0,
            12,
        );
        b.extend_from_slice(&4100u64.to_be_bytes());
        b.extend_from_slice(&4u32.to_be_bytes());
        // Byte by byte, to exercise partial input.
        for x in &b {
            s.feed(std::slice::from_ref(x));
        }
        let d = s.take_done();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].2, b"abcd\0\0\0\0");
        assert_eq!(d[0].1.filled, 8);
        assert!(s.error().is_none());
    }

    #[test]
    fn malicious_replies_break_the_stream() {
        // Data beyond the request.
        let mut s = ReplyStream::new(true);
        s.expect(1, read_req(0, 4));
        let mut b = Vec::new();
        put_chunk_header(
            &mut b,
            ReplyMode::Structured,
            0,
            chunk::OFFSET_DATA,
            1,
            0,
            12,
        );
        b.extend_from_slice(&2u64.to_be_bytes());
        b.extend_from_slice(b"abcd");
        s.feed(&b);
        assert!(s.error().is_some());
        // Unknown cookie.
        let mut s = ReplyStream::new(false);
        let mut b = Vec::new();
        put_simple_reply(&mut b, 0, 99);
        s.feed(&b);
        assert_eq!(s.error(), Some(&ReplyError::UnknownCookie(99)));
        // Huge chunk length claimed: refused before any allocation.
        let mut s = ReplyStream::new(true);
        s.expect(
            2,
            Expect {
                ty: cmd::BLOCK_STATUS,
                offset: 0,
                len: 512,
            },
        );
        let mut b = Vec::new();
        put_chunk_header(
            &mut b,
            ReplyMode::Structured,
            0,
            chunk::BLOCK_STATUS,
            2,
            0,
            u32::MAX as u64,
        );
        s.feed(&b);
        assert!(s.error().is_some());
        // Structured magic without structured replies negotiated.
        let mut s = ReplyStream::new(false);
        s.expect(3, read_req(0, 1));
        let mut b = Vec::new();
        put_chunk_header(&mut b, ReplyMode::Structured, 1, chunk::NONE, 3, 0, 0);
        s.feed(&b);
        assert!(matches!(s.error(), Some(ReplyError::BadMagic(_))));
    }

    #[test]
    fn error_chunk_and_simple_error() {
        let mut s = ReplyStream::new(true);
        s.expect(5, read_req(0, 4));
        let req = proto::Request {
            flags: 0,
            ty: cmd::READ,
            cookie: 5,
            offset: 0,
            len: 4,
        };
        let mut b = Vec::new();
        proto::put_error_chunk(&mut b, ReplyMode::Structured, &req, proto::err::EPERM, "no");
        s.feed(&b);
        let d = s.take_done();
        assert_eq!(d[0].1.error, Some(proto::err::EPERM));
        assert_eq!(nbd_to_errno(proto::err::EPERM), libc::EPERM);
        assert_eq!(nbd_to_errno(12345), libc::EINVAL);
    }
}
