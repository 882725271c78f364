//! The block's projections (`x · w`) on CubeCL devices, through cubek's matrix-product kernels
//! with a strategy that can be chosen instead of Burn's default.
//!
//! The projections of a Mamba block are long and skinny: `[L, d_model] · [d_model, 2·d_inner]`
//! (in_proj), `[L, d_inner] · [d_inner, dt_rank + 2·d_state]` (x_proj),
//! `[L, dt_rank] · [dt_rank, d_inner]` (dt_proj) and `[L, d_inner] · [d_inner, d_model]`
//! (out_proj), with `L` the chunk length (65,536 by default on a GPU). Burn's selection without
//! autotuning runs all of them with one tiling whose accumulators spill to local memory on an
//! H200 (ncu, in_proj in f16: 128 registers per thread, 4.7 M local-memory spill requests, 11% of
//! issue slots busy, 348 us), and the projections are about half of the GPU time per chunk.
//!
//! [`default_strategy`] is what runs unless the environment variable `GENOMAMBA_MATMUL` names
//! one of [`strategy_names`] (cubek's names) or `burn` (Burn's selection), for tuning runs. On
//! CUDA it is `matmul_simple_cyclic_mma` for f16/bf16 and `matmul_simple_cyclic_cmma_multi_rows`
//! for f32: on the H200, embedding 8 Mb of chr20 (second runs, kernels cached) took 5.62 s in
//! f16 against 6.77 s with `burn`, and 5.85 s against 6.26 s in f32 (BENCHMARKS.md), and
//! `tests/gpu_scan.rs` checked both, with Burn's selection, on every projection shape in f32,
//! f16 and bf16 against the CPU's product (within 3.4e-4, 5.0e-4 and 4.5e-3). On CubeCL's CPU
//! runtime Burn's selection stays. The TMA kernels (`matmul_simple_tma_mma`,
//! `matmul_specialized_tma_mma`) took less GPU time per projection under `ncu` (7.0 against
//! 10.1 ms per chunk of 65,536 in f16) but whole chr20 took longer with them (31.5 against
//! 27.7 s), so they are not the default.
//! A strategy that refuses a problem when asked falls back to Burn's selection; one that fails
//! later, at launch, cannot be caught here, which is why the TMA strategies with the cmma tile
//! (they failed at launch for x_proj's shape on the H200) are not offered.

use burn::backend::DType;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::kernel::matmul::{MatmulStrategy, init_matmul_output, matmul};
use burn_cubecl::tensor::CubeTensor;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::multi_level::Strategy;
use cubek::matmul::multi_level::components::tile::TileMatmulKind;
use cubek::matmul::multi_level::routines::batch::{
    double_buffering::DoubleBufferingArgs, ordered_double_buffering::OrderedSelectionArgs,
    simple::SimpleArgs,
};
use cubek::matmul::routine::BlueprintStrategy;
use cubek::std::InputBinding;

use super::scan_cube::activation_elem;

/// The strategy used unless `GENOMAMBA_MATMUL` says otherwise (a name from [`strategy_names`],
/// or `burn`), for activations in `dtype` on a device whose CubeCL client is named `client`:
/// on CUDA, the kernels measured fastest on the H200 for the projections' shapes (module
/// docs); elsewhere (CubeCL's CPU runtime) Burn's selection.
pub fn default_strategy(dtype: DType, client: &str) -> &'static str {
    match (client, dtype) {
        ("cuda", DType::F16 | DType::BF16) => "matmul_simple_cyclic_mma",
        ("cuda", DType::F32) => "matmul_simple_cyclic_cmma_multi_rows",
        _ => "burn",
    }
}

