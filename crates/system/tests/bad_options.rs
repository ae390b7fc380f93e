//! Bad command lines, run side by side with qemu-system-aarch64 7.2 (Debian's
//! qemu-system-arm): both must exit with status 1 and print the same error text
//! (program names aside), deprecation warnings included. QEMU runs with `-accel tcg -S`, as Debian's build lacks
//! the qtest accelerator. The test fails when QEMU is missing.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-system-aarch64");
const QEMU: &str = "qemu-system-aarch64";

/// (arguments, compare only the last line: QEMU adds a deprecation warning first)
const CASES: &[(&str, bool)] = &[
    ("-M foo", false),
    ("-machine none,foo=bar", false),
    ("-cpu foo", false),
    ("-device nonexistent-dev", false),
    ("-object foo,id=x", false),
    ("-object memory-backend-ram,id=m", false),
    ("-object memory-backend-ram,id=m,size=1M,foo=1", false),
    ("-object memory-backend-ram,size=1M", false),
    ("-object memory-backend-ram,id=m,size=1M,share=maybe", false),
    ("-object memory-backend-ram,id=m,size=xyz", false),
    ("-object memory-backend-file,id=m,size=1M", false),
    (
        "-object memory-backend-ram,id=m,size=1M -object memory-backend-ram,id=m,size=1M",
        false,
    ),
    ("-m foo", false),
    ("-smp 2", false),
    ("-chardev foo,id=c", false),
    ("-chardev null", false),
    ("-chardev null,id=c -chardev null,id=c", false),
    ("-bogus-option", false),
    ("-m", false),
    ("-name", false),
    ("-global foo", false),
    ("-serial foo:bar", false),
    ("-mon chardev=nonexist", false),
    ("-qtest foo:bar", false),
    ("-display bogus", false),
    // Option syntax (oxemu-opts): QemuOpts for -device, -chardev, -mon, -object, -m,
    // -global, -name; keyval for -M, -smp, -display; -cpu's own split.
    ("-chardev null,id=c,noappend,x", false),
    ("-chardev null,id=1x", false),
    ("-chardev null,,x,id=c", false),
    ("-chardev ,id=c", false),
    ("-chardev id=c", false),
    ("-chardev null,id=c,=x", false),
    ("-chardev null,id=c,,x", false),
    // QEMU looks for id= without the implied key, so the escaped comma separates.
    ("-chardev null,,id=1x", false),
    ("-chardev null,id=a,id=b -mon chardev=b", false),
    (
        "-chardev socket,id=c,path=/nonexistent/x,server,nowait",
        false,
    ),
    ("-M none,foo", false),
    ("-M ,accel=tcg", false),
    ("-M none,,x", false),
    ("-M none,memory-backend.x=1", false),
    ("-M none -M virt.x=1", false),
    ("-smp 2,foo", false),
    ("-smp cpus.x=1", false),
    ("-display none,foo=1", false),
    ("-display none,,x", false),
    ("-display foo=1", false),
    ("-global driver=x", false),
    ("-global x.y", false),
    ("-name foo,bar=1", false),
    ("-cpu max,foo", false),
    ("-m 1,,x", false),
    ("-device foo,,bar", false),
    ("-device nonexistent-dev,bogus", false),
    ("-mon chardev=x,bogus", false),
    ("-object memory-backend-ram,id=m,size=1M,size.x=2", false),
    ("-object memory-backend-ram,,id=m", false),
    ("-object 1x=2", false),
    ("-object id=m", false),
    ("-object memory-backend-ram,id=1x,size=1M", false),
    ("-object memory-backend-ram,id=m,size=1M,share,foo", false),
    ("-qtest unix:/nonexistent/x,bogus", false),
    // JSON -device and -object, typed as QMP arguments.
    (r#"-device {"driver":"nonexistent-dev"}"#, false),
    ("-device [1]", false),
    (r#"-device {"id":"x"}"#, false),
    (r#"-object {"id":"m"}"#, false),
    (
        r#"-object {"qom-type":"memory-backend-ram","id":"m"}"#,
        false,
    ),
    (
        r#"-object {"qom-type":"memory-backend-ram","id":"m","size":1048576,"foo":1}"#,
        false,
    ),
    (
        r#"-object {"qom-type":"memory-backend-ram","id":"m","size":"1M"}"#,
        false,
    ),
    (
        r#"-object {"qom-type":"memory-backend-ram","id":"m","size":1048576,"share":"on"}"#,
        false,
    ),
    (
        r#"-object {"qom-type":"memory-backend-ram","id":"m","size":1048576} -object {"qom-type":"memory-backend-ram","id":"m","size":1048576}"#,
        false,
    ),
];

/// Runs `prog`; one that is still running after 20 s (it accepted what it should
/// refuse) is killed and reported with status `None`.
fn run(prog: &str, pre: &[&str], case: &str) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = Command::new(prog)
        .args(pre)
        .args(case.split(' '))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {prog} (install qemu-system-arm): {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = Vec::new();
    let _ = child.stderr.take().unwrap().read_to_end(&mut err);
    let name = prog.rsplit('/').next().unwrap_or(prog);
    let text = String::from_utf8_lossy(&err).replace(name, "PROG");
    (code, text)
}

#[test]
fn bad_options_match_qemu() {
    let mut failures = Vec::new();
    let handles: Vec<_> = CASES
        .iter()
        .map(|(case, last)| {
            std::thread::spawn(move || {
                let q = run(
                    QEMU,
                    &[
                        "-M",
                        "none",
                        "-accel",
                        "tcg",
                        "-S",
                        "-display",
                        "none",
                        "-nodefaults",
                    ],
                    case,
                );
                let o = run(
                    BIN,
                    &["-M", "none", "-display", "none", "-nodefaults"],
                    case,
                );
                (case, *last, q, o)
            })
        })
        .collect();
    for h in handles {
        let (case, last, q, o) = h.join().unwrap();
        let pick = |s: &str| {
            if last {
                s.lines().last().unwrap_or("").to_string()
            } else {
                s.to_string()
            }
        };
        if q.0 != Some(1) || o.0 != Some(1) || pick(&q.1) != pick(&o.1) {
            failures.push(format!(
                "{case}\n  qemu  ({:?}): {:?}\n  oxemu ({:?}): {:?}",
                q.0, q.1, o.0, o.1
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn oxemu_refuses_what_it_cannot_do() {
    let cases = [
        ("-accel tcg", "PROG: accelerator 'tcg' is not available: PROG has no CPU emulation; use -accel qtest\n"),
        ("-accel kvm", "PROG: accelerator 'kvm' is not available: PROG has no CPU emulation; use -accel qtest\n"),
        ("-machine none,accel=tcg", "PROG: accelerator 'tcg' is not available: PROG has no CPU emulation; use -accel qtest\n"),
        ("-accel qtest -machine accel=qtest", "PROG: The -accel and \"-machine accel=\" options are incompatible\n"),
        ("-monitor stdio", "PROG: -monitor stdio: HMP monitors are not supported by PROG; use -qmp or -mon mode=control\n"),
        ("-drive file=x", "PROG: -drive: option -drive is not supported by PROG yet\n"),
        ("-device oxemu-test-device,iobase=0xffff", "PROG: -device oxemu-test-device,iobase=0xffff: iobase 0xffff does not fit the 64 KiB port I/O space\n"),
        ("-device oxemu-test-device,revision=x", "PROG: -device oxemu-test-device,revision=x: Parameter 'revision' expects an integer\n"),
    ];
    for (case, want) in cases {
        let o = run(BIN, &["-M", "none"], case);
        assert_eq!(o, (Some(1), want.to_string()), "{case}");
    }
}

#[test]
fn help_outputs() {
    let out = |a: &[&str]| {
        let o = Command::new(BIN).args(a).output().unwrap();
        assert!(o.status.success(), "{a:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let m = out(&["-M", "help"]);
    assert!(m.starts_with("Supported machines are:\n"));
    assert!(m.contains("oxemu-test           oxemu test board (RAM and one oxemu-test-device) (alias of oxemu-test-1.1)\n"));
    assert!(m.contains("none                 empty machine\n"));
    assert_eq!(
        out(&["-cpu", "help"]),
        "Available CPUs:\n  cortex-a57\n  cortex-a72\n  max\n"
    );
    assert!(out(&["-device", "help"]).contains(
        "name \"oxemu-test-device\", desc \"oxemu test device (MMIO, port I/O, IRQs, timer)\"\n"
    ));
    let p = out(&["-device", "oxemu-test-device,help"]);
    assert!(
        p.starts_with("oxemu-test-device options:\n  addr=<uint64>"),
        "{p}"
    );
}
