//! Matching two caches' winners by key for `jitune verify --against`: which keys (kernel id,
//! shape bucket, device fingerprint) both caches hold, and which only one of them holds. Kept
//! apart from the measurement so the matching is tested without a GPU.

use std::collections::BTreeMap;

use jitune::cache::Entry;
use jitune::key::TuningKey;

/// The winners of two caches side by side, each list in key order.
#[derive(Debug, Default)]
pub struct Pairing<'a> {
    /// Keys both caches hold: (the cache's entry, the other cache's entry).
    pub both: Vec<(&'a Entry, &'a Entry)>,
    /// Keys only the first cache (`--cache`) holds.
    pub only_a: Vec<&'a Entry>,
    /// Keys only the second cache (`--against`) holds.
    pub only_b: Vec<&'a Entry>,
}

/// Whether two entries of one key name the same config. Configs are stored in canonical text
/// (`name=value` in parameter order), so the texts are compared.
pub fn same_config(a: &Entry, b: &Entry) -> bool {
    a.config == b.config
}

/// Pairs the entries of `a` and `b` that `keep` accepts by key. A key appearing twice in one
/// list (a hand-edited JSON export) counts once, its first entry.
pub fn pair<'a>(a: &'a [Entry], b: &'a [Entry], keep: impl Fn(&Entry) -> bool) -> Pairing<'a> {
    let index = |list: &'a [Entry]| {
        let mut m: BTreeMap<TuningKey, &'a Entry> = BTreeMap::new();
        for e in list.iter().filter(|e| keep(e)) {
            m.entry(e.key).or_insert(e);
        }
        m
    };
    let (ia, mut ib) = (index(a), index(b));
    let mut out = Pairing::default();
    for (k, ea) in ia {
        match ib.remove(&k) {
            Some(eb) => out.both.push((ea, eb)),
            None => out.only_a.push(ea),
        }
    }
    out.only_b = ib.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitune::key::{DeviceFingerprint, KernelId, ShapeBucket};

    fn dev(sm: u32) -> DeviceFingerprint {
        DeviceFingerprint {
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            sm_count: sm,
            nvrtc_version: (12, 8),
            driver_version: None,
        }
    }

    fn entry(kernel: u8, n: i64, sm: u32, config: &str) -> Entry {
        Entry::new(
            KernelId([kernel; 32]),
            ShapeBucket::new(&[n, n]).unwrap(),
            dev(sm),
            "k",
            config,
            1.0,
        )
    }

    #[test]
    fn pairs_by_full_key_and_lists_the_rest() {
        let a = vec![
            entry(1, 256, 132, "BM=64"),  // both, same config
            entry(1, 512, 132, "BM=128"), // both, other config
            entry(1, 1024, 132, "BM=64"), // only a
            entry(2, 256, 132, "BM=64"),  // only a: other kernel
        ];
        let b = vec![
            entry(1, 512, 132, "BM=64"),
            entry(1, 256, 132, "BM=64"),
            entry(1, 256, 114, "BM=64"), // only b: same kernel and shape, other device
            entry(1, 2048, 132, "BM=32"), // only b
        ];
        let p = pair(&a, &b, |_| true);
        assert_eq!(p.both.len(), 2);
        for (x, y) in &p.both {
            assert_eq!(x.key, y.key);
        }
        // Key order: the 256 bucket before the 512 one, whatever the input order.
        assert_eq!(p.both[0].0.key.shape.to_text(), "256x256");
        assert!(same_config(p.both[0].0, p.both[0].1));
        assert_eq!(p.both[1].0.config, "BM=128");
        assert_eq!(p.both[1].1.config, "BM=64");
        assert!(!same_config(p.both[1].0, p.both[1].1));
        assert_eq!(p.only_a.len(), 2);
        assert!(p.only_a.iter().all(|e| a.contains(e)));
        assert_eq!(p.only_b.len(), 2);
        assert!(p.only_b.iter().any(|e| e.device.sm_count == 114));
        assert!(p
            .only_b
            .iter()
            .any(|e| e.key.shape.to_text() == "2048x2048"));
    }

    #[test]
    fn keep_filters_both_sides_and_duplicates_count_once() {
        let a = vec![entry(1, 256, 132, "BM=64"), entry(1, 256, 132, "BM=32")];
        let b = vec![entry(1, 256, 132, "BM=64"), entry(2, 256, 132, "BM=64")];
        let p = pair(&a, &b, |e| e.key.kernel == KernelId([1; 32]));
        assert_eq!(p.both.len(), 1);
        assert_eq!(p.both[0].0.config, "BM=64", "the first of a duplicated key");
        assert!(p.only_a.is_empty() && p.only_b.is_empty());
        // Nothing kept, or nothing on one side.
        let p = pair(&a, &b, |_| false);
        assert!(p.both.is_empty() && p.only_a.is_empty() && p.only_b.is_empty());
        let p = pair(&a, &[], |_| true);
        assert!(p.both.is_empty() && p.only_b.is_empty());
        assert_eq!(p.only_a.len(), 1);
    }
}
