//! A small random-forest classifier for LFBO's surrogate.
//!
//! LFBO (Song et al., ICML 2022) turns Bayesian optimisation into weighted binary classification:
//! "is this config below the threshold τ, and by how much". The classifier must take per-sample
//! weights, give class probabilities, and tell which leaf a point lands in (the diversity penalty
//! measures how alike two candidates are by the share of trees in which they share a leaf). It has
//! to train in milliseconds on a few hundred points and be bit-for-bit deterministic for a seed, so
//! it is written here rather than pulled in: weighted-Gini CART trees on bootstrap resamples, each
//! split drawn from a random subset of the features.

use crate::rng::Rng;
use crate::{Error, Result};

/// How a [`Forest`] is grown.
#[derive(Clone, Debug)]
pub struct ForestParams {
    /// Number of trees.
    pub n_trees: usize,
    /// Deepest a tree may grow (the root is depth 0).
    pub max_depth: usize,
    /// Fewest distinct training points a leaf may hold.
    pub min_samples_leaf: usize,
    /// Features tried per split; `None` means ⌈√d⌉ (the usual choice for classification).
    pub max_features: Option<usize>,
    /// Train each tree on a bootstrap resample (multiplicities become weight factors).
    pub bootstrap: bool,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            n_trees: 64,
            max_depth: 12,
            min_samples_leaf: 1,
            max_features: None,
            bootstrap: true,
        }
    }
}

/// One node of a tree; leaves have `left == u32::MAX`.
#[derive(Clone, Debug)]
struct Node {
    feature: u32,
    threshold: f64,
    left: u32,
    right: u32,
    /// Weighted share of positives among the training points in this node.
    p: f64,
}

const LEAF: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// Index (into `nodes`) of the leaf `x` falls into.
    fn leaf(&self, x: &[f64]) -> u32 {
        let mut i = 0u32;
        loop {
            let n = &self.nodes[i as usize];
            if n.left == LEAF {
                return i;
            }
            // Missing features (a shorter row) go left, which keeps this total and panic-free.
            let v = x
                .get(n.feature as usize)
                .copied()
                .unwrap_or(f64::NEG_INFINITY);
            i = if v <= n.threshold { n.left } else { n.right };
        }
    }
}

/// A trained random-forest binary classifier.
#[derive(Clone, Debug)]
pub struct Forest {
    trees: Vec<Tree>,
    n_features: usize,
}

/// Per-tree scratch state while growing.
struct Grower<'a> {
    x: &'a [f64],
    d: usize,
    pos: &'a [bool],
    /// Sample weight times bootstrap multiplicity.
    w: Vec<f64>,
    params: &'a ForestParams,
    m: usize,
    rng: Rng,
    nodes: Vec<Node>,
    feats: Vec<usize>,
    order: Vec<(f64, usize)>,
}

impl Grower<'_> {
    fn weights(&self, idx: &[usize]) -> (f64, f64) {
        let (mut wp, mut wt) = (0.0, 0.0);
        for &i in idx {
            wt += self.w[i];
            if self.pos[i] {
                wp += self.w[i];
            }
        }
        (wp, wt)
    }

    /// Grows the subtree over `idx`; returns its node index.
    fn grow(&mut self, idx: &mut [usize], depth: usize) -> u32 {
        let (wp, wt) = self.weights(idx);
        let p = if wt > 0.0 { wp / wt } else { 0.0 };
        let me = self.nodes.len() as u32;
        self.nodes.push(Node {
            feature: 0,
            threshold: 0.0,
            left: LEAF,
            right: LEAF,
            p,
        });
        let min_leaf = self.params.min_samples_leaf.max(1);
        if depth >= self.params.max_depth || idx.len() < 2 * min_leaf || wp <= 0.0 || wp >= wt {
            return me;
        }
        let Some((f, thr)) = self.best_split(idx, wp, wt, min_leaf) else {
            return me;
        };
        // Partition in place: left part `v <= thr`.
        let mut k = 0;
        for j in 0..idx.len() {
            if self.x[idx[j] * self.d + f] <= thr {
                idx.swap(j, k);
                k += 1;
            }
        }
        if k == 0 || k == idx.len() {
            return me;
        }
        let (l, r) = idx.split_at_mut(k);
        let left = self.grow(l, depth + 1);
        let right = self.grow(r, depth + 1);
        let n = &mut self.nodes[me as usize];
        n.feature = f as u32;
        n.threshold = thr;
        n.left = left;
        n.right = right;
        me
    }

    /// The weighted-Gini best split over a random feature subset, as (feature, threshold).
    fn best_split(
        &mut self,
        idx: &[usize],
        wp: f64,
        wt: f64,
        min_leaf: usize,
    ) -> Option<(usize, f64)> {
        // Draw features in random order; like scikit-learn, keep drawing past constant features
        // until `m` informative ones were tried, so sparse one-hot columns do not starve splits.
        self.feats.clear();
        self.feats.extend(0..self.d);
        self.rng.shuffle(&mut self.feats);
        let parent = gini(wp, wt) * wt;
        let mut best: Option<(f64, usize, f64)> = None;
        let mut tried = 0;
        for fi in 0..self.d {
            if tried >= self.m {
                break;
            }
            let f = self.feats[fi];
            self.order.clear();
            for &i in idx {
                self.order.push((self.x[i * self.d + f], i));
            }
            self.order
                .sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            if self.order[0].0 == self.order[self.order.len() - 1].0 {
                continue;
            }
            tried += 1;
            let (mut lp, mut lt) = (0.0, 0.0);
            let n = self.order.len();
            for j in 0..n - 1 {
                let (v, i) = self.order[j];
                lt += self.w[i];
                if self.pos[i] {
                    lp += self.w[i];
                }
                let next = self.order[j + 1].0;
                if next == v || j + 1 < min_leaf || n - j - 1 < min_leaf {
                    continue;
                }
                let (rp, rt) = (wp - lp, wt - lt);
                let imp = gini(lp, lt) * lt + gini(rp, rt) * rt;
                let gain = parent - imp;
                if gain > 1e-12 * wt && best.is_none_or(|b| gain > b.0) {
                    best = Some((gain, f, 0.5 * (v + next)));
                }
            }
        }
        best.map(|(_, f, t)| (f, t))
    }
}

