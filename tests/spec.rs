//! Kernel specs: TOML and Rust forms agree, ids are stable where they must be and change where
//! they must, and bad specs are clear errors.

use jitune::key::Bucketing;
use jitune::space::Param;
use jitune::spec::{DeviceLimits, KernelSpec, SpecBuilder};
use jitune::Error;

const SRC: &str = "extern \"C\" __global__ void axpy(float a, const float* x, float* y, int n) {}";

const TOML: &str = r#"
name = "axpy"
source = "axpy.cu"
entry = "axpy"
flags = ["-O3"]
tolerance = 1e-5
dims = [{ name = "n", bucket = "pow2" }, { name = "batch", bucket = [1, 8, 64] }]

[params]
BLOCK = [64, 128, 256, 512]
UNROLL = [1, 2, 3, 4]
VEC = [false, true]
MODE = ["plain", "fused"]

[constraints]
fits = "BLOCK * UNROLL <= 1024"
threads = "BLOCK <= max_threads_per_block"

[launch]
grid = ["ceil_div(n, BLOCK * UNROLL)", "batch", 1]
block = ["BLOCK", "1", "1"]
shared_mem = "VEC ? BLOCK * 4 : 0"

[[args]]
name = "a"
type = "f32"
role = "scalar"
value = "2"

[[args]]
name = "x"
type = "f32"
role = "in"
len = "n * batch"
init = "uniform(-1, 1)"

[[args]]
name = "y"
type = "f32"
role = "inout"
len = "n * batch"

[[args]]
name = "n"
type = "i32"
role = "scalar"
value = "n"

[default]
BLOCK = 256
UNROLL = 1
VEC = false
MODE = "plain"
"#;

fn load(text: &str) -> jitune::Result<KernelSpec> {
    KernelSpec::from_toml_str(text, &|name| {
        assert_eq!(name, "axpy.cu");
        Ok(SRC.to_string())
    })
}

fn rust_form() -> SpecBuilder {
    // Deliberately in another order than the TOML file.
    SpecBuilder::new("axpy")
        .source(SRC)
        .entry("axpy")
        .flag("-O3")
        .tolerance(1e-5)
        .param(Param::choices("MODE", &["plain", "fused"]))
        .param(Param::boolean("VEC"))
        .param(Param::ints("BLOCK", &[64, 128, 256, 512]))
        .param(Param::ints("UNROLL", &[1, 2, 3, 4]))
        .constraint("threads", "BLOCK<=max_threads_per_block")
        .constraint("fits", "(BLOCK * UNROLL) <= 1024")
        .dim("n", Bucketing::NextPow2)
        .dim("batch", Bucketing::Edges(vec![1, 8, 64]))
        .grid(["ceil_div(n, BLOCK*UNROLL)", "batch", "1"])
        .block(["BLOCK", "1", "1"])
        .shared_mem("VEC ? BLOCK*4 : 0")
        .arg_scalar("a", "f32", "2")
        .arg_buffer("x", "f32", "in", "n * batch", "uniform(-1, 1)")
        .arg_buffer("y", "f32", "inout", "n*batch", "")
        .arg_scalar("n", "i32", "n")
        .default_config(&[
            ("BLOCK", "256"),
            ("UNROLL", "1"),
            ("VEC", "false"),
            ("MODE", "plain"),
        ])
}

#[test]
fn toml_and_rust_forms_are_the_same_spec() {
    let t = load(TOML).unwrap();
    let r = rust_form().build().unwrap();
    assert_eq!(t.canonical(), r.canonical());
    assert_eq!(t.id(), r.id());
    assert_eq!(t.default, r.default);
    assert_eq!(t.params, r.params);
}

#[test]
fn id_ignores_whitespace_key_order_name_and_default() {
    let base = load(TOML).unwrap().id();
    let spaced = TOML.replace(" = ", "   =   ").replace('\n', "\n\n");
    assert_eq!(load(&spaced).unwrap().id(), base);
    // Reorder top-level keys and the parameter table.
    let reordered = TOML
        .replace(
            "BLOCK = [64, 128, 256, 512]\nUNROLL = [1, 2, 3, 4]",
            "UNROLL = [1, 2, 3, 4]\nBLOCK = [64, 128, 256, 512]",
        )
        .replace(
            "name = \"axpy\"\nsource = \"axpy.cu\"",
            "source = \"axpy.cu\"\nname = \"axpy\"",
        );
    assert_ne!(reordered, TOML);
    assert_eq!(load(&reordered).unwrap().id(), base);
    assert_eq!(
        load(&TOML.replace("name = \"axpy\"", "name = \"renamed\""))
            .unwrap()
            .id(),
        base
    );
    assert_eq!(
        load(&TOML.replace("BLOCK = 256\n", "BLOCK = 128\n"))
            .unwrap()
            .id(),
        base
    );
}

