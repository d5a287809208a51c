//! f32 matrix products on Intel AMX tiles (Sapphire Rapids and later), at f32 accuracy.
//!
//! AMX multiplies bfloat16 matrices (8-bit significands) and sums in f32. Each f32 input
//! is split exactly into three bfloat16 parts, `x = hi + mid + lo`, each the
//! round-to-nearest of what is left (`|mid| <= 2^-8 |x|`, `|lo| <= 2^-16 |x|`), and a
//! product `x y` is taken as the six terms `hi*hi + hi*mid + hi*lo + mid*hi + mid*mid +
//! lo*hi`. The three dropped terms are at most `2^-23 |x y|` together, the size of an
//! f32 rounding of the product (bfloat16 has f32's exponent range, so the split is exact
//! above `2^-110`; AMX treats smaller parts as zero). Sums run in f32 inside the tile
//! unit: the result has the accuracy of an f32 product, with its own rounding, so the
//! kernel path is recorded as `avx512+amx` ([`crate::isa::kernel_path`]).
//!
//! [`super::matmul`] sends f32 products of at least 128 on every side here when
//! [`crate::isa::amx`] (CPUs with AMX; `ITERA_KERNELS=avx512` turns it off). On the
//! phase-8 benchmark's shapes they run 1.1-1.6x faster than the `gemm` crate's AVX-512
//! kernels (`bench_gemm`); the tile unit is slower to start than the vector units, so
//! the first products of a run gain less.
//!
//! Layout: `C (M x N) = A (M x K) . B^T` where both operands are seen as `rows x K`
//! ([`Operand`]). They are packed into tiles of "pair words" (two consecutive `k` of one
//! row in a `u32`, the form `TDPBF16PS` reads), in k-blocks of 32: an A tile is 16 rows x
//! 16 words, a B tile 16 words-deep x 16 columns. An operand stored with `k` contiguous
//! packs A tiles directly and B tiles through a 16 x 16 transpose; stored `k`-major, the
//! other way round. [`gemm_f32`] computes `C^T` instead when that needs fewer transposes.
//!
//! Results do not depend on the thread count: threads share out blocks of `C`, and every
//! element's sum runs over `k` in the same order (k-chunks, k-blocks, the six terms) in
//! any case.

use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows and columns of one tile; a tile row holds 32 bfloat16 (16 pair words).
const T: usize = 16;
/// `u32` words of one packed k-block of a 32-row group: 3 planes x 2 tiles x 16 x 16.
const BLOCK: usize = 3 * 2 * T * T;
/// Rows of `C` per task: the packed A rows a task keeps while it walks the columns.
const MC: usize = 256;
/// Bytes of packed B per k-chunk: longer sums run in chunks that keep it in L2, through
/// an f32 accumulator (tile stores and loads are exact); chunks are at least [`KC_MIN`] deep.
const B_BYTES: usize = 1 << 20;
const KC_MIN: usize = 256;

/// Whether this CPU has AMX tiles with bfloat16 products and the kernel grants this
/// process their state (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`). Asked once.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // `cpuid` exists on every x86_64 CPU; leaf 7 is used only when reported.
    let (max_leaf, leaf7) = (__cpuid(0).eax, __cpuid_count(7, 0));
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    if max_leaf < 7
        || !amx_bf16
        || !amx_tile
        || !std::is_x86_feature_detected!("avx512f")
        || !std::is_x86_feature_detected!("avx512bw")
    {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only changes which register
    // state this process may use.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Products computed on the tiles by this process (so tests can check where a model's
/// products went).
static PRODUCTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many products this process has computed on the tiles.
pub fn products_computed() -> u64 {
    PRODUCTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether a product of these sizes goes to the tiles: both sides and the depth at
/// least 128 (smaller products lose to the cost of packing).
pub fn suits(m: usize, n: usize, k: usize) -> bool {
    m >= 128 && n >= 128 && k >= 128
}

/// One operand of `C = A . B^T`, seen as a `rows x k` matrix: element `(x, p)` is
/// `data[x * ld + p]` when `kcontig`, else `data[p * ld + x]`.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    k: usize,
    ld: usize,
    kcontig: bool,
}

/// The cache lines of one 32-row group's k-range, to prefetch while the group before it
/// is multiplied: `count` lines, line `i` at `base + (i / per_row) * ld + (i % per_row) * 16`.
struct SourceLines {
    base: *const f32,
    ld: usize,
    per_row: usize,
    count: usize,
}

impl SourceLines {
    /// Prefetches lines `from..from + n` (those that exist) into L1.
    #[inline(always)]
    fn prefetch(&self, from: usize, n: usize) {
        for i in from..(from + n).min(self.count) {
            let at = (i / self.per_row) * self.ld + (i % self.per_row) * T;
            // A prefetch never faults; the address is computed without dereferencing.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.base.wrapping_add(at).cast());
            }
        }
    }
}

