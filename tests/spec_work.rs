//! A spec's declared work (`bytes`, `flops`: expressions of the shape) for the roofline stop:
//! read, written, hashed only when present (every spec without them keeps its id), and
//! evaluated per shape.

use jitune::key::Bucketing;
use jitune::space::Param;
use jitune::spec::{DeviceLimits, KernelSpec, SpecBuilder};

/// The ids of the shipped specs before `bytes`/`flops` existed (main at af91e0c).
const IDS_BEFORE: [(&str, &str); 10] = [
    (
        "hgemm_bf16",
        "2570c494a01fee76375dd9cdf798444de462e8158b6a1500c44a9984d4649c4e",
    ),
    (
        "hgemm_f16",
        "2f7e1671cb9241a0243c6def683d305aeb875b4d7a0155ed75bd9698acaf4eb7",
    ),
    (
        "hgemm_sm90_bf16",
        "83b6e147803f40f8748d615b47dc07938ad96a04f6a3c8124e607e6f4b6bf948",
    ),
    (
        "hgemm_sm90_f16",
        "1057189a5f08415e80d88945100872766833188a51fbab0493c5cf2da00297b2",
    ),
    (
        "hgemm_sm90_tma_bf16",
        "262e205b25b2ab7ae56067fb704d68721431c52688476dd27945133a33b7c8cc",
    ),
    (
        "hgemm_sm90_tma_f16",
        "a41c085603a4714047b8ff55f90d7d7abd2cc1a4227322dcecc810c01cfbc620",
    ),
    (
        "layernorm",
        "ef23b7845ece068025765f6cf2ad2b13a3c6a6fbf5b519e60d7fa8f8e65c2178",
    ),
    (
        "reduction",
        "47c7ea78f1a908b63f12d9cf8b31cef4cda929ca6ee7819373b1a5bda0a6ac4f",
    ),
    (
        "sgemm",
        "d889722ae3562d51f3ea8037d3460a6588cfacf4c1b7cfccedc1355660932de4",
    ),
    (
        "softmax",
        "fd1709c7ed6a45a255e670c65042920e477171c664b8eaa48c84453b79f01c28",
    ),
];

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");

fn read_source(f: &str) -> jitune::Result<String> {
    let p = format!("{DIR}/{f}");
    std::fs::read_to_string(&p).map_err(|e| jitune::Error::io(p, e))
}

/// `kernels/NAME.toml` with its `bytes`/`flops` lines dropped.
fn without_work(name: &str) -> KernelSpec {
    let text = std::fs::read_to_string(format!("{DIR}/{name}.toml")).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("bytes =") && !l.starts_with("flops ="))
        .map(|l| format!("{l}\n"))
        .collect();
    KernelSpec::from_toml_str(&kept, &read_source).unwrap()
}

#[test]
fn only_specs_that_declare_their_work_change_ids() {
    let mut changed = Vec::new();
    for (name, before) in IDS_BEFORE {
        let spec = KernelSpec::from_toml_file(format!("{DIR}/{name}.toml")).unwrap();
        if spec.bytes.is_none() && spec.flops.is_none() {
            assert_eq!(spec.id().to_hex(), before, "{name}: id changed");
        } else {
            assert_ne!(spec.id().to_hex(), before, "{name}: work not hashed");
            // Without the new fields the spec is the one it was: same id.
            assert_eq!(without_work(name).id().to_hex(), before, "{name}");
            changed.push(name);
        }
    }
    // The shipped memory-bound specs declare their bytes; nothing else changed.
    assert_eq!(changed, ["layernorm", "reduction", "softmax"]);
}

fn scale(bytes: Option<&str>, flops: Option<&str>) -> jitune::Result<KernelSpec> {
    let mut b = SpecBuilder::new("scale")
        .source("extern \"C\" __global__ void scale(float* x, int n) { int i = blockIdx.x * B + threadIdx.x; if (i < n) x[i] *= 2.0f; }")
        .entry("scale")
        .param(Param::ints("B", &[64, 128]))
        .dim("n", Bucketing::NextPow2)
        .grid(["ceil_div(n, B)", "1", "1"])
        .block(["B", "1", "1"])
        .arg_buffer("x", "f32", "inout", "n", "uniform(-1, 1)")
        .arg_scalar("n", "i32", "n")
        .default_config(&[("B", "128")]);
    if let Some(e) = bytes {
        b = b.bytes(e);
    }
    if let Some(e) = flops {
        b = b.flops(e);
    }
    b.build()
}

#[test]
fn work_is_evaluated_per_shape_and_hashed() {
    let plain = scale(None, None).unwrap();
    let with = scale(Some("8 * n"), Some("n")).unwrap();
    assert_ne!(plain.id(), with.id());
    assert_ne!(scale(Some("8 * n"), None).unwrap().id(), with.id());
    let limits = DeviceLimits::h100();
    assert_eq!(plain.work(&[1000], &limits).unwrap(), (None, None));
    assert_eq!(
        with.work(&[1000], &limits).unwrap(),
        (Some(8000), Some(1000))
    );
    // Device limits may be read; a wrong shape is an error, not a panic.
    let l2 = scale(Some("n + l2_bytes"), None).unwrap();
    assert_eq!(l2.work(&[1], &limits).unwrap().0, Some(1 + limits.l2_bytes));
    assert!(with.work(&[1, 2], &limits).is_err());
    // Overflow is an error naming the field.
    let big = scale(Some("n * n * n * n"), None).unwrap();
    let e = big.work(&[1 << 20], &limits).unwrap_err().to_string();
    assert!(e.contains("bytes"), "{e}");
}

#[test]
fn work_may_not_depend_on_the_config() {
    let e = scale(Some("B * n"), None).unwrap_err().to_string();
    assert!(
        e.contains("bytes") && e.contains("tunable parameter"),
        "{e}"
    );
    let e = scale(None, Some("n / (")).unwrap_err().to_string();
    assert!(e.contains("flops"), "{e}");
}

#[test]
fn toml_reads_and_writes_work() {
    let text = std::fs::read_to_string(format!("{DIR}/softmax.toml")).unwrap();
    let spec = KernelSpec::from_toml_str(&text, &read_source).unwrap();
    assert_eq!(
        spec.bytes.as_ref().map(|e| e.source().to_string()),
        Some("4 * 2 * rows * cols".to_string())
    );
    assert_eq!(
        spec.work(&[4096, 4096], &DeviceLimits::h100()).unwrap().0,
        Some(8 * 4096 * 4096)
    );
    // A flops line read from TOML gives the builder's id.
    let with_flops = text.replace("bytes = ", "flops = \"rows * cols\"\nbytes = ");
    let a = KernelSpec::from_toml_str(&with_flops, &read_source).unwrap();
    assert_ne!(a.id(), spec.id());
    assert_eq!(
        a.work(&[2, 3], &DeviceLimits::h100()).unwrap(),
        (Some(48), Some(6))
    );
    // A value that is no expression is refused, naming the field.
    let bad = text.replace("bytes = \"4 * 2 * rows * cols\"", "bytes = 1.5");
    let e = KernelSpec::from_toml_str(&bad, &read_source)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bytes"), "{e}");
}
