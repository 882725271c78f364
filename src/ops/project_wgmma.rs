//! The block's projections on Hopper's warpgroup tensor-core instruction (`wgmma`, sm_90a),
//! for f16/bf16 activations on CUDA: [`gemm_wg_kernel`].
//!
//! [`gemm_rows_kernel`](super::project_mma) issues `mma.sync` (16 x 8 x 16 per instruction and
//! warp); on the H200 in_proj reached about 400 TFLOPS with it. `wgmma` has a warpgroup (four
//! warps, 128 threads) multiply 64 rows by up to 256 columns per instruction, asynchronously,
//! with `B` read by the tensor cores from shared memory through a descriptor and `A` from
//! registers.
//!
//! Here `A` is `x` (64 rows per warpgroup tile, all of `k`, in registers as loaded: lane
//! `4g + q` of warp `w` loads 16 bytes of rows `16w + g` and `16w + g + 8` per 32 of `k`, and
//! the tensor core's `k` order is permuted to match, as in `gemm_rows_kernel`) and `B` the
//! weight's band, kept in shared memory for the cube's whole run of rows in `wgmma`'s canonical
//! layout without swizzling ([`fill_band_wg`]). The band's columns are permuted too, so that
//! each lane ends with 8 adjacent output columns per row and writes them as 16 bytes.
//!
//! Each group of [`NG`] columns of a tile is one inline-PTX block: all its `wgmma` in a row,
//! then a wait for them ([`wg_block_ptx`]); a cube holds two warpgroups, so that one's epilogue
//! runs while the other's products do, and each warpgroup loads its next tile's `x` while the
//! current one's products and epilogue run. `k` up to 256 is one piece; out_proj's 512 is two,
//! the second accumulating onto the first ([`wg_block_acc`]).
//!
//! With bands of two groups and `k` in one piece (in_proj) both groups' products are issued
//! at once, each committed apart ([`wg_issue_ptx`]): the norm's sums are taken while they run,
//! group 0's epilogue runs once its products are done ([`wg_wait_ptx`]) while group 1's still
//! run, and the next tile's `x` is loaded once group 1's are done, during its epilogue (the
//! accumulators of both groups and one tile's `x` take the registers that loading a tile ahead
//! took). For in_proj's gate (SiLU on the second half of the outputs) each band's first group
//! is all ungated and its second all gated, so that is decided per group when the kernel is
//! expanded instead of per column as it runs. On the H200 in_proj took 286 us instead of 310
//! us (`GENOMAMBA_GEMM_WG_PIPE=off`: one group at a time, as above) and whole chr20 10.25-10.28
//! s instead of 10.39-10.48 s (BENCHMARKS.md, thirtieth session).
//!
//! The epilogues are those of `gemm_rows_kernel` (RMSNorm folded into in_proj, the gate's
//! SiLU, the residual add in out_proj), in the same f32 order, so the outputs are bit for bit
//! the `mma.sync` kernel's (`tests/gpu_scan.rs`; whole chr20 mean-pooled, 0 difference). On the
//! H200 (`ncu`, per layer and chunk of 262,144 rows, d_model 256): in_proj with norm and gate
//! 403 -> 312 us, out_proj with the residual add 328 -> 306 us, the last block's plain out_proj
//! 228 -> 162 us (BENCHMARKS.md, twenty-ninth session).
//!
//! Only on compute capability 9.0 (`sm_90a`; Blackwell has no `wgmma`).
//! `GENOMAMBA_GEMM_WGMMA=off` goes back to `gemm_rows_kernel` (for comparisons);
//! `GENOMAMBA_GEMM_WG_GROUPS` sets the warpgroups per cube (tuning).

use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::AddressType;
use cubecl::prelude::*;

use super::project_cube::{NamedChoice, pack2, unpack_hi, unpack_lo};
use super::scan_cube::{fast_math, positive_env, silu};

static GEMM_WGMMA: NamedChoice = NamedChoice::new("GENOMAMBA_GEMM_WGMMA");

static GEMM_WG_PIPE: NamedChoice = NamedChoice::new("GENOMAMBA_GEMM_WG_PIPE");

