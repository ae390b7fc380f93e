//! Compiling C configs the way Jailhouse's `configs/Makefile` does, for
//! `config check --jailhouse-src DIR file.c`.
//!
//! The recipe is Kbuild's, reduced to what matters for a data-only object:
//! `gcc -c -Werror -Wall -Wextra -D__LINUX_COMPILER_TYPES_H` with the include
//! directories `hypervisor/arch/ARCH/include`, `hypervisor/include` and
//! `include` (plus `-include include/jailhouse/config.h` when the tree has
//! one), then `objcopy -O binary --remove-section=.note.gnu.property`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Jailhouse's name (`SRCARCH`) for the architecture a C config is built for:
/// the `--arch` value if given, else the name of the config's directory when
/// it is `x86`, `arm` or `arm64` (as in `configs/arm64/foo.c`), else the
/// host's.
pub fn config_arch(explicit: Option<&str>, c_file: &Path) -> String {
    if let Some(a) = explicit {
        return a.to_string();
    }
    let dir = c_file
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    if let Some(d @ ("x86" | "arm" | "arm64")) = dir {
        return d.to_string();
    }
    match std::env::consts::ARCH {
        "aarch64" => "arm64".into(),
        "arm" => "arm".into(),
        _ => "x86".into(),
    }
}

/// Include directories for `arch`, checked to exist under `src`.
fn include_dirs(src: &Path, arch: &str) -> Result<Vec<PathBuf>, String> {
    let need = [
        "include/jailhouse/cell-config.h",
        "hypervisor/include/jailhouse/types.h",
    ];
    for f in need {
        if !src.join(f).is_file() {
            return Err(format!(
                "{}: not a Jailhouse source tree: {f} is missing (--jailhouse-src needs Jailhouse's headers)",
                src.display()
            ));
        }
    }
    let arch_inc = src.join("hypervisor/arch").join(arch).join("include");
    if !arch_inc.is_dir() {
        return Err(format!(
            "{}: no headers for architecture {arch}: {} is missing",
            src.display(),
            arch_inc.display()
        ));
    }
    let mut dirs = vec![arch_inc];
    if arch == "arm" || arch == "arm64" {
        let common = src.join("hypervisor/arch/arm-common/include");
        if common.is_dir() {
            dirs.push(common);
        }
    }
    dirs.push(src.join("hypervisor/include"));
    dirs.push(src.join("include"));
    Ok(dirs)
}

fn run(cmd: &mut Command, tool: &str, what: &Path) -> Result<(), String> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            format!(
                "{tool} not found in PATH; --jailhouse-src compiles C configs with gcc and objcopy"
            )
        } else {
            format!("cannot run {tool}: {e}")
        }
    })?;
    if !out.status.success() {
        return Err(format!(
            "{}: {tool} failed ({}):\n{}",
            what.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    Ok(())
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles one C config against the Jailhouse tree `src` and returns the
/// binary config, as `make` in Jailhouse's `configs/` would produce it.
pub fn compile_config(src: &Path, arch: &str, c_file: &Path) -> Result<Vec<u8>, String> {
    if !c_file.is_file() {
        return Err(format!("{}: cannot open: no such file", c_file.display()));
    }
    let dirs = include_dirs(src, arch)?;
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "oxemu-jailhouse-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )));
    std::fs::create_dir_all(&scratch.0)
        .map_err(|e| format!("cannot create {}: {e}", scratch.0.display()))?;
    let obj = scratch.0.join("config.o");
    let bin = scratch.0.join("config.cell");
    let mut gcc = Command::new("gcc");
    gcc.args([
        "-c",
        "-O2",
        "-Werror",
        "-Wall",
        "-Wextra",
        "-D__LINUX_COMPILER_TYPES_H",
    ]);
    for d in &dirs {
        gcc.arg("-I").arg(d);
    }
    let generated = src.join("include/jailhouse/config.h");
    if generated.is_file() {
        gcc.arg("-include").arg(generated);
    }
    gcc.arg(c_file).arg("-o").arg(&obj);
    run(&mut gcc, "gcc", c_file)?;
    let mut objcopy = Command::new("objcopy");
    objcopy
        .args(["-O", "binary", "--remove-section=.note.gnu.property"])
        .arg(&obj)
        .arg(&bin);
    run(&mut objcopy, "objcopy", c_file)?;
    std::fs::read(&bin)
        .map_err(|e| format!("{}: cannot read objcopy output: {e}", c_file.display()))
}
