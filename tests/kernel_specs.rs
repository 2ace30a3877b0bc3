//! The memory-bound kernel specs (`kernels/softmax`, `kernels/layernorm`, `kernels/reduction`)
//! on the CPU: each loads, the ids differ, the default config is valid at ordinary and edge
//! shapes on an H100's limits, the space is neither trivial nor too large to tune quickly, every
//! valid config's launch geometry evaluates to a non-empty grid and a legal block, and the CUDA
//! source declares every parameter and takes as many arguments as the spec passes.

use jitune::spec::{DeviceLimits, KernelSpec};

fn load(name: &str) -> KernelSpec {
    let path = format!("{}/kernels/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    KernelSpec::from_toml_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Each spec with a typical shape and edge shapes.
fn specs() -> Vec<(KernelSpec, Vec<i64>, Vec<Vec<i64>>)> {
    let rows_cols = vec![
        vec![1, 1],
        vec![3, 7],
        vec![1, 4097],
        vec![64, 1000],
        vec![257, 4097],
        vec![4096, 4096],
        vec![1, 65536],
        vec![1 << 20, 1],
    ];
    vec![
        (load("softmax"), vec![4096, 4096], rows_cols.clone()),
        (load("layernorm"), vec![4096, 4096], rows_cols),
        (
            load("reduction"),
            vec![1 << 24],
            vec![
                vec![1],
                vec![7],
                vec![1000],
                vec![1 << 20],
                vec![10_000_019],
                vec![i32::MAX as i64],
            ],
        ),
    ]
}

#[test]
fn specs_load_with_distinct_ids_and_names() {
    let all = specs();
    let names: Vec<&str> = all.iter().map(|(s, _, _)| s.name.as_str()).collect();
    assert_eq!(names, ["softmax", "layernorm", "reduction"]);
    for (i, (a, _, _)) in all.iter().enumerate() {
        assert_eq!(a.entry, a.name, "entry point of {}", a.name);
        for (b, _, _) in &all[i + 1..] {
            assert_ne!(a.id(), b.id(), "{} and {} share an id", a.name, b.name);
        }
        // Loading twice gives the same id.
        assert_eq!(a.id(), load(&a.name).id());
    }
}

#[test]
fn tolerances_are_as_documented() {
    let all = specs();
    let tol: Vec<f64> = all.iter().map(|(s, _, _)| s.tolerance).collect();
    assert_eq!(tol, [1e-5, 1e-4, 1e-5]);
}

#[test]
fn default_config_is_valid_at_typical_and_edge_shapes() {
    let limits = DeviceLimits::h100();
    for (spec, typical, edges) in specs() {
        for shape in std::iter::once(&typical).chain(&edges) {
            let space = spec.space_for(shape, &limits).unwrap();
            assert!(
                space.is_valid(&spec.default),
                "{}: default invalid at {shape:?}",
                spec.name
            );
        }
    }
}

#[test]
fn space_sizes_are_quick_to_tune() {
    let limits = DeviceLimits::h100();
    for (spec, typical, _) in specs() {
        let n = spec.space_for(&typical, &limits).unwrap().count();
        println!("{}: {n} valid configs at {typical:?}", spec.name);
        assert!((50..=1000).contains(&n), "{}: {n} configs", spec.name);
    }
}

#[test]
fn every_valid_config_has_a_legal_geometry() {
    let limits = DeviceLimits::h100();
    for (spec, typical, edges) in specs() {
        for shape in std::iter::once(&typical).chain(&edges) {
            let space = spec.space_for(shape, &limits).unwrap();
            let mut seen = 0;
            for c in space.iter() {
                let values: Vec<i64> = (0..spec.params.len())
                    .map(|d| space.int_value(&c, d))
                    .collect();
                let g = spec
                    .geometry(&values, shape, &limits)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", spec.name, space.config_text(&c)));
                let text = space.config_text(&c);
                assert!(
                    g.grid.iter().all(|&d| d >= 1),
                    "{} {text}: {g:?}",
                    spec.name
                );
                assert!(g.grid[0] <= i32::MAX as u32 && g.grid[1] <= 65535 && g.grid[2] <= 65535);
                let threads: u64 = g.block.iter().map(|&b| b as u64).product();
                assert!(
                    (32..=1024).contains(&threads) && threads % 32 == 0,
                    "{} {text}: block {:?}",
                    spec.name,
                    g.block
                );
                assert!(g.shared_mem <= 48 * 1024, "{} {text}", spec.name);
                seen += 1;
            }
            assert!(seen > 0, "{}: empty space at {shape:?}", spec.name);
        }
    }
}

#[test]
fn rows_kernels_cover_every_row() {
    // softmax and layernorm: grid * rows-per-block covers the rows (a row is never skipped).
    let limits = DeviceLimits::h100();
    for name in ["softmax", "layernorm"] {
        let spec = load(name);
        for shape in [[1i64, 1], [3, 7], [257, 4097], [4096, 4096]] {
            let space = spec.space_for(&shape, &limits).unwrap();
            let rpb = spec.params.iter().position(|p| p.name == "RPB").unwrap();
            for c in space.iter() {
                let values: Vec<i64> = (0..spec.params.len())
                    .map(|d| space.int_value(&c, d))
                    .collect();
                let g = spec.geometry(&values, &shape, &limits).unwrap();
                assert!(
                    g.grid[0] as i64 * values[rpb] >= shape[0],
                    "{name} {shape:?}"
                );
            }
        }
    }
    // reduction: the grid covers exactly the 1024 slices whatever the config.
    let spec = load("reduction");
    let space = spec.space_for(&[1000], &limits).unwrap();
    let spb = spec.params.iter().position(|p| p.name == "SPB").unwrap();
    for c in space.iter() {
        let values: Vec<i64> = (0..spec.params.len())
            .map(|d| space.int_value(&c, d))
            .collect();
        let g = spec.geometry(&values, &[1000], &limits).unwrap();
        assert_eq!(g.grid[0] as i64 * values[spb], 1024);
    }
    let partials = spec.args.iter().find(|a| a.name == "partials").unwrap();
    assert_eq!(spec.arg_value(partials, &[7], &limits).unwrap(), 1024);
}

#[test]
fn sources_declare_every_parameter_and_match_the_arguments() {
    for (spec, _, _) in specs() {
        for p in &spec.params {
            assert!(
                spec.source.contains(&format!("#ifndef {}\n", p.name)),
                "{}: no default for -D{}",
                spec.name,
                p.name
            );
        }
        assert!(!spec.flags.iter().any(|f| f == "-O3"), "NVRTC rejects -O3");
        // The entry point's parameter list has one entry per spec argument.
        let sig = format!("\n{}(", spec.entry);
        let at = spec
            .source
            .find(&sig)
            .unwrap_or_else(|| panic!("{}: no `{}(` definition", spec.name, spec.entry));
        let rest = &spec.source[at + sig.len()..];
        let list = &rest[..rest.find(')').unwrap()];
        assert_eq!(
            list.split(',').count(),
            spec.args.len(),
            "{}: `{list}`",
            spec.name
        );
        assert!(spec.source.contains("extern \"C\" __global__"));
        assert!(!spec.source.contains("#include"), "{}", spec.name);
    }
}
