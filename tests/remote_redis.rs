//! The remote tier against a real `redis-server` (started by each test on a free loopback
//! port; see `remote_common`): round trips, records altered in Redis, leases, an outage with a
//! restart, and the bounded wait of a miss on a hung server.
#![cfg(feature = "redis")]

mod cache_common;
mod remote_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_common::{dev, entry};
use jitune::cache::remote::{
    FleetKey, Keys, LeaseOutcome, LeaseToken, Lookup, Published, RedisTier, Rejection, Remote,
    RemoteSettings, RemoteTier, RemoteUrl,
};
use jitune::cache::store::{arch_of, nvrtc_of, BinaryKey, FailureRecord};
use jitune::failure::FailureClass;
use remote_common::RedisServer;

const SECRET: &[u8] = b"test fleet secret, 32 bytes long";

/// Scheduling slack on a loaded 2-core CI machine, on top of a bound under test.
const SLACK: Duration = Duration::from_millis(150);

fn settings() -> RemoteSettings {
    RemoteSettings {
        wait: Duration::from_millis(20),
        io_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        ..RemoteSettings::default()
    }
}

fn remote(server: &RedisServer, key: Option<&[u8]>) -> Remote {
    let url = RemoteUrl::parse(&server.url()).unwrap();
    let tier = Arc::new(RedisTier::new(&url).unwrap());
    Remote::new(tier, settings(), key.and_then(FleetKey::from_secret))
}

fn raw(server: &RedisServer) -> RedisTier {
    RedisTier::new(&RemoteUrl::parse(&server.url()).unwrap()).unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(2)
}

#[test]
fn winners_binaries_and_failures_round_trip() {
    let Some(server) = RedisServer::start("round_trip") else {
        return;
    };
    let d = dev("NVIDIA H200");
    let e = entry(1, &[1024, 1024], &d, "BM=64,BN=128", 0.42);
    let cubin: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();

    let writer = remote(&server, Some(SECRET));
    assert_eq!(writer.lookup(&e.key), Lookup::Miss);
    assert_eq!(writer.publish(&e, Some(&cubin)), Published::Written);
    let f = FailureRecord {
        key: e.key,
        config: "BM=256,BN=256".into(),
        class: FailureClass::Launch,
        message: "too many resources requested for launch".into(),
        at: 1_700_000_000,
    };
    assert_eq!(writer.publish_failure(&f, &d), Published::Written);

    // Another process of the fleet (a fresh connection pool).
    let reader = remote(&server, Some(SECRET));
    match reader.lookup(&e.key) {
        Lookup::Hit(hit) => {
            assert_eq!(hit.entry, e);
            assert_eq!(hit.binary.as_deref(), Some(&cubin[..]));
        }
        other => panic!("expected a hit, got {other:?}"),
    }
    assert_eq!(reader.failures(&e.key), vec![f]);
    let listing = reader.list(Duration::from_secs(5), true).unwrap();
    assert_eq!(listing.hits.len(), 1);
    assert_eq!(listing.hits[0].entry, e);
    assert_eq!(listing.hits[0].binary.as_deref(), Some(&cubin[..]));
    assert!(listing.rejected.is_empty());

    // A reader without the fleet key gets the config, never the binary.
    let keyless = remote(&server, None);
    match keyless.lookup(&e.key) {
        Lookup::Hit(hit) => {
            assert_eq!(hit.entry.config, e.config);
            assert_eq!(hit.binary, None);
        }
        other => panic!("expected a hit, got {other:?}"),
    }
    // A writer without the key sends no binary at all.
    let e2 = entry(2, &[64], &d, "B=32", 0.1);
    assert_eq!(keyless.publish(&e2, Some(&cubin)), Published::Written);
    let bins = raw(&server).scan("jitune:v1:bin:", soon()).unwrap();
    assert_eq!(bins.len(), 1, "only the keyed writer's binary: {bins:?}");
    match keyless.lookup(&e2.key) {
        Lookup::Hit(hit) => assert_eq!(hit.binary, None),
        other => panic!("expected a hit, got {other:?}"),
    }
    // ...and a keyed reader refuses its unauthenticated entry.
    assert_eq!(
        reader.lookup(&e2.key),
        Lookup::Rejected(Rejection::Unauthenticated)
    );
}

