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
//! CUDA it is `matmul_simple_tma_mma` for f16/bf16 and `matmul_simple_cyclic_cmma_multi_rows`
//! for f32; on CubeCL's CPU runtime Burn's selection stays. The simple mma routines also take a
//! plane [`Tiling`] ([`default_tiling`], else `GENOMAMBA_MATMUL_TILING`, `inferred` for cubek's
//! own): a sweep on the H200 (`examples/matmul_sweep.rs`, f16, chunk 65,536; BENCHMARKS.md)
//! put in_proj at 194 us with `p8r4k4s1d0` against 254 us with the TMA routine's inferred
//! tiling and 398 us with the cyclic routine's (the previous default), and out_proj at 109
//! against 147 and 205 us; 16.7 Mb of chr20 end to end took 5.43 s against 5.88 s and 6.61 s
//! (means of three, outputs identical). Before the persistent kernel cache the TMA routine lost
//! end to end, most likely because every process compiled its kernels again; now that happens
//! once per machine. `tests/gpu_scan.rs` checks every strategy, and four tilings, on every
//! projection shape in f32, f16 and bf16 against the CPU's product.
//! A choice that refuses a problem when asked falls back to the next (the routine with its
//! inferred tiling, then Burn's selection; [`refusals`] counts these); one that fails
//! later, at launch, cannot be caught here, which is why the TMA strategies with the cmma tile
//! (they failed at launch for x_proj's shape on the H200) are not offered. Where Burn's
//! selection itself refuses a problem (on CubeCL's CPU runtime, whose shared memory is the L1
//! data cache's size, its tiles can outgrow it), cubek's naive kernel runs it
//! ([`naive_fallbacks`]).
//!
//! Projections with an inner dimension of at most [`SMALL_K_MAX`] (dt_proj: 16 for d_model 256)
//! run [`small_k_kernel`] instead, on every CubeCL runtime, unless a strategy was chosen or
//! `GENOMAMBA_MATMUL_SMALL_K=off`: a tensor-core tile along such a `k` is mostly padding. On the
//! H200 at chunk 65,536 it takes 57 us of GPU time for dt_proj (BENCHMARKS.md). Its softplus
//! epilogue ([`project_softplus_cube`]) makes dt_proj's output the scan's time step `Δ`
//! (bias added, softplus applied before rounding), so that the scan kernels skip both.
//!
//! In f16 and bf16 on CUDA, x_proj and dt_proj run as one kernel instead
//! ([`project_dbc_cube`], [`dbc_mma_kernel`]): both products on tensor cores through inline
//! PTX (`mma.sync.aligned.m16n8k16`), x_proj's `dt` columns kept in registers as dt_proj's
//! operand, `B` and `C` written as contiguous tensors, the same softplus epilogue. On the
//! H200 it takes 296 us per layer at 262,144 rows, where x_proj, the slice copies of its
//! output and the small-k dt_proj took about 380 us; whole chr20 in f16 13.07 s against
//! 13.48 s (BENCHMARKS.md, eighteenth session). In the model the convolution runs inside this
//! kernel ([`super::conv_dbc`]), which computes `u` where this one loads it.
//!
//! In f16 and bf16 on CUDA, projections with an inner dimension of at most 256 (in_proj) run
//! [`super::project_mma`]'s tensor-core kernel before any cubek strategy (unless a strategy
//! was chosen or `GENOMAMBA_GEMM_MMA=off`).

use burn::backend::{DType, TensorMetadata};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::kernel::matmul::{MatmulStrategy, init_matmul_output, matmul};
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::Client;
use cubecl::ir::{AddressType, ElemType};
use cubecl::prelude::*;
use cubek::matmul::definition::{
    AvailableVectorSizes, MatmulElems, MatmulGlobalElems, MatmulProblem,
};
use cubek::matmul::multi_level::Strategy;
use cubek::matmul::multi_level::components::stage::PartitionBuffering;
use cubek::matmul::multi_level::components::tile::TileMatmulKind;
use cubek::matmul::multi_level::definition::MultiRowStrategy;
use cubek::matmul::multi_level::routines::batch::{
    double_buffering::DoubleBufferingArgs, ordered_double_buffering::OrderedSelectionArgs,
    simple::SimpleArgs,
};
use cubek::matmul::multi_level::routines::{PlaneTilingBlueprintOptions, infer_blueprint_plane};
use cubek::matmul::routine::BlueprintStrategy;
use cubek::std::{InputBinding, MatrixLayout};

use super::block::{DbcInput, DbcOutput, ProjectAddInput, ProjectAddOutput};
use super::scan_cube::{activation_elem, fast_math, softplus};
use super::scan_reference::{to_dtype, to_f32};

/// The strategy used unless `GENOMAMBA_MATMUL` says otherwise (a name from [`strategy_names`],
/// or `burn`), for activations in `dtype` on a device whose CubeCL client is named `client`:
/// on CUDA, the kernels measured fastest on the H200 for the projections' shapes (module
/// docs); elsewhere (CubeCL's CPU runtime) Burn's selection.
pub fn default_strategy(dtype: DType, client: &str) -> &'static str {
    match (client, dtype) {
        ("cuda", DType::F16 | DType::BF16) => "matmul_simple_tma_mma",
        ("cuda", DType::F32) => "matmul_simple_cyclic_cmma_multi_rows",
        _ => "burn",
    }
}

