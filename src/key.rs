//! Tuning keys: which tuned config a launch should use.
//!
//! A key is the kernel's id (blake3 of its canonical spec), the problem shape after bucketing
//! (so that nearby shapes share one tuned config) and the device fingerprint (the best config on
//! one GPU, compiler and driver is not the best on another). The fingerprint has two parts: the
//! GPU model (name, compute capability, SM count) and the toolchain (NVRTC version, CUDA driver
//! version), so that a cache tuned under another toolchain, or on another model of the same
//! compute capability, can still be told apart from one tuned here and used as a starting point. Keys are small `Copy` values so that
//! building one and hashing it on the launch hot path allocates nothing.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Most shape dimensions a kernel can have.
pub const MAX_DIMS: usize = 8;

/// The blake3 id of a kernel spec's canonical form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelId(pub [u8; 32]);

impl KernelId {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<KernelId> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(KernelId(out))
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Debug for KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KernelId({})", self.short())
    }
}

impl fmt::Display for KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// How one shape dimension is mapped to its bucket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Bucketing {
    /// Every value is its own bucket.
    Exact,
    /// Values are rounded up to the next power of two.
    NextPow2,
    /// Values are rounded up to the first edge `>=` them; values beyond the last edge keep
    /// their exact value (edges must be ascending).
    Edges(Vec<i64>),
}

/// The bucketing rules of a kernel's dimensions, compact and `Copy`, kept beside a kernel handle
/// so that a launch buckets its shape without reading the spec's `Dim`s (names and rules, a few
/// cache lines that the driver's own work between launches evicts). Edges rules, which carry a
/// list, are read from the spec's `Dim`s (`Rule::Edges`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeRules {
    n: u8,
    rules: [Rule; MAX_DIMS],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Exact,
    NextPow2,
    Edges,
}

impl ShapeRules {
    /// The rules of `dims` (`None` beyond [`MAX_DIMS`]).
    pub fn of<'a>(dims: impl ExactSizeIterator<Item = &'a Bucketing>) -> Option<ShapeRules> {
        if dims.len() > MAX_DIMS {
            return None;
        }
        let mut r = ShapeRules {
            n: dims.len() as u8,
            rules: [Rule::Exact; MAX_DIMS],
        };
        for (slot, b) in r.rules.iter_mut().zip(dims) {
            *slot = match b {
                Bucketing::Exact => Rule::Exact,
                Bucketing::NextPow2 => Rule::NextPow2,
                Bucketing::Edges(_) => Rule::Edges,
            };
        }
        Some(r)
    }

    /// The bucket of `shape`, as [`Bucketing::bucket`] of each dimension gives it (`edges(i)`:
    /// dimension `i`'s rule, read only for an edges rule); `None` when the rank differs.
    #[inline]
    pub fn bucket<'a>(
        &self,
        shape: &[i64],
        edges: impl Fn(usize) -> &'a Bucketing,
    ) -> Option<ShapeBucket> {
        if shape.len() != self.n as usize {
            return None;
        }
        let mut b = [0i64; MAX_DIMS];
        for (i, (&v, rule)) in shape.iter().zip(&self.rules).enumerate() {
            b[i] = match rule {
                Rule::Exact => v,
                Rule::NextPow2 => Bucketing::NextPow2.bucket(v),
                Rule::Edges => edges(i).bucket(v),
            };
        }
        Some(ShapeBucket {
            dims: b,
            len: self.n,
        })
    }
}

impl Bucketing {
    /// The bucket `v` falls into.
    pub fn bucket(&self, v: i64) -> i64 {
        match self {
            Bucketing::Exact => v,
            Bucketing::NextPow2 => {
                // Values of 1 or less, and values whose next power of two would overflow, stay.
                if v <= 1 || v > (1i64 << 62) {
                    v
                } else {
                    (v as u64).next_power_of_two() as i64
                }
            }
            Bucketing::Edges(edges) => match edges.iter().find(|e| **e >= v) {
                Some(e) => *e,
                None => v,
            },
        }
    }

