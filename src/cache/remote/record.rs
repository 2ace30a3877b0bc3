//! The wire form of remote records, and the checks every record read from the wire must pass.
//!
//! Nothing from the remote store is trusted: another jitune version, another fleet sharing the
//! server, a damaged value or someone with write access to the server may have put it there.
//! So a record names what it is for (schema version, kind, spec id, device fingerprint, shape or
//! toolchain) and carries a blake3 checksum of all of that, and decoding is given what the
//! caller asked for and checks that the record is exactly that. With a fleet key
//! ([`FleetKey`]) every record also carries a keyed MAC, and a reader with the key accepts no
//! record without a valid one; a compiled binary is only ever accepted with a valid MAC. Any
//! failed check is a typed [`Rejection`]; the caller skips the record with one log line.
//!
//! Layout (integers little-endian; `str` and `bytes` are a `u32` length and the bytes):
//!
//! ```text
//! 0   magic  "JTRC"
//! 4   u16    schema version (RECORD_SCHEMA)
//! 6   u8     kind: 1 entry, 2 failure, 3 binary
//! 7   u8     flags: bit 0 = a MAC follows the checksum
//! 8   [32]   spec (kernel) id
//! 40  body   entry:   str fingerprint, shape (u8 n, n × i64), str kernel name, str config,
//!                     f64 median ms, f64 spread ms, u32 samples, u32 evaluated, str strategy,
//!                     i64 created, i64 updated, str jitune version, u8 has-binary [+ [32] blake3
//!                     of the binary]
//!            failure: str fingerprint, shape, str config, str class, str message, i64 at
//!            binary:  str arch, str nvrtc, str config, bytes CUBIN
//! ..  [32]   checksum: blake3 of every byte before it (the canonical payload)
//! ..  [32]   MAC (when flagged): blake3::keyed_hash of every byte before it
//! ```
//!
//! The encoding is deterministic, so the bytes are their own canonical form. Whether the config
//! is a point of the current spec's space is checked later, by the tuner, with
//! [`check_config`](super::check_config).

use std::fmt;

use super::secret::FleetKey;
use crate::cache::entry::Entry;
use crate::cache::store::{BinaryKey, FailureRecord};
use crate::failure::FailureClass;
use crate::key::{DeviceFingerprint, KernelId, ShapeBucket, TuningKey, MAX_DIMS};

/// The record schema this build writes and reads.
pub const RECORD_SCHEMA: u16 = 1;

const MAGIC: &[u8; 4] = b"JTRC";
const HEADER: usize = 40;
const HASH: usize = 32;
const FLAG_MAC: u8 = 1;
/// Strings longer than this are refused on decoding (a config, a name, a message).
const MAX_TEXT: usize = 1 << 16;
/// Binaries larger than this are refused on decoding.
const MAX_BINARY: usize = 256 << 20;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A tuned winner.
    Entry = 1,
    /// A failed config.
    Failure = 2,
    /// A compiled binary.
    Binary = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Failure),
            3 => Some(Kind::Binary),
            _ => None,
        }
    }
}