#[test]
fn records_altered_in_redis_are_rejected_and_never_returned() {
    let Some(server) = RedisServer::start("tampered") else {
        return;
    };
    let d = dev("NVIDIA H200");
    let fleet = remote(&server, Some(SECRET));
    let raw = raw(&server);
    let keys = Keys::default();
    let e = entry(3, &[4096, 4096], &d, "BM=128,BN=128", 1.5);
    let cubin = b"\x7fELF pretend cubin".to_vec();
    fleet.publish(&e, Some(&cubin));
    let entry_key = keys.entry(&e.key);
    let good = raw.get(&entry_key, soon()).unwrap().unwrap();
    let (arch, nvrtc) = (arch_of(&d), nvrtc_of(&d));
    let bkey = BinaryKey {
        kernel: e.key.kernel,
        config: &e.config,
        arch: &arch,
        nvrtc: &nvrtc,
    };
    let bin_key = keys.binary(&bkey);
    let good_bin = raw.get(&bin_key, soon()).unwrap().unwrap();

    let reseal = |b: &mut Vec<u8>, trailer: usize| {
        // Recompute the checksum (an attacker can; only the MAC stops them).
        let n = b.len() - trailer;
        let sum = blake3::hash(&b[..n]);
        b[n..n + 32].copy_from_slice(sum.as_bytes());
    };

    // Wrong MAC on the binary: the entry is used, the binary never returned.
    let mut bad_mac = good_bin.clone();
    *bad_mac.last_mut().unwrap() ^= 1;
    raw.put(&bin_key, &bad_mac, soon()).unwrap();
    let before = fleet.stats().rejected;
    match fleet.lookup(&e.key) {
        Lookup::Hit(hit) => assert_eq!(hit.binary, None),
        other => panic!("expected a hit without binary, got {other:?}"),
    }
    assert_eq!(fleet.stats().rejected, before + 1);
    // A binary whose machine code was swapped and checksum fixed: the MAC fails.
    let mut swapped = good_bin.clone();
    let at = swapped.len() - 64 - 3;
    swapped[at] ^= 0xff;
    reseal(&mut swapped, 64);
    raw.put(&bin_key, &swapped, soon()).unwrap();
    match fleet.lookup(&e.key) {
        Lookup::Hit(hit) => assert_eq!(hit.binary, None),
        other => panic!("expected a hit without binary, got {other:?}"),
    }
    raw.put(&bin_key, &good_bin, soon()).unwrap();

    // Entry records altered in place.
    let mut cases: Vec<(&str, Vec<u8>, Expect)> = Vec::new();
    let mut flipped = good.clone();
    flipped[50] ^= 1;
    cases.push(("checksum", flipped, |r| *r == Rejection::Checksum));
    let mut mac = good.clone();
    *mac.last_mut().unwrap() ^= 1;
    cases.push(("mac", mac, |r| *r == Rejection::BadMac));
    let mut forged = good.clone();
    let n = forged.len();
    forged[n - 70] ^= 1;
    reseal(&mut forged, 64);
    cases.push(("forged", forged, |r| *r == Rejection::BadMac));
    let mut schema = good.clone();
    schema[4] = 9;
    reseal(&mut schema, 64);
    cases.push(("schema", schema, |r| {
        matches!(r, Rejection::Schema { found: 9 })
    }));
    // Valid, signed records of another spec / another device, put under this key.
    let other_spec = entry(4, &[4096, 4096], &d, "BM=128,BN=128", 1.5);
    let k = FleetKey::from_secret(SECRET).unwrap();
    cases.push((
        "spec",
        jitune::cache::remote::record::encode_entry(&other_spec, None, Some(&k)),
        |r| matches!(r, Rejection::Spec { .. }),
    ));
    let other_dev = entry(3, &[4096, 4096], &dev("NVIDIA A100"), "BM=128,BN=128", 1.5);
    cases.push((
        "fingerprint",
        jitune::cache::remote::record::encode_entry(&other_dev, None, Some(&k)),
        |r| matches!(r, Rejection::Fingerprint { .. }),
    ));
    cases.push(("garbage", b"not a record".to_vec(), |r| {
        matches!(r, Rejection::Malformed(_))
    }));
    for (what, bytes, expect) in cases {
        raw.put(&entry_key, &bytes, soon()).unwrap();
        match fleet.lookup(&e.key) {
            Lookup::Rejected(r) => assert!(expect(&r), "{what}: rejected for {r}"),
            other => panic!("{what}: the altered record was not rejected: {other:?}"),
        }
        let listing = fleet.list(Duration::from_secs(5), true).unwrap();
        assert!(listing.hits.is_empty(), "{what}: listed {:?}", listing.hits);
        assert_eq!(listing.rejected.len(), 1, "{what}");
    }
    // A value of another type under the key (a hash): skipped, and the tier is not "down".
    let _ = redis_del(&server, &entry_key);
    raw.put_field(&entry_key, "f", b"v", soon()).unwrap();
    assert!(matches!(
        fleet.lookup(&e.key),
        Lookup::Rejected(Rejection::Malformed(_))
    ));
    assert!(!fleet.is_down());
    // The genuine record is still accepted.
    let _ = redis_del(&server, &entry_key);
    raw.put(&entry_key, &good, soon()).unwrap();
    assert!(
        matches!(fleet.lookup(&e.key), Lookup::Hit(h) if h.binary.as_deref() == Some(&cubin[..]))
    );
}