#[test]
fn id_changes_with_what_can_change_the_best_config() {
    let base = rust_form().build().unwrap().id();
    let changed = [
        rust_form().source(&format!("{SRC}\n// v2")).build(),
        rust_form().flag("--use_fast_math").build(),
        rust_form()
            .param(Param::ints("EXTRA", &[1, 2]))
            .default_config(&[
                ("BLOCK", "256"),
                ("UNROLL", "1"),
                ("VEC", "false"),
                ("MODE", "plain"),
                ("EXTRA", "1"),
            ])
            .build(),
        rust_form().constraint("more", "UNROLL != 3").build(),
        rust_form()
            .grid(["ceil_div(n, BLOCK)", "batch", "1"])
            .build(),
        rust_form().block(["BLOCK", "2", "1"]).build(),
        rust_form().shared_mem("0").build(),
        rust_form().tolerance(1e-3).build(),
    ];
    let mut ids = vec![base];
    for c in changed {
        let id = c.unwrap().id();
        assert!(!ids.contains(&id), "a change left the id the same");
        ids.push(id);
    }
    // Values of a parameter changing is a different space too.
    let other = load(&TOML.replace("UNROLL = [1, 2, 3, 4]", "UNROLL = [1, 2, 4]")).unwrap();
    assert_ne!(other.id(), base);
}

#[test]
fn geometry_and_space_evaluate() {
    let s = load(TOML).unwrap();
    let limits = DeviceLimits::h100();
    let space = s.space_for(&[10_000, 8], &limits).unwrap();
    // BLOCK x UNROLL pairs with product <= 1024: 64:4, 128:4, 256:4, 512:2 => 14, times VEC x MODE.
    assert_eq!(space.count(), 14 * 4);
    let c = space
        .parse_config_text("BLOCK=128,UNROLL=3,VEC=True,MODE=fused")
        .unwrap();
    let vals: Vec<i64> = (0..s.params.len())
        .map(|d| space.int_value(&c, d))
        .collect();
    let g = s.geometry(&vals, &[10_000, 8], &limits).unwrap();
    assert_eq!(g.grid, [27, 8, 1]);
    assert_eq!(g.block, [128, 1, 1]);
    assert_eq!(g.shared_mem, 512);
    assert_eq!(s.bucket(&[10_000, 5]).unwrap().dims(), &[16384, 8]);
    assert!(s.bucket(&[1]).is_none());
    assert!(s.space_for(&[1], &limits).is_err());
    assert_eq!(
        s.defines(&c),
        vec!["-DBLOCK=128", "-DMODE=fused", "-DUNROLL=3", "-DVEC=1"]
    );
    assert_eq!(s.arg_value(&s.args[1], &[100, 3], &limits).unwrap(), 300);
}

