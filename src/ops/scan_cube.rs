//! The selective scan as CubeCL kernels, for the CubeCL backend (CUDA devices).
//!
//! # Design
//!
//! The recurrence (see [`scan`](super::scan)) is, for each batch row `b`, channel `d` and state
//! index `n`, `h[t] = exp(Δ[t]·A)·h[t-1] + Δ[t]·B[t]·u[t]`, a first-order linear recurrence in
//! time. A chunk of time steps `[t0, t1)` maps an incoming state `h_in` to
//!
//! ```text
//! h[t1-1] = P·h_in + S,    P = exp(A · Σ_{t0≤t<t1} Δ[t]),    S = the chunk's state scanned from 0
//! ```
//!
//! (the product of `exp(Δ[t]·A)` over the chunk collapses to one exponential because `A` is
//! constant in time). So time is split into `chunks` chunks of `chunk_len` steps and the scan
//! runs in three launches:
//!
//! 1. [`scan_chunk_state_kernel`], one thread per `(b, chunk, d)`: scans its chunk from a zero
//!    state, all `d_state` states in registers, and writes `S` (`[batch, chunks, d_state,
//!    d_inner]`) and `ΣΔ` (`[batch, chunks, d_inner]`).
//! 2. [`scan_chunk_combine_kernel`], one thread per `(b, n, d)`: walks the chunks in order,
//!    `h_in[k+1] = P_k·h_in[k] + S_k` from `h_in[0] = h0`, overwrites `S_k` with `h_in[k]`, and
//!    writes the last state. Sequential over chunks only; but with batch 1 and a small
//!    `d_inner` that is few threads each waiting on a long chain of loads (81 us per layer at
//!    chr20's shape, 1,024 chunks, on an H200), so from [`GROUP_MIN_CHUNKS`] chunks on the
//!    walk runs in three launches over about `√chunks` groups of chunks ([`scan_group_kernel`]:
//!    each group's state from zero; the single walk over the groups; each chunk's incoming
//!    state within its group).
//! 3. [`scan_chunk_output_kernel`], one thread per `(b, chunk, d)`: rescans its chunk from its
//!    true incoming state and writes `y[t] = (Σ_n C[t,n]·h[t,n] + D·u[t]) · SiLU(z[t])`.
//!
//! With a single chunk (short sequences, or enough batch rows × channels to fill the GPU on their
//! own) only pass 3 runs, reading `h0` and writing the last state itself. With many batch rows
//! the walk kernel runs instead ([`ScanPath`]).
//!
//! Every thread owns one channel and all `d_state` states of it (`d_state` is a compile-time
//! constant of the kernel, so the state lives in registers and the reduction over `n` for `y`
//! needs no communication between threads). Adjacent threads handle adjacent channels, so the
//! time-major reads of `u`, `delta`, `z` and the writes of `y` are coalesced. In passes 1 and 3
//! all threads of a cube share one chunk (cubes run over `(b, chunk)` along x and over groups
//! of channels along y, [`chunk_and_channel`]), so the rows of `B` and `C` are the same for all
//! of them: the cube stages up to 64 rows at a time in shared memory, widened to f32 once
//! ([`stage_rows_f32`]), and every thread reads them from there four floats at a time where
//! `d_state` allows. Softplus, the `D` skip and the SiLU gate are fused.
//! State and arithmetic are f32 (whatever the activations' format); indices use the 64-bit
//! address type when a buffer has more than `u32::MAX` elements.
//!
//! # Cost, as measured on an H200 (batch 1, `d_inner` 1024, `d_state` 16)
//!
//! Pass 1 reads `u`, `delta`, `B`; pass 3 reads `u`, `delta`, `z`, `B`, `C` and writes `y`:
//! about 1.5 times the byte floor (`u`, `delta`, `z`, `B`, `C` read once, `y` written once). The
//! kernels are bound by instruction issue, not memory: `2·d_state` decays `exp(Δ·A)` per
//! `(t, d)`. Through CubeCL's LLVM backend each was libdevice's accurate `expf` (about ten
//! instructions) and L = 2^20 took 25-27 ms. On CUDA the decay is now one `ex2.approx` with `A`
//! pre-scaled by log2 e (inline PTX, which needs CubeCL's C++ backend, the one the `cuda`
//! feature selects), and softplus and the SiLU gate use `ex2`/`lg2`/`rcp.approx` too: L = 2^20
//! took 21.9 ms with the decay alone changed (792 GB/s against the byte floor, 19% of the
//! H200's 4.2 TB/s); with pass 3's offsets advanced per step instead of recomputed from `t`,
//! 17.8 ms (975 GB/s, 23%); with `B` and `C` staged in shared memory (below), 16.5 ms, and
//! with both passes then loading ahead, 13.9 ms (1,250 GB/s, 30%; PyTorch's per-step loop, the
//! peer, takes 3.6 s at L = 65,536 where this takes 1.1 ms: `bench/gpu_scan_vs_torch.sh`);
//! loading two steps ahead, 13.4 ms (1,290 GB/s, 31%). `ncu` of pass 3 before the offset
//! change: about 15 warp instructions
//! per `(t, d, n)` per lane, 68% of issue slots busy, 45% occupancy, so the remaining cost is
//! the per-state arithmetic (decay, two format conversions for half activations, three
//! multiply-adds) and the per-element work spread over the state indices. The CPU runtime
//! (CI) compiles the accurate functions (`fast` is false there).
//!
//! Machine code (`bench/sass.sh`: the C++ these kernels generate for sm_90, compiled by CUDA
//! 11.8's `nvcc`, no GPU needed; BENCHMARKS.md): per time step and thread (`d_state` 16), pass 3
//! issues 136 instructions in f32 and 140 in f16 and bf16 (157 and 160 loading ahead, as it
//! runs), 20 of them `MUFU` (16 decays, two for softplus, two for the gate); pass 1 issues 111
//! in f32 (121 loading ahead, as it runs in f32), 113 in the half formats, with 18 `MUFU`.
//! Before `B` and `C` were
//! staged (each thread loading and converting its rows) pass 3 issued 146/184/198 and pass 1
//! 112/130/138: in the half formats two conversions per state and step went away. An H200 SM
//! completes 16 `MUFU` results per clock (a warp's instruction holds its sub-partition's unit 8
//! clocks), so the `2N + 6` exponentials per `(t, d)` of passes 1 and 3 alone need 9.8 ms at
//! L = 2^20, d_inner 1024 (132 SMs at 1.98 GHz): more than the 8.2 ms that 50% of HBM
//! bandwidth allows. On the H200, pass 3 holds 64 registers and pass 1 56 (`ncu`), which
//! caps residency at 32 and 36 warps per SM. The passes do not run at that bound: at chr20's
//! layer shape in f16 (`ncu`, fourteenth session, one step ahead) pass 1 kept 51% and pass 3 59%
//! of issue slots busy, and about half of their warp cycles waited on global loads (`u`,
//! `delta`, `z`); loading two steps ahead ([`scan_depth`]) took 2-4% off. Computing two of
//! pass 1's decays on the FMA units instead (a polynomial `2^x`, commit 0421fcc) moved the
//! `MUFU` count below the issue count but timed no faster, and reverted; tried again in the
//! twentieth session with pass 1 at 93 instructions per step (16 `MUFU`), 1-4 of the decays
//! there took 680-733 us against 684 us at chr20's layer shape (BENCHMARKS.md). Ways forward: hide the
//! load latency (more steps in flight, or fewer, longer chunks per thread); fewer exponentials.
//! A single-launch kernel with a decoupled look-back between segments, computing each decay
//! once (commit 2e202cc, reverted), was correct but 2.7x slower: its `items·d_state` products
//! in registers (128-140 registers) left one cube per SM, and the look-back advanced one
//! segment per round trip through global memory.
//! A single chunk needs `N` per `(t, d)` instead of `2N`. From [`WALK_MIN_LANES`] threads on
//! (batch 16 at `d_inner` 512) the walk kernel of [`scan_walk`](super::scan_walk) takes over,
//! which spreads a channel's states over four threads and stages inputs through shared memory
//! (1.05x the chunked passes' speed at batch 16 in f16, 1.4x in f32 and at batch 32-64; slower
//! below 16 rows, where it is bound by the latency of its steps); and from
//! [`WHOLE_ROWS_THREADS`] rows × channels on pass 3 alone runs each row in one chunk, one
//! thread per `(row, channel)`, faster than the walk there (H200, 2^30 elements in f32 at
//! `d_inner` 1024: batch 256 8.02 ms against 8.75, batch 1024 7.47 against 8.65, 51-55% of
//! HBM bandwidth against the byte floor; in f16 at `d_inner` 512, batch 256 4.02 against 4.62;
//! but at 2^16 rows × channels, batch 64 in f32, 11.3 against the walk's 9.05; BENCHMARKS.md,
//! thirty-eighth session). For batch 1, a block-wide scan over time per state index (as
//! the official Mamba kernel does) would keep each chunk's `exp(Δ·A)` in registers instead of
//! recomputing it, but with time-major inputs a block per channel reads 4 bytes per 32-byte
//! sector, so it needs the inputs channel-major (or staged through shared memory) to pay off.
//!
//! Every kernel computes `Δ = softplus(delta + bias)` per element, or, for
//! `selective_scan_activated` ([`scan_cube_with`] with `activate` false), `Δ = delta + bias`:
//! the model then has dt_proj's kernel apply the softplus once per element instead of once in
//! each pass (1.02-1.03x end to end on the H200, BENCHMARKS.md). Likewise pass 3 and the walk
//! gate `y` by `SiLU(z)`, or, for `selective_scan_gated` (`silu_gate` false), by `z` as given:
//! the model then has in_proj's kernel apply the SiLU in its epilogue
//! ([`project_silu_from`](super::block::project_silu_from)). That takes pass 3 from 18 `MUFU`
//! per step to 16 (132.5 instructions to 124; at chr20's layer shape in f16 819 us to 762,
//! in_proj 341 us to 386: about -1% of the block's time; BENCHMARKS.md, twenty-third session).
//!
//! The activations (`u`, `Δ`, `z`, `B`, `C` and the output `y`) may be f32, f16 or bf16 (all
//! in one format, except that `B` and `C` may also be f32 with half activations); they are
//! widened to f32 as they are read, and `y` is rounded to their format as it is written. `A`,
//! `D`, the Δ bias and the state are f32. Other formats, `d_state` above [`MAX_D_STATE`], and
//! empty shapes go to the reference. `z`, `B` and `C` are read through their row strides when
//! their last dimension is contiguous, so views of a projection's output need no copy (under
//! Burn's fusion, though, a slice that does not start and end on the allocator's alignment
//! arrives already copied, as `x_proj`'s `B` and `C` columns do).
//!
//! `B` and `C` may arrive in f32 with half activations (the model hands them over in the
//! activations' format); staging widens them either way. Before staging, f32 rows read by every
//! thread had cost pass 3 eight more registers (72) and 25% more time on the H200, and pass 1
//! read a widened copy of `B` made by a cast kernel (BENCHMARKS.md, twelfth session).

