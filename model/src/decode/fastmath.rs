//! Branch-free f32 `exp`, `ln`, `erf` and the activations built on them (SiLU, softplus,
//! exact-erf GELU), written so loops over slices vectorize. The decoder's elementwise work
//! per token is thousands of these; libm's scalar calls would cost as much as the matvecs.
//! Plain multiply and add (no `mul_add`: without FMA in the target it is a slow libm call).
//! Accuracy: `exp` and `ln` within a few ulp, `erf` within 1.5e-7 absolute
//! (Abramowitz & Stegun 7.1.26); checked against f64 in the tests below.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5 * 2^23 rounds an f32 of magnitude < 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;

/// e^x (Cephes expf polynomial); saturates to 0 below -87 and to f32::MAX-ish above 88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r2 + r + 1.0;
    // 2^n from the bits of `t` (integer lanes; a float-to-int conversion does not
    // vectorise): bits(t) = bits(ROUND) + n, and bits(ROUND)'s low 23 bits, 2^22, shift out.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    y * scale
}

/// ln(x) for positive finite x (Cephes logf polynomial).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    // Mantissa in [0.5, 1).
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    e -= small as i32;
    m = if small { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let p = 7.037_683_6e-2f32;
    let p = p * m - 1.151_461e-1;
    let p = p * m + 1.167_699_9e-1;
    let p = p * m - 1.242_014_1e-1;
    let p = p * m + 1.424_932_3e-1;
    let p = p * m - 1.666_805_8e-1;
    let p = p * m + 2.000_071_4e-1;
    let p = p * m - 2.499_999_4e-1;
    let p = p * m + 3.333_333e-1;
    let y = p * m * z;
    let ef = e as f32;
    let y = ef * -2.121_944_4e-4 + y;
    let y = y - 0.5 * z;
    let r = m + y;
    ef * 0.693_359_4 + r
}

/// erf(x), absolute error below 1.5e-7.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1f32 * a + 1.0);
    let p = 1.061_405_4f32;
    let p = p * t - 1.453_152_1;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_72;
    let p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// x * sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// ln(1 + e^x), computed without overflow.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    x.max(0.0) + ln(1.0 + exp(-x.abs()))
}

/// Sum of `xs` in 16 interleaved partial sums, so the loop vectorizes (a plain float
/// `sum()` must add in order and stays scalar).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + tail
}

/// Exact (erf) GELU: x * (1 + erf(x / sqrt 2)) / 2.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-4000..=4000).map(|i| i as f32 * 0.01)
    }

    #[test]
    fn exp_ln_erf_match_f64() {
        for x in grid() {
            let e = (x as f64).exp();
            assert!(((exp(x) as f64 - e) / e).abs() < 4e-7, "exp({x})");
            let erf64 = libm::erf(x as f64);
            assert!((erf(x) as f64 - erf64).abs() < 3e-7, "erf({x})");
            let sp = (x as f64).max(0.0) + (-(x as f64).abs()).exp().ln_1p();
            assert!(
                (softplus(x) as f64 - sp).abs() < 1e-6 * sp.max(1.0),
                "softplus({x})"
            );
        }
        for x in [1e-30f32, 1e-5, 0.3, 1.0, 2.5, 1e5, 3e38] {
            let l = (x as f64).ln();
            assert!(
                (ln(x) as f64 - l).abs() < 1e-6 * l.abs().max(1.0),
                "ln({x})"
            );
        }
        assert_eq!(exp(-200.0), exp(-87.0));
        assert!(
            exp(-87.0) < 1e-37 && silu(-200.0).abs() < 1e-30 && (silu(200.0) - 200.0).abs() < 1e-3
        );
    }
}
