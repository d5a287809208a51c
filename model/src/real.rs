//! The element types the model computes in: `f32` for training and scoring, `f64` for the
//! finite-difference gradient checks. One trait gathers what the kernels need.

use dfdx::dtypes::Dtype;
use num_traits::Float;

/// A floating-point element type of the model (`f32` or `f64`).
pub trait Real:
    Dtype + Float + Default + Send + Sync + std::fmt::Debug + std::iter::Sum + 'static
{
    /// The safetensors dtype tensors of this type are stored as.
    const SAFETENSORS_DTYPE: safetensors::Dtype;
    /// Converts from `f64` (rounding for `f32`).
    fn of(x: f64) -> Self;
    /// Widens to `f64`.
    fn f64(self) -> f64;
    /// The error function, to full precision of the type.
    fn erf(self) -> Self;
    /// `e^x` for the kernels: for f32 a branch-free polynomial that the compiler can
    /// vectorise (relative error below 2e-7, inputs clamped to the finite range); for f64
    /// the exact `exp` (the gradient checks run in f64).
    fn fast_exp(self, m: MulAdd) -> Self;
    /// `ln(1 + x)` for `x` in `[0, 1]` (softplus's correction term): for f32 a
    /// vectorisable series (absolute error below 1e-7), for f64 the exact `ln_1p`.
    fn fast_ln_1p_unit(self, m: MulAdd) -> Self;
    /// The error function for the kernels: for f32 Abramowitz & Stegun 7.1.26 with
    /// [`Real::fast_exp`] (absolute error below 1e-6 in f32 arithmetic, vectorisable), for f64 the exact
    /// `erf`.
    fn fast_erf(self, m: MulAdd) -> Self;
    /// Little-endian bytes of a slice (safetensors layout).
    fn to_le_bytes(xs: &[Self]) -> Vec<u8>;
    /// Reads little-endian bytes (length a multiple of the size).
    fn from_le_bytes(bytes: &[u8]) -> Vec<Self>;
}

