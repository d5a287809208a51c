//! Instruction sets: what this CPU supports, which one the training and scoring kernels
//! use (chosen once per process, overridable with `ITERA_KERNELS`: `portable`, `avx2`,
//! `avx512`), and [`vectorized`], which runs a closure compiled for that instruction set.
//!
//! Two families of kernels depend on it:
//! - matrix products ([`crate::ops::gemm`]): on CPUs with AMX tiles, the f32 products of
//!   at least 128 on a side run on them ([`crate::ops::amx`], [`amx`]); the others use
//!   the `gemm` crate's AVX-512 or AVX2/FMA kernels (it dispatches on the CPU itself), or
//!   this crate's portable product;
//! - elementwise and scan kernels: plain Rust, compiled a second and third time with
//!   AVX2 or AVX-512 enabled. Their polynomials use the multiply-add of their path
//!   ([`MulAdd`]: fused on AVX2 and AVX-512) and they reduce in fixed orders, so the
//!   AVX2 and AVX-512 copies give the same bits.
//!
//! Results never depend on the thread count on any path; they can differ between paths,
//! which is why the path is recorded with every trained model ([`kernel_path`]).

use crate::real::MulAdd;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the kernels can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (+BW, VL, DQ) with AVX2, FMA and F16C.
    Avx512,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// Plain Rust that the compiler vectorizes for the baseline target.
    Portable,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
            {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// `self` if this CPU supports it, else the best one it does (never a faster one).
    pub fn or_supported(self) -> Self {
        let best = Self::detect();
        if self.rank() <= best.rank() {
            self
        } else {
            best
        }
    }

    fn rank(self) -> u8 {
        match self {
            Isa::Avx512 => 2,
            Isa::Avx2 => 1,
            Isa::Portable => 0,
        }
    }

    fn from_rank(r: u8) -> Self {
        match r {
            2 => Isa::Avx512,
            1 => Isa::Avx2,
            _ => Isa::Portable,
        }
    }

    /// Short lowercase name: `avx512`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// Environment variable that chooses the kernels: `portable`, `avx2`, `avx512` (AVX-512
/// without AMX tiles), or `auto`/unset for the best the CPU supports (never a faster set
/// than the CPU has).
pub const KERNELS_ENV: &str = "ITERA_KERNELS";

const UNSET: u8 = u8::MAX;
/// The chosen level: an [`Isa`] rank, or [`AMX`] for AVX-512 with AMX matrix products.
static CHOSEN: AtomicU8 = AtomicU8::new(UNSET);
const AMX: u8 = 3;

/// The best level this CPU supports.
fn best() -> u8 {
    let isa = Isa::detect();
    if isa == Isa::Avx512 && crate::ops::amx::available() {
        AMX
    } else {
        isa.rank()
    }
}

fn level() -> u8 {
    let r = CHOSEN.load(Ordering::Relaxed);
    if r != UNSET {
        return r;
    }
    let best = best();
    let level = match std::env::var(KERNELS_ENV).as_deref() {
        Ok("portable") => 0,
        Ok("avx2") => best.min(Isa::Avx2.rank()),
        Ok("avx512") => best.min(Isa::Avx512.rank()),
        Ok("auto") | Ok("") | Err(_) => best,
        Ok(other) => {
            eprintln!(
                "warning: {KERNELS_ENV}={other:?} is not a kernel set; use portable, avx2, \
                 avx512 or auto (running with the best this CPU has)"
            );
            best
        }
    };
    CHOSEN.store(level, Ordering::Relaxed);
    level
}

/// The instruction set of the training and scoring kernels in this process: the best
/// the CPU supports, or the one `ITERA_KERNELS` names (or [`force`] set).
pub fn kernels() -> Isa {
    Isa::from_rank(level().min(Isa::Avx512.rank()))
}

/// Whether the f32 matrix products of training and scoring run on AMX tiles
/// ([`crate::ops::amx`]): on CPUs that have them, unless `ITERA_KERNELS` names a lower set.
pub fn amx() -> bool {
    level() == AMX
}

/// Makes every later kernel call of this process use `isa` (or the best supported one
/// below it), without AMX tiles. For tests and benchmarks; set it before computing, not
/// during.
pub fn force(isa: Isa) {
    CHOSEN.store(isa.or_supported().rank(), Ordering::Relaxed);
}

/// [`force`] of the best kernels this CPU has, AMX tiles included; returns whether they
/// include AMX.
pub fn force_best() -> bool {
    CHOSEN.store(best(), Ordering::Relaxed);
    amx()
}

/// The kernel path results were computed with, as recorded in run records: the
/// architecture and `avx512+amx`, `avx512`, `avx2` or `portable` (`x86_64/avx512+amx`).
pub fn kernel_path() -> String {
    let amx = if amx() { "+amx" } else { "" };
    format!("{}/{}{amx}", std::env::consts::ARCH, kernels().name())
}

/// Runs `f` compiled for the kernels' instruction set. Mark `f` (and the closures it
/// calls) `#[inline(always)]` so its loops are compiled inside the specialised copy.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    vectorized_with(
        #[inline(always)]
        |_| f(),
    )
}

/// [`vectorized`] for kernels that evaluate polynomials: `f` is given the way to
/// multiply-add ([`MulAdd`]) on the instruction set it is compiled for, a constant in each
/// compiled copy (fused on AVX-512 and AVX2, [`MulAdd::PORTABLE`] otherwise).
#[inline(always)]
pub fn vectorized_with<R>(f: impl FnOnce(MulAdd) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match kernels() {
        // SAFETY: `kernels()` only returns an instruction set the CPU supports.
        Isa::Avx512 => unsafe {
            run_avx512(
                #[inline(always)]
                || f(MulAdd::FUSED),
            )
        },
        // SAFETY: as above; AVX2 comes with FMA here (`Isa::detect`).
        Isa::Avx2 => unsafe {
            run_avx2(
                #[inline(always)]
                || f(MulAdd::FUSED),
            )
        },
        Isa::Portable => f(MulAdd::PORTABLE),
    }
    #[cfg(not(target_arch = "x86_64"))]
    f(MulAdd::PORTABLE)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