/// The plane tiling given to the simple mma routines unless `GENOMAMBA_MATMUL_TILING` says
/// otherwise (a [`Tiling`], or `inferred` for cubek's own), for activations in `dtype` on a
/// device whose CubeCL client is named `client`: on CUDA with f16/bf16, `planes` 8, 4 rows of
/// tiles per plane, partition k 4, swizzled (with 16 x 8 x 16 instructions, by cubek's rules: a
/// cube of two planes computing 128 x 64 of the output, 64 along k per stage), the fastest of
/// the tilings timed on the H200 for in_proj and out_proj (module docs); elsewhere none.
pub fn default_tiling(dtype: DType, client: &str) -> Option<Tiling> {
    match (client, dtype) {
        ("cuda", DType::F16 | DType::BF16) => Some(Tiling {
            planes: 8,
            rows: 4,
            partition_k: 4,
            swizzled: true,
            double: false,
        }),
        _ => None,
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
        // Double-buffered TMA loads (mma tile only, as above).
        if !cmma {
            out.push(Strategy::DoubleTmaMma(BlueprintStrategy::Inferred(
                DoubleBufferingArgs {
                    specialized: false,
                    tile_matmul,
                },
            )));
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
    let name = STRATEGY
        .get()
        .unwrap_or_else(|| default_strategy(dtype, client).to_string());
    if name == "burn" {
        return None;
    }
    candidates().into_iter().find(|s| s.to_string() == name)
}

/// A process-wide choice by name: the one set through a `set_*` function (tests, tuning runs),
/// else the environment variable `var`, read once per process (projections run four times per
/// layer and chunk).
pub(crate) struct NamedChoice {
    forced: std::sync::Mutex<Option<String>>,
    env: std::sync::OnceLock<Option<String>>,
    var: &'static str,
}

impl NamedChoice {
    pub(crate) const fn new(var: &'static str) -> Self {
        Self {
            forced: std::sync::Mutex::new(None),
            env: std::sync::OnceLock::new(),
            var,
        }
    }

    pub(crate) fn set(&self, name: Option<&str>) {
        if let Ok(mut g) = self.forced.lock() {
            *g = name.map(str::to_string);
        }
    }

    pub(crate) fn get(&self) -> Option<String> {
        let forced = self.forced.lock().ok().and_then(|g| g.clone());
        forced.or_else(|| {
            self.env
                .get_or_init(|| std::env::var(self.var).ok())
                .clone()
        })
    }
}

static STRATEGY: NamedChoice = NamedChoice::new("GENOMAMBA_MATMUL");

/// Whether a cubek strategy was chosen (through [`set_strategy`] or `GENOMAMBA_MATMUL`): then
/// the hand-written projection kernels stand aside, so that the strategy runs on every shape.
pub(crate) fn strategy_chosen() -> bool {
    STRATEGY.get().is_some()
}
static TILING: NamedChoice = NamedChoice::new("GENOMAMBA_MATMUL_TILING");

/// Makes later projections use the strategy `name` (one of [`strategy_names`], or `burn`), or
/// with `None` the usual choice again; process-wide (for tests and tuning runs).
pub fn set_strategy(name: Option<&str>) {
    STRATEGY.set(name);
}

/// The names [`set_strategy`] and `GENOMAMBA_MATMUL` accept besides `burn`.
pub fn strategy_names() -> Vec<String> {
    candidates().iter().map(|s| s.to_string()).collect()
}

/// `x · w` for `x: [batch, length, in]` and `w: [in, out]` (same float format), in that format.
pub(crate) fn project_cube(x: CubeTensor, w: CubeTensor) -> CubeTensor {
    let w3 = super::block::batched_weight::<CubeBackend>(w);
    let dtype = x.dtype;
    let burn_matmul = |x: CubeTensor, w3: CubeTensor| matmul_or_naive(x, w3, dtype);
    let client_name = x.client.name();
    if let Some(out) = project_small_k(&x, &w3, None) {
        return out;
    }
    if let Some(out) = super::project_mma::project_mma(&x, &w3) {
        return out;
    }
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
    // The strategy with the chosen plane tiling first (where it applies), then as cubek
    // infers it, then Burn's selection.
    let tiled = chosen_tiling(dtype, client_name)
        .and_then(|tiling| with_tiling(&strategy, tiling, &client, &x, &w3, elem));
    for strategy in tiled.into_iter().chain([strategy]) {
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
        if launched.is_ok() {
            return out;
        }
        // A strategy or tiling that does not take this problem (shape, format or device).
        REFUSALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    burn_matmul(x, w3)
}

/// Burn's matrix product (its selection), else cubek's naive kernel where the selection
/// refuses the problem on this device: CubeCL's CPU runtime offers the L1 data cache's size as
/// shared memory, and where that is 32 KiB the selection's tiling for some projections (in_proj
/// of 256 -> 1,024, x_proj-like 65 -> 48, ...) asked for 45,056 bytes (CI and the development
/// VM, 2026-12-01). [`naive_fallbacks`] counts the fallbacks.
fn matmul_or_naive(x: CubeTensor, w3: CubeTensor, dtype: DType) -> CubeTensor {
    let selected = if FORCE_NAIVE.load(std::sync::atomic::Ordering::Relaxed) {
        None
    } else {
        match matmul(
            x.clone(),
            w3.clone(),
            None,
            MatmulStrategy::default(),
            dtype,
        ) {
            Ok(out) => return out,
            Err(e) => Some(e),
        }
    };
    let naive = activation_elem(dtype).ok_or(None).and_then(|elem| {
        let x = into_contiguous(x);
        let w3 = into_contiguous(w3);
        let out = init_matmul_output(&x, &w3, dtype);
        let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
            lhs: elem,
            rhs: elem,
            out: elem,
        });
        cubek::matmul::launch::launch_ref(
            &Strategy::Naive.into(),
            &out.client.clone(),
            InputBinding::new(x.binding(), elem),
            InputBinding::new(w3.binding(), elem),
            out.clone().binding(),
            &mut dtypes,
        )
        .map(|()| out)
        .map_err(Some)
    });
    match naive {
        Ok(out) => {
            NAIVE_FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out
        }
        Err(naive) => {
            panic!("matrix product failed: Burn's selection: {selected:?}; naive kernel: {naive:?}")
        }
    }
}

static NAIVE_FALLBACKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static FORCE_NAIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How many projections so far ran cubek's naive kernel because Burn's selection refused them
/// (or [`force_naive_fallback`] asked for it).
pub fn naive_fallbacks() -> usize {
    NAIVE_FALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes projections that would take Burn's selection take the naive fallback instead, as on
/// a device where the selection refuses them (tests: the fallback is otherwise reached only on
/// such devices); process-wide.
pub fn force_naive_fallback(on: bool) {
    FORCE_NAIVE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `x · w` with SiLU on the output columns `from..` (in_proj with the gate's activation):
/// [`project_mma_gated`](super::project_mma::project_mma_gated), whose epilogue applies it,
/// where that takes the problem, else [`project_cube`] and the SiLU as tensor operations.
pub(crate) fn project_silu_from_cube(x: CubeTensor, w: CubeTensor, from: usize) -> CubeTensor {
    let w3 = super::block::batched_weight::<CubeBackend>(w.clone());
    if let Some(out) = super::project_mma::project_mma_gated(&x, &w3, Some(from)) {
        return out;
    }
    super::block::silu_from::<CubeBackend>(project_cube(x, w), from)
}

/// out_proj with the residual add: the tensor-core kernel with the add in its epilogue where it
/// takes the problem, else [`project_cube`] and tensor operations.
pub(crate) fn project_add_cube(
    input: ProjectAddInput<CubeBackend>,
) -> ProjectAddOutput<CubeBackend> {
    let w3 = super::block::batched_weight::<CubeBackend>(input.w.clone());
    if let Some((half, sum)) = super::project_mma::project_mma_residual(&input.y, &w3, &input.x) {
        return ProjectAddOutput { sum, half };
    }
    super::block::project_add_composed::<CubeBackend>(input, project_cube)
}

/// in_proj of a block's norm with the gate's SiLU: the tensor-core kernel with the norm folded
/// in where it takes the problem, else the norm as tensor operations and
/// [`project_silu_from_cube`].
pub(crate) fn project_norm_silu_from_cube(
    x: CubeTensor,
    norm: CubeTensor,
    w: CubeTensor,
    eps: f64,
    from: usize,
) -> CubeTensor {
    let w3 = super::block::batched_weight::<CubeBackend>(w.clone());
    if let Some(out) = super::project_mma::project_mma_norm(&x, &w3, &norm, eps, Some(from)) {
        return out;
    }
    let dtype = x.dtype;
    let normed = super::block::rms_reference::<CubeBackend>(to_f32::<CubeBackend>(x), norm, eps);
    project_silu_from_cube(to_dtype::<CubeBackend>(normed, dtype), w, from)
}

/// `softplus(x · w + bias)` (dt_proj with the time step's bias and softplus, for
/// `selective_scan_activated`): [`small_k_kernel`] with its softplus where it takes the
/// problem (dt_proj's usual shapes), else the reference (a matrix product, then tensor
/// operations).
pub(crate) fn project_softplus_cube(x: CubeTensor, w: CubeTensor, bias: CubeTensor) -> CubeTensor {
    let w3 = super::block::batched_weight::<CubeBackend>(w.clone());
    match project_small_k(&x, &w3, Some(&bias)) {
        Some(out) => out,
        None => super::block::project_softplus_composed::<CubeBackend>(x, w, bias, project_cube),
    }
}

static REFUSALS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times so far a chosen kernel (a strategy, or a strategy with a plane tiling) refused
/// a projection, which then ran with the next choice (the strategy without the tiling, then
/// Burn's selection). For tuning runs and tests: a timing of a refused choice times another.
pub fn refusals() -> usize {
    REFUSALS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A plane tiling for cubek's simple routines with the mma tile (`matmul_simple_cyclic_mma`,
/// `matmul_simple_tma_mma`) in place of the one they infer, for f16/bf16 activations: handed to
/// cubek's plane tiling selector as its options, which then builds the blueprint (tile size
/// from the instruction, swizzle modes, cube placement) around them.
///
/// Written `p{planes}r{rows}k{partition_k}s{swizzled}d{double}`, e.g. `p16r1k2s1d0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// cubek's `row_count`: the cube gets `planes / rows` planes along m and each plane's
    /// partition is `planes` tiles wide along n (both halved while a swizzled row of the
    /// partition would pass 128 bytes).
    pub planes: u32,
    /// Rows of tiles along m that each plane computes.
    pub rows: u32,
    /// Tiles along k per partition.
    pub partition_k: u32,
    /// Swizzled shared memory (where the device allows it).
    pub swizzled: bool,
    /// Double partition buffering.
    pub double: bool,
}

impl std::fmt::Display for Tiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p{}r{}k{}s{}d{}",
            self.planes,
            self.rows,
            self.partition_k,
            u8::from(self.swizzled),
            u8::from(self.double)
        )
    }
}

impl std::str::FromStr for Tiling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("tiling {s:?}: expected p<planes>r<rows>k<k>s<0|1>d<0|1>");
        let mut fields = [0u32; 5];
        let mut rest = s;
        for (field, tag) in fields.iter_mut().zip(['p', 'r', 'k', 's', 'd']) {
            rest = rest.strip_prefix(tag).ok_or_else(bad)?;
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            *field = rest[..end].parse().map_err(|_| bad())?;
            rest = &rest[end..];
        }
        let [planes, rows, partition_k, swizzled, double] = fields;
        if !rest.is_empty()
            || planes == 0
            || rows == 0
            || partition_k == 0
            || swizzled > 1
            || double > 1
        {
            return Err(bad());
        }
        Ok(Self {
            planes,
            rows,
            partition_k,
            swizzled: swizzled == 1,
            double: double == 1,
        })
    }
}