/// The kernel families [`set_strategy`] and `GENOMAMBA_MATMUL` may name: those Burn's autotuner
/// tries on GPUs with tensor cores, less the two that failed at launch (module docs).
fn candidates() -> Vec<Strategy> {
    let mut out = Vec::new();
    for tile_matmul in [TileMatmulKind::Cmma, TileMatmulKind::Mma] {
        let args = |multi_rows| SimpleArgs {
            multi_rows,
            tile_matmul,
        };
        let double = |specialized| {
            BlueprintStrategy::Inferred(DoubleBufferingArgs {
                specialized,
                tile_matmul,
            })
        };
        let ordered = |row_count| {
            BlueprintStrategy::Inferred(OrderedSelectionArgs {
                partition_k: Some(2),
                row_count: Some(row_count),
                rows_per_plane: Some(2),
                tile_matmul,
            })
        };
        let cmma = tile_matmul == TileMatmulKind::Cmma;
        for multi_rows in [false, true] {
            out.push(if cmma {
                Strategy::SimpleCyclicCmma(BlueprintStrategy::Inferred(args(multi_rows)))
            } else {
                Strategy::SimpleCyclicMma(BlueprintStrategy::Inferred(args(multi_rows)))
            });
            // TMA loading with the cmma tile failed at launch on the H200 for x_proj's shape
            // (`Tile shape must be non-zero and <= 256`, reported asynchronously, so the
            // fallback below cannot catch it): only the mma tile is offered with TMA.
            if !cmma {
                out.push(Strategy::SimpleTmaMma(BlueprintStrategy::Inferred(args(
                    multi_rows,
                ))));
            }
        }
        for specialized in [false, true] {
            out.push(if cmma {
                Strategy::DoubleCyclicCmma(double(specialized))
            } else {
                Strategy::DoubleCyclicMma(double(specialized))
            });
        }
        for row_count in [4, 8] {
            out.push(if cmma {
                Strategy::OrderedDoubleCmma(ordered(row_count))
            } else {
                Strategy::OrderedDoubleMma(ordered(row_count))
            });
        }
        out.push(if cmma {
            Strategy::SpecializedCyclicCmma(BlueprintStrategy::Inferred(().into()))
        } else {
            Strategy::SpecializedCyclicMma(BlueprintStrategy::Inferred(().into()))
        });
        if !cmma {
            out.push(Strategy::SpecializedTmaMma(BlueprintStrategy::Inferred(
                ().into(),
            )));
        }
    }
    out
}

/// The strategy set by [`set_strategy`], else named by `GENOMAMBA_MATMUL`, else
/// [`default_strategy`]; `None` for Burn's selection (`burn`, or a name that matches no
/// candidate).
fn chosen(dtype: DType, client: &str) -> Option<Strategy> {
    let forced = OVERRIDE.lock().ok().and_then(|g| g.clone());
    let name = forced
        .or_else(|| env_choice().clone())
        .unwrap_or_else(|| default_strategy(dtype, client).to_string());
    if name == "burn" {
        return None;
    }
    candidates().into_iter().find(|s| s.to_string() == name)
}

static OVERRIDE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// `GENOMAMBA_MATMUL`, read once per process (projections run four times per layer and chunk).
fn env_choice() -> &'static Option<String> {
    static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHOICE.get_or_init(|| std::env::var("GENOMAMBA_MATMUL").ok())
}

/// Makes later projections use the strategy `name` (one of [`strategy_names`], or `burn`), or
/// with `None` the usual choice again; process-wide (for tests and tuning runs).
pub fn set_strategy(name: Option<&str>) {
    if let Ok(mut g) = OVERRIDE.lock() {
        *g = name.map(str::to_string);
    }
}

/// The names [`set_strategy`] and `GENOMAMBA_MATMUL` accept besides `burn`.
pub fn strategy_names() -> Vec<String> {
    candidates().iter().map(|s| s.to_string()).collect()
}

/// `x · w` for `x: [batch, length, in]` and `w: [in, out]` (same float format), in that format.
pub(crate) fn project_cube(x: CubeTensor, w: CubeTensor) -> CubeTensor {
    let w3 = super::block::batched_weight::<CubeBackend>(w);
    let dtype = x.dtype;
    let burn_matmul = |x: CubeTensor, w3: CubeTensor| {
        matmul(x, w3, None, MatmulStrategy::default(), dtype)
            .unwrap_or_else(|e| panic!("matrix product failed: {e:?}"))
    };
    let client_name = x.client.name();
    let (Some(strategy), Some(elem)) = (chosen(dtype, client_name), activation_elem(dtype)) else {
        return burn_matmul(x, w3);
    };
    if w3.dtype != dtype {
        return burn_matmul(x, w3);
    }
    let x = into_contiguous(x);
    let w3 = into_contiguous(w3);
    let out = init_matmul_output(&x, &w3, dtype);
    let client = out.client.clone();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: elem,
        rhs: elem,
        out: elem,
    });
    let launched = cubek::matmul::launch::launch_ref(
        &strategy.into(),
        &client,
        InputBinding::new(x.clone().binding(), elem),
        InputBinding::new(w3.clone().binding(), elem),
        out.clone().binding(),
        &mut dtypes,
    );
    match launched {
        Ok(()) => out,
        // A strategy that does not take this problem (shape, format or device): Burn's own.
        Err(_) => burn_matmul(x, w3),
    }
}