static GEMM_WG_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times so far a projection ran as [`gemm_wg_kernel`] (for tests).
pub fn gemm_wg_launches() -> usize {
    GEMM_WG_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets the `wgmma` kernel's use for later projections as `GENOMAMBA_GEMM_WGMMA` would
/// (`off`, or anything else for on; `None`: as that variable says); for tests.
pub fn set_gemm_wgmma(mode: Option<&str>) {
    GEMM_WGMMA.set(mode);
}

/// Largest inner dimension: 256 (in_proj at d_model 256) in one piece, 512 (out_proj) in two
/// of [`KC`] for bands of one group of [`NG`] columns.
pub const WG_MAX_K: usize = 512;

/// The piece of `k` whose `x` a lane holds in registers at a time: `KC / 8` words of two rows.
const KC: usize = 256;

/// Columns per `wgmma` (its `n`): 64 accumulators per thread.
const NG: usize = 128;

/// Warpgroups per cube unless `GENOMAMBA_GEMM_WG_GROUPS` says otherwise.
const GROUPS: usize = 2;

/// Bytes between the two core matrices of a `k` step (adjacent in `k`) and between core
/// matrices adjacent in `n`, in the band's shared-memory layout ([`fill_band_wg`]).
const K_CORE: usize = 128;
const N_CORE: usize = 256;

/// The PTX of one `wgmma` group: `ksteps` instructions `m64n{ng}k16` (f32 accumulators, `A`
/// from registers) accumulating into the `ng / 2` result registers `%0..`, each step's `B`
/// descriptor the previous one's plus the step's bytes; then a commit and a wait for all of
/// them. Without `acc` the first step ignores the accumulators (scale-d false) and the
/// operands are the result (`$0`), the `A` words (`$1`, `a_regs` registers from `%{ng/2}`, of
/// which step `s` takes four from `4s`) and the first descriptor (`$2`); with `acc` the result
/// starts as the accumulators given after it (`$1`, copied in), then `A` (`$2`) and the
/// descriptor (`$3`).
pub fn wg_block_ptx(ng: usize, ksteps: usize, a_regs: usize, bf16: bool, acc: bool) -> String {
    assert!(
        4 * ksteps <= a_regs,
        "{ksteps} steps need {} A registers",
        4 * ksteps
    );
    let nd = ng / 2;
    let ab = if bf16 { "bf16" } else { "f16" };
    let d: Vec<String> = (0..nd).map(|i| format!("%{i}")).collect();
    let d = d.join(", ");
    let a0 = if acc { 2 * nd } else { nd };
    let desc = a0 + a_regs;
    let step_bytes = (ng / 8) * N_CORE;
    let mut s = String::new();
    s.push_str("{\n.reg .pred wgp;\n.reg .b32 wgz;\n.reg .b64 wgd;\n");
    s.push_str("mov.b32 wgz, 0;\n");
    if acc {
        for i in 0..nd {
            s.push_str(&format!("mov.b32 %{i}, %{};\n", nd + i));
        }
        s.push_str("setp.eq.b32 wgp, wgz, 0;\n");
    } else {
        s.push_str("setp.ne.b32 wgp, wgz, 0;\n");
    }
    s.push_str(&format!("mov.b64 wgd, %{desc};\n"));
    s.push_str("wgmma.fence.sync.aligned;\n");
    for step in 0..ksteps {
        let a = a0 + 4 * step;
        if step == 1 && !acc {
            s.push_str("setp.eq.b32 wgp, wgz, 0;\n");
        }
        if step > 0 {
            s.push_str(&format!("add.s64 wgd, wgd, {};\n", step_bytes >> 4));
        }
        s.push_str(&format!(
            "wgmma.mma_async.sync.aligned.m64n{ng}k16.f32.{ab}.{ab} {{{d}}}, {{%{}, %{}, %{}, %{}}}, wgd, wgp, 1, 1, 0;\n",
            a,
            a + 1,
            a + 2,
            a + 3
        ));
    }
    s.push_str("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;\n}\n");
    s
}

/// The PTX that issues `groups` `wgmma` groups back to back and returns without waiting: group
/// `g` is `ksteps` instructions `m64n{ng}k16` (f32 accumulators, scale-d false on its first
/// step) into result registers `%{g·ng/2}..`, committed as its own group; `A` is `$groups`
/// (`a_regs` registers after the results, step `s` taking four from `4s`), the descriptor the
/// operand after it, moving by one step's bytes per instruction (group `g + 1`'s `B` follows
/// group `g`'s in the band, [`fill_band_wg`]). The results may be read only after
/// [`wg_wait_ptx`] has waited for their group.
pub fn wg_issue_ptx(ng: usize, ksteps: usize, a_regs: usize, bf16: bool, groups: usize) -> String {
    assert!(
        4 * ksteps <= a_regs,
        "{ksteps} steps need {} A registers",
        4 * ksteps
    );
    let nd = ng / 2;
    let ab = if bf16 { "bf16" } else { "f16" };
    let a0 = groups * nd;
    let desc = a0 + a_regs;
    let step_bytes = (ng / 8) * N_CORE;
    let mut s = String::new();
    s.push_str("{\n.reg .pred wgp;\n.reg .b32 wgz;\n.reg .b64 wgd;\n");
    s.push_str("mov.b32 wgz, 0;\n");
    s.push_str(&format!("mov.b64 wgd, %{desc};\n"));
    s.push_str("wgmma.fence.sync.aligned;\n");
    for g in 0..groups {
        let d: Vec<String> = (0..nd).map(|i| format!("%{}", g * nd + i)).collect();
        let d = d.join(", ");
        for step in 0..ksteps {
            let a = a0 + 4 * step;
            match step {
                0 => s.push_str("setp.ne.b32 wgp, wgz, 0;\n"),
                1 => s.push_str("setp.eq.b32 wgp, wgz, 0;\n"),
                _ => {}
            }
            if g > 0 || step > 0 {
                s.push_str(&format!("add.s64 wgd, wgd, {};\n", step_bytes >> 4));
            }
            s.push_str(&format!(
                "wgmma.mma_async.sync.aligned.m64n{ng}k16.f32.{ab}.{ab} {{{d}}}, {{%{}, %{}, %{}, %{}}}, wgd, wgp, 1, 1, 0;\n",
                a,
                a + 1,
                a + 2,
                a + 3
            ));
        }
        s.push_str("wgmma.commit_group.sync.aligned;\n");
    }
    s.push_str("}\n");
    s
}

/// The PTX that waits until at most `pending` committed `wgmma` groups are still running, then
/// copies group `g`'s `nd` accumulators (of the `2·nd` [`wg_issue_ptx`] wrote, given as `$1`,
/// from `%{nd}`) to the results (`$0`). The operands after them (the `A` words the running
/// groups read) are only named, so that they stay allocated until here.
pub fn wg_wait_ptx(nd: usize, g: usize, pending: usize) -> String {
    let mut s = format!("wgmma.wait_group.sync.aligned {pending};\n");
    for i in 0..nd {
        s.push_str(&format!("mov.b32 %{i}, %{};\n", nd + g * nd + i));
    }
    s
}

/// Issues two groups of [`NG`] columns for `KC` of `k` ([`wg_issue_ptx`]); the results are
/// for [`wg_wait`] only.
#[cube]
fn wg_issue(
    a: Vector<u32, Const<{ 2 * KC / 8 }>>,
    desc: u64,
    #[comptime] ksteps: usize,
    #[comptime] bf16: bool,
) -> Vector<f32, Const<NG>> {
    let text = comptime!(wg_issue_ptx(NG, ksteps, 2 * KC / 8, bf16, 2));
    let d: Vector<f32, Const<NG>>;
    gpu_asm!("{text}// {} {} {}", out(_) d, in(_) a, in(_) desc);
    d
}

/// Group `g`'s results of the two groups `d` that [`wg_issue_ptx`] issued, once at most
/// `pending` groups run: see [`wg_wait_ptx`]; `a` is the `A` operand the groups read (kept
/// alive until the wait).
#[cube]
fn wg_wait(
    d: Vector<f32, Const<NG>>,
    a: Vector<u32, Const<{ 2 * KC / 8 }>>,
    #[comptime] g: usize,
    #[comptime] pending: usize,
) -> Vector<f32, Const<{ NG / 2 }>> {
    let text = comptime!(wg_wait_ptx(NG / 2, g, pending));
    // (A value, not the variable's address: the product by one is folded away.)
    let dv = d * Vector::<f32, Const<NG>>::new(1.0f32);
    let r: Vector<f32, Const<{ NG / 2 }>>;
    gpu_asm!("{text}// {} {} {}", out(_) r, in(_) dv, in(_) a);
    r
}

/// The norm's scale `1 / sqrt(mean(x²) + eps)` of the lane's two rows from their `A` words
/// (summed over the quad's lanes).
#[cube]
fn norm_scale(
    a: Vector<u32, Const<{ 2 * KC / 8 }>>,
    inv_k: f32,
    eps: f32,
    #[comptime] csteps: usize,
    #[comptime] bf16: bool,
) -> Vector<f32, Const<2>> {
    let mut ss_lo = 0.0f32;
    let mut ss_hi = 0.0f32;
    #[unroll]
    for s in 0..csteps {
        #[unroll]
        for e in 0..4usize {
            let word = a.extract(4 * s + e);
            let (v0, v1) = (unpack_lo(word, bf16), unpack_hi(word, bf16));
            if e % 2 == 0 {
                ss_lo += v0 * v0 + v1 * v1;
            } else {
                ss_hi += v0 * v0 + v1 * v1;
            }
        }
    }
    ss_lo += plane_shuffle_xor(ss_lo, 1u32);
    ss_lo += plane_shuffle_xor(ss_lo, 2u32);
    ss_hi += plane_shuffle_xor(ss_hi, 1u32);
    ss_hi += plane_shuffle_xor(ss_hi, 2u32);
    let mut scale = Vector::<f32, Const<2>>::empty();
    scale.insert(0usize, (ss_lo * inv_k + eps).inverse_sqrt());
    scale.insert(1usize, (ss_hi * inv_k + eps).inverse_sqrt());
    scale
}

/// `D = A · B` for one group of [`NG`] columns and [`KC`] of `k`: see [`wg_block_ptx`]. `a`
/// holds the tile's `A` words (four per step of 16 `k`), `desc` the first step's `B`
/// descriptor.
#[cube]
fn wg_block(
    a: Vector<u32, Const<{ 2 * KC / 8 }>>,
    desc: u64,
    #[comptime] ksteps: usize,
    #[comptime] bf16: bool,
) -> Vector<f32, Const<{ NG / 2 }>> {
    let text = comptime!(wg_block_ptx(NG, ksteps, 2 * KC / 8, bf16, false));
    let av = a + Vector::<u32, Const<{ 2 * KC / 8 }>>::zeroed();
    let d: Vector<f32, Const<{ NG / 2 }>>;
    gpu_asm!(
        "{text}// {} {} {}",
        out(_) d,
        in(_) av,
        in(_) desc,
    );
    d
}

/// `D = C + A · B`: [`wg_block`] accumulating onto `c`.
#[cube]
fn wg_block_acc(
    c: Vector<f32, Const<{ NG / 2 }>>,
    a: Vector<u32, Const<{ 2 * KC / 8 }>>,
    desc: u64,
    #[comptime] ksteps: usize,
    #[comptime] bf16: bool,
) -> Vector<f32, Const<{ NG / 2 }>> {
    let text = comptime!(wg_block_ptx(NG, ksteps, 2 * KC / 8, bf16, true));
    let cv = c * Vector::<f32, Const<{ NG / 2 }>>::new(1.0f32);
    let av = a + Vector::<u32, Const<{ 2 * KC / 8 }>>::zeroed();
    let d: Vector<f32, Const<{ NG / 2 }>>;
    gpu_asm!(
        "{text}// {} {} {} {}",
        out(_) d,
        in(_) cv,
        in(_) av,
        in(_) desc,
    );
    d
}

/// The shared-memory address (the `.shared` window's) of `ptr`.
#[cube]
fn shared_address(ptr: *const Vector<u32, Const<4>>) -> u32 {
    let addr: u32;
    gpu_asm!(
        "{{ .reg .u64 wgt; cvta.to.shared.u64 wgt, {}; cvt.u32.u64 {}, wgt; }}",
        in(_) ptr,
        out(_) addr,
        options(pure, nomem)
    );
    addr
}

/// Makes the shared memory the threads wrote visible to the tensor cores' reads (the async
/// proxy); before the barrier that ends the fill.
#[cube]
fn fence_proxy_async() {
    gpu_asm!("fence.proxy.async.shared::cta;");
}

/// Copies the band of columns `[n0, n0 + band)` (with `strided`, its groups of 64 strided over
/// the output as in `gemm_rows_kernel`) of `w` (`[k, n]`, read as words of two values; `nw`
/// the norm's scale per row of `w` with `norm`) into `wt` in `wgmma`'s canonical `B` layout
/// (`k`-major, no swizzle): for group `p` of [`NG`] columns and step `s` of 16 `k`, core matrix
/// `(i, h)` (logical columns `8i..8i+8`, logical `k` `8h..8h+8`) at byte
/// `((p·ksteps + s)·NG/8 + i)·N_CORE + h·K_CORE`, its row `r` (logical column `8i + r`) 16
/// bytes at `16r`, one value per logical `k`.
///
/// Logical to physical: `k` `8h + 2q + e` of step `s = 2b + t` is the weight's row
/// `32b + 8q + 4t + 2h + e` (so that a lane's 16-byte load of `x` holds its `A` words as
/// loaded); column `8(4m + j) + 2q + e` of a group is band column `32m + 8q + 2j + e` (so that
/// lane `4g + q` ends with band columns `32m + 8q ..+ 8` of its rows).
///
/// Each item is one 16-byte row of a core matrix: 8 values gathered from 8 rows of `w`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn fill_band_wg(
    w: &Tensor<u32>,
    nw: &Tensor<f32>,
    wt: &mut Shared<[Vector<u32, Const<4>>]>,
    n0: usize,
    n: usize,
    bi: usize,
    bands: usize,
    #[comptime] k: usize,
    #[comptime] band: usize,
    #[comptime] strided: bool,
    #[comptime] norm: bool,
    #[comptime] bf16: bool,
) {
    let ksteps = comptime!(k / 16);
    let groups = comptime!(band / NG);
    // Rows of 16 bytes: per group and step, NG / 8 core matrices x 2 x 8 rows.
    let total = comptime!(groups * ksteps * NG * 2);
    let threads = CUBE_DIM_Y as usize * 32;
    let mut item = UNIT_POS_Y as usize * 32 + UNIT_POS_X as usize;
    while item < total {
        let r = item % 8;
        let h = (item / 8) % 2;
        let i = (item / 16) % comptime!(NG / 8);
        let s = (item / (16 * comptime!(NG / 8))) % ksteps;
        let p = item / (16 * comptime!(NG / 8) * ksteps);
        // Logical column `8i + r` of group `p`: band column.
        let c = 8 * i + r;
        let (j8, q, e) = (c / 8, (c % 8) / 2, c % 2);
        let (m, jj) = (j8 / 4, j8 % 4);
        let bc = p * NG + 32 * m + 8 * q + 2 * jj + e;
        let col = if strided {
            ((bc / 64) * bands + bi) * 64 + bc % 64
        } else {
            n0 + bc
        };
        let (b, t) = (s / 2, s % 2);
        let mut v = Vector::<u32, Const<4>>::empty();
        #[unroll]
        for qq in 0..4usize {
            // Logical `k` `8h + 2qq + e2`, e2 = 0, 1: rows `32b + 8qq + 4t + 2h + e2`.
            let row = 32 * b + 8 * qq + 4 * t + 2 * h;
            let sh = u32::cast_from(col % 2) * 16u32;
            let v0 = (w[(row * n + col) / 2] >> sh) & 0xFFFFu32;
            let v1 = (w[((row + 1) * n + col) / 2] >> sh) & 0xFFFFu32;
            let word = v0 | (v1 << 16u32);
            if norm {
                v.insert(
                    qq,
                    pack2(
                        unpack_lo(word, bf16) * nw[row],
                        unpack_hi(word, bf16) * nw[row + 1],
                        bf16,
                    ),
                );
            } else {
                v.insert(qq, word);
            }
        }
        wt[item] = v;
        item += threads;
    }
    fence_proxy_async();
    sync_cube();
}

