//! Matrix-vector tiles of quantized weights for the recurrent decoder (see [`super::kernels`]
//! for the packed `[cols][width]` tile layout). The activations stay f32: each weight's
//! integer level is widened to f32 in registers and multiplied into f32 accumulators, and
//! the scales are applied per row (int8) or per row and group of columns (int4). No f32
//! copy of a quantized matrix is ever made, and the result equals the matrix-vector product
//! with the dequantized weights up to the order of the f32 sums.
//!
//! VNNI (`vpdpbusd`) is not used: it multiplies 8-bit by 8-bit integers, so it would need
//! the activations quantized too, and then generation would no longer compute the model
//! that `evaluate` scores (weight-only quantization, f32 activations). The decoder is
//! memory-bound at batch 1; what int8 and int4 buy is the 4x and ~7x fewer bytes streamed.
//! Both formats have AVX-512 and AVX2 tiles and a portable one.
//!
//! Tile storage: int8 levels one byte per weight in the tile order; int4 levels two per
//! byte, byte `j` of a column holding row `j` in its low nibble and row `j + width / 2` in
//! its high nibble (as `level + 8`), so that one 16-byte load unpacks into two 16-row
//! vectors without shuffles.

#![allow(clippy::needless_range_loop)]

use super::kernels::Isa;

/// Rows per group of the packed layout (as in `kernels`).
pub(super) const GROUP: usize = 64;

