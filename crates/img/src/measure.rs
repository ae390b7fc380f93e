//! `oxemu-img measure`: the file size a new raw or qcow2 image needs, for a virtual
//! size or for the contents of an existing image, computed as qemu-img 7.2 does.

use oxemu_block::BlockDriver;

use crate::opts::{self, Desc};
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('h'), Some("help"), false),
    opt(Some('f'), None, true),
    opt(Some('O'), None, true),
    opt(Some('o'), None, true),
    opt(Some('l'), None, true),
    opt(Some('U'), Some("force-share"), false),
    opt(None, Some("image-opts"), false),
    opt(None, Some("object"), true),
    opt(None, Some("output"), true),
    opt(None, Some("size"), true),
];

/// Formats QEMU knows that cannot be measured (they have creation options but no
/// measure callback), so that they get QEMU's message rather than "Unknown".
const UNMEASURABLE: &[&str] = &["vmdk", "vdi", "vpc", "vhdx", "qed", "qcow", "parallels"];

/// qemu-img's two-line message for a bad size argument (`cvtnum`).
fn bad_size() -> Error {
    Error::Msg(format!(
        "Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n{}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
        crate::prog_name()
    ))
}

/// The result of a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure {
    /// Bytes needed for the allocated data and all metadata.
    pub required: u64,
    /// Bytes needed when every cluster is allocated.
    pub fully_allocated: u64,
    /// Bytes of persistent bitmaps (shown when input and output support them).
    pub bitmaps: Option<u64>,
}

/// Runs `measure [--output=ofmt] [-O fmt] [-o options] [--size N | [-f fmt] filename]`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    if p.has("help") {
        print!("{}\nSupported formats: qcow2 raw\n", crate::HELP);
        return Ok(());
    }
    let json = match p.get("output") {
        None | Some("human") => false,
        Some("json") => true,
        Some(_) => {
            return Err(Error::Msg(
                "--output must be used with human or json as argument.".into(),
            ))
        }
    };
    let size = match p.get("size") {
        Some(s) => Some(oxemu_opts::size::parse_size(s).map_err(|_| bad_size())?),
        None => None,
    };
    if let Some(l) = p.get("l") {
        // qemu-img parses -l while it reads the options, before any other check.
        oxemu_qcow2::SnapshotRef::parse(l).map_err(|e| {
            crate::report(&e);
            Error::Msg(format!("Failed in parsing snapshot param '{l}'"))
        })?;
    }
    if p.args.len() > 1 {
        return Err(Error::Msg(
            "At most one filename argument is allowed.".into(),
        ));
    }
    let file = p.args.first();
    if file.is_none() && (p.has("image-opts") || p.has("f") || p.has("l")) {
        return Err(Error::Msg(
            "--image-opts, -f, and -l require a filename argument.".into(),
        ));
    }
    if file.is_some() && size.is_some() {
        return Err(Error::Msg(
            "--size N cannot be used together with a filename.".into(),
        ));
    }
    if file.is_none() && size.is_none() {
        return Err(Error::Msg(
            "Either --size N or one filename must be specified.".into(),
        ));
    }
    for (key, flag) in [("object", "--object"), ("image-opts", "--image-opts")] {
        if p.has(key) {
            return Err(Error::Msg(format!(
                "{flag} is not supported by oxemu-img measure"
            )));
        }
    }
    let input = match file {
        Some(f) => {
            let img = crate::map::open_ro(f, p.get("f"), p.has("force-share"))?;
            crate::snapshot::load_tmp(&img, f, p.get("l"), None)?;
            Some(img)
        }
        None => None,
    };
    let out_fmt = p.get("O").unwrap_or("raw");
    let list: &[Desc] = match out_fmt {
        "raw" => opts::RAW_CREATE,
        "qcow2" => opts::QCOW2_CREATE,
        f if UNMEASURABLE.contains(&f) => {
            return Err(Error::Msg(format!(
                "Block driver '{f}' does not support size measurement"
            )))
        }
        f => return Err(Error::Msg(format!("Unknown file format '{f}'"))),
    };
    let ostrs: Vec<&str> = p
        .opts
        .iter()
        .filter(|(k, _)| k == "o")
        .map(|(_, v)| v.as_str())
        .collect();
    let parsed = opts::parse(&ostrs, &opts::merged(&[list, opts::FILE_CREATE])).map_err(|e| {
        Error::Msg(format!(
            "{e}\n{}: Invalid options for file format '{out_fmt}'",
            crate::prog_name()
        ))
    })?;
    let size = match size {
        Some(s) => s,
        None => match opts::last(&parsed, "size") {
            Some(s) => opts::parse_size_opt("size", s)?,
            None => 0,
        },
    };
    let m = match out_fmt {
        "raw" => Measure {
            required: match &input {
                Some(i) => i.node.size(),
                None => size.next_multiple_of(512),
            },
            fully_allocated: 0,
            bitmaps: None,
        },
        _ => measure_qcow2(&parsed, size, input.as_ref())?,
    };
    let m = if out_fmt == "raw" {
        Measure {
            fully_allocated: m.required,
            ..m
        }
    } else {
        m
    };
    if json {
        let mut v = serde_json::Map::new();
        if let Some(b) = m.bitmaps {
            v.insert("bitmaps".into(), b.into());
        }
        v.insert("required".into(), m.required.into());
        v.insert("fully-allocated".into(), m.fully_allocated.into());
        println!("{}", crate::json_pretty(&serde_json::Value::Object(v)));
    } else {
        println!("required size: {}", m.required);
        println!("fully allocated size: {}", m.fully_allocated);
        if let Some(b) = m.bitmaps {
            println!("bitmaps size: {b}");
        }
    }
    Ok(())
}