fn gini(p: f64, t: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    let q = p / t;
    2.0 * q * (1.0 - q)
}

impl Forest {
    /// Trains a forest on `n = labels.len()` rows of `x` (row-major, `n_features` columns) with
    /// per-row `weights` (non-negative; zero-weight rows are ignored). Deterministic for `seed`.
    pub fn fit(
        x: &[f64],
        n_features: usize,
        labels: &[bool],
        weights: &[f64],
        params: &ForestParams,
        seed: u64,
    ) -> Result<Forest> {
        let n = labels.len();
        if n_features == 0 || x.len() != n * n_features || weights.len() != n {
            return Err(Error::Search(format!(
                "forest: {} values for {n} rows of {n_features} features and {} weights",
                x.len(),
                weights.len()
            )));
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(Error::Search(
                "forest: weights must be finite and non-negative".into(),
            ));
        }
        let m = params
            .max_features
            .unwrap_or_else(|| (n_features as f64).sqrt().ceil() as usize)
            .clamp(1, n_features);
        let mut rng = Rng::new(seed);
        let mut trees = Vec::with_capacity(params.n_trees);
        for _ in 0..params.n_trees.max(1) {
            let mut trng = rng.fork();
            let mut w = weights.to_vec();
            if params.bootstrap && n > 0 {
                let mut count = vec![0u32; n];
                for _ in 0..n {
                    count[trng.index(n)] += 1;
                }
                for (wi, c) in w.iter_mut().zip(&count) {
                    *wi *= *c as f64;
                }
            }
            let mut idx: Vec<usize> = (0..n).filter(|&i| w[i] > 0.0).collect();
            let mut g = Grower {
                x,
                d: n_features,
                pos: labels,
                w,
                params,
                m,
                rng: trng,
                nodes: Vec::with_capacity(2 * idx.len() + 1),
                feats: Vec::with_capacity(n_features),
                order: Vec::with_capacity(idx.len()),
            };
            g.grow(&mut idx, 0);
            trees.push(Tree { nodes: g.nodes });
        }
        Ok(Forest { trees, n_features })
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// Number of features the forest was trained on.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Probability of the positive class: the mean over trees of the leaf's weighted positive share.
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        let s: f64 = self
            .trees
            .iter()
            .map(|t| t.nodes[t.leaf(x) as usize].p)
            .sum();
        s / self.trees.len() as f64
    }

    /// Writes the leaf index `x` lands in for every tree into `out` (length [`Forest::n_trees`]).
    /// Two points share a leaf of tree `t` exactly when `out[t]` is equal for both.
    pub fn leaves(&self, x: &[f64], out: &mut [u32]) {
        for (o, t) in out.iter_mut().zip(&self.trees) {
            *o = t.leaf(x);
        }
    }

    /// Probability and leaves in one pass (the candidate-scoring hot path).
    pub fn proba_and_leaves(&self, x: &[f64], out: &mut [u32]) -> f64 {
        let mut s = 0.0;
        for (o, t) in out.iter_mut().zip(&self.trees) {
            let l = t.leaf(x);
            *o = l;
            s += t.nodes[l as usize].p;
        }
        s / self.trees.len() as f64
    }
}

