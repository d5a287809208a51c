//! Matrix-vector kernels of the recurrent decoder: weights packed once into cache-friendly
//! tiles (f32, f16, int8 or int4 storage; the quantized tiles are in `qkernels`), and
//! `y = W x + b` with AVX-512, AVX2/FMA/F16C or portable code chosen at run time.
//!
//! Packing: the rows of a `[rows, cols]` matrix are padded to a multiple of 16 and cut into
//! groups of 64 rows (then 16-row tail tiles). Within a group the storage is `[cols][64]`:
//! the kernel walks it front to back, broadcasting `x[i]` against 64 consecutive weights,
//! so every load is contiguous, 64-byte aligned and no horizontal sums are needed.
//!
//! Arithmetic: f32 storage computes in f32. f16 storage either upcasts each weight to f32
//! and accumulates in f32 ([`Arith::F32`]), or computes like f16 hardware would
//! ([`Arith::F16Native`]): the input rounded to f16 and the accumulator rounded to f16
//! after every fused multiply-add. On CPUs without AVX512-FP16 arithmetic (this project's
//! AMD Zen 4 machines) that rounding is done with F16C conversions, so it shows the
//! accuracy of native f16, not the speed it would have on an FP16 unit.

// The kernels index register arrays and lanes by position on purpose.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows per group in the packed layout.
const GROUP: usize = 64;
/// Rows per tail tile (rows are padded to a multiple of this).
const TILE: usize = 16;

pub use crate::isa::Isa;
use crate::quant::{QuantFormat, Quantized};

use super::qkernels;

/// How products are accumulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    /// f32 multiply-add (f16 weights are upcast first).
    F32,
    /// f16 inputs and an f16 accumulator rounded after every multiply-add.
    F16Native,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// 64-byte aligned storage viewed as `f32` or `u16` (f16 bits).
#[derive(Clone)]
struct Aligned {
    lines: Vec<Line>,
}

impl Aligned {
    fn zeroed(bytes: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
        }
    }
    fn as_f32(&self) -> &[f32] {
        // SAFETY: Line is 64 plain bytes aligned to 64; every bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 16) }
    }
    fn as_f32_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above, and the borrow is unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.lines.len() * 16)
        }
    }
    fn as_u8(&self) -> &[u8] {
        // SAFETY: Line is 64 plain bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 64) }
    }
    fn as_u8_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, unique borrow.
        unsafe {
            std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.lines.len() * 64)
        }
    }
    fn as_u16(&self) -> &[u16] {
        // SAFETY: as above for u16.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 32) }
    }
    fn as_u16_mut(&mut self) -> &mut [u16] {
        // SAFETY: as above for u16, unique borrow.
        unsafe {
            std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.lines.len() * 32)
        }
    }
}

/// How a packed matrix stores its weights.
#[derive(Clone)]
enum Storage {
    F32,
    F16,
    /// int8 levels; one scale per row (padded rows: scale 0).
    I8 {
        scales: Vec<f32>,
    },
    /// int4 levels, two per byte; per tile `[cols / group][width]` scales.
    I4 {
        group: usize,
        scales: Vec<f32>,
    },
}

/// A `[rows, cols]` matrix packed for [`PackedMatrix::matvec`].
#[derive(Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    groups: usize,
    tails: usize,
    storage: Storage,
    data: Aligned,
}

impl PackedMatrix {
    /// Packs row-major `w` (`rows * cols` values); `f16` stores the weights as IEEE half.
    ///
    /// # Panics
    /// If `w.len() != rows * cols`.
    pub fn pack(w: &[f32], rows: usize, cols: usize, f16: bool) -> Self {
        assert_eq!(w.len(), rows * cols, "matrix values do not match its shape");
        let padded = rows.div_ceil(TILE) * TILE;
        let groups = padded / GROUP;
        let tails = (padded - groups * GROUP) / TILE;
        let n = padded * cols;
        let mut data = Aligned::zeroed(n * if f16 { 2 } else { 4 });
        // Position of W[r][i] in the packed order.
        let index = |r: usize, i: usize| -> usize {
            let g = r / GROUP;
            if g < groups {
                g * GROUP * cols + i * GROUP + r % GROUP
            } else {
                let t = (r - groups * GROUP) / TILE;
                groups * GROUP * cols + t * TILE * cols + i * TILE + r % TILE
            }
        };
        if f16 {
            let out = data.as_u16_mut();
            for r in 0..rows {
                for i in 0..cols {
                    out[index(r, i)] = half::f16::from_f32(w[r * cols + i]).to_bits();
                }
            }
        } else {
            let out = data.as_f32_mut();
            for r in 0..rows {
                for i in 0..cols {
                    out[index(r, i)] = w[r * cols + i];
                }
            }
        }
        Self {
            rows,
            cols,
            groups,
            tails,
            storage: if f16 { Storage::F16 } else { Storage::F32 },
            data,
        }
    }

