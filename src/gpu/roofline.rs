//! The device's rooflines, for stopping a search once the best config is close to what the
//! hardware allows: the copy bandwidth, measured once per CUDA context (a device-to-device copy
//! large enough to evict L2, timed with events, median of ten), and the FP32 peak from a table
//! of FP32 lanes per SM by compute capability, times SMs, times the clock the driver reports.
//!
//! A spec that declares its work (`bytes`, `flops`) gets a time floor at a shape:
//! `max(bytes / bandwidth, flops / peak)`. `flops` count FP32 CUDA-core operations: a kernel
//! on tensor cores would beat that floor by far and must not declare them (its roofline is not
//! in the table). Why the copy and not the datasheet: a kernel cannot move memory faster than a
//! copy does on this device, and jitune's memory-bound specs reach 91-101% of it.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute as A, CUevent_flags};
use cudarc::driver::{CudaContext, DriverError};
use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::device::Gpu;
use crate::Error;

/// The rooflines of one device (`None` where unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Roofline {
    /// Device-to-device copy bandwidth, bytes per second (read + write counted).
    pub copy_bytes_per_s: Option<f64>,
    /// FP32 CUDA-core peak, operations per second.
    pub fp32_flops_per_s: Option<f64>,
}

impl Roofline {
    /// The rooflines of `gpu` that work of `bytes` and `flops` needs: the copy bandwidth
    /// (measured at the first call for its context) only when it moves bytes, the FP32 peak
    /// only when it computes.
    pub fn for_work(gpu: &Gpu, bytes: Option<i64>, flops: Option<i64>) -> Roofline {
        Roofline {
            copy_bytes_per_s: bytes.and_then(|_| copy_bandwidth(&gpu.ctx, gpu.limits.l2_bytes)),
            fp32_flops_per_s: flops.and_then(|_| fp32_peak(gpu)),
        }
    }

    /// The least time (ms) a launch moving `bytes` and computing `flops` can take, where the
    /// spec gives them and the roofline is known; `None` otherwise.
    pub fn floor_ms(&self, bytes: Option<i64>, flops: Option<i64>) -> Option<f64> {
        let mem = bytes
            .zip(self.copy_bytes_per_s)
            .map(|(b, bw)| b as f64 / bw * 1e3);
        let fp = flops
            .zip(self.fp32_flops_per_s)
            .map(|(f, p)| f as f64 / p * 1e3);
        match (mem, fp) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .filter(|t| t.is_finite() && *t > 0.0)
    }
}

/// FP32 lanes per SM by compute capability (CUDA programming guide, "arithmetic instructions").
pub fn fp32_lanes_per_sm(major: i64, minor: i64) -> Option<i64> {
    match (major, minor) {
        (5, _) => Some(128),
        (6, 0) => Some(64),
        (6, _) => Some(128),
        (7, _) => Some(64),
        (8, 0) => Some(64),
        (8, _) => Some(128),
        (9, 0) => Some(128),
        (10..=12, _) => Some(128),
        _ => None,
    }
}

/// The FP32 peak: SMs x lanes x 2 (fused multiply-add) x the clock the driver reports.
pub fn fp32_peak(gpu: &Gpu) -> Option<f64> {
    let lanes = fp32_lanes_per_sm(gpu.limits.cc_major, gpu.limits.cc_minor)?;
    let khz = gpu
        .ctx
        .attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)
        .ok()
        .filter(|k| *k > 0)?;
    Some(gpu.limits.sm_count as f64 * lanes as f64 * 2.0 * khz as f64 * 1e3)
}

/// Copy bandwidths by context, measured once (a failed measurement is remembered too, with
/// one warning, and leaves the memory roofline unknown).
static COPY: Lazy<Mutex<HashMap<usize, Option<f64>>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// The device-to-device copy bandwidth of `ctx`'s device in bytes per second, measured at the
/// first call for the context.
pub fn copy_bandwidth(ctx: &Arc<CudaContext>, l2_bytes: i64) -> Option<f64> {
    let key = ctx.cu_ctx() as usize;
    let mut map = COPY.lock();
    if let Some(v) = map.get(&key) {
        return *v;
    }
    let measured = super::guarded("measuring the copy bandwidth", || {
        measure_copy(ctx, l2_bytes).map_err(|e| Error::driver("measuring the copy bandwidth", e))
    });
    let v = match measured {
        Ok(bw) if bw.is_finite() && bw > 0.0 => Some(bw),
        Ok(bw) => {
            log::warn!("jitune: copy bandwidth measured as {bw}; no memory roofline");
            None
        }
        Err(e) => {
            log::warn!("jitune: {e}; no memory roofline");
            None
        }
    };
    map.insert(key, v);
    v
}

fn measure_copy(ctx: &Arc<CudaContext>, l2_bytes: i64) -> std::result::Result<f64, DriverError> {
    // Four times L2 at least (the copy evicts what the previous one left), 256 MiB at least
    // (launch gaps vanish), 1 GiB at most.
    let size = (4 * l2_bytes.max(0) as usize).clamp(256 << 20, 1 << 30);
    let stream = ctx.new_stream()?;
    let src = stream.alloc_zeros::<u8>(size)?;
    let mut dst = stream.alloc_zeros::<u8>(size)?;
    let ev = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT));
    let (start, end) = (ev()?, ev()?);
    let mut ms = Vec::new();
    for i in 0..12 {
        start.record(&stream)?;
        stream.memcpy_dtod(&src, &mut dst)?;
        end.record(&stream)?;
        stream.synchronize()?;
        if i >= 2 {
            ms.push(start.elapsed_ms(&end)? as f64);
        }
    }
    let t = super::sampling::median(&ms);
    Ok(2.0 * size as f64 / (t / 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_the_slower_of_the_two_roofs() {
        let r = Roofline {
            copy_bytes_per_s: Some(4e12),
            fp32_flops_per_s: Some(60e12),
        };
        // 512 MB at 4 TB/s: 0.128 ms.
        assert!((r.floor_ms(Some(512_000_000), None).unwrap() - 0.128).abs() < 1e-12);
        // 2 * 4096^3 FP32 operations at 60 TFLOP/s: 2.29 ms; the bytes are faster.
        let f = 2 * 4096i64.pow(3);
        let t = r.floor_ms(Some(4 * 3 * 4096 * 4096), Some(f)).unwrap();
        assert!((t - f as f64 / 60e12 * 1e3).abs() < 1e-12);
        // Nothing declared, or nothing known: no floor.
        assert_eq!(r.floor_ms(None, None), None);
        assert_eq!(Roofline::default().floor_ms(Some(1), Some(1)), None);
        let no_bw = Roofline {
            copy_bytes_per_s: None,
            ..r
        };
        assert_eq!(no_bw.floor_ms(Some(1_000_000), None), None);
        assert!(r.floor_ms(Some(0), None).is_none());
    }

    #[test]
    fn fp32_lanes_by_architecture() {
        assert_eq!(fp32_lanes_per_sm(9, 0), Some(128)); // H100/H200
        assert_eq!(fp32_lanes_per_sm(8, 0), Some(64)); // A100
        assert_eq!(fp32_lanes_per_sm(8, 9), Some(128)); // L40
        assert_eq!(fp32_lanes_per_sm(7, 0), Some(64)); // V100
        assert_eq!(fp32_lanes_per_sm(3, 5), None);
        // H200: 132 SMs x 128 lanes x 2 x 1.98 GHz = 66.9 TFLOP/s.
        let peak: f64 = 132.0 * 128.0 * 2.0 * 1.98e9;
        assert!((peak / 1e12 - 66.9).abs() < 0.1);
    }
}
