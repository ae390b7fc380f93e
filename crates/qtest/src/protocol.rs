//! Parsing qtest command lines.
//!
//! A line is split on single spaces, as QEMU's `g_strsplit(cmd, " ", 0)` does (so
//! two spaces make an empty word). Numbers use C's `strtoull(…, 0)` syntax: decimal,
//! `0x` hexadecimal or `0` octal, and a leading `-` negates modulo 2^64.
//!
//! Where QEMU asserts (and aborts) on a malformed line, [`parse`] returns an error
//! text that the server sends back as `FAIL <text>`.

/// Largest length `read`, `b64read`, `write`, `b64write` and `memset` accept, so
/// that no request can make the server allocate without bound.
pub const MAX_TRANSFER: u64 = 16 << 20;

/// Longest command line accepted, in bytes (a `write` of [`MAX_TRANSFER`] bytes
/// in hex plus room for the command and addresses).
pub const MAX_LINE: usize = 2 * MAX_TRANSFER as usize + 256;

/// Access width of a sized command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 1 byte.
    B,
    /// 2 bytes.
    W,
    /// 4 bytes.
    L,
    /// 8 bytes.
    Q,
}

impl Width {
    /// Bytes.
    pub fn bytes(self) -> usize {
        match self {
            Width::B => 1,
            Width::W => 2,
            Width::L => 4,
            Width::Q => 8,
        }
    }
    fn from_suffix(c: u8) -> Option<Width> {
        Some(match c {
            b'b' => Width::B,
            b'w' => Width::W,
            b'l' => Width::L,
            b'q' => Width::Q,
            _ => return None,
        })
    }
}

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `outb|outw|outl PORT VALUE`
    Out(Width, u64, u64),
    /// `inb|inw|inl PORT`
    In(Width, u64),
    /// `writeb|w|l|q ADDR VALUE`
    Write(Width, u64, u64),
    /// `readb|w|l|q ADDR`
    Read(Width, u64),
    /// `read ADDR SIZE`
    ReadBuf(u64, u64),
    /// `b64read ADDR SIZE`
    B64Read(u64, u64),
    /// `write ADDR SIZE 0xDATA`: the bytes, zero-padded to SIZE.
    WriteBuf(u64, Vec<u8>),
    /// `b64write ADDR SIZE DATA`: the decoded bytes (at most SIZE of them).
    B64Write(u64, Vec<u8>),
    /// `memset ADDR SIZE VALUE`
    Memset(u64, u64, u8),
    /// `clock_step [NS]`
    ClockStep(Option<i64>),
    /// `clock_set NS`
    ClockSet(i64),
    /// `irq_intercept_in PATH` (false) or `irq_intercept_out PATH` (true)
    IrqIntercept(bool, String),
    /// `set_irq_in PATH NAME NUM LEVEL`; NAME `unnamed-gpio-in` is `None`.
    SetIrqIn(String, Option<String>, i32, i32),
    /// `endianness`
    Endianness,
    /// `module_load PREFIX NAME`: oxemu has no modules.
    ModuleLoad,
    /// Anything else (QEMU: `FAIL Unknown command '…'`).
    Unknown(String),
}

/// Parses a number as `qemu_strtou64(s, NULL, 0, …)` does.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.is_empty() {
            return None;
        }
        u64::from_str_radix(h, 16).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()?
    } else {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Parses a signed number as `qemu_strtoi64(s, NULL, 0, …)` does.
pub fn parse_i64(s: &str) -> Option<i64> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, s),
    };
    let v = parse_u64(t)? as i128;
    let v = if neg { -v } else { v };
    i64::try_from(v).ok()
}

fn arg<'a>(w: &[&'a str], i: usize, cmd: &str, what: &str) -> Result<&'a str, String> {
    w.get(i)
        .copied()
        .ok_or_else(|| format!("{cmd}: missing {what}"))
}

fn num(w: &[&str], i: usize, cmd: &str, what: &str) -> Result<u64, String> {
    let s = arg(w, i, cmd, what)?;
    parse_u64(s).ok_or_else(|| format!("{cmd}: invalid {what} '{s}'"))
}

fn len(w: &[&str], i: usize, cmd: &str) -> Result<u64, String> {
    let n = num(w, i, cmd, "size")?;
    if n > MAX_TRANSFER {
        return Err(format!(
            "{cmd}: size 0x{n:x} exceeds the limit of 0x{MAX_TRANSFER:x} bytes"
        ));
    }
    Ok(n)
}