/// What a rejection must be.
type Expect = fn(&Rejection) -> bool;

/// `DEL key` through the raw protocol (the trait has no delete: the tier never deletes data).
fn redis_del(server: &RedisServer, key: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port()))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "*2\r\n$3\r\nDEL\r\n${}\r\n{key}\r\n", key.len())?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    Ok(())
}

#[test]
fn leases_are_exclusive_owned_and_expire() {
    let Some(server) = RedisServer::start("leases") else {
        return;
    };
    let d = dev("NVIDIA H200");
    let key = entry(5, &[128], &d, "B=1", 1.0).key;
    let a = remote(&server, None);
    let b = remote(&server, None);
    let ttl = Duration::from_secs(30);

    let LeaseOutcome::Acquired(lease_a) = a.try_lease(&key, ttl) else {
        panic!("the first attempt takes the lease");
    };
    assert_eq!(b.try_lease(&key, ttl), LeaseOutcome::Held);
    assert_eq!(
        a.try_lease(&key, ttl),
        LeaseOutcome::Held,
        "NX even for the holder"
    );

    // Only the owner's token renews or releases.
    let raw = raw(&server);
    let name = Keys::default().lease(&key);
    let intruder = LeaseToken::new();
    assert!(!raw.renew(&name, &intruder, ttl, soon()).unwrap());
    assert!(!raw.release(&name, &intruder, soon()).unwrap());
    assert_eq!(b.try_lease(&key, ttl), LeaseOutcome::Held);
    assert!(a.renew(&lease_a).unwrap());
    assert_eq!(a.release(lease_a.clone()), Published::Written);
    assert!(
        !a.renew(&lease_a).unwrap(),
        "a released lease cannot be renewed"
    );
    let LeaseOutcome::Acquired(lease_b) = b.try_lease(&key, ttl) else {
        panic!("a released lease is free");
    };
    // The old owner's late release does not free the new owner's lease.
    assert!(!raw.release(&name, &lease_a.token, soon()).unwrap());
    assert_eq!(a.try_lease(&key, ttl), LeaseOutcome::Held);
    assert!(raw.release(&name, &lease_b.token, soon()).unwrap());

    // Expiry: a holder that stops renewing loses the lease after its ttl.
    let short = Duration::from_millis(300);
    let LeaseOutcome::Acquired(dead) = a.try_lease(&key, short) else {
        panic!("free again");
    };
    assert!(a.renew(&dead).unwrap(), "renewed before expiry");
    assert_eq!(b.try_lease(&key, ttl), LeaseOutcome::Held);
    std::thread::sleep(Duration::from_millis(450));
    let LeaseOutcome::Acquired(taken) = b.try_lease(&key, ttl) else {
        panic!("an expired lease is taken over");
    };
    assert!(!a.renew(&dead).unwrap(), "the expired holder cannot renew");
    assert!(!raw.release(&name, &dead.token, soon()).unwrap());
    assert!(b.renew(&taken).unwrap());
}