/// Why a record read from the remote store was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not a record of this format: too short, bad magic, truncated or oversized field, bad
    /// UTF-8, unparseable fingerprint, bytes after the end.
    Malformed(String),
    /// Written under another schema version.
    Schema { found: u16 },
    /// A record of another kind than asked for.
    Kind { found: u8, expected: Kind },
    /// The checksum does not match the bytes: damaged.
    Checksum,
    /// A fleet key is configured but the record carries no MAC.
    Unauthenticated,
    /// The MAC does not verify under this fleet's key: tampered with, or another fleet's.
    BadMac,
    /// A binary, but no fleet key is configured: binaries are only accepted with a MAC.
    NoKey,
    /// The record is for another spec (kernel id) than asked for.
    Spec { found: KernelId },
    /// The record is for another device than asked for.
    Fingerprint { found: String },
    /// The record is for another shape, config or toolchain than asked for (`what` says which).
    Mismatch { what: &'static str, found: String },
    /// The record decodes but its content is not usable (a time that is not finite, an unknown
    /// failure class, a binary whose hash is not the one the entry names).
    Invalid(String),
    /// The config is not a point of the current spec's search space.
    Config(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed(m) => write!(f, "malformed record: {m}"),
            Rejection::Schema { found } => write!(
                f,
                "record schema {found}, this jitune reads schema {RECORD_SCHEMA}"
            ),
            Rejection::Kind { found, expected } => {
                write!(f, "record kind {found}, expected {expected:?}")
            }
            Rejection::Checksum => f.write_str("checksum mismatch (damaged record)"),
            Rejection::Unauthenticated => write!(
                f,
                "record has no MAC but {} is set",
                super::secret::REMOTE_KEY_ENV
            ),
            Rejection::BadMac => {
                f.write_str("MAC does not verify (tampered with, or another fleet's key)")
            }
            Rejection::NoKey => write!(
                f,
                "binary refused: {} is not set, so binaries are not accepted",
                super::secret::REMOTE_KEY_ENV
            ),
            Rejection::Spec { found } => write!(f, "record is for spec id {}", found.short()),
            Rejection::Fingerprint { found } => write!(f, "record is for device `{found}`"),
            Rejection::Mismatch { what, found } => write!(f, "record is for {what} `{found}`"),
            Rejection::Invalid(m) => write!(f, "invalid record: {m}"),
            Rejection::Config(m) => write!(f, "config not in the spec's space: {m}"),
        }
    }
}

impl std::error::Error for Rejection {}

/// A decoded entry record.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryRecord {
    /// The winner.
    pub entry: Entry,
    /// blake3 of the winner's compiled binary, when one was published with it.
    pub binary_hash: Option<[u8; 32]>,
}

// ---- writing ----

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: Kind, spec: &KernelId, mac: bool, capacity: usize) -> Writer {
        let mut b = Vec::with_capacity(HEADER + capacity + 2 * HASH);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&RECORD_SCHEMA.to_le_bytes());
        b.push(kind as u8);
        b.push(if mac { FLAG_MAC } else { 0 });
        b.extend_from_slice(&spec.0);
        Writer(b)
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn shape(&mut self, s: &ShapeBucket) {
        self.0.push(s.dims().len() as u8);
        for d in s.dims() {
            self.0.extend_from_slice(&d.to_le_bytes());
        }
    }
    fn finish(mut self, key: Option<&FleetKey>) -> Vec<u8> {
        let sum = blake3::hash(&self.0);
        self.0.extend_from_slice(sum.as_bytes());
        if let Some(k) = key {
            let mac = k.mac(&self.0);
            self.0.extend_from_slice(&mac);
        }
        self.0
    }
}

/// The record of a tuned winner. With `key`, the record carries a MAC. `binary_hash` is
/// blake3 of the binary published with it (see [`encode_binary`]), if any.
pub fn encode_entry(e: &Entry, binary_hash: Option<[u8; 32]>, key: Option<&FleetKey>) -> Vec<u8> {
    let mut w = Writer::new(Kind::Entry, &e.key.kernel, key.is_some(), 256);
    w.str(&e.device.to_text());
    w.shape(&e.key.shape);
    w.str(&e.kernel_name);
    w.str(&e.config);
    w.0.extend_from_slice(&e.median_ms.to_le_bytes());
    w.0.extend_from_slice(&e.spread_ms.to_le_bytes());
    w.0.extend_from_slice(&e.samples.to_le_bytes());
    w.0.extend_from_slice(&e.evaluated.to_le_bytes());
    w.str(&e.strategy);
    w.0.extend_from_slice(&e.created_at.to_le_bytes());
    w.0.extend_from_slice(&e.updated_at.to_le_bytes());
    w.str(&e.jitune_version);
    match binary_hash {
        Some(h) => {
            w.0.push(1);
            w.0.extend_from_slice(&h);
        }
        None => w.0.push(0),
    }
    w.finish(key)
}

