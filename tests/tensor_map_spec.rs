//! Tensor-map arguments in kernel specs (CPU only): parsing, validation errors, the canonical
//! form and its hash, the implicit box constraints, and the round trip through the TOML a
//! benchmark worker receives.

use jitune::key::Bucketing;
use jitune::space::Param;
use jitune::spec::wire::{from_wire, to_wire};
use jitune::spec::{DeviceLimits, KernelSpec, Role, SpecBuilder, Swizzle};

const SRC: &str = "extern \"C\" __global__ void g(const CUtensorMap a_map, const unsigned short* a, float* c, int m, int k) {}";

fn toml_with(map: &str) -> String {
    format!(
        r#"
name = "tm"
source = "g.cu"
entry = "g"
dims = [{{ name = "M", bucket = "pow2" }}, {{ name = "K", bucket = "pow2" }}]
[params]
BM = [64, 128, 256, 512]
SW = ["none", "wide"]
[launch]
grid = ["ceil_div(M, BM)", 1, 1]
block = [128, 1, 1]
{map}
[[args]]
name = "a"
type = "f16"
role = "in"
len = "M * K"
[[args]]
name = "c"
type = "f32"
role = "out"
len = "M"
[[args]]
name = "m"
type = "i32"
role = "scalar"
value = "M"
[[args]]
name = "k"
type = "i32"
role = "scalar"
value = "K"
[default]
BM = 128
SW = "none"
"#
    )
}

const MAP: &str = r#"
[[args]]
name = "a_map"
role = "tensor_map"
of = "a"
dims = ["K", "M"]
box = ["64", "BM"]
swizzle = "128B"
"#;