/// The refcount table and blocks (in bytes) that count `clusters` clusters and
/// themselves: the fixed point of blocks and table clusters, as QEMU finds it.
pub fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let per_table_cluster = cluster_size / 8;
    let per_block = cluster_size * 8 / (1u64 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            break;
        }
    }
    (blocks + table) * cluster_size
}

/// The size of a fully allocated qcow2 image of `size` bytes (header, L1 and L2
/// tables, refcount metadata and all data clusters).
pub fn prealloc_size(size: u64, cluster_size: u64, refcount_order: u32, extended_l2: bool) -> u64 {
    let aligned = size.next_multiple_of(cluster_size);
    let l2e = if extended_l2 { 16 } else { 8 };
    let mut meta = cluster_size;
    let nl2e = (aligned / cluster_size).next_multiple_of(cluster_size / l2e);
    meta += nl2e * l2e;
    let nl1e = (nl2e * l2e / cluster_size).next_multiple_of(cluster_size / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size(
        (meta + aligned) / cluster_size,
        cluster_size,
        refcount_order,
    );
    meta + aligned
}

fn measure_qcow2(
    o: &[(String, String)],
    size: u64,
    input: Option<&crate::image::Image>,
) -> Result<Measure, Error> {
    let get = |k| opts::last(o, k);
    let ext_l2 = match get("extended_l2") {
        Some(v) => opts::parse_bool("extended_l2", v)?,
        None => false,
    };
    let cs = match get("cluster_size") {
        Some(v) => opts::parse_size_opt("cluster_size", v)?,
        None => 65536,
    };
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::Msg(
            "Cluster size must be a power of two between 512 and 2048k".into(),
        ));
    }
    if ext_l2 && cs < 16384 {
        return Err(Error::Msg(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
                .into(),
        ));
    }
    let version = match get("compat") {
        None | Some("1.1") => 3,
        Some("0.10") => 2,
        Some(v) => return Err(Error::Msg(format!("Invalid compatibility level: '{v}'"))),
    };
    let rb = match get("refcount_bits") {
        Some(v) => opts::parse_num("refcount_bits", v)?,
        None => 16,
    };
    if rb > 64 || !rb.is_power_of_two() {
        return Err(Error::Msg(
            "Refcount width must be a power of two and may not exceed 64 bits".into(),
        ));
    }
    if version < 3 && rb != 16 {
        return Err(Error::Msg("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)".into()));
    }
    let prealloc = match get("preallocation") {
        None | Some("off") | Some("metadata") => false,
        Some("falloc") | Some("full") => true,
        Some(v) => return Err(Error::Msg(format!("invalid parameter value: {v}"))),
    };
    let backing = get("backing_file").is_some();
    let mut vsize = size.next_multiple_of(cs);
    let l2e = if ext_l2 { 16 } else { 8 };
    let l2_tables = (vsize / cs).div_ceil(cs / l2e);
    if l2_tables * 8 > 32 << 20 {
        return Err(Error::Msg(
            "The image size is too large (try using a larger cluster size)".into(),
        ));
    }
    let mut required = 0u64;
    if let Some(img) = input {
        let ssize = img.node.size();
        vsize = ssize.next_multiple_of(cs);
        required = if backing {
            vsize
        } else {
            allocated_bytes(&*img.node, ssize, cs)?
        };
    }
    if prealloc {
        required = vsize;
    }
    let full = prealloc_size(vsize, cs, rb.trailing_zeros(), ext_l2);
    let bitmaps = match input {
        Some(img) if version >= 3 => bitmaps_size(img)?,
        _ => None,
    };
    Ok(Measure {
        required: full - vsize + required,
        fully_allocated: full,
        bitmaps,
    })
}

/// The persistent bitmaps' size of a qcow2 v3 input: none exist in images oxemu
/// handles (images with bitmaps are refused). None for inputs without bitmap support.
fn bitmaps_size(img: &crate::image::Image) -> Result<Option<u64>, Error> {
    let Some(q) = img.qcow2.as_ref().and_then(|c| c.qcow2.clone()) else {
        return Ok(None);
    };
    let h = crate::map::event_loop()?.block_on(q.header());
    if h.version < 3 {
        return Ok(None);
    }
    if h.extensions.iter().any(|e| e.kind == 0x2385_2875) {
        return Err(Error::Msg(
            "Measuring persistent bitmaps is not supported by oxemu-img".into(),
        ));
    }
    Ok(Some(0))
}

/// Bytes of `node` that hold data, each data extent extended to whole clusters of
/// `cs` (zero and unallocated ranges count nothing), as qcow2_measure counts them.
fn allocated_bytes(node: &dyn BlockDriver, size: u64, cs: u64) -> Result<u64, Error> {
    let lp = crate::map::event_loop()?;
    lp.block_on(async {
        let mut required = 0u64;
        let mut off = 0u64;
        while off < size {
            let st = node
                .block_status(off, size - off)
                .await
                .map_err(|e| Error::Msg(format!("Unable to get block status: {e}")))?;
            let mut pnum = st.len.clamp(1, size - off);
            if !st.zero && st.data && st.depth > 0 {
                pnum = (off + pnum).next_multiple_of(cs) - off;
                required += off % cs + pnum;
            }
            off += pnum;
        }
        Ok(required)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fully_allocated_1g_matches_qemu() {
        assert_eq!(prealloc_size(1 << 30, 65536, 4, false), 1074135040);
    }
}
