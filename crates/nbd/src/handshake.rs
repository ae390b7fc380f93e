//! Option haggling of the fixed newstyle handshake as a sans-IO state machine: the
//! caller reads one option (header and data), hands it to
//! [`Negotiation::handle_option`], writes out the reply bytes it produced and acts on
//! the returned [`Step`].

use crate::proto::{self, be16, be32, info, opt, rep, tflag, ReplyMode, MAX_STRING};

/// What the handshake needs to know about one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name clients select.
    pub name: String,
    /// Human-readable description (may be empty).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes are allowed.
    pub writable: bool,
    /// The `qemu:allocation-depth` context is offered.
    pub allocation_depth: bool,
    /// Minimum block size (request alignment), a power of two.
    pub min_block: u32,
}

/// The exports a server offers, as seen by the handshake.
pub trait ExportDirectory {
    /// The export called `name`, if any.
    fn lookup(&self, name: &str) -> Option<ExportInfo>;
    /// `(name, description)` of every export, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<(String, String)>;
}

/// Metadata contexts selected with `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaContexts {
    /// `base:allocation` is selected.
    pub base_allocation: bool,
    /// `qemu:allocation-depth` is selected.
    pub allocation_depth: bool,
}

impl MetaContexts {
    /// True when no context is selected (BLOCK_STATUS is then refused).
    pub fn is_empty(&self) -> bool {
        !self.base_allocation && !self.allocation_depth
    }
}

/// Context id of `base:allocation`.
pub const CONTEXT_BASE_ALLOCATION: u32 = 1;
/// Context id of `qemu:allocation-depth`.
pub const CONTEXT_ALLOCATION_DEPTH: u32 = 2;

const BASE_ALLOCATION: &str = "base:allocation";
const ALLOCATION_DEPTH: &str = "qemu:allocation-depth";

/// The state a connection enters transmission with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The selected export.
    pub export: ExportInfo,
    /// Reply framing.
    pub mode: ReplyMode,
    /// Selected metadata contexts.
    pub contexts: MetaContexts,
    /// Transmission flags sent to the client.
    pub flags: u16,
}

/// What the caller must do after an option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the next option.
    Continue,
    /// Send the replies, then run the TLS handshake and continue with options.
    StartTls,
    /// Send the replies (if any), then close the connection.
    Close(String),
    /// Send the replies, then enter transmission.
    Enter(Session),
}

/// Option-haggling state of one connection.
#[derive(Debug)]
pub struct Negotiation {
    tls_offered: bool,
    tls_active: bool,
    fixed: bool,
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    meta: Option<(String, MetaContexts)>,
}

impl Negotiation {
    /// A negotiation after the client flags were received. With `tls_offered` the
    /// server requires TLS before anything but `STARTTLS` and `ABORT`.
    pub fn new(client_flags: u32, tls_offered: bool) -> Self {
        Negotiation {
            tls_offered,
            tls_active: false,
            fixed: client_flags & proto::FLAG_C_FIXED_NEWSTYLE != 0,
            no_zeroes: client_flags & proto::FLAG_C_NO_ZEROES != 0,
            structured: false,
            extended: false,
            meta: None,
        }
    }