fn parse(text: &str) -> jitune::Result<KernelSpec> {
    KernelSpec::from_toml_str(text, &|_| Ok(SRC.to_string()))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn builder() -> SpecBuilder {
    SpecBuilder::new("tm")
        .source(SRC)
        .entry("g")
        .dim("M", Bucketing::NextPow2)
        .dim("K", Bucketing::NextPow2)
        .param(Param::ints("BM", &[64, 128, 256, 512]))
        .param(Param::choices("SW", &["none", "wide"]))
        .grid(["ceil_div(M, BM)", "1", "1"])
        .block(["128", "1", "1"])
        .arg_tensor_map("a_map", "a", &["K", "M"], &["64", "BM"], "128B")
        .arg_buffer("a", "f16", "in", "M * K", "")
        .arg_buffer("c", "f32", "out", "M", "")
        .arg_scalar("m", "i32", "M")
        .arg_scalar("k", "i32", "K")
        .default_config(&[("BM", "128"), ("SW", "none")])
}

#[test]
fn a_tensor_map_parses_with_the_buffer_type() {
    let spec = parse(&toml_with(MAP)).unwrap();
    let a = &spec.args[0];
    assert_eq!(a.name, "a_map");
    assert_eq!(a.role, Role::TensorMap);
    assert_eq!(a.ty, jitune::spec::ElemType::F16);
    let m = a.map.as_ref().unwrap();
    assert_eq!(spec.args[m.of].name, "a");
    assert_eq!(m.swizzle, Swizzle::B128);
    assert_eq!(
        m.dims.iter().map(|e| e.source()).collect::<Vec<_>>(),
        ["K", "M"]
    );
    assert_eq!(
        m.box_dims.iter().map(|e| e.source()).collect::<Vec<_>>(),
        ["64", "BM"]
    );
    assert_eq!(spec.tensor_maps(), 1);
    assert_eq!(spec.caller_args(), 4);
    assert!(spec.args.iter().skip(1).all(|a| a.map.is_none()));
}

#[test]
fn toml_and_builder_hash_alike_and_the_map_is_part_of_the_id() {
    let t = parse(&toml_with(MAP)).unwrap();
    let b = builder().build().unwrap();
    assert_eq!(t.canonical(), b.canonical());
    assert_eq!(t.id(), b.id());
    let canon = t.canonical();
    assert!(
        canon.contains("arg.a_map=f16:tensor_map:of=a:dims=[") && canon.contains(":swizzle=128B\n"),
        "{canon}"
    );
    // Formatting, key order and an explicit matching type change nothing.
    let reordered = MAP
        .replace("swizzle = \"128B\"", "")
        .replace(
            "role = \"tensor_map\"",
            "swizzle = \"128B\"\nrole = \"tensor_map\"\ntype = \"f16\"",
        )
        .replace("box = [\"64\", \"BM\"]", "box = [64, \"( BM )\"]");
    assert_eq!(parse(&toml_with(&reordered)).unwrap().id(), t.id());
    // Every part of the map changes the id.
    for (from, to) in [
        ("box = [\"64\", \"BM\"]", "box = [\"32\", \"BM\"]"),
        ("dims = [\"K\", \"M\"]", "dims = [\"K\", \"M * 1 + 0\"]"),
        ("swizzle = \"128B\"", "swizzle = \"none\""),
        ("name = \"a_map\"", "name = \"a_desc\""),
    ] {
        let changed = parse(&toml_with(&MAP.replace(from, to))).unwrap();
        assert_ne!(changed.id(), t.id(), "{from} -> {to}");
    }
    // Without the map: the id of a spec with no tensor maps is what it always was (the
    // canonical form of other arguments did not change).
    let plain = parse(&toml_with("")).unwrap();
    assert!(!plain.canonical().contains("tensor_map"));
    assert_ne!(plain.id(), t.id());
    assert_eq!(plain.id(), parse(&toml_with("")).unwrap().id());
}

#[test]
fn box_rules_become_constraints_of_the_space() {
    let spec = parse(&toml_with(MAP)).unwrap();
    let plain = parse(&toml_with("")).unwrap();
    let limits = DeviceLimits::h100();
    let with = spec.space_for(&[4096, 4096], &limits).unwrap().count();
    let without = plain.space_for(&[4096, 4096], &limits).unwrap().count();
    // BM = 512 is over the 256 box limit.
    assert_eq!(without, 8);
    assert_eq!(with, 6);
    // A 128-wide f16 inner box (256 bytes) is wider than the 128B swizzle: no config at all
    // unless the default is valid, which it is not, so the spec is refused.
    let e = err(&toml_with(&MAP.replace("box = [\"64\"", "box = [\"128\"")));
    assert!(e.contains("tensor_map.a_map.swizzle"), "{e}");
    // Without a swizzle the same box is fine.
    let wide = MAP
        .replace("box = [\"64\"", "box = [\"128\"")
        .replace("swizzle = \"128B\"", "swizzle = \"none\"");
    parse(&toml_with(&wide)).unwrap();
}

#[test]
fn bad_tensor_maps_are_clear_errors() {
    let cases: Vec<(String, &str)> = vec![
        (
            MAP.replace("of = \"a\"", "of = \"b\""),
            "unknown argument `b`",
        ),
        (
            MAP.replace("of = \"a\"", "of = \"m\""),
            "is a scalar argument",
        ),
        (
            MAP.replace("of = \"a\"", "of = \"a_map\""),
            "is a tensor_map argument",
        ),
        (MAP.replace("of = \"a\"\n", ""), "args.a_map.of"),
        (
            MAP.replace("dims = [\"K\", \"M\"]", "dims = []")
                .replace("box = [\"64\", \"BM\"]", "box = []"),
            "rank 0",
        ),
        (
            MAP.replace("dims = [\"K\", \"M\"]", "dims = [1, 1, 1, 1, 1, 1]")
                .replace("box = [\"64\", \"BM\"]", "box = [8, 1, 1, 1, 1, 1]"),
            "rank 6",
        ),
        (
            MAP.replace("box = [\"64\", \"BM\"]", "box = [\"64\"]"),
            "1 box dims for 2 dims",
        ),
        (
            MAP.replace("\"128B\"", "\"256B\""),
            "unknown swizzle `256B`",
        ),
        (
            MAP.replace("box = [\"64\", \"BM\"]", "box = [\"64\", \"M\"]"),
            "a box may only depend on parameters",
        ),
        (
            MAP.replace("dims = [\"K\", \"M\"]", "dims = [\"K\", \"BM\"]"),
            "tunable parameter",
        ),
        (
            MAP.replace("box = [\"64\", \"BM\"]", "box = [\"64\", \"BM * 4\"]"),
            "tensor_map.a_map.box1",
        ),
        (
            MAP.replace("box = [\"64\", \"BM\"]", "box = [\"4\", \"BM\"]"),
            "tensor_map.a_map.inner16",
        ),
        (
            MAP.replace(
                "role = \"tensor_map\"",
                "role = \"tensor_map\"\ntype = \"f32\"",
            ),
            "differs from the type of `a`",
        ),
        (
            MAP.replace(
                "role = \"tensor_map\"",
                "role = \"tensor_map\"\nlen = \"M\"",
            ),
            "unknown key for a tensor map",
        ),
        (
            MAP.replace("box = [\"64\", \"BM\"]", "box = [\"64\", true]"),
            "args.a_map.box[1]",
        ),
        (
            MAP.replace("role = \"tensor_map\"", "role = \"tensormap\""),
            "args.a_map",
        ),
    ];
    for (map, want) in cases {
        let e = err(&toml_with(&map));
        assert!(e.contains(want), "wanted `{want}` in `{e}` for\n{map}");
        assert!(e.contains("tm"), "{e}");
    }
    // A buffer argument may not carry map keys.
    let text = toml_with("").replace("len = \"M * K\"", "len = \"M * K\"\nswizzle = \"128B\"");
    assert!(err(&text).contains("only a `tensor_map` argument"));
    // The builder reports the same errors.
    let e = builder()
        .arg_tensor_map("x_map", "nothing", &["K"], &["64"], "none")
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown argument `nothing`"), "{e}");
    let e = builder()
        .arg_tensor_map("a_map", "a", &["K"], &["64"], "none")
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("defined twice"), "{e}");
}

