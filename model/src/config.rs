//! The model's configuration: sizes of the Itera-Lite SSM + MoE language model, with
//! derived sizes as methods and validation with actionable messages.
//!
//! Serialized as `config.json` beside `model.safetensors`; also the `model` table of the
//! `train` stage's params.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Sizes and regularisation of an Itera-Lite model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Tokens in the vocabulary (rows of the embedding). Set by the tokenizer when training
    /// from a pipeline.
    #[serde(default = "defaults::vocab_size")]
    #[schemars(range(min = 2))]
    pub vocab_size: usize,
    /// Width of the residual stream (`d_model`).
    #[serde(default = "defaults::hidden_size")]
    #[schemars(range(min = 1))]
    pub hidden_size: usize,
    /// Number of blocks; each is an SSM sub-block followed by a feed-forward sub-block.
    #[serde(default = "defaults::num_layers")]
    #[schemars(range(min = 1))]
    pub num_layers: usize,
    /// State size `N` of each selective scan.
    #[serde(default = "defaults::ssm_state_size")]
    #[schemars(range(min = 1))]
    pub ssm_state_size: usize,
    /// Width of the causal depthwise convolution.
    #[serde(default = "defaults::ssm_conv_kernel")]
    #[schemars(range(min = 1))]
    pub ssm_conv_kernel: usize,
    /// Inner width of the SSM sub-block is `ssm_expand_factor * hidden_size`.
    #[serde(default = "defaults::ssm_expand_factor")]
    #[schemars(range(min = 1))]
    pub ssm_expand_factor: usize,
    /// Experts in each mixture-of-experts layer.
    #[serde(default = "defaults::num_experts")]
    #[schemars(range(min = 1))]
    pub num_experts: usize,
    /// Hidden width of each expert's feed-forward network.
    #[serde(default = "defaults::expert_size")]
    #[schemars(range(min = 1))]
    pub expert_size: usize,
    /// Experts each token is routed to.
    #[serde(default = "defaults::top_k_experts")]
    #[schemars(range(min = 1))]
    pub top_k_experts: usize,
    /// Layers (0-based) whose feed-forward is a mixture of experts; the others use a plain
    /// feed-forward network. Default: the odd layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_layers: Option<Vec<usize>>,
    /// Hidden width of the plain feed-forward layers. Default: `expert_size * top_k_experts`
    /// (the same active compute per token as a MoE layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ffn_size: Option<usize>,
    /// Longest sequence (rows of the learned position embedding).
    #[serde(default = "defaults::max_seq_length")]
    #[schemars(range(min = 1))]
    pub max_seq_length: usize,
    /// Dropout probability during training (0 disables it).
    #[serde(default)]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub dropout: f64,
    /// Epsilon of every LayerNorm.
    #[serde(default = "defaults::layer_norm_eps")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub layer_norm_eps: f64,
    /// Weight of the MoE load-balancing loss added to the language-model loss.
    #[serde(default = "defaults::load_balance_loss_weight")]
    #[schemars(range(min = 0))]
    pub load_balance_loss_weight: f64,
    /// The LM head reuses the token embedding (transposed).
    #[serde(default = "defaults::tie_embeddings")]
    pub tie_embeddings: bool,
}

