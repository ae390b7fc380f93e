//! Translation of one guest basic block into the code cache.
//!
//! Instructions that neither branch nor touch translator state are copied (re-encoded at the
//! new address when they have a RIP-relative operand); branches, calls and returns are
//! rewritten so that every guest control transfer lands in translated code, and `syscall`,
//! `cpuid` and refused instructions become exits to the dispatcher.

use crate::cache::{Block, Cache, InsnMap, Kind};
use crate::cpu::CpuModel;
use crate::ctx::{exit, off};
use crate::mm::GuestMap;
use iced_x86::{
    Code, ConditionCode, Decoder, DecoderError, DecoderOptions, Encoder, FlowControl, Formatter,
    Instruction, IntelFormatter, MemoryOperand, Mnemonic, OpKind, Register,
};

/// Most guest instructions in one block.
pub const MAX_INSNS: usize = 64;
const STUB: usize = 48;
const RESERVE: u64 = 8192;

/// Why a block could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransError {
    /// Code fetch from an address the guest has not mapped executable.
    Fault(u64),
    /// The translator itself failed (code cache exhausted, encoding impossible).
    Internal(String),
}

/// What a refused instruction was, for `-d unimp`.
pub fn describe(ins: &Instruction) -> String {
    let mut s = String::new();
    IntelFormatter::new().format(ins, &mut s);
    s
}

fn gs_mov_store(b: &mut Vec<u8>, reg: u8, disp: u32) {
    b.extend_from_slice(&[0x65, 0x48, 0x89, 0x04 | (reg << 3), 0x25]);
    b.extend_from_slice(&disp.to_le_bytes());
}
fn gs_jmp(b: &mut Vec<u8>, disp: u32) {
    b.extend_from_slice(&[0x65, 0xff, 0x24, 0x25]);
    b.extend_from_slice(&disp.to_le_bytes());
}
fn gs_store_imm(b: &mut Vec<u8>, disp: u32, imm: u32) {
    b.extend_from_slice(&[0x65, 0x48, 0xc7, 0x04, 0x25]);
    b.extend_from_slice(&disp.to_le_bytes());
    b.extend_from_slice(&imm.to_le_bytes());
}
fn rel32(b: &mut Vec<u8>, at_end: u64, target: u64) {
    let r = target as i64 - at_end as i64;
    b.extend_from_slice(&(r as i32).to_le_bytes());
}

/// Emits an exit to the dispatcher with `reason`, `next_rip` and optionally `exit_rec`.
fn special_exit(b: &mut Vec<u8>, reason: u64, next: u64, rec: Option<u32>) {
    gs_mov_store(b, 0, off::SAVE_RAX);
    b.extend_from_slice(&[0x48, 0xb8]);
    b.extend_from_slice(&next.to_le_bytes());
    gs_mov_store(b, 0, off::NEXT_RIP);
    gs_store_imm(b, off::EXIT_REASON, reason as u32);
    if let Some(r) = rec {
        gs_store_imm(b, off::EXIT_REC, r);
    }
    gs_jmp(b, off::COMMON_FN);
}

/// Pushes the 64-bit guest return address without touching flags or registers.
fn push_ret(b: &mut Vec<u8>, ret: u64) {
    b.push(0x68);
    b.extend_from_slice(&(ret as u32).to_le_bytes());
    let hi = (ret >> 32) as u32;
    let sext = if ret as u32 & 0x8000_0000 != 0 {
        0xffff_ffff
    } else {
        0
    };
    if hi != sext {
        b.extend_from_slice(&[0xc7, 0x44, 0x24, 0x04]);
        b.extend_from_slice(&hi.to_le_bytes());
    }
}

enum Tail {
    /// Fall through to the next guest address.
    Fall(u64),
    /// Already ends in an exit.
    None,
}

fn is_segment_write(ins: &Instruction) -> bool {
    matches!(
        ins.mnemonic(),
        Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss
    ) || (matches!(ins.mnemonic(), Mnemonic::Pop | Mnemonic::Mov)
        && ins.op_count() > 0
        && ins.op0_kind() == OpKind::Register
        && ins.op0_register().is_segment_register())
}

