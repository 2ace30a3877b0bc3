//! The last check of a remote winner, made by the tuner: is its config a point of the current
//! spec's space?
//!
//! A record that passed [`decode_entry`](super::decode_entry) is for the right spec id, device
//! and shape, but its config text is still data from elsewhere. The spec id covers the
//! parameter lists and constraints, so a config of the same spec id should always be in the
//! space; this check makes sure of it rather than trusting it (a hand-made record, a writer
//! with a bug). The tuner calls it with the space it built for the miss, before compiling or
//! loading anything for the config.

use super::record::Rejection;
use crate::space::{Config, SearchSpace};

/// The config `text` names in `space`, if it is a valid point of it and `text` is its
/// canonical spelling; otherwise [`Rejection::Config`] saying why.
pub fn check_config(space: &SearchSpace, text: &str) -> Result<Config, Rejection> {
    let c = space
        .parse_config_text(text)
        .map_err(|e| Rejection::Config(format!("`{text}`: {e}")))?;
    if !space.is_valid(&c) {
        return Err(Rejection::Config(format!(
            "`{text}` violates the spec's constraints"
        )));
    }
    let canonical = space.config_text(&c);
    if canonical != text {
        return Err(Rejection::Config(format!(
            "`{text}` is not canonical (`{canonical}`)"
        )));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Expr;
    use crate::space::Param;

    #[test]
    fn only_canonical_valid_points_pass() {
        let space = SearchSpace::new(
            vec![Param::ints("BM", &[32, 64]), Param::ints("BN", &[32, 64])],
            &[Expr::parse("BM <= BN").unwrap()],
            &[],
        )
        .unwrap();
        assert!(check_config(&space, "BM=32,BN=64").is_ok());
        for bad in [
            "BM=64,BN=32",
            "BM=128,BN=128",
            "BM=32",
            "BM=32,BN=64,X=1",
            "BN=64,BM=32",
        ] {
            assert!(
                matches!(check_config(&space, bad), Err(Rejection::Config(_))),
                "{bad}"
            );
        }
    }
}