/// The record of a failed config, measured on `device` (whose hash must be the key's).
pub fn encode_failure(
    f: &FailureRecord,
    device: &DeviceFingerprint,
    key: Option<&FleetKey>,
) -> Vec<u8> {
    let mut w = Writer::new(Kind::Failure, &f.key.kernel, key.is_some(), 256);
    w.str(&device.to_text());
    w.shape(&f.key.shape);
    w.str(&f.config);
    w.str(f.class.name());
    w.str(&f.message);
    w.0.extend_from_slice(&f.at.to_le_bytes());
    w.finish(key)
}

/// The record of a compiled binary. Binaries always carry a MAC, so a fleet key is required.
pub fn encode_binary(b: &BinaryKey<'_>, cubin: &[u8], key: &FleetKey) -> Vec<u8> {
    let mut w = Writer::new(
        Kind::Binary,
        &b.kernel,
        true,
        64 + b.config.len() + cubin.len(),
    );
    w.str(b.arch);
    w.str(b.nvrtc);
    w.str(b.config);
    w.bytes(cubin);
    w.finish(Some(key))
}

// ---- reading ----

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Rejection> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| Rejection::Malformed(format!("truncated at {what}")))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Rejection> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Rejection> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, Rejection> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &str) -> Result<i64, Rejection> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    fn f64(&mut self, what: &str) -> Result<f64, Rejection> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }
    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], Rejection> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(Rejection::Malformed(format!(
                "{what} is {n} bytes, more than {max}"
            )));
        }
        self.take(n, what)
    }
    fn str(&mut self, what: &str) -> Result<&'a str, Rejection> {
        std::str::from_utf8(self.bytes(MAX_TEXT, what)?)
            .map_err(|_| Rejection::Malformed(format!("{what} is not UTF-8")))
    }
    fn shape(&mut self) -> Result<ShapeBucket, Rejection> {
        let n = self.u8("shape")? as usize;
        if n > MAX_DIMS {
            return Err(Rejection::Malformed(format!(
                "shape has {n} dimensions, more than {MAX_DIMS}"
            )));
        }
        let mut dims = [0i64; MAX_DIMS];
        for d in dims.iter_mut().take(n) {
            *d = self.i64("shape")?;
        }
        ShapeBucket::new(&dims[..n]).ok_or_else(|| Rejection::Malformed("shape".into()))
    }
    fn fingerprint(&mut self) -> Result<DeviceFingerprint, Rejection> {
        let text = self.str("fingerprint")?;
        DeviceFingerprint::from_text(text)
            .ok_or_else(|| Rejection::Malformed(format!("fingerprint `{text}` does not parse")))
    }
    fn end(&self) -> Result<(), Rejection> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(Rejection::Malformed(format!(
                "{} bytes after the end of the record",
                self.b.len() - self.at
            )))
        }
    }
}

