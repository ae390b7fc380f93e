//! The `oxemu-x86_64` command.

use oxemu_dbt::{elf, options};
use std::process::ExitCode;

fn load_checked(path: &str) -> Result<elf::ElfInfo, String> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    elf::parse(&data).map_err(|e| format!("{path}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match options::parse(&args) {
        Ok(o) => o,
        Err(options::OptError::Info(s)) => {
            print!("{s}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("oxemu-x86_64: {e}");
            return ExitCode::from(1);
        }
    };
    let info = match load_checked(&o.program) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("oxemu-x86_64: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(interp) = &info.interp {
        let p = match &o.prefix {
            Some(pre) if std::path::Path::new(&format!("{pre}{interp}")).exists() => {
                format!("{pre}{interp}")
            }
            _ => interp.clone(),
        };
        if let Err(e) = load_checked(&p) {
            eprintln!("oxemu-x86_64: interpreter {e}");
            return ExitCode::from(1);
        }
    }
    eprintln!("oxemu-x86_64: {}: valid ELF, but running programs is not implemented yet (see crates/dbt/NOTES.md)", o.program);
    ExitCode::from(1)
}