use burn::backend::{DType, TensorMetadata};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use super::block_cube::row_strides;
use super::scan::{ScanInput, ScanOutput};
use super::scan_reference::scan_reference_with;
use super::scan_walk::{MAX_STATES_PER_LANE, scan_walk_kernel};

/// Largest `d_state` the kernels take (each thread keeps `2·d_state` values in registers).
pub const MAX_D_STATE: usize = 256;

/// Threads per cube.
const CUBE_THREADS: u32 = 128;

/// Threads the chunking aims for: a few times what an H100/H200 keeps resident, so that a
/// batch-1 scan over a long sequence fills the GPU.
const TARGET_THREADS: usize = 1 << 19;

/// [`TARGET_THREADS`], or the environment variable `GENOMAMBA_SCAN_THREADS` where it holds a
/// positive number (for tuning runs; results do not depend on it). Measured on an H200
/// (16 Mb of chr20, d_model 256, 16 layers, chunks of 65,536): 2^17 to 2^20 gave the same
/// time to within 3%.
fn target_threads() -> usize {
    static TARGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *TARGET.get_or_init(|| positive_env("GENOMAMBA_SCAN_THREADS").unwrap_or(TARGET_THREADS))
}

/// The environment variable `var` as a positive number, if it holds one (tuning knobs).
pub(crate) fn positive_env(var: &str) -> Option<usize> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &usize| v > 0)
}

/// Which passes load later time steps' `u`, `delta` (and `z`) before the current step's
/// arithmetic, `(pass 1, pass 3)`: both, for every format (how far ahead: [`scan_depth`]).
/// Measured on an H200 (scan alone, `examples/scan_bench.rs`, and whole runs; BENCHMARKS.md):
/// with `B` and `C` staged in shared memory, loading one step ahead in both passes was fastest
/// in f32 (L = 2^20, d_inner 1024: 13.8-13.9 ms against 16.5 ms without); with half
/// activations pass 3 gained (f16 at L = 2^20: 13.6 against 15.9 ms without) and pass 1 made
/// no difference one step ahead; two steps ahead in both passes is as fast or faster in every
/// format (fourteenth session: the scan alone 2-4% faster; whole chr20 in f16 15.27-15.29 s
/// against 15.60-15.64 s on one machine, equal within 1% on another; `ncu` had half of pass
/// 1's warp cycles waiting on those loads).
/// The environment variable `GENOMAMBA_SCAN_PREFETCH` (`none`, `pass1`, `pass3`, `both`)
/// overrides the choice, for tuning runs; results do not depend on it.
fn scan_prefetch() -> (bool, bool) {
    static PREFETCH_CHOICE: std::sync::OnceLock<Option<(bool, bool)>> = std::sync::OnceLock::new();
    let forced =
        PREFETCH_CHOICE.get_or_init(
            || match std::env::var("GENOMAMBA_SCAN_PREFETCH").as_deref() {
                Ok("none") => Some((false, false)),
                Ok("pass1") => Some((true, false)),
                Ok("pass3") => Some((false, true)),
                Ok("both") => Some((true, true)),
                _ => None,
            },
        );
    forced.unwrap_or((true, true))
}

/// How many steps ahead the passes that load ahead ([`scan_prefetch`]) load, `(pass 1, pass
/// 3)`: four in pass 1 and two in pass 3 by default. With the values in register slots
/// ([`prefetch_slots`]), on the H200 (f16, d_inner 512, 262,144 positions; call 98,
/// BENCHMARKS.md) one, two, three and four steps ahead took pass 1 656 / 646 / 637 / 629 us
/// and pass 3 901 / 816 / 826 / 821 us (72 registers past two steps against 64). Earlier,
/// with the values rotated through variables (call 48), two steps ahead had already beaten
/// one: L = 2^20 f32 13.40-13.47 ms against 13.88-14.03 ms, 16.7 Mb of chr20 in f16 4.59-4.60 s
/// against 4.66-4.68 s. The environment variable `GENOMAMBA_SCAN_DEPTH` (1 to 4) sets both,
/// or `P1,P3` each, for tuning runs; results do not depend on it. With pass 1's loads ahead
/// clamped (twenty-eighth session, call 130), pass 1 fits 64 registers two and three steps
/// ahead (8 cubes per SM, against 7 at four with 72), yet took 649 / 643 us against 620 us at
/// four.
fn scan_depth() -> (usize, usize) {
    static DEPTH: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *DEPTH.get_or_init(|| {
        parse_depths(&std::env::var("GENOMAMBA_SCAN_DEPTH").unwrap_or_default()).unwrap_or((4, 2))
    })
}

/// `GENOMAMBA_SCAN_DEPTH`'s value: one depth for both passes, or `P1,P3`; each 1 to
/// [`MAX_SCAN_DEPTH`].
fn parse_depths(value: &str) -> Option<(usize, usize)> {
    let depth = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|d| (1..=MAX_SCAN_DEPTH).contains(d))
    };
    match value.split_once(',') {
        Some((p1, p3)) => Some((depth(p1)?, depth(p3)?)),
        None => depth(value).map(|d| (d, d)),
    }
}

/// Most steps ahead [`scan_depth`] takes.
const MAX_SCAN_DEPTH: usize = 4;

/// Which kernels the GPU scan runs (for tests and tuning runs; results agree to rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanPath {
    /// The walk kernel (`scan_walk.rs`) where the batch rows × channels fill the GPU on their own
    /// (at least [`WALK_MIN_LANES`] threads), but pass 3 alone over whole rows from
    /// [`WHOLE_ROWS_THREADS`] rows × channels, else the chunked passes.
    Auto,
    /// Always the chunked passes.
    Chunked,
    /// The walk with this many lanes (threads) per channel wherever it applies: a power of two
    /// that divides `d_state` and leaves at most [`MAX_STATES_PER_LANE`] states per lane (0:
    /// its usual lanes, up to 4).
    Walk(usize),
}

/// [`ScanPath`] encoded for an atomic: 0 unset (environment, else auto), 1 auto, 2 chunked,
/// `3 + lanes` the walk.
static SCAN_PATH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes later scans on CubeCL devices take `path`; process-wide (tests and tuning runs).
pub fn set_scan_path(path: ScanPath) {
    let code = match path {
        ScanPath::Auto => 1,
        ScanPath::Chunked => 2,
        ScanPath::Walk(lanes) => 3 + lanes,
    };
    SCAN_PATH.store(code, std::sync::atomic::Ordering::Relaxed);
}

/// The path set by [`set_scan_path`], else by the environment variable `GENOMAMBA_SCAN_WALK`
/// (`off`: chunked; `on`: the walk with its usual lanes; a number: the walk with that many
/// lanes per channel), else [`ScanPath::Auto`].
fn scan_path() -> ScanPath {
    static FROM_ENV: std::sync::OnceLock<ScanPath> = std::sync::OnceLock::new();
    match SCAN_PATH.load(std::sync::atomic::Ordering::Relaxed) {
        1 => ScanPath::Auto,
        2 => ScanPath::Chunked,
        0 => *FROM_ENV.get_or_init(|| match std::env::var("GENOMAMBA_SCAN_WALK").as_deref() {
            Ok("off") => ScanPath::Chunked,
            Ok("on") => ScanPath::Walk(0),
            Ok(v) => v.parse().map_or(ScanPath::Auto, ScanPath::Walk),
            Err(_) => ScanPath::Auto,
        }),
        code => ScanPath::Walk(code - 3),
    }
}

/// Fewest threads (batch rows × channels × lanes) for which [`ScanPath::Auto`] walks: about
/// two warps per sub-partition of an H200's 132 SMs.
pub const WALK_MIN_LANES: usize = 1 << 15;

/// Fewest batch rows × channels for which the scan runs pass 3 alone over whole rows (one
/// chunk per row, one thread per `(row, channel)`) instead of the walk or the chunked passes:
/// enough threads to fill the GPU on their own (see the module documentation).
pub const WHOLE_ROWS_THREADS: usize = 1 << 17;

/// Whether the scan runs pass 3 alone over whole rows (see [`WHOLE_ROWS_THREADS`]).
fn whole_rows(batch: usize, d_inner: usize) -> bool {
    batch * d_inner >= WHOLE_ROWS_THREADS
}

/// The usual lanes per channel of the walk: up to 4, a power of two dividing `d_state`.
fn walk_lanes(d_state: usize) -> usize {
    [4, 2, 1]
        .into_iter()
        .find(|l| d_state.is_multiple_of(*l))
        .unwrap_or(1)
}

/// Lanes per channel if the walk runs for this shape, else `None` (see [`ScanPath`]).
fn walk_choice(batch: usize, d_inner: usize, d_state: usize) -> Option<usize> {
    let (lanes, forced) = match scan_path() {
        ScanPath::Chunked => return None,
        ScanPath::Auto => (walk_lanes(d_state), false),
        ScanPath::Walk(0) => (walk_lanes(d_state), true),
        ScanPath::Walk(lanes) => (lanes, true),
    };
    let fits = lanes.is_power_of_two()
        && lanes <= 32
        && d_state.is_multiple_of(lanes)
        && d_state / lanes <= MAX_STATES_PER_LANE;
    let enough =
        forced || (batch * d_inner * lanes >= WALK_MIN_LANES && !whole_rows(batch, d_inner));
    // The walk's cubes run over the batch rows along y, which launches cap at 65,535.
    let launchable = batch <= u16::MAX as usize;
    (fits && enough && launchable).then_some(lanes)
}

/// Shortest chunk worth its own pass-1/pass-2 work.
const MIN_CHUNK: usize = 64;