/// Makes later projections with a simple mma strategy use the tiling `name` (a [`Tiling`] as
/// written by its `Display`, or `inferred` for cubek's own), or with `None` the usual choice
/// again; process-wide (for tests and tuning runs).
pub fn set_tiling(name: Option<&str>) {
    TILING.set(name);
}

/// The tiling named by [`set_tiling`], else by `GENOMAMBA_MATMUL_TILING`, else
/// [`default_tiling`]; `None` for `inferred` (cubek infers one). A name that is neither
/// `inferred` nor a tiling counts as unset.
fn chosen_tiling(dtype: DType, client: &str) -> Option<Tiling> {
    match TILING.get().as_deref() {
        Some("inferred") => None,
        Some(name) => name.parse().ok().or_else(|| default_tiling(dtype, client)),
        None => default_tiling(dtype, client),
    }
}

/// `strategy` with its blueprint built from `tiling`, where `strategy` is one of the simple mma
/// routines or the double-buffered TMA one and the activations are half; `None` otherwise or
/// where cubek refuses the tiling.
fn with_tiling(
    strategy: &Strategy,
    tiling: Tiling,
    client: &Client,
    x: &CubeTensor,
    w3: &CubeTensor,
    elem: ElemType,
) -> Option<Strategy> {
    // (TMA loads, stages the k loop consumes per iteration, specialized loading planes)
    let (tma, stage_buffering, specialized) = match strategy {
        Strategy::SimpleCyclicMma(BlueprintStrategy::Inferred(_)) => (false, 1, false),
        Strategy::SimpleTmaMma(BlueprintStrategy::Inferred(_)) => (true, 1, false),
        Strategy::DoubleTmaMma(BlueprintStrategy::Inferred(args)) => (true, 2, args.specialized),
        _ => return None,
    };
    if elem.size() != 2 {
        return None;
    }
    let (xs, ws) = (x.shape().to_vec(), w3.shape().to_vec());
    if xs.len() != 3 || ws.len() != 3 || ws[0] != 1 || xs[2] != ws[1] {
        return None;
    }
    let (batch, m, k, n) = (xs[0], xs[1], xs[2], ws[2]);
    let largest = (batch * m * k.max(n)).max(k * n);
    let address_type = if largest > u32::MAX as usize {
        AddressType::U64
    } else {
        AddressType::U32
    };
    let globals = MatmulGlobalElems {
        lhs: elem,
        rhs: elem,
        out: elem,
    };
    let problem = MatmulProblem::from_parameters(
        m,
        n,
        k,
        [batch].into(),
        [1].into(),
        MatrixLayout::RowMajor,
        MatrixLayout::RowMajor,
        MatrixLayout::RowMajor,
        None,
        None,
        globals.clone(),
        address_type,
    );
    let size = elem.size();
    let sizes = if tma {
        AvailableVectorSizes::from_type_size_tma(client, size)
    } else {
        AvailableVectorSizes::from_type_sizes(client, size, size, size)
    };
    let vector_sizes = sizes
        .filter_lhs_with_tensor(&problem.lhs_strides, &problem.lhs_shape, problem.lhs_layout)
        .filter_rhs_with_tensor(&problem.rhs_strides, &problem.rhs_shape, problem.rhs_layout)
        .filter_out_with_tensor(&problem.out_strides, &problem.out_shape)
        .pick_max()
        .ok()?;
    let kind = TileMatmulKind::Mma;
    let mut dtypes = MatmulElems::from_globals(&globals);
    if kind.can_cast_stage_element() {
        dtypes.adjust_stage_dtypes();
    }
    let plane_dim = match client.properties().hardware.plane_size_max {
        0 => 32,
        p => p,
    };
    let options = PlaneTilingBlueprintOptions {
        partition_k: Some(tiling.partition_k),
        swizzled: tiling.swizzled && kind.should_swizzle(client),
        row_count: Some(tiling.planes),
        multi_row_strategy: MultiRowStrategy::Always(tiling.rows),
        partition_buffering: Some(if tiling.double {
            PartitionBuffering::Double
        } else {
            PartitionBuffering::Single
        }),
        stage_buffering,
        specialized,
        ..Default::default()
    };
    let (blueprint, _) = infer_blueprint_plane(
        kind,
        client,
        &problem,
        plane_dim,
        dtypes,
        &vector_sizes,
        options,
    )
    .ok()?;
    Some(match (tma, stage_buffering) {
        (true, 2) => Strategy::DoubleTmaMma(BlueprintStrategy::Forced(blueprint)),
        (true, _) => Strategy::SimpleTmaMma(BlueprintStrategy::Forced(blueprint)),
        _ => Strategy::SimpleCyclicMma(BlueprintStrategy::Forced(blueprint)),
    })
}

/// Largest inner dimension (`in` of `x · w`) that [`project_small_k`] takes.
pub const SMALL_K_MAX: usize = 64;

/// Rows of the output each thread of [`small_k_kernel`] computes.
const SMALL_K_ROWS: usize = 16;

/// [`SMALL_K_ROWS`], or the environment variable `GENOMAMBA_SMALL_K_ROWS` where it holds a
/// positive number (for tuning runs; results do not depend on it).
fn small_k_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        super::scan_cube::positive_env("GENOMAMBA_SMALL_K_ROWS").unwrap_or(SMALL_K_ROWS)
    })
}

/// Whether projections with a short inner dimension run [`small_k_kernel`]: unless the
/// environment variable `GENOMAMBA_MATMUL_SMALL_K` is `off` (for tuning runs), or a strategy
/// was chosen through [`set_strategy`] or `GENOMAMBA_MATMUL` (so that timing or testing a
/// strategy runs that strategy on every shape).
fn small_k_enabled() -> bool {
    SMALL_K.get().as_deref() != Some("off") && STRATEGY.get().is_none()
}

