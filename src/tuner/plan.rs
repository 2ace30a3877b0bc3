//! A plan: everything a launch of one key needs, resolved ahead of time (the loaded function, the
//! config's variable table), and the launch itself through the one launch path
//! ([`crate::gpu::launch::launch`]) that tuning times too.
//!
//! A key is a shape bucket, so most launches repeat the last shape: its geometry, buffer lengths
//! and zero-fill mask are memoised behind a seqlock, and such a launch evaluates no expression.

use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};

use cudarc::driver::{CudaFunction, CudaStream};

use crate::gpu::launch::{launch, marshal, Arg, ArgLayout, Marshalled, Resolved, MAX_ARGS};
use crate::gpu::prepared::Prepared;
use crate::key::MAX_DIMS;
use crate::spec::{Geometry, KernelSpec, MAX_VARS};
use crate::Result;

/// The geometry and buffer sizes of the last shape launched with a plan, behind a seqlock:
/// launches of the same shape (the common case: a key is a shape bucket) skip evaluating the
/// spec's expressions. Every field is atomic, readers never block and writers never wait (a
/// writer that finds another writing just skips the update).
/// Laid out in the order a launch reads it (`repr(C)`), right after the plan's function and
/// argument layout: a hit reads a few adjacent cache lines of the plan, not fields scattered
/// over its 900 bytes.
#[repr(C)]
struct LaunchMemo {
    seq: AtomicU64,
    /// Bit i: argument i is zero-filled before the launch (its `zero` expression is non-zero).
    zero: AtomicU64,
    geometry: [AtomicU32; 7],
    shape: [AtomicI64; MAX_DIMS],
    need: [AtomicI64; MAX_ARGS],
}

impl LaunchMemo {
    fn new() -> LaunchMemo {
        LaunchMemo {
            seq: AtomicU64::new(0),
            shape: std::array::from_fn(|_| AtomicI64::new(0)),
            geometry: std::array::from_fn(|_| AtomicU32::new(0)),
            need: std::array::from_fn(|_| AtomicI64::new(0)),
            zero: AtomicU64::new(0),
        }
    }

    /// Inlined: on the launch hit path (see `gpu::launch::launch`).
    #[inline(always)]
    fn read(
        &self,
        shape: &[i64],
        n_args: usize,
        need: &mut [i64; MAX_ARGS],
        zero: &mut u64,
    ) -> Option<Geometry> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 == 0 || s1 & 1 == 1 {
            return None;
        }
        if shape
            .iter()
            .zip(&self.shape)
            .any(|(d, m)| m.load(Ordering::Relaxed) != *d)
        {
            return None;
        }
        let g: [u32; 7] = std::array::from_fn(|i| self.geometry[i].load(Ordering::Relaxed));
        for (n, m) in need[..n_args].iter_mut().zip(&self.need) {
            *n = m.load(Ordering::Relaxed);
        }
        *zero = self.zero.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        Some(Geometry {
            grid: [g[0], g[1], g[2]],
            block: [g[3], g[4], g[5]],
            shared_mem: g[6],
        })
    }

    fn write(&self, shape: &[i64], g: &Geometry, need: &[i64], zero: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 == 1
            || self
                .seq
                .compare_exchange(s, s + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        for (m, d) in self.shape.iter().zip(shape) {
            m.store(*d, Ordering::Relaxed);
        }
        let vals = [
            g.grid[0],
            g.grid[1],
            g.grid[2],
            g.block[0],
            g.block[1],
            g.block[2],
            g.shared_mem,
        ];
        for (m, v) in self.geometry.iter().zip(vals) {
            m.store(v, Ordering::Relaxed);
        }
        for (m, n) in self.need.iter().zip(need) {
            m.store(*n, Ordering::Relaxed);
        }
        self.zero.store(zero, Ordering::Relaxed);
        self.seq.store(s + 2, Ordering::Release);
    }
}

/// Everything a launch needs for one key, resolved ahead of time. `repr(C)`: what a hit reads
/// (the function, the argument layout, the memo's head) comes first.
#[repr(C)]
pub struct Plan {
    /// The loaded function (`None` for a simulated device's plan, which cannot launch).
    func: Option<CudaFunction>,
    /// The spec's number of shape dimensions (a launch checks the shape's rank against it
    /// without reading the spec).
    dims: usize,
    /// The spec's arguments as a launch walks them (the spec is read only to word an error):
    /// with the function and dims, a short argument list fits the plan's first cache line.
    layout: ArgLayout,
    memo: LaunchMemo,
    /// The variable table with the config's values and the device limits filled in; a launch
    /// copies it and writes the shape into its slots.
    env: [i64; MAX_VARS],
    /// The config, canonical text.
    pub config: String,
    /// Whether this is a tuned winner (false for a provisional or default plan).
    pub tuned: bool,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("config", &self.config)
            .field("tuned", &self.tuned)
            .field("loaded", &self.func.is_some())
            .finish()
    }
}