/// Operand of an indirect jump/call as a `mov rcx, operand`.
fn mov_rcx(ins: &Instruction, at: u64) -> Result<Vec<u8>, String> {
    let m = if ins.op0_kind() == OpKind::Register {
        Instruction::with2(Code::Mov_r64_rm64, Register::RCX, ins.op0_register())
    } else {
        let seg = match ins.segment_prefix() {
            Register::GS => Register::None,
            s => s,
        };
        let mem = MemoryOperand::new(
            ins.memory_base(),
            ins.memory_index(),
            ins.memory_index_scale(),
            ins.memory_displacement64() as i64,
            ins.memory_displ_size()
                .max(if ins.memory_base() == Register::RIP {
                    8
                } else {
                    0
                }),
            false,
            seg,
        );
        Instruction::with2(Code::Mov_r64_rm64, Register::RCX, mem)
    }
    .map_err(|e| e.to_string())?;
    let mut enc = Encoder::new(64);
    enc.encode(&m, at).map_err(|e| e.to_string())?;
    Ok(enc.take_buffer())
}

/// Translates the block at guest `rip`; returns the host entry address.
pub fn translate(
    cache: &mut Cache,
    gmap: &GuestMap,
    model: &CpuModel,
    rip: u64,
) -> Result<u64, TransError> {
    // Code bytes: from rip to the end of the executable range (adjacent ranges joined).
    let Some((_, r)) = gmap
        .find(rip)
        .filter(|(_, r)| r.prot & libc::PROT_EXEC != 0)
    else {
        return Err(TransError::Fault(rip));
    };
    let mut end = r.end;
    while end < rip + 16 * MAX_INSNS as u64 {
        match gmap.find(end) {
            Some((_, n)) if n.prot & libc::PROT_EXEC != 0 => end = n.end,
            _ => break,
        }
    }
    let end = end.min(rip + 16 * MAX_INSNS as u64);
    // SAFETY: [rip, end) is mapped executable (so readable on x86) by the guest.
    let bytes = unsafe { std::slice::from_raw_parts(rip as *const u8, (end - rip) as usize) };

    let mut dec = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let mut insns: Vec<Instruction> = Vec::new();
    let mut refused: Option<usize> = None;
    while dec.can_decode() && insns.len() < MAX_INSNS {
        let ins = dec.decode();
        if ins.is_invalid() {
            if dec.last_error() == DecoderError::NoMoreBytes {
                if insns.is_empty() {
                    return Err(TransError::Fault(end));
                }
                break;
            }
            refused = Some(insns.len());
            insns.push(ins);
            break;
        }
        let fc = ins.flow_control();
        insns.push(ins);
        if fc != FlowControl::Next || matches!(ins.mnemonic(), Mnemonic::Syscall | Mnemonic::Cpuid)
        {
            break;
        }
        if !ins.cpuid_features().iter().all(|f| model.allows(*f)) || needs_exit(&ins) {
            break;
        }
    }
    let last = *insns.last().unwrap();
    let after_last = last.next_ip();

    // Stubs needed by the last instruction.
    let mut stub_targets: Vec<u64> = Vec::new();
    let last_refused = refused.is_some() || refusal(&last, model).is_some();
    if !last_refused {
        match last.flow_control() {
            FlowControl::ConditionalBranch if last.op0_kind() == OpKind::NearBranch64 => {
                stub_targets.push(last.near_branch_target());
                stub_targets.push(after_last);
            }
            FlowControl::UnconditionalBranch | FlowControl::Call
                if last.op0_kind() == OpKind::NearBranch64 =>
            {
                stub_targets.push(last.near_branch_target())
            }
            FlowControl::Next
                if !matches!(last.mnemonic(), Mnemonic::Syscall | Mnemonic::Cpuid) =>
            {
                stub_targets.push(after_last)
            }
            _ => {}
        }
    }

    let host = cache.reserve(rip, RESERVE).map_err(TransError::Internal)?;
    let host = (host + 15) & !15;
    let mut code: Vec<u8> = Vec::with_capacity(1024);
    for (i, t) in stub_targets.iter().enumerate() {
        let s = host + (i * STUB) as u64;
        code.extend_from_slice(&[0xcc, 0xcc, 0xcc, 0xe9, 0, 0, 0, 0]);
        gs_mov_store(&mut code, 0, off::SAVE_RAX);
        code.extend_from_slice(&[0x48, 0x8d, 0x05, 8, 0, 0, 0]);
        gs_jmp(&mut code, off::EXIT_FN);
        code.extend_from_slice(&t.to_le_bytes());
        code.extend_from_slice(&(s + 4).to_le_bytes());
        debug_assert_eq!(code.len(), (i + 1) * STUB);
    }
    let stub = |i: usize| host + (i * STUB) as u64 + 3;
    let entry = host + code.len() as u64;

    let mut maps = Vec::with_capacity(insns.len());
    let mut tail = Tail::None;
    for (n, ins) in insns.iter().enumerate() {
        let start = code.len();
        let at = host + start as u64;
        let mut kind = Kind::Plain;
        let is_last = n + 1 == insns.len();
        if let Some(why) = if Some(n) == refused {
            Some("invalid encoding".to_string())
        } else {
            refusal(ins, model)
        } {
            crate::log::unimp(format_args!(
                "unsupported instruction at {:#x}: {} ({})",
                ins.ip(),
                if ins.is_invalid() {
                    "(bad)".to_string()
                } else {
                    describe(ins)
                },
                why
            ));
            special_exit(&mut code, exit::SIGILL, ins.ip(), None);
        } else if ins.mnemonic() == Mnemonic::Syscall {
            special_exit(&mut code, exit::SYSCALL, ins.next_ip(), None);
        } else if ins.mnemonic() == Mnemonic::Cpuid {
            special_exit(&mut code, exit::CPUID, ins.next_ip(), None);
        } else {
            match ins.flow_control() {
                FlowControl::Next => {
                    let off = (ins.ip() - rip) as usize;
                    if ins.is_ip_rel_memory_operand() || ins.segment_prefix() == Register::GS {
                        let mut i2 = *ins;
                        if i2.segment_prefix() == Register::GS {
                            i2.set_segment_prefix(Register::None);
                        }
                        let mut enc = Encoder::new(64);
                        enc.encode(&i2, at).map_err(|e| {
                            TransError::Internal(format!("re-encoding {:#x}: {e}", ins.ip()))
                        })?;
                        code.extend_from_slice(&enc.take_buffer());
                    } else {
                        code.extend_from_slice(&bytes[off..off + ins.len()]);
                    }
                    if is_last {
                        tail = Tail::Fall(ins.next_ip());
                    }
                }
                FlowControl::ConditionalBranch => {
                    let code_byte = match ins.code() {
                        Code::Loopne_rel8_64_RCX | Code::Loopne_rel8_64_ECX => Some(0xe0),
                        Code::Loope_rel8_64_RCX | Code::Loope_rel8_64_ECX => Some(0xe1),
                        Code::Loop_rel8_64_RCX | Code::Loop_rel8_64_ECX => Some(0xe2),
                        Code::Jrcxz_rel8_64 | Code::Jecxz_rel8_64 => Some(0xe3),
                        _ => None,
                    };
                    if let Some(op) = code_byte {
                        if matches!(
                            ins.code(),
                            Code::Loopne_rel8_64_ECX
                                | Code::Loope_rel8_64_ECX
                                | Code::Loop_rel8_64_ECX
                                | Code::Jecxz_rel8_64
                        ) {
                            code.push(0x67);
                        }
                        code.extend_from_slice(&[op, 0x02, 0xeb, 0x05, 0xe9]);
                    } else {
                        let cc = ins.condition_code() as u8 - ConditionCode::o as u8;
                        code.extend_from_slice(&[0x0f, 0x80 + cc]);
                    }
                    let e = host + code.len() as u64 + 4;
                    rel32(&mut code, e, stub(0));
                    code.push(0xe9);
                    let e = host + code.len() as u64 + 4;
                    rel32(&mut code, e, stub(1));
                }
                FlowControl::UnconditionalBranch => {
                    code.push(0xe9);
                    let e = host + code.len() as u64 + 4;
                    rel32(&mut code, e, stub(0));
                }
                FlowControl::Call => {
                    push_ret(&mut code, ins.next_ip());
                    code.push(0xe9);
                    let e = host + code.len() as u64 + 4;
                    rel32(&mut code, e, stub(0));
                }
                FlowControl::Return => {
                    gs_mov_store(&mut code, 1, off::SAVE_RCX);
                    code.push(0x59);
                    if ins.code() == Code::Retnq_imm16 {
                        code.extend_from_slice(&[0x48, 0x8d, 0xa4, 0x24]);
                        code.extend_from_slice(&(ins.immediate16() as u32).to_le_bytes());
                    }
                    gs_jmp(&mut code, off::IBL_FN);
                    kind = Kind::RcxSaved;
                }
                FlowControl::IndirectBranch | FlowControl::IndirectCall => {
                    gs_mov_store(&mut code, 1, off::SAVE_RCX);
                    let m = mov_rcx(ins, host + code.len() as u64).map_err(|e| {
                        TransError::Internal(format!("indirect branch at {:#x}: {e}", ins.ip()))
                    })?;
                    code.extend_from_slice(&m);
                    if ins.flow_control() == FlowControl::IndirectCall {
                        push_ret(&mut code, ins.next_ip());
                    }
                    gs_jmp(&mut code, off::IBL_FN);
                    kind = Kind::RcxSaved;
                }
                FlowControl::Interrupt => {
                    let vector = match ins.mnemonic() {
                        Mnemonic::Int3 => 3,
                        Mnemonic::Int1 => 1,
                        Mnemonic::Int => ins.immediate8() as u32,
                        _ => 4,
                    };
                    special_exit(&mut code, exit::INT, ins.next_ip(), Some(vector));
                }
                _ => special_exit(&mut code, exit::SIGILL, ins.ip(), None),
            }
        }
        maps.push(InsnMap {
            host_off: start as u32,
            host_len: (code.len() - start) as u32,
            guest: ins.ip(),
            kind,
        });
    }
    if let Tail::Fall(next) = tail {
        code.push(0xe9);
        let e = host + code.len() as u64 + 4;
        rel32(
            &mut code,
            e,
            stub(stub_targets.iter().position(|t| *t == next).unwrap_or(0)),
        );
    }
    if code.len() as u64 > RESERVE - 16 {
        return Err(TransError::Internal(format!("block at {rip:#x} too large")));
    }
    // SAFETY: [host, host+len) was reserved in a RWX arena and is not yet reachable.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), host as *mut u8, code.len()) };
    crate::log::in_asm(rip, &insns);
    Ok(cache.commit(Block {
        guest: rip,
        guest_end: after_last,
        entry,
        host,
        host_len: code.len() as u64,
        insns: maps,
        incoming: Vec::new(),
        dead: false,
    }))
}