/// The decay `exp(Δ·A)` of the state recurrence from `x = Δ·A·scale`, `scale` being
/// [`a_scale`]. With `fast` (CUDA only: inline PTX, which CubeCL's CUDA C++ backend passes
/// through) it is `2^x` on the special-function unit (`ex2.approx.ftz.f32`: one instruction,
/// relative error about 2^-22, results below 2^-126 flushed to zero) with `A` pre-scaled by
/// log2 e, instead of the accurate `expf` of about ten instructions; otherwise `x.exp()`. The
/// recurrence takes `2·d_state` of these per `(t, d)`.
#[cube]
pub(crate) fn decay(x: f32, #[comptime] fast: bool) -> f32 {
    if fast { exp2_approx(x) } else { x.exp() }
}

/// What `A` is multiplied by when loaded, for [`decay`]: log2 e with `fast`, else 1.
#[cube]
pub(crate) fn a_scale(#[comptime] fast: bool) -> f32 {
    if fast { LOG2_E } else { 1.0f32 }
}

/// `2^x` (`ex2.approx.ftz.f32`).
#[cube]
fn exp2_approx(x: f32) -> f32 {
    let r: f32;
    gpu_asm!("ex2.approx.ftz.f32 {}, {};", out(_) r, in(_) x, options(pure, nomem));
    r
}

/// `ln(x)` for `x` in [1, 2] (`lg2.approx.ftz.f32`, absolute error about 2^-22, times ln 2).
#[cube]
fn ln_approx(x: f32) -> f32 {
    let r: f32;
    gpu_asm!("lg2.approx.ftz.f32 {}, {};", out(_) r, in(_) x, options(pure, nomem));
    r * LN_2
}

/// `1 / x` (`rcp.approx.ftz.f32`, relative error about 2^-23; `1/inf = 0`).
#[cube]
fn rcp_approx(x: f32) -> f32 {
    let r: f32;
    gpu_asm!("rcp.approx.ftz.f32 {}, {};", out(_) r, in(_) x, options(pure, nomem));
    r
}

const LOG2_E: f32 = std::f32::consts::LOG2_E;
const LN_2: f32 = std::f32::consts::LN_2;

/// Whether the kernels may use the inline-PTX approximations above: a CUDA device, compiled
/// by the CUDA C++ backend (which the `cuda` feature selects).
pub(crate) fn fast_math(client: &Client) -> bool {
    cfg!(feature = "cuda") && client.name() == "cuda"
}

/// `softplus(x) = max(x, 0) + log1p(exp(-|x|))`, as the reference computes it; with `fast`,
/// `ln(1 + 2^(-|x|·log2 e))` through the approximations above (absolute error below 1e-7).
#[cube]
pub(crate) fn softplus(x: f32, #[comptime] fast: bool) -> f32 {
    let pos = if x > 0.0f32 { x } else { 0.0f32 };
    if fast {
        pos + ln_approx(1.0f32 + exp2_approx(-x.abs() * LOG2_E))
    } else {
        pos + (-x.abs()).exp().log1p()
    }
}

/// The time step `Δ` from `delta + bias`: its softplus with `activate`, else itself (the
/// softplus was applied where `delta` was made: [`scan_cube_with`]).
#[cube]
pub(crate) fn time_step(x: f32, #[comptime] fast: bool, #[comptime] activate: bool) -> f32 {
    if activate { softplus(x, fast) } else { x }
}

/// `SiLU(z) = z / (1 + exp(-z))`; with `fast`, through the approximations above.
#[cube]
pub(crate) fn silu(z: f32, #[comptime] fast: bool) -> f32 {
    if fast {
        z * rcp_approx(1.0f32 + exp2_approx(-z * LOG2_E))
    } else {
        z / (1.0f32 + (-z).exp())
    }
}

/// `sigmoid(x) = 1 / (1 + exp(-x))`; with `fast`, through the approximations above.
#[cube]
pub(crate) fn sigmoid(x: f32, #[comptime] fast: bool) -> f32 {
    if fast {
        rcp_approx(1.0f32 + exp2_approx(-x * LOG2_E))
    } else {
        1.0f32 / (1.0f32 + (-x).exp())
    }
}

/// The output gate from `z`: `SiLU(z)` with `silu_gate`, else `z` itself (the SiLU was applied
/// where `z` was made: `selective_scan_gated`, [`scan_cube_with`]).
#[cube]
pub(crate) fn gate_of(z: f32, #[comptime] fast: bool, #[comptime] silu_gate: bool) -> f32 {
    if silu_gate { silu(z, fast) } else { z }
}

/// Pass 1: each chunk's state from zero, and the chunk's sum of `Δ`.
///
/// One thread per `(b, chunk k, channel d)`, a cube per `(b, k)` and group of channels
/// ([`chunk_and_channel`]). `b` is read `vec` floats at a time, row `t` of batch row `bi` at
/// `bi·bs0 + t·bs1` (strides in vectors), staged in shared memory ([`stage_rows_f32`]).
/// `state`: `[batch, chunks, d_state, d_inner]`; `dsum`: `[batch, chunks, d_inner]`.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn scan_chunk_state_kernel<F: Float, G: Float, V: Size>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<f32>,
    b: &Tensor<Vector<G, V>>,
    delta_bias: &Tensor<f32>,
    state: &mut Tensor<f32>,
    dsum: &mut Tensor<f32>,
    len: usize,
    d_inner: usize,
    chunks: usize,
    chunk_len: usize,
    bs0: usize,
    bs1: usize,
    #[comptime] d_state: usize,
    #[comptime] vec: usize,
    #[comptime] fast: bool,
    #[comptime] activate: bool,
    #[comptime] prefetch: bool,
    #[comptime] depth: usize,
    #[define(F, G)] _elems: [ElemType; 2],
) {
    let (bk, ch, active) = chunk_and_channel(d_inner);
    let k = bk % chunks;
    let bi = bk / chunks;
    let t0 = k * chunk_len;
    let t1 = if t0 + chunk_len < len {
        t0 + chunk_len
    } else {
        len
    };
    let nvec = comptime!(d_state / vec);
    let rows = comptime!(stage_rows(d_state, prefetch_slots(prefetch, depth)));
    let mut sb = Shared::<[Vector<f32, V>]>::new_slice(comptime!(rows * nvec));

    let mut av = Array::<f32>::new(d_state);
    let mut h = Array::<f32>::new(d_state);
    #[unroll]
    for n in 0..d_state {
        av[n] = a[ch * d_state + n] * a_scale(fast);
        h[n] = 0.0f32;
    }
    let bias = delta_bias[ch];
    let mut sum = 0.0f32;
    // With `prefetch`, `u` and `delta` are loaded `slots` steps ahead ([`prefetch_slots`]): slot
    // `p` holds the values of the steps `t` with `(t - t0) % slots == p`, and the loop is
    // unrolled `slots` times, so that a value stays in its register from its load to its use
    // (rotating one variable into another made ptxas consume the load at once: see
    // [`prefetch_slots`]). Past the chunk's end the loads read its last step again, the index
    // clamped with a `min` (one instruction, where a test and a select took four; with the
    // folded shared-memory offsets of [`smem_mask`], pass 1 went from 97.75 to 89.75
    // instructions per step and from 631 to 621 us per layer at chr20's shape on the H200;
    // the same two changes made pass 3 slower there, so it keeps its select: BENCHMARKS.md,
    // twenty-eighth session).
    // Offsets are recomputed from `t` here: advancing them per step, as pass 3 does, made
    // ptxas unroll the loop twice with 72 registers instead of 64, and timed no better
    // (BENCHMARKS.md).
    let slots = comptime!(prefetch_slots(prefetch, depth));
    let first = (bi * len + t0) * d_inner + ch;
    let mut un = Array::<F>::new(slots);
    let mut dn = Array::<F>::new(slots);
    #[unroll]
    for p in 0..slots {
        let at = if t0 + p < t1 {
            first + p * d_inner
        } else {
            first
        };
        un[p] = u[at];
        dn[p] = delta[at];
    }
    let ahead = slots * d_inner;
    let last = first + (t1 - 1 - t0) * d_inner;
    let mask = comptime!(smem_mask(rows * nvec));
    let mut ts = t0;
    while ts < t1 {
        let te = if ts + rows < t1 { ts + rows } else { t1 };
        stage_rows_f32(b, &mut sb, bi * bs0 + ts * bs1, bs1, te - ts, nvec, vec);
        let mut so = 0;
        let mut t = ts;
        while t < te {
            #[unroll]
            for p in 0..slots {
                if t < te {
                    let i = (bi * len + t) * d_inner + ch;
                    if !prefetch {
                        un[p] = u[i];
                        dn[p] = delta[i];
                    }
                    let ut = f32::cast_from(un[p]);
                    let delta_t = f32::cast_from(dn[p]);
                    if prefetch {
                        // Past the chunk's last step, the last step's values (not used).
                        let nxt = min(i + ahead, last);
                        un[p] = u[nxt];
                        dn[p] = delta[nxt];
                    }
                    // Δ = softplus(delta + bias)   (Algorithm 2, line 6), or `delta + bias`
                    // when the softplus was applied where `delta` was made.
                    let dt = time_step(delta_t + bias, fast, activate);
                    let dtu = dt * ut;
                    sum += dt;
                    let sm = so & mask;
                    #[unroll]
                    for q in 0..nvec {
                        let bq = sb[sm + q];
                        #[unroll]
                        for e in 0..vec {
                            let n = q * vec + e;
                            // h = exp(Δ·A) ⊙ h + Δ·B·u   (eq. 2a, zero-order hold of eq. 4)
                            h[n] = decay(dt * av[n], fast) * h[n] + dtu * bq.extract(e);
                        }
                    }
                    so += nvec;
                    t += 1;
                }
            }
        }
        ts = te;
    }
    if active {
        #[unroll]
        for n in 0..d_state {
            state[(bk * d_state + n) * d_inner + ch] = h[n];
        }
        dsum[bk * d_inner + ch] = sum;
    }
}

/// The work item of a pass 1 or pass 3 thread: `(b·chunks + k, d, active)`. Cubes run along x
/// over `(b, chunk)` and along y over groups of `CUBE_DIM_X` channels, so that all threads of a
/// cube share one chunk (and its rows of `B` and `C`, staged in shared memory). Threads past
/// `d_inner` (`active` false) take the last channel's indices for their reads, write nothing,
/// and stay for the cube's barriers.
#[cube]
pub(crate) fn chunk_and_channel(d_inner: usize) -> (usize, usize, bool) {
    let bk = CUBE_POS_X as usize;
    let lane = CUBE_POS_Y as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    let active = lane < d_inner;
    let ch = if active { lane } else { d_inner - 1 };
    (bk, ch, active)
}