    /// Canonical text, used in spec hashing and the TOML form: `exact`, `pow2`, `edges:1,8,64`.
    pub fn canonical(&self) -> String {
        match self {
            Bucketing::Exact => "exact".into(),
            Bucketing::NextPow2 => "pow2".into(),
            Bucketing::Edges(e) => format!(
                "edges:{}",
                e.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// A problem shape after bucketing: up to [`MAX_DIMS`] dimensions, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeBucket {
    dims: [i64; MAX_DIMS],
    len: u8,
}

impl ShapeBucket {
    /// A bucket from already-bucketed dims; `None` if there are more than [`MAX_DIMS`].
    pub fn new(dims: &[i64]) -> Option<ShapeBucket> {
        if dims.len() > MAX_DIMS {
            return None;
        }
        let mut d = [0i64; MAX_DIMS];
        d[..dims.len()].copy_from_slice(dims);
        Some(ShapeBucket {
            dims: d,
            len: dims.len() as u8,
        })
    }

    /// The bucketed dimensions.
    pub fn dims(&self) -> &[i64] {
        &self.dims[..self.len as usize]
    }

    /// Text form `4096x4096x1024` (stored in the cache, shown in listings).
    pub fn to_text(&self) -> String {
        self.dims()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    }

    /// Parses the text form.
    pub fn from_text(s: &str) -> Option<ShapeBucket> {
        if s.is_empty() {
            return ShapeBucket::new(&[]);
        }
        let dims: Option<Vec<i64>> = s.split('x').map(|p| p.parse().ok()).collect();
        ShapeBucket::new(&dims?)
    }

    /// Distance used to find the nearest tuned bucket: sum of |log2 ratio| over dimensions
    /// (infinite when the dimension counts differ).
    pub fn distance(&self, other: &ShapeBucket) -> f64 {
        if self.len != other.len {
            return f64::INFINITY;
        }
        self.dims()
            .iter()
            .zip(other.dims())
            .map(|(a, b)| ((*a).max(1) as f64).log2() - ((*b).max(1) as f64).log2())
            .map(f64::abs)
            .sum()
    }
}

impl fmt::Debug for ShapeBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShapeBucket({})", self.to_text())
    }
}

/// What identifies a GPU + toolchain for tuning purposes: the GPU model (`name`,
/// `compute_capability`, `sm_count`) and the toolchain (`nvrtc_version`, `driver_version`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceFingerprint {
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (u32, u32),
    pub sm_count: u32,
    /// NVRTC version (major, minor).
    pub nvrtc_version: (i32, i32),
    /// The CUDA driver's version (major, minor), as `cuDriverGetVersion` reports it; `None` in
    /// fingerprints written before jitune recorded it (their text and hash are unchanged).
    pub driver_version: Option<(i32, i32)>,
}

impl DeviceFingerprint {
    /// A stable 64-bit hash of the fingerprint (first 8 bytes of blake3 of its text form).
    pub fn hash64(&self) -> u64 {
        let h = blake3::hash(self.to_text().as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(b)
    }

    /// Text form `NVIDIA H200|sm_90|132 SMs|nvrtc 13.0|driver 13.0`, stored in the cache
    /// (without the driver part when it is unknown).
    pub fn to_text(&self) -> String {
        match self.driver_version {
            Some((a, b)) => format!("{}|{}|driver {a}.{b}", self.model_text(), self.nvrtc_text()),
            None => format!("{}|{}", self.model_text(), self.nvrtc_text()),
        }
    }

    /// The GPU model part: `NVIDIA H200|sm_90|132 SMs`.
    pub fn model_text(&self) -> String {
        format!(
            "{}|sm_{}{}|{} SMs",
            self.name, self.compute_capability.0, self.compute_capability.1, self.sm_count
        )
    }

    fn nvrtc_text(&self) -> String {
        format!("nvrtc {}.{}", self.nvrtc_version.0, self.nvrtc_version.1)
    }

    /// The toolchain part: `nvrtc 13.0|driver 13.0` (`driver ?` when unknown).
    pub fn toolchain_text(&self) -> String {
        match self.driver_version {
            Some((a, b)) => format!("{}|driver {a}.{b}", self.nvrtc_text()),
            None => format!("{}|driver ?", self.nvrtc_text()),
        }
    }

    /// Whether `other` is the same GPU model (name, compute capability, SM count), whatever
    /// the toolchain.
    pub fn same_model(&self, other: &DeviceFingerprint) -> bool {
        self.name == other.name
            && self.compute_capability == other.compute_capability
            && self.sm_count == other.sm_count
    }

    /// Parses the text form (with or without the driver part).
    pub fn from_text(s: &str) -> Option<DeviceFingerprint> {
        let (s, driver_version) = match s.rsplit_once('|') {
            Some((rest, last)) if last.starts_with("driver ") => {
                (rest, Some(version(last.strip_prefix("driver ")?)?))
            }
            _ => (s, None),
        };
        let mut parts = s.rsplitn(4, '|');
        let nvrtc = parts.next()?.strip_prefix("nvrtc ")?;
        let sms = parts.next()?.strip_suffix(" SMs")?.parse().ok()?;
        let sm = parts.next()?.strip_prefix("sm_")?;
        let name = parts.next()?.to_string();
        if sm.len() < 2 {
            return None;
        }
        let (cc_major, cc_minor) = sm.split_at(sm.len() - 1);
        Some(DeviceFingerprint {
            name,
            compute_capability: (cc_major.parse().ok()?, cc_minor.parse().ok()?),
            sm_count: sms,
            nvrtc_version: version(nvrtc)?,
            driver_version,
        })
    }
}

/// `13.0` as (13, 0).
fn version(s: &str) -> Option<(i32, i32)> {
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The full key of one tuned entry. `Copy`, fixed-size: building and hashing it never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub struct TuningKey {
    pub kernel: KernelId,
    pub shape: ShapeBucket,
    /// [`DeviceFingerprint::hash64`] of the device.
    pub device: u64,
}

impl Hash for TuningKey {
    /// Hashes a few words instead of every byte: the kernel id is already a blake3 hash, so its
    /// first 16 bytes identify it as well as all 32 (equality still compares everything). This
    /// is on the launch hot path.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let k = &self.kernel.0;
        state.write_u64(u64::from_le_bytes([
            k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7],
        ]));
        state.write_u64(u64::from_le_bytes([
            k[8], k[9], k[10], k[11], k[12], k[13], k[14], k[15],
        ]));
        for d in self.shape.dims() {
            state.write_i64(*d);
        }
        state.write_u64(self.device ^ self.shape.len as u64);
    }
}