    /// Packs a quantized matrix as it is (int8: one byte per weight; int4: two weights per
    /// byte), with its scales; no f32 copy of the weights is made.
    pub fn pack_quantized(q: &Quantized) -> Self {
        let (rows, cols) = (q.rows, q.cols);
        let padded = rows.div_ceil(TILE) * TILE;
        let groups = padded / GROUP;
        let tails = (padded - groups * GROUP) / TILE;
        // (first row, width, byte offset) of the tile holding row `r`.
        let tile_of = |r: usize, bytes_per_col: usize| -> (usize, usize, usize) {
            let g = r / GROUP;
            if g < groups {
                (g * GROUP, GROUP, g * GROUP * cols * bytes_per_col / GROUP)
            } else {
                let t = (r - groups * GROUP) / TILE;
                let first = groups * GROUP + t * TILE;
                (
                    first,
                    TILE,
                    (groups * GROUP + t * TILE) * cols * bytes_per_col / GROUP,
                )
            }
        };
        match q.format {
            QuantFormat::Int8 => {
                let mut data = Aligned::zeroed(padded * cols);
                let out = data.as_u8_mut();
                for r in 0..rows {
                    let (first, width, base) = tile_of(r, GROUP);
                    for i in 0..cols {
                        out[base + i * width + (r - first)] = q.level(r, i) as i8 as u8;
                    }
                }
                let mut scales = q.scales.clone();
                scales.resize(padded, 0.0);
                Self {
                    rows,
                    cols,
                    groups,
                    tails,
                    storage: Storage::I8 { scales },
                    data,
                }
            }
            QuantFormat::Int4 => {
                let mut data = Aligned::zeroed(padded * cols / 2);
                let out = data.as_u8_mut();
                let ng = cols / q.group;
                let mut scales = vec![0.0f32; padded * ng];
                for r in 0..rows {
                    let (first, width, base) = tile_of(r, GROUP / 2);
                    let (rr, half) = (r - first, width / 2);
                    for i in 0..cols {
                        let nibble = (q.level(r, i) + 8) as u8;
                        let byte = &mut out[base + i * half + rr % half];
                        *byte |= if rr < half { nibble } else { nibble << 4 };
                    }
                    for g in 0..ng {
                        scales[first * ng + g * width + rr] = q.scale(r, g * q.group);
                    }
                }
                // Padded rows hold level 0 (nibble 8) so they sum to zero.
                for r in rows..padded {
                    let (first, width, base) = tile_of(r, GROUP / 2);
                    let (rr, half) = (r - first, width / 2);
                    for i in 0..cols {
                        let byte = &mut out[base + i * half + rr % half];
                        *byte |= if rr < half { 8 } else { 8 << 4 };
                    }
                }
                Self {
                    rows,
                    cols,
                    groups,
                    tails,
                    storage: Storage::I4 {
                        group: q.group,
                        scales,
                    },
                    data,
                }
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of packed weights (what one matvec streams from memory).
    pub fn bytes(&self) -> usize {
        let scales = match &self.storage {
            Storage::I8 { scales } | Storage::I4 { scales, .. } => 4 * scales.len(),
            Storage::F32 | Storage::F16 => 0,
        };
        self.data.lines.len() * 64 + scales
    }

    /// `y = W x (+ bias)`. `x` has `cols` values, `y` and `bias` have `rows`.
    ///
    /// # Panics
    /// If `x`, `y` or `bias` have other lengths.
    pub fn matvec(&self, isa: Isa, arith: Arith, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "matvec input length");
        assert_eq!(y.len(), self.rows, "matvec output length");
        assert!(
            bias.is_none_or(|b| b.len() == self.rows),
            "matvec bias length"
        );
        let arith = if matches!(self.storage, Storage::F16) {
            arith
        } else {
            Arith::F32
        };
        let cols = self.cols;
        let mut acc = [0.0f32; GROUP];
        for g in 0..self.groups + self.tails {
            let (offset, width, first_row) = if g < self.groups {
                (g * GROUP * cols, GROUP, g * GROUP)
            } else {
                let t = g - self.groups;
                (
                    self.groups * GROUP * cols + t * TILE * cols,
                    TILE,
                    self.groups * GROUP + t * TILE,
                )
            };
            let len = width * cols;
            match &self.storage {
                Storage::F16 => {
                    let w = &self.data.as_u16()[offset..offset + len];
                    tile_f16(isa, arith, w, x, width, &mut acc);
                }
                Storage::F32 => {
                    let w = &self.data.as_f32()[offset..offset + len];
                    tile_f32(isa, w, x, width, &mut acc);
                }
                Storage::I8 { scales } => {
                    let w = &self.data.as_u8()[offset..offset + len];
                    qkernels::tile_i8(isa, w, x, width, &mut acc);
                    for (a, s) in acc[..width].iter_mut().zip(&scales[first_row..]) {
                        *a *= s;
                    }
                }
                Storage::I4 { group, scales } => {
                    let w = &self.data.as_u8()[offset / 2..(offset + len) / 2];
                    let ng = cols / group;
                    let s = &scales[first_row * ng..(first_row + width) * ng];
                    qkernels::tile_i4(isa, w, x, width, *group, s, &mut acc);
                }
            }
            let end = (first_row + width).min(self.rows);
            y[first_row..end].copy_from_slice(&acc[..end - first_row]);
        }
        if let Some(b) = bias {
            for (y, &b) in y.iter_mut().zip(b) {
                *y += b;
            }
            if arith == Arith::F16Native {
                y.iter_mut().for_each(|y| *y = round_f16(*y));
            }
        }
    }
}

/// `x` rounded to the nearest f16 value (as f32).
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

fn tile_f32(isa: Isa, w: &[f32], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after detecting the features; the
        // slice lengths are `width * x.len()`, which the kernels read and no more.
        Isa::Avx512 => unsafe { avx512::tile_f32(w, x, width, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above for AVX2/FMA/F16C.
        Isa::Avx2 => unsafe { avx2::tile_f32(w, x, width, acc) },
        _ => portable_tile(x, width, acc, |k| w[k]),
    }
}

fn tile_f16(isa: Isa, arith: Arith, w: &[u16], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
    match (isa, arith) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see `tile_f32`.
        (Isa::Avx512, Arith::F32) => unsafe { avx512::tile_f16(w, x, width, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see `tile_f32`.
        (Isa::Avx512, Arith::F16Native) => unsafe { avx512::tile_f16_native(w, x, width, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see `tile_f32`.
        (Isa::Avx2, Arith::F32) => unsafe { avx2::tile_f16(w, x, width, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see `tile_f32`.
        (Isa::Avx2, Arith::F16Native) => unsafe { avx2::tile_f16_native(w, x, width, acc) },
        (_, Arith::F32) => portable_tile(x, width, acc, |k| half::f16::from_bits(w[k]).to_f32()),
        (_, Arith::F16Native) => {
            acc[..width].fill(0.0);
            for (i, &xi) in x.iter().enumerate() {
                let xi = round_f16(xi);
                for r in 0..width {
                    let wv = half::f16::from_bits(w[i * width + r]).to_f32();
                    acc[r] = round_f16(wv.mul_add(xi, acc[r]));
                }
            }
        }
    }
}

#[inline(always)]
fn portable_tile(x: &[f32], width: usize, acc: &mut [f32; GROUP], w: impl Fn(usize) -> f32) {
    acc[..width].fill(0.0);
    for (i, &xi) in x.iter().enumerate() {
        let base = i * width;
        for r in 0..width {
            acc[r] += w(base + r) * xi;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;

    /// One tile (`width` = 64 or 16 rows) of f32 weights stored `[cols][width]`: four
    /// inputs per iteration and sixteen accumulators keep independent FMA chains in flight.
    #[target_feature(enable = "avx512f,fma,f16c")]
    pub unsafe fn tile_f32(w: &[f32], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        if width == GROUP {
            let mut a = [_mm512_setzero_ps(); 16];
            let cols = x.len();
            let mut i = 0;
            while i + 4 <= cols {
                for s in 0..4 {
                    let xb = _mm512_set1_ps(*x.get_unchecked(i + s));
                    let q = p.add((i + s) * GROUP);
                    for j in 0..4 {
                        a[4 * s + j] =
                            _mm512_fmadd_ps(_mm512_load_ps(q.add(16 * j)), xb, a[4 * s + j]);
                    }
                }
                i += 4;
            }
            while i < cols {
                let xb = _mm512_set1_ps(*x.get_unchecked(i));
                let q = p.add(i * GROUP);
                for j in 0..4 {
                    a[j] = _mm512_fmadd_ps(_mm512_load_ps(q.add(16 * j)), xb, a[j]);
                }
                i += 1;
            }
            for j in 0..4 {
                let s01 = _mm512_add_ps(a[j], a[4 + j]);
                let s23 = _mm512_add_ps(a[8 + j], a[12 + j]);
                _mm512_storeu_ps(acc.as_mut_ptr().add(16 * j), _mm512_add_ps(s01, s23));
            }
        } else {
            let mut a = [_mm512_setzero_ps(); 4];
            for (i, &xi) in x.iter().enumerate() {
                let v = _mm512_load_ps(p.add(i * TILE));
                a[i % 4] = _mm512_fmadd_ps(v, _mm512_set1_ps(xi), a[i % 4]);
            }
            let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            _mm512_storeu_ps(acc.as_mut_ptr(), s);
        }
    }

    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_load_si256(p.cast()))
    }

    /// As [`tile_f32`] for f16 weights upcast to f32 (four inputs per iteration, sixteen
    /// accumulators, to keep the conversions and FMAs of independent chains in flight).
    #[target_feature(enable = "avx512f,fma,f16c")]
    pub unsafe fn tile_f16(w: &[u16], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        if width == GROUP {
            let mut a = [_mm512_setzero_ps(); 16];
            let cols = x.len();
            let mut i = 0;
            while i + 4 <= cols {
                for s in 0..4 {
                    let xb = _mm512_set1_ps(*x.get_unchecked(i + s));
                    let q = p.add((i + s) * GROUP);
                    for j in 0..4 {
                        a[4 * s + j] = _mm512_fmadd_ps(load_f16(q.add(16 * j)), xb, a[4 * s + j]);
                    }
                }
                i += 4;
            }
            while i < cols {
                let xb = _mm512_set1_ps(*x.get_unchecked(i));
                let q = p.add(i * GROUP);
                for j in 0..4 {
                    a[j] = _mm512_fmadd_ps(load_f16(q.add(16 * j)), xb, a[j]);
                }
                i += 1;
            }
            for j in 0..4 {
                let s01 = _mm512_add_ps(a[j], a[4 + j]);
                let s23 = _mm512_add_ps(a[8 + j], a[12 + j]);
                _mm512_storeu_ps(acc.as_mut_ptr().add(16 * j), _mm512_add_ps(s01, s23));
            }
        } else {
            let mut a = [_mm512_setzero_ps(); 4];
            for (i, &xi) in x.iter().enumerate() {
                let v = load_f16(p.add(i * TILE));
                a[i % 4] = _mm512_fmadd_ps(v, _mm512_set1_ps(xi), a[i % 4]);
            }
            let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            _mm512_storeu_ps(acc.as_mut_ptr(), s);
        }
    }

    #[inline(always)]
    unsafe fn round(v: __m512) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<NEAREST>(v))
    }

    /// f16 arithmetic: input and accumulator rounded to f16 after every multiply-add.
    #[target_feature(enable = "avx512f,fma,f16c")]
    pub unsafe fn tile_f16_native(w: &[u16], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        let lanes = width / 16;
        let mut a = [_mm512_setzero_ps(); 4];
        for (i, &xi) in x.iter().enumerate() {
            let xb = round(_mm512_set1_ps(xi));
            let q = p.add(i * width);
            for j in 0..lanes {
                a[j] = round(_mm512_fmadd_ps(load_f16(q.add(16 * j)), xb, a[j]));
            }
        }
        for j in 0..lanes {
            _mm512_storeu_ps(acc.as_mut_ptr().add(16 * j), a[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;

    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_load_si128(p.cast()))
    }

    /// One tile of f32 weights stored `[cols][width]` (8 rows per register).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_f32(w: &[f32], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        let lanes = width / 8;
        let mut a = [_mm256_setzero_ps(); 8];
        for (i, &xi) in x.iter().enumerate() {
            let xb = _mm256_set1_ps(xi);
            let q = p.add(i * width);
            for j in 0..lanes {
                a[j] = _mm256_fmadd_ps(_mm256_load_ps(q.add(8 * j)), xb, a[j]);
            }
        }
        for j in 0..lanes {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * j), a[j]);
        }
    }

    /// As [`tile_f32`] for f16 weights upcast to f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_f16(w: &[u16], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        let lanes = width / 8;
        let mut a = [_mm256_setzero_ps(); 8];
        for (i, &xi) in x.iter().enumerate() {
            let xb = _mm256_set1_ps(xi);
            let q = p.add(i * width);
            for j in 0..lanes {
                a[j] = _mm256_fmadd_ps(load_f16(q.add(8 * j)), xb, a[j]);
            }
        }
        for j in 0..lanes {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * j), a[j]);
        }
    }

    #[inline(always)]
    unsafe fn round(v: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<NEAREST>(v))
    }

    /// f16 arithmetic emulated with F16C rounding (see the module doc).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_f16_native(w: &[u16], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        let lanes = width / 8;
        let mut a = [_mm256_setzero_ps(); 8];
        for (i, &xi) in x.iter().enumerate() {
            let xb = round(_mm256_set1_ps(xi));
            let q = p.add(i * width);
            for j in 0..lanes {
                a[j] = round(_mm256_fmadd_ps(load_f16(q.add(8 * j)), xb, a[j]));
            }
        }
        for j in 0..lanes {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * j), a[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], rows: usize, cols: usize, x: &[f32], b: &[f32]) -> Vec<f64> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|i| w[r * cols + i] as f64 * x[i] as f64)
                    .sum::<f64>()
                    + b[r] as f64
            })
            .collect()
    }

    #[test]
    fn every_isa_and_storage_matches_a_naive_matvec() {
        let mut seed = 1u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(rows, cols) in &[
            (1, 1),
            (5, 3),
            (16, 8),
            (64, 7),
            (100, 33),
            (200, 128),
            (4, 128),
        ] {
            let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
            let x: Vec<f32> = (0..cols).map(|_| next()).collect();
            let b: Vec<f32> = (0..rows).map(|_| next()).collect();
            let want = naive(&w, rows, cols, &x, &b);
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                let isa = isa.or_supported();
                for (f16, arith, tol) in [
                    (false, Arith::F32, 1e-5),
                    (true, Arith::F32, 2e-3 * (cols as f64).sqrt()),
                    (true, Arith::F16Native, 2e-2 * (cols as f64).sqrt()),
                ] {
                    let m = PackedMatrix::pack(&w, rows, cols, f16);
                    let mut y = vec![f32::NAN; rows];
                    m.matvec(isa, arith, &x, Some(&b), &mut y);
                    for r in 0..rows {
                        let err = (y[r] as f64 - want[r]).abs();
                        assert!(
                            err < tol,
                            "{isa:?} f16={f16} {arith:?} {rows}x{cols} row {r}: {} vs {}",
                            y[r],
                            want[r]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn native_f16_rounds_like_f16_hardware() {
        // 2048 + 1 is not representable in f16: an f16 accumulator stays at 2048.
        let cols = 3;
        let w = vec![1.0f32; 16 * cols];
        let x = [2048.0, 1.0, 1.0];
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            let isa = isa.or_supported();
            let m = PackedMatrix::pack(&w, 16, cols, true);
            let mut y = vec![0.0; 16];
            m.matvec(isa, Arith::F16Native, &x, None, &mut y);
            assert_eq!(y[0], 2048.0, "{isa:?}");
            m.matvec(isa, Arith::F32, &x, None, &mut y);
            assert_eq!(y[0], 2050.0, "{isa:?}");
        }
    }
}