/// Stages `count` rows of `src` (`[..., d_state]` in vectors of `vec`, row `r` at `start +
/// r·stride`) in `dst`, widened to f32, row `r` at `r·nvec`: the cube's threads load them
/// together between two barriers (the first lets every thread finish with the previous rows).
/// Every thread then reads the rows from shared memory, converted once per cube rather than
/// once per thread.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_rows_f32<G: Float, V: Size>(
    src: &Tensor<Vector<G, V>>,
    dst: &mut Shared<[Vector<f32, V>]>,
    start: usize,
    stride: usize,
    count: usize,
    #[comptime] nvec: usize,
    #[comptime] vec: usize,
) {
    sync_cube();
    let total = count * nvec;
    let mut j = UNIT_POS_X as usize;
    while j < total {
        let r = j / nvec;
        let q = j % nvec;
        let v = src[start + r * stride + q];
        let mut w = Vector::<f32, V>::empty();
        #[unroll]
        for e in 0..vec {
            w.insert(e, f32::cast_from(v.extract(e)));
        }
        dst[j] = w;
        j += CUBE_DIM_X as usize;
    }
    sync_cube();
}

/// Pass 2: incoming state of every chunk, in place of the chunk states, and the last state.
///
/// Thread `((b·d_state) + n)·d_inner + d`. `h0`, `h_last`: `[batch, d_inner, d_state]`. Walks
/// all `chunks` in order ([`walk_chunks`]). With many chunks this sequential walk is
/// latency-bound (a few thousand threads, each waiting on its loads), so it runs over groups of
/// chunks instead ([`scan_group_kernel`]): `state` and `dsum` are then the groups' states and
/// sums of `Δ`, and `chunks` the number of groups.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn scan_chunk_combine_kernel(
    a: &Tensor<f32>,
    h0: &Tensor<f32>,
    dsum: &Tensor<f32>,
    state: &mut Tensor<f32>,
    h_last: &mut Tensor<f32>,
    batch: usize,
    d_inner: usize,
    d_state: usize,
    chunks: usize,
    #[comptime] fast: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= batch * d_state * d_inner {
        terminate!();
    }
    let ch = pos % d_inner;
    let bn = pos / d_inner;
    let n = bn % d_state;
    let bi = bn / d_state;
    let an = a[ch * d_state + n] * a_scale(fast);
    let hpos = (bi * d_inner + ch) * d_state + n;
    let si = (bi * chunks * d_state + n) * d_inner + ch;
    let di = bi * chunks * d_inner + ch;
    let (h, _) = walk_chunks(
        state,
        dsum,
        an,
        h0[hpos],
        si,
        di,
        d_state * d_inner,
        d_inner,
        chunks,
        fast,
        true,
    );
    h_last[hpos] = h;
}

/// Pass 2 over groups of chunks, in two roles. Thread `((b·groups + g)·d_state + n)·d_inner + d`
/// takes chunks `[g·group_len, (g+1)·group_len)`:
/// - without `apply`, walks them from a zero state and writes the group's state to
///   `group_state` (`[batch, groups, d_state, d_inner]`) and, for `n = 0`, the group's sum of
///   `Δ` to `group_dsum` (`[batch, groups, d_inner]`); [`scan_chunk_combine_kernel`] then turns
///   the groups' states into their incoming states;
/// - with `apply`, walks them from the group's incoming state (in `group_state`), writing each
///   chunk's incoming state in place of its state.
///
/// Every thread walks one group, so the number of threads is `groups` times that of a single
/// walk over all chunks, and each walk `groups` times shorter.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn scan_group_kernel(
    a: &Tensor<f32>,
    dsum: &Tensor<f32>,
    state: &mut Tensor<f32>,
    group_state: &mut Tensor<f32>,
    group_dsum: &mut Tensor<f32>,
    batch: usize,
    d_inner: usize,
    d_state: usize,
    chunks: usize,
    group_len: usize,
    groups: usize,
    #[comptime] fast: bool,
    #[comptime] apply: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= batch * groups * d_state * d_inner {
        terminate!();
    }
    let ch = pos % d_inner;
    let rest = pos / d_inner;
    let n = rest % d_state;
    let bg = rest / d_state;
    let g = bg % groups;
    let bi = bg / groups;
    let k0 = g * group_len;
    let k1 = if k0 + group_len < chunks {
        k0 + group_len
    } else {
        chunks
    };
    let an = a[ch * d_state + n] * a_scale(fast);
    let si = ((bi * chunks + k0) * d_state + n) * d_inner + ch;
    let di = (bi * chunks + k0) * d_inner + ch;
    let mut start = 0.0f32;
    if apply {
        start = group_state[pos];
    }
    let (h, sum) = walk_chunks(
        state,
        dsum,
        an,
        start,
        si,
        di,
        d_state * d_inner,
        d_inner,
        k1 - k0,
        fast,
        apply,
    );
    if !apply {
        group_state[pos] = h;
        if n == 0 {
            group_dsum[bg * d_inner + ch] = sum;
        }
    }
}

/// Walks `count` chunks from the state `h_start`: chunk `j`'s state (from zero) is at
/// `si + j·s_step` in `state` and its sum of `Δ` at `di + j·d_step` in `dsum`; across a chunk,
/// `h_out = exp(A·ΣΔ)·h_in + S`. With `write`, each chunk's state is overwritten with the state
/// coming into it. Returns the state after the last chunk and the sum of the chunks' `ΣΔ`.
/// The walk is latency-bound: it loads [`COMBINE_BATCH`] chunks' values before combining them.
#[cube]
#[allow(clippy::too_many_arguments)]
fn walk_chunks(
    state: &mut Tensor<f32>,
    dsum: &Tensor<f32>,
    an: f32,
    h_start: f32,
    si_start: usize,
    di_start: usize,
    s_step: usize,
    d_step: usize,
    count: usize,
    #[comptime] fast: bool,
    #[comptime] write: bool,
) -> (f32, f32) {
    let mut h = h_start;
    let mut sum = 0.0f32;
    let mut si = si_start;
    let mut di = di_start;
    let full = count / COMBINE_BATCH;
    let mut sv = Array::<f32>::new(COMBINE_BATCH);
    let mut pv = Array::<f32>::new(COMBINE_BATCH);
    for _ in 0..full {
        let mut sj = si;
        let mut dj = di;
        #[unroll]
        for j in 0..COMBINE_BATCH {
            sv[j] = state[sj];
            pv[j] = dsum[dj];
            sj += s_step;
            dj += d_step;
        }
        #[unroll]
        for j in 0..COMBINE_BATCH {
            if write {
                state[si] = h;
            }
            h = decay(an * pv[j], fast) * h + sv[j];
            sum += pv[j];
            si += s_step;
        }
        di = dj;
    }
    for _ in full * COMBINE_BATCH..count {
        let s = state[si];
        let p = dsum[di];
        if write {
            state[si] = h;
        }
        h = decay(an * p, fast) * h + s;
        sum += p;
        si += s_step;
        di += d_step;
    }
    (h, sum)
}

/// Pass 3: every chunk rescanned from its incoming state, writing the gated output.
///
/// Threads as in pass 1; `b` and `c` are read `vec` floats at a time through their row strides
/// (`bs0`, `bs1`, `cs0`, `cs1`, in vectors); `z` is read at `b·zs0 + t·zs1 + d` (it is usually
/// a view of `in_proj`'s output). With `single_chunk`, `h_in` is `h0` (`[batch, d_inner,
/// d_state]`) and the last state goes to `h_last`; otherwise `h_in` is pass 2's `[batch,
/// chunks, d_state, d_inner]` and `h_last` is left alone.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn scan_chunk_output_kernel<F: Float, G: Float, V: Size>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<f32>,
    b: &Tensor<Vector<G, V>>,
    c: &Tensor<Vector<G, V>>,
    d: &Tensor<f32>,
    z: &Tensor<F>,
    delta_bias: &Tensor<f32>,
    h_in: &Tensor<f32>,
    y: &mut Tensor<F>,
    h_last: &mut Tensor<f32>,
    len: usize,
    d_inner: usize,
    chunks: usize,
    chunk_len: usize,
    zs0: usize,
    zs1: usize,
    bs0: usize,
    bs1: usize,
    cs0: usize,
    cs1: usize,
    #[comptime] d_state: usize,
    #[comptime] vec: usize,
    #[comptime] single_chunk: bool,
    #[comptime] fast: bool,
    #[comptime] activate: bool,
    #[comptime] silu_gate: bool,
    #[comptime] prefetch: bool,
    #[comptime] depth: usize,
    #[define(F, G)] _elems: [ElemType; 2],
) {
    let (bk, ch, active) = chunk_and_channel(d_inner);
    let k = bk % chunks;
    let bi = bk / chunks;
    let t0 = k * chunk_len;
    let t1 = if t0 + chunk_len < len {
        t0 + chunk_len
    } else {
        len
    };
    let nvec = comptime!(d_state / vec);
    let rows = comptime!(stage_rows(d_state, prefetch_slots(prefetch, depth)));
    let mut sb = Shared::<[Vector<f32, V>]>::new_slice(comptime!(rows * nvec));
    let mut sc = Shared::<[Vector<f32, V>]>::new_slice(comptime!(rows * nvec));

    let mut av = Array::<f32>::new(d_state);
    let mut h = Array::<f32>::new(d_state);
    #[unroll]
    for n in 0..d_state {
        av[n] = a[ch * d_state + n] * a_scale(fast);
        if single_chunk {
            h[n] = h_in[(bi * d_inner + ch) * d_state + n];
        } else {
            h[n] = h_in[(bk * d_state + n) * d_inner + ch];
        }
    }
    let bias = delta_bias[ch];
    let dskip = d[ch];
    // Offsets advanced by one step per iteration (not recomputed from `t`).
    let mut i = (bi * len + t0) * d_inner + ch;
    let mut zi = bi * zs0 + t0 * zs1 + ch;
    // With `prefetch`, `u`, `delta` and `z` are loaded `slots` steps ahead, as in pass 1: slot
    // `p` holds step `t`'s values where `(t - t0) % slots == p`, the loop is unrolled `slots`
    // times, and the last steps load their own values again.
    let slots = comptime!(prefetch_slots(prefetch, depth));
    let mut un = Array::<F>::new(slots);
    let mut dn = Array::<F>::new(slots);
    let mut zn = Array::<F>::new(slots);
    #[unroll]
    for p in 0..slots {
        let more = t0 + p < t1;
        let at = if more { i + p * d_inner } else { i };
        let zat = if more { zi + p * zs1 } else { zi };
        un[p] = u[at];
        dn[p] = delta[at];
        zn[p] = z[zat];
    }
    let mut ts = t0;
    while ts < t1 {
        let te = if ts + rows < t1 { ts + rows } else { t1 };
        stage_rows_f32(b, &mut sb, bi * bs0 + ts * bs1, bs1, te - ts, nvec, vec);
        stage_rows_f32(c, &mut sc, bi * cs0 + ts * cs1, cs1, te - ts, nvec, vec);
        let mut so = 0;
        let mut t = ts;
        while t < te {
            #[unroll]
            for p in 0..slots {
                if t < te {
                    if !prefetch {
                        un[p] = u[i];
                        dn[p] = delta[i];
                        zn[p] = z[zi];
                    }
                    let ut = f32::cast_from(un[p]);
                    let delta_t = f32::cast_from(dn[p]);
                    let zt = f32::cast_from(zn[p]);
                    if prefetch {
                        let more = t + slots < t1;
                        let i_next = if more { i + slots * d_inner } else { i };
                        let zi_next = if more { zi + slots * zs1 } else { zi };
                        un[p] = u[i_next];
                        dn[p] = delta[i_next];
                        zn[p] = z[zi_next];
                    }
                    // Δ = softplus(delta + bias)   (Algorithm 2, line 6), or `delta + bias`
                    // when the softplus was applied where `delta` was made.
                    let dt = time_step(delta_t + bias, fast, activate);
                    let dtu = dt * ut;
                    let mut acc = 0.0f32;
                    #[unroll]
                    for q in 0..nvec {
                        let bq = sb[so + q];
                        let cq = sc[so + q];
                        #[unroll]
                        for e in 0..vec {
                            let n = q * vec + e;
                            // h = exp(Δ·A) ⊙ h + Δ·B·u   (eq. 2a, zero-order hold of eq. 4)
                            h[n] = decay(dt * av[n], fast) * h[n] + dtu * bq.extract(e);
                            // y = C·h   (eq. 2b)
                            acc += cq.extract(e) * h[n];
                        }
                    }
                    // + D·u, gated by SiLU(z) = z / (1 + exp(-z)).
                    if active {
                        y[i] = F::cast_from((acc + dskip * ut) * gate_of(zt, fast, silu_gate));
                    }
                    i += d_inner;
                    zi += zs1;
                    so += nvec;
                    t += 1;
                }
            }
        }
        ts = te;
    }
    // `single_chunk` is resolved when the kernel is expanded, `active` when it runs.
    #[allow(clippy::collapsible_if)]
    if single_chunk {
        if active {
            #[unroll]
            for n in 0..d_state {
                h_last[(bi * d_inner + ch) * d_state + n] = h[n];
            }
        }
    }
}

