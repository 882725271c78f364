//! Writes the CUDA C++ that CubeCL's C++ backend generates for the selective-scan kernels on an
//! sm_90 GPU (an H200), without needing a GPU: one `<kernel>[_prefetch|_model]_<format>_n<d_state>.cu`
//! per pass (passes 1 and 3 also with later steps' loads issued early, `GENOMAMBA_SCAN_PREFETCH`;
//! two steps ahead in pass 3 and four in pass 1 unless `GENOMAMBA_SCAN_DEPTH` says otherwise;
//! `_model`: loading ahead, with 32-bit indices, Δ activated and the gate as given, as the model
//! runs them);
//! `<format>` is the activations' (`f32`, `f16`, `bf16`), with `_bc32` where `B` and `C` are
//! read in f32 (as the model passes them with half activations). Also `dbc_mma_<format>.cu`,
//! x_proj fused with dt_proj on tensor cores (f16, bf16; `dt_rank` and `d_state` 16).
//! `bench/sass.sh` compiles them with `nvcc -cubin` and counts the machine instructions of
//! each kernel's inner loop.
//!
//! Run: `cargo run --release --features cuda --example kernel_source -- OUT_DIR [D_STATE]`

use burn::backend::DType;
use genomamba::ops::project_cube::dbc_cuda_source;
use genomamba::ops::scan_cuda_sources;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: kernel_source OUT_DIR [D_STATE]")?;
    let d_state = match args.next() {
        Some(s) => s
            .parse::<usize>()
            .map_err(|e| format!("D_STATE {s:?}: {e}"))?,
        None => 16,
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{out}: {e}"))?;
    for (dtype, bc, tag) in [
        (DType::F32, DType::F32, "f32"),
        (DType::F16, DType::F16, "f16"),
        (DType::BF16, DType::BF16, "bf16"),
        (DType::F16, DType::F32, "f16_bc32"),
        (DType::BF16, DType::F32, "bf16_bc32"),
    ] {
        for (prefetch, as_model) in [(false, false), (true, false), (true, true)] {
            let sources = scan_cuda_sources(dtype, bc, d_state, prefetch, as_model)?;
            let variant = match (prefetch, as_model) {
                (_, true) => "_model",
                (true, false) => "_prefetch",
                (false, false) => "",
            };
            for (name, source) in sources {
                if prefetch && name == "scan_chunk_combine" {
                    continue; // pass 2 has neither variant
                }
                let path = format!("{out}/{name}{variant}_{tag}_n{d_state}.cu");
                std::fs::write(&path, source).map_err(|e| format!("{path}: {e}"))?;
                println!("{path}");
            }
        }
    }
    for (bf16, tag) in [(false, "f16"), (true, "bf16")] {
        let path = format!("{out}/dbc_mma_{tag}.cu");
        std::fs::write(&path, dbc_cuda_source(bf16)?).map_err(|e| format!("{path}: {e}"))?;
        println!("{path}");
    }
    Ok(())
}