static SMALL_K: NamedChoice = NamedChoice::new("GENOMAMBA_MATMUL_SMALL_K");

/// `x · w` by [`small_k_kernel`] where the inner dimension is at most [`SMALL_K_MAX`] (dt_proj:
/// `dt_rank` = 16 for d_model 256), the formats are one of f32, f16 and bf16, and `x`'s rows
/// have their elements adjacent (`x` may be a view, such as dt_proj's input, the first
/// `dt_rank` columns of x_proj's output: it is read in place); `None` otherwise.
/// Everything is read and written four or two elements at a time where the shapes, strides and
/// start of `x` allow, else one at a time.
///
/// A tensor-core product of this shape spends most of its time on tiles that are mostly
/// padding along `k`; here each thread keeps `k` rows of a few output columns of `w` in
/// registers and computes those columns for [`SMALL_K_ROWS`] rows.
///
/// With `bias` (f32, `[n]`), the output is `softplus(x · w + bias)`, computed in f32 and
/// rounded once ([`project_softplus_cube`]).
fn project_small_k(
    x: &CubeTensor,
    w3: &CubeTensor,
    bias: Option<&CubeTensor>,
) -> Option<CubeTensor> {
    let (xs, ws) = (x.shape().to_vec(), w3.shape().to_vec());
    let elem = activation_elem(x.dtype).filter(|_| small_k_enabled())?;
    let ([batch, len, k], [1, k2, n]) = (xs.as_slice(), ws.as_slice()) else {
        return None;
    };
    let (batch, len, k, n) = (*batch, *len, *k, *n);
    let (xs0, xs1) = super::block_cube::row_strides(x)?;
    if k != *k2 || k == 0 || k > SMALL_K_MAX || n == 0 || batch * len == 0 || w3.dtype != x.dtype {
        return None;
    }
    // Elements per load and store: the widest of 4, 2 and 1 that divides `k`, `n` and `x`'s
    // strides and start, with `k · vec` weights (registers) at most 64.
    let x_start = x.handle.offset_start.unwrap_or(0) as usize / x.dtype.size();
    let vec = [4usize, 2]
        .into_iter()
        .find(|&v| {
            k * v <= 64
                && [k, n, xs0, xs1, x_start]
                    .iter()
                    .all(|d| d.is_multiple_of(v))
        })
        .unwrap_or(1);
    let w3 = into_contiguous(w3.clone());
    if w3.meta.strides()[..] != [k * n, n, 1] {
        return None;
    }
    let activate = bias.is_some();
    let bias = match bias {
        Some(b) if b.dtype == DType::F32 && b.shape().to_vec() == [n] => into_contiguous(b.clone()),
        Some(_) => return None,
        // Not read without the softplus; one float to bind.
        None => burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            burn::tensor::Shape::new([1]),
            DType::F32,
        ),
    };
    // Row-major without padding (the allocator may pad the rows of a tensor it lays out itself,
    // as `init_matmul_output` lets it: on CUDA it did for 40 and 48 columns).
    let out = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        burn::tensor::Shape::new([batch, len, n]),
        x.dtype,
    );
    let rows = batch * len;
    let col_groups = n / vec;
    let rows_per_thread = small_k_rows();
    let threads = rows.div_ceil(rows_per_thread) * col_groups;
    let x_span = (batch - 1) * xs0 + (len - 1) * xs1 + k;
    let address = AddressType::from_len(x_span.max(rows * n).max(k * n));
    let client = out.client.clone();
    let dim = cubecl::CubeDim::new_1d(128);
    let count = cubecl::calculate_cube_count_elemwise(&client, threads, dim);
    // SAFETY: threads past `threads` return at once; the others read `x` at
    // `b·xs0 + t·xs1 + j` for `b < batch`, `t < len`, `j < k`, within `x_span`, the extent of
    // its view, in whole vectors (`vec` divides `k`, the strides and the view's start); `w`
    // (contiguous `[1, k, n]`) and the fresh output (`[batch, len, n]`) in whole vectors
    // (`vec` divides `n`) below `k · n` and `rows · n`; `bias` (contiguous `[n]`, read only
    // with `activate`) at `g·vec + e < n`.
    unsafe {
        small_k_kernel::launch_unchecked(
            &client,
            count,
            dim,
            address,
            vec,
            x.clone().into_tensor_arg(),
            w3.into_tensor_arg(),
            bias.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            len,
            xs0 / vec,
            xs1 / vec,
            col_groups,
            rows_per_thread,
            k,
            vec,
            activate,
            fast_math(&client),
            elem,
        );
    }
    SMALL_K_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(out)
}

static SMALL_K_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many projections so far ran [`small_k_kernel`] (for tests: which kernel ran).
pub fn small_k_launches() -> usize {
    SMALL_K_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// `out[r, j] = Σ_i x[r, i]·w[i, j]` for an inner dimension `k` known when compiling, every
/// tensor read and written `vec` elements at a time.
///
/// Thread `rb·col_groups + g` computes output columns `[g·vec, (g+1)·vec)` of rows
/// `[rb·rows_per_thread, (rb+1)·rows_per_thread)`, with those columns of `w` in registers (f32)
/// and f32 sums. Row `r = b·len + t` of `x` starts at vector `b·xs0 + t·xs1` (strides in
/// vectors). Adjacent threads write adjacent columns and read the same row of `x` (served by
/// the cache). With `activate`, each output is `softplus(sum + bias[column])` (`bias` f32;
/// not read otherwise), through the approximate functions with `fast`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn small_k_kernel<F: Float, V: Size>(
    x: &Tensor<Vector<F, V>>,
    w: &Tensor<Vector<F, V>>,
    bias: &Tensor<f32>,
    out: &mut Tensor<Vector<F, V>>,
    rows: usize,
    len: usize,
    xs0: usize,
    xs1: usize,
    col_groups: usize,
    rows_per_thread: usize,
    #[comptime] k: usize,
    #[comptime] vec: usize,
    #[comptime] activate: bool,
    #[comptime] fast: bool,
    #[define(F)] _act: ElemType,
) {
    let pos = ABSOLUTE_POS;
    let row_blocks = rows.div_ceil(rows_per_thread);
    if pos >= row_blocks * col_groups {
        terminate!();
    }
    let g = pos % col_groups;
    let rb = pos / col_groups;
    let kv = comptime!(k / vec);
    let mut wv = Array::<f32>::new(k * vec);
    #[unroll]
    for i in 0..k {
        let wq = w[i * col_groups + g];
        #[unroll]
        for e in 0..vec {
            wv[i * vec + e] = f32::cast_from(wq.extract(e));
        }
    }
    let mut bv = Array::<f32>::new(vec);
    #[unroll]
    for e in 0..vec {
        bv[e] = 0.0f32;
        if activate {
            bv[e] = bias[g * vec + e];
        }
    }
    let r0 = rb * rows_per_thread;
    let r1 = if r0 + rows_per_thread < rows {
        r0 + rows_per_thread
    } else {
        rows
    };
    // Row r0's batch index and position, then advanced per row (no division per row).
    let mut bi = r0 / len;
    let mut t = r0 % len;
    let mut acc = Array::<f32>::new(vec);
    for r in r0..r1 {
        let xi = bi * xs0 + t * xs1;
        #[unroll]
        for e in 0..vec {
            acc[e] = 0.0f32;
        }
        #[unroll]
        for q in 0..kv {
            let xq = x[xi + q];
            #[unroll]
            for j in 0..vec {
                let xv = f32::cast_from(xq.extract(j));
                let i = q * vec + j;
                #[unroll]
                for e in 0..vec {
                    acc[e] += xv * wv[i * vec + e];
                }
            }
        }
        let mut o = Vector::<F, V>::empty();
        #[unroll]
        for e in 0..vec {
            let mut v = acc[e];
            if activate {
                v = softplus(v + bv[e], fast);
            }
            o.insert(e, F::cast_from(v));
        }
        out[r * col_groups + g] = o;
        t += 1;
        if t == len {
            t = 0;
            bi += 1;
        }
    }
}

