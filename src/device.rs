//! Choosing the compute device at run time (`--device cpu|cuda[:N]`).

use burn::tensor::Device;

use crate::infer::{DEFAULT_CHUNK, GPU_DEFAULT_CHUNK};
use crate::{Error, Result};

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The pure-Rust CPU backend.
    Cpu,
    /// An NVIDIA GPU through Burn's CUDA backend (needs the `cuda` feature).
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(DeviceSpec::Cpu);
        }
        if let Some(rest) = s.strip_prefix("cuda") {
            if rest.is_empty() {
                return Ok(DeviceSpec::Cuda(0));
            }
            if let Some(idx) = rest.strip_prefix(':')
                && let Ok(i) = idx.parse::<usize>()
            {
                return Ok(DeviceSpec::Cuda(i));
            }
        }
        Err(Error::usage(
            format!("unknown device '{s}'"),
            "use --device cpu, cuda or cuda:N",
        ))
    }
}

impl DeviceSpec {
    /// Positions per chunk when `--chunk-size` is not given: [`DEFAULT_CHUNK`] on the CPU,
    /// [`GPU_DEFAULT_CHUNK`] on a GPU.
    pub fn default_chunk(self) -> usize {
        match self {
            DeviceSpec::Cpu => DEFAULT_CHUNK,
            DeviceSpec::Cuda(_) => GPU_DEFAULT_CHUNK,
        }
    }

    /// Total memory of the GPU this names, in bytes, as CubeCL's client for it reports it
    /// (starting the client if it is not up yet); `None` on the CPU and without the `cuda`
    /// feature. [`gpu_chunk`](crate::infer::gpu_chunk) keeps the default chunk within half of it.
    pub fn total_memory(self) -> Option<u64> {
        match self {
            DeviceSpec::Cpu => None,
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => {
                use cubecl_runtime::runtime::Runtime;
                let client = cubecl_cuda::CudaRuntime::client(&cubecl_cuda::CudaDevice { index });
                client.properties().memory.max_memory()
            }
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => None,
        }
    }

    /// Whether kernels are compiled (and tuned) per tensor shape on this device, so that
    /// running every chunk at one length saves work: GPUs, not the CPU.
    pub fn compiles_per_shape(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    /// The Burn device for this spec; CUDA fails clearly when the binary was built without it.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => {
                check_cuda(i)?;
                Ok(Device::cuda(i))
            }
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(Error::usage(
                "this genomamba was built without GPU support",
                "rebuild with `cargo build --release --features cuda`, or use --device cpu",
            )),
        }
    }
}

/// What `check_cuda` found on this machine: the pieces Burn's CUDA backend needs before it
/// can run a kernel, each of which it would otherwise report by panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaProbe {
    /// The driver library (`libcuda.so`) could be loaded.
    pub driver: bool,
    /// `cuInit`'s failure, as the driver names it; `None` when it succeeded.
    pub init_error: Option<String>,
    /// CUDA devices the driver sees.
    pub devices: usize,
    /// NVRTC (`libnvrtc.so`, the toolkit's run-time compiler) could be loaded.
    pub nvrtc: bool,
    /// The toolkit's directory as CubeCL looks it up (`CUDA_PATH`, else `/usr/local/cuda`,
    /// `/opt/cuda`, `/usr` with `nvcc`), and whether its `include/cuda_fp16.h` exists.
    pub toolkit: Option<(std::path::PathBuf, bool)>,
}

impl CudaProbe {
    /// The first missing piece for running on GPU `index`, as a usage error (exit code 2) that
    /// says what is missing and how to fix it; `Ok` when everything is there.
    pub fn verdict(&self, index: usize) -> Result<()> {
        let cpu = "or use --device cpu";
        if !self.driver {
            return Err(Error::usage(
                "--device cuda: no NVIDIA driver on this machine (libcuda.so could not be loaded)",
                format!("install the NVIDIA driver (`nvidia-smi` should list the GPU), {cpu}"),
            ));
        }
        if let Some(e) = &self.init_error {
            return Err(Error::usage(
                format!("--device cuda: the NVIDIA driver did not start ({e})"),
                format!(
                    "check that `nvidia-smi` lists the GPU and that CUDA_VISIBLE_DEVICES does not hide it, {cpu}"
                ),
            ));
        }
        if index >= self.devices {
            let what = match self.devices {
                0 => "--device cuda: the NVIDIA driver sees no GPU".to_string(),
                1 => format!("--device cuda:{index}: this machine has one CUDA GPU, cuda:0"),
                n => format!(
                    "--device cuda:{index}: this machine has {n} CUDA GPUs, cuda:0 to cuda:{}",
                    n - 1
                ),
            };
            return Err(Error::usage(what, format!("name a GPU that exists, {cpu}")));
        }
        if !self.nvrtc {
            return Err(Error::usage(
                "--device cuda: NVRTC, the CUDA toolkit's run-time compiler (libnvrtc.so), could not be loaded",
                format!(
                    "install the CUDA toolkit and put its lib64 directory on LD_LIBRARY_PATH, {cpu}"
                ),
            ));
        }
        match &self.toolkit {
            None => Err(Error::usage(
                "--device cuda: no CUDA toolkit found (kernels are compiled at run time against its headers)",
                format!(
                    "set CUDA_PATH to the toolkit's directory (the one holding include/cuda_fp16.h), {cpu}"
                ),
            )),
            Some((dir, false)) => Err(Error::usage(
                format!(
                    "--device cuda: the CUDA toolkit at {} has no include/cuda_fp16.h",
                    dir.display()
                ),
                format!("set CUDA_PATH to a complete toolkit's directory, {cpu}"),
            )),
            Some((_, true)) => Ok(()),
        }
    }
}

