//! Feeds transmission-phase bytes (request headers and payloads) through oxemu-nbd's
//! request parser and validator, and encodes the replies the server would send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_nbd::handshake::{transmission_flags, ExportInfo, MetaContexts, Session};
use oxemu_nbd::proto::{self, ReplyMode, Request};
use oxemu_nbd::transmission::{payload_len, validate, Command};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let mode = match cfg & 3 {
        0 => ReplyMode::Simple,
        1 => ReplyMode::Structured,
        _ => ReplyMode::Extended,
    };
    let export = ExportInfo {
        name: String::new(),
        description: String::new(),
        size: 64 << 20,
        writable: cfg & 4 != 0,
        allocation_depth: true,
        min_block: 1,
    };
    let s = Session {
        flags: transmission_flags(&export, mode),
        export,
        mode,
        contexts: MetaContexts {
            base_allocation: cfg & 8 != 0,
            allocation_depth: cfg & 16 != 0,
        },
    };
    let ext = mode == ReplyMode::Extended;
    let hlen = Request::header_len(ext);
    let mut out = Vec::new();
    while rest.len() >= hlen {
        let Ok(req) = Request::parse(&rest[..hlen], ext) else {
            return; // the server closes the connection
        };
        rest = &rest[hlen..];
        let plen = match payload_len(&req, mode) {
            Ok(n) => n as usize,
            Err(r) => {
                assert!(r.close);
                proto::put_status_reply(&mut out, mode, &req, r.error);
                return;
            }
        };
        if rest.len() < plen {
            return; // truncated: the server sees EOF
        }
        let payload = &rest[..plen];
        rest = &rest[plen..];
        out.clear();
        match validate(&req, payload, &s, s.export.size) {
            Err(r) => proto::put_error_chunk(&mut out, mode, &req, r.error, &r.message),
            Ok(Command::Disc) => return,
            Ok(Command::BlockStatus { len, contexts, .. }) => {
                assert!(!contexts.is_empty() && len > 0 && req.offset + len <= s.export.size);
                proto::put_block_status(&mut out, mode, &req, 1, &[(len, 0)], true);
            }
            Ok(Command::Read { offset, len, .. }) => {
                assert!(offset + len as u64 <= s.export.size && len <= proto::MAX_PAYLOAD);
                proto::put_chunk_header(&mut out, mode, 1, 1, req.cookie, offset, 8 + len as u64);
            }
            Ok(Command::Write { offset, .. }) => {
                assert!(s.export.writable && offset + plen as u64 <= s.export.size);
                proto::put_status_reply(&mut out, mode, &req, 0);
            }
            Ok(_) => proto::put_status_reply(&mut out, mode, &req, 0),
        }
    }
});