impl Plan {
    /// A plan of `func`, of `spec`, for the config whose variable table (config values and
    /// device limits) is `env`.
    pub(crate) fn new(
        func: CudaFunction,
        spec: &KernelSpec,
        env: [i64; MAX_VARS],
        config: String,
        tuned: bool,
    ) -> Result<Plan> {
        Plan::of(Some(func), spec, env, config, tuned)
    }

    /// A simulated device's plan: the config, nothing loaded (it cannot launch).
    pub(crate) fn simulated(
        spec: &KernelSpec,
        env: [i64; MAX_VARS],
        config: String,
        tuned: bool,
    ) -> Result<Plan> {
        Plan::of(None, spec, env, config, tuned)
    }

    fn of(
        func: Option<CudaFunction>,
        spec: &KernelSpec,
        env: [i64; MAX_VARS],
        config: String,
        tuned: bool,
    ) -> Result<Plan> {
        Ok(Plan {
            func,
            layout: ArgLayout::of(spec)?,
            dims: spec.dims.len(),
            env,
            memo: LaunchMemo::new(),
            config,
            tuned,
        })
    }

    /// The loaded function (`None` for a simulated device's plan). For benchmarks that launch
    /// the same function raw, to tell jitune's own cost from the driver's.
    #[doc(hidden)]
    pub fn function(&self) -> Option<&CudaFunction> {
        self.func.as_ref()
    }

