//! The mesh under real threads, and its wake-up bookkeeping step by step.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

use bytes::Bytes;
use router::{mesh, Endpoint, Full};

/// Wakes a parked thread.
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future on the current thread, parking while it is pending.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// Polls two futures until both are done.
async fn join<A: Future<Output = ()>, B: Future<Output = R>, R>(a: A, b: B) -> R {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut a_done, mut b_out) = (false, None);
    poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if b_out.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                b_out = Some(v);
            }
        }
        match (a_done, b_out.take()) {
            (true, Some(v)) => Poll::Ready(v),
            (_, v) => {
                b_out = v;
                Poll::Pending
            }
        }
    })
    .await
}

/// Counts how often it was woken.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counter() -> (Arc<Counter>, Waker) {
    let c = Arc::new(Counter::default());
    (Arc::clone(&c), Waker::from(c))
}

fn woken(c: &Counter) -> usize {
    c.0.load(Ordering::SeqCst)
}

fn num(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_le_bytes())
}

fn un(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap())
}

#[test]
fn three_threads_all_to_all_keep_order() {
    all_to_all(3, 64, 100_000);
}

#[test]
fn tiny_rings_under_contention_keep_order() {
    all_to_all(4, 1, 20_000);
}

/// Every endpoint sends `n` numbered messages to every other with
/// `send().await` while receiving with `readable().await` and `drain`.
fn all_to_all(threads: usize, capacity: usize, n: u64) {
    let endpoints = mesh(threads, capacity);
    let handles: Vec<_> = endpoints
        .into_iter()
        .map(|ep| {
            thread::spawn(move || {
                let me = ep.id();
                let others: Vec<usize> = (0..ep.threads()).filter(|&t| t != me).collect();
                let sender = async {
                    for i in 0..n {
                        for &to in &others {
                            ep.send(to, num(i)).await;
                        }
                    }
                };
                let receiver = async {
                    let mut next = vec![0u64; ep.threads()];
                    let mut got = 0;
                    while got < n * others.len() as u64 {
                        ep.readable().await;
                        got += ep.drain(50, |from, msg| {
                            assert_ne!(from, me);
                            assert_eq!(un(&msg), next[from], "from {from} to {me}");
                            next[from] += 1;
                        }) as u64;
                    }
                    next
                };
                let next = block_on(join(sender, receiver));
                (me, next, ep)
            })
        })
        .collect();
    let mut eps: Vec<Endpoint> = Vec::new();
    for h in handles {
        let (me, next, ep) = h.join().unwrap();
        for (from, &count) in next.iter().enumerate() {
            assert_eq!(count, if from == me { 0 } else { n });
        }
        eps.push(ep);
    }
    for ep in &eps {
        assert!(!ep.has_inbound());
    }
}

#[test]
fn try_send_gives_the_message_back_when_full() {
    let eps = mesh(2, 4);
    let (a, b) = (&eps[0], &eps[1]);
    assert_eq!((a.id(), b.id(), a.threads()), (0, 1, 2));
    assert_eq!(a.free_slots(1), 4);
    for n in 0..4 {
        a.try_send(1, num(n)).unwrap();
        assert_eq!(a.free_slots(1), 3 - n as usize);
    }
    let Err(Full(back)) = a.try_send(1, Bytes::from_static(b"extra")) else {
        panic!("a full ring took a message");
    };
    assert_eq!(&back[..], b"extra");
    // The other direction is independent.
    assert_eq!(b.free_slots(0), 4);
    let mut seen = Vec::new();
    assert_eq!(b.drain(3, |from, m| seen.push((from, un(&m)))), 3);
    assert_eq!(seen, [(0, 0), (0, 1), (0, 2)]);
    assert_eq!(a.free_slots(1), 3);
    assert_eq!(b.drain(10, |_, m| seen.push((0, un(&m)))), 1);
    assert_eq!(b.drain(10, |_, _| unreachable!()), 0);
}

#[test]
fn sending_to_self_or_nowhere_fails_without_harm() {
    let eps = mesh(2, 4);
    assert!(eps[0].try_send(0, num(1)).is_err());
    assert!(eps[0].try_send(7, num(1)).is_err());
    assert_eq!(eps[0].free_slots(0), 0);
    assert_eq!(eps[0].free_slots(7), 0);
    let single = mesh(1, 4);
    assert_eq!(single[0].drain(10, |_, _| unreachable!()), 0);
    assert!(mesh(0, 4).is_empty());
}