/// Checks the envelope (magic, schema, kind, checksum and/or MAC) and returns the spec id and a
/// reader over the body. `require_mac`: the record must carry a MAC that verifies under `key`.
fn open<'a>(
    bytes: &'a [u8],
    expected: Kind,
    key: Option<&FleetKey>,
    require_mac: bool,
) -> Result<(KernelId, Reader<'a>), Rejection> {
    if bytes.len() < HEADER + HASH || &bytes[..4] != MAGIC {
        return Err(Rejection::Malformed(format!(
            "{} bytes without the record magic",
            bytes.len()
        )));
    }
    let schema = u16::from_le_bytes([bytes[4], bytes[5]]);
    if schema != RECORD_SCHEMA {
        return Err(Rejection::Schema { found: schema });
    }
    if Kind::from_u8(bytes[6]) != Some(expected) {
        return Err(Rejection::Kind {
            found: bytes[6],
            expected,
        });
    }
    let flags = bytes[7];
    if flags & !FLAG_MAC != 0 {
        return Err(Rejection::Malformed(format!("unknown flags {flags:#04x}")));
    }
    let has_mac = flags & FLAG_MAC != 0;
    let trailer = if has_mac { 2 * HASH } else { HASH };
    if bytes.len() < HEADER + trailer {
        return Err(Rejection::Malformed("truncated trailer".into()));
    }
    let sum_at = bytes.len() - trailer;
    let checksum_ok =
        || blake3::hash(&bytes[..sum_at]) == blake3::Hash::from_bytes(slice32(bytes, sum_at));
    match key {
        Some(k) if has_mac => {
            // A valid MAC proves the bytes are exactly what a key holder wrote, checksum
            // included, so the checksum is only computed to name a failure: damaged or forged.
            // (One pass over a large binary instead of two.)
            let mac_at = sum_at + HASH;
            if !k.verify(&bytes[..mac_at], &bytes[mac_at..]) {
                return Err(if checksum_ok() {
                    Rejection::BadMac
                } else {
                    Rejection::Checksum
                });
            }
        }
        _ if !checksum_ok() => return Err(Rejection::Checksum),
        Some(_) => return Err(Rejection::Unauthenticated),
        None if require_mac => return Err(Rejection::NoKey),
        // Without a key a MAC cannot be checked; configs are still checked against the space.
        None => {}
    }
    let mut r = Reader {
        b: &bytes[..sum_at],
        at: 8,
    };
    let spec = KernelId(r.array("spec id")?);
    Ok((spec, r))
}

