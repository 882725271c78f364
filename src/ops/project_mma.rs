//! The block's in_proj (and other projections with an inner dimension of at most
//! [`GEMM_MAX_K`]) on tensor cores through inline PTX, for f16/bf16 activations on CUDA:
//! [`gemm_rows_kernel`].
//!
//! in_proj's inner dimension is short (256 at d_model 256) and its rows many (a chunk of
//! 262,144 positions): a cube keeps one band of the weight's columns in shared memory for a
//! whole run of rows, and each warp holds the `x` rows of its tile in registers for all of `k`,
//! so the weight is read from memory once per cube and each row of `x` once per band. On the
//! H200 cubek's kernel for in_proj is bound by L2 traffic (ncu: L2 throughput 90%, tensor pipe
//! 37%; BENCHMARKS.md, nineteenth session).
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

use super::project_cube::{NamedChoice, mma_16x8x16, pack2, strategy_chosen};
use super::scan_cube::{fast_math, positive_env};

/// Largest inner dimension [`project_mma`] takes: a lane holds `k / 4` words of `x` per row
/// tile in registers.
pub const GEMM_MAX_K: usize = 256;

/// Warps per cube unless `GENOMAMBA_GEMM_WARPS` says otherwise.
const WARPS: usize = 8;

/// Cubes per multiprocessor the launch aims for unless `GENOMAMBA_GEMM_CUBES` says otherwise:
/// one, since a cube of [`WARPS`] warps with 32-row tiles takes about 210 registers per thread
/// and its band up to all of a multiprocessor's shared memory.
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

/// How many times so far a projection ran as [`gemm_rows_kernel`] (for tests).
pub fn gemm_mma_launches() -> usize {
    GEMM_MMA_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes later projections use bands of `columns` columns (64, 128 or 256) where they divide
/// the output, or the usual choice with `None` (for tests and tuning).
pub fn set_gemm_band(columns: Option<usize>) {
    GEMM_BAND.set(columns.map(|c| c.to_string()).as_deref());
}

/// 32-bit words per row of the weight's band in shared memory: `k / 2`, padded by 16 words
/// where it is a multiple of 32, so that the eight rows a quarter-warp reads at once fall on
/// alternate halves of the 32 banks.
const fn smem_row_words(k: usize) -> usize {
    if (k / 2).is_multiple_of(32) {
        k / 2 + 16
    } else {
        k / 2
    }
}

/// Bytes of shared memory for a band of `band` columns of a weight with `k` rows.
const fn smem_bytes(band: usize, k: usize) -> usize {
    band * smem_row_words(k) * 4
}

/// The band width: `GENOMAMBA_GEMM_BAND` (or [`set_gemm_band`]) where it is 64, 128 or 256,
/// divides `n` and fits `max_smem`, else the widest of those that does. On the H200, in_proj
/// (`k` 256, `n` 1,024, 262,144 rows) took 466-469 us with bands of 256 (one cube per
/// multiprocessor), 522-524 us with 128 (aiming at two cubes) and 591 us with 64 (three);
/// BENCHMARKS.md, nineteenth session.
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
/// 16-byte boundaries; `None` otherwise (and when `GENOMAMBA_GEMM_MMA=off` or a cubek strategy was chosen).
pub(crate) fn project_mma(x: &CubeTensor, w3: &CubeTensor) -> Option<CubeTensor> {
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
    let out = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        burn::tensor::Shape::new([batch, len, n]),
        x.dtype,
    );
    let row_tiles = row_tiles();
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
    // `k`) and rows of `x` below `rows` (clamped to `rows - 1`), columns below `k`; it writes
    // rows below `rows` of `out`, columns inside its band. All three are contiguous, start on
    // 16-byte boundaries and have rows of a multiple of 8 16-bit values (`k` of 32, `n` of
    // 64), so every 16-byte vector read or written lies inside them. Shared memory holds
    // `band` rows of `smem_row_words(k) / 4` vectors and is indexed below that.
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
            rows,
            n,
            tiles_per_slice,
            k,
            band,
            row_tiles,
            bf16,
        );
    }
    GEMM_MMA_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(out)
}