    /// Launches on `stream`. Allocation-free unless it fails. Public for the launch bench,
    /// which times it apart from the key and plan lookup; applications call `Tuner::launch`.
    /// Inlined into `Tuner::launch` (see [`launch`]).
    #[doc(hidden)]
    #[inline(always)]
    pub fn launch(
        &self,
        spec: &KernelSpec,
        stream: &CudaStream,
        shape: &[i64],
        args: &mut [Arg<'_>],
    ) -> Result<()> {
        let Some(func) = &self.func else {
            return Err(crate::Error::InvalidArgument(format!(
                "kernel `{}`: a simulated device's plan cannot launch",
                spec.name
            )));
        };
        self.with_resolved(spec, shape, |r| {
            launch(func, spec, r, stream, args).map_err(|e| e.into_error(spec, &self.config))
        })
    }

    /// Everything a launch does short of the driver: the shape checked, the geometry and
    /// lengths from the memo, the arguments checked and laid out (raw pointers and scalars
    /// only: cudarc buffers need a stream). The argument table's first `out.len()` values are
    /// copied to `out` (a launch hands the table to the driver instead; returning the whole
    /// kilobyte by value would time copies no launch makes). Needs no GPU (it works on a
    /// simulated plan), so the hit path's own work is tested and timed on the CPU.
    #[doc(hidden)]
    pub fn dry_launch(
        &self,
        spec: &KernelSpec,
        shape: &[i64],
        args: &mut [Arg<'_>],
        out: &mut [u64],
    ) -> Result<()> {
        self.with_resolved(spec, shape, |r| {
            let mut m = Marshalled::new();
            marshal(spec, r, None, args, &mut m).map_err(|e| e.into_error(spec, &self.config))?;
            let n = out.len().min(MAX_ARGS);
            out[..n].copy_from_slice(&m.raw[..n]);
            Ok(())
        })
    }

    /// Evaluates the spec's expressions at `shape` (a shape the memo does not hold) and
    /// memoises them. Out of line: the hit path's code stays short.
    #[cold]
    #[inline(never)]
    fn resolve_into_memo(
        &self,
        spec: &KernelSpec,
        shape: &[i64],
        need: &mut [i64; MAX_ARGS],
        zero: &mut u64,
    ) -> Result<Geometry> {
        let n_args = self.layout.args();
        let p = Prepared::resolve(spec, &self.env, shape)?;
        self.memo
            .write(shape, &p.geometry, &p.need[..n_args], p.zero);
        *need = p.need;
        *zero = p.zero;
        Ok(p.geometry)
    }

    /// Calls `f` with this plan resolved at `shape`: the memoised geometry, lengths and zero
    /// mask when the shape is the memo's, else evaluated (and memoised).
    #[inline]
    fn with_resolved<T>(
        &self,
        spec: &KernelSpec,
        shape: &[i64],
        f: impl FnOnce(&Resolved<'_>) -> Result<T>,
    ) -> Result<T> {
        if shape.len() != self.dims {
            return Err(crate::Error::Shape(format!(
                "kernel `{}` takes {} dims, got {}",
                spec.name,
                spec.dims.len(),
                shape.len()
            )));
        }
        // The variable table with the shape filled in is only read to encode tensor maps (a
        // memo miss resolves from `self.env` and the shape): the hit path skips its 512-byte
        // copy otherwise.
        let filled;
        let n_args = self.layout.args();
        let env: &[i64; MAX_VARS] = if self.layout.tensor_maps() > 0 {
            let mut e = self.env;
            let base = spec.shape_slot();
            e[base..base + shape.len()].copy_from_slice(shape);
            filled = e;
            &filled
        } else {
            &self.env
        };
        let mut need = [0i64; MAX_ARGS];
        let mut zero = 0u64;
        let geometry = match self.memo.read(shape, n_args, &mut need, &mut zero) {
            Some(g) => g,
            None => self.resolve_into_memo(spec, shape, &mut need, &mut zero)?,
        };
        f(&Resolved {
            layout: &self.layout,
            env,
            geometry,
            need: &need[..n_args],
            zero,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn geometry_of(shape: &[i64]) -> Geometry {
        let x = shape[0] as u32;
        Geometry {
            grid: [x, x + 1, 1],
            block: [x * 2, 1, 1],
            shared_mem: x * 3,
        }
    }

    #[test]
    fn memo_returns_only_what_was_written_for_that_shape() {
        let m = LaunchMemo::new();
        let (mut need, mut zero) = ([0i64; MAX_ARGS], 0u64);
        assert!(
            m.read(&[5, 6], 2, &mut need, &mut zero).is_none(),
            "empty memo"
        );
        m.write(&[5, 6], &geometry_of(&[5]), &[50, 60], 0b10);
        assert_eq!(
            m.read(&[5, 6], 2, &mut need, &mut zero),
            Some(geometry_of(&[5]))
        );
        assert_eq!(&need[..2], &[50, 60]);
        assert_eq!(zero, 0b10);
        assert!(
            m.read(&[5, 7], 2, &mut need, &mut zero).is_none(),
            "another shape misses"
        );
    }

    #[test]
    fn memo_is_consistent_under_concurrent_writers_and_readers() {
        let m = Arc::new(LaunchMemo::new());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let (mut need, mut zero) = ([0i64; MAX_ARGS], 0u64);
                    let mut hits = 0;
                    for i in 0..20_000i64 {
                        // Each thread repeats a shape a few times, then moves on.
                        let x = 1 + ((i / 8) * 7 + t) % 13;
                        let shape = [x, x * 10];
                        match m.read(&shape, 2, &mut need, &mut zero) {
                            Some(g) => {
                                // A hit must be exactly what was written for this shape.
                                assert_eq!(g, geometry_of(&shape));
                                assert_eq!(&need[..2], &[x * 100, x * 1000]);
                                assert_eq!(zero, x as u64 % 3);
                                hits += 1;
                            }
                            None => m.write(
                                &shape,
                                &geometry_of(&shape),
                                &[x * 100, x * 1000],
                                x as u64 % 3,
                            ),
                        }
                    }
                    hits
                })
            })
            .collect();
        let hits: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(hits > 0);
    }

    #[test]
    fn a_dry_launch_lays_out_the_arguments_and_fills_the_memo() {
        use crate::gpu::launch::Arg;
        use crate::spec::{DeviceLimits, ElemType};
        let spec = KernelSpec::from_toml_file(format!(
            "{}/kernels/sgemm.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let limits = DeviceLimits::h100();
        let shape = [64i64, 32, 16];
        let space = spec.space_for(&shape, &limits).unwrap();
        let values: Vec<i64> = (0..spec.params.len())
            .map(|d| space.int_value(&spec.default, d))
            .collect();
        let mut env = [0i64; MAX_VARS];
        spec.fill_env(&values, &shape, &limits, &mut env);
        let plan = Plan::simulated(&spec, env, "default".into(), false).unwrap();
        let args = |b_len| unsafe {
            [
                Arg::from_raw(0xA000, 64 * 16, ElemType::F32),
                Arg::from_raw(0xB000, b_len, ElemType::F32),
                Arg::from_raw_mut(0xC000, 64 * 32, ElemType::F32),
                Arg::from(64),
                Arg::from(32),
                Arg::from(16),
            ]
        };
        let (mut need, mut zero) = ([0i64; MAX_ARGS], 0u64);
        assert!(plan.memo.read(&shape, 6, &mut need, &mut zero).is_none());
        // The first launch evaluates and memoises; the second reads the memo: same table.
        for _ in 0..2 {
            let mut raw = [0u64; 7];
            plan.dry_launch(&spec, &shape, &mut args(16 * 32), &mut raw)
                .unwrap();
            assert_eq!(raw, [0xA000, 0xB000, 0xC000, 64, 32, 16, 0]);
        }
        assert!(plan.memo.read(&shape, 6, &mut need, &mut zero).is_some());
        assert_eq!(need[..3], [64 * 16, 16 * 32, 64 * 32]);
        // The memoised lengths are checked as the evaluated ones were.
        let e = plan
            .dry_launch(&spec, &shape, &mut args(16 * 32 - 1), &mut [])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`B` has 511 elements, the shape needs 512"),
            "{e}"
        );
        // A shape of the wrong rank is refused before anything is read.
        assert!(plan
            .dry_launch(&spec, &shape[..2], &mut args(512), &mut [])
            .is_err());
    }
}
