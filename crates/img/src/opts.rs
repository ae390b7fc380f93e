//! Typed `-o` option lists as QEMU's QemuOpts know them: which options a format
//! accepts, how their values are checked when the string is parsed, and the
//! `-o help` listing. Only options oxemu implements are listed: any other option is
//! refused as unknown, never accepted and ignored.

use oxemu_opts::size::{parse_size, SizeError};

use crate::Error;

/// The type of an option's value, as QemuOpts checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Any string.
    Str,
    /// `on`/`off` (also `yes`/`no`, `true`/`false`).
    Bool,
    /// A plain unsigned number (decimal, `0x` hex or `0` octal).
    Num,
    /// A size with an optional k, M, G, T, P or E suffix.
    Size,
}

/// One option: name, value type, and the help text `-o help` shows.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// Option name.
    pub name: &'static str,
    /// Value type.
    pub kind: Kind,
    /// One-line description.
    pub help: &'static str,
}

const fn d(name: &'static str, kind: Kind, help: &'static str) -> Desc {
    Desc { name, kind, help }
}

const SIZE: Desc = d("size", Kind::Size, "Virtual disk size");

/// `-o` options of `create -f raw` (the format level).
pub const RAW_CREATE: &[Desc] = &[SIZE];

/// `-o` options of `create -f qcow2` that oxemu implements (the format level).
pub const QCOW2_CREATE: &[Desc] = &[
    d("backing_file", Kind::Str, "File name of a base image"),
    d("backing_fmt", Kind::Str, "Image format of the base image"),
    d("cluster_size", Kind::Size, "qcow2 cluster size"),
    d(
        "compat",
        Kind::Str,
        "Compatibility level (v2 [0.10] or v3 [1.1])",
    ),
    d(
        "compression_type",
        Kind::Str,
        "Compression method used for image cluster compression",
    ),
    d("extended_l2", Kind::Bool, "Extended L2 tables"),
    d("lazy_refcounts", Kind::Bool, "Postpone refcount updates"),
    d(
        "preallocation",
        Kind::Str,
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    d(
        "refcount_bits",
        Kind::Num,
        "Width of a reference count entry in bits",
    ),
    SIZE,
];

/// `-o` options of the `file` protocol's image creation.
pub const FILE_CREATE: &[Desc] = &[
    d(
        "extent_size_hint",
        Kind::Size,
        "Extent size hint for the image file, 0 to disable",
    ),
    d(
        "nocow",
        Kind::Bool,
        "Turn off copy-on-write (valid only on btrfs)",
    ),
    d(
        "preallocation",
        Kind::Str,
        "Preallocation mode (allowed values: off, falloc, full)",
    ),
    SIZE,
];

/// `amend -o` options of qcow2 that oxemu implements.
pub const QCOW2_AMEND: &[Desc] = &[
    d("backing_file", Kind::Str, "File name of a base image"),
    d("backing_fmt", Kind::Str, "Image format of the base image"),
    d(
        "compat",
        Kind::Str,
        "Compatibility level (v2 [0.10] or v3 [1.1])",
    ),
    d("lazy_refcounts", Kind::Bool, "Postpone refcount updates"),
    d(
        "refcount_bits",
        Kind::Num,
        "Width of a reference count entry in bits",
    ),
    SIZE,
];

/// The format-level create options of `fmt`, if oxemu can create it.
pub fn create_list(fmt: &str) -> Option<&'static [Desc]> {
    match fmt {
        "raw" => Some(RAW_CREATE),
        "qcow2" => Some(QCOW2_CREATE),
        _ => None,
    }
}

/// `lists` merged, the first description of a name winning, sorted by name.
pub fn merged(lists: &[&[Desc]]) -> Vec<Desc> {
    let mut out: Vec<Desc> = Vec::new();
    for d in lists.iter().flat_map(|l| l.iter()) {
        if !out.iter().any(|o| o.name == d.name) {
            out.push(*d);
        }
    }
    out.sort_by_key(|d| d.name);
    out
}

/// True if the `-o` strings ask for help (`help` or `?` as one of the options).