/// Chunks whose values pass 2 loads together (loads in flight per thread).
const COMBINE_BATCH: usize = 16;

/// Fewest chunks for which pass 2 runs over groups of chunks ([`scan_group_kernel`]).
const GROUP_MIN_CHUNKS: usize = 64;

/// Chunks per group for pass 2 over `chunks` chunks, 0 for a single walk over all of them:
/// about `√chunks` from [`GROUP_MIN_CHUNKS`] chunks on, so that the walk over the groups and
/// the walks within them are about equally long. The environment variable
/// `GENOMAMBA_SCAN_GROUP_LEN` sets it (0: never group), for tuning runs; results do not depend
/// on it beyond rounding.
fn group_len(chunks: usize) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var("GENOMAMBA_SCAN_GROUP_LEN")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    let len = match forced {
        Some(len) => len,
        None if chunks >= GROUP_MIN_CHUNKS => {
            let root = chunks.isqrt();
            if root * root < chunks { root + 1 } else { root }
        }
        None => 0,
    };
    // A group of all chunks (or more) is the single walk.
    if len >= chunks { 0 } else { len }
}

/// How the work is laid out: time split into chunks, `B`/`C` rows read `vec` floats at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    chunks: usize,
    chunk_len: usize,
    /// Floats per load of a row of `B` or `C` (divides `d_state`).
    vec: usize,
}

impl Plan {
    /// The widest `B`/`C` loads `d_state` allows, and enough chunks that the threads fill the
    /// GPU, none shorter than [`MIN_CHUNK`] steps (unless the sequence is).
    fn new(batch: usize, len: usize, d_inner: usize, d_state: usize) -> Self {
        let vec = vector_width(d_state);
        let wanted = if whole_rows(batch, d_inner) {
            1
        } else {
            target_threads().div_ceil(batch * d_inner)
        };
        let most = (len / MIN_CHUNK).max(1);
        let chunks = wanted.clamp(1, most);
        let chunk_len = len.div_ceil(chunks);
        // Rounding the length up can leave the last chunks empty: count only non-empty ones.
        let chunks = len.div_ceil(chunk_len);
        Self {
            chunks,
            chunk_len,
            vec,
        }
    }
}

/// The widest loads of a `B`/`C` row (floats) that divide `d_state`.
fn vector_width(d_state: usize) -> usize {
    [4, 2, 1]
        .into_iter()
        .find(|v| d_state.is_multiple_of(*v))
        .unwrap_or(1)
}

fn cube_count(client: &Client, threads: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(CUBE_THREADS);
    (calculate_cube_count_elemwise(client, threads, dim), dim)
}

/// Floats of `B` (and of `C`) a cube of pass 1 or 3 stages in shared memory at a time.
const STAGE_FLOATS: usize = 1024;

/// Rows of `B` and `C` a cube stages at a time: [`STAGE_FLOATS`] floats, at most one
/// [`MIN_CHUNK`] of rows (64 for `d_state` 16: 4 KiB each), a multiple of `slots` (every stage
/// but a chunk's last then starts on slot 0 of [`prefetch_slots`]), at least `slots`.
fn stage_rows(d_state: usize, slots: usize) -> usize {
    let rows = (STAGE_FLOATS / d_state).clamp(1, MIN_CHUNK);
    (rows / slots * slots).max(slots)
}

/// A mask that keeps every index below `len` as it is. Pass 1 reads its staged rows of `B` at
/// `(so & mask) + q`: with the index's upper bits known to be clear, the compiler folds the
/// constant `q` into the shared-memory load's offset instead of computing each address
/// (CUDA 13.0's `ptxas`, the one in the H200's driver that compiles CubeCL's PTX, did not
/// otherwise: sm_90a machine code, BENCHMARKS.md, twenty-eighth session).
fn smem_mask(len: usize) -> usize {
    len.next_power_of_two() - 1
}

/// Register slots of the `u`, `delta` (and `z`) values that passes 1 and 3 load ahead: `depth`
/// with `prefetch` (steps ahead; see [`scan_prefetch`], [`scan_depth`]), else 1 (each step's
/// own values, loaded in that step). Slot `p` holds the steps `t` with `(t - t0) % slots ==
/// p`, and the loop is unrolled `slots` times, so that a value stays in its register from its
/// load to its use. Rotating the values through variables instead (`next = next2; next2 =
/// load`) made ptxas pack the 16-bit copies into one register (`PRMT`) right after the loads
/// were issued, so the thread waited for them there: a step early in pass 1, within the same
/// step in pass 3 (sm_90a machine code, `bench/nvrtc_sass.sh`). With slots, on the H200
/// (BENCHMARKS.md, twenty-first session): pass 1 647-650 us against 680-683, pass 3 816-819
/// against 852-854 per layer at 262,144 positions, f16; outputs identical.
fn prefetch_slots(prefetch: bool, depth: usize) -> usize {
    if prefetch { depth.max(1) } else { 1 }
}

/// Cubes for pass 1 or 3 over `items` `(b, chunk)` items of `d_inner` channels (see
/// [`chunk_and_channel`]): on CUDA up to [`CUBE_THREADS`] channels per cube, a whole number of
/// warps; on CubeCL's CPU runtime one unit per cube, because its cube barrier spins, one
/// worker thread per unit, and more units than cores would stall it.
pub(crate) fn chunk_cubes(client: &Client, items: usize, d_inner: usize) -> (CubeCount, CubeDim) {
    let width = if cfg!(feature = "cuda") && client.name() == "cuda" {
        d_inner.next_multiple_of(32).min(CUBE_THREADS as usize)
    } else {
        1
    };
    let groups = d_inner.div_ceil(width);
    (
        CubeCount::Static(items as u32, groups as u32, 1),
        CubeDim::new_1d(width as u32),
    )
}

/// Whether a tensor's data starts on a `vec`-element boundary (for vector loads).
pub(crate) fn aligned(t: &CubeTensor, vec: usize) -> bool {
    t.handle
        .offset_start
        .unwrap_or(0)
        .is_multiple_of((t.dtype.size() * vec) as u64)
}

/// The kernels' element type for the activations' format: f32, f16 or bf16.
pub(crate) fn activation_elem(dtype: DType) -> Option<ElemType> {
    use cubecl::ir::FloatKind;
    match dtype {
        DType::F32 => Some(ElemType::Float(FloatKind::F32)),
        DType::F16 => Some(ElemType::Float(FloatKind::F16)),
        DType::BF16 => Some(ElemType::Float(FloatKind::BF16)),
        _ => None,
    }
}

/// The fused GPU scan; falls back to the reference for formats it does not take (see
/// [`activation_elem`]; `A`, `D`, the Δ bias and the state must be f32), shapes it does not
/// expect, `d_state > MAX_D_STATE`, and empty shapes.
pub(crate) fn scan_cube(input: ScanInput<CubeBackend>) -> ScanOutput<CubeBackend> {
    scan_cube_with(input, true, true)
}