    /// Records that the TLS handshake completed; per the spec all earlier
    /// negotiation state is forgotten.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.structured = false;
        self.extended = false;
        self.meta = None;
    }

    /// Handles one option. `data` is `None` when the option was longer than
    /// [`proto::MAX_OPTION_LEN`] and its payload was discarded. Replies are appended to
    /// `out`.
    pub fn handle_option(
        &mut self,
        option: u32,
        data: Option<&[u8]>,
        dir: &dyn ExportDirectory,
        out: &mut Vec<u8>,
    ) -> Step {
        let reply = |out: &mut Vec<u8>, ty: u32, msg: &str| {
            proto::put_option_reply(out, option, ty, msg.as_bytes())
        };
        if self.tls_offered && !self.tls_active {
            match option {
                opt::STARTTLS | opt::ABORT => {}
                opt::EXPORT_NAME => return Step::Close("export name before TLS".into()),
                _ => {
                    reply(out, rep::ERR_TLS_REQD, "Option not permitted before TLS");
                    return Step::Continue;
                }
            }
        }
        if !self.fixed && option != opt::EXPORT_NAME {
            return Step::Close(format!("option {option} from a non-fixed-newstyle client"));
        }
        let Some(data) = data else {
            if option == opt::EXPORT_NAME {
                return Step::Close("export name too long".into());
            }
            reply(out, rep::ERR_TOO_BIG, "option too long");
            return Step::Continue;
        };
        let empty_or_invalid = |out: &mut Vec<u8>| {
            if !data.is_empty() {
                reply(out, rep::ERR_INVALID, "option takes no data");
                true
            } else {
                false
            }
        };
        match option {
            opt::EXPORT_NAME => self.export_name(data, dir, out),
            opt::ABORT => {
                reply(out, rep::ACK, "");
                Step::Close("client aborted".into())
            }
            opt::LIST => {
                if !empty_or_invalid(out) {
                    for (name, desc) in dir.list() {
                        let mut d = Vec::new();
                        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        d.extend_from_slice(name.as_bytes());
                        d.extend_from_slice(desc.as_bytes());
                        proto::put_option_reply(out, option, rep::SERVER, &d);
                    }
                    reply(out, rep::ACK, "");
                }
                Step::Continue
            }
            opt::STARTTLS => {
                if empty_or_invalid(out) {
                    Step::Continue
                } else if !self.tls_offered {
                    reply(out, rep::ERR_POLICY, "TLS not configured");
                    Step::Continue
                } else if self.tls_active {
                    reply(out, rep::ERR_INVALID, "TLS already active");
                    Step::Continue
                } else {
                    reply(out, rep::ACK, "");
                    Step::StartTls
                }
            }
            opt::INFO | opt::GO => self.info_or_go(option, data, dir, out),
            opt::STRUCTURED_REPLY => {
                if !empty_or_invalid(out) {
                    if self.structured {
                        reply(out, rep::ERR_INVALID, "structured reply already negotiated");
                    } else {
                        self.structured = true;
                        reply(out, rep::ACK, "");
                    }
                }
                Step::Continue
            }
            opt::EXTENDED_HEADERS => {
                if !empty_or_invalid(out) {
                    if self.extended {
                        reply(out, rep::ERR_INVALID, "extended headers already negotiated");
                    } else {
                        self.extended = true;
                        self.structured = true;
                        reply(out, rep::ACK, "");
                    }
                }
                Step::Continue
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(option, data, dir, out);
                Step::Continue
            }
            _ => {
                reply(out, rep::ERR_UNSUP, "Unsupported option");
                Step::Continue
            }
        }
    }

    fn mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    fn session(&self, export: ExportInfo) -> Session {
        let contexts = match &self.meta {
            Some((name, m)) if *name == export.name => *m,
            _ => MetaContexts::default(),
        };
        let mode = self.mode();
        Session {
            flags: transmission_flags(&export, mode),
            export,
            mode,
            contexts,
        }
    }

    fn export_name(&mut self, data: &[u8], dir: &dyn ExportDirectory, out: &mut Vec<u8>) -> Step {
        let Ok(name) = std::str::from_utf8(data) else {
            return Step::Close("export name is not UTF-8".into());
        };
        let Some(export) = dir.lookup(name) else {
            return Step::Close(format!("export '{name}' not found"));
        };
        let s = self.session(export);
        out.extend_from_slice(&s.export.size.to_be_bytes());
        out.extend_from_slice(&s.flags.to_be_bytes());
        if !self.no_zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
        Step::Enter(s)
    }

    fn info_or_go(
        &mut self,
        option: u32,
        data: &[u8],
        dir: &dyn ExportDirectory,
        out: &mut Vec<u8>,
    ) -> Step {
        let reply =
            |out: &mut Vec<u8>, ty: u32, d: &[u8]| proto::put_option_reply(out, option, ty, d);
        let Some((name, requests)) = parse_info_request(data) else {
            reply(out, rep::ERR_INVALID, b"malformed INFO/GO request");
            return Step::Continue;
        };
        let Some(export) = dir.lookup(&name) else {
            let msg = format!("export '{name}' not present");
            reply(out, rep::ERR_UNKNOWN, msg.as_bytes());
            return Step::Continue;
        };
        let s = self.session(export);
        let mut d = Vec::with_capacity(12);
        d.extend_from_slice(&info::EXPORT.to_be_bytes());
        d.extend_from_slice(&s.export.size.to_be_bytes());
        d.extend_from_slice(&s.flags.to_be_bytes());
        reply(out, rep::INFO, &d);
        if requests.contains(&info::NAME) {
            let mut d = info::NAME.to_be_bytes().to_vec();
            d.extend_from_slice(s.export.name.as_bytes());
            reply(out, rep::INFO, &d);
        }
        if requests.contains(&info::DESCRIPTION) && !s.export.description.is_empty() {
            let mut d = info::DESCRIPTION.to_be_bytes().to_vec();
            d.extend_from_slice(s.export.description.as_bytes());
            reply(out, rep::INFO, &d);
        }
        let mut d = info::BLOCK_SIZE.to_be_bytes().to_vec();
        let min = s.export.min_block.max(1);
        d.extend_from_slice(&min.to_be_bytes());
        d.extend_from_slice(&min.max(4096).to_be_bytes());
        d.extend_from_slice(&proto::MAX_PAYLOAD.to_be_bytes());
        reply(out, rep::INFO, &d);
        reply(out, rep::ACK, b"");
        if option == opt::GO {
            Step::Enter(s)
        } else {
            Step::Continue
        }
    }

    fn meta_context(
        &mut self,
        option: u32,
        data: &[u8],
        dir: &dyn ExportDirectory,
        out: &mut Vec<u8>,
    ) {
        let reply =
            |out: &mut Vec<u8>, ty: u32, d: &[u8]| proto::put_option_reply(out, option, ty, d);
        if !self.structured {
            reply(out, rep::ERR_INVALID, b"structured replies not negotiated");
            return;
        }
        let Some((name, queries)) = parse_meta_request(data) else {
            reply(out, rep::ERR_INVALID, b"malformed meta context request");
            return;
        };
        let Some(export) = dir.lookup(&name) else {
            let msg = format!("export '{name}' not present");
            reply(out, rep::ERR_UNKNOWN, msg.as_bytes());
            return;
        };
        let list = option == opt::LIST_META_CONTEXT;
        let mut available = vec![(BASE_ALLOCATION, CONTEXT_BASE_ALLOCATION)];
        if export.allocation_depth {
            available.push((ALLOCATION_DEPTH, CONTEXT_ALLOCATION_DEPTH));
        }
        let mut chosen = MetaContexts::default();
        for (ctx, id) in available {
            let matches = if queries.is_empty() {
                list
            } else {
                queries.iter().any(|q| {
                    q == ctx
                        || (list && ctx.split_once(':').map(|(ns, _)| ns) == q.strip_suffix(':'))
                })
            };
            if !matches {
                continue;
            }
            let mut d = (if list { 0 } else { id }).to_be_bytes().to_vec();
            d.extend_from_slice(ctx.as_bytes());
            reply(out, rep::META_CONTEXT, &d);
            match id {
                CONTEXT_BASE_ALLOCATION => chosen.base_allocation = true,
                _ => chosen.allocation_depth = true,
            }
        }
        if !list {
            self.meta = Some((export.name, chosen));
        }
        reply(out, rep::ACK, b"");
    }
}

