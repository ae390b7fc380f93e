//! QEMU's option syntax (oxemu-opts) and oxemu-system-aarch64's command line: any
//! input, as one option argument or as a whole command line, must parse or fail with a
//! non-empty message, never panic; escaped values must come back as written.
//!
//! The input is read as an option argument (QemuOpts and keyval, with and without an
//! implied key, JSON, sizes, `-o` splitting) and, split on NUL bytes and newlines, as
//! the arguments of `oxemu-system-aarch64` (its parser opens and prints nothing) and
//! of a getopt_long command line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_opts::getopt::{opt, parse as getopt};
use oxemu_opts::keyval::{
    escape, parse_keyval, parse_keyval_help, parse_keyval_into, parse_option,
};
use oxemu_opts::qemu_opts::QemuOpts;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    for implied in [None, Some("driver")] {
        match QemuOpts::parse(&s, implied) {
            Ok(mut o) => {
                assert!(o
                    .warnings
                    .iter()
                    .all(|w| w.starts_with("short-form boolean option")));
                if let Some(id) = &o.id {
                    assert!(oxemu_opts::qemu_opts::id_wellformed(id));
                }
                assert!(o.pairs.iter().all(|(k, _)| k != "id"));
                if let Some(k) = o.first_key().map(String::from) {
                    let last = o.get(&k).map(String::from);
                    assert_eq!(o.take(&k), last);
                    assert!(o.get(&k).is_none());
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match parse_keyval_help(&s, implied) {
            Ok((v, _)) => assert!(v.is_object()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match parse_option(&s, implied) {
            Ok(v) => assert!(v.is_object()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        let mut acc = serde_json::Map::new();
        for part in s.split('\n') {
            if let Err(e) = parse_keyval_into(&mut acc, part, implied) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Any text, escaped as a value, reads back unchanged in both syntaxes.
    let v = parse_keyval(&format!("k={}", escape(&s)), None).expect("escaped value");
    assert_eq!(v["k"].as_str(), Some(&*s));
    let o = QemuOpts::parse(&format!("k={}", escape(&s)), None).expect("escaped value");
    assert_eq!(o.get("k"), Some(&*s));
    // As an implied value too, when no `=` comes before the first comma (QEMU, like
    // oxemu, looks for `id=` reading the escaped commas as separators).
    let e = escape(&s);
    if !e.is_empty() && !e.split(',').next().unwrap_or("").contains('=') {
        if let Ok(o) = QemuOpts::parse(&e, Some("driver")) {
            assert_eq!(o.get("driver"), Some(&*s));
        }
    }
    let _ = oxemu_opts::keyval::split_elements(&s);
    let _ = oxemu_opts::wants_help(&[&*s]);
    if let Err(e) = oxemu_opts::size::parse_size(&s) {
        assert!(!e.to_string().is_empty());
    }
    let _ = oxemu_opts::json::parse(&s);

    let args: Vec<String> = s.split(['\0', '\n']).map(String::from).collect();
    let mut warnings = Vec::new();
    match oxemu_system::cli::parse(&args, &mut warnings) {
        Ok(_) => {}
        Err(e) => {
            assert!(!e.msg.is_empty());
            assert!(!e.render("p").is_empty());
        }
    }
    assert!(warnings.iter().all(|w| w.msg.starts_with("warning: ")));
    let spec = [
        opt(Some('f'), Some("format"), true),
        opt(Some('o'), Some("options"), true),
        opt(Some('q'), Some("quiet"), false),
        opt(None, Some("object"), true),
    ];
    if let Err(e) = getopt(&args, &spec) {
        assert!(!e.0.is_empty());
    }
});