impl Operand<'_> {
    /// The source lines that [`Operand::pack`] reads for group `g`, k-blocks from `p0`.
    fn lines(&self, g: usize, p0: usize, pbs: usize) -> SourceLines {
        let x0 = g * 2 * T;
        let rows = self.rows.saturating_sub(x0).min(2 * T);
        let ks = self.k.saturating_sub(p0).min(pbs * 2 * T);
        // Storage rows run along `k` (one per matrix row) or across the rows (one per `k`).
        let (lines, along, start) = if self.kcontig {
            (rows, ks, x0 * self.ld + p0)
        } else {
            (ks, rows, p0 * self.ld + x0)
        };
        let per_row = along.div_ceil(T);
        SourceLines {
            base: self.data.as_ptr().wrapping_add(start),
            ld: self.ld,
            per_row,
            count: lines * per_row,
        }
    }

    /// Packs the 32-row groups `g0..g1` for `pbs` k-blocks from `p0`: group `g`'s block
    /// `pb` (3 planes x 2 tiles x 16 x 16 words) at `out + (g - g0) * gstride + pb * BLOCK`,
    /// as A tiles (`[x][q]`) or B tiles (`[q][x]`); zeros outside the matrix. Walks the
    /// storage in its order (rows along `k`, or `k`-rows across the groups).
    ///
    /// # Safety
    /// AVX-512 F and BW (implied by [`available`]); `out` valid for the blocks written,
    /// which no other thread writes at the same time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack(
        &self,
        g0: usize,
        g1: usize,
        p0: usize,
        pbs: usize,
        as_a: bool,
        out: *mut u32,
        gstride: usize,
    ) {
        let one = |g: usize, pb: usize| {
            for t in 0..2 {
                // SAFETY: as the caller guarantees.
                unsafe {
                    let dst = out.add((g - g0) * gstride + pb * BLOCK + t * T * T);
                    simd::pack16(self, g * 2 * T + t * T, p0 + pb * 2 * T, as_a, dst)
                }
            }
        };
        if self.kcontig {
            for g in g0..g1 {
                for pb in 0..pbs {
                    one(g, pb);
                }
            }
        } else {
            for pb in 0..pbs {
                for g in g0..g1 {
                    one(g, pb);
                }
            }
        }
    }
}

/// The bfloat16 rounding (to nearest, ties to even) of `x`, as f32 bits with the low 16
/// bits zero; NaN stays NaN. The reference for the vector code's split.
#[cfg(test)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    if x.is_nan() {
        0x7fc0_0000
    } else {
        r
    }
}

/// `x` as three bfloat16 (bits in the low half of each word) that sum to it exactly.
/// Infinities and NaN are carried by the first part alone. The reference for
/// [`simd::split`].
#[cfg(test)]
fn split(x: f32) -> [u32; 3] {
    let h = bf16_bits(x);
    let hf = f32::from_bits(h);
    let r1 = if hf.is_finite() { x - hf } else { 0.0 };
    let m = bf16_bits(r1);
    let r2 = r1 - f32::from_bits(m);
    let l = bf16_bits(r2);
    [h >> 16, m >> 16, l >> 16]
}

/// The tile configuration: palette 1, all eight tiles 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Configures this thread's tiles for [`kernel`] while it lives; releases them after.
struct Tiles;

impl Tiles {
    fn configure() -> Self {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = T as u8;
        }
        // SAFETY: `available()` was checked by the caller (the tile state is granted);
        // the configuration is valid for palette 1.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("ldtilecfg [{0}]", in(reg) &cfg, options(nostack, readonly));
        }
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state configured in `configure`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// The four tile products of one term: row tiles tmm4/tmm5 times column tiles tmm6/tmm7
/// into the accumulators tmm0-3.
#[cfg(target_arch = "x86_64")]
macro_rules! products {
    () => {
        concat!(
            "tdpbf16ps tmm0, tmm4, tmm6\n",
            "tdpbf16ps tmm1, tmm5, tmm6\n",
            "tdpbf16ps tmm2, tmm4, tmm7\n",
            "tdpbf16ps tmm3, tmm5, tmm7",
        )
    };
}

