//! The wire form of a spec: how a spec travels to a worker process (the benchmark worker of
//! isolated tuning), which rebuilds it from data rather than receiving Rust values.
//!
//! The form is the spec's TOML text (the writer of `spec/toml.rs`) with `source = "inline"`;
//! the CUDA source travels beside it, separately, and the receiver hands it to the reader.
//! The receiver then checks that the spec it rebuilt has the sender's id and default config:
//! a spec whose canonical form did not survive the trip would be another kernel, and the
//! worker would tune and time the wrong thing. The sender checks the round trip too, before
//! starting any worker ([`from_wire`] on its own text), so that a spec that cannot travel
//! fails once, in the host.

use crate::space::Config;
use crate::{Error, Result};

use super::kernel::KernelSpec;
use super::toml::write;

/// The `source` the wire form names: the reader is given the source separately.
const INLINE_SOURCE: &str = "inline";

/// The spec as wire text: TOML that [`from_wire`] reads back, given the spec's source, into
/// the same spec (same id, same default).
pub fn to_wire(spec: &KernelSpec) -> String {
    write(spec, INLINE_SOURCE)
}

/// Rebuilds a spec from [`to_wire`]'s text and its source; an error unless the result has
/// the id of `expected` and the same default config.
pub fn from_wire(text: &str, source: &str, expected: &KernelSpec) -> Result<KernelSpec> {
    let spec = read(text, source)?;
    check_same(&spec, &expected.id().to_hex(), &expected.default)?;
    Ok(spec)
}

/// Rebuilds a spec from [`to_wire`]'s text and its source, unchecked: a receiver that was
/// sent the id and default as text checks them with [`check_same`] once it can read them.
pub(crate) fn read(text: &str, source: &str) -> Result<KernelSpec> {
    KernelSpec::from_toml_str(text, &|_| Ok(source.to_string()))
}

/// An error unless `spec` has the id `id_hex` (as [`crate::key::KernelId::to_hex`] writes it)
/// and the default config `default`.
pub(crate) fn check_same(spec: &KernelSpec, id_hex: &str, default: &Config) -> Result<()> {
    if spec.id().to_hex() != id_hex || &spec.default != default {
        return Err(Error::InvalidArgument(format!(
            "kernel `{}` does not survive serialisation for a benchmark worker (id {} became {})",
            spec.name,
            id_hex,
            spec.id().to_hex()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped spec (`kernels/*.toml`) and the fault-test spec.
    fn shipped() -> Vec<KernelSpec> {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(format!("{root}/kernels"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        assert!(paths.len() >= 10, "kernels/*.toml: {paths:?}");
        paths.push(format!("{root}/tests/data/faults.toml").into());
        paths
            .iter()
            .map(|p| {
                KernelSpec::from_toml_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            })
            .collect()
    }

    #[test]
    fn every_shipped_spec_survives_the_trip_to_a_worker() {
        for spec in shipped() {
            let text = to_wire(&spec);
            let back = from_wire(&text, &spec.source, &spec).unwrap();
            assert_eq!(back.id(), spec.id(), "{}", spec.name);
            assert_eq!(back.canonical(), spec.canonical(), "{}", spec.name);
            assert_eq!(back.default, spec.default, "{}", spec.name);
            assert_eq!(back.name, spec.name);
            assert_eq!(back.source, spec.source);
            // Writing the rebuilt spec gives the same text: nothing drifts on a second trip.
            assert_eq!(to_wire(&back), text, "{}", spec.name);
        }
    }

    #[test]
    fn a_changed_spec_is_refused() {
        let spec = &shipped()[0];
        let text = to_wire(spec).replace("tolerance = ", "tolerance = 2.0 # ");
        assert!(from_wire(&text, &spec.source, spec).is_err());
        let src = format!("{}\n// changed", spec.source);
        assert!(from_wire(&to_wire(spec), &src, spec).is_err());
        // Another default config is refused as well (same id: the default is not hashed).
        let other = Config(spec.default.0.iter().map(|&i| i ^ 1).collect());
        let back = read(&to_wire(spec), &spec.source).unwrap();
        assert!(check_same(&back, &spec.id().to_hex(), &spec.default).is_ok());
        assert!(check_same(&back, &spec.id().to_hex(), &other).is_err());
    }
}
