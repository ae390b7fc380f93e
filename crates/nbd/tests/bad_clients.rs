//! Misbehaving clients over raw sockets: each gets the protocol's error reply or a
//! closed connection, and the server keeps serving everyone else.

mod common;
use common::*;
use oxemu_nbd::proto::{
    self, be16, be32, be64, cflag, chunk, cmd, err, opt, rep, OptionHeader, Request,
};
use std::os::unix::net::UnixStream;

/// Reads the greeting and sends the client flags (fixed newstyle, no zeroes).
fn greet(s: &mut UnixStream) {
    let g = read_n(s, 18);
    assert_eq!(be64(&g), proto::NBDMAGIC);
    assert_eq!(be64(&g[8..]), proto::IHAVEOPT);
    send(s, &3u32.to_be_bytes());
}

fn send_opt(s: &mut UnixStream, option: u32, data: &[u8]) {
    send(
        s,
        &OptionHeader {
            option,
            len: data.len() as u32,
        }
        .encode(),
    );
    send(s, data);
}

/// Reads one option reply: (option, type, data).
fn opt_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let h = read_n(s, 20);
    assert_eq!(be64(&h), proto::OPT_REPLY_MAGIC);
    let len = be32(&h[16..]) as usize;
    (be32(&h[8..]), be32(&h[12..]), read_n(s, len))
}

fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

/// Full handshake into transmission; `extra` options (each acked) go first.
fn connect(srv: &Server, extra: &[u32]) -> UnixStream {
    let mut s = srv.connect();
    greet(&mut s);
    for &o in extra {
        send_opt(&mut s, o, &[]);
        assert_eq!(opt_reply(&mut s).1, rep::ACK);
    }
    send_opt(&mut s, opt::GO, &go_data(""));
    loop {
        let (_, ty, _) = opt_reply(&mut s);
        if ty == rep::ACK {
            break;
        }
        assert_eq!(ty, rep::INFO);
    }
    s
}

fn request(s: &mut UnixStream, ty: u16, flags: u16, cookie: u64, offset: u64, len: u64, ext: bool) {
    send(
        s,
        &Request {
            flags,
            ty,
            cookie,
            offset,
            len,
        }
        .encode(ext),
    );
}

/// Reads a simple reply: (error, cookie).
fn simple_reply(s: &mut UnixStream) -> (u32, u64) {
    let r = read_n(s, 16);
    assert_eq!(be32(&r), proto::SIMPLE_REPLY_MAGIC);
    (be32(&r[4..]), be64(&r[8..]))
}

fn server(d: &std::path::Path, args: &[&str]) -> Server {
    let img = make_image(d);
    let mut a = vec!["-t", "-e", "0"];
    a.extend_from_slice(args);
    start(d, false, &a, &img)
}

/// A healthy client can still read the first sector.
fn still_serving(srv: &Server) {
    let mut s = connect(srv, &[]);
    request(&mut s, cmd::READ, 0, 7, 0, 512, false);
    assert_eq!(simple_reply(&mut s), (0, 7));
    assert_eq!(read_n(&mut s, 512)[0], 0xEB);
}

#[test]
fn bad_option_magic_closes_the_connection() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = srv.connect();
    greet(&mut s);
    send(&mut s, &[0x55; 16]);
    assert!(closed(&mut s));
    still_serving(&srv);
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = srv.connect();
    read_n(&mut s, 18);
    send(&mut s, &0x80u32.to_be_bytes());
    assert!(closed(&mut s));
    still_serving(&srv);
}

#[test]
fn options_in_the_wrong_state_get_error_replies() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = srv.connect();
    greet(&mut s);
    // Meta contexts need structured replies first.
    let mut q = go_data("");
    q.truncate(4);
    q.extend_from_slice(&0u32.to_be_bytes());
    send_opt(&mut s, opt::LIST_META_CONTEXT, &q);
    assert_eq!(opt_reply(&mut s).1, rep::ERR_INVALID);
    // STARTTLS on a server without TLS.
    send_opt(&mut s, opt::STARTTLS, &[]);
    assert_eq!(opt_reply(&mut s).1, rep::ERR_POLICY);
    // STRUCTURED_REPLY with data, then twice.
    send_opt(&mut s, opt::STRUCTURED_REPLY, &[1]);
    assert_eq!(opt_reply(&mut s).1, rep::ERR_INVALID);
    send_opt(&mut s, opt::STRUCTURED_REPLY, &[]);
    assert_eq!(opt_reply(&mut s).1, rep::ACK);
    send_opt(&mut s, opt::STRUCTURED_REPLY, &[]);
    assert_eq!(opt_reply(&mut s).1, rep::ERR_INVALID);
    // Unknown option, unknown export, malformed GO.
    send_opt(&mut s, 1000, b"xyz");
    assert_eq!(opt_reply(&mut s).1, rep::ERR_UNSUP);
    send_opt(&mut s, opt::GO, &go_data("nope"));
    assert_eq!(opt_reply(&mut s).1, rep::ERR_UNKNOWN);
    send_opt(&mut s, opt::INFO, &[0, 0, 0, 9, b'x']);
    assert_eq!(opt_reply(&mut s).1, rep::ERR_INVALID);
    // Oversized option: drained and refused; the session continues.
    send_opt(&mut s, opt::INFO, &vec![0u8; 100 << 10]);
    assert_eq!(opt_reply(&mut s).1, rep::ERR_TOO_BIG);
    send_opt(&mut s, opt::ABORT, &[]);
    assert_eq!(opt_reply(&mut s).1, rep::ACK);
    assert!(closed(&mut s));
    still_serving(&srv);
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut other = connect(&srv, &[]);
    let mut s = connect(&srv, &[]);
    send(&mut s, &[0xAA; 28]);
    assert!(closed(&mut s));
    request(&mut other, cmd::READ, 0, 1, 0, 4096, false);
    assert_eq!(simple_reply(&mut other), (0, 1));
    read_n(&mut other, 4096);
}