/// A fleet lease dropped at once (the winner landed between the miss and the lease) is
/// released at once: its renewal thread may not have locked yet, and a stop signalled before
/// that must not be missed (it was: the drop joined a whole renewal period, a third of the
/// 30-s lease, while the tuner's turn was held, and the fleet example's keys stalled).
#[test]
fn a_fleet_lease_dropped_at_once_is_released_at_once() {
    use jitune::cache::{fleet::RemoteTurn, Cache, CacheOptions, LEASE_TTL};
    let Some(server) = RedisServer::start("lease_drop") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("jitune-lease-drop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cache =
        Cache::open(CacheOptions::at(dir.join("c.sqlite")).with_remote(server.url())).unwrap();
    let d = dev("NVIDIA H200");
    for i in 0..20 {
        let key = entry(200 + i, &[64], &d, "B=1", 1.0).key;
        let RemoteTurn::Mine(Some(guard)) = cache.remote_lease(&key, LEASE_TTL) else {
            panic!("a free fleet lease is taken");
        };
        let t = Instant::now();
        drop(guard);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "dropping the guard took {:?} (round {i})",
            t.elapsed()
        );
        // Released: the next attempt takes it again.
        assert!(matches!(
            cache.remote_lease(&key, LEASE_TTL),
            RemoteTurn::Mine(Some(_))
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn killed_server_fails_fast_backs_off_and_gets_the_queued_writes_after_restart() {
    let Some(mut server) = RedisServer::start("outage") else {
        return;
    };
    let d = dev("NVIDIA H200");
    let r = remote(&server, Some(SECRET));
    let before = entry(6, &[1], &d, "B=1", 1.0);
    assert_eq!(r.publish(&before, None), Published::Written);
    assert!(matches!(r.lookup(&before.key), Lookup::Hit(_)));

    server.kill();
    // Misses fail fast, within the wait (the first notices the outage; the rest back off).
    let wait = r.settings().wait;
    let mut slowest = Duration::ZERO;
    let start = Instant::now();
    for _ in 0..200 {
        let t = Instant::now();
        assert_eq!(r.lookup(&before.key), Lookup::Unavailable);
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest <= wait + SLACK, "slowest miss {slowest:?}");
    assert!(r.is_down());
    let unavailable = r.stats().unavailable;
    assert!(unavailable >= 200, "{unavailable}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "200 misses took {:?}",
        start.elapsed()
    );

    // Winners tuned during the outage are queued, newest per key.
    let mut during = Vec::new();
    for i in 0..20 {
        let e = entry(7, &[1 << i], &d, "B=1", 2.0);
        assert_eq!(r.publish(&e, Some(b"cubin bytes")), Published::Queued);
        during.push(e);
    }
    let mut last = during[3].clone();
    last.config = "B=2".into();
    last.median_ms = 1.0;
    assert_eq!(r.publish(&last, None), Published::Queued);
    during[3] = last;
    let f = FailureRecord {
        key: during[0].key,
        config: "B=8".into(),
        class: FailureClass::Compile,
        message: "error".into(),
        at: 5,
    };
    assert_eq!(r.publish_failure(&f, &d), Published::Queued);
    assert!(r.pending_writes() >= 21);

    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    // Nobody calls the tier: the flusher alone pushes the queue once the server is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.pending_writes() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        r.pending_writes(),
        0,
        "queued writes not pushed after the restart"
    );
    assert!(!r.is_down());
    assert_eq!(r.stats().recoveries, 1);

    let other = remote(&server, Some(SECRET));
    for e in &during {
        match other.lookup(&e.key) {
            Lookup::Hit(hit) => {
                assert_eq!(hit.entry, *e);
                assert_eq!(
                    hit.binary.as_deref(),
                    (e.config == "B=1").then_some(&b"cubin bytes"[..])
                );
            }
            x => panic!("{}: not in Redis after the restart: {x:?}", e.key.display()),
        }
    }
    assert_eq!(other.failures(&f.key), vec![f]);
    // The server restarted empty (no persistence): what was written before the kill is gone
    // from Redis (it lives on in the writer's local store).
    assert_eq!(other.lookup(&before.key), Lookup::Miss);
    // And the writer's own lookups work again.
    assert!(matches!(r.lookup(&during[0].key), Lookup::Hit(_)));
}

#[test]
fn a_miss_on_a_hung_server_waits_only_the_bound() {
    let Some(server) = RedisServer::start("hung") else {
        return;
    };
    let d = dev("NVIDIA H200");
    let e = entry(8, &[2], &d, "B=4", 1.0);
    let warm = remote(&server, None);
    warm.publish(&e, None);
    assert!(matches!(warm.lookup(&e.key), Lookup::Hit(_)));
    let cold = remote(&server, None); // must connect while the server hangs

    server.pause();
    let bound = warm.settings().wait;
    for (what, r) in [("pooled connection", &warm), ("new connection", &cold)] {
        let t = Instant::now();
        assert_eq!(r.lookup(&e.key), Lookup::Unavailable, "{what}");
        let took = t.elapsed();
        assert!(
            took >= bound / 2,
            "{what}: gave up after {took:?}, before the wait"
        );
        assert!(took <= bound + SLACK, "{what}: waited {took:?}");
        let t = Instant::now();
        assert_eq!(
            r.try_lease(&e.key, Duration::from_secs(5)),
            LeaseOutcome::Unavailable
        );
        assert!(
            t.elapsed() <= bound + SLACK,
            "{what}: lease waited {:?}",
            t.elapsed()
        );
    }
    // A longer wait is honoured too (settings are per Remote).
    let patient = Remote::new(
        Arc::new(RedisTier::new(&RemoteUrl::parse(&server.url()).unwrap()).unwrap()),
        RemoteSettings {
            wait: Duration::from_millis(120),
            ..settings()
        },
        None,
    );
    let t = Instant::now();
    assert_eq!(patient.lookup(&e.key), Lookup::Unavailable);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took <= Duration::from_millis(120) + SLACK,
        "{took:?}"
    );

    server.resume();
    // After the back-off the tier is probed again and answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut hit = false;
    while Instant::now() < deadline && !hit {
        hit = matches!(warm.lookup(&e.key), Lookup::Hit(_));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(hit, "the tier did not come back after the server resumed");
}
