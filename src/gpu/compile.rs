//! NVRTC compilation of one spec + config, straight to a CUBIN for the device's own architecture.
//!
//! Config values arrive as `-D` defines. The CUBIN (`nvrtcGetCUBIN`) is what gets cached: a
//! second process loads it and never calls NVRTC. When NVRTC cannot target the real
//! architecture (a device newer than the compiler), PTX for the virtual architecture is the
//! fallback and the driver finishes the job. The compile log is kept on failure.

use std::ffi::CString;

use cudarc::nvrtc::{result as nvrtc, sys};

use crate::space::Config;
use crate::spec::KernelSpec;
use crate::{Error, Result};

/// A compiled kernel image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    Cubin(Vec<u8>),
    /// NUL-free PTX text (the fallback).
    Ptx(String),
}

impl Image {
    /// The bytes to store in the cache's binary table (PTX prefixed so it can be told apart).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Image::Cubin(b) => b.clone(),
            Image::Ptx(p) => [b"PTX\0".as_slice(), p.as_bytes()].concat(),
        }
    }

    /// Inverse of [`Image::to_bytes`].
    pub fn from_bytes(b: Vec<u8>) -> Image {
        match b.strip_prefix(b"PTX\0") {
            Some(p) => Image::Ptx(String::from_utf8_lossy(p).into_owned()),
            None => Image::Cubin(b),
        }
    }

    /// The form cudarc loads.
    pub fn to_ptx(&self) -> cudarc::nvrtc::Ptx {
        match self {
            Image::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b.clone()),
            Image::Ptx(p) => cudarc::nvrtc::Ptx::from_src(p.clone()),
        }
    }
}

/// Everything NVRTC needs for one compilation; plain data, so it can travel to a worker process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CompileRequest {
    pub source: String,
    /// Program name (shows in compiler messages).
    pub name: String,
    /// Target architecture, e.g. `sm_90`.
    pub arch: String,
    pub options: Vec<String>,
}

impl CompileRequest {
    /// The request for `config` of `spec` on `arch`.
    ///
    /// A spec flag `--gpu-architecture=sm_XYa` asks for the arch-specific variant of the
    /// device's own architecture (`sm_90a` on an `sm_90` device: wgmma and friends exist only
    /// there); on any other device the flag is dropped, and such a kernel fails to compile
    /// (its spec's constraints should keep it off those devices anyway).
    pub fn new(spec: &KernelSpec, config: &Config, arch: &str) -> CompileRequest {
        let mut arch = arch.to_string();
        let mut options = Vec::with_capacity(spec.flags.len() + spec.params.len() + 1);
        for f in &spec.flags {
            match f.strip_prefix("--gpu-architecture=") {
                Some(a) => {
                    if a.strip_suffix('a') == Some(arch.as_str()) {
                        arch = a.to_string();
                    }
                }
                None => options.push(f.clone()),
            }
        }
        options.extend(spec.defines(config));
        // Headers for #include <cuda_fp16.h> and friends, where the toolkit has them.
        for dir in ["/usr/local/cuda/include", "/usr/include/cuda"] {
            if std::path::Path::new(dir).join("cuda_fp16.h").exists() {
                options.push(format!("-I{dir}"));
                break;
            }
        }
        CompileRequest {
            source: spec.source.clone(),
            name: format!("{}.cu", spec.name),
            arch,
            options,
        }
    }

    /// Identity of the compilation (identical requests compile once).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for part in [self.source.as_str(), self.name.as_str(), self.arch.as_str()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for o in &self.options {
            h.update(&(o.len() as u64).to_le_bytes());
            h.update(o.as_bytes());
        }
        *h.finalize().as_bytes()
    }
}

/// NVRTC's version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    super::require_cuda()?;
    super::guarded("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(Error::cuda(format!("nvrtcVersion: {r:?}")));
        }
        Ok((major, minor))
    })
}

/// Compiles in this process. `Err(log)` when the source does not compile for this config.
/// The outer `Result` is for NVRTC itself failing (missing library).
pub fn compile_in_process(req: &CompileRequest) -> Result<std::result::Result<Image, String>> {
    super::require_cuda()?;
    if req.source.contains('\0')
        || req.options.iter().any(|o| o.contains('\0'))
        || req.name.contains('\0')
    {
        return Ok(Err("source or options contain a NUL byte".into()));
    }
    super::guarded("NVRTC", || {
        let src =
            CString::new(req.source.as_str()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let name =
            CString::new(req.name.as_str()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let real = compile_once(
            &src,
            &name,
            &req.options,
            &format!("--gpu-architecture={}", req.arch),
            true,
        )?;
        match real {
            Ok(img) => Ok(Ok(img)),
            Err(log)
                if log.contains("invalid value for --gpu-architecture")
                    || log.contains("unsupported gpu architecture") =>
            {
                let virt = req.arch.replace("sm_", "compute_");
                compile_once(
                    &src,
                    &name,
                    &req.options,
                    &format!("--gpu-architecture={virt}"),
                    false,
                )
            }
            Err(log) => Ok(Err(log)),
        }
    })
}

fn compile_once(
    src: &CString,
    name: &CString,
    options: &[String],
    arch_opt: &str,
    cubin: bool,
) -> Result<std::result::Result<Image, String>> {
    let prog = nvrtc::create_program(src, Some(name))
        .map_err(|e| Error::cuda(format!("nvrtcCreateProgram: {e:?}")))?;
    let mut opts: Vec<String> = options.to_vec();
    opts.push(arch_opt.to_string());
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let out = match compiled {
        Err(_) => {
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|l| {
                    let bytes: Vec<u8> =
                        l.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_else(|e| format!("(no log: {e:?})"));
            Ok(Err(if log.trim().is_empty() {
                "compilation failed (empty log)".to_string()
            } else {
                log
            }))
        }
        Ok(()) if cubin => {
            let mut size = 0usize;
            let r = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                Ok(Err(format!("nvrtcGetCUBINSize: {r:?}")))
            } else {
                let mut buf = vec![0u8; size];
                let r = unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _) };
                if r == sys::nvrtcResult::NVRTC_SUCCESS {
                    Ok(Ok(Image::Cubin(buf)))
                } else {
                    Ok(Err(format!("nvrtcGetCUBIN: {r:?}")))
                }
            }
        }
        Ok(()) => match unsafe { nvrtc::get_ptx(prog) } {
            Ok(p) => {
                let bytes: Vec<u8> = p.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
                Ok(Ok(Image::Ptx(String::from_utf8_lossy(&bytes).into_owned())))
            }
            Err(e) => Ok(Err(format!("nvrtcGetPTX: {e:?}"))),
        },
    };
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}
