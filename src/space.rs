//! Search spaces: the tunable parameters of a kernel and the configs that satisfy its constraints.
//!
//! A config is a vector of indices, one per parameter, into that parameter's list of candidate
//! values. Spaces can be huge (10^7 raw points and more), so nothing here materialises the raw
//! product: enumeration is a depth-first walk that checks each constraint as soon as every
//! parameter it reads is assigned, pruning whole subtrees; uniform sampling is rejection sampling
//! over the raw product, with a fallback to the (materialised) valid set when valid configs are
//! rare. Neighbourhoods and a numeric feature encoding serve the search strategies.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::expr::Expr;
use crate::rng::Rng;
use crate::{Error, Result};

/// One candidate value of a tunable parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Int(i64),
    Bool(bool),
    Str(String),
}

impl Value {
    /// The integer the value stands for in expressions and `-D` defines: the integer itself,
    /// 0/1 for booleans, `None` for strings (an enum's strings stand for their index instead).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            Value::Str(_) => None,
        }
    }
}

impl fmt::Display for Value {
    /// Writes the value as Python's `str()` would (`16`, `True`, `abc`), which is also how Kernel
    /// Tuner writes config keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Str(s) => f.write_str(s),
        }
    }
}

/// How a parameter's values are ordered and encoded for models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// Powers of two in ascending order; encoded as log2 of the value.
    Pow2,
    /// Ordered integers; encoded as the index in the value list.
    Ordered,
    /// Unordered choices; one-hot encoded.
    Enum,
    /// `false`/`true`; encoded 0/1.
    Bool,
}

impl ParamKind {
    /// Lower-case name used in spec files and canonical forms.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Pow2 => "pow2",
            ParamKind::Ordered => "int",
            ParamKind::Enum => "enum",
            ParamKind::Bool => "bool",
        }
    }
}

/// A named tunable parameter and its candidate values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    pub name: String,
    pub values: Vec<Value>,
    pub kind: ParamKind,
}

impl Param {
    /// Integer values; the kind is `Pow2` when there are several values, all powers of two and
    /// ascending, otherwise `Ordered`.
    pub fn ints(name: &str, values: &[i64]) -> Param {
        let pow2 = values.len() > 1
            && values
                .iter()
                .all(|v| *v > 0 && (*v as u64).is_power_of_two())
            && values.windows(2).all(|w| w[0] < w[1]);
        Param {
            name: name.to_string(),
            values: values.iter().map(|v| Value::Int(*v)).collect(),
            kind: if pow2 {
                ParamKind::Pow2
            } else {
                ParamKind::Ordered
            },
        }
    }

    /// A boolean parameter with values `[false, true]`.
    pub fn boolean(name: &str) -> Param {
        Param {
            name: name.to_string(),
            values: vec![Value::Bool(false), Value::Bool(true)],
            kind: ParamKind::Bool,
        }
    }

    /// An enum parameter; in expressions it stands for the index of its value.
    pub fn choices(name: &str, values: &[&str]) -> Param {
        Param {
            name: name.to_string(),
            values: values.iter().map(|v| Value::Str(v.to_string())).collect(),
            kind: ParamKind::Enum,
        }
    }

    /// The integer value at `index` as expressions see it.
    pub fn expr_value(&self, index: usize) -> i64 {
        self.values[index].as_i64().unwrap_or(index as i64)
    }

    /// Index of a value given as text (as written by `Display`, or `true`/`false`, `0`/`1` for
    /// booleans).
    pub fn index_of_text(&self, text: &str) -> Option<usize> {
        self.values.iter().position(|v| {
            v.to_string() == text
                || match v {
                    Value::Bool(b) => {
                        text == if *b { "true" } else { "false" }
                            || text == if *b { "1" } else { "0" }
                    }
                    _ => false,
                }
        })
    }
}

/// A point of a search space: for each parameter, the index of its value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Config(pub Vec<u16>);