/// `acc[r] = sum_i level[i][r] * x[i]` over an int8 tile of `width` rows.
pub(super) fn tile_i8(isa: Isa, w: &[u8], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
    debug_assert_eq!(w.len(), width * x.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after detecting the features; the kernels
        // read `width * x.len()` bytes of `w`, its length.
        Isa::Avx512 => unsafe { avx512::tile_i8(w, x, width, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above for AVX2/FMA.
        Isa::Avx2 => unsafe { avx2::tile_i8(w, x, width, acc) },
        _ => {
            acc[..width].fill(0.0);
            for (i, &xi) in x.iter().enumerate() {
                for r in 0..width {
                    acc[r] += (w[i * width + r] as i8) as f32 * xi;
                }
            }
        }
    }
}

/// `acc[r] = sum_g scale[g][r] * sum_{i in group g} level[i][r] * x[i]` over an int4 tile of
/// `width` rows; `scales` is `[cols / group][width]`.
pub(super) fn tile_i4(
    isa: Isa,
    w: &[u8],
    x: &[f32],
    width: usize,
    group: usize,
    scales: &[f32],
    acc: &mut [f32; GROUP],
) {
    debug_assert_eq!(w.len() * 2, width * x.len());
    debug_assert_eq!(scales.len(), x.len() / group * width);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see `tile_i8`; `scales` holds `width` values per group, as asserted.
        Isa::Avx512 => unsafe { avx512::tile_i4(w, x, width, group, scales, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above for AVX2/FMA.
        Isa::Avx2 => unsafe { avx2::tile_i4(w, x, width, group, scales, acc) },
        _ => {
            let half = width / 2;
            acc[..width].fill(0.0);
            let mut part = [0.0f32; GROUP];
            for (g, xs) in x.chunks_exact(group).enumerate() {
                part[..width].fill(0.0);
                for (j, &xi) in xs.iter().enumerate() {
                    let col = &w[(g * group + j) * half..(g * group + j + 1) * half];
                    for (k, &byte) in col.iter().enumerate() {
                        part[k] += ((byte & 15) as i32 - 8) as f32 * xi;
                        part[k + half] += ((byte >> 4) as i32 - 8) as f32 * xi;
                    }
                }
                for r in 0..width {
                    acc[r] += part[r] * scales[g * width + r];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::GROUP;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn widen_i8(p: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
    }

    #[target_feature(enable = "avx512f,avx512bw,fma")]
    pub unsafe fn tile_i8(w: &[u8], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        let lanes = width / 16;
        // Two columns per iteration: eight independent FMA chains for 64-row tiles.
        let mut a = [_mm512_setzero_ps(); 8];
        let cols = x.len();
        let mut i = 0;
        while i + 2 <= cols {
            for s in 0..2 {
                let xb = _mm512_set1_ps(*x.get_unchecked(i + s));
                let q = p.add((i + s) * width);
                for j in 0..lanes {
                    a[4 * s + j] = _mm512_fmadd_ps(widen_i8(q.add(16 * j)), xb, a[4 * s + j]);
                }
            }
            i += 2;
        }
        if i < cols {
            let xb = _mm512_set1_ps(*x.get_unchecked(i));
            let q = p.add(i * width);
            for j in 0..lanes {
                a[j] = _mm512_fmadd_ps(widen_i8(q.add(16 * j)), xb, a[j]);
            }
        }
        for j in 0..lanes {
            _mm512_storeu_ps(acc.as_mut_ptr().add(16 * j), _mm512_add_ps(a[j], a[4 + j]));
        }
    }

    #[inline(always)]
    unsafe fn widen_u4(bytes: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_sub_epi32(
            _mm512_cvtepu8_epi32(bytes),
            _mm512_set1_epi32(8),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,fma")]
    pub unsafe fn tile_i4(
        w: &[u8],
        x: &[f32],
        width: usize,
        group: usize,
        scales: &[f32],
        acc: &mut [f32; GROUP],
    ) {
        let p = w.as_ptr();
        let half = width / 2;
        let mask = _mm_set1_epi8(15);
        let mut a = [_mm512_setzero_ps(); 4];
        for (g, xs) in x.chunks_exact(group).enumerate() {
            let mut part = [_mm512_setzero_ps(); 4];
            for (j, &xi) in xs.iter().enumerate() {
                let xb = _mm512_set1_ps(xi);
                let q = p.add((g * group + j) * half);
                if width == GROUP {
                    // Bytes 0..16: rows 0..16 (low) and 32..48 (high); 16..32: 16..32, 48..64.
                    let v0 = _mm_loadu_si128(q.cast());
                    let v1 = _mm_loadu_si128(q.add(16).cast());
                    let rows = [
                        _mm_and_si128(v0, mask),
                        _mm_and_si128(v1, mask),
                        _mm_and_si128(_mm_srli_epi16(v0, 4), mask),
                        _mm_and_si128(_mm_srli_epi16(v1, 4), mask),
                    ];
                    for k in 0..4 {
                        part[k] = _mm512_fmadd_ps(widen_u4(rows[k]), xb, part[k]);
                    }
                } else {
                    // 8 bytes: rows 0..8 (low) and 8..16 (high).
                    let v = _mm_loadl_epi64(q.cast());
                    let lo = _mm_and_si128(v, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
                    let rows = _mm_unpacklo_epi64(lo, hi);
                    part[0] = _mm512_fmadd_ps(widen_u4(rows), xb, part[0]);
                }
            }
            let s = scales.as_ptr().add(g * width);
            for k in 0..width / 16 {
                a[k] = _mm512_fmadd_ps(part[k], _mm512_loadu_ps(s.add(16 * k)), a[k]);
            }
        }
        for k in 0..width / 16 {
            _mm512_storeu_ps(acc.as_mut_ptr().add(16 * k), a[k]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::GROUP;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn widen_i8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_i8(w: &[u8], x: &[f32], width: usize, acc: &mut [f32; GROUP]) {
        let p = w.as_ptr();
        let lanes = width / 8;
        let mut a = [_mm256_setzero_ps(); 8];
        for (i, &xi) in x.iter().enumerate() {
            let xb = _mm256_set1_ps(xi);
            let q = p.add(i * width);
            for j in 0..lanes {
                a[j] = _mm256_fmadd_ps(widen_i8(q.add(8 * j)), xb, a[j]);
            }
        }
        for j in 0..lanes {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * j), a[j]);
        }
    }

    #[inline(always)]
    unsafe fn widen_u4(bytes: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_sub_epi32(
            _mm256_cvtepu8_epi32(bytes),
            _mm256_set1_epi32(8),
        ))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_i4(
        w: &[u8],
        x: &[f32],
        width: usize,
        group: usize,
        scales: &[f32],
        acc: &mut [f32; GROUP],
    ) {
        let p = w.as_ptr();
        let half = width / 2;
        let mask = _mm_set1_epi8(15);
        let lanes = width / 8;
        let mut a = [_mm256_setzero_ps(); 8];
        for (g, xs) in x.chunks_exact(group).enumerate() {
            let mut part = [_mm256_setzero_ps(); 8];
            for (j, &xi) in xs.iter().enumerate() {
                let xb = _mm256_set1_ps(xi);
                let q = p.add((g * group + j) * half);
                if width == GROUP {
                    let v0 = _mm_loadu_si128(q.cast());
                    let v1 = _mm_loadu_si128(q.add(16).cast());
                    let rows = [
                        _mm_and_si128(v0, mask),
                        _mm_and_si128(v1, mask),
                        _mm_and_si128(_mm_srli_epi16(v0, 4), mask),
                        _mm_and_si128(_mm_srli_epi16(v1, 4), mask),
                    ];
                    for k in 0..4 {
                        part[2 * k] = _mm256_fmadd_ps(widen_u4(rows[k]), xb, part[2 * k]);
                        part[2 * k + 1] = _mm256_fmadd_ps(
                            widen_u4(_mm_srli_si128(rows[k], 8)),
                            xb,
                            part[2 * k + 1],
                        );
                    }
                } else {
                    let v = _mm_loadl_epi64(q.cast());
                    let lo = _mm_and_si128(v, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
                    part[0] = _mm256_fmadd_ps(widen_u4(lo), xb, part[0]);
                    part[1] = _mm256_fmadd_ps(widen_u4(hi), xb, part[1]);
                }
            }
            let s = scales.as_ptr().add(g * width);
            for k in 0..lanes {
                a[k] = _mm256_fmadd_ps(part[k], _mm256_loadu_ps(s.add(8 * k)), a[k]);
            }
        }
        for k in 0..lanes {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * k), a[k]);
        }
    }
}
