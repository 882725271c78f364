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
            DeviceSpec::Cuda(i) => Ok(Device::cuda(i)),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(Error::usage(
                "this genomamba was built without GPU support",
                "rebuild with `cargo build --release --features cuda`, or use --device cpu",
            )),
        }
    }
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