/// [`scan_cube`], or with `activate` false the scan whose `delta` is already activated
/// (`Δ = delta + delta_bias`, no softplus: `selective_scan_activated`), and with `silu_gate`
/// false also whose `z` is already the gate (no SiLU: `selective_scan_gated`).
pub(crate) fn scan_cube_with(
    input: ScanInput<CubeBackend>,
    activate: bool,
    silu_gate: bool,
) -> ScanOutput<CubeBackend> {
    let reference = |input| scan_reference_with::<CubeBackend>(input, activate, silu_gate);
    let ushape = input.u.shape().to_vec();
    let ashape = input.a.shape().to_vec();
    let (batch, len, d_inner) = match ushape.as_slice() {
        [bt, l, di] => (*bt, *l, *di),
        _ => return reference(input),
    };
    let d_state = match ashape.as_slice() {
        [_, n] => *n,
        _ => return reference(input),
    };
    let usable = {
        let want: [(&CubeTensor, &[usize]); 9] = [
            (&input.u, &[batch, len, d_inner]),
            (&input.delta, &[batch, len, d_inner]),
            (&input.z, &[batch, len, d_inner]),
            (&input.a, &[d_inner, d_state]),
            (&input.b, &[batch, len, d_state]),
            (&input.c, &[batch, len, d_state]),
            (&input.d, &[d_inner]),
            (&input.delta_bias, &[d_inner]),
            (&input.h0, &[batch, d_inner, d_state]),
        ];
        let act = input.u.dtype;
        let bc = input.b.dtype;
        let formats = [&input.delta, &input.z].iter().all(|t| t.dtype == act)
            && (bc == act || bc == DType::F32)
            && input.c.dtype == bc
            && [&input.a, &input.d, &input.delta_bias, &input.h0]
                .iter()
                .all(|t| t.dtype == DType::F32);
        formats && want.iter().all(|(t, dims)| t.shape().to_vec() == *dims)
    };
    let act = input.u.dtype;
    let (Some(act_elem), Some(bc_elem)) = (activation_elem(act), activation_elem(input.b.dtype))
    else {
        return reference(input);
    };
    if !usable || batch == 0 || len == 0 || d_inner == 0 || d_state == 0 || d_state > MAX_D_STATE {
        return reference(input);
    }

    let ScanInput {
        u,
        delta,
        a,
        b,
        c,
        d,
        z,
        delta_bias,
        h0,
    } = input;
    // The kernels index row-major: make every input contiguous (a no-op for those that are),
    // except `z`, `B` and `C`, read through their row strides when their last dimension is
    // contiguous (they are usually views of a projection's output).
    let [u, delta, a, d, delta_bias, h0] = [u, delta, a, d, delta_bias, h0].map(into_contiguous);
    let (z, (zs0, zs1)) = match row_strides(&z) {
        Some(st) => (z, st),
        None => (into_contiguous(z), (len * d_inner, d_inner)),
    };
    let z_span = (batch - 1) * zs0 + (len - 1) * zs1 + d_inner;
    let mut plan = Plan::new(batch, len, d_inner, d_state);
    let walk = walk_choice(batch, d_inner, d_state);
    if let Some(lanes) = walk {
        // Each lane reads its own states' part of a row.
        plan.vec = vector_width(d_state / lanes);
    }
    // `B` and `C` rows are read `vec` floats at a time, so their strides must be multiples of
    // `vec` (else they are copied contiguous) and their data start on a vector boundary (else
    // they are read one float at a time).
    let vec_rows = |t: CubeTensor| match row_strides(&t) {
        Some((s0, s1)) if s0.is_multiple_of(plan.vec) && s1.is_multiple_of(plan.vec) => {
            (t, (s0, s1))
        }
        _ => (into_contiguous(t), (len * d_state, d_state)),
    };
    let (b, (bs0, bs1)) = vec_rows(b);
    let (c, (cs0, cs1)) = vec_rows(c);
    if !(aligned(&b, plan.vec) && aligned(&c, plan.vec)) {
        plan.vec = 1;
    }
    let bc_span = (batch - 1) * bs0.max(cs0) + (len - 1) * bs1.max(cs1) + d_state;
    // Row strides of `B` and `C` in vectors.
    let [bs0, bs1, cs0, cs1] = [bs0, bs1, cs0, cs1].map(|s| s / plan.vec);
    let client = u.client.clone();
    let device = u.device.clone();
    let empty_as = |shape: Vec<usize>, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::from(shape), dtype)
    };
    let empty = |shape: Vec<usize>| empty_as(shape, DType::F32);
    let y = empty_as(vec![batch, len, d_inner], act);
    let h_last = empty(vec![batch, d_inner, d_state]);
    let Plan {
        chunks,
        chunk_len,
        vec,
    } = plan;
    let state_len = batch * chunks * d_inner * d_state;
    let address = AddressType::from_len(
        [batch * len * d_inner, bc_span, state_len, z_span]
            .into_iter()
            .max()
            .unwrap_or(0),
    );

    let fast = fast_math(&client);
    let (_, prefetch3) = scan_prefetch();
    let (_, depth3) = scan_depth();
    if let Some(lanes) = walk {
        // On CUDA a cube of 128 threads; on CubeCL's CPU runtime one channel per cube (its
        // barrier spins, one worker thread per unit; see `chunk_cubes`).
        let channels = if cfg!(feature = "cuda") && client.name() == "cuda" {
            (CUBE_THREADS as usize / lanes).max(1)
        } else {
            1
        };
        let count = CubeCount::Static(d_inner.div_ceil(channels) as u32, batch as u32, 1);
        let dim = CubeDim::new_1d((channels * lanes) as u32);
        // SAFETY: threads past `d_inner` read the last channel and write nothing; steps past
        // `len` read the last step and write nothing; `n = p·(d_state/lanes) + g < d_state`;
        // `A`, `D`, the Δ bias (shared by the rows: row strides 0), `u`, `delta`, `h0` and the
        // outputs are contiguous with the shapes checked or allocated above; `z`, `B`, `C` are
        // read within their views' extents, `B`/`C` in whole aligned vectors (`vec` divides
        // the states of a lane, and the strides in vectors were checked).
        unsafe {
            scan_walk_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                vec,
                u.into_tensor_arg(),
                delta.into_tensor_arg(),
                a.into_tensor_arg(),
                b.into_tensor_arg(),
                c.into_tensor_arg(),
                d.into_tensor_arg(),
                z.into_tensor_arg(),
                delta_bias.into_tensor_arg(),
                h0.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                h_last.clone().into_tensor_arg(),
                len,
                d_inner,
                0,
                0,
                0,
                zs0,
                zs1,
                bs0,
                bs1,
                cs0,
                cs1,
                d_state,
                vec,
                lanes,
                channels,
                fast,
                activate,
                silu_gate,
                [act_elem, bc_elem],
            );
        }
        return ScanOutput { y, h: h_last };
    }
    let (count, dim) = chunk_cubes(&client, batch * chunks, d_inner);
    if chunks == 1 {
        // SAFETY: every index the kernel forms is below the length of the tensor it reads or
        // writes: threads past `d_inner` read the last channel's values and write nothing
        // (`chunk_and_channel`), the cubes along x are `batch · chunks`, `t < len`,
        // `n < d_state`, and all tensors but `z` are contiguous with the shapes checked above
        // (`B` and `C` rows are whole vectors: `vec` divides `d_state`, and their data starts
        // on a vector boundary); `z` indices are below `z_span`, the extent of its view.
        unsafe {
            scan_chunk_output_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                vec,
                u.into_tensor_arg(),
                delta.into_tensor_arg(),
                a.into_tensor_arg(),
                b.into_tensor_arg(),
                c.into_tensor_arg(),
                d.into_tensor_arg(),
                z.into_tensor_arg(),
                delta_bias.into_tensor_arg(),
                h0.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                h_last.clone().into_tensor_arg(),
                len,
                d_inner,
                1,
                len,
                zs0,
                zs1,
                bs0,
                bs1,
                cs0,
                cs1,
                d_state,
                vec,
                true,
                fast,
                activate,
                silu_gate,
                prefetch3,
                depth3,
                [act_elem, bc_elem],
            );
        }
        return ScanOutput { y, h: h_last };
    }

    let state = chunk_states(
        ChunkRows {
            b: &b,
            bs: (bs0, bs1),
            vec,
            elems: [act_elem, bc_elem],
            activate,
        },
        [&u, &delta, &a, &delta_bias, &h0, &h_last],
        [batch, len, d_inner, d_state],
        chunk_len,
        address,
    );
    // SAFETY: pass 3 clamps its channel and writes nothing past `d_inner`; every other index
    // is below the length of its tensor (`t < len`, `k < chunks`, `n < d_state`), all tensors
    // but `z` being contiguous with the shapes checked or allocated above (`z` read within
    // `z_span`, the extent of its view), `B` and `C` read in whole, aligned vectors as for the
    // single-chunk launch.
    unsafe {
        scan_chunk_output_kernel::launch_unchecked(
            &client,
            count,
            dim,
            address,
            vec,
            u.into_tensor_arg(),
            delta.into_tensor_arg(),
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            c.into_tensor_arg(),
            d.into_tensor_arg(),
            z.into_tensor_arg(),
            delta_bias.into_tensor_arg(),
            state.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            h_last.clone().into_tensor_arg(),
            len,
            d_inner,
            chunks,
            chunk_len,
            zs0,
            zs1,
            bs0,
            bs1,
            cs0,
            cs1,
            d_state,
            vec,
            false,
            fast,
            activate,
            silu_gate,
            prefetch3,
            depth3,
            [act_elem, bc_elem],
        );
    }
    ScanOutput { y, h: h_last }
}