/// The lines of a listing: `  name=<type> - help`, names padded as QEMU pads them.
pub fn listing(list: &[Desc]) -> String {
    let mut s = String::new();
    for d in list {
        let ty = match d.kind {
            Kind::Str => "str",
            Kind::Bool => "bool (on/off)",
            Kind::Num => "num",
            Kind::Size => "size",
        };
        s += &format!("  {:<22} - {}\n", format!("{}=<{ty}>", d.name), d.help);
    }
    s
}

/// Prints `create -o help` for `fmt`: the format's options, or with a file name the
/// format's and the file protocol's together.
pub fn print_create_help(fmt: &str, with_file: bool) -> Result<(), Error> {
    let Some(list) = create_list(fmt) else {
        return Err(Error::Msg(format!("Unknown file format '{fmt}'")));
    };
    if with_file {
        print!(
            "Supported options:\n{}",
            listing(&merged(&[list, FILE_CREATE]))
        );
    } else {
        print!(
            "Supported {fmt} options:\n{}\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n",
            listing(&merged(&[list]))
        );
    }
    Ok(())
}

/// Splits accumulated `-o` strings into `key=value` pairs (`key` alone means
/// `key=on`, `nokey` alone `key=off`), checking names against `list` and values against their types with
/// QemuOpts' messages. Later values of a key win when looked up with [`last`].
pub fn parse(opts: &[&str], list: &[Desc]) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for kv in opts
        .iter()
        .flat_map(|o| oxemu_opts::keyval::split_elements(o))
        .filter(|s| !s.is_empty())
    {
        let kv = kv.as_str();
        let (k, v) = match kv.split_once('=') {
            Some(kv) => kv,
            None => match kv.strip_prefix("no") {
                Some(k) => (k, "off"),
                None => (kv, "on"),
            },
        };
        let Some(d) = list.iter().find(|d| d.name == k) else {
            return Err(Error::Msg(format!("Invalid parameter '{k}'")));
        };
        check_value(d, v)?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn check_value(d: &Desc, v: &str) -> Result<(), Error> {
    let k = d.name;
    match d.kind {
        Kind::Str => Ok(()),
        Kind::Bool => parse_bool(k, v).map(|_| ()),
        Kind::Num => parse_num(k, v).map(|_| ()),
        Kind::Size => parse_size_opt(k, v).map(|_| ()),
    }
}

/// The last value given for `key`.
pub fn last<'a>(parsed: &'a [(String, String)], key: &str) -> Option<&'a str> {
    parsed
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A boolean option's value, with QemuOpts' message.
pub fn parse_bool(k: &str, v: &str) -> Result<bool, Error> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::Msg(format!("Parameter '{k}' expects 'on' or 'off'"))),
    }
}

/// A number option's value, with QemuOpts' messages.
pub fn parse_num(k: &str, v: &str) -> Result<u64, Error> {
    let t = v.trim_start();
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8)
    } else {
        t.parse::<u64>()
    };
    r.map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => {
            Error::Msg(format!("Value '{v}' is too large for parameter '{k}'"))
        }
        _ => Error::Msg(format!("Parameter '{k}' expects a number")),
    })
}

/// A size option's value, with QemuOpts' messages.
pub fn parse_size_opt(k: &str, v: &str) -> Result<u64, Error> {
    parse_size(v).map_err(|e| match e {
        SizeError::TooLarge(_) => Error::Msg(format!(
            "Value '{v}' is out of range for parameter '{k}'"
        )),
        SizeError::Invalid(_) => Error::Msg(format!(
            "Parameter '{k}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_pads_like_qemu() {
        assert_eq!(
            listing(&[SIZE]),
            "  size=<size>            - Virtual disk size\n"
        );
    }

    #[test]
    fn values_are_checked_by_type() {
        assert!(parse(&["cluster_size=4k,lazy_refcounts"], QCOW2_CREATE).is_ok());
        assert!(parse(&["refcount_bits=x"], QCOW2_CREATE).is_err());
        assert!(parse(&["foo=1"], QCOW2_CREATE).is_err());
    }
}