/// Copies the band of columns `[n0, n0 + band)` of `w` (`[k, n]`, rows of `nv` 16-byte
/// vectors) into `wt` transposed: row `j` holds column `n0 + j`, its `k` values in order, two
/// per word, rows `smem_row_words(k)` words apart. The cube's threads take items of 8 columns x
/// 8 `k` (eight 16-byte loads of rows `8kb..` at columns `n0 + 8cg..`, eight 16-byte stores);
/// a barrier ends it.
#[cube]
fn fill_band<V: Size>(
    w: &Tensor<Vector<u32, V>>,
    wt: &mut Shared<[Vector<u32, V>]>,
    n0: usize,
    nv: usize,
    #[comptime] k: usize,
    #[comptime] band: usize,
) {
    let groups = comptime!(band / 8);
    let kv = comptime!(k / 8);
    let sv = comptime!(smem_row_words(k) / 4);
    let threads = CUBE_DIM_Y as usize * 32;
    let mut item = UNIT_POS_Y as usize * 32 + UNIT_POS_X as usize;
    while item < comptime!(groups * kv) {
        let cg = item % groups;
        let kb = item / groups;
        let mut words = Array::<u32>::new(32usize);
        #[unroll]
        for r in 0..8usize {
            let v = w[(kb * 8 + r) * nv + n0 / 8 + cg];
            #[unroll]
            for e in 0..4usize {
                words[r * 4 + e] = v.extract(e);
            }
        }
        #[unroll]
        for i in 0..8usize {
            let mut col = Vector::<u32, V>::empty();
            #[unroll]
            for m in 0..4usize {
                // `k` 2m and 2m+1 of column i: the low or high halves of two words.
                let lo = words[2 * m * 4 + i / 2];
                let hi = words[(2 * m + 1) * 4 + i / 2];
                let word = if i % 2 == 0 {
                    (lo & 0xFFFFu32) | (hi << 16u32)
                } else {
                    (lo >> 16u32) | (hi & 0xFFFF0000u32)
                };
                col.insert(m, word);
            }
            wt[(cg * 8 + i) * sv + kb] = col;
        }
        item += threads;
    }
    sync_cube();
}

/// Lane `quad`'s 16-byte vectors of rows `g + 8i` (`i < 2·row_tiles`) of `x`, row `i` from
/// vector `starts[i]`, for `steps` steps of 32 `k`, stored as the `a` operands of the `mma`
/// that use them: for step `j`, row tile `r` (rows `g + 16r`, `g + 16r + 8`) and half `h` of
/// the 32 `k`, at `a[((j·row_tiles + r)·2 + h)·4..+4]` in the tensor core's order (row `g`
/// word `2h`, row `g+8` word `2h`, row `g` word `2h+1`, row `g+8` word `2h+1`), so that each
/// operand is four adjacent registers, arranged once per tile instead of once per `mma`.
#[cube]
fn load_rows<V: Size>(
    x: &Tensor<Vector<u32, V>>,
    a: &mut Array<u32>,
    starts: &Array<usize>,
    quad: usize,
    #[comptime] steps: usize,
    #[comptime] row_tiles: usize,
) {
    #[unroll]
    for j in 0..steps {
        #[unroll]
        for r in 0..row_tiles {
            let va = x[starts[2 * r] + 4 * j + quad];
            let vb = x[starts[2 * r + 1] + 4 * j + quad];
            #[unroll]
            for h in 0..2usize {
                let f = ((j * row_tiles + r) * 2 + h) * 4;
                a[f] = va.extract(2 * h);
                a[f + 1] = vb.extract(2 * h);
                a[f + 2] = va.extract(2 * h + 1);
                a[f + 3] = vb.extract(2 * h + 1);
            }
        }
    }
}

