use super::*;
use std::cell::Cell;
use std::rc::Rc;

#[test]
fn block_on_runs_spawned_tasks() {
    let lp = EventLoop::with_defaults().unwrap();
    let hits = Rc::new(Cell::new(0));
    let v = lp.block_on({
        let hits = hits.clone();
        async move {
            let mut hs = Vec::new();
            for i in 0..10 {
                let hits = hits.clone();
                hs.push(spawn_local(async move {
                    yield_now().await;
                    hits.set(hits.get() + 1);
                    i
                }));
            }
            let mut sum = 0;
            for h in hs {
                sum += h.await;
            }
            sum
        }
    });
    assert_eq!(v, 45);
    assert_eq!(hits.get(), 10);
}

#[test]
fn sleep_completes_through_the_ring() {
    let lp = EventLoop::with_defaults().unwrap();
    let t = std::time::Instant::now();
    lp.block_on(sleep(Duration::from_millis(20)));
    assert!(t.elapsed() >= Duration::from_millis(15));
}

#[test]
fn poll_fd_sees_a_pipe_become_readable() {
    let lp = EventLoop::with_defaults().unwrap();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (r, w) = (fds[0], fds[1]);
    let got = lp.block_on(async move {
        let waiter = spawn_local(poll_fd(r, libc::POLLIN));
        sleep(Duration::from_millis(5)).await;
        assert!(!waiter.is_finished());
        unsafe { libc::write(w, b"x".as_ptr().cast(), 1) };
        waiter.await
    });
    assert!(got.unwrap() & libc::POLLIN != 0);
    unsafe {
        libc::close(r);
        libc::close(w);
    }
}

#[test]
fn iothread_runs_posted_work_and_returns_results() {
    let t = IoThread::spawn("t0", EventLoopConfig::default()).unwrap();
    let h = t.handle();
    let v = h.run(|| async {
        sleep(Duration::from_millis(1)).await;
        std::thread::current().name().map(str::to_string)
    });
    assert_eq!(v.flatten().as_deref(), Some("t0"));
    t.join();
}

#[test]
fn wake_from_another_thread_interrupts_a_sleeping_loop() {
    let lp = EventLoop::with_defaults().unwrap();
    let (tx, rx) = futures::channel::oneshot::channel::<u32>();
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        tx.send(7).unwrap();
    });
    assert_eq!(lp.block_on(rx).unwrap(), 7);
    th.join().unwrap();
}

#[test]
fn dropped_poll_is_cancelled_without_blocking() {
    let lp = EventLoop::with_defaults().unwrap();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    lp.block_on(async move {
        let fut = poll_fd(fds[0], libc::POLLIN);
        let mut fut = Box::pin(fut);
        // Poll once so the SQE is queued, then drop it.
        let _ = futures::poll!(fut.as_mut());
        drop(fut);
        sleep(Duration::from_millis(2)).await;
    });
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

#[test]
fn embedded_loop_signals_its_notify_fd_for_ring_and_remote_work() {
    let lp = EventLoop::with_defaults().unwrap();
    let fd = lp.notify_fd().unwrap();
    let readable = |ms: i32| {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    };
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    lp.spawn(async move {
        sleep(Duration::from_millis(10)).await;
        d.set(true);
    });
    lp.run_nonblocking();
    assert!(!done.get());
    // The timer's completion on the ring makes the fd readable.
    assert!(
        readable(2000),
        "ring completion did not signal the notify fd"
    );
    lp.run_nonblocking();
    assert!(done.get());
    // Work posted from another thread signals it too.
    let h = lp.handle();
    assert!(!readable(0));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || h.spawn(move || async move { tx.send(1).unwrap() }))
        .join()
        .unwrap();
    assert!(readable(2000), "remote work did not signal the notify fd");
    lp.run_nonblocking();
    assert_eq!(rx.try_recv().unwrap(), 1);
}