impl TuningKey {
    /// Compact text for logs and listings: `<kernel short id>/<shape>/<device hash>`.
    pub fn display(&self) -> String {
        format!(
            "{}/{}/{:016x}",
            self.kernel.short(),
            self.shape.to_text(),
            self.device
        )
    }
}

/// A fast, non-cryptographic hasher for [`TuningKey`]s in the memory tier. The key already holds
/// a cryptographic hash (the kernel id), so mixing a few words is enough; SipHash would cost more
/// than the rest of the lookup.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(23) ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// `BuildHasher` for [`KeyHasher`].
pub type KeyHashBuilder = std::hash::BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_rules_bucket_as_each_dimensions_rule_does() {
        let dims = [
            Bucketing::Exact,
            Bucketing::NextPow2,
            Bucketing::Edges(vec![1, 8, 64]),
        ];
        let rules = ShapeRules::of(dims.iter()).unwrap();
        for shape in [
            [5i64, 5, 5],
            [1, 1, 1],
            [0, 3, 64],
            [7, 1000, 65],
            [-4, 1 << 62, 9],
        ] {
            let want: Vec<i64> = dims.iter().zip(shape).map(|(d, v)| d.bucket(v)).collect();
            let got = rules.bucket(&shape, |i| &dims[i]).unwrap();
            assert_eq!(got.dims(), &want[..], "{shape:?}");
            assert_eq!(got, ShapeBucket::new(&want).unwrap());
        }
        // Another rank is not this kernel's shape; more dims than a key holds have no rules.
        assert!(rules.bucket(&[1, 2], |i| &dims[i]).is_none());
        assert!(ShapeRules::of(vec![Bucketing::Exact; MAX_DIMS + 1].iter()).is_none());
    }

    #[test]
    fn bucketing_rules() {
        assert_eq!(Bucketing::Exact.bucket(1000), 1000);
        assert_eq!(Bucketing::NextPow2.bucket(1000), 1024);
        assert_eq!(Bucketing::NextPow2.bucket(1024), 1024);
        assert_eq!(Bucketing::NextPow2.bucket(1), 1);
        assert_eq!(Bucketing::NextPow2.bucket(0), 0);
        let e = Bucketing::Edges(vec![1, 16, 128]);
        assert_eq!(e.bucket(1), 1);
        assert_eq!(e.bucket(2), 16);
        assert_eq!(e.bucket(128), 128);
        assert_eq!(e.bucket(129), 129);
    }

    #[test]
    fn text_forms_round_trip() {
        let fp = DeviceFingerprint {
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            sm_count: 132,
            nvrtc_version: (13, 0),
            driver_version: None,
        };
        assert_eq!(
            DeviceFingerprint::from_text(&fp.to_text()),
            Some(fp.clone())
        );
        // A fingerprint without the driver keeps the text (and so the hash) of before.
        assert_eq!(fp.to_text(), "NVIDIA H200|sm_90|132 SMs|nvrtc 13.0");
        let with_driver = DeviceFingerprint {
            driver_version: Some((13, 0)),
            ..fp.clone()
        };
        assert_eq!(
            with_driver.to_text(),
            "NVIDIA H200|sm_90|132 SMs|nvrtc 13.0|driver 13.0"
        );
        assert_eq!(
            DeviceFingerprint::from_text(&with_driver.to_text()),
            Some(with_driver.clone())
        );
        assert!(with_driver.same_model(&fp) && with_driver.hash64() != fp.hash64());
        assert_eq!(with_driver.toolchain_text(), "nvrtc 13.0|driver 13.0");
        let fp2 = DeviceFingerprint {
            name: "A|B".into(),
            compute_capability: (12, 1),
            ..fp
        };
        assert_eq!(DeviceFingerprint::from_text(&fp2.to_text()), Some(fp2));
        let s = ShapeBucket::new(&[4096, 1, 11008]).unwrap();
        assert_eq!(ShapeBucket::from_text(&s.to_text()), Some(s));
        let id = KernelId(*blake3::hash(b"x").as_bytes());
        assert_eq!(KernelId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(KernelId::from_hex("zz"), None);
        assert!(ShapeBucket::new(&[1; 9]).is_none());
    }

    #[test]
    fn shape_distance_prefers_nearby_sizes() {
        let a = ShapeBucket::new(&[1024, 1024]).unwrap();
        let b = ShapeBucket::new(&[2048, 1024]).unwrap();
        let c = ShapeBucket::new(&[8192, 8192]).unwrap();
        assert!(a.distance(&b) < a.distance(&c));
        assert_eq!(a.distance(&ShapeBucket::new(&[1]).unwrap()), f64::INFINITY);
    }
}
