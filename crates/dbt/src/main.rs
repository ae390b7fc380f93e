//! The `oxemu-x86_64` command.

use oxemu_dbt::{cpu::CpuModel, ctx::Ctx, dispatch, elf, loader, mm::GuestMap, options};
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
    match start(&o, &info) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("oxemu-x86_64: {e}");
            ExitCode::from(1)
        }
    }
}

fn start(o: &options::Options, info: &elf::ElfInfo) -> Result<std::convert::Infallible, String> {
    for item in &o.log_items {
        match item.as_str() {
            "unimp" => oxemu_dbt::log::UNIMP.store(true, std::sync::atomic::Ordering::Relaxed),
            "in_asm" => oxemu_dbt::log::IN_ASM.store(true, std::sync::atomic::Ordering::Relaxed),
            _ => oxemu_dbt::log::STRACE.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    }
    if o.strace {
        oxemu_dbt::log::STRACE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(f) = &o.log_file {
        let f = std::fs::File::create(f).map_err(|e| format!("-D {f}: {e}"))?;
        *oxemu_dbt::log::FILE.lock().unwrap() = Some(f);
    }
    // Rust's runtime ignores SIGPIPE; the guest must start with the default action.
    // SAFETY: setting a default disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // SAFETY: getauxval is always safe.
    if unsafe { libc::getauxval(libc::AT_HWCAP2) } & 2 == 0 {
        return Err(
            "the host kernel does not enable FSGSBASE for user space; oxemu-x86_64 needs it".into(),
        );
    }
    let mut model = CpuModel::by_name(&o.cpu).ok_or("unknown CPU model")?;
    for f in model.filter_to_host() {
        oxemu_dbt::log::unimp(format_args!(
            "host lacks {f} of CPU model {}; not offered",
            o.cpu
        ));
    }
    let mut gmap = GuestMap::default();
    let (exe, _) = loader::load(&o.program, &mut gmap)?;
    let interp = match &info.interp {
        Some(i) => {
            let p = match &o.prefix {
                Some(pre) if std::path::Path::new(&format!("{pre}{i}")).exists() => {
                    format!("{pre}{i}")
                }
                _ => i.clone(),
            };
            Some(loader::load(&p, &mut gmap)?.0)
        }
        None => None,
    };
    let mut argv = vec![o.argv0.clone().unwrap_or_else(|| o.program.clone())];
    argv.extend(o.args.iter().cloned());
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    options::apply_env(&mut env, o);
    let envp: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let (sp, _auxv) = loader::build_stack(
        o.stack_size,
        &argv,
        &envp,
        &o.program,
        &exe,
        interp.as_ref(),
        model.hwcap(),
        &mut gmap,
    )?;
    let brk0 = exe.end;
    let p: &'static dispatch::Process = Box::leak(Box::new(dispatch::Process {
        cache: Default::default(),
        gmap: std::sync::Mutex::new(gmap),
        model,
        brk: std::sync::Mutex::new((brk0, brk0, brk0)),
    }));
    let ctx = Ctx::new();
    ctx.install();
    ctx.regs[4] = sp;
    ctx.rip = interp.map_or(exe.entry, |i| i.entry);
    dispatch::run(p, ctx)
}
