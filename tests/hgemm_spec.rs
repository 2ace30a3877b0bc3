//! The tensor-core GEMM specs (`kernels/hgemm_f16.toml`, `kernels/hgemm_bf16.toml`, one shared
//! `hgemm.cu`) on the CPU: the fixed interface other code builds against (dims M N K; args a, b,
//! c, M, N, K with their types and lengths), distinct ids, a default config valid at ordinary
//! and edge shapes (M = 1, sizes that are no multiple of any tile), a space large enough to hold
//! poor and good configs yet countable, legal launch geometry for every valid config, and
//! split-K only where clusters exist. For the wgmma specs (`hgemm_sm90_*.toml`): the interface,
//! sm_90a only, and the warp-specialised configs' persistent grid, warpgroups, register split
//! and shared memory.

use jitune::spec::{DeviceLimits, ElemType, KernelSpec, Role};

fn load(name: &str) -> KernelSpec {
    let path = format!("{}/kernels/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    KernelSpec::from_toml_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const SHAPES: [[i64; 3]; 8] = [
    [4096, 4096, 4096],
    [1, 4096, 4096],
    [16, 4096, 4096],
    [257, 129, 200],
    [512, 512, 512],
    [1, 1, 1],
    [3, 5, 7],
    [4096, 11008, 4096],
];

fn param(spec: &KernelSpec, name: &str) -> usize {
    spec.params
        .iter()
        .position(|p| p.name == name)
        .unwrap_or_else(|| panic!("{}: no parameter {name}", spec.name))
}

#[test]
fn both_specs_keep_the_shared_interface() {
    let f16 = load("hgemm_f16");
    let bf16 = load("hgemm_bf16");
    assert_ne!(f16.id(), bf16.id());
    assert_eq!(f16.id(), load("hgemm_f16").id());
    for (spec, ty) in [(&f16, ElemType::F16), (&bf16, ElemType::Bf16)] {
        assert_eq!(spec.entry, "hgemm");
        let dims: Vec<&str> = spec.dims.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(dims, ["M", "N", "K"]);
        let args: Vec<(&str, ElemType, Role)> = spec
            .args
            .iter()
            .map(|a| (a.name.as_str(), a.ty, a.role))
            .collect();
        assert_eq!(
            args,
            [
                ("a", ty, Role::In),
                ("b", ty, Role::In),
                ("c", ElemType::F32, Role::Out),
                ("M", ElemType::I32, Role::Scalar),
                ("N", ElemType::I32, Role::Scalar),
                ("K", ElemType::I32, Role::Scalar),
            ]
        );
        let limits = DeviceLimits::h100();
        let shape = [3, 5, 7];
        let lens: Vec<i64> = spec
            .args
            .iter()
            .map(|a| spec.arg_value(a, &shape, &limits).unwrap())
            .collect();
        assert_eq!(lens, [21, 35, 15, 3, 5, 7]);
        assert_eq!(spec.tolerance, 1e-3);
    }
    // The two specs share their source and differ in the element-type define only.
    assert_eq!(f16.source, bf16.source);
    assert_eq!(f16.flags, ["-DHGEMM_BF16=0"]);
    assert_eq!(bf16.flags, ["-DHGEMM_BF16=1"]);
}

#[test]
fn default_config_is_valid_everywhere() {
    let limits = DeviceLimits::h100();
    for name in ["hgemm_f16", "hgemm_bf16"] {
        let spec = load(name);
        for shape in SHAPES {
            let space = spec.space_for(&shape, &limits).unwrap();
            assert!(
                space.is_valid(&spec.default),
                "{name}: default invalid at {shape:?}"
            );
        }
    }
}

#[test]
fn space_holds_many_configs_but_stays_countable() {
    let spec = load("hgemm_f16");
    let limits = DeviceLimits::h100();
    let space = spec.space_for(&[4096, 4096, 4096], &limits).unwrap();
    let n = space.count();
    println!(
        "hgemm_f16 at 4096^3: {n} valid configs of {}",
        space.raw_size()
    );
    assert!((1000..=50_000).contains(&n), "{n} configs");
    // Every parameter takes more than one value among the valid configs (none is dead).
    for (d, p) in spec.params.iter().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        for c in space.iter() {
            seen.insert(space.int_value(&c, d));
        }
        assert_eq!(
            seen.len(),
            p.values.len(),
            "parameter {} takes only {seen:?}",
            p.name
        );
    }
}