impl Real for f32 {
    const SAFETENSORS_DTYPE: safetensors::Dtype = safetensors::Dtype::F32;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    #[inline(always)]
    fn fast_exp(self, m: MulAdd) -> Self {
        exp_f32(self, m)
    }
    #[inline(always)]
    fn fast_erf(self, m: MulAdd) -> Self {
        let a = self.abs();
        let t = 1.0 / m.f32(0.327_591_1, a, 1.0);
        let poly = t * horner(
            m,
            t,
            &[
                1.061_405_4,
                -1.453_152_1,
                1.421_413_7,
                -0.284_496_74,
                0.254_829_6,
            ],
        );
        let y = m.f32(-poly, exp_f32(-a * a, m), 1.0);
        y.copysign(self)
    }
    #[inline(always)]
    fn fast_ln_1p_unit(self, m: MulAdd) -> Self {
        // ln(1 + x) = 2 atanh(s), s = x / (2 + x) in [0, 1/3]; odd series to s^15.
        let s = self / (2.0 + self);
        let s2 = s * s;
        2.0 * s
            * horner(
                m,
                s2,
                &[
                    1.0 / 15.0,
                    1.0 / 13.0,
                    1.0 / 11.0,
                    1.0 / 9.0,
                    1.0 / 7.0,
                    1.0 / 5.0,
                    1.0 / 3.0,
                    1.0,
                ],
            )
    }
    fn to_le_bytes(xs: &[Self]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le_bytes(bytes: &[u8]) -> Vec<Self> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl Real for f64 {
    const SAFETENSORS_DTYPE: safetensors::Dtype = safetensors::Dtype::F64;
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    #[inline(always)]
    fn fast_exp(self, _: MulAdd) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn fast_ln_1p_unit(self, _: MulAdd) -> Self {
        self.ln_1p()
    }
    #[inline(always)]
    fn fast_erf(self, _: MulAdd) -> Self {
        libm::erf(self)
    }
    fn to_le_bytes(xs: &[Self]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le_bytes(bytes: &[u8]) -> Vec<Self> {
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    }
}

/// `e^x` in f32 by range reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and a degree-7
/// Taylor polynomial of `e^r` (truncation error `< 0.35^8 / 8! = 5e-9`), then `2^n` by
/// building the exponent bits. Branch-free so loops over slices vectorise.
#[inline(always)]
pub fn exp_f32(x: f32, m: MulAdd) -> f32 {
    // Adding 1.5 * 2^23 rounds to the nearest integer (ties to even) and leaves it in
    // the low mantissa bits of `t`: `bits(t) = bits(ROUND) + n` for |n| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let p = exp_reduced(x, n, m);
    // 2^n from the bits of `t` alone (integer lanes, no float-to-int conversion, which
    // does not vectorise): `(bits(ROUND) + n + 127) << 23 = (n + 127) << 23`, since the
    // low 23 bits of bits(ROUND) are 2^22 and shift out.
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// `e^r` for `r = x - n ln 2` (`|r| <= ln 2 / 2`), by the degree-7 Taylor polynomial.
#[inline(always)]
fn exp_reduced(x: f32, n: f32, m: MulAdd) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = m.f32(-n, LN2_LO, m.f32(-n, LN2_HI, x));
    horner(
        m,
        r,
        &[
            1.0 / 5040.0,
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ],
    )
}

/// `c[0] x^(k-1) + ... + c[k-1]` by Horner's rule, each step one multiply-add `m`.
#[inline(always)]
fn horner(m: MulAdd, x: f32, c: &[f32]) -> f32 {
    c[1..].iter().fold(c[0], |p, &ci| m.f32(p, x, ci))
}

/// How the kernels' polynomials (`exp`, `erf`, `ln(1 + x)`) multiply and add, passed in by
/// [`crate::isa::vectorized_with`] for the instruction set a kernel is compiled for.
/// Fused where the hardware has it (AVX-512, AVX2 with FMA, aarch64): one instruction
/// and one rounding, half the instructions of a multiply then an add (softplus 37%, GELU
/// 35%, SiLU 13% faster per element, measured with `bench_ops`). On the portable x86 path
/// a multiply then an add: there a fused one is a call into the C library that keeps loops
/// from vectorising (and on a CPU without FMA runs in software). So those two paths round
/// the polynomials differently, as they already do the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulAdd {
    fused: bool,
}

impl MulAdd {
    /// `a * b + c` rounded once.
    pub const FUSED: Self = Self { fused: true };
    /// `a * b`, rounded, then `+ c`, rounded.
    pub const SEPARATE: Self = Self { fused: false };
    /// What the portable path uses: fused where FMA is an instruction of every CPU of the
    /// architecture the code is built for.
    pub const PORTABLE: Self = Self {
        fused: cfg!(any(target_arch = "aarch64", target_feature = "fma")),
    };

    /// `a * b + c` this way.
    #[inline(always)]
    pub fn f32(self, a: f32, b: f32, c: f32) -> f32 {
        if self.fused {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
}

/// Logistic sigmoid `1 / (1 + e^-x)`, stable for large `|x|`.
#[inline(always)]
pub fn sigmoid<E: Real>(x: E, m: MulAdd) -> E {
    let e = (-x.abs()).fast_exp(m);
    let r = E::one() / (E::one() + e);
    if x >= E::zero() {
        r
    } else {
        e * r
    }
}

/// Sum of a slice with 8 independent accumulators (vectorisable; a fixed order, so the
/// result is deterministic).
#[inline(always)]
pub fn lane_sum<E: Real>(xs: &[E]) -> E {
    let mut acc = [E::zero(); 8];
    let chunks = xs.chunks_exact(8);
    let mut s = chunks.remainder().iter().fold(E::zero(), |a, &b| a + b);
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    for a in acc {
        s += a;
    }
    s
}

/// Dot product of two equally long slices with 8 independent accumulators (vectorisable;
/// a fixed order, so the result is deterministic).
#[inline(always)]
pub fn lane_dot<E: Real>(a: &[E], b: &[E]) -> E {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [E::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut s = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(E::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    for a in acc {
        s += a;
    }
    s
}

/// Maximum of a non-empty slice with 8 independent lanes (vectorisable).
#[inline(always)]
pub fn lane_max<E: Real>(xs: &[E]) -> E {
    let mut acc = [E::neg_infinity(); 8];
    let chunks = xs.chunks_exact(8);
    let mut m = chunks
        .remainder()
        .iter()
        .fold(E::neg_infinity(), |a, &b| if b > a { b } else { a });
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// Exact GELU `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))` and its derivative
/// `Phi(x) + x phi(x)` (Hendrycks & Gimpel 2016, eq. 1).
#[inline(always)]
pub fn gelu_and_grad<E: Real>(x: E, m: MulAdd) -> (E, E) {
    let half = E::of(0.5);
    let cdf = half * (E::one() + (x * E::of(std::f64::consts::FRAC_1_SQRT_2)).fast_erf(m));
    let pdf = (-half * x * x).fast_exp(m) * E::of(0.398_942_280_401_432_7);
    (x * cdf, cdf + x * pdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [MulAdd; 2] = [MulAdd::FUSED, MulAdd::SEPARATE];

    #[test]
    fn fast_exp_f32_is_accurate_over_the_range() {
        for m in BOTH {
            let mut worst = 0.0f64;
            let mut x = -80.0f32;
            while x < 80.0 {
                let rel = ((exp_f32(x, m) as f64) - (x as f64).exp()).abs() / (x as f64).exp();
                worst = worst.max(rel);
                x += 0.0137;
            }
            assert!(worst < 2e-7, "{m:?}: worst relative error {worst}");
            assert_eq!(exp_f32(-200.0, m), exp_f32(-87.0, m));
        }
    }

    /// The same polynomial with 2^n built by a float-to-int conversion: the form before
    /// the bit trick, kept to show the two give the same bits.
    fn exp_f32_by_conversion(x: f32, m: MulAdd) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        let n = (x * std::f32::consts::LOG2_E).round_ties_even();
        exp_reduced(x, n, m) * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    #[test]
    fn fast_exp_f32_builds_the_power_of_two_exactly() {
        // Every f32 in [-100, 100] with a coarse stride, plus the inputs whose scaled
        // value is a tie (k + 1/2) or an integer, where rounding could differ.
        let mut xs: Vec<f32> = (-2_000_000..=2_000_000).map(|i| i as f32 * 5e-5).collect();
        for k in -130..130 {
            for frac in [0.0f32, 0.5] {
                let x = (k as f32 + frac) / std::f32::consts::LOG2_E;
                xs.extend([x, x.next_up(), x.next_down()]);
            }
        }
        for m in BOTH {
            for &x in &xs {
                assert_eq!(
                    exp_f32(x, m).to_bits(),
                    exp_f32_by_conversion(x, m).to_bits(),
                    "exp({x}), {m:?}"
                );
            }
        }
    }

    #[test]
    fn fast_erf_f32_is_accurate() {
        for m in BOTH {
            let worst = (-4000..=4000)
                .map(|i| i as f32 / 1000.0)
                .map(|x| ((x.fast_erf(m) as f64) - libm::erf(x as f64)).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-6, "{m:?}: worst absolute error {worst}");
        }
    }

    /// The two ways of multiply-adding are different roundings of the same polynomial:
    /// they differ in the last bits only.
    #[test]
    fn fused_and_separate_polynomials_agree_to_rounding() {
        let worst = (-8000..=8000)
            .map(|i| i as f32 / 100.0)
            .map(|x| {
                let (f, s) = (exp_f32(x, MulAdd::FUSED), exp_f32(x, MulAdd::SEPARATE));
                ((f - s) / f).abs()
            })
            .fold(0.0f32, f32::max);
        assert!(worst > 0.0 && worst < 4.0 * f32::EPSILON, "{worst}");
    }

    #[test]
    fn lane_reductions_match_plain_ones() {
        let xs: Vec<f64> = (0..37).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
        assert_eq!(lane_sum(&xs), xs.iter().sum::<f64>());
        assert_eq!(lane_max(&xs), 3.0);
    }

    #[test]
    fn fast_ln_1p_f32_is_accurate_on_the_unit_interval() {
        let worst = (0..=1000)
            .map(|i| i as f32 / 1000.0)
            .map(|x| {
                BOTH.map(|m| ((x.fast_ln_1p_unit(m) as f64) - (x as f64).ln_1p()).abs())
                    .into_iter()
                    .fold(0.0, f64::max)
            })
            .fold(0.0, f64::max);
        assert!(worst < 1e-7, "worst absolute error {worst}");
    }
}