/// `out = x · w` on `wgmma` for 16-bit `x` (`[rows, k]`, `k` a multiple of 32 up to
/// [`WG_MAX_K`]), `w` (`[k, n]`) and `out` (`[rows, n]`), f32 accumulators, with the optional
/// epilogues of `gemm_rows_kernel` (RMSNorm of `x` folded in, the gate's SiLU from column
/// `gate_from`, the residual add onto `res` with the f32 sum in `sum`). Cube `c` takes band
/// `c % bands` and the run of 64-row tiles `[s·tiles_per_slice, ..)`, `s = c / bands`; its
/// warpgroups take every `CUBE_DIM_Y / 4`-th tile of the run.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn gemm_wg_kernel(
    x: &Tensor<Vector<u32, Const<4>>>,
    w: &Tensor<u32>,
    out: &mut Tensor<Vector<u32, Const<4>>>,
    res: &Tensor<Vector<f32, Const<4>>>,
    sum: &mut Tensor<Vector<f32, Const<4>>>,
    nw: &Tensor<f32>,
    rows: usize,
    n: usize,
    tiles_per_slice: usize,
    gate_from: usize,
    eps: f32,
    inv_k: f32,
    lbo: u32,
    sbo: u32,
    #[comptime] k: usize,
    #[comptime] band: usize,
    #[comptime] bf16: bool,
    #[comptime] gate: bool,
    #[comptime] residual: bool,
    #[comptime] norm: bool,
    #[comptime] pipelined: bool,
    #[comptime] gate_half: bool,
) {
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let wg = warp / 4;
    let wgs = CUBE_DIM_Y as usize / 4;
    let row_in = (warp % 4) * 16;
    let group = lane / 4;
    let quad = lane % 4;
    let ksteps = comptime!(k / 16);
    let kc = comptime!(if k < KC { k } else { KC });
    let bands = n / band;
    let cube = CUBE_POS_X as usize;
    let bi = cube % bands;
    let n0 = bi * band;
    let slice = cube / bands;

    let mut wt = Shared::<[Vector<u32, Const<4>>]>::new_slice(comptime!(band * k / 8));
    fill_band_wg(w, nw, &mut wt, n0, n, bi, bands, k, band, gate, norm, bf16);
    let base = shared_address(unsafe { wt.as_ptr_unchecked() });
    let desc0 = u64::cast_from((base >> 4u32) & 0x3FFFu32)
        | (u64::cast_from((lbo >> 4u32) & 0x3FFFu32) << 16u64)
        | (u64::cast_from((sbo >> 4u32) & 0x3FFFu32) << 32u64);
    let group_desc = u64::cast_from(comptime!((ksteps * (NG / 8) * N_CORE) >> 4));

    let tiles = rows.div_ceil(64);
    let begin = slice * tiles_per_slice;
    let end_run = begin + tiles_per_slice;
    let end = if end_run < tiles { end_run } else { tiles };
    let last = rows - 1;
    let mut tile = begin + wg;
    // The tile's `A` words ([`load_a`]); the next piece's are loaded while this one's products
    // (and epilogue) run.
    let chunks = comptime!(k / kc);
    let csteps = comptime!(kc / 16);
    let mut a = load_a(x, tile, 0, row_in, group, quad, last, k, kc);
    if comptime!(chunks == 1 && band == 2 * NG && pipelined) {
        // Both groups' products issued at once; the norm's scale summed while they run; group
        // 0's epilogue while group 1's products run; the next tile's `x` loaded once group 1's
        // products are done (they read `a`), during group 1's epilogue.
        while tile < end {
            let rlo = tile * 64 + row_in + group;
            let next = tile + wgs;
            let av = a + Vector::<u32, Const<{ 2 * KC / 8 }>>::zeroed();
            let d = wg_issue(av, desc0, csteps, bf16);
            let mut scale = Vector::<f32, Const<2>>::new(1.0f32);
            if norm {
                scale = norm_scale(a, inv_k, eps, csteps, bf16);
            }
            let d0 = wg_wait(d, av, 0usize, 1usize);
            epilogue(
                d0,
                out,
                res,
                sum,
                rlo,
                0,
                quad,
                n0,
                bi,
                bands,
                rows,
                n,
                gate_from,
                scale,
                comptime!(if gate_half { 1u32 } else { 0u32 }),
                bf16,
                gate,
                residual,
                norm,
            );
            let d1 = wg_wait(d, av, 1usize, 0usize);
            a = load_a(
                x,
                if next < end { next } else { tile },
                0,
                row_in,
                group,
                quad,
                last,
                k,
                kc,
            );
            epilogue(
                d1,
                out,
                res,
                sum,
                rlo,
                1,
                quad,
                n0,
                bi,
                bands,
                rows,
                n,
                gate_from,
                scale,
                comptime!(if gate_half { 2u32 } else { 0u32 }),
                bf16,
                gate,
                residual,
                norm,
            );
            tile = next;
        }
    } else if chunks == 1 {
        while tile < end {
            let rlo = tile * 64 + row_in + group;
            let next = tile + wgs;
            let a_next = load_a(
                x,
                if next < end { next } else { tile },
                0,
                row_in,
                group,
                quad,
                last,
                k,
                kc,
            );
            let mut scale = Vector::<f32, Const<2>>::new(1.0f32);
            if norm {
                scale = norm_scale(a, inv_k, eps, csteps, bf16);
            }
            let mut p = 0;
            while p < comptime!(band / NG) {
                let d = wg_block(a, desc0 + u64::cast_from(p) * group_desc, csteps, bf16);
                epilogue(
                    d, out, res, sum, rlo, p, quad, n0, bi, bands, rows, n, gate_from, scale, 0u32,
                    bf16, gate, residual, norm,
                );
                p += 1;
            }
            a = a_next;
            tile = next;
        }
    } else {
        // `k` in two pieces, one group of columns per band: the second piece's words are loaded
        // during the first's products, the next tile's first piece during the second's.
        let half_desc = u64::cast_from(comptime!((csteps * (NG / 8) * N_CORE) >> 4));
        let scale = Vector::<f32, Const<2>>::new(1.0f32);
        while tile < end {
            let rlo = tile * 64 + row_in + group;
            let next = tile + wgs;
            let a1 = load_a(x, tile, 1, row_in, group, quad, last, k, kc);
            let d0 = wg_block(a, desc0, csteps, bf16);
            a = load_a(
                x,
                if next < end { next } else { tile },
                0,
                row_in,
                group,
                quad,
                last,
                k,
                kc,
            );
            let d = wg_block_acc(d0, a1, desc0 + half_desc, csteps, bf16);
            epilogue(
                d, out, res, sum, rlo, 0, quad, n0, bi, bands, rows, n, gate_from, scale, 0u32,
                bf16, gate, residual, false,
            );
            tile = next;
        }
    }
}

