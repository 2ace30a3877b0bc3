//! Bad input never panics: the expression parser and the spec TOML loader are fed random and
//! mutated inputs, and every result must be a value (`Ok` or `Err`), never a panic.
//!
//! CI runs a few thousand cases; `JITUNE_FUZZ_CASES=N` runs more (a few minutes' worth is a
//! few million expression cases). Inputs are generated from a seeded RNG, so a failure names
//! the case that reproduces it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use jitune::internals::Expr;
use jitune::internals::Rng;
use jitune::spec::{DeviceLimits, KernelSpec};

fn cases(default: usize) -> usize {
    std::env::var("JITUNE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PIECES: [&str; 40] = [
    "a",
    "b",
    "n",
    "BM",
    "x1",
    "0",
    "1",
    "-1",
    "7",
    "9223372036854775807",
    "0x7f",
    "1_000",
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "(",
    ")",
    ",",
    "?",
    ":",
    "min(",
    "max(",
    "ceil_div(",
    "log2(",
    "pow2(",
    "true",
    " ",
    "$",
    "é",
];

fn random_expr(rng: &mut Rng) -> String {
    let len = 1 + rng.index(24);
    (0..len).map(|_| PIECES[rng.index(PIECES.len())]).collect()
}

#[test]
fn expression_parser_and_evaluator_never_panic() {
    let n = cases(20_000);
    let mut rng = Rng::new(0xF00D);
    let mut parsed = 0;
    for case in 0..n {
        let src = random_expr(&mut rng);
        let r = catch_unwind(|| {
            if let Ok(e) = Expr::parse(&src) {
                let vals = [3i64, -2, 0, i64::MAX, 64];
                let _ = e.eval_with(|name| vals.get(name.len() % vals.len()).copied());
                let b = e.bind(|name| Some(name.len() as u16 % 4)).ok();
                if let Some(b) = b {
                    let _ = b.eval(&[1, 0, -1, i64::MIN]);
                    let _ = b.eval(&[]);
                }
                let _ = e.canonical();
                return true;
            }
            false
        });
        match r {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => panic!("case {case}: the expression parser panicked on {src:?}"),
        }
    }
    // The generator must reach the evaluator, not only the error paths.
    assert!(parsed > n / 50, "only {parsed} of {n} inputs parsed");
}

#[test]
fn spec_loader_never_panics_on_mutated_toml() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let base = std::fs::read_to_string(dir.join("sgemm.toml")).unwrap();
    let source = std::fs::read_to_string(dir.join("sgemm.cu")).unwrap();
    let bytes = base.as_bytes();
    let n = cases(3_000);
    let mut rng = Rng::new(0xBEEF);
    let inserts: [&str; 12] = [
        "[", "]", "=", "\"", "\n", "0", "-1", "1e309", "[[args]]", "{", "}", ",",
    ];
    let (mut loaded, mut spaces) = (0, 0);
    for case in 0..n {
        let mut text = bytes.to_vec();
        for _ in 0..1 + rng.index(4) {
            let at = rng.index(text.len() + 1);
            match rng.index(3) {
                0 if at < text.len() => {
                    let end = (at + 1 + rng.index(12)).min(text.len());
                    text.drain(at..end);
                }
                1 => {
                    let ins = inserts[rng.index(inserts.len())].as_bytes();
                    text.splice(at..at, ins.iter().copied());
                }
                _ if at < text.len() => {
                    text[at] = b"0123456789abcxyz_ *-+()<>=!&|\"[]"[rng.index(32)]
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let spec = KernelSpec::from_toml_str(&text, &|_| Ok(source.clone()))?;
            let mut ok = (1, 0);
            for shape in [[1i64, 1, 1], [4096, 4096, 4096], [0, 7, -3]] {
                if let Ok(space) = spec.space_for(&shape, &DeviceLimits::h100()) {
                    ok.1 = 1;
                    if let Some(c) = space.iter().next() {
                        let vals: Vec<i64> = (0..spec.params.len())
                            .map(|d| space.int_value(&c, d))
                            .collect();
                        let _ = spec.geometry(&vals, &shape, &DeviceLimits::h100());
                    }
                }
            }
            Ok::<_, jitune::Error>(ok)
        }));
        match r {
            Ok(Ok((l, s))) => {
                loaded += l;
                spaces += s;
            }
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Err(_) => panic!("case {case}: the spec loader panicked on:\n{text}"),
        }
    }
    assert!(
        loaded > 0 && spaces > 0,
        "mutations never produced a loadable spec ({loaded}/{spaces})"
    );
}