/// x_proj followed by dt_proj with the time step's bias and softplus
/// ([`BlockOpsBackend::project_dbc`](super::block::BlockOpsBackend::project_dbc)): one
/// tensor-core kernel ([`dbc_mma_kernel`]) where it takes the problem, else x_proj through
/// [`project_cube`] and dt_proj through [`project_softplus_cube`] on a view of its output.
pub(crate) fn project_dbc_cube(input: DbcInput<CubeBackend>) -> DbcOutput<CubeBackend> {
    if let Some(out) = project_dbc_mma(&input) {
        return out;
    }
    super::block::project_dbc_composed::<CubeBackend>(input, project_cube, project_softplus_cube)
}

/// Largest `dt_rank + 2·d_state` that [`dbc_mma_kernel`] takes (its accumulators are
/// `(dt_rank + 2·d_state) / 2` floats per thread).
pub const DBC_MMA_MAX_COLUMNS: usize = 128;

/// Whether x_proj and dt_proj may run as [`dbc_mma_kernel`]: unless the environment variable
/// `GENOMAMBA_DBC_MMA` is `off` (for comparisons) or a strategy was chosen (as for
/// [`small_k_enabled`]).
fn dbc_mma_enabled() -> bool {
    DBC_MMA.get().as_deref() != Some("off") && STRATEGY.get().is_none()
}

static DBC_MMA: NamedChoice = NamedChoice::new("GENOMAMBA_DBC_MMA");

/// Whether [`dbc_mma_kernel`] loads the next step's `x` ahead: unless the environment variable
/// `GENOMAMBA_DBC_PREFETCH` is `off` (for comparisons).
fn dbc_prefetch() -> bool {
    DBC_PREFETCH.get().as_deref() != Some("off")
}

static DBC_PREFETCH: NamedChoice = NamedChoice::new("GENOMAMBA_DBC_PREFETCH");

/// Blocks of 32 `Δ` columns [`dbc_mma_kernel`] computes per iteration: two where `d_inner` is
/// a multiple of 64, unless `GENOMAMBA_DBC_UNROLL` says 1 (for comparisons); else one.
pub(crate) fn dbc_unroll(d_inner: usize) -> usize {
    let one = DBC_UNROLL.get().as_deref() == Some("1");
    if d_inner.is_multiple_of(64) && !one {
        2
    } else {
        1
    }
}

static DBC_UNROLL: NamedChoice = NamedChoice::new("GENOMAMBA_DBC_UNROLL");