#[test]
fn tensor_maps_survive_the_trip_to_a_benchmark_worker() {
    for text in [
        toml_with(MAP),
        toml_with(
            &MAP.replace("\"128B\"", "\"64B\"")
                .replace("\"64\"", "\"32\""),
        ),
    ] {
        let spec = parse(&text).unwrap();
        let toml = to_wire(&spec);
        assert!(toml.contains("role = \"tensor_map\""), "{toml}");
        let back = from_wire(&toml, &spec.source, &spec).unwrap();
        assert_eq!(back.id(), spec.id());
        assert_eq!(back.canonical(), spec.canonical());
        assert_eq!(back.args[0].map.as_ref().unwrap().of, 1);
    }
    let spec = builder().build().unwrap();
    let back = from_wire(&to_wire(&spec), &spec.source, &spec).unwrap();
    assert_eq!(back.id(), spec.id());
}

#[test]
fn the_map_may_follow_its_buffer() {
    // `of` may name an argument declared after or before the map.
    let after = toml_with("").replace("[default]", &format!("{MAP}\n[default]"));
    let spec = parse(&after).unwrap();
    let last = spec.args.last().unwrap();
    assert_eq!(last.role, Role::TensorMap);
    assert_eq!(spec.args[last.map.as_ref().unwrap().of].name, "a");
}

#[test]
fn the_tma_gemm_specs_load_with_two_maps_and_six_caller_arguments() {
    for (name, plain) in [
        ("hgemm_sm90_tma_f16", "hgemm_sm90_f16"),
        ("hgemm_sm90_tma_bf16", "hgemm_sm90_bf16"),
    ] {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
        let spec = KernelSpec::from_toml_file(format!("{dir}/{name}.toml")).unwrap();
        let old = KernelSpec::from_toml_file(format!("{dir}/{plain}.toml")).unwrap();
        assert_eq!(spec.tensor_maps(), 2);
        assert_eq!(spec.caller_args(), 6);
        // The caller's six arguments are the cp.async spec's, in the same order.
        let callers: Vec<_> = spec
            .args
            .iter()
            .filter(|a| a.role != Role::TensorMap)
            .map(|a| (a.name.clone(), a.ty, a.role))
            .collect();
        let olds: Vec<_> = old
            .args
            .iter()
            .map(|a| (a.name.clone(), a.ty, a.role))
            .collect();
        assert_eq!(callers, olds);
        for (map, of) in [("a_map", "a"), ("b_map", "b")] {
            let a = spec.args.iter().find(|a| a.name == map).unwrap();
            let m = a.map.as_ref().unwrap();
            assert_eq!(spec.args[m.of].name, of);
            assert_eq!(m.swizzle, Swizzle::B128);
            assert_eq!(a.ty, spec.args[m.of].ty);
        }
        let limits = DeviceLimits::h100();
        for shape in [[4096, 4096, 4096], [257, 129, 200], [1, 4096, 4096]] {
            let space = spec.space_for(&shape, &limits).unwrap();
            assert!(space.iter().any(|c| c == spec.default), "{name} {shape:?}");
            assert!(space.count() > 100, "{name}: {}", space.count());
            for c in space.iter() {
                let values: Vec<i64> = (0..spec.params.len())
                    .map(|d| space.int_value(&c, d))
                    .collect();
                spec.geometry(&values, &shape, &limits).unwrap();
                assert!(
                    spec.defines(&c).contains(&"-DWS=1".to_string())
                        || spec.defines(&c).contains(&"-DWS=2".to_string())
                );
            }
        }
        assert!(spec.flags.contains(&"-DTMA=1".to_string()));
        // Split-K adds into c: jitune zero-fills it for those configs only.
        let c = spec.args.iter().find(|a| a.name == "c").unwrap();
        let zero = c.zero.as_ref().expect("c is zero-filled for split-K");
        assert_eq!(zero.eval_with(|v| (v == "SPLIT_K").then_some(4)), Ok(1));
        assert_eq!(zero.eval_with(|v| (v == "SPLIT_K").then_some(1)), Ok(0));
        assert_ne!(spec.id(), old.id());
        let back = from_wire(&to_wire(&spec), &spec.source, &spec).unwrap();
        assert_eq!(back.id(), spec.id());
    }
}
