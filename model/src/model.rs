//! The parallel (whole-sequence) forward pass of Itera-Lite and its loss, as a dfdx graph
//! of the custom ops in [`crate::ops`]. The equations are those of `docs/MODEL.md`;
//! position-wise layers run on the flattened `(B*T, features)` matrices.

use crate::ops::{self, splitmix64, Dropout, Var};
use crate::params::Params;
use crate::real::Real;
use dfdx::prelude::{Cpu, Tape};

/// Dropout for one training step: masks are a pure function of `(key, site, element)`.
#[derive(Debug, Clone, Copy)]
pub struct DropoutKey {
    pub p: f64,
    pub key: u64,
}

impl DropoutKey {
    fn site(&self, site: u64) -> Option<Dropout> {
        (self.p > 0.0).then(|| Dropout {
            p: self.p,
            key: splitmix64(self.key ^ splitmix64(site)),
        })
    }
}

/// The loss of one batch and what the trainer reports about it.
pub struct ForwardOut<E: Real, T> {
    /// `ce + load_balance_loss_weight * aux`, the scalar to differentiate.
    pub loss: Var<E, T, ()>,
    /// Mean token cross-entropy (nats).
    pub ce: f64,
    /// Mean over MoE layers of the balance loss `X sum_e f_e P_e` (1.0 when balanced);
    /// 0 without MoE layers.
    pub aux: f64,
    /// Per MoE layer, top-k assignments per expert.
    pub expert_counts: Vec<Vec<usize>>,
}

/// Runs the model on `inputs` (`B*T` token ids, `B` sequences of `seq`) and scores the
/// next-token `targets` (same layout). Token ids must be `< vocab_size` and
/// `seq <= max_seq_length` (checked by callers with clear errors; asserted here).
pub fn forward<E: Real, T: Tape<E, Cpu>>(
    params: &Params<E>,
    inputs: &[u32],
    targets: &[u32],
    seq: usize,
    dropout: Option<DropoutKey>,
) -> ForwardOut<E, T> {
    forward_scaled(params, inputs, targets, seq, dropout, 1.0)
}

/// [`forward`] with the differentiated loss multiplied by `loss_scale` (a micro-batch's
/// share of a step's tokens), so the gradients of a step's parts add up to the step's.
/// `ce` and `aux` are reported unscaled.
pub fn forward_scaled<E: Real, T: Tape<E, Cpu>>(
    params: &Params<E>,
    inputs: &[u32],
    targets: &[u32],
    seq: usize,
    dropout: Option<DropoutKey>,
    loss_scale: f64,
) -> ForwardOut<E, T> {
    let cfg = &params.config;
    let p = |name: &str| params.get(name).retaped::<T>();
    let drop = |site: u64| dropout.and_then(|d| d.site(site));
    let eps = cfg.layer_norm_eps;
    let embed_w = p("embed.weight");
    let mut x = ops::embed(
        embed_w,
        p("pos_embed.weight"),
        inputs.to_vec(),
        seq,
        drop(0),
    );
    let mut aux = Vec::new();
    let mut expert_counts = Vec::new();
    for l in 0..cfg.num_layers {
        let pre = format!("layers.{l}");
        let q = |s: &str| p(&format!("{pre}.{s}"));
        // SSM sub-block.
        let a = ops::layer_norm(
            x.with_empty_tape(),
            q("ssm_norm.weight"),
            q("ssm_norm.bias"),
            eps,
        );
        // Each projection's bias is added by the op that reads its output (the
        // projection writes only the product: no pass of bias rows through memory).
        let xg = ops::linear_nobias(a, q("ssm.in_proj.weight"));
        let u = ops::conv_silu(
            xg.with_empty_tape(),
            q("ssm.conv.weight"),
            q("ssm.conv.bias"),
            Some(q("ssm.in_proj.bias")),
            seq,
        );
        let z = ops::linear_nobias(u.with_empty_tape(), q("ssm.dt_proj.weight"));
        let dt = ops::softplus_mean(z, Some(q("ssm.dt_proj.bias")));
        let bu = ops::linear_nobias(u.with_empty_tape(), q("ssm.B"));
        let h = ops::selective_scan(dt, q("ssm.A_log"), bu, seq);
        let y = ops::ssm_output(
            h,
            q("ssm.C"),
            q("ssm.D"),
            u,
            xg,
            Some(q("ssm.in_proj.bias")),
        );
        let o = ops::linear_nobias(y, q("ssm.out_proj.weight"));
        x = ops::add_dropout(x, o, Some(q("ssm.out_proj.bias")), drop(1 + 2 * l as u64));
        // Feed-forward sub-block.
        let b = ops::layer_norm(
            x.with_empty_tape(),
            q("ffn_norm.weight"),
            q("ffn_norm.bias"),
            eps,
        );
        let (f, f_bias) = if cfg.is_moe_layer(l) {
            let k = cfg.top_k_experts;
            let logits = ops::linear_nobias(b.with_empty_tape(), q("moe.router.weight"));
            expert_counts.push(ops::moe::expert_counts(logits.data(), cfg.num_experts, k));
            aux.push(ops::balance_loss(logits.with_empty_tape(), k));
            let gates = ops::router_gates(logits, k);
            let ex = |e: usize, s: &str| q(&format!("moe.experts.{e}.{s}"));
            let experts = (0..cfg.num_experts)
                .map(|e| ops::Expert {
                    up_w: ex(e, "up.weight"),
                    up_b: ex(e, "up.bias"),
                    down_w: ex(e, "down.weight"),
                    down_b: ex(e, "down.bias"),
                })
                .collect();
            (ops::moe_experts(b, gates, experts), None)
        } else {
            let up = ops::linear_nobias(b, q("ffn.up.weight"));
            let hidden = ops::gelu(up, Some(q("ffn.up.bias")));
            let down = ops::linear_nobias(hidden, q("ffn.down.weight"));
            (down, Some(q("ffn.down.bias")))
        };
        x = ops::add_dropout(x, f, f_bias, drop(2 + 2 * l as u64));
    }
    let hf = ops::layer_norm(x, p("final_norm.weight"), p("final_norm.bias"), eps);
    let head = if cfg.tie_embeddings {
        p("embed.weight")
    } else {
        p("lm_head.weight")
    };
    let ce = ops::head_cross_entropy(hf, head, targets.to_vec());
    let ce_value = ce.data()[0].f64();
    let n_aux = aux.len();
    let aux_value = if n_aux == 0 {
        0.0
    } else {
        aux.iter().map(|a| a.data()[0].f64()).sum::<f64>() / n_aux as f64
    };
    let mut weights = vec![loss_scale];
    weights.extend(std::iter::repeat_n(
        loss_scale * cfg.load_balance_loss_weight / n_aux.max(1) as f64,
        n_aux,
    ));
    let mut terms = vec![ce];
    terms.extend(aux);
    ForwardOut {
        loss: ops::weighted_sum(terms, weights),
        ce: ce_value,
        aux: aux_value,
        expert_counts,
    }
}
