//! The client side of the handshake over any blocking byte stream: fixed newstyle
//! negotiation with `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_SET_META_CONTEXT` and
//! `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` when the server lacks GO), and
//! the listing of exports (`NBD_OPT_LIST`, `NBD_OPT_INFO`, `NBD_OPT_LIST_META_CONTEXT`)
//! that `oxemu-nbd --list` prints. Error texts follow QEMU's client.

use std::io::{self, Read, Write};

use crate::proto::{self, be16, be32, be64, info, opt, rep, tflag};

/// Largest option reply read into memory (replies are small; QEMU's bound on error
/// messages is larger, but nothing legitimate comes close to this).
pub const MAX_OPTION_REPLY: u32 = 64 << 10;

/// The old-style greeting magic (`cliserv_magic`), which this client does not speak.
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;

/// A handshake failure: the message and, as QEMU prints them, optional hint lines
/// (such as `server reported: ...`).
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct NegotiateError {
    /// The error message.
    pub msg: String,
    /// Further lines, each ending in a newline.
    pub hint: String,
    /// The errno that best describes the failure (for callers that need one).
    pub errno: i32,
}

impl NegotiateError {
    fn new(msg: impl Into<String>) -> Self {
        NegotiateError {
            msg: msg.into(),
            hint: String::new(),
            errno: libc::EINVAL,
        }
    }

    fn io(what: &str, e: io::Error) -> Self {
        let text = if e.kind() == io::ErrorKind::UnexpectedEof {
            "Unexpected end-of-file before all data were read".to_string()
        } else {
            crate::client::strerror(&e)
        };
        NegotiateError {
            msg: format!("{what}: {text}"),
            hint: String::new(),
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// The message followed by its hint lines.
    pub fn full(&self) -> String {
        if self.hint.is_empty() {
            self.msg.clone()
        } else {
            format!("{}\n{}", self.msg, self.hint.trim_end_matches('\n'))
        }
    }
}

type NResult<T> = Result<T, NegotiateError>;

/// What the handshake learnt about an export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportDetails {
    /// Export name.
    pub name: String,
    /// Description (`NBD_OPT_LIST` or `NBD_INFO_DESCRIPTION`), possibly empty.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`); 0 if the server sent none.
    pub flags: u16,
    /// Minimum block size (0 = not advertised).
    pub min_block: u32,
    /// Preferred block size.
    pub opt_block: u32,
    /// Maximum block size.
    pub max_block: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Negotiated (or, when listing, available) metadata contexts with their ids.
    pub contexts: Vec<(u32, String)>,
}

/// What to ask for in [`negotiate`].
#[derive(Clone, Debug, Default)]
pub struct NegotiateOptions {
    /// Export to select.
    pub export: String,
    /// Ask for structured replies.
    pub structured: bool,
    /// Metadata contexts to request (with structured replies only).
    pub contexts: Vec<String>,
}

struct OptReply {
    option: u32,
    ty: u32,
    data: Vec<u8>,
}

fn opt_name(o: u32) -> &'static str {
    match o {
        opt::EXPORT_NAME => "export name",
        opt::ABORT => "abort",
        opt::LIST => "list",
        opt::STARTTLS => "starttls",
        opt::INFO => "info",
        opt::GO => "go",
        opt::STRUCTURED_REPLY => "structured reply",
        opt::LIST_META_CONTEXT => "list meta context",
        opt::SET_META_CONTEXT => "set meta context",
        opt::EXTENDED_HEADERS => "extended headers",
        _ => "<unknown>",
    }
}

fn read_exact<S: Read>(s: &mut S, buf: &mut [u8], what: &str) -> NResult<()> {
    s.read_exact(buf).map_err(|e| NegotiateError::io(what, e))
}

fn send_option<S: Write>(s: &mut S, option: u32, data: &[u8]) -> NResult<()> {
    let mut b = proto::OptionHeader {
        option,
        len: data.len() as u32,
    }
    .encode()
    .to_vec();
    b.extend_from_slice(data);
    s.write_all(&b)
        .and_then(|_| s.flush())
        .map_err(|e| NegotiateError::io("Failed to send option request header", e))
}

