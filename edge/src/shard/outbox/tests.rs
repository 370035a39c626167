use super::*;

fn text(s: &'static str) -> OutFrame {
    OutFrame::Shared(Class::Live, codec::text_header(s.len()), Bytes::from_static(s.as_bytes()))
}

fn flatten(b: &WriteBatch) -> Vec<u8> {
    let mut out = Vec::new();
    for v in &b.iov[b.start..] {
        // SAFETY: the test's batch owns the memory behind every iovec.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) });
    }
    out
}

#[test]
fn batch_advances_across_partial_writes() {
    let mut b = WriteBatch::default();
    b.push(text("hello"));
    b.push(OutFrame::Whole(Class::Live, Bytes::from_static(b"\x8a\x00")));
    b.push(text("world"));
    b.seal();
    let all = flatten(&b);
    assert_eq!(all.len(), 7 + 2 + 7);
    assert_eq!(&all[..2], &[0x81, 5]);
    for cut in [1, 3, 6, 2] {
        let before = flatten(&b);
        b.advance(cut);
        assert_eq!(flatten(&b), before[cut..]);
    }
    b.advance(100);
    assert!(b.is_done());
}

#[test]
fn slow_consumer_is_closed_4008_and_nothing_more_is_queued() {
    let out = Outbox::new(-1, 64, 100);
    assert!(out.push_live(Bytes::from(vec![b'a'; 40])));
    assert!(!out.push_live(Bytes::from(vec![b'b'; 40])), "over 64 bytes");
    assert!(out.is_closing());
    let q = out.queue.borrow();
    assert_eq!(q.len(), 1, "only the close frame is left");
    let OutFrame::Whole(_, close) = &q[0] else { panic!("close frame") };
    assert_eq!(&close[2..4], &CLOSE_SLOW_CONSUMER.to_be_bytes());
    drop(q);
    assert!(!out.push_live(Bytes::from_static(b"x")));
    assert!(!out.push_text(Bytes::from_static(b"x")), "replies are refused once closing too");
}

#[test]
fn frame_count_bound_applies_too() {
    let out = Outbox::new(-1, 1 << 20, 2);
    assert!(out.push_live(Bytes::from_static(b"1")));
    assert!(out.push_live(Bytes::from_static(b"2")));
    assert!(!out.push_live(Bytes::from_static(b"3")));
    assert!(out.is_closing());
}

#[test]
fn replies_do_not_count_against_the_live_bound_but_keep_their_order() {
    let out = Outbox::new(-1, 64, 4);
    // A history page far over the live bound is queued whole.
    for i in 0..10u8 {
        assert!(out.push_text(Bytes::from(vec![b'0' + i; 40])), "reply {i}");
    }
    assert_eq!(out.reply_bytes(), 10 * 42);
    assert!(!out.is_closing());
    // Live traffic still has its own full allowance behind the replies.
    assert!(out.push_live(Bytes::from(vec![b'L'; 40])));
    assert!(!out.push_live(Bytes::from(vec![b'M'; 40])), "the live bound still holds");
    assert!(out.was_slow());

    let out = Outbox::new(-1, 1 << 20, 100);
    out.push_live(Bytes::from_static(b"live-1"));
    out.push_text(Bytes::from_static(b"reply-1"));
    out.push_live(Bytes::from_static(b"live-2"));
    let mut batch = WriteBatch::default();
    out.take_into(&mut batch);
    let all = flatten(&batch);
    let text = String::from_utf8_lossy(&all);
    let (a, b, c) = (text.find("live-1"), text.find("reply-1"), text.find("live-2"));
    assert!(a < b && b < c, "one FIFO for both classes: {text:?}");
    assert_eq!((out.reply_bytes(), out.live_bytes.get(), out.live_frames.get()), (0, 0, 0));
}