#[test]
fn out_of_range_requests_get_einval_or_enospc() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = connect(&srv, &[]);
    request(&mut s, cmd::READ, 0, 1, (4 << 20) - 512, 1024, false);
    assert_eq!(simple_reply(&mut s), (err::EINVAL, 1));
    request(&mut s, cmd::READ, 0, 2, u64::MAX - 10, 512, false);
    assert_eq!(simple_reply(&mut s), (err::EINVAL, 2));
    request(&mut s, cmd::WRITE, 0, 3, 4 << 20, 512, false);
    send(&mut s, &[0u8; 512]);
    assert_eq!(simple_reply(&mut s), (err::ENOSPC, 3));
    request(&mut s, cmd::WRITE_ZEROES, 0, 4, 1 << 20, 8 << 20, false);
    assert_eq!(simple_reply(&mut s), (err::ENOSPC, 4));
    // Unknown command and unknown flags.
    request(&mut s, 77, 0, 5, 0, 0, false);
    assert_eq!(simple_reply(&mut s), (err::EINVAL, 5));
    request(&mut s, cmd::READ, 0x4000, 6, 0, 512, false);
    assert_eq!(simple_reply(&mut s), (err::EINVAL, 6));
    // Block status without negotiated contexts.
    request(&mut s, cmd::BLOCK_STATUS, 0, 7, 0, 512, false);
    assert_eq!(simple_reply(&mut s), (err::EINVAL, 7));
    // The connection still works.
    request(&mut s, cmd::READ, 0, 8, 0, 512, false);
    assert_eq!(simple_reply(&mut s), (0, 8));
}

#[test]
fn writes_to_a_read_only_export_get_eperm() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &["-r"]);
    let mut s = connect(&srv, &[]);
    request(&mut s, cmd::WRITE, 0, 1, 0, 512, false);
    send(&mut s, &[1u8; 512]);
    assert_eq!(simple_reply(&mut s), (err::EPERM, 1));
    request(&mut s, cmd::TRIM, 0, 2, 0, 512, false);
    assert_eq!(simple_reply(&mut s), (err::EPERM, 2));
    request(&mut s, cmd::WRITE_ZEROES, 0, 3, 0, 512, false);
    assert_eq!(simple_reply(&mut s), (err::EPERM, 3));
    still_serving(&srv);
}

#[test]
fn oversized_write_is_refused_and_the_connection_closed() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = connect(&srv, &[]);
    request(&mut s, cmd::WRITE, 0, 1, 0, 64 << 20, false);
    assert_eq!(simple_reply(&mut s), (err::EINVAL, 1));
    assert!(closed(&mut s));
    // An oversized read is refused without closing.
    let mut s = connect(&srv, &[]);
    request(&mut s, cmd::READ, 0, 2, 0, 33 << 20, false);
    assert_eq!(simple_reply(&mut s), (err::EINVAL, 2));
    still_serving(&srv);
}

#[test]
fn truncated_requests_and_mid_request_disconnects_leave_the_server_serving() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = connect(&srv, &[]);
    send(
        &mut s,
        &Request {
            flags: 0,
            ty: cmd::READ,
            cookie: 1,
            offset: 0,
            len: 512,
        }
        .encode(false)[..10],
    );
    drop(s);
    let mut s = connect(&srv, &[]);
    request(&mut s, cmd::WRITE, 0, 2, 0, 1 << 20, false);
    send(&mut s, &[9u8; 4096]);
    drop(s);
    // Many reads in flight, then a disconnect before reading the replies.
    let mut s = connect(&srv, &[]);
    for i in 0..64 {
        request(&mut s, cmd::READ, 0, i, 0, 1 << 20, false);
    }
    drop(s);
    let mut s = srv.connect();
    read_n(&mut s, 10);
    drop(s);
    still_serving(&srv);
}

