use super::*;
use crate::driver::BlockDriverExt;

/// A node that counts requests and always succeeds.
#[derive(Default)]
struct Sink {
    n: std::sync::atomic::AtomicU32,
}

#[async_trait(?Send)]
impl BlockDriver for Sink {
    fn info(&self) -> NodeInfo {
        NodeInfo::default()
    }
    fn size(&self) -> u64 {
        1 << 20
    }
    async fn readv(&self, _: u64, _: &mut IoVecMut<'_>) -> BlockResult<()> {
        self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    async fn writev(&self, _: u64, _: &IoVec<'_>, _: WriteFlags) -> BlockResult<()> {
        self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    async fn discard(&self, _: u64, _: u64) -> BlockResult<()> {
        Ok(())
    }
    async fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> BlockResult<()> {
        Ok(())
    }
}

fn rules(cfg: &str) -> Rules {
    let mut r = Rules::default();
    parse_config(cfg, &mut r).unwrap();
    r
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    crate::EventLoop::with_defaults().unwrap().block_on(f)
}

fn code(r: BlockResult<()>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap())
}

#[test]
fn config_file_syntax_and_errors() {
    let r = rules(
        "# comment\n\n[inject-error]\nevent = \"l2_update\"\nerrno = \"28\"\nonce =\"on\"\nsector = \"8\"\niotype = \"write\"\n[set-state]\nevent = \"l1_update\"\nstate = \"1\"\nnew_state = \"2\"\n",
    );
    assert_eq!(r.inject.len(), 1);
    let i = &r.inject[0];
    assert_eq!(i.event, DebugEvent::L2Update);
    assert_eq!((i.errno, i.once, i.offset), (28, true, Some(4096)));
    assert_eq!(i.iotype_mask, 1 << IoType::Write as u32);
    assert_eq!(
        r.set_state,
        [SetState {
            event: DebugEvent::L1Update,
            state: 1,
            new_state: 2
        }]
    );
    let err = |cfg: &str| {
        let mut r = Rules::default();
        parse_config(cfg, &mut r).unwrap_err()
    };
    // QEMU 7.2's texts (qemu-img info blkdebug:CONF:IMG), without file or line.
    assert_eq!(
        err("[inject-error]\nerrno = \"5\"\n"),
        "Missing event name for rule"
    );
    assert_eq!(
        err("[inject-error]\nevent = \"nope\"\n"),
        "invalid parameter value: nope"
    );
    assert_eq!(
        err("[inject-error]\nevent = l2_load\n"),
        "invalid parameter value: "
    );
    assert_eq!(
        err("[inject-error]\nerrno=\"5\"\n"),
        "Invalid parameter 'errno=\"5\"'"
    );
    assert_eq!(err("event = \"l2_load\"\n"), "no group defined");
    assert_eq!(err("garbage\n"), "no group defined");
    assert_eq!(err("[bogus]\n"), "There is no option group 'bogus'");
    assert_eq!(
        err("[inject-error]\nevent = \"l2_load\"\nerrno = \"x\"\n"),
        "Parameter 'errno' expects a number"
    );
    assert_eq!(
        err("[inject-error]\nevent = \"l2_load\"\nwhat = \"1\"\n"),
        "Invalid parameter 'what'"
    );
    assert_eq!(
        err("[inject-error]\nevent = \"l2_load\"\niotype = \"frob\"\n"),
        "invalid parameter value: frob"
    );
    assert_eq!(
        err("[set-state]\nevent = \"x\"\n"),
        "invalid parameter value: x"
    );
    // `[group "id"]` and a long value are accepted.
    let r = rules("[set-state \"a\"]\nevent = \"l1_update\"\nnew_state = \"3\"\n");
    assert_eq!(r.set_state[0].new_state, 3);
}

#[test]
fn a_rule_acts_only_after_its_event_and_keeps_failing_unless_once() {
    let sink = Arc::new(Sink::default());
    let d = Blkdebug::new(sink.clone(), rules("[inject-error]\nevent = \"l2_load\"\n"));
    run(async {
        assert_eq!(code(d.read_at(0, &mut [0; 512]).await), None);
        d.debug_event(DebugEvent::L2Load);
        assert_eq!(code(d.read_at(0, &mut [0; 512]).await), Some(libc::EIO));
        assert_eq!(code(d.write_at(0, &[0; 512]).await), Some(libc::EIO));
        assert_eq!(code(d.flush().await), Some(libc::EIO));
        // Not once: still active. block-status is not in the default mask.
        assert_eq!(code(d.read_at(0, &mut [0; 512]).await), Some(libc::EIO));
        assert!(d.block_status(0, 512).await.is_ok());
    });
    assert_eq!(sink.n.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn sector_iotype_and_once() {
    let d = Blkdebug::new(
        Arc::new(Sink::default()),
        rules("[inject-error]\nevent = \"read_aio\"\nsector = \"2\"\niotype = \"read\"\nonce = \"on\"\nerrno = \"28\"\n"),
    );
    run(async {
        d.debug_event(DebugEvent::ReadAio);
        assert_eq!(code(d.read_at(0, &mut [0; 1024]).await), None);
        assert_eq!(code(d.write_at(1024, &[0; 512]).await), None);
        assert_eq!(code(d.flush().await), None);
        assert_eq!(
            code(d.read_at(512, &mut [0; 1024]).await),
            Some(libc::ENOSPC)
        );
        assert_eq!(code(d.read_at(512, &mut [0; 1024]).await), None);
        d.debug_event(DebugEvent::ReadAio);
        assert_eq!(
            code(d.read_at(512, &mut [0; 1024]).await),
            None,
            "once deletes the rule"
        );
    });
}

#[test]
fn states_select_rules_and_a_new_event_replaces_the_active_set() {
    // Count writes with set-state on pwritev_done; fail the third write.
    let d = Blkdebug::new(
        Arc::new(Sink::default()),
        rules(
            "[set-state]\nevent = \"pwritev_done\"\nstate = \"1\"\nnew_state = \"2\"\n\
             [set-state]\nevent = \"pwritev_done\"\nstate = \"2\"\nnew_state = \"3\"\n\
             [inject-error]\nevent = \"pwritev\"\nstate = \"3\"\nonce = \"on\"\n\
             [inject-error]\nevent = \"l1_update\"\niotype = \"flush\"\n",
        ),
    );
    run(async {
        assert_eq!(code(d.write_at(0, &[0; 512]).await), None);
        assert_eq!(d.state(), 2);
        assert_eq!(code(d.write_at(0, &[0; 512]).await), None);
        assert_eq!(d.state(), 3);
        assert_eq!(code(d.write_at(0, &[0; 512]).await), Some(libc::EIO));
        assert_eq!(d.state(), 3, "a failed write is not done");
        assert_eq!(code(d.write_at(0, &[0; 512]).await), None);
        assert_eq!(code(d.flush().await), None);
        d.debug_event(DebugEvent::L1Update);
        assert_eq!(code(d.flush().await), Some(libc::EIO));
        assert_eq!(
            code(d.write_at(0, &[0; 512]).await),
            None,
            "iotype=flush only"
        );
    });
}

#[test]
fn errno_zero_is_inert() {
    let d = Blkdebug::new(
        Arc::new(Sink::default()),
        rules("[inject-error]\nevent = \"none\"\nerrno = \"0\"\n"),
    );
    run(async {
        d.debug_event(DebugEvent::None);
        assert_eq!(code(d.read_at(0, &mut [0; 512]).await), None);
    });
}