fn read_reply<S: Read>(s: &mut S, option: u32) -> NResult<OptReply> {
    let mut h = [0u8; 20];
    read_exact(s, &mut h, "Failed to read option reply")?;
    if be64(&h) != proto::OPT_REPLY_MAGIC {
        return Err(NegotiateError::new("Unexpected option reply magic"));
    }
    let r_opt = be32(&h[8..]);
    let ty = be32(&h[12..]);
    let len = be32(&h[16..]);
    if r_opt != option {
        return Err(NegotiateError::new(format!(
            "Unexpected option type {r_opt} ({}), expected {option} ({})",
            opt_name(r_opt),
            opt_name(option)
        )));
    }
    if len > MAX_OPTION_REPLY {
        return Err(NegotiateError::new(format!(
            "Option {option} ('{}') response length is {len}, too long",
            opt_name(option)
        )));
    }
    let mut data = vec![0u8; len as usize];
    read_exact(s, &mut data, "Failed to read option reply data")?;
    Ok(OptReply {
        option: r_opt,
        ty,
        data,
    })
}

/// Turns an error reply into QEMU's message; `Ok(())` for `ERR_UNSUP` (the caller
/// falls back).
fn reply_error(r: &OptReply) -> NResult<()> {
    if r.ty & (1 << 31) == 0 {
        return Ok(());
    }
    if r.ty == rep::ERR_UNSUP {
        return Ok(());
    }
    let o = r.option;
    let n = opt_name(o);
    let (msg, errno) = match r.ty {
        rep::ERR_POLICY => (
            format!("Denied by server for option {o} ({n})"),
            libc::EPERM,
        ),
        rep::ERR_INVALID => (
            format!("Invalid parameters for option {o} ({n})"),
            libc::EINVAL,
        ),
        rep::ERR_PLATFORM => (
            format!("Server lacks support for option {o} ({n})"),
            libc::ENOTSUP,
        ),
        rep::ERR_TLS_REQD => (
            format!("TLS negotiation required before option {o} ({n})"),
            libc::EPERM,
        ),
        rep::ERR_UNKNOWN => ("Requested export not available".to_string(), libc::ENOENT),
        rep::ERR_SHUTDOWN => (
            format!("Server shutting down before option {o} ({n})"),
            libc::ESHUTDOWN,
        ),
        rep::ERR_BLOCK_SIZE_REQD => (
            format!("Server requires INFO_BLOCK_SIZE for option {o} ({n})"),
            libc::EINVAL,
        ),
        _ => (
            format!("Unknown error code when asking for option {o} ({n})"),
            libc::EINVAL,
        ),
    };
    let mut hint = String::new();
    if r.ty == rep::ERR_TLS_REQD {
        hint.push_str("Did you forget a valid tls-creds?\n");
    }
    if !r.data.is_empty() {
        hint.push_str(&format!(
            "server reported: {}\n",
            String::from_utf8_lossy(&r.data)
        ));
    }
    Err(NegotiateError { msg, hint, errno })
}

/// Reads the greeting and sends the client flags; returns whether the server
/// omits the 124 zero bytes after `EXPORT_NAME` and whether it is fixed newstyle.
fn greet<S: Read + Write>(s: &mut S) -> NResult<(bool, bool)> {
    let mut b = [0u8; 8];
    read_exact(s, &mut b, "Failed to read initial magic")?;
    let magic = u64::from_be_bytes(b);
    if magic != proto::NBDMAGIC {
        return Err(NegotiateError::new(format!(
            "Bad initial magic received: {magic:#x}"
        )));
    }
    read_exact(s, &mut b, "Failed to read server magic")?;
    let magic = u64::from_be_bytes(b);
    if magic == OLDSTYLE_MAGIC {
        return Err(NegotiateError::new(
            "Server uses the old-style handshake, which is not supported",
        ));
    }
    if magic != proto::IHAVEOPT {
        return Err(NegotiateError::new(format!(
            "Bad server magic received: {magic:#x}"
        )));
    }
    let mut f = [0u8; 2];
    read_exact(s, &mut f, "Failed to read server flags")?;
    let flags = u16::from_be_bytes(f);
    let fixed = flags & proto::FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = flags & proto::FLAG_NO_ZEROES != 0;
    let mut cf = 0u32;
    if fixed {
        cf |= proto::FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        cf |= proto::FLAG_C_NO_ZEROES;
    }
    s.write_all(&cf.to_be_bytes())
        .map_err(|e| NegotiateError::io("Failed to send clientflags field", e))?;
    Ok((no_zeroes, fixed))
}

