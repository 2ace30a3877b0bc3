//! The remote tier's outage behaviour on the in-process tier, where faults are exact: back-off
//! (counted calls), one warning per outage, the bounded wait, the write queue (order, newest per
//! key, bound, flushed by the background thread with nobody calling).

mod cache_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_common::{capture_logs, dev, entry, warnings_with};
use jitune::cache::remote::{
    Keys, LeaseOutcome, Lookup, MemoryTier, Published, Remote, RemoteSettings, RemoteTier,
};

fn settings() -> RemoteSettings {
    RemoteSettings {
        wait: Duration::from_millis(20),
        io_timeout: Duration::from_millis(200),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        queue_capacity: 64,
        ..RemoteSettings::default()
    }
}

fn setup(name: &str, s: RemoteSettings) -> (Arc<MemoryTier>, Remote) {
    let tier = Arc::new(MemoryTier::with_name(name));
    let remote = Remote::new(tier.clone(), s, None);
    (tier, remote)
}

#[test]
fn backs_off_without_touching_the_tier_and_warns_once_per_outage() {
    capture_logs();
    let (tier, r) = setup("backoff", settings());
    let e = entry(1, &[8], &dev("GPU"), "B=1", 1.0);
    assert_eq!(r.lookup(&e.key), Lookup::Miss);
    assert_eq!(tier.calls(), 1);

    tier.set_down(true);
    for _ in 0..500 {
        assert_eq!(r.lookup(&e.key), Lookup::Unavailable);
    }
    assert_eq!(
        tier.calls(),
        2,
        "one failed call, then back-off without calls"
    );
    assert_eq!(warnings_with("`backoff` unavailable").len(), 1);

    // Probes: one call per back-off period, the period doubling up to the cap.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(r.lookup(&e.key), Lookup::Unavailable);
        std::thread::sleep(Duration::from_millis(2));
    }
    let probes = tier.calls() - 2;
    // 100 + 200 + 400 + 400 ... ms: 4 or 5 probes in 1.5 s (not the ~600 calls made).
    assert!((3..=6).contains(&probes), "{probes} probes in 1.5 s");
    assert_eq!(
        warnings_with("`backoff` unavailable").len(),
        1,
        "still one warning"
    );

    tier.set_down(false);
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(r.lookup(&e.key), Lookup::Miss);
    assert!(!r.is_down());
    // A second outage warns again, once.
    tier.set_down(true);
    for _ in 0..50 {
        assert_eq!(r.lookup(&e.key), Lookup::Unavailable);
    }
    assert_eq!(warnings_with("`backoff` unavailable").len(), 2);
}

#[test]
fn a_slow_tier_costs_a_miss_only_the_wait() {
    let (tier, r) = setup("slow", settings());
    let e = entry(2, &[8], &dev("GPU"), "B=1", 1.0);
    tier.set_latency(Duration::from_millis(500));
    let t = Instant::now();
    assert_eq!(r.lookup(&e.key), Lookup::Unavailable);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(19) && took < Duration::from_millis(200),
        "{took:?}"
    );
    let t = Instant::now();
    assert_eq!(
        r.try_lease(&e.key, Duration::from_secs(1)),
        LeaseOutcome::Unavailable
    );
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[test]
fn writes_during_an_outage_land_when_it_ends_in_order_newest_per_key() {
    let (tier, r) = setup("queue", settings());
    let d = dev("GPU");
    tier.set_down(true);
    let a = entry(3, &[1], &d, "B=1", 1.0);
    let mut a2 = a.clone();
    a2.config = "B=2".into();
    let b = entry(3, &[2], &d, "B=1", 1.0);
    assert_eq!(r.publish(&a, None), Published::Queued);
    assert_eq!(r.publish(&b, None), Published::Queued);
    assert_eq!(r.publish(&a2, None), Published::Queued);
    let LeaseOutcome::Unavailable = r.try_lease(&a.key, Duration::from_secs(60)) else {
        panic!("no lease while down");
    };
    assert_eq!(r.pending_writes(), 2, "a2 replaced a");
    assert!(tier.is_empty());

    tier.set_down(false);
    // No call from here: the flusher thread pushes the queue after its back-off.
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.pending_writes() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(r.pending_writes(), 0);
    assert_eq!(tier.len(), 2);
    match r.lookup(&a.key) {
        Lookup::Hit(h) => assert_eq!(h.entry.config, "B=2"),
        x => panic!("{x:?}"),
    }
    assert_eq!(r.stats().written, 2);
}

#[test]
fn a_release_queued_after_a_winner_lands_after_it() {
    let (tier, r) = setup("release", settings());
    let e = entry(4, &[1], &dev("GPU"), "B=1", 1.0);
    let LeaseOutcome::Acquired(lease) = r.try_lease(&e.key, Duration::from_secs(60)) else {
        panic!("free lease");
    };
    tier.set_down(true);
    assert_eq!(r.publish(&e, None), Published::Queued);
    assert_eq!(r.release(lease), Published::Queued);
    tier.set_down(false);
    assert_eq!(r.flush(Duration::from_secs(5)), 0);
    // The winner is there and the lease is free for the next key holder.
    assert!(matches!(r.lookup(&e.key), Lookup::Hit(_)));
    let lease_name = Keys::default().lease(&e.key);
    assert!(tier
        .scan(&lease_name, Instant::now() + Duration::from_secs(1))
        .unwrap()
        .is_empty());
}

#[test]
fn the_queue_is_bounded_and_drops_the_oldest() {
    capture_logs();
    let s = RemoteSettings {
        queue_capacity: 3,
        ..settings()
    };
    let (tier, r) = setup("bounded", s);
    let d = dev("GPU");
    tier.set_down(true);
    let es: Vec<_> = (0..5)
        .map(|i| entry(5, &[1 << i], &d, "B=1", 1.0))
        .collect();
    for e in &es {
        assert_eq!(r.publish(e, None), Published::Queued);
    }
    assert_eq!(r.pending_writes(), 3);
    assert_eq!(r.stats().dropped, 2);
    assert_eq!(warnings_with("`bounded`: write queue full").len(), 1);
    tier.set_down(false);
    assert_eq!(r.flush(Duration::from_secs(5)), 0);
    let found: Vec<bool> = es
        .iter()
        .map(|e| matches!(r.lookup(&e.key), Lookup::Hit(_)))
        .collect();
    assert_eq!(found, [false, false, true, true, true]);
}
