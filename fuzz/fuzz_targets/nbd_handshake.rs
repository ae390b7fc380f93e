//! Feeds a client's handshake bytes (client flags, then options) through the
//! sans-IO option parser and state machine of oxemu-nbd.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_nbd::handshake::{ExportDirectory, ExportInfo, Negotiation, Step};
use oxemu_nbd::proto::{self, OptionHeader, OPTION_HEADER_LEN};

struct Dir;

impl ExportDirectory for Dir {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        (name.is_empty() || name == "disk").then(|| ExportInfo {
            name: name.to_string(),
            description: "fuzz".into(),
            size: 1 << 30,
            writable: name.is_empty(),
            allocation_depth: true,
            min_block: 1,
        })
    }
    fn list(&self) -> Vec<(String, String)> {
        vec![("".into(), String::new()), ("disk".into(), "fuzz".into())]
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    // First byte: whether the server requires TLS (and whether it "completes").
    let tls = data[0] & 1 != 0;
    let Ok(flags) = proto::parse_client_flags([data[1], data[2], data[3], data[4]]) else {
        return;
    };
    let mut neg = Negotiation::new(flags, tls);
    let mut rest = &data[5..];
    let mut out = Vec::new();
    while rest.len() >= OPTION_HEADER_LEN {
        let hdr: [u8; OPTION_HEADER_LEN] = rest[..OPTION_HEADER_LEN].try_into().unwrap();
        // Accept any magic here so the fuzzer reaches the option handlers; the real
        // check is exercised too.
        let _ = OptionHeader::parse(&hdr);
        let option = proto::be32(&hdr[8..]);
        let len = proto::be32(&hdr[12..]) as usize;
        rest = &rest[OPTION_HEADER_LEN..];
        let take = len.min(rest.len());
        let payload = (len <= proto::MAX_OPTION_LEN as usize).then_some(&rest[..take]);
        rest = &rest[take..];
        out.clear();
        let step = neg.handle_option(option, payload, &Dir, &mut out);
        // Every reply produced is a well-formed option reply (or the export data).
        let mut o = &out[..];
        while o.len() >= 20 && proto::be64(o) == proto::OPT_REPLY_MAGIC {
            let l = proto::be32(&o[16..]) as usize;
            assert!(o.len() >= 20 + l);
            o = &o[20 + l..];
        }
        match step {
            Step::Continue => {}
            Step::StartTls => neg.tls_started(),
            Step::Close(_) | Step::Enter(_) => break,
        }
    }
});