/// An extra validity predicate (for example: "present in the recorded data").
pub type ConfigFilter = Arc<dyn Fn(&Config) -> bool + Send + Sync>;

/// Tries of rejection sampling before falling back to the materialised valid set.
const REJECTION_TRIES: usize = 256;

/// A search space: parameters, constraints bound to them (and to fixed constants such as shape
/// dimensions and device limits), and an optional extra filter.
#[derive(Clone)]
pub struct SearchSpace {
    params: Vec<Param>,
    /// Each parameter's values as expressions see them.
    ints: Vec<Vec<i64>>,
    /// Variable table template: one slot per parameter, then the constants.
    env: Vec<i64>,
    /// `checks[d]`: constraints whose last parameter is `d` (checked once `d` is assigned).
    checks: Vec<Vec<Expr>>,
    filter: Option<ConfigFilter>,
    count: Arc<OnceLock<u64>>,
    valid_list: Arc<OnceLock<Vec<u16>>>,
}

impl fmt::Debug for SearchSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchSpace")
            .field("params", &self.params)
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl SearchSpace {
    /// A space over `params` where every config must satisfy every constraint (non-zero result).
    /// Constraints may read parameter names and the `constants` (shape dims, device limits). A
    /// constraint whose evaluation fails (division by zero, overflow) rejects the config.
    ///
    /// Errors when a parameter has no values, names repeat, a constraint reads an unknown name,
    /// or no config at all is valid.
    pub fn new(
        params: Vec<Param>,
        constraints: &[Expr],
        constants: &[(&str, i64)],
    ) -> Result<SearchSpace> {
        let mut names: Vec<&str> = Vec::new();
        for p in &params {
            if p.values.is_empty() {
                return Err(Error::Space(format!(
                    "parameter `{}` has no values",
                    p.name
                )));
            }
            if p.values.len() > u16::MAX as usize {
                return Err(Error::Space(format!(
                    "parameter `{}` has more than {} values",
                    p.name,
                    u16::MAX
                )));
            }
            let distinct: HashSet<&Value> = p.values.iter().collect();
            if distinct.len() != p.values.len() {
                return Err(Error::Space(format!(
                    "parameter `{}` lists a value twice",
                    p.name
                )));
            }
            if names.contains(&p.name.as_str()) {
                return Err(Error::Space(format!(
                    "parameter `{}` is defined twice",
                    p.name
                )));
            }
            names.push(&p.name);
        }
        for (c, _) in constants {
            if !names.contains(c) {
                names.push(c);
            }
        }
        if names.len() > u16::MAX as usize {
            return Err(Error::Space("too many variables".into()));
        }
        let n = params.len();
        let mut env = vec![0i64; names.len()];
        for (c, v) in constants {
            if let Some(slot) = names.iter().position(|x| x == c) {
                if slot >= n {
                    env[slot] = *v;
                }
            }
        }
        let mut checks: Vec<Vec<Expr>> = vec![Vec::new(); n + 1];
        for c in constraints {
            let bound = c
                .bind(|name| names.iter().position(|x| *x == name).map(|p| p as u16))
                .map_err(|name| {
                    Error::Space(format!(
                        "constraint `{}` reads unknown name `{name}`",
                        c.source()
                    ))
                })?;
            let last = bound
                .slots()
                .iter()
                .filter(|s| (**s as usize) < n)
                .map(|s| *s as usize + 1)
                .max()
                .unwrap_or(0);
            checks[last].push(bound);
        }
        let ints = params
            .iter()
            .map(|p| (0..p.values.len()).map(|i| p.expr_value(i)).collect())
            .collect();
        let space = SearchSpace {
            params,
            ints,
            env,
            checks,
            filter: None,
            count: Arc::new(OnceLock::new()),
            valid_list: Arc::new(OnceLock::new()),
        };
        if space.iter().next().is_none() {
            return Err(Error::Space("the constraints exclude every config".into()));
        }
        Ok(space)
    }

    /// Adds an extra validity predicate. Errors when it leaves no valid config.
    pub fn with_filter(
        mut self,
        f: impl Fn(&Config) -> bool + Send + Sync + 'static,
    ) -> Result<SearchSpace> {
        self.filter = Some(Arc::new(f));
        self.count = Arc::new(OnceLock::new());
        self.valid_list = Arc::new(OnceLock::new());
        if self.iter().next().is_none() {
            return Err(Error::Space("the filter excludes every config".into()));
        }
        Ok(self)
    }

    /// The parameters, in order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Number of points of the raw product (saturating).
    pub fn raw_size(&self) -> u64 {
        self.params
            .iter()
            .fold(1u64, |a, p| a.saturating_mul(p.values.len() as u64))
    }

    fn passes(&self, depth: usize, env: &[i64]) -> bool {
        self.checks[depth]
            .iter()
            .all(|e| matches!(e.eval(env), Ok(v) if v != 0))
    }

    /// Whether `c` has the right length, in-range indices, and satisfies every constraint and
    /// the filter.
    pub fn is_valid(&self, c: &Config) -> bool {
        if c.0.len() != self.params.len()
            || c.0
                .iter()
                .zip(&self.params)
                .any(|(i, p)| *i as usize >= p.values.len())
        {
            return false;
        }
        let mut env = self.env.clone();
        if !self.passes(0, &env) {
            return false;
        }
        for (d, &i) in c.0.iter().enumerate() {
            env[d] = self.ints[d][i as usize];
            if !self.passes(d + 1, &env) {
                return false;
            }
        }
        self.filter.as_ref().is_none_or(|f| f(c))
    }

    /// Lazily enumerates the valid configs in lexicographic order of indices.
    pub fn iter(&self) -> SpaceIter<'_> {
        SpaceIter::new(self, None)
    }

    /// Number of valid configs (computed once by enumeration, then cached).
    pub fn count(&self) -> u64 {
        *self.count.get_or_init(|| self.iter().count() as u64)
    }

    fn valid_list(&self) -> &[u16] {
        self.valid_list
            .get_or_init(|| self.iter().flat_map(|c| c.0).collect())
    }

    /// A config drawn uniformly from the valid ones.
    pub fn sample(&self, rng: &mut Rng) -> Option<Config> {
        for _ in 0..REJECTION_TRIES {
            let c = Config(
                self.params
                    .iter()
                    .map(|p| rng.index(p.values.len()) as u16)
                    .collect(),
            );
            if self.is_valid(&c) {
                return Some(c);
            }
        }
        // Valid configs are rare: draw from the materialised valid set instead (still uniform).
        let n = self.params.len().max(1);
        let list = self.valid_list();
        let count = list.len() / n;
        if count == 0 {
            return None;
        }
        let i = rng.index(count);
        Some(Config(list[i * n..(i + 1) * n].to_vec()))
    }

    /// The valid configs with exactly one parameter moved one step up or down its value list.
    pub fn one_step_neighbours(&self, c: &Config) -> Vec<Config> {
        let mut out = Vec::new();
        for (d, p) in self.params.iter().enumerate() {
            let i = c.0[d] as usize;
            for j in [i.checked_sub(1), Some(i + 1)].into_iter().flatten() {
                if j < p.values.len() {
                    let mut n = c.clone();
                    n.0[d] = j as u16;
                    if self.is_valid(&n) {
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    /// Every valid config other than `c` whose parameters are each within `radius` steps of
    /// `c`'s. The ball grows as (2r+1)^d: meant for small spaces and radii; the search uses
    /// [`SearchSpace::random_neighbour`] instead.
    pub fn neighbours(&self, c: &Config, radius: usize) -> Vec<Config> {
        let windows: Vec<(u16, u16)> = self
            .params
            .iter()
            .zip(&c.0)
            .map(|(p, &i)| {
                let lo = (i as usize).saturating_sub(radius) as u16;
                let hi = ((i as usize + radius).min(p.values.len() - 1)) as u16;
                (lo, hi)
            })
            .collect();
        SpaceIter::new(self, Some(windows))
            .filter(|n| n != c)
            .collect()
    }

    /// A random valid config other than `c`: one parameter (half of the time) or several moved
    /// by 1..=`radius` steps each. `None` when no such neighbour was found.
    pub fn random_neighbour(&self, c: &Config, radius: usize, rng: &mut Rng) -> Option<Config> {
        let d = self.params.len();
        let movable: Vec<usize> = (0..d)
            .filter(|&i| self.params[i].values.len() > 1)
            .collect();
        if movable.is_empty() || radius == 0 {
            return None;
        }
        for _ in 0..64 {
            let k = if rng.next_f64() < 0.5 {
                1
            } else {
                2 + rng.index(movable.len().clamp(2, 3) - 1)
            };
            let mut n = c.clone();
            for _ in 0..k.min(movable.len()) {
                let p = movable[rng.index(movable.len())];
                let len = self.params[p].values.len() as i64;
                let step = 1 + rng.index(radius) as i64;
                let signed = if rng.next_u64() & 1 == 0 { step } else { -step };
                let j = (n.0[p] as i64 + signed).clamp(0, len - 1);
                n.0[p] = j as u16;
            }
            if n != *c && self.is_valid(&n) {
                return Some(n);
            }
        }
        let ones = self.one_step_neighbours(c);
        (!ones.is_empty()).then(|| ones[rng.index(ones.len())].clone())
    }

    /// Length of the feature vector [`SearchSpace::encode`] writes.
    pub fn feature_len(&self) -> usize {
        self.params
            .iter()
            .map(|p| {
                if p.kind == ParamKind::Enum {
                    p.values.len()
                } else {
                    1
                }
            })
            .sum()
    }

    /// Writes `c`'s features into `out` (length [`SearchSpace::feature_len`]): log2 of the value
    /// for powers of two, the index for ordered integers, one-hot for enums, 0/1 for booleans.
    pub fn encode(&self, c: &Config, out: &mut [f64]) {
        let mut k = 0;
        for (p, &i) in self.params.iter().zip(&c.0) {
            let i = i as usize;
            match p.kind {
                ParamKind::Pow2 => {
                    out[k] = (p.expr_value(i).max(1) as f64).log2();
                    k += 1;
                }
                ParamKind::Ordered | ParamKind::Bool => {
                    out[k] = i as f64;
                    k += 1;
                }
                ParamKind::Enum => {
                    for j in 0..p.values.len() {
                        out[k + j] = (j == i) as u8 as f64;
                    }
                    k += p.values.len();
                }
            }
        }
    }

    /// The features of `c` as a new vector.
    pub fn features(&self, c: &Config) -> Vec<f64> {
        let mut v = vec![0.0; self.feature_len()];
        self.encode(c, &mut v);
        v
    }

    /// The values `c` selects.
    pub fn values<'a>(&'a self, c: &Config) -> Vec<&'a Value> {
        self.params
            .iter()
            .zip(&c.0)
            .map(|(p, &i)| &p.values[i as usize])
            .collect()
    }

    /// Integer value of parameter `d` in `c` as expressions and defines see it.
    pub fn int_value(&self, c: &Config, d: usize) -> i64 {
        self.ints[d][c.0[d] as usize]
    }

    /// Canonical text `name=value,name=value` in parameter order (stored in caches).
    pub fn config_text(&self, c: &Config) -> String {
        self.params
            .iter()
            .zip(&c.0)
            .map(|(p, &i)| format!("{}={}", p.name, p.values[i as usize]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses [`SearchSpace::config_text`]'s form (any order of names; every name required).
    pub fn parse_config_text(&self, text: &str) -> Result<Config> {
        let mut idx: Vec<Option<u16>> = vec![None; self.params.len()];
        for part in text.split(',').filter(|s| !s.trim().is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| Error::Space(format!("`{part}` is not `name=value`")))?;
            let d = self
                .params
                .iter()
                .position(|p| p.name == name.trim())
                .ok_or_else(|| Error::Space(format!("unknown parameter `{}`", name.trim())))?;
            let i = self.params[d].index_of_text(value.trim()).ok_or_else(|| {
                Error::Space(format!(
                    "`{}` is not a value of `{}`",
                    value.trim(),
                    name.trim()
                ))
            })?;
            idx[d] = Some(i as u16);
        }
        let c = idx
            .iter()
            .zip(&self.params)
            .map(|(i, p)| i.ok_or_else(|| Error::Space(format!("parameter `{}` missing", p.name))))
            .collect::<Result<Vec<u16>>>()?;
        Ok(Config(c))
    }

    /// The config selecting `values` (one per parameter, in order), if each is a candidate.
    pub fn config_from_values(&self, values: &[Value]) -> Option<Config> {
        if values.len() != self.params.len() {
            return None;
        }
        let idx = self
            .params
            .iter()
            .zip(values)
            .map(|(p, v)| p.values.iter().position(|x| x == v).map(|i| i as u16))
            .collect::<Option<Vec<u16>>>()?;
        Some(Config(idx))
    }
}

/// Depth-first enumeration of valid configs; see [`SearchSpace::iter`].
pub struct SpaceIter<'a> {
    space: &'a SearchSpace,
    /// Per parameter, the inclusive index window to walk (the whole list, or a neighbourhood).
    windows: Vec<(u16, u16)>,
    cur: Vec<u16>,
    env: Vec<i64>,
    /// Parameters assigned so far; `None` once exhausted.
    depth: Option<usize>,
    started: bool,
}

impl<'a> SpaceIter<'a> {
    fn new(space: &'a SearchSpace, windows: Option<Vec<(u16, u16)>>) -> Self {
        let windows = windows.unwrap_or_else(|| {
            space
                .params
                .iter()
                .map(|p| (0, (p.values.len() - 1) as u16))
                .collect()
        });
        let cur = windows.iter().map(|w| w.0).collect();
        let root_ok = space.passes(0, &space.env);
        SpaceIter {
            space,
            windows,
            cur,
            env: space.env.clone(),
            depth: root_ok.then_some(0),
            started: false,
        }
    }

    /// Moves to the next assignment of parameter `d` (or backtracks); returns the new depth.
    fn advance(&mut self, mut d: usize) -> Option<usize> {
        loop {
            if self.cur[d] < self.windows[d].1 {
                self.cur[d] += 1;
                return Some(d);
            }
            self.cur[d] = self.windows[d].0;
            if d == 0 {
                return None;
            }
            d -= 1;
        }
    }
}

impl Iterator for SpaceIter<'_> {
    type Item = Config;

    fn next(&mut self) -> Option<Config> {
        let n = self.space.params.len();
        let mut d = self.depth?;
        if n == 0 {
            self.depth = None;
            return Some(Config(Vec::new()));
        }
        if self.started {
            // Resume after the last yielded leaf.
            match self.advance(n - 1) {
                Some(nd) => d = nd,
                None => {
                    self.depth = None;
                    return None;
                }
            }
        }
        self.started = true;
        loop {
            // Try to assign parameter `d` with its current index.
            self.env[d] = self.space.ints[d][self.cur[d] as usize];
            if self.space.passes(d + 1, &self.env) {
                if d + 1 == n {
                    let c = Config(self.cur.clone());
                    if self.space.filter.as_ref().is_none_or(|f| f(&c)) {
                        self.depth = Some(d);
                        return Some(c);
                    }
                } else {
                    d += 1;
                    continue;
                }
            }
            match self.advance(d) {
                Some(nd) => d = nd,
                None => {
                    self.depth = None;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exprs(src: &[&str]) -> Vec<Expr> {
        src.iter().map(|s| Expr::parse(s).unwrap()).collect()
    }

    fn small() -> SearchSpace {
        SearchSpace::new(
            vec![
                Param::ints("a", &[1, 2, 4, 8]),
                Param::ints("b", &[1, 2, 3]),
                Param::boolean("c"),
                Param::choices("d", &["x", "y"]),
            ],
            &exprs(&["a * b <= limit", "c || d == 1"]),
            &[("limit", 8)],
        )
        .unwrap()
    }

    /// Brute force over the raw product, for comparison.
    fn brute(space: &SearchSpace) -> Vec<Config> {
        let sizes: Vec<usize> = space.params().iter().map(|p| p.values.len()).collect();
        let total: usize = sizes.iter().product();
        let mut out = Vec::new();
        for mut k in 0..total {
            let mut c = vec![0u16; sizes.len()];
            for d in (0..sizes.len()).rev() {
                c[d] = (k % sizes[d]) as u16;
                k /= sizes[d];
            }
            let c = Config(c);
            let vals = space.values(&c);
            let a = vals[0].as_i64().unwrap();
            let b = vals[1].as_i64().unwrap();
            let cc = vals[2].as_i64().unwrap();
            let d = c.0[3];
            if a * b <= 8 && (cc != 0 || d == 1) {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn enumeration_matches_brute_force() {
        let s = small();
        let lazy: Vec<Config> = s.iter().collect();
        assert_eq!(lazy, brute(&s));
        assert_eq!(s.count() as usize, lazy.len());
        assert!(lazy.iter().all(|c| s.is_valid(c)));
        assert_eq!(s.raw_size(), 48);
    }

    #[test]
    fn constraint_excluding_everything_is_an_error() {
        let e =
            SearchSpace::new(vec![Param::ints("a", &[1, 2])], &exprs(&["a > 5"]), &[]).unwrap_err();
        assert!(e.to_string().contains("exclude every config"), "{e}");
        let e =
            SearchSpace::new(vec![Param::ints("a", &[1, 2])], &exprs(&["b > 5"]), &[]).unwrap_err();
        assert!(e.to_string().contains("unknown name `b`"), "{e}");
        assert!(SearchSpace::new(vec![Param::ints("a", &[])], &[], &[]).is_err());
        assert!(SearchSpace::new(vec![Param::ints("a", &[1, 1])], &[], &[]).is_err());
        let s = SearchSpace::new(vec![Param::ints("a", &[1, 2])], &[], &[]).unwrap();
        assert!(s.with_filter(|_| false).is_err());
    }

    #[test]
    fn failing_constraint_evaluation_rejects_the_config() {
        let s = SearchSpace::new(
            vec![Param::ints("a", &[0, 1, 2])],
            &exprs(&["4 / a >= 2"]),
            &[],
        )
        .unwrap();
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn huge_space_is_not_materialised() {
        // 16^6 = 16.7M raw points; the constraint on the first two prunes almost all of them early.
        let params: Vec<Param> = (0..6)
            .map(|i| Param::ints(&format!("p{i}"), &(1..=16).collect::<Vec<_>>()))
            .collect();
        let s = SearchSpace::new(params, &exprs(&["p0 + p1 == 3"]), &[]).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(s.count(), 2 * 16u64.pow(4));
        assert!(t.elapsed().as_secs() < 20);
        let mut rng = Rng::new(3);
        let c = s.sample(&mut rng).unwrap();
        assert!(s.is_valid(&c));
    }

    #[test]
    fn sampling_is_uniform_chi_square() {
        let s = small();
        let valid: Vec<Config> = s.iter().collect();
        let k = valid.len();
        let n = 200 * k;
        let mut counts = std::collections::HashMap::new();
        let mut rng = Rng::new(42);
        for _ in 0..n {
            let c = s.sample(&mut rng).unwrap();
            assert!(s.is_valid(&c));
            *counts.entry(c).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), k);
        let expected = n as f64 / k as f64;
        let chi2: f64 = counts
            .values()
            .map(|&o| (o as f64 - expected).powi(2) / expected)
            .sum();
        // k-1 degrees of freedom; 99.9th percentile is well under 3k for k ~ 20.
        let dof = (k - 1) as f64;
        assert!(
            chi2 < dof + 5.0 * (2.0 * dof).sqrt() + 10.0,
            "chi2 {chi2} for {k} cells"
        );
    }

    #[test]
    fn rare_valid_configs_still_sample_uniformly() {
        let params: Vec<Param> = (0..3)
            .map(|i| Param::ints(&format!("p{i}"), &(0..40).collect::<Vec<_>>()))
            .collect();
        let s = SearchSpace::new(params, &exprs(&["p0 + p1 + p2 <= 1"]), &[]).unwrap();
        assert_eq!(s.count(), 4);
        let mut rng = Rng::new(5);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..4000 {
            *counts.entry(s.sample(&mut rng).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(
            counts.values().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn neighbours_within_radius() {
        let s = small();
        let c = s.parse_config_text("a=2,b=2,c=True,d=x").unwrap();
        let ones = s.one_step_neighbours(&c);
        for n in &ones {
            assert!(s.is_valid(n));
            let moved: Vec<usize> = (0..4).filter(|&d| n.0[d] != c.0[d]).collect();
            assert_eq!(moved.len(), 1);
            assert_eq!((n.0[moved[0]] as i32 - c.0[moved[0]] as i32).abs(), 1);
        }
        // a=1 or 4 (b=2: 8 ok), b=1 or 3 (2*3=6 ok), c=False invalid with d=x, d=y ok.
        assert_eq!(ones.len(), 5);
        let r1 = s.neighbours(&c, 1);
        let expected: Vec<Config> = s
            .iter()
            .filter(|n| {
                *n != c
                    && n.0
                        .iter()
                        .zip(&c.0)
                        .all(|(a, b)| (*a as i32 - *b as i32).abs() <= 1)
            })
            .collect();
        assert_eq!(r1, expected);
        assert!(r1.len() > ones.len());
        let mut rng = Rng::new(9);
        for _ in 0..200 {
            let n = s.random_neighbour(&c, 2, &mut rng).unwrap();
            assert!(s.is_valid(&n) && n != c);
            assert!(n
                .0
                .iter()
                .zip(&c.0)
                .all(|(a, b)| (*a as i32 - *b as i32).abs() <= 2));
        }
    }

    #[test]
    fn feature_encoding() {
        let s = small();
        assert_eq!(s.feature_len(), 1 + 1 + 1 + 2);
        let c = s.parse_config_text("a=8,b=1,c=False,d=y").unwrap();
        assert_eq!(s.features(&c), vec![3.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(s.params()[0].kind, ParamKind::Pow2);
        assert_eq!(s.params()[1].kind, ParamKind::Ordered);
    }

    #[test]
    fn config_text_round_trip() {
        let s = small();
        for c in s.iter() {
            let t = s.config_text(&c);
            assert_eq!(s.parse_config_text(&t).unwrap(), c, "{t}");
        }
        assert!(s.parse_config_text("a=3,b=1,c=True,d=x").is_err());
        assert!(s.parse_config_text("a=2,b=1").is_err());
        assert!(s.parse_config_text("zz=2").is_err());
        let vals = vec![
            Value::Int(2),
            Value::Int(3),
            Value::Bool(true),
            Value::Str("x".into()),
        ];
        assert_eq!(
            s.config_text(&s.config_from_values(&vals).unwrap()),
            "a=2,b=3,c=True,d=x"
        );
    }
}