#[test]
fn every_valid_config_has_a_legal_geometry() {
    let limits = DeviceLimits::h100();
    let spec = load("hgemm_f16");
    let (bm, bn, sk) = (
        param(&spec, "BM"),
        param(&spec, "BN"),
        param(&spec, "SPLITK"),
    );
    for shape in [[1i64, 4096, 4096], [257, 129, 200], [4096, 4096, 4096]] {
        let space = spec.space_for(&shape, &limits).unwrap();
        let mut seen = 0;
        for c in space.iter() {
            let values: Vec<i64> = (0..spec.params.len())
                .map(|d| space.int_value(&c, d))
                .collect();
            let text = space.config_text(&c);
            let g = spec
                .geometry(&values, &shape, &limits)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            let threads = g.block[0] as i64;
            assert!(
                (32..=512).contains(&threads) && threads % 32 == 0,
                "{text}: {g:?}"
            );
            assert_eq!(g.block[1] * g.block[2], 1);
            assert!(
                g.shared_mem as i64 <= limits.max_shared_per_block_optin,
                "{text}: {g:?}"
            );
            // One block per output tile and split.
            let tiles = (shape[0] + values[bm] - 1) / values[bm]
                * ((shape[1] + values[bn] - 1) / values[bn]);
            assert_eq!(g.grid, [tiles as u32, 1, values[sk] as u32], "{text}");
            seen += 1;
        }
        assert!(seen > 100, "{seen} configs at {shape:?}");
    }
}

#[test]
fn split_k_needs_clusters_and_enough_k() {
    let spec = load("hgemm_f16");
    let sk = param(&spec, "SPLITK");
    let ampere = DeviceLimits {
        cc_major: 8,
        max_shared_per_block_optin: 166_912,
        ..DeviceLimits::h100()
    };
    let space = spec.space_for(&[1, 4096, 4096], &ampere).unwrap();
    assert!(space.count() > 0);
    assert!(space.iter().all(|c| space.int_value(&c, sk) == 1));
    let hopper = spec
        .space_for(&[1, 4096, 4096], &DeviceLimits::h100())
        .unwrap();
    assert!(hopper.iter().any(|c| hopper.int_value(&c, sk) == 8));
    // K = 40: at most 2 splits of 16 (every split gets a slice).
    let small_k = spec
        .space_for(&[64, 64, 40], &DeviceLimits::h100())
        .unwrap();
    let max_split = small_k
        .iter()
        .map(|c| small_k.int_value(&c, sk))
        .max()
        .unwrap();
    assert_eq!(max_split, 2);
}

#[test]
fn source_declares_every_parameter_and_takes_six_arguments() {
    let spec = load("hgemm_f16");
    for p in &spec.params {
        assert!(
            spec.source.contains(&format!("#ifndef {}\n", p.name)),
            "no default for -D{}",
            p.name
        );
    }
    assert!(spec.source.contains("#ifndef HGEMM_BF16\n"));
    let sig = "\nhgemm(";
    let at = spec.source.find(sig).expect("an hgemm( definition");
    let rest = &spec.source[at + sig.len()..];
    let list = &rest[..rest.find(')').unwrap()];
    assert_eq!(list.split(',').count(), spec.args.len(), "`{list}`");
    // NVRTC compiles it without any header.
    assert!(!spec.source.contains("#include"));
}

#[test]
fn sm90_specs_keep_the_interface_and_compile_for_sm90a_only_on_hopper() {
    use jitune::internals::CompileRequest;
    let f16 = load("hgemm_sm90_f16");
    let bf16 = load("hgemm_sm90_bf16");
    let portable = load("hgemm_f16");
    assert_ne!(f16.id(), bf16.id());
    assert_eq!(f16.source, bf16.source);
    for (spec, ty) in [(&f16, ElemType::F16), (&bf16, ElemType::Bf16)] {
        assert_eq!(spec.entry, "hgemm_sm90");
        let dims: Vec<&str> = spec.dims.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(dims, ["M", "N", "K"]);
        let args: Vec<(&str, ElemType)> =
            spec.args.iter().map(|a| (a.name.as_str(), a.ty)).collect();
        assert_eq!(
            args,
            [
                ("a", ty),
                ("b", ty),
                ("c", ElemType::F32),
                ("M", ElemType::I32),
                ("N", ElemType::I32),
                ("K", ElemType::I32),
            ]
        );
        let h100 = DeviceLimits::h100();
        for shape in SHAPES {
            let space = spec.space_for(&shape, &h100).unwrap();
            assert!(
                space.is_valid(&spec.default),
                "{}: default at {shape:?}",
                spec.name
            );
            assert!(
                space.count() >= 50,
                "{}: {} configs",
                spec.name,
                space.count()
            );
            for c in space.iter() {
                let values: Vec<i64> = (0..spec.params.len())
                    .map(|d| space.int_value(&c, d))
                    .collect();
                let g = spec.geometry(&values, &shape, &h100).unwrap();
                assert!(g.block[0] % 128 == 0 && g.block[0] <= 512);
                assert!(g.shared_mem as i64 <= h100.max_shared_per_block_optin);
            }
        }
        // No valid config off compute capability 9.0 (sm_90a code runs nowhere else).
        for (major, minor) in [(8, 0), (8, 9), (10, 0)] {
            let other = DeviceLimits {
                cc_major: major,
                cc_minor: minor,
                ..h100
            };
            let count = spec.space_for(&[512, 512, 512], &other).map(|s| s.count());
            assert!(
                matches!(count, Err(_) | Ok(0)),
                "{}: {count:?} on {major}.{minor}",
                spec.name
            );
        }
        // Compiled for sm_90a on an sm_90 device, the flag itself never reaches NVRTC twice.
        let req = CompileRequest::new(spec, &spec.default, "sm_90");
        assert_eq!(req.arch, "sm_90a");
        assert!(!req.options.iter().any(|o| o.contains("gpu-architecture")));
        assert!(req.options.iter().any(|o| o.starts_with("-DHGEMM_BF16=")));
        // Elsewhere the device's own arch stays (and the kernel would fail to compile).
        assert_eq!(
            CompileRequest::new(spec, &spec.default, "sm_100").arch,
            "sm_100"
        );
    }
    // Specs without the flag compile for the device's arch as before.
    assert_eq!(
        CompileRequest::new(&portable, &portable.default, "sm_90").arch,
        "sm_90"
    );
    for p in &f16.params {
        assert!(
            f16.source.contains(&format!("#ifndef {}\n", p.name)),
            "-D{}",
            p.name
        );
    }
    assert!(!f16.source.contains("#include"));
}