/// Writes group `p`'s results `d` of the lane's rows `rlo` and `rlo + 8` (band columns
/// `p·NG + 32m + 8q ..+ 8`, output columns as [`fill_band_wg`] maps them), with the epilogues
/// of [`gemm_wg_kernel`]; `scale` holds the norm's scale of the two rows.
#[cube]
#[allow(clippy::too_many_arguments)]
fn epilogue(
    d: Vector<f32, Const<{ NG / 2 }>>,
    out: &mut Tensor<Vector<u32, Const<4>>>,
    res: &Tensor<Vector<f32, Const<4>>>,
    sum: &mut Tensor<Vector<f32, Const<4>>>,
    rlo: usize,
    p: usize,
    quad: usize,
    n0: usize,
    bi: usize,
    bands: usize,
    rows: usize,
    n: usize,
    gate_from: usize,
    scale: Vector<f32, Const<2>>,
    #[comptime] silu_cols: u32,
    #[comptime] bf16: bool,
    #[comptime] gate: bool,
    #[comptime] residual: bool,
    #[comptime] norm: bool,
) {
    let last = rows - 1;
    let nv = n / 8;
    #[unroll]
    for m in 0..comptime!(NG / 32) {
        let bc = p * NG + 32 * m + 8 * quad;
        let col = if gate {
            ((bc / 64) * bands + bi) * 64 + bc % 64
        } else {
            n0 + bc
        };
        let gated = col >= gate_from;
        #[unroll]
        for ri in 0..2usize {
            let row = rlo + 8 * ri;
            let mut vals = Array::<f32>::new(8usize);
            #[unroll]
            for jj in 0..4usize {
                #[unroll]
                for e in 0..2usize {
                    let mut v = d.extract(4 * (4 * m + jj) + 2 * ri + e);
                    if norm {
                        v *= scale.extract(ri);
                    }
                    // The gate's SiLU (`gate` and `silu_cols` are resolved when the kernel is
                    // expanded, `gated` when it runs): `silu_cols` 0, from column `gate_from`;
                    // 1, on none of the group's columns; 2, on all of them.
                    #[allow(clippy::collapsible_if)]
                    if gate {
                        if comptime!(silu_cols == 2) {
                            v = silu(v, true);
                        } else if comptime!(silu_cols == 0) {
                            if gated {
                                v = silu(v, true);
                            }
                        }
                    }
                    vals[2 * jj + e] = v;
                }
            }
            let mut o = Vector::<u32, Const<4>>::empty();
            if residual {
                let rb = (if row < last { row } else { last }) * (n / 4) + col / 4;
                #[unroll]
                for hv in 0..2usize {
                    let rv = res[rb + hv];
                    let mut sv = Vector::<f32, Const<4>>::empty();
                    #[unroll]
                    for jj in 0..2usize {
                        let word = pack2(vals[4 * hv + 2 * jj], vals[4 * hv + 2 * jj + 1], bf16);
                        let s0 = unpack_lo(word, bf16) + rv.extract(2 * jj);
                        let s1 = unpack_hi(word, bf16) + rv.extract(2 * jj + 1);
                        sv.insert(2 * jj, s0);
                        sv.insert(2 * jj + 1, s1);
                        o.insert(2 * hv + jj, pack2(s0, s1, bf16));
                    }
                    if row < rows {
                        sum[rb + hv] = sv;
                    }
                }
            } else {
                #[unroll]
                for jj in 0..4usize {
                    o.insert(jj, pack2(vals[2 * jj], vals[2 * jj + 1], bf16));
                }
            }
            if row < rows {
                out[row * nv + col / 8] = o;
            }
        }
    }
}