#[test]
fn a_write_is_stalled_only_while_pending_without_progress_past_the_limit() {
    let out = Outbox::new(-1, 1 << 20, 100);
    assert!(!out.write_stalled(10_000, 1_000), "not writing");
    out.writing.set(true);
    assert!(!out.write_stalled(10_000, 1_000), "first seen stuck: the clock starts");
    assert!(!out.write_stalled(11_000, 1_000), "exactly at the limit");
    assert!(out.write_stalled(11_001, 1_000));
    out.writes_done.set(1);
    assert!(!out.write_stalled(12_000, 1_000), "a write completed: progress");
    assert!(!out.write_stalled(12_500, 1_000), "stuck again, counted from here");
    assert!(out.write_stalled(13_600, 1_000));
    out.writing.set(false);
    assert!(!out.write_stalled(60_000, 1_000), "the writer left the write");
}

#[test]
fn an_idle_connection_gives_back_its_buffers_after_a_sweep_without_writes() {
    let out = Outbox::new(-1, 1 << 20, 100);
    out.push_text(Bytes::from_static(b"welcome"));
    let mut batch = WriteBatch::default();
    out.take_into(&mut batch);
    out.writes_done.set(1); // the welcome was written
    let held = |out: &Outbox| out.queue.borrow().capacity();
    let q = held(&out);
    assert!(q > 0, "the write left capacity");
    out.release_idle();
    assert_eq!(held(&out), q, "a write since the sweep before: kept");
    out.writing.set(true);
    out.release_idle();
    assert_eq!(held(&out), q, "inside a write: kept");
    out.writing.set(false);
    out.push_text(Bytes::from_static(b"queued"));
    out.release_idle();
    assert_eq!(held(&out), q, "something queued: the queue keeps its buffer");
    out.queue.borrow_mut().clear();
    out.reply_bytes.set(0);
    out.release_idle();
    assert_eq!(held(&out), 0, "no write for a whole sweep, nothing queued");
    assert!(out.push_text(Bytes::from_static(b"again")), "and it still takes frames");
}

/// Reads from `peer` until `want` bytes came.
async fn read_n(peer: &mut TcpStream, want: usize) -> Vec<u8> {
    use monoio::io::AsyncReadRent;
    let mut got = Vec::new();
    while got.len() < want {
        let (res, buf) = peer.read(Vec::with_capacity(4096)).await;
        assert!(res.expect("read") > 0, "the socket ended after {} bytes", got.len());
        got.extend_from_slice(&buf);
    }
    got
}

#[test]
fn the_writer_leaves_an_idle_connection_and_the_next_frame_starts_it_again() {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = monoio::spawn(async move { TcpStream::connect(addr).await.expect("connect") });
        let (server, _) = listener.accept().await.expect("accept");
        let mut peer = client.await;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&server);
        let (_rd, wr) = monoio::io::Splitable::into_split(server);
        let out = Outbox::for_socket(wr, fd, 1 << 20, 100);
        let yield_now = || monoio::time::sleep(Duration::from_millis(20));
        assert!(!out.writer_up.get(), "no writer before a frame is queued");

        out.push_text(Bytes::from_static(b"welcome"));
        assert!(out.writer_up.get(), "the first frame starts the writer");
        assert_eq!(&read_n(&mut peer, 9).await[2..], b"welcome");
        yield_now().await;
        assert!(!out.writer_up.get(), "it leaves after its first write");
        assert_eq!(out.queue.borrow().capacity(), 0, "and the queue's buffer goes");

        out.push_live(Bytes::from_static(b"one"));
        out.push_live(Bytes::from_static(b"two"));
        assert_eq!(&read_n(&mut peer, 10).await, b"\x81\x03one\x81\x03two", "started again, in order");
        yield_now().await;
        assert!(out.writer_up.get(), "after a later write it stays");
        out.release_idle(); // the sweep saw the write
        yield_now().await;
        assert!(out.writer_up.get());
        out.release_idle(); // no write for a whole sweep
        yield_now().await;
        assert!(!out.writer_up.get(), "the sweep retires an idle connection's writer");

        out.close(1000, "");
        let close = read_n(&mut peer, 4).await;
        assert_eq!(&close[..4], &[0x88, 2, 0x03, 0xE8], "a close starts it to write the close frame");
    });
}
