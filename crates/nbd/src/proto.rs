//! Wire constants and byte layouts of the NBD protocol (doc/proto.md of the
//! NetworkBlockDevice project): handshake and option framing, requests in compact and
//! extended form, and simple, structured and extended replies. Sans-IO: every function
//! here works on byte slices and `Vec<u8>`s.

/// `NBDMAGIC`, the first eight bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, sent after `NBDMAGIC` and before every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a compact request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of an extended request.
pub const EXT_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended reply chunk.
pub const EXT_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be omitted.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options of the handshake phase.
pub mod opt {
    /// Select an export and enter transmission (no error reporting).
    pub const EXPORT_NAME: u32 = 1;
    /// End the session.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Upgrade the connection to TLS.
    pub const STARTTLS: u32 = 5;
    /// Query an export.
    pub const INFO: u32 = 6;
    /// Query and select an export, entering transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Use 64-bit extended headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// Option accepted / list finished.
    pub const ACK: u32 = 1;
    /// One export of `NBD_OPT_LIST`.
    pub const SERVER: u32 = 2;
    /// One information item of `NBD_OPT_INFO`/`GO`.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    /// Unknown option.
    pub const ERR_UNSUP: u32 = ERR + 1;
    /// Forbidden by server policy.
    pub const ERR_POLICY: u32 = ERR + 2;
    /// Syntactically or semantically invalid.
    pub const ERR_INVALID: u32 = ERR + 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = ERR + 4;
    /// TLS must be negotiated first.
    pub const ERR_TLS_REQD: u32 = ERR + 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = ERR + 6;
    /// Server shutting down.
    pub const ERR_SHUTDOWN: u32 = ERR + 7;
    /// Client must request block sizes.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR + 8;
    /// Request or reply too large.
    pub const ERR_TOO_BIG: u32 = ERR + 9;
    /// Extended headers required.
    pub const ERR_EXT_HEADER_REQD: u32 = ERR + 10;
}

/// Information types of `NBD_OPT_INFO`/`GO`.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical export name.
    pub const NAME: u16 = 1;
    /// Human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (16 bits, sent with the export size).
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_CMD_TRIM` supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_CMD_FLAG_DF` supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// Flushes are visible across connections.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
    /// `NBD_CMD_FLAG_PAYLOAD_LEN` on `NBD_CMD_BLOCK_STATUS` supported.
    pub const SEND_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;
}