/// The `A` words of piece `chunk` (of `kc` values of `k`) of 64-row tile `tile` for this lane:
/// rows `64·tile + row_in + group` and `+ 8` (clamped to `last`), 16 bytes per 32 of `k`; step
/// `s = 2b + t` of the piece takes words `2t`, `2t + 1` of the lane's vector `b` of each row,
/// in the order (row g, row g + 8, row g, row g + 8).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_a(
    x: &Tensor<Vector<u32, Const<4>>>,
    tile: usize,
    chunk: usize,
    row_in: usize,
    group: usize,
    quad: usize,
    last: usize,
    #[comptime] k: usize,
    #[comptime] kc: usize,
) -> Vector<u32, Const<{ 2 * KC / 8 }>> {
    let kv = comptime!(k / 8);
    let rlo = tile * 64 + row_in + group;
    let rhi = rlo + 8;
    let off = chunk * comptime!(kc / 8) + quad;
    let lo_at = (if rlo < last { rlo } else { last }) * kv + off;
    let hi_at = (if rhi < last { rhi } else { last }) * kv + off;
    let mut a = Vector::<u32, Const<{ 2 * KC / 8 }>>::zeroed();
    #[unroll]
    for b in 0..comptime!(kc / 32) {
        let vl = x[lo_at + 4 * b];
        let vh = x[hi_at + 4 * b];
        #[unroll]
        for t in 0..2usize {
            let s = 2 * b + t;
            a.insert(4 * s, vl.extract(2 * t));
            a.insert(4 * s + 1, vh.extract(2 * t));
            a.insert(4 * s + 2, vl.extract(2 * t + 1));
            a.insert(4 * s + 3, vh.extract(2 * t + 1));
        }
    }
    a
}

