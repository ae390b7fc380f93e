//! QEMU's option syntax, in one place for every oxemu program.
//!
//! - [`getopt`]: command lines in getopt_long syntax (`-c10`, `--format=raw`, bundled
//!   flags, positional arguments anywhere), as qemu-img, qemu-nbd and
//!   qemu-storage-daemon take them.
//! - [`keyval`]: option arguments in keyval syntax (`driver=file,filename=a,,b`, with
//!   `,,` for a literal comma, dotted keys and lists) or as JSON objects, parsed into the
//!   JSON values that QMP commands receive; [`keyval::split_elements`] is the splitter
//!   for `-o` lists; [`wants_help`] finds a `help` or `?` query in them.
//! - [`qemu_opts`]: QemuOpts, the flat syntax of the system emulator's `-device`,
//!   `-chardev`, `-mon`, `-object`, `-accel`, `-m`, `-global` and `-name` (implied first key with
//!   `,,` escapes, short-form booleans with QEMU's deprecation warnings, `help`/`?`,
//!   `id=`, last value wins).
//! - [`json`]: QEMU's JSON dialect (strings may be single-quoted), for QMP input,
//!   `json:` file names and JSON option arguments.
//! - [`size`]: sizes with QEMU's suffixes and rounding (`qemu_strtosz`), and QEMU's
//!   human-readable size printing.
//!
//! ```
//! let v = oxemu_opts::keyval::parse_option("file,filename=a,,b.img,size=1M", Some("driver")).unwrap();
//! assert_eq!(v["driver"], "file");
//! assert_eq!(v["filename"], "a,b.img");
//! assert_eq!(oxemu_opts::size::parse_size(v["size"].as_str().unwrap()), Ok(1 << 20));
//! assert!(oxemu_opts::wants_help(&["cluster_size=64k,help"]));
//! ```

#![warn(missing_docs)]

pub mod getopt;
pub mod json;
pub mod keyval;
pub mod qemu_opts;
pub mod size;

/// True when one of the comma-separated option lists (`-o` arguments) holds a help
/// query: an element that is `help` or `?`. `,,` is a literal comma, not a separator,
/// so `a=x,,help` asks for nothing.
pub fn wants_help<S: AsRef<str>>(lists: &[S]) -> bool {
    lists
        .iter()
        .flat_map(|l| keyval::split_elements(l.as_ref()))
        .any(|e| e == "help" || e == "?")
}

#[cfg(test)]
mod tests {
    #[test]
    fn help_queries_respect_escaped_commas() {
        assert!(super::wants_help(&["help"]));
        assert!(super::wants_help(&["a=1", "?"]));
        assert!(!super::wants_help(&["backing_file=x,,help"]));
        assert!(!super::wants_help::<&str>(&[]));
    }
}