/// Instructions that end a block because they leave through the dispatcher.
fn needs_exit(ins: &Instruction) -> bool {
    is_segment_write(ins)
        || matches!(
            ins.mnemonic(),
            Mnemonic::Rdfsbase
                | Mnemonic::Rdgsbase
                | Mnemonic::Wrfsbase
                | Mnemonic::Wrgsbase
                | Mnemonic::Sysenter
                | Mnemonic::Swapgs
                | Mnemonic::Ud0
                | Mnemonic::Ud1
                | Mnemonic::Ud2
                | Mnemonic::Xbegin
        )
}

/// Why the translator refuses an instruction (the guest gets SIGILL), if it does.
fn refusal(ins: &Instruction, model: &CpuModel) -> Option<String> {
    if ins.is_invalid() {
        return Some("invalid encoding".into());
    }
    if let Some(f) = ins.cpuid_features().iter().find(|f| !model.allows(**f)) {
        return Some(format!("CPU model {} lacks {:?}", model.name, f));
    }
    match ins.mnemonic() {
        Mnemonic::Syscall | Mnemonic::Cpuid => None,
        Mnemonic::Rdfsbase | Mnemonic::Rdgsbase | Mnemonic::Wrfsbase | Mnemonic::Wrgsbase => {
            Some("FSGSBASE is not enabled for user space (AT_HWCAP2)".into())
        }
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => Some("undefined instruction".into()),
        Mnemonic::Sysenter => Some("sysenter is not a 64-bit system call".into()),
        Mnemonic::Xbegin => Some("transactional memory".into()),
        _ if is_segment_write(ins) => Some("segment register loads are not supported".into()),
        _ => match ins.flow_control() {
            FlowControl::IndirectBranch | FlowControl::IndirectCall
                if !matches!(ins.code(), Code::Jmp_rm64 | Code::Call_rm64) =>
            {
                Some("far or 16-bit indirect branch".into())
            }
            FlowControl::Return if !matches!(ins.code(), Code::Retnq | Code::Retnq_imm16) => {
                Some("far, 16-bit or interrupt return".into())
            }
            FlowControl::UnconditionalBranch
            | FlowControl::Call
            | FlowControl::ConditionalBranch
                if ins.op0_kind() != OpKind::NearBranch64 =>
            {
                Some("far branch".into())
            }
            FlowControl::XbeginXabortXend | FlowControl::Exception => Some("not supported".into()),
            _ => None,
        },
    }
}