/// [`gemm_wg_kernel`] for `project_mma_with`'s problem if this kernel takes it (`false`
/// otherwise, and with `GENOMAMBA_GEMM_WGMMA=off`): a CUDA device, `k` a multiple of 32 up to
/// [`KC`] or (without the norm) `2·KC` (then bands of one group), `n` a multiple of [`NG`]
/// whose band of 256 or 128 columns fits shared memory. The caller has
/// checked formats, shapes, contiguity and alignment, and made `out` (and `sum`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_wgmma(
    x: &CubeTensor,
    w: &CubeTensor,
    out: &CubeTensor,
    res: &CubeTensor,
    sum: &CubeTensor,
    nw: &CubeTensor,
    [rows, k, n]: [usize; 3],
    gate_from: usize,
    eps: f32,
    flags: [bool; 4],
) -> bool {
    let [bf16, gate, residual, norm] = flags;
    if GEMM_WGMMA.get().as_deref() == Some("off") {
        return false;
    }
    let client = x.client.clone();
    if !wgmma_target(&client.properties().identity.fingerprint) {
        return false;
    }
    // `k` up to KC in one piece (a multiple of 32), or two pieces of KC without the norm.
    let pieces_fit = (k <= KC && k.is_multiple_of(32)) || (k == 2 * KC && !norm);
    if !fast_math(&client) || !pieces_fit || !n.is_multiple_of(NG) {
        return false;
    }
    let hardware = &client.properties().hardware;
    let Some(band) = [256usize, 128].into_iter().find(|&b| {
        n.is_multiple_of(b) && b * k * 2 <= hardware.max_shared_memory_size && (k <= KC || b == NG)
    }) else {
        return false;
    };
    let groups = positive_env("GENOMAMBA_GEMM_WG_GROUPS")
        .filter(|&g| g <= 8)
        .unwrap_or(GROUPS);
    let sms = hardware.num_streaming_multiprocessors.unwrap_or(132) as usize;
    let bands = n / band;
    let tiles = rows.div_ceil(64);
    let slices = (sms / bands).clamp(1, tiles.div_ceil(groups));
    let tiles_per_slice = tiles.div_ceil(slices);
    let slices = tiles.div_ceil(tiles_per_slice);
    let Ok(cubes) = u32::try_from(slices * bands) else {
        return false;
    };
    let address = AddressType::from_len((rows * k).max(rows * n).max(k * n));
    let pipelined = GEMM_WG_PIPE.get().as_deref() != Some("off");
    // in_proj's gate on its second half (`gate_from` = n / 2) with bands of 256: each band's
    // first group of 128 columns is all before `gate_from` and its second all after
    // ([`fill_band_wg`]'s strided groups of 64), so the SiLU is decided per group.
    let gate_half = gate && band == 2 * NG && 2 * gate_from == n;
    // The descriptor's leading byte offset is between core matrices adjacent in `k`, its
    // stride byte offset between those adjacent in `n` (the products on the H200 equal the
    // `mma.sync` kernel's with this reading; the other was not tried).
    let (lbo, sbo) = (K_CORE as u32, N_CORE as u32);
    // SAFETY: as for `gemm_rows_kernel`: rows of `x` read below `rows` (clamped), columns
    // below `k`; `w` read at rows below `k`, columns of the cube's band (or strided groups)
    // below `n`, as words (`n` even); `out`, `res` and `sum` at rows below `rows` and columns
    // below `n` in whole 16-byte vectors (`n` a multiple of 128). Shared memory holds
    // `band · k / 8` vectors, filled by item indices below that.
    unsafe {
        gemm_wg_kernel::launch_unchecked(
            &client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_2d(32, (4 * groups) as u32),
            address,
            x.clone().into_tensor_arg(),
            w.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            res.clone().into_tensor_arg(),
            sum.clone().into_tensor_arg(),
            nw.clone().into_tensor_arg(),
            rows,
            n,
            tiles_per_slice,
            gate_from,
            eps,
            1.0 / k as f32,
            lbo,
            sbo,
            k,
            band,
            bf16,
            gate,
            residual,
            norm,
            pipelined,
            gate_half,
        );
    }
    GEMM_WG_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    true
}