/// One 32 x 32 block of `C` (row-major at `c`, rows `ldc` bytes apart) plus the product
/// of `pbs` packed k-blocks of A (`a`) and B (`b`); the block starts from zero unless
/// `load`.
///
/// # Safety
/// Tiles configured ([`Tiles`]); `a` and `b` valid for `pbs * BLOCK` words; the block at
/// `c` valid for reads and writes; `pbs >= 1`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel(a: *const u32, b: *const u32, pbs: usize, c: *mut f32, ldc: usize, load: bool) {
    // Per k-block: the six products hi.hi, hi.mid, hi.lo, mid.hi, mid.mid, lo.hi (planes
    // at byte offsets 0, 2048, 4096; tiles 1024 apart) into tmm0-3.
    unsafe {
        std::arch::asm!(
            "test {load}, {load}",
            "jz 2f",
            "tileloadd tmm0, [{c0} + {ldc}*1]",
            "tileloadd tmm1, [{c1} + {ldc}*1]",
            "tileloadd tmm2, [{c0} + {ldc}*1 + 64]",
            "tileloadd tmm3, [{c1} + {ldc}*1 + 64]",
            "jmp 3f",
            "2:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "3:",
            "tileloadd tmm4, [{a} + {s}*1]",
            "tileloadd tmm5, [{a} + {s}*1 + 1024]",
            "tileloadd tmm6, [{b} + {s}*1]",
            "tileloadd tmm7, [{b} + {s}*1 + 1024]",
            products!(),
            "tileloadd tmm6, [{b} + {s}*1 + 2048]",
            "tileloadd tmm7, [{b} + {s}*1 + 3072]",
            products!(),
            "tileloadd tmm6, [{b} + {s}*1 + 4096]",
            "tileloadd tmm7, [{b} + {s}*1 + 5120]",
            products!(),
            "tileloadd tmm4, [{a} + {s}*1 + 2048]",
            "tileloadd tmm5, [{a} + {s}*1 + 3072]",
            "tileloadd tmm6, [{b} + {s}*1]",
            "tileloadd tmm7, [{b} + {s}*1 + 1024]",
            products!(),
            "tileloadd tmm6, [{b} + {s}*1 + 2048]",
            "tileloadd tmm7, [{b} + {s}*1 + 3072]",
            products!(),
            "tileloadd tmm4, [{a} + {s}*1 + 4096]",
            "tileloadd tmm5, [{a} + {s}*1 + 5120]",
            "tileloadd tmm6, [{b} + {s}*1]",
            "tileloadd tmm7, [{b} + {s}*1 + 1024]",
            products!(),
            "add {a}, 6144",
            "add {b}, 6144",
            "dec {n}",
            "jnz 3b",
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c1} + {ldc}*1], tmm1",
            "tilestored [{c0} + {ldc}*1 + 64], tmm2",
            "tilestored [{c1} + {ldc}*1 + 64], tmm3",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) pbs => _,
            c0 = in(reg) c,
            c1 = in(reg) c.cast::<u8>().add(T * ldc),
            ldc = in(reg) ldc,
            s = in(reg) 64usize,
            load = in(reg) load as usize,
            options(nostack),
        );
    }
}

/// A raw pointer handed to the tasks that write disjoint blocks through it.
struct SendPtr<P>(*mut P);
impl<P> Clone for SendPtr<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for SendPtr<P> {}
// SAFETY: every task writes only the blocks (of `C`, the accumulator, the packs) it owns.
unsafe impl<P> Send for SendPtr<P> {}
unsafe impl<P> Sync for SendPtr<P> {}

impl<P> SendPtr<P> {
    fn get(self) -> *mut P {
        self.0
    }
}

/// 64 bytes on a 64-byte boundary: the unit of the packed buffers, so that no tile row
/// straddles two cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; T]);

/// Words of packed buffers, on 64-byte boundaries.
fn lines(words: usize) -> Vec<Line> {
    vec![Line([0; T]); words.div_ceil(T)]
}

/// The four f32 tiles of one 32 x 32 block of `C`, on a 64-byte boundary.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Acc([f32; 4 * T * T]);