/// Looks for the CUDA driver, GPU `index`, NVRTC and the toolkit's headers, and fails with a
/// one-line usage error for the first one missing ([`CudaProbe::verdict`]). Burn's CUDA
/// backend would otherwise panic on a thread of its own the first time the device is used.
#[cfg(feature = "cuda")]
pub fn check_cuda(index: usize) -> Result<()> {
    probe_cuda().verdict(index)
}

/// What [`check_cuda`] checks, found through the bindings cubecl-cuda itself uses.
#[cfg(feature = "cuda")]
pub fn probe_cuda() -> CudaProbe {
    // SAFETY: each call only tries to load a shared library by name (and drops it).
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    let toolkit = cubecl_cuda::install::cuda_path().map(|dir| {
        let headers = dir.join("include").join("cuda_fp16.h").is_file();
        (dir, headers)
    });
    let (init_error, devices) = if driver {
        match cudarc::driver::result::init() {
            Ok(()) => (
                None,
                cudarc::driver::result::device::get_count().map_or(0, |n| n.max(0) as usize),
            ),
            Err(e) => {
                let text = |c: std::result::Result<&std::ffi::CStr, _>| {
                    c.map_or(String::new(), |c| c.to_string_lossy().into_owned())
                };
                (
                    Some(format!(
                        "{}: {}",
                        text(e.error_name()),
                        text(e.error_string())
                    )),
                    0,
                )
            }
        }
    } else {
        (None, 0)
    };
    CudaProbe {
        driver,
        init_error,
        devices,
        nvrtc,
        toolkit,
    }
}

/// The part of a GPU's `memory` (bytes) that a run is estimated to be able to use (90%):
/// the bound of the up-front checks of `--chunk-size` and of training steps.
pub fn usable_memory(memory: u64) -> u64 {
    memory / 10 * 9
}