/// Commands of the transmission phase.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Discard.
    pub const TRIM: u16 = 4;
    /// Prefetch.
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Query block status.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES` must not punch holes.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `READ` must not be fragmented.
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS` wants one extent per context.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES` must fail fast rather than write zero buffers.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended header: the length field is a payload length.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// Last chunk of the reply.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// Empty chunk (completes a reply).
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// A range reading as zeroes.
    pub const OFFSET_HOLE: u16 = 2;
    /// Extents with 32-bit fields.
    pub const BLOCK_STATUS: u16 = 5;
    /// Extents with 64-bit fields (extended headers).
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// An error.
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// NBD error values (the protocol's own numbering, Linux-compatible).
pub mod err {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left.
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Base allocation state bits.
pub const STATE_HOLE: u32 = 1 << 0;
/// Reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// Largest payload the server accepts or sends in one request (QEMU's
/// NBD_MAX_BUFFER_SIZE).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload read into memory; longer options are drained and refused.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest name or description the server handles (QEMU's NBD_MAX_STRING_SIZE).
pub const MAX_STRING: usize = 4096;

/// Maps an errno from the block layer to the NBD error the client sees.
pub fn errno_to_nbd(e: i32) -> u32 {
    match e {
        libc::EPERM | libc::EROFS | libc::EACCES => err::EPERM,
        libc::EIO => err::EIO,
        libc::ENOMEM => err::ENOMEM,
        libc::ENOSPC | libc::EFBIG | libc::EDQUOT => err::ENOSPC,
        libc::EOVERFLOW => err::EOVERFLOW,
        libc::ENOTSUP => err::ENOTSUP,
        libc::ESHUTDOWN => err::ESHUTDOWN,
        _ => err::EINVAL,
    }
}

/// The server's greeting: magic, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// Header of one client option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// `NBD_OPT_*`.
    pub option: u32,
    /// Length of the data that follows.
    pub len: u32,
}

/// Size of an option header on the wire.
pub const OPTION_HEADER_LEN: usize = 16;

/// Protocol violations that end a session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// An option did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x} (expected IHAVEOPT)")]
    BadOptionMagic(u64),
    /// A request had neither the compact nor the expected extended magic.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// The client set handshake flags the server did not offer.
    #[error("unknown client flags {0:#x}")]
    BadClientFlags(u32),
    /// An option was longer than the server will drain.
    #[error("option {option} has length {len}, larger than {max}")]
    OptionTooLong {
        /// Option code.
        option: u32,
        /// Claimed length.
        len: u32,
        /// Limit.
        max: u32,
    },
}

impl OptionHeader {
    /// Parses the 16-byte header; fails on a bad magic.
    pub fn parse(b: &[u8; OPTION_HEADER_LEN]) -> Result<Self, ProtoError> {
        let magic = be64(&b[0..8]);
        if magic != IHAVEOPT {
            return Err(ProtoError::BadOptionMagic(magic));
        }
        Ok(OptionHeader {
            option: be32(&b[8..12]),
            len: be32(&b[12..16]),
        })
    }

    /// Encodes the header (used by tests and fuzz seeds acting as a client).
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Validates the client flags word.
pub fn parse_client_flags(b: [u8; 4]) -> Result<u32, ProtoError> {
    let f = u32::from_be_bytes(b);
    if f & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::BadClientFlags(f));
    }
    Ok(f)
}

/// Appends one option reply.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, ty: u32, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A request header, compact or extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub ty: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length (or payload length with `PAYLOAD_LEN`).
    pub len: u64,
}

/// Size of a compact request header.
pub const REQUEST_LEN: usize = 28;
/// Size of an extended request header.
pub const EXT_REQUEST_LEN: usize = 32;

impl Request {
    /// Bytes of header expected in the given mode.
    pub fn header_len(extended: bool) -> usize {
        if extended {
            EXT_REQUEST_LEN
        } else {
            REQUEST_LEN
        }
    }

    /// Parses a header of exactly `header_len(extended)` bytes.
    pub fn parse(b: &[u8], extended: bool) -> Result<Self, ProtoError> {
        let magic = be32(&b[0..4]);
        let want = if extended {
            EXT_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        if magic != want || b.len() < Self::header_len(extended) {
            return Err(ProtoError::BadRequestMagic(magic));
        }
        let flags = be16(&b[4..6]);
        let ty = be16(&b[6..8]);
        let cookie = be64(&b[8..16]);
        let offset = be64(&b[16..24]);
        let len = if extended {
            be64(&b[24..32])
        } else {
            be32(&b[24..28]) as u64
        };
        Ok(Request {
            flags,
            ty,
            cookie,
            offset,
            len,
        })
    }

    /// Encodes the header (client side; tests and fuzz seeds).
    pub fn encode(&self, extended: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(EXT_REQUEST_LEN);
        let magic = if extended {
            EXT_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        b.extend_from_slice(&magic.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.ty.to_be_bytes());
        b.extend_from_slice(&self.cookie.to_be_bytes());
        b.extend_from_slice(&self.offset.to_be_bytes());
        if extended {
            b.extend_from_slice(&self.len.to_be_bytes());
        } else {
            b.extend_from_slice(&(self.len as u32).to_be_bytes());
        }
        b
    }
}

/// How replies are framed on a connection, fixed at the end of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyMode {
    /// Simple replies only.
    Simple,
    /// Structured replies for READ and BLOCK_STATUS, simple replies otherwise.
    Structured,
    /// Extended headers (implies structured; no simple replies).
    Extended,
}

/// Appends a simple reply header.
pub fn put_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a structured (or, in extended mode, extended) chunk header announcing
/// `payload_len` bytes of payload.
pub fn put_chunk_header(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    flags: u16,
    ty: u16,
    cookie: u64,
    offset: u64,
    payload_len: u64,
) {
    if mode == ReplyMode::Extended {
        out.extend_from_slice(&EXT_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&payload_len.to_be_bytes());
    } else {
        out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&(payload_len as u32).to_be_bytes());
    }
}

/// Appends the complete reply to a request that carries no data: a simple reply,
/// or in extended mode a `NONE`/`ERROR` chunk with `DONE`.
pub fn put_status_reply(out: &mut Vec<u8>, mode: ReplyMode, req: &Request, error: u32) {
    let structured_cmd = req.ty == cmd::READ || req.ty == cmd::BLOCK_STATUS;
    match mode {
        ReplyMode::Simple => put_simple_reply(out, error, req.cookie),
        ReplyMode::Structured if !structured_cmd || error == 0 => {
            put_simple_reply(out, error, req.cookie)
        }
        ReplyMode::Extended if error == 0 => put_chunk_header(
            out,
            mode,
            chunk::FLAG_DONE,
            chunk::NONE,
            req.cookie,
            req.offset,
            0,
        ),
        _ => put_error_chunk(out, mode, req, error, ""),
    }
}

/// Appends an `ERROR` chunk with `DONE` and an optional message.
pub fn put_error_chunk(out: &mut Vec<u8>, mode: ReplyMode, req: &Request, error: u32, msg: &str) {
    let msg = &msg.as_bytes()[..msg.len().min(MAX_STRING)];
    put_chunk_header(
        out,
        mode,
        chunk::FLAG_DONE,
        chunk::ERROR,
        req.cookie,
        req.offset,
        6 + msg.len() as u64,
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// Appends a block-status chunk for one metadata context. `extents` are
/// `(length, flags)` pairs.
pub fn put_block_status(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    req: &Request,
    context_id: u32,
    extents: &[(u64, u32)],
    last: bool,
) {
    let flags = if last { chunk::FLAG_DONE } else { 0 };
    if mode == ReplyMode::Extended {
        let len = 8 + 16 * extents.len() as u64;
        put_chunk_header(
            out,
            mode,
            flags,
            chunk::BLOCK_STATUS_EXT,
            req.cookie,
            req.offset,
            len,
        );
        out.extend_from_slice(&context_id.to_be_bytes());
        out.extend_from_slice(&(extents.len() as u32).to_be_bytes());
        for &(l, f) in extents {
            out.extend_from_slice(&l.to_be_bytes());
            out.extend_from_slice(&(f as u64).to_be_bytes());
        }
    } else {
        let len = 4 + 8 * extents.len() as u64;
        put_chunk_header(
            out,
            mode,
            flags,
            chunk::BLOCK_STATUS,
            req.cookie,
            req.offset,
            len,
        );
        out.extend_from_slice(&context_id.to_be_bytes());
        for &(l, f) in extents {
            out.extend_from_slice(&(l as u32).to_be_bytes());
            out.extend_from_slice(&f.to_be_bytes());
        }
    }
}

/// Big-endian u16 from the first two bytes.
pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Big-endian u32 from the first four bytes.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Big-endian u64 from the first eight bytes.
pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_in_both_header_styles() {
        let r = Request {
            flags: cflag::FUA,
            ty: cmd::WRITE,
            cookie: 0x1122334455667788,
            offset: 4096,
            len: 512,
        };
        for ext in [false, true] {
            let b = r.encode(ext);
            assert_eq!(b.len(), Request::header_len(ext));
            assert_eq!(Request::parse(&b, ext).unwrap(), r);
            assert!(Request::parse(&b, !ext).is_err());
        }
    }

    #[test]
    fn option_header_rejects_bad_magic() {
        let mut h = OptionHeader { option: 7, len: 3 }.encode();
        assert_eq!(OptionHeader::parse(&h).unwrap().option, 7);
        h[0] ^= 1;
        assert!(matches!(
            OptionHeader::parse(&h),
            Err(ProtoError::BadOptionMagic(_))
        ));
    }

    #[test]
    fn errors_in_structured_read_use_error_chunk() {
        let req = Request {
            flags: 0,
            ty: cmd::READ,
            cookie: 9,
            offset: 0,
            len: 1,
        };
        let mut out = Vec::new();
        put_status_reply(&mut out, ReplyMode::Structured, &req, err::EIO);
        assert_eq!(be32(&out), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be16(&out[6..]), chunk::ERROR);
        assert_eq!(be32(&out[20..]), err::EIO);
    }
}