mod defaults {
    pub fn vocab_size() -> usize {
        8000
    }
    pub fn hidden_size() -> usize {
        128
    }
    pub fn num_layers() -> usize {
        4
    }
    pub fn ssm_state_size() -> usize {
        8
    }
    pub fn ssm_conv_kernel() -> usize {
        4
    }
    pub fn ssm_expand_factor() -> usize {
        2
    }
    pub fn num_experts() -> usize {
        4
    }
    pub fn expert_size() -> usize {
        64
    }
    pub fn top_k_experts() -> usize {
        2
    }
    pub fn max_seq_length() -> usize {
        128
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn load_balance_loss_weight() -> f64 {
        0.01
    }
    pub fn tie_embeddings() -> bool {
        true
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::tiny()
    }
}

/// One problem with a config: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Field name, e.g. `"top_k_experts"`.
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl ModelConfig {
    /// The seed study's "tiny" preset: the phase-8 model (vocabulary 8000).
    pub fn tiny() -> Self {
        Self {
            vocab_size: defaults::vocab_size(),
            hidden_size: defaults::hidden_size(),
            num_layers: defaults::num_layers(),
            ssm_state_size: defaults::ssm_state_size(),
            ssm_conv_kernel: defaults::ssm_conv_kernel(),
            ssm_expand_factor: defaults::ssm_expand_factor(),
            num_experts: defaults::num_experts(),
            expert_size: defaults::expert_size(),
            top_k_experts: defaults::top_k_experts(),
            moe_layers: None,
            ffn_size: None,
            max_seq_length: defaults::max_seq_length(),
            dropout: 0.0,
            layer_norm_eps: defaults::layer_norm_eps(),
            load_balance_loss_weight: defaults::load_balance_loss_weight(),
            tie_embeddings: true,
        }
    }

    /// Inner width of the SSM sub-block.
    pub fn d_inner(&self) -> usize {
        self.ssm_expand_factor * self.hidden_size
    }

    /// Hidden width of the plain feed-forward layers.
    pub fn ffn_size(&self) -> usize {
        self.ffn_size
            .unwrap_or(self.expert_size * self.top_k_experts)
    }

    /// Whether layer `layer` (0-based) uses a mixture of experts.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        match &self.moe_layers {
            Some(list) => list.contains(&layer),
            None => layer % 2 == 1,
        }
    }

    /// Every problem with the config (empty when valid).
    pub fn issues(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut at_least = |field: &'static str, value: usize, min: usize| {
            if value < min {
                issues.push(ConfigIssue {
                    field,
                    message: format!("must be at least {min}, found {value}"),
                });
            }
        };
        at_least("vocab_size", self.vocab_size, 2);
        at_least("hidden_size", self.hidden_size, 1);
        at_least("num_layers", self.num_layers, 1);
        at_least("ssm_state_size", self.ssm_state_size, 1);
        at_least("ssm_conv_kernel", self.ssm_conv_kernel, 1);
        at_least("ssm_expand_factor", self.ssm_expand_factor, 1);
        at_least("num_experts", self.num_experts, 1);
        at_least("expert_size", self.expert_size, 1);
        at_least("top_k_experts", self.top_k_experts, 1);
        at_least("max_seq_length", self.max_seq_length, 1);
        if let Some(f) = self.ffn_size {
            at_least("ffn_size", f, 1);
        }
        if self.top_k_experts > self.num_experts {
            issues.push(ConfigIssue {
                field: "top_k_experts",
                message: format!(
                    "must not exceed num_experts ({}), found {}",
                    self.num_experts, self.top_k_experts
                ),
            });
        }
        if let Some(layers) = &self.moe_layers {
            for &l in layers {
                if l >= self.num_layers {
                    issues.push(ConfigIssue {
                        field: "moe_layers",
                        message: format!(
                            "layer {l} does not exist: layers are numbered 0..{}",
                            self.num_layers
                        ),
                    });
                }
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            issues.push(ConfigIssue {
                field: "dropout",
                message: format!("must be in [0, 1), found {}", self.dropout),
            });
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            issues.push(ConfigIssue {
                field: "layer_norm_eps",
                message: format!("must be a positive number, found {}", self.layer_norm_eps),
            });
        }
        if !(self.load_balance_loss_weight >= 0.0 && self.load_balance_loss_weight.is_finite()) {
            issues.push(ConfigIssue {
                field: "load_balance_loss_weight",
                message: format!(
                    "must be zero or positive, found {}",
                    self.load_balance_loss_weight
                ),
            });
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_is_valid_and_has_the_phase8_sizes() {
        let c = ModelConfig::tiny();
        assert!(c.issues().is_empty());
        assert_eq!(c.d_inner(), 256);
        assert_eq!(c.ffn_size(), 128);
        assert!(!c.is_moe_layer(0) && c.is_moe_layer(1) && !c.is_moe_layer(2) && c.is_moe_layer(3));
    }

    /// docs/MODEL.md states the MoE layer pattern, the plain feed-forward's width and
    /// every size's default as the code has them.
    #[test]
    fn the_model_docs_state_the_defaults() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/MODEL.md"))
                .unwrap();
        let c = ModelConfig::default();
        let moe: Vec<usize> = (0..c.num_layers).filter(|&l| c.is_moe_layer(l)).collect();
        assert_eq!(moe, [1, 3]);
        assert!(docs.contains("**Default: the odd layers**"), "MoE pattern");
        assert!(docs.contains("plain (0, 2) and MoE (1, 3) layers"));
        assert_eq!(c.ffn_size(), c.expert_size * c.top_k_experts);
        assert!(docs.contains("`expert_size * top_k_experts`** (64 x 2 = 128"));
        let docs = docs.split_whitespace().collect::<Vec<_>>().join(" ");
        let json = serde_json::to_value(&c).unwrap();
        for (name, value) in json.as_object().unwrap() {
            if let Some(v) = value.as_u64() {
                let stated = format!("`{name}` {v}");
                assert!(
                    docs.contains(&stated),
                    "docs/MODEL.md does not state {stated}"
                );
            }
        }
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let c = ModelConfig {
            top_k_experts: 5,
            moe_layers: Some(vec![7]),
            dropout: 1.0,
            hidden_size: 0,
            ..ModelConfig::tiny()
        };
        let fields: Vec<_> = c.issues().iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            ["hidden_size", "top_k_experts", "moe_layers", "dropout"]
        );
    }

    #[test]
    fn json_round_trip_fills_defaults() {
        let c: ModelConfig = serde_json::from_str(r#"{"vocab_size": 300}"#).unwrap();
        assert_eq!(c.vocab_size, 300);
        assert_eq!(c.hidden_size, 128);
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