fn err_text(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn bad_specs_are_clear_errors() {
    let e = load(&TOML.replace("BLOCK * UNROLL <= 1024", "BLOCK * * UNROLL")).unwrap_err();
    match e {
        Error::Expr {
            spec,
            field,
            column,
            ..
        } => {
            assert_eq!(spec, "axpy");
            assert_eq!(field, "constraints.fits");
            assert_eq!(column, 9);
        }
        other => panic!("wrong error {other}"),
    }
    assert!(
        err_text(&TOML.replace("\"BLOCK\", \"1\"", "\"BLOCKS\", \"1\""))
            .contains("unknown name `BLOCKS`")
    );
    assert!(
        err_text(&TOML.replace("len = \"n * batch\"\ninit", "len = \"n * BLOCK\"\ninit"))
            .contains("tunable parameter")
    );
    assert!(err_text(&TOML.replace(
        "type = \"f32\"\nrole = \"in\"",
        "type = \"f33\"\nrole = \"in\""
    ))
    .contains("unknown type"));
    assert!(err_text(&TOML.replace("BLOCK = 256\n", "BLOCK = 257\n"))
        .contains("not a value of `BLOCK`"));
    assert!(err_text(&TOML.replace("VEC = false\n", "")).contains("no value for `VEC`"));
    assert!(err_text(&TOML.replace("[launch]", "[lunch]")).contains("unknown field"));
    assert!(err_text("this is = = not toml").contains("not valid TOML"));
    assert!(err_text(&TOML.replace("uniform(-1, 1)", "uniform(1, -1)")).contains("lo < hi"));
    assert!(
        err_text(&TOML.replace("MODE = [\"plain\", \"fused\"]", "MODE = [\"plain\", 3]"))
            .contains("params.MODE")
    );
    assert!(err_text(&TOML.replace(
        "grid = [\"ceil_div(n, BLOCK * UNROLL)\", \"batch\", 1]",
        "grid = [\"1\"]"
    ))
    .contains("three"));
    // A constraint that excludes every config is an error when the space is built.
    let s = load(&TOML.replace("BLOCK * UNROLL <= 1024", "BLOCK > 4096")).unwrap();
    let e = s
        .space_for(&[100, 1], &DeviceLimits::h100())
        .unwrap_err()
        .to_string();
    assert!(e.contains("exclude every config"), "{e}");
    // A missing source file names the field.
    let e = KernelSpec::from_toml_str(TOML, &|_| Err(Error::Search("nope".into())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`source`"), "{e}");
}

#[test]
fn shipped_sgemm_spec_loads_with_a_large_space() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let s = KernelSpec::from_toml_file(dir.join("sgemm.toml")).unwrap();
    assert_eq!(s.name, "sgemm");
    let limits = DeviceLimits::h100();
    // Large enough to hold poor and excellent configs, small enough for an exhaustive sweep.
    // Split-K is valid only where the tiles leave SMs idle, so at large shapes only SPLIT_K = 1
    // is (decode rows get all four values).
    for shape in [[2048, 2048, 2048], [4096, 4096, 4096], [16, 4096, 4096]] {
        let space = s.space_for(&shape, &limits).unwrap();
        let n = space.count();
        println!("sgemm: {n} valid configs at {shape:?}");
        let most = if shape[0] == 16 { 10_000 } else { 3000 };
        assert!((500..=most).contains(&n), "{n} valid configs at {shape:?}");
        // No dead values: every value of every parameter is in some valid config.
        for (d, p) in s.params.iter().enumerate() {
            if p.name == "SPLIT_K" && shape[0] != 16 {
                continue;
            }
            let mut seen = vec![false; p.values.len()];
            for c in space.iter() {
                seen[c.0[d] as usize] = true;
            }
            assert!(
                seen.iter().all(|&x| x),
                "{}: a value no valid config has",
                p.name
            );
        }
    }
    // The default is valid at every shape, edge shapes included, and every valid config has a
    // launchable geometry: 128 to 512 threads, shared memory within the opt-in limit.
    for shape in [
        [1, 1, 1],
        [1, 4096, 4096],
        [3, 5, 7],
        [100, 4100, 72],
        [8192, 8192, 8192],
    ] {
        let space = s.space_for(&shape, &limits).unwrap();
        assert!(space.is_valid(&s.default), "default invalid at {shape:?}");
        for c in space.iter() {
            let values: Vec<i64> = (0..s.params.len())
                .map(|d| space.int_value(&c, d))
                .collect();
            let g = s.geometry(&values, &shape, &limits).unwrap();
            let threads = g.block[0] * g.block[1] * g.block[2];
            assert!((128..=512).contains(&threads) && threads % 32 == 0);
            assert!(g.shared_mem as i64 <= limits.max_shared_per_block_optin);
            assert!(g.grid.iter().all(|&d| d >= 1));
        }
    }
    // Reading the same file twice gives the same id; the source is part of it.
    assert_eq!(
        KernelSpec::from_toml_file(dir.join("sgemm.toml"))
            .unwrap()
            .id(),
        s.id()
    );
    assert!(KernelSpec::from_toml_file(dir.join("missing.toml")).is_err());
}

#[test]
fn zero_filled_outputs_are_part_of_the_spec() {
    // TOML `zero = "..."` on an out/inout buffer and the builder's `zero_fill` are the same spec.
    let toml = TOML.replace(
        "role = \"inout\"\nlen = \"n * batch\"",
        "role = \"inout\"\nlen = \"n * batch\"\nzero = \"UNROLL > 1\"",
    );
    let t = load(&toml).unwrap();
    let r = rust_form().zero_fill("y", "UNROLL>1").build().unwrap();
    assert_eq!(t.id(), r.id());
    // It changes what runs, so it changes the id; specs without it keep theirs.
    let plain = rust_form().build().unwrap();
    assert_ne!(t.id(), plain.id());
    assert!(!plain.canonical().contains("zero"));
    let y = t.args.iter().find(|a| a.name == "y").unwrap();
    let z = y.zero.as_ref().expect("y is zero-filled");
    assert_eq!(z.eval_with(|v| (v == "UNROLL").then_some(4)), Ok(1));
    assert_eq!(z.eval_with(|v| (v == "UNROLL").then_some(1)), Ok(0));
    // As the launch paths see it: a mask with y's bit (argument 2) for UNROLL = 4 only.
    let mask = |unroll: i64| {
        let names: Vec<&str> = t.params.iter().map(|p| p.name.as_str()).collect();
        let values: Vec<i64> = names
            .iter()
            .map(|n| if *n == "UNROLL" { unroll } else { 1 })
            .collect();
        let mut env = [0i64; jitune::spec::MAX_VARS];
        t.fill_env(&values, &[1024, 8], &DeviceLimits::h100(), &mut env);
        t.zero_mask(&env).unwrap()
    };
    assert_eq!(mask(4), 1 << 2);
    assert_eq!(mask(1), 0);
    // The worker-process form carries it.
    let back = jitune::spec::wire::from_wire(&jitune::spec::wire::to_wire(&t), SRC, &t).unwrap();
    assert_eq!(back.id(), t.id());
    assert!(back.args.iter().any(|a| a.name == "y" && a.zero.is_some()));
    // Only outputs can be zero-filled, only known arguments, and the expression must parse.
    let on_input = TOML.replace(
        "init = \"uniform(-1, 1)\"",
        "init = \"uniform(-1, 1)\"\nzero = \"1\"",
    );
    assert!(err_text(&on_input).contains("only an `out` or `inout` buffer"));
    let e = rust_form().zero_fill("nope", "1").build().unwrap_err();
    assert!(e.to_string().contains("args.nope.zero"), "{e}");
    assert!(err_text(&toml.replace("UNROLL > 1", "UNROLL >")).contains("args.y.zero"));
}