static DBC_MMA_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times so far x_proj and dt_proj ran as [`dbc_mma_kernel`] (for tests).
pub fn dbc_mma_launches() -> usize {
    DBC_MMA_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The operands of [`dbc_mma_kernel`] (and of the convolution fused with it,
/// [`super::conv_dbc`]) besides `x`.
pub(crate) struct DbcOperands {
    /// bf16 (else f16) activations.
    pub bf16: bool,
    /// dt_proj's outputs (the width of `Δ`).
    pub d_inner: usize,
    pub dt_rank: usize,
    pub d_state: usize,
    /// x_proj's weight transposed, `[dt_rank + 2·d_state, k]`, rows contiguous.
    pub wxt: CubeTensor,
    /// dt_proj's weight transposed, `[d_inner, dt_rank]`, rows contiguous.
    pub wdtt: CubeTensor,
    /// The time step's bias, contiguous.
    pub bias: CubeTensor,
}

/// [`DbcOperands`] where the tensor-core kernel takes the problem: a CUDA device (the kernel
/// is inline PTX), activations of `dtype` f16 or bf16 with weights in the same format, an f32
/// bias, x_proj's inner dimension `k` and dt_proj's outputs `d_inner` multiples of 32,
/// `dt_rank` of 16, `d_state` of 8, `dt_rank + 2·d_state` at most [`DBC_MMA_MAX_COLUMNS`],
/// rows (`batch·len`) not empty; `None` otherwise (and when `GENOMAMBA_DBC_MMA=off` or a
/// strategy was chosen). Call it after checking `x`: it copies the weights transposed.
pub(crate) fn dbc_operands(
    client: &Client,
    dtype: DType,
    k: usize,
    rows: usize,
    w_x: &CubeTensor,
    w_dt: &CubeTensor,
    bias: &CubeTensor,
) -> Option<DbcOperands> {
    let bf16 = match dtype {
        DType::F16 => false,
        DType::BF16 => true,
        _ => return None,
    };
    if !fast_math(client) || !dbc_mma_enabled() {
        return None;
    }
    let (wx, wdt, bs) = (
        w_x.shape().to_vec(),
        w_dt.shape().to_vec(),
        bias.shape().to_vec(),
    );
    let ([k2, n_x], [dt_rank, d_out]) = (wx.as_slice(), wdt.as_slice()) else {
        return None;
    };
    let (n_x, dt_rank, d_inner) = (*n_x, *dt_rank, *d_out);
    let d_state = n_x.saturating_sub(dt_rank) / 2;
    let shapes_fit = *k2 == k
        && k > 0
        && k.is_multiple_of(32)
        && d_inner > 0
        && d_inner.is_multiple_of(32)
        && dt_rank > 0
        && dt_rank.is_multiple_of(16)
        && d_state > 0
        && d_state.is_multiple_of(8)
        && n_x == dt_rank + 2 * d_state
        && n_x <= DBC_MMA_MAX_COLUMNS
        && bs == [d_inner]
        && rows > 0;
    let formats_fit = w_x.dtype == dtype && w_dt.dtype == dtype && bias.dtype == DType::F32;
    if !shapes_fit || !formats_fit {
        return None;
    }
    // The weights transposed (`[out, in]`, rows contiguous), so that each thread reads the two
    // adjacent `k` of a tensor-core operand as one 32-bit word.
    let transposed = |w: &CubeTensor| into_contiguous(swap_first_two::<CubeBackend>(w.clone()));
    let (wxt, wdtt) = (transposed(w_x), transposed(w_dt));
    let bias = into_contiguous(bias.clone());
    if wxt.meta.strides()[..] != [k, 1] || wdtt.meta.strides()[..] != [dt_rank, 1] {
        return None;
    }
    Some(DbcOperands {
        bf16,
        d_inner,
        dt_rank,
        d_state,
        wxt,
        wdtt,
        bias,
    })
}

/// [`dbc_mma_kernel`] on `input` if it takes it ([`dbc_operands`]), `x`'s rows contiguous
/// from a 16-byte boundary; `None` otherwise.
fn project_dbc_mma(input: &DbcInput<CubeBackend>) -> Option<DbcOutput<CubeBackend>> {
    let DbcInput { x, w_x, w_dt, bias } = input;
    let client = x.client.clone();
    let xs = x.shape().to_vec();
    let [batch, len, k] = xs.as_slice() else {
        return None;
    };
    let (batch, len, k) = (*batch, *len, *k);
    let rows = batch * len;
    let x = into_contiguous(x.clone());
    if x.meta.strides()[..] != [len * k, k, 1]
        || !(x.handle.offset_start.unwrap_or(0) as usize).is_multiple_of(16)
    {
        return None;
    }
    let DbcOperands {
        bf16,
        d_inner,
        dt_rank,
        d_state,
        wxt,
        wdtt,
        bias,
    } = dbc_operands(&client, x.dtype, k, rows, w_x, w_dt, bias)?;
    let n_x = dt_rank + 2 * d_state;
    let (delta, b, c) = dbc_outputs(&x, batch, len, d_inner, d_state);
    let (cubes, dim) = dbc_cubes(rows)?;
    let address = AddressType::from_len((rows * k).max(rows * d_inner).max(n_x * k));
    // SAFETY: every warp's tile of 16 rows starts below `rows` (warps past the end return
    // before any access); its reads of `x` (rows clamped to `rows - 1`, columns below `k`),
    // of the transposed weights (rows below `n_x` and `d_inner`, columns below `k` and
    // `dt_rank`) and of `bias` (below `d_inner`) stay inside those contiguous tensors, and its
    // writes (rows below `rows`, columns below `d_inner` and `d_state`) inside the fresh
    // outputs. It reads and writes whole 4-byte words (pairs of 16-bit values at even
    // offsets) and, for `x`, `wxt` and `delta`, whole 16-byte vectors (rows of `k` and
    // `d_inner`, multiples of 32 values, from 16-byte aligned starts).
    unsafe {
        dbc_mma_kernel::launch_unchecked(
            &client,
            cubes,
            dim,
            address,
            4,
            x.into_tensor_arg(),
            wxt.into_tensor_arg(),
            wdtt.into_tensor_arg(),
            bias.into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            b.clone().into_tensor_arg(),
            c.clone().into_tensor_arg(),
            rows,
            k,
            d_inner,
            dt_rank,
            d_state,
            bf16,
            dbc_prefetch(),
            dbc_unroll(d_inner),
        );
    }
    DBC_MMA_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(DbcOutput { delta, b, c })
}

/// Fresh `Δ` (`[batch, len, d_inner]`), `B` and `C` (`[batch, len, d_state]`) on the device of
/// `like`, in its format.
pub(crate) fn dbc_outputs(
    like: &CubeTensor,
    batch: usize,
    len: usize,
    d_inner: usize,
    d_state: usize,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let out = |cols: usize| {
        burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            like.client.clone(),
            like.device.clone(),
            burn::tensor::Shape::new([batch, len, cols]),
            like.dtype,
        )
    };
    (out(d_inner), out(d_state), out(d_state))
}

/// Cubes of [`dbc_mma_kernel`] (and of the fused convolution's kernel) over `rows` rows: four
/// warps per cube, one tile of 16 rows per warp.
pub(crate) fn dbc_cubes(rows: usize) -> Option<(CubeCount, CubeDim)> {
    let warps_per_cube = 4u32;
    let tiles = rows.div_ceil(16);
    let cubes = u32::try_from(tiles.div_ceil(warps_per_cube as usize)).ok()?;
    Some((
        CubeCount::Static(cubes, 1, 1),
        CubeDim::new_2d(32, warps_per_cube),
    ))
}

/// `w` with its first two dimensions swapped (a view).
fn swap_first_two<B: burn::backend::Backend>(
    w: burn::backend::tensor::FloatTensor<B>,
) -> burn::backend::tensor::FloatTensor<B> {
    B::float_swap_dims(w, 0, 1)
}

/// Four floats of a tensor-core accumulator, or its `C` operand.
type Acc = Vector<f32, Const<4>>;

/// `d = a·b + c` for a 16 x 16 tile of `a` (16-bit, row-major: four 32-bit words per thread),
/// a 16 x 8 tile of `b` (column-major: two words) and f32 `c`, `d` (four floats), through
/// `mma.sync.aligned.m16n8k16` (sm_80 and later). Lane `l` holds rows `l/4` and `l/4 + 8`,
/// columns (of `b` and `d`) `2·(l%4)` and `2·(l%4) + 1`, and `k` `2·(l%4) + {0, 1, 8, 9}`.
#[cube]
pub(crate) fn mma_16x8x16(
    a: Vector<u32, Const<4>>,
    b: Vector<u32, Const<2>>,
    c: Acc,
    #[comptime] bf16: bool,
) -> Acc {
    if bf16 {
        mma_bf16(a, b, c)
    } else {
        mma_f16(a, b, c)
    }
}

#[cube]
fn mma_f16(a: Vector<u32, Const<4>>, b: Vector<u32, Const<2>>, c: Acc) -> Acc {
    // Operands as values: a vector built in place is a variable, which inline assembly would
    // receive as its address. (The accumulators times one rather than plus zero: `x + 0` is
    // not `x` for `x = -0`, so where CubeCL does not fold it the compiler keeps four `FADD`s
    // per `mma`; `x · 1` is always `x`.)
    let (av, bv, cv) = (
        a + Vector::<u32, Const<4>>::zeroed(),
        b + Vector::<u32, Const<2>>::zeroed(),
        c * Acc::new(1.0f32),
    );
    let d: Acc;
    gpu_asm!(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {}, {}, {}, {};",
        out(_) d,
        in(_) av,
        in(_) bv,
        in(_) cv,
        options(nomem)
    );
    d
}

#[cube]
fn mma_bf16(a: Vector<u32, Const<4>>, b: Vector<u32, Const<2>>, c: Acc) -> Acc {
    // Operands as values: a vector built in place is a variable, which inline assembly would
    // receive as its address. (The accumulators times one rather than plus zero: `x + 0` is
    // not `x` for `x = -0`, so where CubeCL does not fold it the compiler keeps four `FADD`s
    // per `mma`; `x · 1` is always `x`.)
    let (av, bv, cv) = (
        a + Vector::<u32, Const<4>>::zeroed(),
        b + Vector::<u32, Const<2>>::zeroed(),
        c * Acc::new(1.0f32),
    );
    let d: Acc;
    gpu_asm!(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {}, {}, {}, {};",
        out(_) d,
        in(_) av,
        in(_) bv,
        in(_) cv,
        options(nomem)
    );
    d
}

/// `lo` and `hi` rounded to f16 (or bf16) and packed into one word, `lo` in the low half (the
/// lower address).
#[cube]
pub(crate) fn pack2(lo: f32, hi: f32, #[comptime] bf16: bool) -> u32 {
    if bf16 {
        pack_bf16(lo, hi)
    } else {
        pack_f16(lo, hi)
    }
}

/// The low half (the lower address) of a word of two f16 (or bf16) values, as f32 (exact).
#[cube]
#[allow(clippy::identity_op)]
pub(crate) fn unpack_lo(word: u32, #[comptime] bf16: bool) -> f32 {
    if bf16 {
        f32::reinterpret(word << 16u32)
    } else {
        // The operand as a value: a variable would reach the assembly as its address.
        let wv = word + 0u32;
        let r: f32;
        gpu_asm!(
            "{{ .reg .b16 ulo, uhi; mov.b32 {{ulo, uhi}}, {}; cvt.f32.f16 {}, ulo; }}",
            in(_) wv,
            out(_) r,
            options(pure, nomem)
        );
        r
    }
}

/// The high half of a word of two f16 (or bf16) values, as f32 (exact).
#[cube]
#[allow(clippy::identity_op)]
pub(crate) fn unpack_hi(word: u32, #[comptime] bf16: bool) -> f32 {
    if bf16 {
        f32::reinterpret(word & 0xFFFF_0000u32)
    } else {
        // The operand as a value: a variable would reach the assembly as its address.
        let wv = word + 0u32;
        let r: f32;
        gpu_asm!(
            "{{ .reg .b16 ulo, uhi; mov.b32 {{ulo, uhi}}, {}; cvt.f32.f16 {}, uhi; }}",
            in(_) wv,
            out(_) r,
            options(pure, nomem)
        );
        r
    }
}

#[cube]
fn pack_f16(lo: f32, hi: f32) -> u32 {
    let r: u32;
    gpu_asm!("cvt.rn.f16x2.f32 {}, {}, {};", out(_) r, in(_) hi, in(_) lo, options(pure, nomem));
    r
}

#[cube]
fn pack_bf16(lo: f32, hi: f32) -> u32 {
    let r: u32;
    gpu_asm!("cvt.rn.bf16x2.f32 {}, {}, {};", out(_) r, in(_) hi, in(_) lo, options(pure, nomem));
    r
}

/// x_proj and dt_proj in one pass on tensor cores, 16 rows per warp.
///
/// `x` (`[rows, k]`), the transposed x_proj weight `wxt` (`[dt_rank + 2·d_state, k]`) and the
/// output `delta` (`[rows, d_inner]`) are read and written 16 bytes (`V` = 4 words of two
/// 16-bit values) at a time, the transposed dt_proj weight `wdtt` (`[d_inner, dt_rank]`) and
/// the outputs `b`, `c` (`[rows, d_state]`) one word at a time. A warp (`UNIT_POS_X` its lane,
/// `UNIT_POS_Y` its place in the cube) takes rows `[16·tile, 16·tile + 16)` and:
/// 1. accumulates `x · w_x` for them in f32 (`n_x / 8` tiles of 16 x 8), 32 of `k` per step:
///    each lane loads 16 bytes of each of its two rows and of one weight row, and the tensor
///    core's `k` order is permuted to match (lane `q` of a quad holds `k` `8q..8q+8` of the 32,
///    the first half for one `mma`, the second for the next; `x` and `w_x` are permuted alike,
///    so the sum is the same);
/// 2. writes columns `dt_rank..` as `B` and `C`, rounded to the activations' format;
/// 3. rounds the first `dt_rank` columns (`dt`) to that format too, as x_proj's output would
///    be, and uses them, still in registers (two accumulator tiles are one operand tile), as
///    the `a` operand of dt_proj; for each 32 columns of `d_inner`, four `mma` whose eight
///    output columns are chosen (through the rows of `wdtt` each lane loads) so that lane `q`
///    of a quad ends with columns `8q..8q+8` of its rows: `softplus(dt · w_dt + bias)` in
///    f32, rounded once, written 16 bytes at a time as `Δ`.
///
/// The `x` rows a warp reads past `rows` are clamped to the last row; those outputs are not
/// written. The whole warp runs every `mma` (it is a warp-wide instruction).
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn dbc_mma_kernel<V: Size>(
    x: &Tensor<Vector<u32, V>>,
    wxt: &Tensor<Vector<u32, V>>,
    wdtt: &Tensor<u32>,
    bias: &Tensor<f32>,
    delta: &mut Tensor<Vector<u32, V>>,
    b: &mut Tensor<u32>,
    c: &mut Tensor<u32>,
    rows: usize,
    k: usize,
    d_inner: usize,
    #[comptime] dt_rank: usize,
    #[comptime] d_state: usize,
    #[comptime] bf16: bool,
    #[comptime] prefetch: bool,
    #[comptime] unroll: usize,
) {
    let lane = UNIT_POS_X as usize;
    let group = lane / 4;
    let quad = lane % 4;
    let tile = CUBE_POS_X as usize * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
    let r0 = tile * 16;
    if r0 >= rows {
        terminate!();
    }
    let n_tiles = comptime!((dt_rank + 2 * d_state) / 8);
    let last = rows - 1;
    let row_lo = r0 + group;
    let row_hi = row_lo + 8;
    let xlo = if row_lo < last { row_lo } else { last };
    let xhi = if row_hi < last { row_hi } else { last };
    // Row length in 16-byte vectors.
    let kv = k / 8;

    // 1. x · w_x, 32 of `k` per step.
    let mut acc = Array::<f32>::new(comptime!(n_tiles * 4));
    #[unroll]
    for i in 0..comptime!(n_tiles * 4) {
        acc[i] = 0.0f32;
    }
    // `s` is this lane's vector of the step's four (`kv` is a multiple of 4). With `prefetch`,
    // the next step's `x` is loaded before this step's products (the last step loads its own
    // again).
    let mut s = quad;
    let mut xa_next = x[xlo * kv + s];
    let mut xb_next = x[xhi * kv + s];
    while s < kv {
        let mut xa = xa_next;
        let mut xb = xb_next;
        if prefetch {
            let nxt = if s + 4 < kv { s + 4 } else { s };
            xa_next = x[xlo * kv + nxt];
            xb_next = x[xhi * kv + nxt];
        } else {
            xa = x[xlo * kv + s];
            xb = x[xhi * kv + s];
        }
        x_proj_step(xa, xb, wxt, &mut acc, s, kv, group, n_tiles, bf16);
        s += 4;
    }
    dbc_finish(
        &acc, wdtt, bias, delta, b, c, rows, d_inner, row_lo, row_hi, dt_rank, d_state, bf16,
        unroll,
    );
}

/// One step of x_proj in [`dbc_mma_kernel`]: the lane's 16-byte vectors `xa` (row `r0 + g`)
/// and `xb` (row `r0 + g + 8`) of `x`, vector `s` of the row (`kv` per row), times the
/// transposed weight's vector `s` of rows `8j + g` (tile `j`), accumulated in `acc` (four
/// floats per tile of 16 x 8; `n_tiles` tiles).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn x_proj_step<V: Size>(
    xa: Vector<u32, V>,
    xb: Vector<u32, V>,
    wxt: &Tensor<Vector<u32, V>>,
    acc: &mut Array<f32>,
    s: usize,
    kv: usize,
    group: usize,
    #[comptime] n_tiles: usize,
    #[comptime] bf16: bool,
) {
    #[unroll]
    for half in 0..2usize {
        let mut a = Vector::<u32, Const<4>>::empty();
        a.insert(0usize, xa.extract(2 * half));
        a.insert(1usize, xb.extract(2 * half));
        a.insert(2usize, xa.extract(2 * half + 1));
        a.insert(3usize, xb.extract(2 * half + 1));
        #[unroll]
        for j in 0..n_tiles {
            let wv = wxt[(j * 8 + group) * kv + s];
            let mut bw = Vector::<u32, Const<2>>::empty();
            bw.insert(0usize, wv.extract(2 * half));
            bw.insert(1usize, wv.extract(2 * half + 1));
            let mut cj = Acc::empty();
            #[unroll]
            for e in 0..4usize {
                cj.insert(e, acc[j * 4 + e]);
            }
            let dj = mma_16x8x16(a, bw, cj, bf16);
            #[unroll]
            for e in 0..4usize {
                acc[j * 4 + e] = dj.extract(e);
            }
        }
    }
}