thread_local! {
    /// Packed A rows of the current task (reused between calls).
    static APACK: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    /// Packed B and the partial sums of the calling thread's last product.
    static BPACK: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
    static PARTIAL: std::cell::Cell<Vec<Acc>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Row-major `dst (m x n) = [dst +] scale op(a) . op(b)` on the tiles (`op` as in
/// [`super::matmul::gemm`]), split between the current rayon pool's threads.
///
/// # Safety
/// [`available`] is true; `dst` is valid for `m * n` writes (and reads when `read_dst`)
/// and does not alias `a` or `b`, whose sizes are `m * k` and `k * n`; `m, n, k > 0`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    dst: *mut f32,
    read_dst: bool,
    scale: f32,
) {
    PRODUCTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let a_op = Operand {
        data: a,
        rows: m,
        k,
        ld: if a_t { m } else { k },
        kcontig: !a_t,
    };
    let b_op = Operand {
        data: b,
        rows: n,
        k,
        ld: if b_t { k } else { n },
        kcontig: b_t,
    };
    // Rows to transpose while packing: A tiles from k-major storage, B tiles from
    // k-contiguous storage. `C^T = B . A^T` swaps the roles.
    let cost = |x: &Operand, y: &Operand| {
        (if x.kcontig { 0 } else { x.rows }) + (if y.kcontig { y.rows } else { 0 })
    };
    let (lhs, rhs, out_t) = if cost(&b_op, &a_op) < cost(&a_op, &b_op) {
        (b_op, a_op, true)
    } else {
        (a_op, b_op, false)
    };
    let out = Out {
        dst: SendPtr(dst),
        ld: n,
        rows: lhs.rows,
        cols: rhs.rows,
        transposed: out_t,
        read_dst,
        scale,
    };
    product(lhs, rhs, &out);
}

/// Where and how the blocks of `C' = lhs . rhs^T` (`rows x cols`) are written.
struct Out {
    dst: SendPtr<f32>,
    ld: usize,
    rows: usize,
    cols: usize,
    /// `C'` is `C^T`: element `(i, j)` goes to `dst[j * ld + i]`.
    transposed: bool,
    read_dst: bool,
    scale: f32,
}

impl Out {
    /// Asks for block `(ib, jb)` of `C` (a whole block, not transposed) in L1, for
    /// writing: the tiles' stores into lines that are not in cache stall far longer than
    /// vector stores do.
    #[inline(always)]
    fn prefetch_block(&self, ib: usize, jb: usize) {
        let base = self
            .dst
            .get()
            .wrapping_add(ib * 2 * T * self.ld + jb * 2 * T);
        for r in 0..2 * T {
            for h in 0..2 {
                // A prefetch never faults; the address is computed without dereferencing.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
                    _mm_prefetch::<_MM_HINT_ET0>(base.wrapping_add(r * self.ld + h * T).cast());
                }
            }
        }
    }

    /// Multiplies the whole 32 x 32 block of `C` at `c` by the scale, in place.
    ///
    /// # Safety
    /// As [`gemm_f32`]; the block is inside `C` and owned by the calling task.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scale_block(&self, c: *mut f32) {
        use std::arch::x86_64::*;
        let scale = _mm512_set1_ps(self.scale);
        for r in 0..2 * T {
            for h in 0..2 {
                // SAFETY: rows of 32 floats inside `C`.
                unsafe {
                    let p = c.add(r * self.ld + h * T);
                    _mm512_storeu_ps(p, _mm512_mul_ps(scale, _mm512_loadu_ps(p)));
                }
            }
        }
    }

    /// Writes the 32 x 32 block `(ib, jb)` of `C'` from its four tiles.
    ///
    /// # Safety
    /// As [`gemm_f32`]; the block is owned by the calling task; AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn write(&self, ib: usize, jb: usize, acc: &[f32; 4 * T * T]) {
        use std::arch::x86_64::*;
        for t in 0..4 {
            let (rt, ct) = (t & 1, t >> 1);
            let i0 = ib * 2 * T + rt * T;
            let j0 = jb * 2 * T + ct * T;
            let ni = self.rows.saturating_sub(i0).min(T);
            let nj = self.cols.saturating_sub(j0).min(T);
            if ni == 0 || nj == 0 {
                continue;
            }
            let mut rows = [_mm512_setzero_si512(); T];
            for (r, row) in rows.iter_mut().enumerate() {
                // SAFETY: the quadrant's row `r` is 16 floats inside `acc` (32 x 32).
                *row = unsafe {
                    _mm512_loadu_si512(acc[(rt * T + r) * 2 * T + ct * T..].as_ptr().cast())
                };
            }
            // Row `r` of `rows` goes to `dst[start + r * ld ..]`, `len` columns.
            let (count, len, start) = if self.transposed {
                simd::transpose16(&mut rows);
                (nj, ni, j0 * self.ld + i0)
            } else {
                (ni, nj, i0 * self.ld + j0)
            };
            let mask: __mmask16 = if len == T { !0 } else { (1 << len) - 1 };
            let scale = _mm512_set1_ps(self.scale);
            for (r, row) in rows.iter().enumerate().take(count) {
                let v = _mm512_castsi512_ps(*row);
                // SAFETY: the row's `len` elements are inside `C` (the caller's bound).
                unsafe {
                    let p = self.dst.get().add(start + r * self.ld);
                    let v = if self.read_dst {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), _mm512_mul_ps(scale, v))
                    } else if self.scale == 1.0 {
                        v
                    } else {
                        _mm512_mul_ps(scale, v)
                    };
                    _mm512_mask_storeu_ps(p, mask, v);
                }
            }
        }
    }
}