/// Pass 2: turns each chunk's state from zero (`state`, `[batch, chunks, d_state, d_inner]`,
/// with the chunks' sums of `Δ` in `dsum`, `[batch, chunks, d_inner]`) into the state coming
/// into it, in place, starting from `h0` (`[batch, d_inner, d_state]`), and writes the state
/// after the last chunk to `h_last` (`[batch, d_inner, d_state]`): one walk over the chunks, or
/// from [`GROUP_MIN_CHUNKS`] chunks on, walks over groups of chunks ([`scan_group_kernel`]).
/// The forward scan's chunks run through it in time order and the backward kernel's adjoint
/// chunks (`scan_backward_cube.rs`) in reverse: the same recurrence `x_out = exp(A·ΣΔ)·x_in +
/// S` either way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn combine_chunks(
    client: &Client,
    address: AddressType,
    a: &CubeTensor,
    h0: &CubeTensor,
    dsum: &CubeTensor,
    state: &CubeTensor,
    h_last: &CubeTensor,
    [batch, d_inner, d_state]: [usize; 3],
    chunks: usize,
    fast: bool,
) {
    let empty = |shape: Vec<usize>| {
        empty_device_contiguous_dtype(
            client.clone(),
            state.device.clone(),
            Shape::from(shape),
            DType::F32,
        )
    };
    // SAFETY (all launches): threads past their work item count return at once; every other
    // index is below the length of its tensor (`k < chunks`, `g < groups`, `n < d_state`,
    // `ch < d_inner`), all tensors being contiguous with the shapes the caller states.
    let (combine_count, combine_dim) = cube_count(client, batch * d_state * d_inner);
    let group_len = group_len(chunks);
    if group_len == 0 {
        unsafe {
            scan_chunk_combine_kernel::launch_unchecked(
                client,
                combine_count,
                combine_dim,
                address,
                a.clone().into_tensor_arg(),
                h0.clone().into_tensor_arg(),
                dsum.clone().into_tensor_arg(),
                state.clone().into_tensor_arg(),
                h_last.clone().into_tensor_arg(),
                batch,
                d_inner,
                d_state,
                chunks,
                fast,
            );
        }
    } else {
        // Pass 2 over groups of chunks: each group's state from zero, then the groups'
        // incoming states (the single walk, over groups), then each chunk's within its group.
        let groups = chunks.div_ceil(group_len);
        let group_state = empty(vec![batch, groups, d_state, d_inner]);
        let group_dsum = empty(vec![batch, groups, d_inner]);
        let (group_count, group_dim) = cube_count(client, batch * groups * d_state * d_inner);
        for apply in [false, true] {
            if apply {
                unsafe {
                    scan_chunk_combine_kernel::launch_unchecked(
                        client,
                        combine_count.clone(),
                        combine_dim,
                        address,
                        a.clone().into_tensor_arg(),
                        h0.clone().into_tensor_arg(),
                        group_dsum.clone().into_tensor_arg(),
                        group_state.clone().into_tensor_arg(),
                        h_last.clone().into_tensor_arg(),
                        batch,
                        d_inner,
                        d_state,
                        groups,
                        fast,
                    );
                }
            }
            unsafe {
                scan_group_kernel::launch_unchecked(
                    client,
                    group_count.clone(),
                    group_dim,
                    address,
                    a.clone().into_tensor_arg(),
                    dsum.clone().into_tensor_arg(),
                    state.clone().into_tensor_arg(),
                    group_state.clone().into_tensor_arg(),
                    group_dsum.clone().into_tensor_arg(),
                    batch,
                    d_inner,
                    d_state,
                    chunks,
                    group_len,
                    groups,
                    fast,
                    apply,
                );
            }
        }
    }
}

/// How passes 1 and 2 read `B` ([`chunk_states`]): the tensor, its row strides in vectors
/// of `vec` floats, the element types of the activations and of `B`, and whether `Δ` is
/// `softplus(delta + bias)` (`activate`) or `delta + bias`.
pub(crate) struct ChunkRows<'a> {
    pub b: &'a CubeTensor,
    pub bs: (usize, usize),
    pub vec: usize,
    pub elems: [ElemType; 2],
    pub activate: bool,
}

/// Passes 1 and 2: the state coming into each chunk of `chunk_len` steps, `[batch, chunks,
/// d_state, d_inner]` (chunk `k` covers steps `[k·chunk_len, min((k+1)·chunk_len, len))`),
/// from `[u, delta, A, Δ bias, h0, h_last]` (`h_last`, `[batch, d_inner, d_state]`, receives
/// the state after the last step). The forward scan runs pass 3 on it; the backward kernel's
/// time chunks start from it (`scan_backward_cube.rs`).
pub(crate) fn chunk_states(
    rows: ChunkRows<'_>,
    [u, delta, a, delta_bias, h0, h_last]: [&CubeTensor; 6],
    [batch, len, d_inner, d_state]: [usize; 4],
    chunk_len: usize,
    address: AddressType,
) -> CubeTensor {
    let client = u.client.clone();
    let empty = |shape: Vec<usize>| {
        empty_device_contiguous_dtype(
            client.clone(),
            u.device.clone(),
            Shape::from(shape),
            DType::F32,
        )
    };
    let chunks = len.div_ceil(chunk_len);
    let state = empty(vec![batch, chunks, d_state, d_inner]);
    let dsum = empty(vec![batch, chunks, d_inner]);
    let fast = fast_math(&client);
    let (prefetch1, _) = scan_prefetch();
    let (depth1, _) = scan_depth();
    let (count, dim) = chunk_cubes(&client, batch * chunks, d_inner);
    // SAFETY: threads past `d_inner` read the last channel and write nothing, `t < len`,
    // `k < chunks`, `n < d_state`; `u`, `delta`, `A`, the Δ bias and the outputs are
    // contiguous with the shapes the caller states, `B` is read through its row strides in
    // whole, aligned vectors (the caller checks that `vec` divides `d_state` and the strides,
    // and that `B` starts on a vector boundary).
    unsafe {
        scan_chunk_state_kernel::launch_unchecked(
            &client,
            count,
            dim,
            address,
            rows.vec,
            u.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            a.clone().into_tensor_arg(),
            rows.b.clone().into_tensor_arg(),
            delta_bias.clone().into_tensor_arg(),
            state.clone().into_tensor_arg(),
            dsum.clone().into_tensor_arg(),
            len,
            d_inner,
            chunks,
            chunk_len,
            rows.bs.0,
            rows.bs.1,
            d_state,
            rows.vec,
            fast,
            rows.activate,
            prefetch1,
            depth1,
            rows.elems,
        );
    }
    combine_chunks(
        &client,
        address,
        a,
        h0,
        &dsum,
        &state,
        h_last,
        [batch, d_inner, d_state],
        chunks,
        fast,
    );
    state
}

/// [`chunk_states`] for f32 contiguous inputs of the shapes [`ScanInput`] states and
/// `Δ = softplus(delta + bias)`: the backward kernel's time chunks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_incoming_states(
    u: &CubeTensor,
    delta: &CubeTensor,
    a: &CubeTensor,
    b: &CubeTensor,
    delta_bias: &CubeTensor,
    h0: &CubeTensor,
    [batch, len, d_inner, d_state]: [usize; 4],
    chunk_len: usize,
    address: AddressType,
) -> CubeTensor {
    let h_last = empty_device_contiguous_dtype(
        u.client.clone(),
        u.device.clone(),
        Shape::from(vec![batch, d_inner, d_state]),
        DType::F32,
    );
    let vec = if aligned(b, vector_width(d_state)) {
        vector_width(d_state)
    } else {
        1
    };
    let f32_elem = ElemType::Float(cubecl::ir::FloatKind::F32);
    chunk_states(
        ChunkRows {
            b,
            bs: (len * d_state / vec, d_state / vec),
            vec,
            elems: [f32_elem, f32_elem],
            activate: true,
        },
        [u, delta, a, delta_bias, h0, &h_last],
        [batch, len, d_inner, d_state],
        chunk_len,
        address,
    )
}

/// The CUDA C++ that CubeCL's C++ backend writes for the scan kernels on an sm_90 device (an
/// H200), without a GPU: `(name, source)` for pass 1, 2 and 3 and the walk (where `d_state`
/// allows it, with its usual lanes) with activations `act` (f32,
/// f16 or bf16), `d_state` states, `B`/`C` read four floats at a time where `d_state` allows,
/// the approximate functions on, passes 1 and 3 with or without `prefetch` (see
/// [`scan_prefetch`]; as many steps ahead as [`scan_depth`] says). With `as_model` false the
/// kernels take 64-bit indices and apply the softplus and the SiLU gate themselves
/// (`selective_scan`'s kernels); with `as_model` true they take 32-bit indices, Δ already
/// activated and the gate as given, as the model runs them at a chunk's size
/// (`selective_scan_activated` and `_gated`). For reading the generated code and, compiled with
/// `nvcc -cubin` (or `bench/nvrtc_sass.sh`), its machine code (`bench/sass.sh`).
#[cfg(feature = "cuda")]
pub fn cuda_sources(
    act: DType,
    bc: DType,
    d_state: usize,
    prefetch: bool,
    as_model: bool,
) -> Result<Vec<(String, String)>, String> {
    use cubecl::CubeKernel;
    use cubecl::prelude::AddressType;

    let elem = activation_elem(act).ok_or_else(|| format!("no scan kernel for {act:?}"))?;
    let bc_elem = match activation_elem(bc) {
        Some(e) if bc == act || bc == DType::F32 => e,
        _ => return Err(format!("B and C in {bc:?} with activations in {act:?}")),
    };
    if d_state == 0 || d_state > MAX_D_STATE {
        return Err(format!("d_state must be 1..={MAX_D_STATE}, not {d_state}"));
    }
    let mut sm90 = Sm90::new();
    let (props, target) = (sm90.props.clone(), sm90.target.clone());
    let arg = Sm90::arg;
    let vec = vector_width(d_state);
    let dim = CubeDim::new_1d(CUBE_THREADS);
    let count = CubeCount::new_1d(1);
    let address = if as_model {
        AddressType::U32
    } else {
        AddressType::U64
    };
    let (activate, silu_gate) = (!as_model, !as_model);
    let mut compile = |name: &str, def| sm90.compile(name, def);
    // Buffers and sizes only describe the launch; the kernel's code depends on the comptime
    // arguments and the formats.
    let [u, delta, a, b, bias, state, dsum] = std::array::from_fn(|_| arg(8));
    let pass1 = scan_chunk_state_kernel::create_dummy_kernel(
        props.clone(),
        target.clone(),
        count.clone(),
        dim,
        address,
        vec,
        u,
        delta,
        a,
        b,
        bias,
        state,
        dsum,
        1, // len
        1, // d_inner
        1, // chunks
        1, // chunk_len
        1, // B stride 0
        1, // B stride 1
        d_state,
        vec,
        true, // fast
        activate,
        prefetch,
        scan_depth().0,
        [elem, bc_elem],
    );
    let [a, h0, dsum, state, h_last] = std::array::from_fn(|_| arg(8));
    let pass2 = scan_chunk_combine_kernel::create_dummy_kernel(
        props.clone(),
        target.clone(),
        count.clone(),
        dim,
        address,
        a,
        h0,
        dsum,
        state,
        h_last,
        1, // batch
        1, // d_inner
        d_state,
        1,    // chunks
        true, // fast
    );
    let [u, delta, a, b, c, d, z, bias, h_in, y, h_last] = std::array::from_fn(|_| arg(8));
    let pass3 = scan_chunk_output_kernel::create_dummy_kernel(
        props.clone(),
        target.clone(),
        count.clone(),
        dim,
        address,
        vec,
        u,
        delta,
        a,
        b,
        c,
        d,
        z,
        bias,
        h_in,
        y,
        h_last,
        1, // len
        1, // d_inner
        1, // chunks
        1, // chunk_len
        1, // z stride 0
        1, // z stride 1
        1, // B stride 0
        1, // B stride 1
        1, // C stride 0
        1, // C stride 1
        d_state,
        vec,
        false, // single_chunk
        true,  // fast
        activate,
        silu_gate,
        prefetch,
        scan_depth().1,
        [elem, bc_elem],
    );
    let lanes = walk_lanes(d_state);
    let walk_vec = vector_width(d_state / lanes);
    let channels = CUBE_THREADS as usize / lanes;
    let [u, delta, a, b, c, d, z, bias, h0, y, h_last] = std::array::from_fn(|_| arg(8));
    let walk = (d_state / lanes <= MAX_STATES_PER_LANE).then(|| {
        scan_walk_kernel::create_dummy_kernel(
            props,
            target,
            count,
            CubeDim::new_1d(CUBE_THREADS),
            address,
            walk_vec,
            u,
            delta,
            a,
            b,
            c,
            d,
            z,
            bias,
            h0,
            y,
            h_last,
            1, // len
            1, // d_inner
            0, // A row stride
            0, // D row stride
            0, // bias row stride
            1, // z stride 0
            1, // z stride 1
            1, // B stride 0
            1, // B stride 1
            1, // C stride 0
            1, // C stride 1
            d_state,
            walk_vec,
            lanes,
            channels,
            true, // fast
            activate,
            silu_gate,
            [elem, bc_elem],
        )
    });
    let mut sources = vec![
        compile("scan_chunk_state", pass1.define())?,
        compile("scan_chunk_combine", pass2.define())?,
        compile("scan_chunk_output", pass3.define())?,
    ];
    if let Some(walk) = walk {
        sources.push(compile("scan_walk", walk.define())?);
    }
    Ok(sources)
}