/// The end of [`dbc_mma_kernel`] for a warp's rows `row_lo` (lane's `r0 + g`) and `row_hi`
/// (`r0 + g + 8`) from x_proj's accumulators `acc`: `B` and `C` written, and dt_proj with its
/// softplus epilogue written as `Δ` (steps 2 and 3 there).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dbc_finish<V: Size>(
    acc: &Array<f32>,
    wdtt: &Tensor<u32>,
    bias: &Tensor<f32>,
    delta: &mut Tensor<Vector<u32, V>>,
    b: &mut Tensor<u32>,
    c: &mut Tensor<u32>,
    rows: usize,
    d_inner: usize,
    row_lo: usize,
    row_hi: usize,
    #[comptime] dt_rank: usize,
    #[comptime] d_state: usize,
    #[comptime] bf16: bool,
    #[comptime] unroll: usize,
) {
    let lane = UNIT_POS_X as usize;
    let group = lane / 4;
    let quad = lane % 4;
    let n_tiles = comptime!((dt_rank + 2 * d_state) / 8);
    let dt_tiles = comptime!(dt_rank / 8);
    let d_tiles = comptime!(d_state / 8);
    // 2. B and C.
    let sw = comptime!(d_state / 2);
    let lo_ok = row_lo < rows;
    let hi_ok = row_hi < rows;
    #[unroll]
    for j in dt_tiles..n_tiles {
        let lo = pack2(acc[j * 4], acc[j * 4 + 1], bf16);
        let hi = pack2(acc[j * 4 + 2], acc[j * 4 + 3], bf16);
        if j < dt_tiles + d_tiles {
            let col = (j - dt_tiles) * 4 + quad;
            if lo_ok {
                b[row_lo * sw + col] = lo;
            }
            if hi_ok {
                b[row_hi * sw + col] = hi;
            }
        } else {
            let col = (j - dt_tiles - d_tiles) * 4 + quad;
            if lo_ok {
                c[row_lo * sw + col] = lo;
            }
            if hi_ok {
                c[row_hi * sw + col] = hi;
            }
        }
    }

    // 3. dt_proj from the rounded `dt`, as `a` operands.
    let dt_steps = comptime!(dt_rank / 16);
    let mut dta = Array::<u32>::new(comptime!(dt_steps * 4));
    #[unroll]
    for q in 0..dt_steps {
        let j = 2 * q;
        dta[q * 4] = pack2(acc[j * 4], acc[j * 4 + 1], bf16);
        dta[q * 4 + 1] = pack2(acc[j * 4 + 2], acc[j * 4 + 3], bf16);
        dta[q * 4 + 2] = pack2(acc[j * 4 + 4], acc[j * 4 + 5], bf16);
        dta[q * 4 + 3] = pack2(acc[j * 4 + 6], acc[j * 4 + 7], bf16);
    }
    let rw = comptime!(dt_rank / 2);
    // Row length of `delta` in 16-byte vectors.
    let dv = d_inner / 8;
    // `unroll` blocks of 32 columns per iteration, so that their loads and products overlap.
    let mut blk = 0;
    while blk < d_inner {
        #[unroll]
        for u in 0..unroll {
            let bu = blk + 32 * u;
            let mut out_lo = Vector::<u32, V>::empty();
            let mut out_hi = Vector::<u32, V>::empty();
            #[unroll]
            for t in 0..4usize {
                // This `mma`'s output column `2q + w` is column `bu + 8q + 2t + w`, so its `b`
                // column `g` is `w_dt`'s column `bu + 8·(g/2) + 2t + g%2`.
                let n = bu + 8 * (group / 2) + 2 * t + group % 2;
                let mut cd = Acc::empty();
                #[unroll]
                for e in 0..4usize {
                    cd.insert(e, 0.0f32);
                }
                #[unroll]
                for q in 0..dt_steps {
                    let mut a = Vector::<u32, Const<4>>::empty();
                    #[unroll]
                    for e in 0..4usize {
                        a.insert(e, dta[q * 4 + e]);
                    }
                    let mut bw = Vector::<u32, Const<2>>::empty();
                    bw.insert(0usize, wdtt[n * rw + q * 8 + quad]);
                    bw.insert(1usize, wdtt[n * rw + q * 8 + quad + 4]);
                    cd = mma_16x8x16(a, bw, cd, bf16);
                }
                let col = bu + 8 * quad + 2 * t;
                let b0 = bias[col];
                let b1 = bias[col + 1];
                out_lo.insert(
                    t,
                    pack2(
                        softplus(cd.extract(0usize) + b0, true),
                        softplus(cd.extract(1usize) + b1, true),
                        bf16,
                    ),
                );
                out_hi.insert(
                    t,
                    pack2(
                        softplus(cd.extract(2usize) + b0, true),
                        softplus(cd.extract(3usize) + b1, true),
                        bf16,
                    ),
                );
            }
            let word = bu / 8 + quad;
            if lo_ok {
                delta[row_lo * dv + word] = out_lo;
            }
            if hi_ok {
                delta[row_hi * dv + word] = out_hi;
            }
        }
        blk += comptime!(32 * unroll);
    }
}