/// The AVX-512 parts of packing and writing.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Operand, T};
    use std::arch::x86_64::*;

    /// The bfloat16 rounding (to nearest, ties to even) of 16 floats' bits, as f32 bits
    /// (the low 16 bits are dropped when packed); NaN not handled.
    #[inline(always)]
    unsafe fn round(b: __m512i) -> __m512i {
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)))
    }

    /// The three parts of 16 floats (as [`super::split`]), as f32 bits whose high halves
    /// are the bfloat16 parts.
    #[inline(always)]
    pub(super) unsafe fn split(x: __m512) -> [__m512i; 3] {
        let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let h = _mm512_and_si512(round(_mm512_castps_si512(x)), high);
        let h = _mm512_mask_mov_epi32(h, nan, _mm512_set1_epi32(0x7fc0_0000));
        let hf = _mm512_castsi512_ps(h);
        let finite =
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(hf), _mm512_set1_ps(f32::INFINITY));
        let r1 = _mm512_maskz_sub_ps(finite, x, hf);
        let m = _mm512_and_si512(round(_mm512_castps_si512(r1)), high);
        // What is left fits a bfloat16 exactly: its low half is zero (above 2^-126).
        let r2 = _mm512_sub_ps(r1, _mm512_castsi512_ps(m));
        [h, m, _mm512_castps_si512(r2)]
    }

    /// Transposes a 16 x 16 matrix of 32-bit words held as 16 rows.
    #[inline(always)]
    pub(super) unsafe fn transpose16(r: &mut [__m512i; T]) {
        let mut u = [_mm512_setzero_si512(); T];
        for g in 0..4 {
            let t0 = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
            let t1 = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
            let t2 = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
            let t3 = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
            u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
        }
        // u[4g + c], 128-bit lane L: column 4L + c, rows 4g..4g + 4.
        for c in 0..4 {
            let va = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
            let vb = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
            let wa = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
            let wb = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
            r[c] = _mm512_shuffle_i32x4::<0x88>(va, wa);
            r[8 + c] = _mm512_shuffle_i32x4::<0xdd>(va, wa);
            r[4 + c] = _mm512_shuffle_i32x4::<0x88>(vb, wb);
            r[12 + c] = _mm512_shuffle_i32x4::<0xdd>(vb, wb);
        }
    }

    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        if n >= T {
            !0
        } else {
            (1 << n) - 1
        }
    }

    /// The 16 x 32 piece of an operand that [`pack16`] packs.
    struct Rows<'a, 'b> {
        op: &'b Operand<'a>,
        x0: usize,
        p0: usize,
        /// Rows and `k` inside the matrix (at most 16 and 32).
        rows: usize,
        ks: usize,
    }

    impl Rows<'_, '_> {
        /// Word row `r` (16 words per plane) in the storage's own order: row `x0 + r`'s
        /// 32 consecutive k (their bfloat16 parts in order), or k-rows `2r` and `2r + 1`
        /// (a word per x); zeros outside the matrix.
        ///
        /// # Safety
        /// AVX-512 F/BW (inlined into [`pack16`]'s callers, which enable them).
        #[inline(always)]
        unsafe fn words(&self, r: usize) -> [__m512i; 3] {
            let (op, rows, ks) = (self.op, self.rows, self.ks);
            let base = op.data.as_ptr();
            let zero = _mm512_setzero_ps();
            // SAFETY: masked loads touch only elements inside the matrix (rows `< rows`,
            // k `< ks`; masked-off lanes do not fault).
            unsafe {
                if op.kcontig {
                    if r >= rows || ks == 0 {
                        return [_mm512_setzero_si512(); 3];
                    }
                    let odd = _mm512_set_epi16(
                        63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27,
                        25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                    );
                    let p = base.add((self.x0 + r) * op.ld + self.p0);
                    let v0 = _mm512_maskz_loadu_ps(mask(ks), p);
                    let v1 = if ks > T {
                        _mm512_maskz_loadu_ps(mask(ks - T), p.add(T))
                    } else {
                        zero
                    };
                    let (s0, s1) = (split(v0), split(v1));
                    [
                        _mm512_permutex2var_epi16(s0[0], odd, s1[0]),
                        _mm512_permutex2var_epi16(s0[1], odd, s1[1]),
                        _mm512_permutex2var_epi16(s0[2], odd, s1[2]),
                    ]
                } else {
                    if rows == 0 {
                        return [_mm512_setzero_si512(); 3];
                    }
                    let mr = mask(rows);
                    let row = |p: usize| base.add((self.p0 + p) * op.ld + self.x0);
                    // The sweep reads 32 k-rows side by side, one line of each per call:
                    // ask for each row's line four calls ahead (hardware prefetchers do
                    // not follow that many streams).
                    for p in [2 * r, 2 * r + 1] {
                        let ahead = base.wrapping_add((self.p0 + p) * op.ld + self.x0 + 4 * T);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    }
                    let v0 = if 2 * r < ks {
                        _mm512_maskz_loadu_ps(mr, row(2 * r))
                    } else {
                        zero
                    };
                    let v1 = if 2 * r + 1 < ks {
                        _mm512_maskz_loadu_ps(mr, row(2 * r + 1))
                    } else {
                        zero
                    };
                    let (s0, s1) = (split(v0), split(v1));
                    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
                    [
                        pair(s0[0], s1[0], high),
                        pair(s0[1], s1[1], high),
                        pair(s0[2], s1[2], high),
                    ]
                }
            }
        }
    }

    /// The pair word of two parts: `e`'s bfloat16 in the low half, `o`'s in the high.
    #[inline(always)]
    unsafe fn pair(e: __m512i, o: __m512i, high: __m512i) -> __m512i {
        _mm512_or_si512(_mm512_srli_epi32::<16>(e), _mm512_and_si512(o, high))
    }

    /// Packs rows `x0..x0 + 16`, `k` in `p0..p0 + 32`, of `op` as one tile per plane at
    /// `dst`, `dst + 512` and `dst + 1024` (A tile `[x][q]` or B tile `[q][x]`).
    ///
    /// # Safety
    /// AVX-512 F/BW; `dst` valid for `1024 + 256` words.
    #[inline(always)]
    pub(super) unsafe fn pack16(op: &Operand, x0: usize, p0: usize, as_a: bool, dst: *mut u32) {
        let rows = op.rows.saturating_sub(x0).min(T);
        let ks = op.k.saturating_sub(p0).min(2 * T);
        let at = Rows {
            op,
            x0,
            p0,
            rows,
            ks,
        };
        // SAFETY (stores): plane `pl`'s tile is 256 words at `dst + 512 pl` (caller's bound).
        if op.kcontig == as_a {
            for r in 0..T {
                let w = at.words(r);
                for (pl, v) in w.iter().enumerate() {
                    unsafe { _mm512_storeu_si512(dst.add(pl * 2 * T * T + r * T).cast(), *v) };
                }
            }
        } else {
            let mut w = [[_mm512_setzero_si512(); T]; 3];
            let [wh, wm, wl] = &mut w;
            for (r, ((h, m), l)) in wh.iter_mut().zip(wm.iter_mut()).zip(wl).enumerate() {
                [*h, *m, *l] = at.words(r);
            }
            for (pl, tile) in w.iter_mut().enumerate() {
                unsafe {
                    transpose16(tile);
                    for (r, row) in tile.iter().enumerate() {
                        _mm512_storeu_si512(dst.add(pl * 2 * T * T + r * T).cast(), *row);
                    }
                }
            }
        }
    }
}