#[test]
fn drain_is_fair_across_sources() {
    let eps = mesh(3, 8);
    for n in 0..4 {
        eps[0].try_send(2, num(n)).unwrap();
        eps[1].try_send(2, num(10 + n)).unwrap();
    }
    let mut seen = Vec::new();
    while eps[2].drain(3, |from, m| seen.push((from, un(&m)))) > 0 {}
    assert_eq!(seen, [(0, 0), (1, 10), (0, 1), (1, 11), (0, 2), (1, 12), (0, 3), (1, 13)]);
}

#[test]
fn readable_wakes_on_arrival() {
    let eps = mesh(2, 4);
    let (c, w) = counter();
    let mut cx = Context::from_waker(&w);
    let mut fut = pin!(eps[1].readable());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(woken(&c), 0);
    eps[0].try_send(1, num(1)).unwrap();
    assert_eq!(woken(&c), 1);
    // A second message does not wake again: the flag was consumed.
    eps[0].try_send(1, num(2)).unwrap();
    assert_eq!(woken(&c), 1);
    assert!(fut.as_mut().poll(&mut cx).is_ready());
}

#[test]
fn readable_wakes_a_displaced_waiter() {
    let eps = mesh(2, 4);
    let (ca, wa) = counter();
    let (cb, wb) = counter();
    let mut a = Box::pin(eps[1].readable());
    let mut b = Box::pin(eps[1].readable());
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
    assert!(b.as_mut().poll(&mut Context::from_waker(&wb)).is_pending());
    eps[0].try_send(1, num(1)).unwrap();
    assert_eq!((woken(&ca), woken(&cb)), (0, 1));
    assert!(b.as_mut().poll(&mut Context::from_waker(&wb)).is_ready());
    drop(b);
    assert_eq!(woken(&ca), 1);
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_ready());
}

#[test]
fn send_waits_for_space_and_wakes_in_turn() {
    let eps = mesh(2, 1);
    let (tx, rx) = (&eps[0], &eps[1]);
    tx.try_send(1, num(0)).unwrap();
    let (ca, wa) = counter();
    let (cb, wb) = counter();
    let mut a = Box::pin(tx.send(1, num(1)));
    let mut b = Box::pin(tx.send(1, num(2)));
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
    assert!(b.as_mut().poll(&mut Context::from_waker(&wb)).is_pending());
    // b displaced a; freeing space wakes b, and b finishing wakes a.
    assert_eq!(rx.drain(1, |_, m| assert_eq!(un(&m), 0)), 1);
    assert_eq!((woken(&ca), woken(&cb)), (0, 1));
    assert!(b.as_mut().poll(&mut Context::from_waker(&wb)).is_ready());
    drop(b);
    assert_eq!(woken(&ca), 1);
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
    assert_eq!(rx.drain(1, |_, m| assert_eq!(un(&m), 2)), 1);
    assert_eq!(woken(&ca), 2);
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_ready());
    assert_eq!(rx.drain(1, |_, m| assert_eq!(un(&m), 1)), 1);
}

#[test]
fn a_cancelled_send_hands_its_turn_on() {
    let eps = mesh(2, 1);
    eps[0].try_send(1, num(0)).unwrap();
    let (ca, wa) = counter();
    let (_cb, wb) = counter();
    let mut a = Box::pin(eps[0].send(1, num(1)));
    let mut b = Box::pin(eps[0].send(1, num(2)));
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
    assert!(b.as_mut().poll(&mut Context::from_waker(&wb)).is_pending());
    drop(b);
    assert_eq!(woken(&ca), 1);
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_pending());
    assert_eq!(eps[1].drain(1, |_, _| {}), 1);
    assert_eq!(woken(&ca), 2);
    assert!(a.as_mut().poll(&mut Context::from_waker(&wa)).is_ready());
}

#[test]
fn endpoint_is_send() {
    fn is_send<T: Send>() {}
    is_send::<Endpoint>();
}