/// Compiling kernels to CUDA C++ for an sm_90 device (an H200) without a GPU: the device's
/// properties as CubeCL's CUDA runtime would report them, and its compiler with the options the
/// runtime uses (fast math, grid constants). For [`cuda_sources`] and
/// [`dbc_cuda_source`](super::project_cube::dbc_cuda_source).
#[cfg(feature = "cuda")]
pub(crate) struct Sm90 {
    pub props: std::sync::Arc<cubecl::ir::DeviceProperties>,
    pub target: std::sync::Arc<cubecl::ir::TargetProperties>,
    options: cubecl_cuda::CudaCompilationOptions,
    compiler: cubecl_cuda::CudaCompiler,
}

#[cfg(feature = "cuda")]
impl Sm90 {
    pub fn new() -> Self {
        use cubecl::ir::{
            DeviceIdentity, DeviceProperties, HardwareProperties, MemoryDeviceProperties,
            TargetProperties,
        };
        use cubecl::prelude::VectorSize;
        use std::sync::Arc;
        let mut props = DeviceProperties::new(
            Default::default(),
            MemoryDeviceProperties::new(1 << 36, 256),
            HardwareProperties {
                load_width: 128,
                vector_register_count: None,
                plane_size_min: 32,
                plane_size_max: 32,
                max_bindings: 1024,
                max_shared_memory_size: 227 * 1024,
                max_cube_count: (i32::MAX as u32, 65535, 65535),
                max_units_per_cube: 1024,
                max_cube_dim: (1024, 1024, 64),
                num_streaming_multiprocessors: Some(132),
                num_cpu_cores: None,
                last_level_cache_size: None,
                num_tensor_cores: Some(4),
                min_tensor_cores_dim: Some(8),
                max_vector_size: VectorSize::MAX,
                cube_mma_reserved_shared_memory: 0,
            },
            cubecl::benchmark::TimingMethod::Device,
            DeviceIdentity {
                name: "sm_90 (no device)".into(),
                fingerprint: "ptx_sm90".into(),
                physical: None,
            },
        );
        cubecl_cpp::register_supported_types(&mut props);
        let target: Arc<TargetProperties> = Arc::new(
            <cubecl_cuda::CudaRuntime as cubecl_runtime::runtime::Runtime>::target_properties(),
        );
        let mut options = cubecl_cuda::CudaCompilationOptions::default();
        options.cpp.supports_features.fast_math = true;
        options.cpp.supports_features.grid_constants = true;
        Sm90 {
            props: Arc::new(props),
            target,
            options,
            compiler: cubecl_cuda::CudaCompiler::default(),
        }
    }

    /// A buffer argument of `len` 4-byte elements, which only describes a launch.
    pub fn arg(len: usize) -> cubecl::prelude::TensorArg {
        let service =
            cubecl_common::device::ServiceId::of::<()>(cubecl::device::DeviceId::new(0, 0));
        let handle = cubecl::server::Handle::new(
            service,
            cubecl_environment::stream::StreamId::current(),
            (len * 4) as u64,
        );
        // SAFETY: the argument is only registered to describe the kernel; nothing is launched.
        unsafe { cubecl::prelude::TensorArg::from_raw_parts(handle, [1].into(), [len].into()) }
    }

    /// `(name, CUDA C++)` of one kernel definition.
    pub fn compile(
        &mut self,
        name: &str,
        def: cubecl::prelude::KernelDefinition,
    ) -> Result<(String, String), String> {
        use cubecl::Compiler;
        self.compiler
            .compile(def, &self.options)
            .map(|k| (name.to_string(), k.to_string()))
            .map_err(|e| format!("{name}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_sources_need_no_device() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let sources = cuda_sources(dtype, dtype, 16, false, false).unwrap();
            let names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "scan_chunk_state",
                    "scan_chunk_combine",
                    "scan_chunk_output",
                    "scan_walk"
                ]
            );
            for (name, source) in &sources {
                assert!(source.contains("__global__"), "{name}: no kernel");
                assert!(
                    source.contains("ex2.approx.ftz.f32"),
                    "{name}: not the approximate decay"
                );
            }
        }
        assert!(cuda_sources(DType::F32, DType::F32, 0, false, false).is_err());
        assert!(cuda_sources(DType::I32, DType::I32, 16, false, false).is_err());
        assert!(cuda_sources(DType::F32, DType::F16, 16, false, false).is_err());
        // The prefetching variant is different code.
        let plain = cuda_sources(DType::F16, DType::F16, 16, false, false).unwrap();
        let ahead = cuda_sources(DType::F16, DType::F16, 16, true, false).unwrap();
        assert_ne!(plain[0].1, ahead[0].1);
        assert_eq!(plain[1].1, ahead[1].1);
        assert_ne!(plain[2].1, ahead[2].1);
        // So is reading B and C in f32 with half activations (passes 1 and 3 only).
        let wide = cuda_sources(DType::F16, DType::F32, 16, false, false).unwrap();
        assert_ne!(plain[0].1, wide[0].1);
        assert_eq!(plain[1].1, wide[1].1);
        assert_ne!(plain[2].1, wide[2].1);
        // And the model's variant (32-bit indices, Δ activated, the gate as given).
        let model = cuda_sources(DType::F16, DType::F16, 16, false, true).unwrap();
        assert_ne!(plain[0].1, model[0].1);
        assert_ne!(plain[2].1, model[2].1);
    }

    #[test]
    fn scan_depths_parse() {
        assert_eq!(parse_depths("3"), Some((3, 3)));
        assert_eq!(parse_depths("3,2"), Some((3, 2)));
        assert_eq!(parse_depths(" 4 , 1 "), Some((4, 1)));
        for bad in ["", "0", "5", "3,", ",2", "3,0", "x", "3,2,1"] {
            assert_eq!(parse_depths(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn groups_cover_the_chunks() {
        // (Unless GENOMAMBA_SCAN_GROUP_LEN is set, which tuning runs do, not tests.)
        if std::env::var_os("GENOMAMBA_SCAN_GROUP_LEN").is_some() {
            return;
        }
        for chunks in 1..5000 {
            let len = group_len(chunks);
            if chunks < GROUP_MIN_CHUNKS {
                assert_eq!(len, 0, "chunks {chunks}");
                continue;
            }
            assert!(len >= 2 && len < chunks, "chunks {chunks}: {len}");
            let groups = chunks.div_ceil(len);
            assert!((groups - 1) * len < chunks, "chunks {chunks}: {len}");
            // About √chunks each: neither walk is more than one step longer than the other.
            assert!(
                len.abs_diff(groups) <= 1,
                "chunks {chunks}: {len} x {groups}"
            );
        }
    }

    #[test]
    fn many_rows_run_whole_rows_in_pass_3_alone() {
        // Below WHOLE_ROWS_THREADS rows × channels the walk (or chunks); from it one chunk per
        // row and no walk. (Unit tests leave the path at its automatic choice.)
        if scan_path() != ScanPath::Auto {
            return;
        }
        for (batch, d_inner) in [(128, 1024), (256, 512), (1024, 1024), (1 << 17, 1)] {
            assert!(batch * d_inner >= WHOLE_ROWS_THREADS);
            assert_eq!(walk_choice(batch, d_inner, 16), None, "{batch} x {d_inner}");
            let p = Plan::new(batch, 4096, d_inner, 16);
            assert_eq!((p.chunks, p.chunk_len), (1, 4096), "{batch} x {d_inner}");
        }
        assert_eq!(walk_choice(64, 1024, 16), Some(4));
        assert_eq!(walk_choice(64, 1024, 7), Some(1));
        assert!(Plan::new(1, 1 << 20, 1024, 16).chunks > 1);
    }

    #[test]
    fn plan_covers_the_sequence() {
        for batch in [1, 2, 7] {
            for d_inner in [1, 37, 1024, 1536] {
                for d_state in [1, 6, 16, 64] {
                    for len in [1, 2, 63, 64, 65, 1000, 4096, 2049, 1 << 20] {
                        let p = Plan::new(batch, len, d_inner, d_state);
                        assert!(p.chunks >= 1 && p.chunk_len >= 1, "{p:?}");
                        assert!(p.chunks * p.chunk_len >= len, "{p:?} len {len}");
                        assert!((p.chunks - 1) * p.chunk_len < len, "{p:?} len {len}");
                        assert!(p.chunk_len >= MIN_CHUNK.min(len), "{p:?} len {len}");
                        assert_eq!(d_state % p.vec, 0, "{p:?}");
                    }
                }
            }
        }
    }
}