/// `bytes` in GiB, for messages.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The usage error for a panic whose message (`text`) is a device's failure to allocate
/// memory, as CubeCL words it (`can't allocate buffer of size: N`, `out of device memory
/// allocating N bytes`, or an out-of-memory launch error); `None` for any other panic. Burn's
/// CUDA backend panics when the GPU's memory runs out, and the binary's panic hook turns that
/// panic into this one line (exit code 2) with the flags that take less memory.
pub fn out_of_memory(text: &str) -> Option<Error> {
    let size_after = |marker: &str| {
        let rest = &text[text.find(marker)? + marker.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().ok()
    };
    let size = size_after("can't allocate buffer of size:")
        .or_else(|| size_after("out of device memory allocating"));
    let oom = size.is_some() || text.contains("out-of-memory error happened");
    if !oom {
        return None;
    }
    let what = match size {
        Some(b) => format!(
            "the GPU ran out of memory (an allocation of {:.1} GiB failed)",
            gib(b)
        ),
        None => "the GPU ran out of memory".to_string(),
    };
    Some(Error::usage(
        what,
        "use a smaller --chunk-size (embed, classify, annotate) or --batch-size or --window \
         (train), or --precision f16",
    ))
}

/// Starts `device` by uploading one value and reading it back: on a GPU that brings up the
/// driver, its context and CubeCL's client for the device (about 0.2 s on an H200); the
/// command-line tool runs it on a thread of its own while it reads the model.
pub fn warm_up(device: &Device) {
    let t = burn::tensor::Tensor::<1>::from_data(
        burn::tensor::TensorData::new(vec![0.0f32], [1]),
        device,
    );
    let _ = t.into_data();
}

/// Keeps the GPU kernels' compiled code on disk between runs: CubeCL's compilation cache,
/// turned on unless `GENOMAMBA_KERNEL_CACHE=0`. CubeCL puts it under `target/environment` of
/// the outermost Cargo project above the working directory, else in the user's cache
/// directory. Without it every process compiles each kernel's CUDA C++ again with NVRTC (on an
/// H200, 4 Mb of chr20 took 4.06 s without and 2.10-2.26 s with it; BENCHMARKS.md). Call
/// before any device is used; it changes nothing once CubeCL's configuration has been read or
/// set. CubeCL's own configuration (a `cubecl.toml`, its
/// environment variables) is read as usual; only the cache switch is set here.
#[cfg(feature = "cuda")]
pub fn enable_kernel_cache() {
    use cubecl_environment::config::RuntimeConfig;
    use cubecl_runtime::config::CubeClRuntimeConfig;
    if std::env::var_os("GENOMAMBA_KERNEL_CACHE").is_some_and(|v| v == "0") {
        return;
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = true;
    let _ = CubeClRuntimeConfig::try_set(config);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> CudaProbe {
        CudaProbe {
            driver: true,
            init_error: None,
            devices: 2,
            nvrtc: true,
            toolkit: Some(("/usr/local/cuda".into(), true)),
        }
    }

    fn message(p: &CudaProbe, index: usize) -> String {
        let e = p
            .verdict(index)
            .expect_err("a missing piece must be an error");
        assert_eq!(e.exit_code(), 2, "{e}");
        let m = e.to_string();
        assert_eq!(m.lines().count(), 1, "{m}");
        assert!(m.contains("--device cpu"), "{m}");
        m
    }

    #[test]
    fn a_complete_cuda_setup_passes_for_each_gpu_it_has() {
        assert!(complete().verdict(0).is_ok());
        assert!(complete().verdict(1).is_ok());
    }

    #[test]
    fn each_missing_cuda_piece_is_named_in_one_line() {
        let p = CudaProbe {
            driver: false,
            ..complete()
        };
        assert!(message(&p, 0).contains("no NVIDIA driver"));
        let p = CudaProbe {
            init_error: Some("CUDA_ERROR_NO_DEVICE".into()),
            devices: 0,
            ..complete()
        };
        assert!(message(&p, 0).contains("CUDA_ERROR_NO_DEVICE"));
        let m = message(&complete(), 2);
        assert!(
            m.contains("cuda:2: this machine has 2 CUDA GPUs, cuda:0 to cuda:1"),
            "{m}"
        );
        let p = CudaProbe {
            devices: 1,
            ..complete()
        };
        assert!(message(&p, 1).contains("cuda:1: this machine has one CUDA GPU, cuda:0;"));
        let p = CudaProbe {
            devices: 0,
            ..complete()
        };
        assert!(message(&p, 0).contains("sees no GPU"));
        let p = CudaProbe {
            nvrtc: false,
            ..complete()
        };
        assert!(message(&p, 0).contains("libnvrtc.so"));
        let p = CudaProbe {
            toolkit: None,
            ..complete()
        };
        assert!(message(&p, 0).contains("CUDA_PATH"));
        let p = CudaProbe {
            toolkit: Some(("/opt/half".into(), false)),
            ..complete()
        };
        assert!(message(&p, 0).contains("/opt/half has no include/cuda_fp16.h"));
        // The driver is checked first: without it nothing else could have been looked at.
        let p = CudaProbe {
            driver: false,
            nvrtc: false,
            toolkit: None,
            ..complete()
        };
        assert!(message(&p, 5).contains("no NVIDIA driver"));
    }

    #[test]
    fn a_gpu_allocation_failure_reads_as_out_of_memory() {
        // The panic of a training step on the H200 that asked for 128 GiB (abridged).
        let panic = "Error while reading data: use `try_into_data` instead to catch the error \
            at runtime: An error happened during execution\nCaused by:\n  Several failures at \
            once\nCaused by:\n  An IO error happened\nCaused by:\n  can't allocate buffer of \
            size: 137438953472\nNo backtrace available";
        let e = out_of_memory(panic).expect("an allocation failure");
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        assert!(m.starts_with("the GPU ran out of memory (an allocation of 128.0 GiB failed); "));
        assert!(m.contains("--chunk-size") && m.contains("--batch-size") && m.contains("--window"));
        assert_eq!(m.lines().count(), 1, "{m}");
        let m = out_of_memory("out of device memory allocating 1073741824 bytes\n")
            .unwrap()
            .to_string();
        assert!(m.contains("1.0 GiB"), "{m}");
        assert!(out_of_memory("An out-of-memory error happened during launch").is_some());
        // Other panics are left alone.
        assert!(out_of_memory("index out of bounds: the len is 3 but the index is 7").is_none());
        assert!(out_of_memory("called `Result::unwrap()` on an `Err` value: RecvError").is_none());
    }

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cuda(0)));
        assert_eq!(
            "cuda:3".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(3))
        );
        for bad in ["gpu", "cuda:", "cuda:x", "cuda3"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }
}
