//! Synthetic inputs: the tuner's own device buffers for one spec and shape, filled from the
//! spec's argument descriptions (never zeros).
//!
//! Tuning never reads or writes the caller's buffers, so the bench makes its own. Making them is
//! a concern of its own, apart from timing and checking: each argument's length from the spec,
//! host data from its generator (seeded, so every run of a search sees the same inputs),
//! uploads on the tuner's stream, a pristine copy of each `inout` buffer, and, when the inputs
//! would fit in L2 anyway, several input sets to rotate through so no timed run finds its inputs
//! cached by the one before. The bench ([`super::measure`]) times and checks runs on them.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DriverError};

use super::convert::{f32_to_bf16, f32_to_f16};
use super::device::Gpu;
use super::launch::{Arg, RawBuffer, MAX_ARGS};
use crate::rng::Rng;
use crate::spec::{ElemType, Generator, KernelSpec, Role};
use crate::{Error, Result};

/// Elements per chunk of [`generate`]: each chunk has a generator of its own, so the chunks of
/// a large buffer are filled in parallel and the result still depends only on the seed.
const CHUNK: usize = 1 << 18;

/// Host bytes of `n` synthetic elements, fixed by `seed`. Large buffers (a 8192² input is 64 M
/// elements, about half a second on one core) are filled by several threads, one chunk at a
/// time, each chunk from its own generator; the bytes depend only on `seed` and `n`, not on
/// the number of threads.
fn generate(ty: ElemType, gen: &Generator, n: usize, seed: u64) -> Vec<u8> {
    let size = ty.size();
    let mut out = vec![0u8; n * size];
    let chunks: Vec<(usize, &mut [u8])> = out.chunks_mut(CHUNK * size).enumerate().collect();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(16)
        .min(chunks.len())
        .max(1);
    if threads == 1 {
        for (k, chunk) in chunks {
            fill(ty, gen, chunk, seed, k);
        }
        return out;
    }
    // Deal the chunks out round-robin: every thread gets a similar share.
    let mut shares: Vec<Vec<(usize, &mut [u8])>> = (0..threads).map(|_| Vec::new()).collect();
    for (j, c) in chunks.into_iter().enumerate() {
        shares[j % threads].push(c);
    }
    std::thread::scope(|s| {
        for share in shares {
            s.spawn(move || {
                for (k, chunk) in share {
                    fill(ty, gen, chunk, seed, k);
                }
            });
        }
    });
    out
}

