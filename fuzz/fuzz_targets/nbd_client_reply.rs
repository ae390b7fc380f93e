//! Feeds server bytes to the NBD client's reply decoder (oxemu_nbd::reply) for a set
//! of outstanding READ and BLOCK_STATUS requests, in one piece and split in two,
//! and checks that both agree; with the top config bit, feeds them instead to the
//! client handshake (negotiation and export listing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_nbd::negotiate::{list_exports, negotiate, NegotiateOptions};
use oxemu_nbd::proto::cmd;
use oxemu_nbd::reply::{Expect, ReplyStream};

/// A server that sends `data` and swallows what the client writes.
struct Peer<'a>(&'a [u8]);

impl std::io::Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

impl std::io::Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn decode(cfg: u8, parts: &[&[u8]]) -> (Vec<(u64, oxemu_nbd::reply::Outcome, Vec<u8>)>, bool) {
    let mut s = ReplyStream::new(cfg & 1 != 0);
    for c in 1..=4u64 {
        let ty = if cfg & (1 << c) != 0 { cmd::BLOCK_STATUS } else { cmd::READ };
        s.expect(c, Expect { ty, offset: c * 4096, len: 512 * c as u32 });
    }
    for p in parts {
        s.feed(p);
    }
    (s.take_done(), s.error().is_some())
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    if cfg & 0x80 != 0 {
        let _ = negotiate(
            &mut Peer(rest),
            &NegotiateOptions {
                export: "e".into(),
                structured: true,
                contexts: vec!["base:allocation".into(), "qemu:allocation-depth".into()],
            },
        );
        let _ = list_exports(&mut Peer(rest));
        return;
    }
    let whole = decode(cfg, &[rest]);
    let cut = rest.len() / 2;
    let split = decode(cfg, &[&rest[..cut], &rest[cut..]]);
    assert_eq!(whole, split);
});