/// `out = x · w` for 16-bit `x` (`[rows, k]`, `k` at most 256), `w` (`[k, n]`) and `out`
/// (`[rows, n]`), with f32 accumulators; all three read and written as 16-byte vectors (`V` =
/// 4 words).
///
/// Cube `c` takes the band of columns `[n0, n0 + band)`, `n0 = (c % bands)·band`, and the run
/// of tiles `[s·tiles_per_slice, (s+1)·tiles_per_slice)`, `s = c / bands`, of `16·row_tiles`
/// rows each:
/// 1. its threads copy the band into shared memory transposed ([`fill_band`]);
/// 2. each warp takes every `CUBE_DIM_Y`-th tile of the run. A lane loads, for every 32 of `k`,
///    16 bytes of each of its rows (`g + 8i`, `g` = lane / 4), all at once (`2·k/32` loads per
///    row tile in flight together); the tensor core's `k` order is permuted to match (lane
///    `q` = lane % 4 holds `k` `8q..8q+8` of the 32, the first half for one `mma`, the second
///    for the next; `x` and the band alike, so the sum is the same);
/// 3. it computes the band `64 / row_tiles` columns at a time: per 32 of `k` and 8 columns one
///    16-byte read of a band row from shared memory feeds `2·row_tiles` `mma.m16n8k16` (two
///    halves of `k` for each 16 rows), so two row tiles halve the shared-memory reads per
///    `mma`. The band rows each lane reads are chosen so that lane `q` of a quad ends with
///    output columns `8q..8q+8` of each 32: each lane rounds them and writes 16 bytes per row.
///
/// Rows of `x` past `rows` are read as the last row; their outputs are not written.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn gemm_rows_kernel<V: Size>(
    x: &Tensor<Vector<u32, V>>,
    w: &Tensor<Vector<u32, V>>,
    out: &mut Tensor<Vector<u32, V>>,
    rows: usize,
    n: usize,
    tiles_per_slice: usize,
    #[comptime] k: usize,
    #[comptime] band: usize,
    #[comptime] row_tiles: usize,
    #[comptime] bf16: bool,
) {
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let group = lane / 4;
    let quad = lane % 4;
    let steps = comptime!(k / 32);
    // Columns per pass, their 8-column `mma` tiles and 32-column blocks.
    let cols = comptime!(64 / row_tiles);
    let n_tiles = comptime!(cols / 8);
    let blocks = comptime!(cols / 32);
    let kv = comptime!(k / 8);
    let sv = comptime!(smem_row_words(k) / 4);
    let bands = n / band;
    let cube = CUBE_POS_X as usize;
    let n0 = (cube % bands) * band;
    let slice = cube / bands;
    let nv = n / 8;

    let mut wt = Shared::<[Vector<u32, V>]>::new_slice(comptime!(band * smem_row_words(k) / 4));
    fill_band(w, &mut wt, n0, nv, k, band);

    let tile_rows = comptime!(16 * row_tiles);
    let tiles = rows.div_ceil(tile_rows);
    let begin = slice * tiles_per_slice;
    let end_run = begin + tiles_per_slice;
    let end = if end_run < tiles { end_run } else { tiles };
    let last = rows - 1;
    let mut tile = begin + warp;
    while tile < end {
        let r0 = tile * tile_rows + group;
        let mut starts = Array::<usize>::new(comptime!(2 * row_tiles));
        #[unroll]
        for i in 0..comptime!(2 * row_tiles) {
            let r = r0 + 8 * i;
            starts[i] = (if r < last { r } else { last }) * kv;
        }
        let mut a = Array::<u32>::new(comptime!(steps * row_tiles * 8));
        load_rows(x, &mut a, &starts, quad, steps, row_tiles);
        let mut cg = 0;
        while cg < band {
            // Accumulator of row tile `r`, `mma` tile `nt` at `(r·n_tiles + nt)·4`.
            let mut acc = Array::<f32>::new(comptime!(row_tiles * n_tiles * 4));
            #[unroll]
            for i in 0..comptime!(row_tiles * n_tiles * 4) {
                acc[i] = 0.0f32;
            }
            #[unroll]
            for j in 0..steps {
                #[unroll]
                for nt in 0..n_tiles {
                    // This `mma`'s output column `2q + e` is column `cg + 32·(nt/4) + 8q +
                    // 2·(nt%4) + e`, so its `b` column `g` is band row `cg + 32·(nt/4) +
                    // 8·(g/2) + 2·(nt%4) + g%2`.
                    let jrow = cg + 32 * (nt / 4) + 8 * (group / 2) + 2 * (nt % 4) + group % 2;
                    let wv = wt[jrow * sv + 4 * j + quad];
                    #[unroll]
                    for half in 0..2usize {
                        let mut bw = Vector::<u32, Const<2>>::empty();
                        bw.insert(0usize, wv.extract(2 * half));
                        bw.insert(1usize, wv.extract(2 * half + 1));
                        #[unroll]
                        for r in 0..row_tiles {
                            let f = ((j * row_tiles + r) * 2 + half) * 4;
                            let mut af = Vector::<u32, Const<4>>::empty();
                            #[unroll]
                            for e in 0..4usize {
                                af.insert(e, a[f + e]);
                            }
                            let at = (r * n_tiles + nt) * 4;
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
            }
            #[unroll]
            for r in 0..row_tiles {
                let row_lo = r0 + 16 * r;
                let row_hi = row_lo + 8;
                #[unroll]
                for b in 0..blocks {
                    let mut lo = Vector::<u32, V>::empty();
                    let mut hi = Vector::<u32, V>::empty();
                    #[unroll]
                    for t in 0..4usize {
                        let i = (r * n_tiles + b * 4 + t) * 4;
                        lo.insert(t, pack2(acc[i], acc[i + 1], bf16));
                        hi.insert(t, pack2(acc[i + 2], acc[i + 3], bf16));
                    }
                    let col = (n0 + cg + 32 * b) / 8 + quad;
                    if row_lo < rows {
                        out[row_lo * nv + col] = lo;
                    }
                    if row_hi < rows {
                        out[row_hi * nv + col] = hi;
                    }
                }
            }
            cg += cols;
        }
        tile += CUBE_DIM_Y as usize;
    }
}

/// The CUDA C++ of [`gemm_rows_kernel`] for an sm_90 device (an H200), without a GPU, for
/// in_proj's shape at d_model 256 (`k` 256, bands of 128), `row_tiles` and 16-bit activations
/// (`bf16` or f16): for reading the generated code.
#[cfg(feature = "cuda")]
pub fn gemm_cuda_source(bf16: bool, row_tiles: usize) -> Result<String, String> {
    use super::scan_cube::Sm90;
    use cubecl::CubeKernel;
    let mut sm90 = Sm90::new();
    let [x, w, out] = std::array::from_fn(|_| Sm90::arg(8));
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
        1,   // rows
        128, // n
        1,   // tiles per slice
        256, // k
        128, // band
        row_tiles,
        bf16,
    );
    sm90.compile("gemm_rows", kernel.define())
        .map(|(_, source)| source)
}

#[cfg(test)]
mod tests {
    use super::{band_for, smem_bytes, smem_row_words};

    #[test]
    fn shared_rows_fall_on_alternate_bank_halves() {
        // Eight consecutive band rows, read 16 words apart (mod 32 banks) at the same column.
        for k in [32, 64, 96, 256, 512, 1024] {
            let words = smem_row_words(k);
            assert!(words >= k / 2, "k {k}: row shorter than k/2 words");
            assert_eq!(words % 32, 16, "k {k}: rows do not alternate bank halves");
        }
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
        for (bf16, row_tiles) in [(false, 2), (true, 2), (false, 1)] {
            let source = super::gemm_cuda_source(bf16, row_tiles).unwrap();
            // For reading the generated code: `GENOMAMBA_KERNEL_SOURCE_DIR=DIR`.
            if let Ok(dir) = std::env::var("GENOMAMBA_KERNEL_SOURCE_DIR") {
                let name = format!("{dir}/gemm_rows_{row_tiles}_bf16_{bf16}.cu");
                std::fs::write(&name, &source).unwrap();
            }
            super::super::project_cube::assert_tensor_core_mma(&source, bf16);
            assert!(
                source.contains("__shared__"),
                "bf16 {bf16}: no shared memory"
            );
        }
    }
}