/// Fills chunk `k` of a buffer (whole elements of `ty`) from the chunk's own generator.
fn fill(ty: ElemType, gen: &Generator, chunk: &mut [u8], seed: u64, k: usize) {
    let mut rng = Rng::new(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for e in chunk.chunks_exact_mut(ty.size()) {
        let (f, i) = match gen {
            Generator::Uniform(lo, hi) => {
                let f = lo + (hi - lo) * rng.next_f64();
                (f, f.round() as i64)
            }
            Generator::IntRange(lo, hi) => {
                let span = (hi - lo) as u64 + 1;
                let i = lo + rng.below(span) as i64;
                (i as f64, i)
            }
        };
        match ty {
            ElemType::F32 => e.copy_from_slice(&(f as f32).to_le_bytes()),
            ElemType::F64 => e.copy_from_slice(&f.to_le_bytes()),
            ElemType::F16 => e.copy_from_slice(&f32_to_f16(f as f32).to_le_bytes()),
            ElemType::Bf16 => e.copy_from_slice(&f32_to_bf16(f as f32).to_le_bytes()),
            ElemType::I32 => e.copy_from_slice(&(i as i32).to_le_bytes()),
            ElemType::U32 => e.copy_from_slice(&(i as u32).to_le_bytes()),
            ElemType::I64 => e.copy_from_slice(&i.to_le_bytes()),
            ElemType::U8 => e[0] = i as u8,
        }
    }
}

/// One buffer argument of the kernel, on the device.
pub(super) struct DeviceBuffer {
    /// Its index in the spec's arguments.
    pub(super) arg: usize,
    pub(super) ty: ElemType,
    pub(super) role: Role,
    pub(super) bytes: usize,
    /// One buffer per input set (rotation); outputs have one.
    pub(super) sets: Vec<CudaSlice<u8>>,
    /// The original contents of an `inout` buffer, restored before each check.
    pub(super) pristine: Option<CudaSlice<u8>>,
    /// Outputs only: the reference output, kept on the device (see
    /// [`Bench::keep_reference`](super::measure::Bench::keep_reference)).
    pub(super) reference: Option<CudaSlice<u8>>,
}

impl DeviceBuffer {
    /// Whether the kernel writes it (an output or an in-out buffer).
    pub(super) fn is_output(&self) -> bool {
        self.role == Role::Out || self.role == Role::InOut
    }
}

/// The bench's synthetic buffers for one spec and shape.
pub(super) struct Inputs {
    /// The buffer arguments, in argument order.
    pub(super) buffers: Vec<DeviceBuffer>,
    /// Per argument: its length in elements (buffers) or its value (scalars).
    lens: Vec<i64>,
    /// Per input set, per argument: the device pointer of this set's buffer (0 for scalars and
    /// tensor maps).
    ptrs: Vec<[u64; MAX_ARGS]>,
    /// Bytes one run reads and writes (inputs and outputs), for the L2 flush decision.
    pub(super) bytes_per_run: usize,
}

/// The bench passes arguments in fixed arrays: a spec with more than [`MAX_ARGS`] arguments is
/// refused.
pub(super) fn check_arity(spec: &KernelSpec) -> Result<()> {
    if spec.args.len() > MAX_ARGS {
        return Err(Error::InvalidArgument(format!(
            "kernel `{}` has more than {MAX_ARGS} arguments",
            spec.name
        )));
    }
    Ok(())
}

fn cuda(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::driver(what, e)
}

impl Inputs {
    /// Allocates and fills synthetic inputs for `spec` at `shape` on `stream` (a stream of
    /// `gpu`), from the generator seeded with `seed`.
    pub(super) fn new(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        spec: &KernelSpec,
        shape: &[i64],
        seed: u64,
    ) -> Result<Inputs> {
        check_arity(spec)?;
        let mut rng = Rng::new(seed);
        let mut lens = Vec::new();
        let mut input_bytes = 0usize;
        let mut output_bytes = 0usize;
        for a in &spec.args {
            let v = spec.arg_value(a, shape, &gpu.limits)?;
            if !matches!(a.role, Role::Scalar | Role::TensorMap) {
                if !(0..=(1i64 << 40)).contains(&v) {
                    return Err(Error::Shape(format!(
                        "argument `{}` would have {v} elements",
                        a.name
                    )));
                }
                if matches!(a.role, Role::In | Role::InOut) {
                    input_bytes += v as usize * a.ty.size();
                }
                if matches!(a.role, Role::Out | Role::InOut) {
                    output_bytes += v as usize * a.ty.size();
                }
            }
            lens.push(v);
        }
        // Rotate input sets when they would otherwise stay in L2 between runs.
        let l2 = gpu.limits.l2_bytes.max(1) as usize;
        let sets = if input_bytes > 0 && input_bytes < l2 {
            (2 * l2).div_ceil(input_bytes).clamp(1, 4)
        } else {
            1
        };
        let mut buffers = Vec::new();
        for (i, a) in spec.args.iter().enumerate() {
            if matches!(a.role, Role::Scalar | Role::TensorMap) {
                continue;
            }
            let n = lens[i] as usize;
            let bytes = (n * a.ty.size()).max(a.ty.size());
            let mut slices = Vec::new();
            let mut pristine = None;
            let n_sets = if a.role == Role::Out { 1 } else { sets };
            for _ in 0..n_sets {
                match (&a.init, a.role) {
                    (Some(g), Role::In | Role::InOut) => {
                        let host = generate(a.ty, g, n.max(1), rng.next_u64());
                        let dev = stream.clone_htod(&host).map_err(cuda("uploading inputs"))?;
                        if a.role == Role::InOut && pristine.is_none() {
                            pristine =
                                Some(stream.clone_htod(&host).map_err(cuda("uploading inputs"))?);
                        }
                        slices.push(dev);
                    }
                    _ => slices.push(
                        stream
                            .alloc_zeros::<u8>(bytes)
                            .map_err(cuda("allocating outputs"))?,
                    ),
                }
            }
            buffers.push(DeviceBuffer {
                arg: i,
                ty: a.ty,
                role: a.role,
                bytes,
                sets: slices,
                pristine,
                reference: None,
            });
        }
        let mut ptrs = Vec::new();
        for s in 0..sets {
            let mut v = [0u64; MAX_ARGS];
            for b in &buffers {
                let slice = &b.sets[s.min(b.sets.len() - 1)];
                let (p, _sync) = slice.device_ptr(stream);
                v[b.arg] = p;
            }
            ptrs.push(v);
        }
        Ok(Inputs {
            buffers,
            lens,
            ptrs,
            bytes_per_run: input_bytes + output_bytes,
        })
    }

    /// How many input sets the timed runs rotate through.
    pub(super) fn sets(&self) -> usize {
        self.ptrs.len()
    }

    /// The launch arguments of input set `set` and how many there are: the buffers as raw
    /// pointers (they are the bench's own, alive as long as it is), scalars by value; tensor
    /// maps are left out (the launch path encodes them).
    pub(super) fn args(&self, spec: &KernelSpec, set: usize) -> ([Arg<'static>; MAX_ARGS], usize) {
        let ptrs = &self.ptrs[set];
        let mut args: [Arg<'static>; MAX_ARGS] = std::array::from_fn(|_| Arg::Int(0));
        let mut n = 0;
        for (i, a) in spec.args.iter().enumerate() {
            args[n] = match a.role {
                Role::TensorMap => continue,
                Role::Scalar => Arg::Int(self.lens[i]),
                role => Arg::Raw {
                    buffer: RawBuffer::new(ptrs[i], self.lens[i].max(1) as usize, a.ty),
                    writable: role != Role::In,
                },
            };
            n += 1;
        }
        (args, n)
    }

    /// The buffers the kernel writes, in argument order.
    pub(super) fn outputs(&self) -> impl Iterator<Item = &DeviceBuffer> {
        self.buffers.iter().filter(|b| b.is_output())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::convert::to_f64;

    #[test]
    fn synthetic_inputs_are_not_zeros() {
        let v = to_f64(
            ElemType::F32,
            &generate(ElemType::F32, &Generator::Uniform(-1.0, 1.0), 1000, 1),
        );
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(v.iter().filter(|x| **x == 0.0).count() == 0);
        let i = to_f64(
            ElemType::I32,
            &generate(ElemType::I32, &Generator::IntRange(1, 9), 1000, 2),
        );
        assert!(i.iter().all(|x| (1.0..=9.0).contains(x)));
    }

    #[test]
    fn large_buffers_are_filled_in_parallel_and_depend_only_on_the_seed() {
        let g = Generator::Uniform(-1.0, 1.0);
        // Several chunks (more than one thread's share on most machines), a ragged end.
        let n = 5 * CHUNK + 123;
        let a = generate(ElemType::F16, &g, n, 9);
        assert_eq!(a.len(), n * 2);
        assert_eq!(
            a,
            generate(ElemType::F16, &g, n, 9),
            "same seed, same bytes"
        );
        assert_ne!(
            a,
            generate(ElemType::F16, &g, n, 10),
            "another seed differs"
        );
        // The chunks are not copies of each other, and the ragged end is filled.
        assert_ne!(&a[..CHUNK * 2], &a[CHUNK * 2..CHUNK * 4]);
        let v = to_f64(ElemType::F16, &a);
        assert!(v.iter().filter(|x| **x == 0.0).count() < n / 1000);
        assert!(v[n - 100..].iter().any(|x| *x != 0.0));
        // The bytes do not depend on how the chunks are dealt out: chunk by chunk alone.
        let mut serial = vec![0u8; n * 2];
        for (k, c) in serial.chunks_mut(CHUNK * 2).enumerate() {
            fill(ElemType::F16, &g, c, 9, k);
        }
        assert_eq!(a, serial);
    }
}
