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

/// Logistic sigmoid `1 / (1 + e^-x)`, stable for large `|x|`.
#[inline]
pub fn sigmoid<E: Real>(x: E) -> E {
    if x >= E::zero() {
        E::one() / (E::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (E::one() + e)
    }
}

/// `softplus(x) = ln(1 + e^x)`, computed as `max(x, 0) + ln(1 + e^-|x|)`.
#[inline]
pub fn softplus<E: Real>(x: E) -> E {
    x.max(E::zero()) + (-x.abs()).exp().ln_1p()
}

/// Exact GELU `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))` and its derivative
/// `Phi(x) + x phi(x)` (Hendrycks & Gimpel 2016, eq. 1).
#[inline]
pub fn gelu_and_grad<E: Real>(x: E) -> (E, E) {
    let half = E::of(0.5);
    let cdf = half * (E::one() + (x * E::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = (-half * x * x).exp() * E::of(0.398_942_280_401_432_7);
    (x * cdf, cdf + x * pdf)
}