/// Whether kernels compiled for the device with this CubeCL fingerprint can issue `wgmma`:
/// compute capability 9.0 only (CubeCL compiles for `sm_90a` there; Blackwell's `sm_100a` and
/// older GPUs have no `wgmma`, and take the `mma.sync` kernel).
fn wgmma_target(fingerprint: &str) -> bool {
    fingerprint == "ptx_sm90"
}

/// The CUDA C++ of [`gemm_wg_kernel`] for an sm_90a device (an H200), without a GPU: in_proj
/// of the d_model 256 model (`k` 256, bands of 256) with the given epilogues.
#[cfg(feature = "cuda")]
pub fn gemm_wg_cuda_source(
    bf16: bool,
    k: usize,
    band: usize,
    gate: bool,
    residual: bool,
    norm: bool,
    pipelined: bool,
) -> Result<String, String> {
    use super::scan_cube::Sm90;
    use cubecl::CubeKernel;
    let mut sm90 = Sm90::new();
    let [x, w, out, res, sum, nw] = std::array::from_fn(|_| Sm90::arg(8));
    let kernel = gemm_wg_kernel::create_dummy_kernel(
        sm90.props.clone(),
        sm90.target.clone(),
        CubeCount::new_1d(1),
        CubeDim::new_2d(32, (4 * GROUPS) as u32),
        AddressType::U32,
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
        1e-5, // the norm's epsilon
        1.0 / k as f32,
        K_CORE as u32,
        N_CORE as u32,
        k,
        band,
        bf16,
        gate,
        residual,
        norm,
        pipelined,
        gate && pipelined,
    );
    sm90.compile("gemm_wg", kernel.define())
        .map(|(_, source)| source)
}

#[cfg(test)]
mod tests {
    use super::wg_block_ptx;