/// Transmission flags for `export` on a connection using `mode`.
pub fn transmission_flags(export: &ExportInfo, mode: ReplyMode) -> u16 {
    let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_CACHE;
    f |= tflag::CAN_MULTI_CONN;
    if export.writable {
        f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES | tflag::SEND_FAST_ZERO;
    } else {
        f |= tflag::READ_ONLY;
    }
    if mode != ReplyMode::Simple {
        f |= tflag::SEND_DF;
    }
    if mode == ReplyMode::Extended {
        f |= tflag::SEND_BLOCK_STATUS_PAYLOAD;
    }
    f
}

/// Reads a length-prefixed string at `*pos`, advancing it.
fn take_string(data: &[u8], pos: &mut usize) -> Option<String> {
    let len = be32(data.get(*pos..*pos + 4)?) as usize;
    *pos += 4;
    if len > MAX_STRING {
        return None;
    }
    let s = data.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    String::from_utf8(s.to_vec()).ok()
}

/// Parses `NBD_OPT_INFO`/`GO` data: export name and the list of requested info
/// types. `None` when malformed.
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut pos = 0;
    let name = take_string(data, &mut pos)?;
    let n = be16(data.get(pos..pos + 2)?) as usize;
    pos += 2;
    let rest = data.get(pos..)?;
    if rest.len() != 2 * n {
        return None;
    }
    Some((name, rest.chunks_exact(2).map(be16).collect()))
}