#[test]
fn pipelined_requests_all_complete_with_their_cookies() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = connect(&srv, &[opt::STRUCTURED_REPLY]);
    let n = 200u64;
    for i in 0..n {
        request(&mut s, cmd::READ, cflag::DF, i, i * 4096, 4096, false);
    }
    let mut seen = vec![false; n as usize];
    for _ in 0..n {
        let h = read_n(&mut s, 20);
        assert_eq!(be32(&h), proto::STRUCTURED_REPLY_MAGIC);
        assert_eq!(be16(&h[4..]), chunk::FLAG_DONE);
        assert_eq!(be16(&h[6..]), chunk::OFFSET_DATA);
        let cookie = be64(&h[8..]);
        let body = read_n(&mut s, be32(&h[16..]) as usize);
        assert_eq!(be64(&body), cookie * 4096);
        assert!(!seen[cookie as usize]);
        seen[cookie as usize] = true;
    }
    request(&mut s, cmd::DISC, 0, 0, 0, 0, false);
    assert!(closed(&mut s));
}

#[test]
fn structured_read_of_zeroes_is_a_hole_chunk() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = connect(&srv, &[opt::STRUCTURED_REPLY]);
    request(&mut s, cmd::READ, 0, 3, 2 << 20, 1 << 20, false);
    let h = read_n(&mut s, 20);
    assert_eq!(be16(&h[4..]), chunk::FLAG_DONE);
    assert_eq!(be16(&h[6..]), chunk::OFFSET_HOLE);
    let body = read_n(&mut s, 12);
    assert_eq!((be64(&body), be32(&body[8..])), (2 << 20, 1 << 20));
}

#[test]
fn extended_headers_carry_64_bit_requests_and_replies() {
    let d = tempfile::tempdir().unwrap();
    let srv = server(d.path(), &[]);
    let mut s = srv.connect();
    greet(&mut s);
    send_opt(&mut s, opt::EXTENDED_HEADERS, &[]);
    assert_eq!(opt_reply(&mut s).1, rep::ACK);
    let mut q = 0u32.to_be_bytes().to_vec();
    q.extend_from_slice(&1u32.to_be_bytes());
    q.extend_from_slice(&15u32.to_be_bytes());
    q.extend_from_slice(b"base:allocation");
    send_opt(&mut s, opt::SET_META_CONTEXT, &q);
    let (_, ty, data) = opt_reply(&mut s);
    assert_eq!(ty, rep::META_CONTEXT);
    let ctx = be32(&data);
    assert_eq!(&data[4..], b"base:allocation");
    assert_eq!(opt_reply(&mut s).1, rep::ACK);
    send_opt(&mut s, opt::GO, &go_data(""));
    let (_, ty, info) = opt_reply(&mut s);
    assert_eq!(ty, rep::INFO);
    let flags = be16(&info[10..]);
    assert_ne!(flags & proto::tflag::SEND_BLOCK_STATUS_PAYLOAD, 0);
    while opt_reply(&mut s).1 != rep::ACK {}
    // Write, then flush: NONE chunks with DONE.
    request(&mut s, cmd::WRITE, cflag::FUA, 1, 8192, 512, true);
    send(&mut s, &[0x42; 512]);
    let h = read_n(&mut s, 32);
    assert_eq!(be32(&h), proto::EXT_REPLY_MAGIC);
    assert_eq!(
        (be16(&h[4..]), be16(&h[6..]), be64(&h[8..])),
        (chunk::FLAG_DONE, chunk::NONE, 1)
    );
    // Block status over the whole disk: one 64-bit extent list.
    request(&mut s, cmd::BLOCK_STATUS, 0, 2, 0, 4 << 20, true);
    let h = read_n(&mut s, 32);
    assert_eq!(be16(&h[6..]), chunk::BLOCK_STATUS_EXT);
    let body = read_n(&mut s, be64(&h[24..]) as usize);
    assert_eq!(be32(&body), ctx);
    let count = be32(&body[4..]) as usize;
    let total: u64 = (0..count).map(|i| be64(&body[8 + 16 * i..])).sum();
    assert_eq!(total, 4 << 20);
    // An error in extended mode is an ERROR chunk.
    request(&mut s, cmd::READ, 0, 3, 8 << 20, 512, true);
    let h = read_n(&mut s, 32);
    assert_eq!(be16(&h[6..]), chunk::ERROR);
    let body = read_n(&mut s, be64(&h[24..]) as usize);
    assert_eq!(be32(&body), err::EINVAL);
}
