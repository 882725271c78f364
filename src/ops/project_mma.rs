//! The block's in_proj and out_proj (and other projections with an inner dimension of at most
//! [`GEMM_MAX_K`]) on tensor cores through inline PTX, for f16/bf16 activations on CUDA:
//! [`gemm_rows_kernel`].
//!
//! The projections' inner dimensions are short (256 and 512 at d_model 256) and their rows
//! many (a chunk of 262,144 positions): a cube keeps one band of the weight's columns in shared
//! memory for a whole run of rows, and each warp holds the `x` rows of its tile in registers for
//! all of `k`, so the weight is read from memory once per cube and each row of `x` once per
//! band. On the H200 cubek's kernel for in_proj is bound by L2 traffic (ncu: L2 throughput 90%,
//! tensor pipe 37%; BENCHMARKS.md, nineteenth session).
//!
//! The product is computed transposed (`outᵀ = wᵀ · xᵀ`): the tensor core's `b` operand is two
//! registers of one row of `x`, which a lane's 16-byte load of its row provides as loaded, and
//! its `a` operand comes from shared memory, where the band was stored once in that operand's
//! order. Computing `x · w` directly (`x` as `a`, rows `g` and `g + 8` in each operand) made
//! `ptxas` assemble every `a` operand with register moves: `IMAD`/`MOV` were two thirds of the
//! executed instructions and in_proj took 469 us; transposed, 337 us (BENCHMARKS.md, twentieth
//! session).
//!
//! For in_proj the epilogue can also apply the gate's SiLU to the `z` columns
//! ([`project_mma_gated`]); each cube's band is then taken as groups of 64 columns strided
//! over the output, so that every cube gates about as many columns as the others.
//!
//! On a compute capability 9.0 GPU (H100, H200) the problems this kernel takes with an inner
//! dimension up to 256 (or 512 without the norm) and outputs a multiple of 128 go to
//! [`project_wgmma`](super::project_wgmma) instead, Hopper's warpgroup instruction with the same
//! epilogues and the same outputs.
//!
//! `GENOMAMBA_GEMM_MMA=off` goes back to cubek (for comparisons), as does choosing a cubek
//! strategy. For tuning runs (results do not depend on them): `GENOMAMBA_GEMM_BAND` (64, 128
//! or 256 columns per band), `GENOMAMBA_GEMM_ROWS` (16 or 32 rows per warp tile),
//! `GENOMAMBA_GEMM_WARPS` (warps per cube), `GENOMAMBA_GEMM_CUBES` (cubes per multiprocessor).

use burn::backend::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::AddressType;
use cubecl::prelude::*;

use super::project_cube::{NamedChoice, mma_16x8x16, pack2, strategy_chosen, unpack_hi, unpack_lo};
use super::scan_cube::{fast_math, positive_env, silu};

/// Largest inner dimension [`project_mma`] takes: a lane holds `k / 8` words of `x` per 8 rows
/// of its tile in registers (128 for 32-row tiles at `k` 256, and for 16-row tiles at 512).
pub const GEMM_MAX_K: usize = 512;

/// Largest inner dimension for warp tiles of 32 rows; longer ones take 16.
const MAX_K_32_ROWS: usize = 256;

/// Warps per cube unless `GENOMAMBA_GEMM_WARPS` says otherwise.
const WARPS: usize = 8;

/// Cubes per multiprocessor the launch aims for unless `GENOMAMBA_GEMM_CUBES` says otherwise:
/// one, since a cube of [`WARPS`] warps with 32-row tiles takes 232 registers per thread on the
/// H200 (205 for out_proj's 16-row tiles at `k` 512) and its band up to 128 KiB of shared
/// memory.
const CUBES_PER_SM: usize = 1;

static GEMM_MMA: NamedChoice = NamedChoice::new("GENOMAMBA_GEMM_MMA");
static GEMM_BAND: NamedChoice = NamedChoice::new("GENOMAMBA_GEMM_BAND");

/// Row tiles of 16 per warp unless `GENOMAMBA_GEMM_ROWS` (16 or 32 rows) says otherwise.
const ROW_TILES: usize = 2;

static GEMM_ROWS: NamedChoice = NamedChoice::new("GENOMAMBA_GEMM_ROWS");

/// Makes later projections use warp tiles of `rows` rows (16 or 32), or the usual
/// [`ROW_TILES`] with `None` (for tests and tuning; `GENOMAMBA_GEMM_ROWS` does the same).
pub fn set_gemm_rows(rows: Option<usize>) {
    GEMM_ROWS.set(rows.map(|r| r.to_string()).as_deref());
}