/// Share of trees in which two points (given by their leaf vectors) share a leaf.
pub fn leaf_similarity(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two features; positive iff x0 > 0.5 (x1 is noise).
    fn separable(n: usize, seed: u64) -> (Vec<f64>, Vec<bool>) {
        let mut r = Rng::new(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let a = r.next_f64();
            x.push(a);
            x.push(r.next_f64());
            y.push(a > 0.5);
        }
        (x, y)
    }

    #[test]
    fn learns_a_separable_pattern() {
        let (x, y) = separable(200, 1);
        let w = vec![1.0; y.len()];
        let f = Forest::fit(&x, 2, &y, &w, &ForestParams::default(), 7).unwrap();
        assert!(f.predict_proba(&[0.9, 0.3]) > 0.9);
        assert!(f.predict_proba(&[0.1, 0.3]) < 0.1);
        let (tx, ty) = separable(200, 2);
        let correct = (0..200)
            .filter(|&i| (f.predict_proba(&tx[2 * i..2 * i + 2]) > 0.5) == ty[i])
            .count();
        assert!(correct >= 190, "{correct}/200");
    }

    #[test]
    fn weights_matter() {
        // The same point appears once as a positive and once as a negative: the weights decide.
        let x = vec![0.0, 0.0];
        let y = vec![true, false];
        let p = ForestParams {
            bootstrap: false,
            ..ForestParams::default()
        };
        let hi = Forest::fit(&x, 1, &y, &[9.0, 1.0], &p, 1).unwrap();
        let lo = Forest::fit(&x, 1, &y, &[1.0, 9.0], &p, 1).unwrap();
        assert!((hi.predict_proba(&[0.0]) - 0.9).abs() < 1e-9);
        assert!((lo.predict_proba(&[0.0]) - 0.1).abs() < 1e-9);
        // Zero weight removes a point entirely.
        let (x, mut y) = separable(100, 3);
        let mut w = vec![1.0; 100];
        for i in 0..100 {
            if x[2 * i] > 0.8 {
                y[i] = false; // mislabelled ...
                w[i] = 0.0; // ... but ignored
            }
        }
        let f = Forest::fit(&x, 2, &y, &w, &p, 1).unwrap();
        assert!(f.predict_proba(&[0.7, 0.5]) > 0.9);
    }

    #[test]
    fn deterministic_for_a_seed_and_leaves_consistent() {
        // Labels with 15% flipped, so trees grow deep and differ between seeds.
        let (x, mut y) = separable(150, 4);
        let mut r = Rng::new(99);
        for l in y.iter_mut() {
            if r.next_f64() < 0.15 {
                *l = !*l;
            }
        }
        let w: Vec<f64> = (0..150).map(|i| 1.0 + (i % 3) as f64).collect();
        let p = ForestParams::default();
        let a = Forest::fit(&x, 2, &y, &w, &p, 11).unwrap();
        let b = Forest::fit(&x, 2, &y, &w, &p, 11).unwrap();
        let c = Forest::fit(&x, 2, &y, &w, &p, 12).unwrap();
        let q = [0.49, 0.51];
        assert_eq!(a.predict_proba(&q).to_bits(), b.predict_proba(&q).to_bits());
        let (mut la, mut lb, mut lc) = (
            vec![0; a.n_trees()],
            vec![0; b.n_trees()],
            vec![0; c.n_trees()],
        );
        a.leaves(&q, &mut la);
        b.leaves(&q, &mut lb);
        c.leaves(&q, &mut lc);
        assert_eq!(la, lb);
        let all_leaves = |f: &Forest| {
            let mut v = vec![0; f.n_trees() * 150];
            for i in 0..150 {
                f.leaves(
                    &x[2 * i..2 * i + 2],
                    &mut v[i * f.n_trees()..(i + 1) * f.n_trees()],
                );
            }
            v
        };
        assert_eq!(all_leaves(&a), all_leaves(&b));
        assert_ne!(
            all_leaves(&a),
            all_leaves(&c),
            "another seed grows other trees"
        );
        // Leaves agree with the probability and with themselves.
        let mut l2 = vec![0; a.n_trees()];
        let pr = a.proba_and_leaves(&q, &mut l2);
        assert_eq!(la, l2);
        assert_eq!(pr.to_bits(), a.predict_proba(&q).to_bits());
        assert_eq!(leaf_similarity(&la, &l2), 1.0);
        // Far-apart points share few leaves; near-identical points share (almost) all.
        let mut far = vec![0; a.n_trees()];
        a.leaves(&[0.99, 0.01], &mut far);
        let mut near = vec![0; a.n_trees()];
        a.leaves(&[0.01, 0.02], &mut near);
        let mut near2 = vec![0; a.n_trees()];
        a.leaves(&[0.011, 0.021], &mut near2);
        assert!(leaf_similarity(&far, &near) < 0.2);
        assert!(leaf_similarity(&near, &near2) > leaf_similarity(&far, &near));
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(Forest::fit(&[1.0], 2, &[true], &[1.0], &ForestParams::default(), 0).is_err());
        assert!(Forest::fit(&[1.0], 1, &[true], &[-1.0], &ForestParams::default(), 0).is_err());
        // Empty training data still gives a usable (constant) forest.
        let f = Forest::fit(&[], 1, &[], &[], &ForestParams::default(), 0).unwrap();
        assert_eq!(f.predict_proba(&[0.0]), 0.0);
    }
}
