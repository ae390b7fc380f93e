//! Validation of transmission-phase requests, sans-IO: from a parsed [`Request`]
//! header to either a [`Command`] the server executes or a [`Refusal`] carrying the
//! NBD error to reply with.

use crate::handshake::{MetaContexts, Session, CONTEXT_ALLOCATION_DEPTH, CONTEXT_BASE_ALLOCATION};
use crate::proto::{be32, be64, cflag, cmd, err, ReplyMode, Request, MAX_PAYLOAD};

/// A validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes; `df`: reply in one chunk.
    Read {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Don't fragment.
        df: bool,
    },
    /// Write the payload.
    Write {
        /// Offset.
        offset: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Disconnect once in-flight requests are done.
    Disc,
    /// Flush.
    Flush,
    /// Discard a range.
    Trim {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Prefetch a range.
    Cache {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Zero a range.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Force unit access.
        fua: bool,
        /// Don't punch holes.
        no_hole: bool,
        /// Fail rather than write zero buffers.
        fast: bool,
    },
    /// Report block status.
    BlockStatus {
        /// Offset.
        offset: u64,
        /// Length (already clipped to the export size).
        len: u64,
        /// One extent per context.
        req_one: bool,
        /// Contexts to report.
        contexts: MetaContexts,
    },
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// NBD error value for the reply.
    pub error: u32,
    /// Message (sent in structured error chunks, and logged).
    pub message: String,
    /// The connection must be closed after the reply (its payload cannot be
    /// consumed).
    pub close: bool,
}

fn refuse(error: u32, message: impl Into<String>) -> Refusal {
    Refusal {
        error,
        message: message.into(),
        close: false,
    }
}

/// Bytes of payload that follow the header of `req` on the wire, or a refusal that
/// closes the connection when they are too many to consume.
pub fn payload_len(req: &Request, mode: ReplyMode) -> Result<u32, Refusal> {
    let has_payload = req.ty == cmd::WRITE
        || (mode == ReplyMode::Extended && req.flags & cflag::PAYLOAD_LEN != 0);
    if !has_payload {
        return Ok(0);
    }
    if req.len > MAX_PAYLOAD as u64 {
        return Err(Refusal {
            error: err::EINVAL,
            message: format!("payload length {} is larger than {}", req.len, MAX_PAYLOAD),
            close: true,
        });
    }
    Ok(req.len as u32)
}

/// Checks `req` (whose payload, if any, is `payload`) against the session and the
/// export size.
pub fn validate(req: &Request, payload: &[u8], s: &Session, size: u64) -> Result<Command, Refusal> {
    let structured = s.mode != ReplyMode::Simple;
    let extended = s.mode == ReplyMode::Extended;
    let allowed = match req.ty {
        cmd::READ => cflag::DF,
        cmd::WRITE => cflag::FUA | if extended { cflag::PAYLOAD_LEN } else { 0 },
        cmd::WRITE_ZEROES => cflag::FUA | cflag::NO_HOLE | cflag::FAST_ZERO,
        cmd::TRIM => cflag::FUA,
        cmd::BLOCK_STATUS => cflag::REQ_ONE | if extended { cflag::PAYLOAD_LEN } else { 0 },
        cmd::FLUSH | cmd::CACHE | cmd::DISC => 0,
        t => return Err(refuse(err::EINVAL, format!("unsupported command {t}"))),
    };
    if req.flags & !allowed != 0 {
        return Err(refuse(
            err::EINVAL,
            format!(
                "unsupported flags {:#x} for command {}",
                req.flags & !allowed,
                req.ty
            ),
        ));
    }
    if req.flags & cflag::DF != 0 && !structured {
        return Err(refuse(err::EINVAL, "DF flag without structured replies"));
    }
    let writes = matches!(req.ty, cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM);
    if writes && !s.export.writable {
        return Err(refuse(err::EPERM, "export is read-only"));
    }
    let len = if req.ty == cmd::WRITE {
        payload.len() as u64
    } else if req.ty == cmd::BLOCK_STATUS && req.flags & cflag::PAYLOAD_LEN != 0 {
        if payload.len() < 8 || !(payload.len() - 8).is_multiple_of(4) {
            return Err(refuse(err::EINVAL, "malformed block status payload"));
        }
        be64(payload)
    } else {
        req.len
    };
    let offset = req.offset;
    let in_range = offset <= size && len <= size - offset;
    let fua = req.flags & cflag::FUA != 0;
    match req.ty {
        cmd::DISC => return Ok(Command::Disc),
        cmd::FLUSH => return Ok(Command::Flush),
        cmd::BLOCK_STATUS => {
            return block_status(req, payload, s, size, len);
        }
        _ => {}
    }
    if !in_range {
        let e = if writes { err::ENOSPC } else { err::EINVAL };
        return Err(refuse(
            e,
            format!("request {offset}+{len} is beyond the export size {size}"),
        ));
    }
    Ok(match req.ty {
        cmd::READ => {
            if len > MAX_PAYLOAD as u64 {
                return Err(refuse(
                    err::EINVAL,
                    format!("read length {len} is larger than {MAX_PAYLOAD}"),
                ));
            }
            Command::Read {
                offset,
                len: len as u32,
                df: req.flags & cflag::DF != 0,
            }
        }
        cmd::WRITE => Command::Write { offset, fua },
        cmd::TRIM => Command::Trim { offset, len, fua },
        cmd::CACHE => Command::Cache { offset, len },
        _ => Command::WriteZeroes {
            offset,
            len,
            fua,
            no_hole: req.flags & cflag::NO_HOLE != 0,
            fast: req.flags & cflag::FAST_ZERO != 0,
        },
    })
}

fn block_status(
    req: &Request,
    payload: &[u8],
    s: &Session,
    size: u64,
    len: u64,
) -> Result<Command, Refusal> {
    let mut contexts = s.contexts;
    if contexts.is_empty() || s.mode == ReplyMode::Simple {
        return Err(refuse(err::EINVAL, "no metadata context was negotiated"));
    }
    if req.flags & cflag::PAYLOAD_LEN != 0 {
        let mut want = MetaContexts::default();
        for id in payload[8..].chunks_exact(4).map(be32) {
            match id {
                CONTEXT_BASE_ALLOCATION if contexts.base_allocation => want.base_allocation = true,
                CONTEXT_ALLOCATION_DEPTH if contexts.allocation_depth => {
                    want.allocation_depth = true
                }
                _ => return Err(refuse(err::EINVAL, format!("unknown context id {id}"))),
            }
        }
        if !want.is_empty() {
            contexts = want;
        }
    }
    if len == 0 || req.offset >= size {
        return Err(refuse(
            err::EINVAL,
            format!(
                "block status at {}+{len} is beyond the export size {size}",
                req.offset
            ),
        ));
    }
    Ok(Command::BlockStatus {
        offset: req.offset,
        len: len.min(size - req.offset),
        req_one: req.flags & cflag::REQ_ONE != 0,
        contexts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{transmission_flags, ExportInfo};

    fn session(writable: bool, mode: ReplyMode) -> Session {
        let export = ExportInfo {
            name: String::new(),
            description: String::new(),
            size: 1 << 20,
            writable,
            allocation_depth: false,
            min_block: 1,
        };
        Session {
            flags: transmission_flags(&export, mode),
            export,
            mode,
            contexts: MetaContexts::default(),
        }
    }

    fn req(ty: u16, flags: u16, offset: u64, len: u64) -> Request {
        Request {
            flags,
            ty,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn write_to_read_only_export_is_eperm() {
        let s = session(false, ReplyMode::Simple);
        let r = validate(&req(cmd::WRITE, 0, 0, 4), &[0; 4], &s, 1 << 20);
        assert_eq!(r.unwrap_err().error, err::EPERM);
        let r = validate(&req(cmd::TRIM, 0, 0, 4), &[], &s, 1 << 20);
        assert_eq!(r.unwrap_err().error, err::EPERM);
    }

    #[test]
    fn out_of_range_write_is_enospc_and_read_is_einval() {
        let s = session(true, ReplyMode::Simple);
        let r = validate(&req(cmd::WRITE, 0, (1 << 20) - 2, 4), &[0; 4], &s, 1 << 20);
        assert_eq!(r.unwrap_err().error, err::ENOSPC);
        let r = validate(&req(cmd::READ, 0, u64::MAX, 4), &[], &s, 1 << 20);
        assert_eq!(r.unwrap_err().error, err::EINVAL);
    }

    #[test]
    fn oversized_write_payload_closes_the_connection() {
        let r = payload_len(&req(cmd::WRITE, 0, 0, 64 << 20), ReplyMode::Simple);
        assert!(r.unwrap_err().close);
    }

    #[test]
    fn df_needs_structured_replies() {
        let s = session(true, ReplyMode::Simple);
        let r = validate(&req(cmd::READ, cflag::DF, 0, 4), &[], &s, 1 << 20);
        assert_eq!(r.unwrap_err().error, err::EINVAL);
        let s = session(true, ReplyMode::Structured);
        assert!(validate(&req(cmd::READ, cflag::DF, 0, 4), &[], &s, 1 << 20).is_ok());
    }
}