#[test]
fn sm90_warp_specialised_configs_are_persistent_and_fit_the_register_split() {
    let h100 = DeviceLimits::h100();
    for name in ["hgemm_sm90_f16", "hgemm_sm90_bf16"] {
        let spec = load(name);
        let [bm, bn, wgm, stages, ws] =
            ["BM", "BN", "WGM", "STAGES", "WS"].map(|p| param(&spec, p));
        let space = spec.space_for(&[4096, 4096, 4096], &h100).unwrap();
        let n = space.count();
        // Small enough to sweep exhaustively, with every WS value in it.
        assert!((300..=1500).contains(&n), "{name}: {n} configs");
        let mut per_ws = [0usize; 3];
        for shape in [[4096i64, 4096, 4096], [1, 4096, 4096], [257, 129, 200]] {
            let space = spec.space_for(&shape, &h100).unwrap();
            for c in space.iter() {
                let v: Vec<i64> = (0..spec.params.len())
                    .map(|d| space.int_value(&c, d))
                    .collect();
                let text = space.config_text(&c);
                let g = spec.geometry(&v, &shape, &h100).unwrap();
                let tiles = (shape[0] + v[bm] - 1) / v[bm] * ((shape[1] + v[bn] - 1) / v[bn]);
                let wgs = v[bm] / v[wgm];
                let stage_bytes = v[stages] * (v[bm] + v[bn]) * 128 + 1024;
                if v[ws] == 0 {
                    assert_eq!(g.grid, [tiles as u32, 1, 1], "{text}");
                    assert_eq!(g.block[0] as i64, wgs * 128, "{text}");
                    assert_eq!(g.shared_mem as i64, stage_bytes, "{text}");
                    continue;
                }
                if shape[0] == 4096 {
                    per_ws[v[ws] as usize] += 1;
                }
                // Persistent: one block per SM at most, one per tile at most.
                assert_eq!(g.grid, [tiles.min(h100.sm_count) as u32, 1, 1], "{text}");
                // Consumers (two teams for ping-pong, one warpgroup each) plus the producer,
                // at most 3 consumer warpgroups.
                let consumers = if v[ws] == 2 { 2 * wgs } else { wgs };
                if v[ws] == 2 {
                    assert_eq!(wgs, 1, "{text}");
                }
                assert!(consumers <= 3, "{text}");
                assert_eq!(g.block[0] as i64, (consumers + 1) * 128, "{text}");
                // The kernel's setmaxnreg split: 40 registers for the producer, the rest in
                // steps of 8 (at most 240) for the consumers, who hold WGM * BN / 128
                // accumulators each.
                let consumer_regs = ((65536 - 128 * 40) / (consumers * 128) / 8 * 8).min(240);
                assert!(
                    v[wgm] * v[bn] / 128 + 40 <= consumer_regs,
                    "{text}: {consumer_regs} registers"
                );
                // Stages, 1 KiB of alignment slack and the mbarriers.
                assert_eq!(g.shared_mem as i64, stage_bytes + 128, "{text}");
            }
        }
        assert!(per_ws.iter().skip(1).all(|&k| k > 20), "{name}: {per_ws:?}");
    }
}