fn product(lhs: Operand, rhs: Operand, out: &Out) {
    let k = lhs.k;
    let kp = k.div_ceil(2 * T) * 2 * T;
    let mb = lhs.rows.div_ceil(2 * T);
    let nb = rhs.rows.div_ceil(2 * T);
    // k per chunk: as deep as keeps the packed B of a chunk within `B_BYTES`.
    let fit = (B_BYTES / (nb * 2 * T * 6)) / (2 * T) * (2 * T);
    let kc = kp.min(fit.max(KC_MIN));
    let chunks = kp.div_ceil(kc);
    let threads = rayon::current_num_threads();
    let groups = lhs.rows.div_ceil(MC);
    // Column groups only to give every thread work: each one packs its rows of A again.
    let col_groups = threads.div_ceil(groups).clamp(1, nb);
    let cols_per = nb.div_ceil(col_groups);
    let tasks: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (0..nb.div_ceil(cols_per)).map(move |c| (g, c)))
        .collect();
    // A whole block inside `C`, not transposed, not added to `C`'s old values with a
    // scale: the tiles sum into `C` itself (from its old values when accumulating, scaled
    // in place after the last chunk). Other blocks sum from zero into a local block (or,
    // between k-chunks, `partial`) and are written by `Out::write`.
    let in_place = !out.transposed && (out.scale == 1.0 || !out.read_dst);
    let direct = |ib: usize, jb: usize| {
        in_place && (ib + 1) * 2 * T <= out.rows && (jb + 1) * 2 * T <= out.cols
    };
    let all_direct = in_place && out.rows.is_multiple_of(2 * T) && out.cols.is_multiple_of(2 * T);
    // Buffers kept by the calling thread between calls: fresh pages cost a fault and a
    // zeroing each (measured: 12% of a training step).
    let mut partial = PARTIAL.take();
    if chunks > 1 && !all_direct && partial.len() < mb * nb {
        partial = vec![Acc([0.0; 4 * T * T]); mb * nb];
    }
    let partial_ptr = SendPtr(partial.as_mut_ptr());
    let mut bpack = BPACK.take();
    if bpack.len() * T < nb * (kc / (2 * T)) * BLOCK {
        bpack = lines(nb * (kc / (2 * T)) * BLOCK);
    }
    for chunk in 0..chunks {
        let p0 = chunk * kc;
        let pbs = (kp - p0).min(kc) / (2 * T);
        let last = chunk + 1 == chunks;
        let bstride = pbs * BLOCK;
        // B packs in parallel: by groups of columns when rows run along `k`, else by
        // k-blocks (each task sweeps whole k-rows).
        let bptr = SendPtr(bpack.as_mut_ptr().cast::<u32>());
        let pieces = if rhs.kcontig { nb } else { pbs };
        let per = pieces.div_ceil(2 * threads).max(1);
        (0..pieces.div_ceil(per)).into_par_iter().for_each(|i| {
            let (lo, hi) = (i * per, ((i + 1) * per).min(pieces));
            // SAFETY: AVX-512 F/BW come with AMX (`available`); the pieces' blocks are
            // disjoint and inside `bpack` (`nb * bstride` words).
            unsafe {
                if rhs.kcontig {
                    rhs.pack(
                        lo,
                        hi,
                        p0,
                        pbs,
                        false,
                        bptr.get().add(lo * bstride),
                        bstride,
                    )
                } else {
                    let at = bptr.get().add(lo * BLOCK);
                    rhs.pack(0, nb, p0 + lo * 2 * T, hi - lo, false, at, bstride)
                }
            }
        });
        let bpack = &bpack;
        tasks.par_iter().for_each(|&(g, cg)| {
            let ib0 = g * MC / (2 * T);
            let ib1 = ((g + 1) * MC / (2 * T)).min(mb);
            let jb0 = cg * cols_per;
            let jb1 = (jb0 + cols_per).min(nb);
            // One block of `C`: the product of A group `ib` (packed at `a`) and B block
            // `jb`, into `C` or through `local` / `partial`.
            let block = |a: *const u32, ib: usize, jb: usize, local: &mut Acc| {
                // SAFETY: block `jb` is inside `bpack`.
                let b = unsafe { bpack.as_ptr().cast::<u32>().add(jb * bstride) };
                if direct(ib, jb) {
                    // SAFETY: the block is inside `C` and belongs to this task; tiles
                    // configured; the packs hold `pbs` blocks.
                    unsafe {
                        let c = out.dst.get().add(ib * 2 * T * out.ld + jb * 2 * T);
                        kernel(a, b, pbs, c, 4 * out.ld, out.read_dst || chunk > 0);
                        if last && out.scale != 1.0 {
                            out.scale_block(c);
                        }
                    }
                    return;
                }
                let acc = if chunks > 1 {
                    // SAFETY: block (ib, jb) of `partial` belongs to this task.
                    unsafe { &mut *partial_ptr.get().add(ib * nb + jb) }
                } else {
                    local
                };
                // SAFETY: tiles configured; the packs hold `pbs` blocks; `acc` is a
                // 32 x 32 block.
                unsafe { kernel(a, b, pbs, acc.0.as_mut_ptr(), 8 * T, chunk > 0) };
                if last {
                    // SAFETY: block (ib, jb) of `C` belongs to this task.
                    unsafe { out.write(ib, jb, &acc.0) };
                }
            };
            APACK.with_borrow_mut(|apack| {
                let mut local = Acc([0f32; 4 * T * T]);
                if (jb1 - jb0) * bstride * 4 <= B_BYTES {
                    // The task's B blocks stay in L2: each A group is packed, then
                    // multiplied by every B block while the next group's source is
                    // prefetched.
                    if apack.len() * T < bstride {
                        *apack = lines(bstride);
                    }
                    let apack = apack.as_mut_ptr().cast::<u32>();
                    let _tiles = Tiles::configure();
                    for ib in ib0..ib1 {
                        // SAFETY: as above; `apack` holds one group's blocks.
                        unsafe { lhs.pack(ib, ib + 1, p0, pbs, true, apack, bstride) };
                        let next = (ib + 1 < ib1).then(|| lhs.lines(ib + 1, p0, pbs));
                        let per = next.as_ref().map_or(0, |l| l.count.div_ceil(jb1 - jb0));
                        for jb in jb0..jb1 {
                            if let Some(l) = &next {
                                l.prefetch((jb - jb0) * per, per);
                            }
                            if jb + 1 < jb1 && direct(ib, jb + 1) {
                                out.prefetch_block(ib, jb + 1);
                            }
                            block(apack, ib, jb, &mut local);
                        }
                    }
                } else {
                    // Too much B for L2: all the task's A groups are packed once, and
                    // each B block meets them all while it is in cache.
                    let words = (ib1 - ib0) * bstride;
                    if apack.len() * T < words {
                        *apack = lines(words);
                    }
                    let apack = apack.as_mut_ptr().cast::<u32>();
                    // SAFETY: as above; `apack` holds the groups' blocks.
                    unsafe { lhs.pack(ib0, ib1, p0, pbs, true, apack, bstride) };
                    let _tiles = Tiles::configure();
                    for jb in jb0..jb1 {
                        for ib in ib0..ib1 {
                            // SAFETY: group `ib` is inside `apack`.
                            let a = unsafe { apack.add((ib - ib0) * bstride) };
                            block(a, ib, jb, &mut local);
                        }
                    }
                }
            });
        });
    }
    PARTIAL.set(partial);
    BPACK.set(bpack);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_exact_and_the_parts_shrink() {
        let mut x = 1.2345678f32;
        for i in 0..2000 {
            x = f32::from_bits(x.to_bits().wrapping_mul(2654435761).rotate_left(7));
            if !x.is_finite() || x.abs() < 1e-30 || x.abs() > 1e30 {
                x = 0.75 + i as f32 * 1e-3;
                continue;
            }
            let [h, m, l] = split(x).map(|b| f32::from_bits(b << 16));
            assert_eq!(h + m + l, x, "{x:e}");
            assert_eq!((h as f64) + (m as f64) + (l as f64), x as f64, "{x:e}");
            assert!(m.abs() <= x.abs() * 2f32.powi(-8), "{x:e}");
            assert!(l.abs() <= x.abs() * 2f32.powi(-16), "{x:e}");
        }
        assert!(f32::from_bits(split(f32::NAN)[0] << 16).is_nan());
        assert_eq!(split(f32::INFINITY), [0x7f80, 0, 0]);
        assert_eq!(split(-0.0), [0x8000, 0, 0]);
    }

    #[test]
    fn the_vector_split_matches_the_reference() {
        if !available() {
            return;
        }
        let mut bits: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7fff_ffff,
            0xffff_ffff,
            0x7f7f_ffff,
            0x0000_0001,
            0x0080_0000,
            0x3f80_8000,
            0x3f81_8000,
        ];
        let mut s = 99u64;
        while !bits.len().is_multiple_of(16) || bits.len() < 4096 {
            s = crate::ops::splitmix64(s);
            bits.push(s as u32);
        }
        for chunk in bits.chunks(16) {
            let x: Vec<f32> = chunk.iter().map(|&b| f32::from_bits(b)).collect();
            let mut got = [[0u32; 16]; 3];
            // SAFETY: AVX-512 comes with AMX (`available`); 16 floats in, 16 words out.
            unsafe { vector_split(&x, &mut got) };
            for (i, &v) in x.iter().enumerate() {
                let want = split(v);
                for pl in 0..3 {
                    let g = got[pl][i] >> 16;
                    let w = want[pl];
                    let both_nan = pl == 0
                        && f32::from_bits(g << 16).is_nan()
                        && f32::from_bits(w << 16).is_nan();
                    // Subnormal bfloat16 parts (below 2^-126, from inputs below 2^-110):
                    // the vector code truncates them, and the tile unit reads both as 0.
                    let subnormal = |p: u32| p & 0x7f80 == 0;
                    let both_zero = subnormal(g) && subnormal(w);
                    assert!(
                        g == w || both_nan || both_zero,
                        "{:#010x} part {pl}: {g:#06x} vs {w:#06x}",
                        v.to_bits()
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn vector_split(x: &[f32], out: &mut [[u32; 16]; 3]) {
        use std::arch::x86_64::*;
        // SAFETY: 16 floats in, 16 words per plane out.
        unsafe {
            let parts = simd::split(_mm512_loadu_ps(x.as_ptr()));
            for pl in 0..3 {
                _mm512_storeu_si512(out[pl].as_mut_ptr().cast(), parts[pl]);
            }
        }
    }

    /// Reference `[c +] scale op(a) op(b)` in f64, with the bound `sum |a||b|` per element.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        a_t: bool,
        b: &[f32],
        b_t: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0.0; m * n];
        let mut mag = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if a_t { a[p * m + i] } else { a[i * k + p] } as f64;
                    let bv = if b_t { b[j * k + p] } else { b[p * n + j] } as f64;
                    c[i * n + j] += av * bv;
                    mag[i * n + j] += (av * bv).abs();
                }
            }
        }
        (c, mag)
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = crate::ops::splitmix64(s);
                // Wide magnitudes and both signs, all bits of the significand in use.
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                let e = ((s & 15) as i32) - 8;
                ((u - 0.5) * 2f64.powi(e)) as f32
            })
            .collect()
    }

    #[test]
    fn products_have_f32_accuracy_in_every_layout_and_edge() {
        if !available() {
            eprintln!("this CPU has no AMX tiles: nothing to test");
            return;
        }
        let shapes = [
            (32, 32, 32),
            (37, 45, 29),
            (300, 70, 1100),
            (64, 530, 96),
            (17, 600, 40),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            for a_t in [false, true] {
                for b_t in [false, true] {
                    let a = values(m * k, 1 + si as u64);
                    let b = values(k * n, 100 + si as u64);
                    let (want, mag) = reference((m, n, k), &a, a_t, &b, b_t);
                    for (read, scale) in
                        [(false, 1.0f32), (true, 1.0), (false, 0.375), (true, -2.5)]
                    {
                        let mut c = values(m * n, 7);
                        let before = c.clone();
                        // SAFETY: `c` holds m * n floats; AMX is available.
                        unsafe { gemm_f32(m, n, k, &a, a_t, &b, b_t, c.as_mut_ptr(), read, scale) };
                        for i in 0..m * n {
                            let s = scale as f64;
                            let w = s * want[i] + if read { before[i] as f64 } else { 0.0 };
                            // f32 accumulation over k terms, plus the final scale and add.
                            let bound = s.abs() * mag[i] * (k as f64 + 2.0) * 2f64.powi(-24)
                                + w.abs() * 2f64.powi(-23);
                            let err = (c[i] as f64 - w).abs();
                            assert!(
                                err <= bound,
                                "{m}x{n}x{k} a_t {a_t} b_t {b_t} read {read} scale {scale}: \
                                 element {i}: {} vs {w} (error {err:e} > {bound:e})",
                                c[i]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn products_are_the_same_bits_for_any_thread_count() {
        if !available() {
            return;
        }
        let (m, n, k) = (300, 200, 700);
        let a = values(m * k, 3);
        let b = values(k * n, 4);
        let run = |threads: usize, a_t: bool, b_t: bool| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = vec![0f32; m * n];
            // SAFETY: as above.
            pool.install(|| unsafe {
                gemm_f32(m, n, k, &a, a_t, &b, b_t, c.as_mut_ptr(), false, 1.0)
            });
            c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
            let one = run(1, a_t, b_t);
            for threads in [2, 3, 8] {
                assert!(
                    one == run(threads, a_t, b_t),
                    "{threads} threads, {a_t} {b_t}"
                );
            }
        }
    }
}