/// The CUDA C++ of [`dbc_mma_kernel`] for an sm_90 device (an H200), without a GPU, with
/// `dt_rank` and `d_state` as the d_model 256 model has them (16 each) and 16-bit activations
/// (`bf16` or f16): for reading the generated code and its machine code (`bench/sass.sh`).
#[cfg(feature = "cuda")]
pub fn dbc_cuda_source(bf16: bool) -> Result<String, String> {
    use super::scan_cube::Sm90;
    use cubecl::CubeKernel;
    let mut sm90 = Sm90::new();
    let [x, wxt, wdtt, bias, delta, b, c] = std::array::from_fn(|_| Sm90::arg(8));
    let kernel = dbc_mma_kernel::create_dummy_kernel(
        sm90.props.clone(),
        sm90.target.clone(),
        CubeCount::new_1d(1),
        CubeDim::new_2d(32, 4),
        AddressType::U64,
        4,
        x,
        wxt,
        wdtt,
        bias,
        delta,
        b,
        c,
        1,   // rows
        512, // k
        512, // d_inner
        16,  // dt_rank
        16,  // d_state
        bf16,
        dbc_prefetch(),
        dbc_unroll(512),
    );
    sm90.compile("dbc_mma", kernel.define())
        .map(|(_, source)| source)
}

/// Checks that `source` (a kernel's generated CUDA C++) has the `mma.sync` of the 16-bit
/// format (`bf16` or f16), each with six 32-bit and four f32 register operands: a variable
/// would go in as its 64-bit address (`"l"`), which `ptxas` refuses. For reading the generated
/// code (`bench/nvrtc_sass.sh`), `GENOMAMBA_KERNEL_SOURCE_DIR=DIR` first writes it to
/// `DIR/name.cu`.
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn assert_tensor_core_mma(name: &str, source: &str, bf16: bool) {
    if let Ok(dir) = std::env::var("GENOMAMBA_KERNEL_SOURCE_DIR") {
        std::fs::write(format!("{dir}/{name}.cu"), source).unwrap();
    }
    assert!(source.contains("__global__"), "no kernel");
    let format = if bf16 { ".bf16.bf16." } else { ".f16.f16." };
    let mma = format!("mma.sync.aligned.m16n8k16.row.col.f32{format}f32");
    assert!(source.contains(&mma), "bf16 {bf16}: no {mma}");
    for line in source.lines().filter(|l| l.contains("mma.sync")) {
        assert!(
            !line.contains("\"l\"("),
            "bf16 {bf16}: an address operand: {line}"
        );
        assert_eq!(line.matches("\"r\"(").count(), 6, "bf16 {bf16}: {line}");
        assert_eq!(line.matches("\"f\"(").count(), 4, "bf16 {bf16}: {line}");
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    #[test]
    fn dbc_kernel_compiles_to_tensor_core_instructions() {
        for bf16 in [false, true] {
            let source = super::dbc_cuda_source(bf16).unwrap();
            super::assert_tensor_core_mma(&format!("dbc_bf16_{bf16}"), &source, bf16);
            let pack = if bf16 {
                "cvt.rn.bf16x2.f32"
            } else {
                "cvt.rn.f16x2.f32"
            };
            assert!(source.contains(pack), "bf16 {bf16}: no {pack}");
        }
    }
}
