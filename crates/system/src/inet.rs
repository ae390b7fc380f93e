//! TCP addresses for socket chardevs, resolved and bound as QEMU does (getaddrinfo,
//! every address tried in turn), with QEMU's error texts.

use std::ffi::{CStr, CString};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Which address families `ipv4=` and `ipv6=` allow.
#[derive(Clone, Copy, Debug, Default)]
pub struct Family {
    /// `ipv4=on`.
    pub v4: bool,
    /// `ipv6=on`.
    pub v6: bool,
}

/// Resolves `host`:`port` (a number or a service name). An empty host means every
/// local address for a server, as in QEMU.
pub fn resolve(
    host: &str,
    port: &str,
    fam: Family,
    server: bool,
) -> Result<Vec<SocketAddr>, String> {
    let fail = |m: &str| format!("address resolution failed for {host}:{port}: {m}");
    let node = CString::new(host).map_err(|_| fail("Name or service not known"))?;
    let service = CString::new(port).map_err(|_| fail("Servname not supported for ai_socktype"))?;
    // SAFETY: a zeroed addrinfo is a valid "no hints" value; fields are set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_family = match (fam.v4, fam.v6) {
        (true, false) => libc::AF_INET,
        (false, true) => libc::AF_INET6,
        _ => libc::AF_UNSPEC,
    };
    if server {
        hints.ai_flags = libc::AI_PASSIVE;
    }
    let node_ptr = if server && host.is_empty() {
        std::ptr::null()
    } else {
        node.as_ptr()
    };
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C strings (or null node), hints on the stack, res written by libc.
    let rc = unsafe { libc::getaddrinfo(node_ptr, service.as_ptr(), &hints, &mut res) };
    if rc != 0 {
        // SAFETY: gai_strerror returns a static string for any code.
        let m = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) };
        return Err(fail(&m.to_string_lossy()));
    }
    let mut out = Vec::new();
    let mut p = res;
    while !p.is_null() {
        // SAFETY: p walks the list getaddrinfo returned; each ai_addr has ai_addrlen bytes.
        unsafe {
            let ai = &*p;
            match ai.ai_family {
                libc::AF_INET => {
                    let a = &*(ai.ai_addr as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    out.push(SocketAddr::from((ip, u16::from_be(a.sin_port))));
                }
                libc::AF_INET6 => {
                    let a = &*(ai.ai_addr as *const libc::sockaddr_in6);
                    let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                    out.push(SocketAddr::from((ip, u16::from_be(a.sin6_port))));
                }
                _ => {}
            }
            p = ai.ai_next;
        }
    }
    // SAFETY: res came from a successful getaddrinfo.
    unsafe { libc::freeaddrinfo(res) };
    Ok(out)
}

/// `e` as QEMU prints an errno: the strerror text, without Rust's " (os error N)".
pub fn os_text(e: &std::io::Error) -> String {
    let m = e.to_string();
    match m.rfind(" (os error ") {
        Some(i) => m[..i].to_string(),
        None => m,
    }
}

/// Listens on the first address that binds.
pub fn listen(addrs: &[SocketAddr]) -> Result<TcpListener, String> {
    let mut last = String::from("Address family not supported by protocol");
    for a in addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = os_text(&e),
        }
    }
    Err(format!("Failed to find an available port: {last}"))
}

/// Connects to the first address that answers.
pub fn connect(host: &str, port: &str, addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("Address family not supported by protocol");
    for a in addrs {
        match TcpStream::connect(a) {
            Ok(s) => return Ok(s),
            Err(e) => last = os_text(&e),
        }
    }
    Err(format!("Failed to connect to '{host}:{port}': {last}"))
}