/// Parses `NBD_OPT_LIST/SET_META_CONTEXT` data: export name and queries.
pub fn parse_meta_request(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut pos = 0;
    let name = take_string(data, &mut pos)?;
    let n = be32(data.get(pos..pos + 4)?) as usize;
    pos += 4;
    // Each query takes at least four bytes: bound the count before allocating.
    if n > (data.len() - pos) / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(take_string(data, &mut pos)?);
    }
    (pos == data.len()).then_some((name, queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(ExportInfo);
    impl ExportDirectory for One {
        fn lookup(&self, name: &str) -> Option<ExportInfo> {
            (name == self.0.name).then(|| self.0.clone())
        }
        fn list(&self) -> Vec<(String, String)> {
            vec![(self.0.name.clone(), self.0.description.clone())]
        }
    }

    fn dir() -> One {
        One(ExportInfo {
            name: "disk".into(),
            description: "d".into(),
            size: 1 << 20,
            writable: false,
            allocation_depth: true,
            min_block: 1,
        })
    }

    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    #[test]
    fn plain_client_is_refused_with_tls_reqd_when_tls_is_required() {
        let mut n = Negotiation::new(3, true);
        let mut out = Vec::new();
        assert_eq!(
            n.handle_option(opt::LIST, Some(&[]), &dir(), &mut out),
            Step::Continue
        );
        assert_eq!(be32(&out[12..]), rep::ERR_TLS_REQD);
    }

    #[test]
    fn meta_context_before_structured_reply_is_invalid() {
        let mut n = Negotiation::new(3, false);
        let mut out = Vec::new();
        let d = meta_data("disk", &["base:allocation"]);
        n.handle_option(opt::SET_META_CONTEXT, Some(&d), &dir(), &mut out);
        assert_eq!(be32(&out[12..]), rep::ERR_INVALID);
    }

    #[test]
    fn set_meta_context_selects_both_contexts_for_go() {
        let mut n = Negotiation::new(3, false);
        let mut out = Vec::new();
        n.handle_option(opt::STRUCTURED_REPLY, Some(&[]), &dir(), &mut out);
        let d = meta_data("disk", &["base:allocation", "qemu:allocation-depth"]);
        n.handle_option(opt::SET_META_CONTEXT, Some(&d), &dir(), &mut out);
        let mut go = 4u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"disk\0\0");
        let Step::Enter(s) = n.handle_option(opt::GO, Some(&go), &dir(), &mut out) else {
            panic!("GO did not enter transmission");
        };
        assert!(s.contexts.base_allocation && s.contexts.allocation_depth);
        assert_eq!(s.mode, ReplyMode::Structured);
        assert_ne!(s.flags & tflag::READ_ONLY, 0);
    }

    #[test]
    fn malformed_info_request_is_invalid_not_a_panic() {
        for d in [
            &b""[..],
            b"\0\0\0\x05ab",
            b"\xff\xff\xff\xff",
            b"\0\0\0\0\0\x02\0",
        ] {
            assert!(parse_info_request(d).is_none());
        }
        assert!(parse_meta_request(b"\0\0\0\0\xff\xff\xff\xff").is_none());
    }
}