    #[test]
    fn wgmma_only_on_compute_capability_9_0() {
        assert!(super::wgmma_target("ptx_sm90"));
        for other in [
            "ptx_sm80",
            "ptx_sm89",
            "ptx_sm100",
            "ptx_sm120",
            "hip-kernel_gfx1151",
            "",
        ] {
            assert!(!super::wgmma_target(other), "{other}");
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn the_h200_stand_in_is_a_wgmma_target() {
        let sm90 = crate::ops::scan_cube::Sm90::new();
        assert!(super::wgmma_target(&sm90.props.identity.fingerprint));
    }

    #[test]
    fn wg_block_names_every_register_once_per_step() {
        let text = wg_block_ptx(128, 16, 64, false, false);
        assert_eq!(text.matches("wgmma.mma_async").count(), 16);
        // Step 15 takes A from %124..%127 (after 64 accumulators and 60 words).
        assert!(text.contains("{%124, %125, %126, %127}"), "{text}");
        assert!(text.contains("mov.b64 wgd, %128;"));
        // The descriptor moves by one step's 16 core matrices of 256 bytes, in 16-byte units.
        assert_eq!(text.matches("add.s64 wgd, wgd, 256;").count(), 15);
        assert!(wg_block_ptx(128, 16, 64, true, false).contains(".f32.bf16.bf16"));
        // Accumulating: the result starts as the 64 given accumulators (%64..%127), A from
        // %128, the descriptor %192, every step adding (scale-d true).
        let acc = wg_block_ptx(128, 16, 64, false, true);
        assert!(acc.contains("mov.b32 %63, %127;"), "{acc}");
        assert!(acc.contains("{%188, %189, %190, %191}"), "{acc}");
        assert!(acc.contains("mov.b64 wgd, %192;"), "{acc}");
        assert!(!acc.contains("setp.ne"), "{acc}");
        // Fewer steps (`k` 96: 6) than the A operand's 64 registers: the descriptor is still
        // the operand after all of them.
        let short = wg_block_ptx(128, 6, 64, false, false);
        assert_eq!(short.matches("wgmma.mma_async").count(), 6);
        assert!(short.contains("{%84, %85, %86, %87}"), "{short}");
        assert!(short.contains("mov.b64 wgd, %128;"), "{short}");
    }

    #[test]
    fn wg_issue_commits_each_group_and_waits_for_none() {
        let text = super::wg_issue_ptx(128, 16, 64, false, 2);
        assert_eq!(text.matches("wgmma.mma_async").count(), 32);
        assert_eq!(text.matches("wgmma.commit_group").count(), 2);
        assert!(!text.contains("wait_group"), "{text}");
        // Group 0 into %0..%63, group 1 into %64..%127; A from %128; the descriptor %192,
        // moving 31 times by one step (group 1's band follows group 0's).
        assert!(text.contains("{%0, %1,"), "{text}");
        assert!(text.contains("{%64, %65,"), "{text}");
        assert!(
            text.contains("%126, %127}, {%188, %189, %190, %191}"),
            "{text}"
        );
        assert!(text.contains("mov.b64 wgd, %192;"), "{text}");
        assert_eq!(text.matches("add.s64 wgd, wgd, 256;").count(), 31);
        // Each group's first step ignores the accumulators, the others add.
        assert_eq!(text.matches("setp.ne.b32 wgp").count(), 2);
        let wait = super::wg_wait_ptx(64, 0, 1);
        assert!(
            wait.starts_with("wgmma.wait_group.sync.aligned 1;"),
            "{wait}"
        );
        assert!(wait.contains("mov.b32 %63, %127;"), "{wait}");
        // Group 1's accumulators are %128..%191 of the operands (after 64 results).
        let wait = super::wg_wait_ptx(64, 1, 0);
        assert!(
            wait.starts_with("wgmma.wait_group.sync.aligned 0;"),
            "{wait}"
        );
        assert!(wait.contains("mov.b32 %0, %128;"), "{wait}");
        assert!(wait.contains("mov.b32 %63, %191;"), "{wait}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn wg_kernel_compiles_to_wgmma() {
        // in_proj with the norm and gate, and plain (both groups issued at once, and one
        // group at a time); out_proj-like `k` 256 with the residual; `k` 512.
        for (bf16, k, band, gate, residual, norm, pipelined) in [
            (false, 256, 256, false, false, false, true),
            (true, 256, 256, false, false, false, true),
            (false, 256, 256, true, false, true, true),
            (false, 256, 256, true, false, true, false),
            (false, 256, 256, false, true, false, true),
            (false, 512, 128, false, true, false, true),
            (true, 512, 128, false, true, false, true),
        ] {
            let source =
                super::gemm_wg_cuda_source(bf16, k, band, gate, residual, norm, pipelined).unwrap();
            let name = format!(
                "gemm_wg_k{k}_bf16_{bf16}_gate_{gate}_residual_{residual}_norm_{norm}_pipe_{pipelined}"
            );
            if let Ok(dir) = std::env::var("GENOMAMBA_KERNEL_SOURCE_DIR") {
                std::fs::write(format!("{dir}/{name}.cu"), &source).unwrap();
            }
            // One block of 16 steps per band group (in_proj: two groups in one loop body, or
            // both in one block with their waits apart) or two pieces of `k` (out_proj).
            let waits = source.matches("wgmma.wait_group.sync.aligned").count();
            if pipelined && band == 256 {
                assert_eq!(source.matches("wgmma.mma_async").count(), 32, "{name}");
                assert!(
                    source.contains("wgmma.wait_group.sync.aligned 1;"),
                    "{name}"
                );
                assert_eq!(waits, 2, "{name}");
            } else {
                assert_eq!(
                    source.matches("wgmma.mma_async").count(),
                    16 * (k / 256),
                    "{name}"
                );
                assert_eq!(waits, k / 256, "{name}");
            }
            assert!(source.contains("fence.proxy.async.shared::cta"), "{name}");
        }
    }
}