fn extra(w: &[&str], n: usize, cmd: &str) -> Result<(), String> {
    match w.get(n) {
        Some(x) => Err(format!("{cmd}: unexpected argument '{x}'")),
        None => Ok(()),
    }
}

fn hex_nibble(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Parses one line (without its `\n`; a trailing `\r` is kept as part of the
/// last word, as QEMU keeps it).
pub fn parse(line: &str) -> Result<Command, String> {
    let w: Vec<&str> = line.split(' ').collect();
    let cmd = w[0];
    let c = cmd.as_bytes();
    let width = |pre: usize, allow_q: bool| -> Option<Width> {
        if c.len() != pre + 1 {
            return None;
        }
        Width::from_suffix(c[pre]).filter(|w| allow_q || *w != Width::Q)
    };
    let r = match cmd {
        _ if cmd.starts_with("out") && width(3, false).is_some() => {
            let port = num(&w, 1, cmd, "port")?;
            let v = num(&w, 2, cmd, "value")?;
            extra(&w, 3, cmd)?;
            if port > 0xffff {
                return Err(format!("{cmd}: port 0x{port:x} is above 0xffff"));
            }
            Command::Out(width(3, false).unwrap_or(Width::B), port, v)
        }
        _ if cmd.starts_with("in") && width(2, false).is_some() => {
            let port = num(&w, 1, cmd, "port")?;
            extra(&w, 2, cmd)?;
            if port > 0xffff {
                return Err(format!("{cmd}: port 0x{port:x} is above 0xffff"));
            }
            Command::In(width(2, false).unwrap_or(Width::B), port)
        }
        _ if cmd.starts_with("write") && width(5, true).is_some() => {
            let a = num(&w, 1, cmd, "address")?;
            let v = num(&w, 2, cmd, "value")?;
            extra(&w, 3, cmd)?;
            Command::Write(width(5, true).unwrap_or(Width::B), a, v)
        }
        _ if cmd.starts_with("read") && width(4, true).is_some() => {
            let a = num(&w, 1, cmd, "address")?;
            extra(&w, 2, cmd)?;
            Command::Read(width(4, true).unwrap_or(Width::B), a)
        }
        "read" | "b64read" => {
            let a = num(&w, 1, cmd, "address")?;
            let n = len(&w, 2, cmd)?;
            extra(&w, 3, cmd)?;
            if n == 0 && cmd == "read" {
                return Err("read: size must not be 0".into());
            }
            if cmd == "read" {
                Command::ReadBuf(a, n)
            } else {
                Command::B64Read(a, n)
            }
        }
        "write" => {
            let a = num(&w, 1, cmd, "address")?;
            let n = len(&w, 2, cmd)? as usize;
            let d = arg(&w, 3, cmd, "data")?;
            extra(&w, 4, cmd)?;
            let hex = d
                .strip_prefix("0x")
                .ok_or_else(|| "write: data must start with 0x".to_string())?;
            let hb = hex.as_bytes();
            let mut data = vec![0u8; n];
            for (i, b) in data.iter_mut().enumerate() {
                if i * 2 + 2 > hb.len() {
                    break;
                }
                let hi = hex_nibble(hb[i * 2]);
                let lo = hex_nibble(hb[i * 2 + 1]);
                match (hi, lo) {
                    (Some(h), Some(l)) => *b = h << 4 | l,
                    _ => return Err(format!("write: invalid hex digit in data at byte {i}")),
                }
            }
            Command::WriteBuf(a, data)
        }
        "b64write" => {
            let a = num(&w, 1, cmd, "address")?;
            let n = len(&w, 2, cmd)? as usize;
            let d = arg(&w, 3, cmd, "data")?;
            extra(&w, 4, cmd)?;
            let mut data = crate::b64::decode(d)
                .map_err(|i| format!("b64write: invalid base64 character at offset {i}"))?;
            data.truncate(n);
            Command::B64Write(a, data)
        }
        "memset" => {
            let a = num(&w, 1, cmd, "address")?;
            let n = len(&w, 2, cmd)?;
            let v = num(&w, 3, cmd, "value")?;
            extra(&w, 4, cmd)?;
            Command::Memset(a, n, v as u8)
        }
        "clock_step" => {
            let ns = match w.get(1) {
                None => None,
                Some(s) => {
                    Some(parse_i64(s).ok_or_else(|| format!("clock_step: invalid step '{s}'"))?)
                }
            };
            extra(&w, 2, cmd)?;
            Command::ClockStep(ns)
        }
        "clock_set" => {
            let s = arg(&w, 1, cmd, "time")?;
            let ns = parse_i64(s).ok_or_else(|| format!("clock_set: invalid time '{s}'"))?;
            extra(&w, 2, cmd)?;
            Command::ClockSet(ns)
        }
        "irq_intercept_in" | "irq_intercept_out" => {
            let p = arg(&w, 1, cmd, "QOM path")?;
            extra(&w, 2, cmd)?;
            Command::IrqIntercept(cmd.ends_with("out"), p.to_string())
        }
        "set_irq_in" => {
            let p = arg(&w, 1, cmd, "QOM path")?;
            let name = arg(&w, 2, cmd, "GPIO name")?;
            let n = arg(&w, 3, cmd, "line number")?;
            let l = arg(&w, 4, cmd, "level")?;
            extra(&w, 5, cmd)?;
            let n = parse_i64(n)
                .and_then(|v| i32::try_from(v).ok())
                .filter(|v| *v >= 0)
                .ok_or_else(|| format!("set_irq_in: invalid line number '{n}'"))?;
            let l = parse_i64(l)
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| format!("set_irq_in: invalid level '{l}'"))?;
            let name = (name != "unnamed-gpio-in").then(|| name.to_string());
            Command::SetIrqIn(p.to_string(), name, n, l)
        }
        "endianness" => Command::Endianness,
        "module_load" => Command::ModuleLoad,
        _ => Command::Unknown(cmd.to_string()),
    };
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_strtoull() {
        assert_eq!(parse_u64("0x10"), Some(16));
        assert_eq!(parse_u64("010"), Some(8));
        assert_eq!(parse_u64("10"), Some(10));
        assert_eq!(parse_u64("-1"), Some(u64::MAX));
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("12a"), None);
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_i64("-0x10"), Some(-16));
        assert_eq!(parse_i64("0xffffffffffffffff"), None);
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse("outb 0x80 0x1"), Ok(Command::Out(Width::B, 0x80, 1)));
        assert_eq!(parse("inl 0xcf8"), Ok(Command::In(Width::L, 0xcf8)));
        assert_eq!(
            parse("writeq 0x1000 5"),
            Ok(Command::Write(Width::Q, 0x1000, 5))
        );
        assert_eq!(parse("readw 0x2"), Ok(Command::Read(Width::W, 2)));
        assert_eq!(
            parse("write 0x10 3 0xaabb"),
            Ok(Command::WriteBuf(0x10, vec![0xaa, 0xbb, 0]))
        );
        assert_eq!(
            parse("b64write 0 2 AAEC"),
            Ok(Command::B64Write(0, vec![0, 1]))
        );
        assert_eq!(parse("memset 0 4 0x1ff"), Ok(Command::Memset(0, 4, 0xff)));
        assert_eq!(parse("clock_step"), Ok(Command::ClockStep(None)));
        assert_eq!(parse("clock_set 100"), Ok(Command::ClockSet(100)));
        assert_eq!(
            parse("set_irq_in /machine/x unnamed-gpio-in 1 -1"),
            Ok(Command::SetIrqIn("/machine/x".into(), None, 1, -1))
        );
        assert_eq!(parse("readx 0"), Ok(Command::Unknown("readx".into())));
        assert_eq!(parse("inq 0"), Ok(Command::Unknown("inq".into())));
        assert_eq!(parse(""), Ok(Command::Unknown("".into())));
    }

    #[test]
    fn malformed_lines_are_errors_not_aborts() {
        let e = |l: &str| parse(l).unwrap_err();
        assert_eq!(e("readl"), "readl: missing address");
        assert_eq!(e("readl zz"), "readl: invalid address 'zz'");
        assert_eq!(e("outb 0x10000 1"), "outb: port 0x10000 is above 0xffff");
        assert_eq!(
            e("read 0x0 0x10000000000"),
            "read: size 0x10000000000 exceeds the limit of 0x1000000 bytes"
        );
        assert_eq!(e("read 0 0"), "read: size must not be 0");
        assert_eq!(
            e("write 0 2 0xzz"),
            "write: invalid hex digit in data at byte 0"
        );
        assert_eq!(e("write 0 2 aa"), "write: data must start with 0x");
        assert_eq!(
            e("b64write 0 2 !!"),
            "b64write: invalid base64 character at offset 0"
        );
        assert_eq!(e("readl 0 0"), "readl: unexpected argument '0'");
        assert_eq!(e("clock_step x"), "clock_step: invalid step 'x'");
        assert_eq!(
            e("set_irq_in /a b -1 0"),
            "set_irq_in: invalid line number '-1'"
        );
    }
}