/// Sends `option` expecting just ACK (or ERR_UNSUP → false).
fn simple_option<S: Read + Write>(s: &mut S, option: u32) -> NResult<bool> {
    send_option(s, option, &[])?;
    let r = read_reply(s, option)?;
    reply_error(&r)?;
    if r.ty == rep::ERR_UNSUP {
        return Ok(false);
    }
    if r.ty != rep::ACK {
        return Err(NegotiateError::new(format!(
            "Server answered option {option} ({}) with unexpected reply type {}",
            opt_name(option),
            r.ty
        )));
    }
    Ok(true)
}

fn meta_query(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Sends a meta-context option and collects the `(id, name)` replies until ACK.
/// None when the server does not support the option.
fn meta_contexts<S: Read + Write>(
    s: &mut S,
    option: u32,
    name: &str,
    queries: &[&str],
) -> NResult<Option<Vec<(u32, String)>>> {
    send_option(s, option, &meta_query(name, queries))?;
    let mut out = Vec::new();
    loop {
        let r = read_reply(s, option)?;
        reply_error(&r)?;
        match r.ty {
            rep::ERR_UNSUP => return Ok(None),
            rep::ACK => {
                if !r.data.is_empty() {
                    return Err(NegotiateError::new("Unexpected length to ACK response"));
                }
                return Ok(Some(out));
            }
            rep::META_CONTEXT if r.data.len() > 4 && r.data.len() <= 4 + proto::MAX_STRING => {
                let id = be32(&r.data);
                out.push((id, String::from_utf8_lossy(&r.data[4..]).into_owned()));
                if out.len() > 1024 {
                    return Err(NegotiateError::new("Server sent too many meta contexts"));
                }
            }
            t => {
                return Err(NegotiateError::new(format!(
                    "Unexpected reply type {t}, expected {} (meta context)",
                    rep::META_CONTEXT
                )))
            }
        }
    }
}

/// `NBD_OPT_INFO` or `NBD_OPT_GO` for `d.name`, asking for block sizes. Fills `d`;
/// false when the server lacks the option.
fn info_or_go<S: Read + Write>(s: &mut S, option: u32, d: &mut ExportDetails) -> NResult<bool> {
    let mut data = Vec::new();
    data.extend_from_slice(&(d.name.len() as u32).to_be_bytes());
    data.extend_from_slice(d.name.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    send_option(s, option, &data)?;
    d.flags = 0;
    loop {
        let r = read_reply(s, option)?;
        reply_error(&r)?;
        match r.ty {
            rep::ERR_UNSUP => return Ok(false),
            rep::ACK => {
                if !r.data.is_empty() {
                    return Err(NegotiateError::new("server sent invalid NBD_REP_ACK"));
                }
                if d.flags == 0 {
                    return Err(NegotiateError::new("broken server omitted NBD_INFO_EXPORT"));
                }
                return Ok(true);
            }
            rep::INFO => {
                if r.data.len() < 2 {
                    return Err(NegotiateError::new(format!(
                        "NBD_REP_INFO length {} is too short",
                        r.data.len()
                    )));
                }
                let b = &r.data[2..];
                match be16(&r.data) {
                    info::EXPORT => {
                        if b.len() != 10 {
                            return Err(NegotiateError::new(format!(
                                "remaining export info len {} is unexpected size",
                                b.len()
                            )));
                        }
                        d.size = be64(b);
                        d.flags = be16(&b[8..]);
                        if d.flags & tflag::HAS_FLAGS == 0 {
                            d.flags |= tflag::HAS_FLAGS;
                        }
                    }
                    info::BLOCK_SIZE => {
                        if b.len() != 12 {
                            return Err(NegotiateError::new(format!(
                                "remaining export info len {} is unexpected size",
                                b.len()
                            )));
                        }
                        let (min, pref, max) = (be32(b), be32(&b[4..]), be32(&b[8..]));
                        if !min.is_power_of_two() || min > 1 << 16 {
                            return Err(NegotiateError::new(format!(
                                "server minimum block size {min} is not a power of two"
                            )));
                        }
                        if !pref.is_power_of_two() || pref < min {
                            return Err(NegotiateError::new(format!(
                                "server preferred block size {pref} is not valid"
                            )));
                        }
                        if max < pref || max % min != 0 {
                            return Err(NegotiateError::new(format!(
                                "server maximum block size {max} is not valid"
                            )));
                        }
                        d.min_block = min;
                        d.opt_block = pref;
                        d.max_block = max;
                    }
                    info::DESCRIPTION => {
                        d.description = String::from_utf8_lossy(b).into_owned();
                    }
                    // NAME and unknown information types are ignored, as QEMU does.
                    _ => {}
                }
            }
            t => {
                return Err(NegotiateError::new(format!(
                    "unexpected reply type {t}, expected {}",
                    rep::INFO
                )))
            }
        }
    }
}

/// Negotiates with a fixed-newstyle server until transmission starts, as QEMU's
/// client does: structured replies, meta contexts, then GO (or EXPORT_NAME).
pub fn negotiate<S: Read + Write>(s: &mut S, o: &NegotiateOptions) -> NResult<ExportDetails> {
    if o.export.len() > proto::MAX_STRING {
        return Err(NegotiateError::new(
            "export name too long to send to server",
        ));
    }
    let (no_zeroes, fixed) = greet(s)?;
    let r = negotiate_options(s, o, no_zeroes, fixed);
    if r.is_err() && fixed {
        // As QEMU: a courtesy NBD_OPT_ABORT before hanging up.
        let _ = send_option(s, opt::ABORT, &[]);
    }
    r
}

fn negotiate_options<S: Read + Write>(
    s: &mut S,
    o: &NegotiateOptions,
    no_zeroes: bool,
    fixed: bool,
) -> NResult<ExportDetails> {
    let mut d = ExportDetails {
        name: o.export.clone(),
        ..Default::default()
    };
    if fixed {
        if o.structured {
            d.structured = simple_option(s, opt::STRUCTURED_REPLY)?;
        }
        if d.structured && !o.contexts.is_empty() {
            let q: Vec<&str> = o.contexts.iter().map(|c| c.as_str()).collect();
            if let Some(c) = meta_contexts(s, opt::SET_META_CONTEXT, &o.export, &q)? {
                // Keep only answers to what was asked.
                d.contexts = c
                    .into_iter()
                    .filter(|(_, n)| o.contexts.contains(n))
                    .collect();
            }
        }
        if info_or_go(s, opt::GO, &mut d)? {
            return Ok(d);
        }
    }
    // The server lacks NBD_OPT_GO: NBD_OPT_EXPORT_NAME, whose failure is a hang-up.
    d.contexts.clear();
    let mut b = proto::OptionHeader {
        option: opt::EXPORT_NAME,
        len: o.export.len() as u32,
    }
    .encode()
    .to_vec();
    b.extend_from_slice(o.export.as_bytes());
    s.write_all(&b)
        .and_then(|_| s.flush())
        .map_err(|e| NegotiateError::io("Failed to send export name", e))?;
    let mut sf = [0u8; 10];
    read_exact(s, &mut sf, "Failed to read export length")?;
    d.size = be64(&sf);
    d.flags = be16(&sf[8..]) | tflag::HAS_FLAGS;
    if !no_zeroes {
        let mut z = [0u8; 124];
        read_exact(s, &mut z, "Failed to read reserved block")?;
    }
    Ok(d)
}

/// Lists a server's exports with their details and available metadata contexts,
/// as `qemu-nbd --list` does (including its workaround for servers that answer an
/// empty query without `qemu:` contexts). Ends the session with `NBD_OPT_ABORT`.
pub fn list_exports<S: Read + Write>(s: &mut S) -> NResult<Vec<ExportDetails>> {
    let (_, fixed) = greet(s)?;
    if !fixed {
        return Err(NegotiateError::new("Server does not support export lists"));
    }
    let r = list_options(s);
    if r.is_err() {
        let _ = send_option(s, opt::ABORT, &[]);
    }
    r
}

fn list_options<S: Read + Write>(s: &mut S) -> NResult<Vec<ExportDetails>> {
    let structured = simple_option(s, opt::STRUCTURED_REPLY)?;
    send_option(s, opt::LIST, &[])?;
    let mut list = Vec::new();
    loop {
        let r = read_reply(s, opt::LIST)?;
        reply_error(&r)?;
        match r.ty {
            rep::ERR_UNSUP => {
                return Err(NegotiateError::new("Server does not support export lists"))
            }
            rep::ACK => break,
            rep::SERVER => {
                if r.data.len() < 4 {
                    return Err(NegotiateError::new(format!(
                        "incorrect option length {}",
                        r.data.len()
                    )));
                }
                let n = be32(&r.data) as usize;
                if n > r.data.len() - 4 || n > proto::MAX_STRING {
                    return Err(NegotiateError::new(
                        "incorrect name length in server's list response",
                    ));
                }
                list.push(ExportDetails {
                    name: String::from_utf8_lossy(&r.data[4..4 + n]).into_owned(),
                    description: String::from_utf8_lossy(&r.data[4 + n..]).into_owned(),
                    structured,
                    ..Default::default()
                });
                if list.len() > 65536 {
                    return Err(NegotiateError::new("Server lists too many exports"));
                }
            }
            t => {
                return Err(NegotiateError::new(format!(
                    "Unexpected reply type {t}, expected {}",
                    rep::SERVER
                )))
            }
        }
    }
    for d in list.iter_mut() {
        if !info_or_go(s, opt::INFO, d)? {
            break;
        }
        if structured {
            let mut all =
                meta_contexts(s, opt::LIST_META_CONTEXT, &d.name.clone(), &[])?.unwrap_or_default();
            if !all.is_empty() && !all.iter().any(|(_, n)| n.starts_with("qemu:")) {
                all.extend(
                    meta_contexts(s, opt::LIST_META_CONTEXT, &d.name.clone(), &["qemu:"])?
                        .unwrap_or_default(),
                );
            }
            d.contexts = all;
        }
    }
    let _ = send_option(s, opt::ABORT, &[]);
    Ok(list)
}

/// `qemu-nbd --list`'s text for `list`.
pub fn format_list(list: &[ExportDetails]) -> String {
    const NAMES: [(u16, &str); 11] = [
        (1 << 1, "readonly"),
        (1 << 2, "flush"),
        (1 << 3, "fua"),
        (1 << 4, "rotational"),
        (1 << 5, "trim"),
        (1 << 6, "zeroes"),
        (1 << 7, "df"),
        (1 << 8, "multi"),
        (1 << 9, "resize"),
        (1 << 10, "cache"),
        (1 << 11, "fast-zero"),
    ];
    let mut s = format!("exports available: {}\n", list.len());
    for d in list {
        s += &format!(" export: '{}'\n", d.name);
        if !d.description.is_empty() {
            s += &format!("  description: {}\n", d.description);
        }
        if d.flags & tflag::HAS_FLAGS != 0 {
            s += &format!("  size:  {}\n", d.size);
            s += &format!("  flags: {:#x} (", d.flags);
            for (bit, n) in NAMES {
                if d.flags & bit != 0 {
                    s += &format!(" {n}");
                }
            }
            s += " )\n";
        }
        if d.min_block != 0 {
            s += &format!("  min block: {}\n", d.min_block);
            s += &format!("  opt block: {}\n", d.opt_block);
            s += &format!("  max block: {}\n", d.max_block);
        }
        if !d.contexts.is_empty() {
            s += &format!("  available meta contexts: {}\n", d.contexts.len());
            for (_, c) in &d.contexts {
                s += &format!("   {c}\n");
            }
        }
    }
    s
}