fn slice32(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

fn check_spec(found: KernelId, expected: KernelId) -> Result<(), Rejection> {
    if found == expected {
        Ok(())
    } else {
        Err(Rejection::Spec { found })
    }
}

/// Reads the device fingerprint and shape of a per-key record and checks them against `key`.
fn check_key_fields(r: &mut Reader<'_>, key: &TuningKey) -> Result<DeviceFingerprint, Rejection> {
    let device = r.fingerprint()?;
    if device.hash64() != key.device {
        return Err(Rejection::Fingerprint {
            found: device.to_text(),
        });
    }
    let shape = r.shape()?;
    if shape != key.shape {
        return Err(Rejection::Mismatch {
            what: "shape",
            found: shape.to_text(),
        });
    }
    Ok(device)
}

/// Decodes the entry record read for `expected`, checking everything in the module docs.
pub fn decode_entry(
    bytes: &[u8],
    expected: &TuningKey,
    key: Option<&FleetKey>,
) -> Result<EntryRecord, Rejection> {
    let (spec, mut r) = open(bytes, Kind::Entry, key, false)?;
    check_spec(spec, expected.kernel)?;
    let device = check_key_fields(&mut r, expected)?;
    let kernel_name = r.str("kernel name")?.to_string();
    let config = r.str("config")?.to_string();
    let median_ms = r.f64("median")?;
    let spread_ms = r.f64("spread")?;
    let samples = r.u32("samples")?;
    let evaluated = r.u32("evaluated")?;
    let strategy = r.str("strategy")?.to_string();
    let created_at = r.i64("created")?;
    let updated_at = r.i64("updated")?;
    let jitune_version = r.str("jitune version")?.to_string();
    let binary_hash = match r.u8("binary flag")? {
        0 => None,
        1 => Some(r.array("binary hash")?),
        v => return Err(Rejection::Malformed(format!("binary flag {v}"))),
    };
    r.end()?;
    let entry = Entry {
        key: *expected,
        kernel_name,
        device,
        config,
        median_ms,
        spread_ms,
        samples,
        evaluated,
        strategy,
        created_at,
        updated_at,
        jitune_version,
    };
    entry
        .validate()
        .map_err(|e| Rejection::Invalid(e.to_string()))?;
    Ok(EntryRecord { entry, binary_hash })
}

/// Decodes the failure record stored for `expected` under the field `config`.
pub fn decode_failure(
    bytes: &[u8],
    expected: &TuningKey,
    config: &str,
    key: Option<&FleetKey>,
) -> Result<FailureRecord, Rejection> {
    let (spec, mut r) = open(bytes, Kind::Failure, key, false)?;
    check_spec(spec, expected.kernel)?;
    check_key_fields(&mut r, expected)?;
    let found = r.str("config")?;
    if found != config {
        return Err(Rejection::Mismatch {
            what: "config",
            found: found.to_string(),
        });
    }
    let class_name = r.str("failure class")?;
    let class = FailureClass::from_name(class_name)
        .ok_or_else(|| Rejection::Invalid(format!("unknown failure class `{class_name}`")))?;
    let message = r.str("message")?.to_string();
    let at = r.i64("time")?;
    r.end()?;
    Ok(FailureRecord {
        key: *expected,
        config: config.to_string(),
        class,
        message,
        at,
    })
}

/// Decodes the binary record read for `expected`: only with a fleet key, and only when its MAC
/// verifies (checked before anything else of the body is read). Returns the CUBIN.
pub fn decode_binary(
    bytes: &[u8],
    expected: &BinaryKey<'_>,
    key: Option<&FleetKey>,
) -> Result<Vec<u8>, Rejection> {
    let (spec, mut r) = open(bytes, Kind::Binary, key, true)?;
    check_spec(spec, expected.kernel)?;
    for (what, want) in [
        ("arch", expected.arch),
        ("NVRTC version", expected.nvrtc),
        ("config", expected.config),
    ] {
        let found = r.str(what)?;
        if found != want {
            return Err(Rejection::Mismatch {
                what,
                found: found.to_string(),
            });
        }
    }
    let cubin = r.bytes(MAX_BINARY, "binary")?.to_vec();
    r.end()?;
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let dev = DeviceFingerprint {
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            sm_count: 132,
            nvrtc_version: (13, 0),
            driver_version: Some((13, 0)),
        };
        let mut e = Entry::new(
            KernelId([3; 32]),
            ShapeBucket::new(&[1024, 512]).unwrap(),
            dev,
            "sgemm",
            "BM=64,BN=128",
            0.25,
        );
        e.samples = 7;
        e.strategy = "lfbo".into();
        e
    }

    fn reseal(b: &mut [u8]) {
        let n = b.len() - HASH;
        let sum = blake3::hash(&b[..n]);
        b[n..].copy_from_slice(sum.as_bytes());
    }

    #[test]
    fn entries_round_trip_and_every_altered_field_is_rejected() {
        let e = entry();
        let bytes = encode_entry(&e, Some([9; 32]), None);
        let rec = decode_entry(&bytes, &e.key, None).unwrap();
        assert_eq!(rec.entry, e);
        assert_eq!(rec.binary_hash, Some([9; 32]));

        let mut flipped = bytes.clone();
        flipped[60] ^= 1;
        assert_eq!(
            decode_entry(&flipped, &e.key, None),
            Err(Rejection::Checksum)
        );

        let mut schema = bytes.clone();
        schema[4] = 2;
        reseal(&mut schema);
        assert_eq!(
            decode_entry(&schema, &e.key, None),
            Err(Rejection::Schema { found: 2 })
        );

        let mut other = e.key;
        other.kernel = KernelId([4; 32]);
        assert!(matches!(
            decode_entry(&bytes, &other, None),
            Err(Rejection::Spec { .. })
        ));
        let mut other = e.key;
        other.device ^= 1;
        assert!(matches!(
            decode_entry(&bytes, &other, None),
            Err(Rejection::Fingerprint { .. })
        ));
        let mut other = e.key;
        other.shape = ShapeBucket::new(&[1024, 1024]).unwrap();
        assert!(matches!(
            decode_entry(&bytes, &other, None),
            Err(Rejection::Mismatch { what: "shape", .. })
        ));
        assert!(matches!(
            decode_binary(
                &bytes,
                &BinaryKey {
                    kernel: e.key.kernel,
                    config: "",
                    arch: "",
                    nvrtc: ""
                },
                None
            ),
            Err(Rejection::Kind { found: 1, .. })
        ));
        let mut nan = e.clone();
        nan.median_ms = f64::NAN;
        assert!(matches!(
            decode_entry(&encode_entry(&nan, None, None), &e.key, None),
            Err(Rejection::Invalid(_))
        ));
        for n in [0, 10, 40, 72, bytes.len() - 1] {
            assert!(decode_entry(&bytes[..n], &e.key, None).is_err(), "{n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_entry(&long, &e.key, None).is_err());
    }

    #[test]
    fn a_fleet_key_authenticates_every_record() {
        let e = entry();
        let k = FleetKey::from_secret(b"fleet secret of sixteen+ bytes").unwrap();
        let other = FleetKey::from_secret(b"another fleet's secret, 16+").unwrap();
        let signed = encode_entry(&e, None, Some(&k));
        assert_eq!(decode_entry(&signed, &e.key, Some(&k)).unwrap().entry, e);
        // Without the key the config may still be used (it is checked against the space).
        assert_eq!(decode_entry(&signed, &e.key, None).unwrap().entry, e);
        assert_eq!(
            decode_entry(&signed, &e.key, Some(&other)),
            Err(Rejection::BadMac)
        );
        let plain = encode_entry(&e, None, None);
        assert_eq!(
            decode_entry(&plain, &e.key, Some(&k)),
            Err(Rejection::Unauthenticated)
        );
        // Altering the body and fixing the checksum does not fix the MAC.
        let mut forged = signed.clone();
        let at = forged.len() - 2 * HASH - 5;
        forged[at] ^= 0x40;
        let n = forged.len() - 2 * HASH;
        let sum = blake3::hash(&forged[..n]);
        forged[n..n + HASH].copy_from_slice(sum.as_bytes());
        assert_eq!(
            decode_entry(&forged, &e.key, Some(&k)),
            Err(Rejection::BadMac)
        );
    }

    #[test]
    fn binaries_need_the_key_and_their_own_key_fields() {
        let k = FleetKey::from_secret(b"fleet secret of sixteen+ bytes").unwrap();
        let bk = BinaryKey {
            kernel: KernelId([5; 32]),
            config: "BM=64",
            arch: "sm_90",
            nvrtc: "13.0",
        };
        let cubin = vec![0x7f, b'E', b'L', b'F', 1, 2, 3];
        let rec = encode_binary(&bk, &cubin, &k);
        assert_eq!(decode_binary(&rec, &bk, Some(&k)).unwrap(), cubin);
        assert_eq!(decode_binary(&rec, &bk, None), Err(Rejection::NoKey));
        let mut mac = rec.clone();
        *mac.last_mut().unwrap() ^= 1;
        assert_eq!(decode_binary(&mac, &bk, Some(&k)), Err(Rejection::BadMac));
        for (what, other) in [
            (
                "config",
                BinaryKey {
                    config: "BM=128",
                    ..bk
                },
            ),
            (
                "arch",
                BinaryKey {
                    arch: "sm_80",
                    ..bk
                },
            ),
            (
                "NVRTC version",
                BinaryKey {
                    nvrtc: "12.9",
                    ..bk
                },
            ),
        ] {
            assert!(matches!(
                decode_binary(&rec, &other, Some(&k)),
                Err(Rejection::Mismatch { what: w, .. }) if w == what
            ));
        }
    }

    #[test]
    fn failures_round_trip() {
        let e = entry();
        let f = FailureRecord {
            key: e.key,
            config: "BM=256".into(),
            class: FailureClass::Timeout,
            message: "hung".into(),
            at: 17,
        };
        let b = encode_failure(&f, &e.device, None);
        assert_eq!(decode_failure(&b, &e.key, "BM=256", None).unwrap(), f);
        assert!(matches!(
            decode_failure(&b, &e.key, "BM=64", None),
            Err(Rejection::Mismatch { what: "config", .. })
        ));
    }
}