/// Row tiles of 16 per warp: [`set_gemm_rows`] or `GENOMAMBA_GEMM_ROWS` where it says 16 or
/// 32, else [`ROW_TILES`].
fn row_tiles() -> usize {
    match GEMM_ROWS.get().as_deref() {
        Some("16") => 1,
        Some("32") => 2,
        _ => ROW_TILES,
    }
}

static GEMM_MMA_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

static GEMM_GATED_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

static GEMM_RESIDUAL_LAUNCHES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

static GEMM_NORM_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many of [`gemm_mma_launches`] added the residual stream in the epilogue (for tests).
pub fn gemm_residual_launches() -> usize {
    GEMM_RESIDUAL_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many of [`gemm_mma_launches`] applied RMSNorm to their input (for tests).
pub fn gemm_norm_launches() -> usize {
    GEMM_NORM_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many of [`gemm_mma_launches`] applied the gate's SiLU in the epilogue (for tests).
pub fn gemm_gated_launches() -> usize {
    GEMM_GATED_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many times so far a projection ran as [`gemm_rows_kernel`] (for tests).
pub fn gemm_mma_launches() -> usize {
    GEMM_MMA_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes later projections use bands of `columns` columns (64, 128 or 256) where they divide
/// the output, or the usual choice with `None` (for tests and tuning).
pub fn set_gemm_band(columns: Option<usize>) {
    GEMM_BAND.set(columns.map(|c| c.to_string()).as_deref());
}

/// Bytes of shared memory for a band of `band` columns of a weight with `k` rows: each value
/// once, as the operands of the `mma` that use it ([`fill_band`]).
const fn smem_bytes(band: usize, k: usize) -> usize {
    band * k * 2
}

/// The band width: `GENOMAMBA_GEMM_BAND` (or [`set_gemm_band`]) where it is 64, 128 or 256,
/// divides `n` and fits `max_smem`, else the widest of those that does. On the H200 (262,144
/// rows; BENCHMARKS.md, twentieth session) in_proj (`k` 256, `n` 1,024) took 337 us with bands
/// of 256 and 32-row tiles, 497 us with 16-row tiles, 468 us with 16-row tiles, bands of 128
/// and two cubes per multiprocessor; out_proj (`k` 512, `n` 256, bands of 128) 227 us.
fn band_for(k: usize, n: usize, max_smem: usize) -> Option<usize> {
    let fits = |b: usize| n.is_multiple_of(b) && smem_bytes(b, k) <= max_smem;
    let forced = GEMM_BAND.get().and_then(|v| v.parse::<usize>().ok());
    if let Some(b) = forced.filter(|&b| [64, 128, 256].contains(&b) && fits(b)) {
        return Some(b);
    }
    [256, 128, 64].into_iter().find(|&b| fits(b))
}

/// `x · w` by [`gemm_rows_kernel`] if it takes the problem: a CUDA device, `x`
/// (`[batch, len, k]`) and `w` (`[1, k, n]`) both f16 or both bf16, `k` a multiple of 32 up to
/// [`GEMM_MAX_K`] whose band fits shared memory, `n` a multiple of 64, both contiguous from
/// 16-byte boundaries; `None` otherwise (and when `GENOMAMBA_GEMM_MMA=off`, `k` is above
/// `GENOMAMBA_GEMM_MAX_K`, or a cubek strategy was chosen). Past `k` 256 warp tiles are 16 rows
/// whatever `GENOMAMBA_GEMM_ROWS` says (registers).
pub(crate) fn project_mma(x: &CubeTensor, w3: &CubeTensor) -> Option<CubeTensor> {
    project_mma_gated(x, w3, None)
}

/// [`project_mma`], with `gate_from` also SiLU on the output columns from there on (in f32,
/// before the rounding; in_proj with the gate's activation): the kernel takes it where
/// `gate_from` is a multiple of 64 (its epilogue's groups of columns), else `None`.
pub(crate) fn project_mma_gated(
    x: &CubeTensor,
    w3: &CubeTensor,
    gate_from: Option<usize>,
) -> Option<CubeTensor> {
    project_mma_with(x, w3, gate_from, None, None).map(|(out, _)| out)
}

/// out_proj with the residual add: `(round(stream + round(x · w)), stream + round(x · w))`,
/// the second in f32 (the next residual stream), the first in the format of `x` (the input
/// of the next block's [`project_mma_norm`]); `stream` is f32 `[batch, len, n]`. `None` where
/// [`project_mma`] would be, or where `stream` is not f32, contiguous, of that shape and on a
/// 16-byte boundary.
pub(crate) fn project_mma_residual(
    x: &CubeTensor,
    w3: &CubeTensor,
    stream: &CubeTensor,
) -> Option<(CubeTensor, CubeTensor)> {
    let (out, sum) = project_mma_with(x, w3, None, Some(stream), None)?;
    Some((out, sum?))
}

/// in_proj of RMSNorm(`x`): `s_r · (x · diag(norm) w)` with `s_r = 1 / sqrt(mean(x_r²) + eps)`
/// per row (the sum of squares in f32 from the 16-bit `x`, the norm's scale folded into the
/// weight as the cube copies it to shared memory, rounded once) and SiLU from `gate_from` as
/// [`project_mma_gated`]. `norm` is f32 `[k]`. `None` where [`project_mma_gated`] would be.
pub(crate) fn project_mma_norm(
    x: &CubeTensor,
    w3: &CubeTensor,
    norm: &CubeTensor,
    eps: f64,
    gate_from: Option<usize>,
) -> Option<CubeTensor> {
    project_mma_with(x, w3, gate_from, None, Some((norm, eps))).map(|(out, _)| out)
}

/// [`gemm_rows_kernel`] with its optional epilogues: the gate's SiLU from `gate_from`, the
/// residual add onto `stream` (then also the f32 sum), RMSNorm of `x` with scale `norm.0` and
/// epsilon `norm.1`.
fn project_mma_with(
    x: &CubeTensor,
    w3: &CubeTensor,
    gate_from: Option<usize>,
    stream: Option<&CubeTensor>,
    norm: Option<(&CubeTensor, f64)>,
) -> Option<(CubeTensor, Option<CubeTensor>)> {
    if gate_from.is_some_and(|f| !f.is_multiple_of(64)) {
        return None;
    }
    let client = x.client.clone();
    let bf16 = match x.dtype {
        DType::F16 => false,
        DType::BF16 => true,
        _ => return None,
    };
    if !fast_math(&client) || GEMM_MMA.get().as_deref() == Some("off") || strategy_chosen() {
        return None;
    }
    let (xs, ws) = (x.shape().to_vec(), w3.shape().to_vec());
    let ([batch, len, k], [1, k2, n]) = (xs.as_slice(), ws.as_slice()) else {
        return None;
    };
    let (batch, len, k, n) = (*batch, *len, *k, *n);
    let rows = batch * len;
    if k != *k2
        || k == 0
        || k > GEMM_MAX_K
        || positive_env("GENOMAMBA_GEMM_MAX_K").is_some_and(|m| k > m)
        || !k.is_multiple_of(32)
        || n == 0
        || rows == 0
        || w3.dtype != x.dtype
    {
        return None;
    }
    let hardware = &client.properties().hardware;
    let band = band_for(k, n, hardware.max_shared_memory_size)?;
    let aligned = |t: &CubeTensor| (t.handle.offset_start.unwrap_or(0) as usize).is_multiple_of(16);
    let x = into_contiguous(x.clone());
    let w = into_contiguous(w3.clone());
    if x.meta.strides()[..] != [len * k, k, 1]
        || w.meta.strides()[..] != [k * n, n, 1]
        || !aligned(&x)
        || !aligned(&w)
    {
        return None;
    }
    let empty = |dims: Vec<usize>, dtype: DType| {
        burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            client.clone(),
            x.device.clone(),
            burn::tensor::Shape::from(dims),
            dtype,
        )
    };
    let stream = match stream {
        Some(s) => {
            let s = into_contiguous(s.clone());
            let ok = s.dtype == DType::F32
                && s.shape().to_vec() == [batch, len, n]
                && s.meta.strides()[..] == [len * n, n, 1]
                && aligned(&s);
            if !ok {
                return None;
            }
            Some(s)
        }
        None => None,
    };
    let norm = match norm {
        Some((w, eps)) => {
            let w = into_contiguous(w.clone());
            if w.dtype != DType::F32 || w.shape().to_vec() != [k] {
                return None;
            }
            Some((w, eps))
        }
        None => None,
    };
    let out = empty(vec![batch, len, n], x.dtype);
    // Tensors the kernel's unused epilogues are given and never touch.
    let sum = stream
        .as_ref()
        .map(|_| empty(vec![batch, len, n], DType::F32));
    let unused = || empty(vec![4], DType::F32);
    let (res_arg, sum_arg) = match (&stream, &sum) {
        (Some(s), Some(t)) => (s.clone(), t.clone()),
        _ => (unused(), unused()),
    };
    let (nw_arg, eps) = match &norm {
        Some((w, eps)) => (w.clone(), *eps as f32),
        None => (unused(), 0.0),
    };
    let gate = gate_from.is_some_and(|f| f < n);
    if super::project_wgmma::launch_wgmma(
        &x,
        &w,
        &out,
        &res_arg,
        &sum_arg,
        &nw_arg,
        [rows, k, n],
        gate_from.unwrap_or(n),
        eps,
        [bf16, gate, stream.is_some(), norm.is_some()],
    ) {
        GEMM_MMA_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        count_epilogues(gate, stream.is_some(), norm.is_some());
        return Some((out, sum));
    }
    let row_tiles = if k > MAX_K_32_ROWS { 1 } else { row_tiles() };
    let warps = positive_env("GENOMAMBA_GEMM_WARPS")
        .filter(|&w| w <= 32)
        .unwrap_or(WARPS);
    // Persistent cubes: `CUBES_PER_SM` per multiprocessor, the bands of one run of
    // rows side by side (consecutive cubes), so that they read those rows of `x` at about
    // the same time (from L2 after the first).
    let sms = hardware.num_streaming_multiprocessors.unwrap_or(132) as usize;
    let per_sm = positive_env("GENOMAMBA_GEMM_CUBES").unwrap_or(CUBES_PER_SM);
    let bands = n / band;
    let tiles = rows.div_ceil(16 * row_tiles);
    let slices = (sms * per_sm / bands).clamp(1, tiles.div_ceil(warps));
    let tiles_per_slice = tiles.div_ceil(slices);
    let slices = tiles.div_ceil(tiles_per_slice);
    let cubes = u32::try_from(slices * bands).ok()?;
    let address = AddressType::from_len((rows * k).max(rows * n).max(k * n));
    // SAFETY: a cube reads the band `[n0, n0 + band)` of `w` (`n0 + band <= n`, rows below
    // `k`), or with the gate its groups of 64 columns `p · bands + bi < n / 64`, and rows of
    // `x` below `rows` (clamped to `rows - 1`), columns below `k`; it writes rows below `rows`
    // of `out`, columns inside its band (or groups). All three are contiguous, start on
    // 16-byte boundaries and have rows of a multiple of 8 16-bit values (`k` of 32, `n` of
    // 64), so every 16-byte vector read or written lies inside them. With the residual add it
    // reads and writes the same rows and columns of `stream` and `sum` (f32 `[rows, n]`,
    // contiguous, from 16-byte boundaries: 4-value vectors `row · n / 4 + 2 · col8 + 0..2`);
    // with the norm it reads `norm[0..k]`. Unused epilogues' tensors are never touched. Shared memory holds
    // `band · k / 8` vectors (`band / 16` tiles x `k / 16` steps x 32 lanes) and is indexed
    // below that.
    unsafe {
        gemm_rows_kernel::launch_unchecked(
            &client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_2d(32, warps as u32),
            address,
            4,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            res_arg.into_tensor_arg(),
            sum_arg.into_tensor_arg(),
            nw_arg.into_tensor_arg(),
            rows,
            n,
            tiles_per_slice,
            gate_from.unwrap_or(n),
            eps,
            1.0 / k as f32,
            k,
            band,
            row_tiles,
            bf16,
            gate,
            stream.is_some(),
            norm.is_some(),
        );
    }
    GEMM_MMA_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    count_epilogues(gate, stream.is_some(), norm.is_some());
    Some((out, sum))
}

/// Counts a launch's epilogues (for tests).
fn count_epilogues(gate: bool, residual: bool, norm: bool) {
    if gate {
        GEMM_GATED_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if residual {
        GEMM_RESIDUAL_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if norm {
        GEMM_NORM_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies the band of columns `[n0, n0 + band)` of `w` (`[k, n]`, rows of `nv` 16-byte
/// vectors) into `wt` as the `a` operands of the `mma` that use it (the product is computed
/// transposed, `outᵀ = wᵀ · xᵀ`, so the weight is the tensor core's `a`): one 16-byte vector
/// per lane, `mma` tile (16 band columns) and step of 16 `k`, the 32 lanes' vectors adjacent, so
/// that a warp reads one operand as 512 contiguous bytes and `mma` takes its four registers as
/// loaded. See [`gemm_rows_kernel`] for which columns and `k` each vector holds. The cube's
/// threads take items of 8 columns x 8 `k` (eight 16-byte loads of rows `8kb..` at columns
/// `n0 + 8q..`, eight 16-byte stores); a barrier ends it.
///
/// With `strided`, the band's columns are not one range but its `band / 64` groups of 64,
/// group `p` being the weight's group `p · bands + bi` (see [`gemm_rows_kernel`]).
#[cube]
#[allow(clippy::too_many_arguments)]
fn fill_band<V: Size>(
    w: &Tensor<Vector<u32, V>>,
    nw: &Tensor<f32>,
    wt: &mut Shared<[Vector<u32, V>]>,
    n0: usize,
    nv: usize,
    bi: usize,
    bands: usize,
    #[comptime] k: usize,
    #[comptime] band: usize,
    #[comptime] strided: bool,
    #[comptime] norm: bool,
    #[comptime] bf16: bool,
) {
    let groups = comptime!(band / 8);
    let kv = comptime!(k / 8);
    let ksteps = comptime!(k / 16);
    let threads = CUBE_DIM_Y as usize * 32;
    let mut item = UNIT_POS_Y as usize * 32 + UNIT_POS_X as usize;
    while item < comptime!(groups * kv) {
        let q = item % groups;
        let kb = item / groups;
        // The weight's vector (of 8 columns) that item column `q` holds.
        let col8 = if strided {
            ((q / 8) * bands + bi) * 8 + q % 8
        } else {
            n0 / 8 + q
        };
        let mut words = Array::<u32>::new(32usize);
        #[unroll]
        for r in 0..8usize {
            let v = w[(kb * 8 + r) * nv + col8];
            // With `norm`, weight row `k` times the norm's scale `nw[k]` (rounded once).
            #[unroll]
            for e in 0..4usize {
                if norm {
                    let scale = nw[kb * 8 + r];
                    let word = v.extract(e);
                    words[r * 4 + e] = pack2(
                        unpack_lo(word, bf16) * scale,
                        unpack_hi(word, bf16) * scale,
                        bf16,
                    );
                } else {
                    words[r * 4 + e] = v.extract(e);
                }
            }
        }
        // Columns `8q + 2j`, `8q + 2j + 1` are rows `g` and `g + 8` of `mma` tile `4p + j`
        // (`p = q / 8`, `g = q % 8`); `k` rows `8kb + 4sh ..+ 4` are lane `4g + kb % 4`'s
        // operand at step `2·(kb / 4) + sh`.
        let p = q / 8;
        let lane = (q % 8) * 4 + kb % 4;
        #[unroll]
        for sh in 0..2usize {
            let s = 2 * (kb / 4) + sh;
            #[unroll]
            for j in 0..4usize {
                let mut quad = Vector::<u32, V>::empty();
                #[unroll]
                for half in 0..2usize {
                    // Two `k` of column `8q + 2j` (low halves), then of column `8q + 2j + 1`.
                    let lo = words[(4 * sh + 2 * half) * 4 + j];
                    let hi = words[(4 * sh + 2 * half + 1) * 4 + j];
                    quad.insert(2 * half, (lo & 0xFFFFu32) | (hi << 16u32));
                    quad.insert(2 * half + 1, (lo >> 16u32) | (hi & 0xFFFF0000u32));
                }
                wt[((p * 4 + j) * ksteps + s) * 32 + lane] = quad;
            }
        }
        item += threads;
    }
    sync_cube();
}

/// `out = x · w` for 16-bit `x` (`[rows, k]`, `k` at most 256), `w` (`[k, n]`) and `out`
/// (`[rows, n]`), with f32 accumulators; all three read and written as 16-byte vectors (`V` =
/// 4 words). The tensor cores compute `outᵀ = wᵀ · xᵀ` (`mma.m16n8k16`: 16 columns of the
/// band by 8 rows of `x`), so that `x`, the `b` operand, needs two registers of one row per
/// `mma`, which a lane's 16-byte loads of its row provide as loaded, and the weight, the `a`
/// operand, comes from shared memory already in the operand's order ([`fill_band`]): no
/// register moves between loading and `mma`.
///
/// Cube `c` takes the band of columns `[n0, n0 + band)`, `n0 = (c % bands)·band`, and the run
/// of tiles `[s·tiles_per_slice, (s+1)·tiles_per_slice)`, `s = c / bands`, of `16·row_tiles`
/// rows each:
/// 1. its threads copy the band into shared memory ([`fill_band`]);
/// 2. each warp takes every `CUBE_DIM_Y`-th tile of the run. Lane `4g + c` loads, for every 32
///    of `k`, 16 bytes of row `g` of each 8-row part of the tile (`k` `8c..8c+8` of the 32),
///    all at once; the first two words are its `b` operand for the first 16 of the 32, the
///    last two for the second (the tensor core's `k` order is permuted to match: logical
///    pairs `c` and `c + 4` of a step are the lane's words `2h` and `2h + 1`; the weight's
///    operands follow the same order, so the sum is the same);
/// 3. it computes the band 64 columns at a time: per step of 16 `k`, four 16-byte reads from
///    shared memory (one per `mma` tile of 16 columns) each feed `2·row_tiles` `mma`, one per
///    8 rows. Tile `j`'s row `m` is band column `64p + 8·(m % 8) + 2j + m / 8`, so that lane
///    `4g + c` ends with columns `8g..8g+8` of rows `2c` and `2c + 1` of each 8-row part, which
///    it rounds and writes as 16 bytes per row.
///
/// Rows of `x` past `rows` are read as the last row; their outputs are not written.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn gemm_rows_kernel<V: Size>(
    x: &Tensor<Vector<u32, V>>,
    w: &Tensor<Vector<u32, V>>,
    out: &mut Tensor<Vector<u32, V>>,
    res: &Tensor<Vector<f32, V>>,
    sum: &mut Tensor<Vector<f32, V>>,
    nw: &Tensor<f32>,
    rows: usize,
    n: usize,
    tiles_per_slice: usize,
    gate_from: usize,
    eps: f32,
    inv_k: f32,
    #[comptime] k: usize,
    #[comptime] band: usize,
    #[comptime] row_tiles: usize,
    #[comptime] bf16: bool,
    #[comptime] gate: bool,
    #[comptime] residual: bool,
    #[comptime] norm: bool,
) {
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let group = lane / 4;
    let quad = lane % 4;
    let blocks = comptime!(k / 32);
    let ksteps = comptime!(k / 16);
    // 8-row parts of a warp's tile (the `n` of each `mma`).
    let parts = comptime!(2 * row_tiles);
    let kv = comptime!(k / 8);
    let bands = n / band;
    let cube = CUBE_POS_X as usize;
    let bi = cube % bands;
    let n0 = bi * band;
    let slice = cube / bands;
    let nv = n / 8;

    // With `gate`, the band's groups of 64 columns are strided over the output (group `p` is
    // the output's group `p · bands + bi`), so that every cube has about as many gated columns
    // as the others: on the H200 a band of only gated columns made its cubes, and so the
    // kernel, 66 us slower (in_proj at 262,144 rows).
    let mut wt = Shared::<[Vector<u32, V>]>::new_slice(comptime!(band * k / 8));
    fill_band(w, nw, &mut wt, n0, nv, bi, bands, k, band, gate, norm, bf16);

    let tile_rows = comptime!(16 * row_tiles);
    let tiles = rows.div_ceil(tile_rows);
    let begin = slice * tiles_per_slice;
    let end_run = begin + tiles_per_slice;
    let end = if end_run < tiles { end_run } else { tiles };
    let last = rows - 1;
    let mut tile = begin + warp;
    while tile < end {
        let r0 = tile * tile_rows;
        // Word `e` of the lane's vector `b` of part `t` at `(t·blocks + b)·4 + e`.
        let mut xw = Array::<u32>::new(comptime!(parts * blocks * 4));
        #[unroll]
        for t in 0..parts {
            let r = r0 + 8 * t + group;
            let start = (if r < last { r } else { last }) * kv + quad;
            #[unroll]
            for b in 0..blocks {
                let v = x[start + 4 * b];
                #[unroll]
                for e in 0..4usize {
                    xw[(t * blocks + b) * 4 + e] = v.extract(e);
                }
            }
        }
        // With `norm`, RMSNorm's `1 / sqrt(mean(x²) + eps)` of the rows whose outputs this
        // lane ends with (rows `2c` and `2c + 1` of each part, at `2t` and `2t + 1`): row `g`
        // of part `t` is spread over lanes `4g..4g + 4`, whose sums of squares are added across
        // the four, and each lane then takes its two rows' scales from lanes `8c` and `8c + 4`.
        let mut scale = Array::<f32>::new(comptime!(2 * parts));
        if norm {
            #[unroll]
            for t in 0..parts {
                let mut ss = 0.0f32;
                #[unroll]
                for i in 0..comptime!(blocks * 4) {
                    let word = xw[t * comptime!(blocks * 4) + i];
                    let lo = unpack_lo(word, bf16);
                    let hi = unpack_hi(word, bf16);
                    ss += lo * lo + hi * hi;
                }
                ss += plane_shuffle_xor(ss, 1u32);
                ss += plane_shuffle_xor(ss, 2u32);
                let inv = (ss * inv_k + eps).inverse_sqrt();
                scale[2 * t] = plane_shuffle(inv, (8 * quad) as u32);
                scale[2 * t + 1] = plane_shuffle(inv, (8 * quad + 4) as u32);
            }
        }
        let mut p = 0;
        while p < comptime!(band / 64) {
            // Accumulator of `mma` tile `j`, part `t` at `(j·parts + t)·4`.
            let mut acc = Array::<f32>::new(comptime!(4 * parts * 4));
            #[unroll]
            for i in 0..comptime!(4 * parts * 4) {
                acc[i] = 0.0f32;
            }
            // The output's group of 64 columns this `p` computes.
            let g64 = if gate { p * bands + bi } else { n0 / 64 + p };
            let col = g64 * 8 + group;
            // With `residual`, the stream's values for this group (rows `2c + e` of each part,
            // two vectors of 4 per row) are loaded before the products, so that their latency
            // passes under the tensor-core work (loaded in the epilogue, out_proj took 405 us at
            // 262,144 rows against 228 us without the add). Rows past `rows` read the last.
            let mut stream = Array::<Vector<f32, V>>::new(comptime!(parts * 4));
            if residual {
                #[unroll]
                for t in 0..parts {
                    #[unroll]
                    for e in 0..2usize {
                        let row = r0 + 8 * t + 2 * quad + e;
                        let rb = (if row < last { row } else { last }) * (n / 4) + 2 * col;
                        #[unroll]
                        for hv in 0..2usize {
                            stream[(t * 2 + e) * 2 + hv] = res[rb + hv];
                        }
                    }
                }
            }
            let base = p * comptime!(4 * ksteps * 32) + lane;
            #[unroll]
            for s in 0..ksteps {
                #[unroll]
                for j in 0..4usize {
                    let wq = wt[base + (j * ksteps + s) * 32];
                    let mut af = Vector::<u32, Const<4>>::empty();
                    #[unroll]
                    for e in 0..4usize {
                        af.insert(e, wq.extract(e));
                    }
                    #[unroll]
                    for t in 0..parts {
                        let f = (t * blocks + s / 2) * 4 + 2 * (s % 2);
                        let mut bw = Vector::<u32, Const<2>>::empty();
                        bw.insert(0usize, xw[f]);
                        bw.insert(1usize, xw[f + 1]);
                        let at = (j * parts + t) * 4;
                        let mut cv = Vector::<f32, Const<4>>::empty();
                        #[unroll]
                        for e in 0..4usize {
                            cv.insert(e, acc[at + e]);
                        }
                        let d = mma_16x8x16(af, bw, cv, bf16);
                        #[unroll]
                        for e in 0..4usize {
                            acc[at + e] = d.extract(e);
                        }
                    }
                }
            }
            if norm {
                // Element `e` (and `2 + e`) of each accumulator is row `2c + e`.
                #[unroll]
                for jt in 0..comptime!(4 * parts) {
                    let t = jt % parts;
                    #[unroll]
                    for e in 0..4usize {
                        acc[jt * 4 + e] *= scale[2 * t + e % 2];
                    }
                }
            }
            // With `gate`, columns from `gate_from` on (a multiple of 64, so whole groups of
            // 64) leave as SiLU of their sums. (`gate` is resolved when the kernel is
            // expanded, the column test when it runs.)
            #[allow(clippy::collapsible_if)]
            if gate {
                if g64 * 64 >= gate_from {
                    #[unroll]
                    for i in 0..comptime!(4 * parts * 4) {
                        acc[i] = silu(acc[i], true);
                    }
                }
            }
            #[unroll]
            for t in 0..parts {
                #[unroll]
                for e in 0..2usize {
                    // Row `2c + e` of part `t`: columns `8g + 2j` (tile row `g`, element `e`)
                    // and `8g + 2j + 1` (tile row `g + 8`, element `2 + e`).
                    let mut v = Vector::<u32, V>::empty();
                    let row = r0 + 8 * t + 2 * quad + e;
                    if residual {
                        // The product rounded to the activation format, added in f32 to the
                        // residual stream's 8 values (two vectors of 4); the sum is written in
                        // f32 and, rounded again, in place of the product.
                        if row < rows {
                            let rb = row * (n / 4) + 2 * col;
                            #[unroll]
                            for hv in 0..2usize {
                                let rv = stream[(t * 2 + e) * 2 + hv];
                                let mut sv = Vector::<f32, V>::empty();
                                #[unroll]
                                for jj in 0..2usize {
                                    let i = ((2 * hv + jj) * parts + t) * 4;
                                    let word = pack2(acc[i + e], acc[i + 2 + e], bf16);
                                    let a = unpack_lo(word, bf16) + rv.extract(2 * jj);
                                    let b = unpack_hi(word, bf16) + rv.extract(2 * jj + 1);
                                    sv.insert(2 * jj, a);
                                    sv.insert(2 * jj + 1, b);
                                    v.insert(2 * hv + jj, pack2(a, b, bf16));
                                }
                                sum[rb + hv] = sv;
                            }
                            out[row * nv + col] = v;
                        }
                    } else {
                        #[unroll]
                        for j in 0..4usize {
                            let i = (j * parts + t) * 4;
                            v.insert(j, pack2(acc[i + e], acc[i + 2 + e], bf16));
                        }
                        if row < rows {
                            out[row * nv + col] = v;
                        }
                    }
                }
            }
            p += 1;
        }
        tile += CUBE_DIM_Y as usize;
    }
}

/// The CUDA C++ of [`gemm_rows_kernel`] for an sm_90 device (an H200), without a GPU, for
/// an inner dimension `k` (multiple of 32), bands of `band` columns (64, 128 or 256),
/// `row_tiles` and 16-bit activations (`bf16` or f16), with `gate` the SiLU epilogue (on all
/// columns): for reading the generated code.
#[cfg(feature = "cuda")]
pub fn gemm_cuda_source(
    bf16: bool,
    row_tiles: usize,
    k: usize,
    band: usize,
    gate: bool,
    residual: bool,
    norm: bool,
) -> Result<String, String> {
    use super::scan_cube::Sm90;
    use cubecl::CubeKernel;
    let mut sm90 = Sm90::new();
    let [x, w, out, res, sum, nw] = std::array::from_fn(|_| Sm90::arg(8));
    let kernel = gemm_rows_kernel::create_dummy_kernel(
        sm90.props.clone(),
        sm90.target.clone(),
        CubeCount::new_1d(1),
        CubeDim::new_2d(32, WARPS as u32),
        AddressType::U64,
        4,
        x,
        w,
        out,
        res,
        sum,
        nw,
        1,    // rows
        band, // n
        1,    // tiles per slice
        0,    // SiLU from column 0 (with `gate`)
        1e-5, // the norm's epsilon (with `norm`)
        1.0 / k as f32,
        k,
        band,
        row_tiles,
        bf16,
        gate,
        residual,
        norm,
    );
    sm90.compile("gemm_rows", kernel.define())
        .map(|(_, source)| source)
}

#[cfg(test)]
mod tests {
    use super::{band_for, smem_bytes};

    #[test]
    fn bands_fit_an_h200_multiprocessor() {
        // in_proj (k 256) in one band of 256 columns per H200 multiprocessor (227 KiB), or two of
        // 128.
        assert!(smem_bytes(256, 256) <= 227 * 1024);
        assert!(2 * smem_bytes(128, 256) <= 227 * 1024);
    }

    #[test]
    fn bands_are_the_widest_that_divide_and_fit() {
        let h200 = 227 * 1024;
        assert_eq!(band_for(256, 1024, h200), Some(256));
        assert_eq!(band_for(256, 384, h200), Some(128));
        assert_eq!(band_for(96, 64, h200), Some(64));
        // Less shared memory: narrower bands; none when not even 64 columns fit.
        assert_eq!(band_for(256, 1024, 100 * 1024), Some(128));
        assert_eq!(band_for(256, 1024, 30 * 1024), None);
        assert_eq!(band_for(256, 48, h200), None);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn gemm_kernel_compiles_to_tensor_core_instructions() {
        // in_proj and out_proj of the d_model 256 model; in_proj with the gate's SiLU, and
        // with the norm too; out_proj with the residual add.
        for (bf16, row_tiles, k, band, gate, residual, norm) in [
            (false, 2, 256, 256, false, false, false),
            (true, 2, 256, 256, false, false, false),
            (false, 1, 256, 256, false, false, false),
            (false, 1, 512, 128, false, false, false),
            (false, 2, 256, 256, true, false, false),
            (true, 2, 256, 256, true, false, false),
            (false, 2, 256, 256, true, false, true),
            (true, 2, 256, 256, true, false, true),
            (false, 1, 512, 128, false, true, false),
            (true, 1, 512, 128, false, true, false),
        ] {
            let source =
                super::gemm_cuda_source(bf16, row_tiles, k, band, gate, residual, norm).unwrap();
            let name = format!(
                "gemm_rows_{row_tiles}_k{k}_bf16_{bf16}_gate_{gate}_residual_{residual}_norm_{norm}"
            );
            super::super::project_cube::assert_tensor_core_mma(&name, &source, bf16);
            assert!(
                source.contains("__shared__"),
                "bf16 {bf16}: no shared memory"
            );
            // The gate's SiLU is the approximate `2^x` and reciprocal, only where asked for.
            assert_eq!(source.contains("ex2.approx"), gate, "{name}");
            // f16 values are widened by `cvt.f32.f16` only where the norm or the residual add
            // reads them.
            assert_eq!(
                source.contains("cvt.f32.f16"),
                !bf16 && (residual || norm),
                "{name}"
            );
        }
    }
}
