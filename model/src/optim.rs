//! AdamW with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2) and
//! global-norm gradient clipping (Pascanu et al. 2013).

use crate::params::Params;
use crate::real::Real;
use crate::train_config::OptimizerConfig;
use rayon::prelude::*;

/// AdamW moments, one pair per parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW<E> {
    /// First moments.
    pub m: Vec<Vec<E>>,
    /// Second moments.
    pub v: Vec<Vec<E>>,
    /// Updates applied so far (for bias correction).
    pub t: u64,
}

impl<E: Real> AdamW<E> {
    /// Zero moments for `params`.
    pub fn new(params: &Params<E>) -> Self {
        let zeros: Vec<Vec<E>> = params
            .specs
            .iter()
            .map(|s| vec![E::zero(); s.numel()])
            .collect();
        Self {
            m: zeros.clone(),
            v: zeros,
            t: 0,
        }
    }

    /// One update with learning rate `lr`:
    /// `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
    /// `w -= lr (wd w [decayed tensors only] + m_hat / (sqrt(v_hat) + eps))`; the
    /// embeddings are decayed only with `decay_embeddings`.
    pub fn update(
        &mut self,
        params: &mut Params<E>,
        grads: &[Vec<E>],
        lr: f64,
        cfg: &OptimizerConfig,
    ) {
        self.t += 1;
        let t = self.t as i32;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let c1 = E::of(1.0 / (1.0 - b1.powi(t)));
        let c2 = E::of(1.0 / (1.0 - b2.powi(t)));
        let (b1e, b2e, eps, lre) = (E::of(b1), E::of(b2), E::of(cfg.eps), E::of(lr));
        for (i, g) in grads.iter().enumerate() {
            let spec = &params.specs[i];
            let decay = if spec.decay || (cfg.decay_embeddings && spec.is_embedding()) {
                E::of(lr * cfg.weight_decay)
            } else {
                E::zero()
            };
            let mut w = params.values[i].data().to_vec();
            w.par_iter_mut()
                .with_min_len(4096)
                .zip(self.m[i].par_iter_mut().zip(self.v[i].par_iter_mut()))
                .zip(g.par_iter())
                .for_each(|((w, (m, v)), &g)| {
                    *m = b1e * *m + (E::one() - b1e) * g;
                    *v = b2e * *v + (E::one() - b2e) * g * g;
                    let step = (*m * c1) / ((*v * c2).sqrt() + eps);
                    *w = *w - decay * *w - lre * step;
                });
            params.set(i, w);
        }
    }
}

/// Exponential moving average of the weights (Polyak averaging with the warm-up of
/// TensorFlow's `ExponentialMovingAverage`): after update `t` (1-based),
/// `avg = d avg + (1 - d) w` with `d = min(decay, (1 + t) / (10 + t))`, so early steps do not
/// keep the initial weights in the average. Elementwise, so the same bits on any thread count.
pub fn update_average<E: Real>(avg: &mut [Vec<E>], params: &Params<E>, decay: f64, t: u64) {
    let d = decay.min((1.0 + t as f64) / (10.0 + t as f64));
    let (de, keep) = (E::of(d), E::of(1.0 - d));
    for (a, w) in avg.iter_mut().zip(&params.values) {
        let w = w.data();
        a.par_iter_mut()
            .with_min_len(4096)
            .zip(w.par_iter())
            .for_each(|(a, &w)| *a = de * *a + keep * w);
    }
}

/// Global L2 norm of all gradients (accumulated in f64, in tensor order).
/// Each tensor's sum runs on its own task; the per-tensor sums are added in tensor order,
/// so the result is the same bits for any thread count.
pub fn global_norm<E: Real>(grads: &[Vec<E>]) -> f64 {
    let per_tensor: Vec<f64> = grads
        .par_iter()
        .map(|g| g.iter().map(|&x| x.f64() * x.f64()).sum::<f64>())
        .collect();
    per_tensor.into_iter().sum::<f64>().sqrt()
}

/// Scales the gradients so their global norm is at most `max_norm` (0: no clipping);
/// returns the norm before clipping.
pub fn clip_global_norm<E: Real>(grads: &mut [Vec<E>], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > max_norm {
        let s = E::of(max_norm / (norm + 1e-6));
        grads
            .par_iter_mut()
            .for_each(|g| g.iter_mut().for_each(|x| *x *= s));
    }
    norm
}
