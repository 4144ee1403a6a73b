//! Model configuration: a serde mirror of Hugging Face's `config.json` for Llama
//! (`LlamaConfig` in transformers' `models/llama/configuration_llama.py`), resolved
//! into a plain [`ModelConfig`] with no `Option`s left.
//!
//! Both rope spellings are read: the classic one (`rope_theta` plus an optional
//! `rope_scaling` object, as in Llama-3.1/3.2 checkpoints) and the newer
//! `rope_parameters` object that transformers 5 writes.

use std::path::Path;

use serde::Deserialize;

use crate::Error;

/// How rotary position frequencies are derived from `rope_theta`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Linear position interpolation: every frequency divided by `factor`.
    Linear {
        /// The interpolation factor.
        factor: f32,
    },
    /// Llama-3.1 style scaling (transformers' `_compute_llama3_parameters`).
    Llama3 {
        /// Scale applied to low frequencies.
        factor: f32,
        /// Wavelength threshold (as a fraction of the original context) below which frequencies are scaled.
        low_freq_factor: f32,
        /// Wavelength threshold above which frequencies are kept.
        high_freq_factor: f32,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

/// Resolved rotary embedding parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// The base of the frequencies.
    pub theta: f32,
    /// The scaling rule.
    pub scaling: RopeScaling,
}

/// The longest context a configuration may declare: 2^24 positions, the last at
/// which an f32 position (rotary angles are computed in f32, as transformers does)
/// is still exact. Real Llamas declare at most 131,072.
pub(crate) const MAX_POSITIONS: usize = 1 << 24;

/// A fully resolved Llama configuration: what the network is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (GQA when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Rotary embedding parameters.
    pub rope: RopeConfig,
    /// Longest sequence the model accepts.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections carry a bias.
    pub attention_bias: bool,
    /// Whether the MLP projections carry a bias.
    pub mlp_bias: bool,
    /// Number of labels of a sequence-classification head, when the checkpoint has one.
    pub num_labels: Option<usize>,
    /// Beginning-of-sequence token id, when known.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids, when known.
    pub eos_token_ids: Vec<u32>,
    /// Padding token id, when known.
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// A Llama-3 shape with the Llama-3 tokenizer's vocabulary, llama3 rope scaling
    /// (factor `rope_factor`, 8192 original positions) and 131,072 positions.
    fn llama3_shape(
        hidden: usize,
        intermediate: usize,
        layers: usize,
        heads: usize,
        tied: bool,
        rope_factor: f32,
    ) -> Self {
        Self {
            vocab_size: 128_256,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: 8,
            head_dim: hidden / heads,
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta: 500_000.0,
                scaling: RopeScaling::Llama3 {
                    factor: rope_factor,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                },
            },
            max_position_embeddings: 131_072,
            tie_word_embeddings: tied,
            attention_bias: false,
            mlp_bias: false,
            num_labels: None,
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001, 128_008, 128_009],
            pad_token_id: None,
        }
    }

    /// The shape of Llama-3.2-1B (`meta-llama/Llama-3.2-1B`'s config.json).
    pub fn llama_3_2_1b() -> Self {
        Self::llama3_shape(2048, 8192, 16, 32, true, 32.0)
    }

    /// The shape of Llama-3.2-3B, DeAR's 3B student.
    pub fn llama_3_2_3b() -> Self {
        Self::llama3_shape(3072, 8192, 28, 24, true, 32.0)
    }

    /// The shape of Llama-3.1-8B, DeAR's 8B student and listwise base.
    pub fn llama_3_1_8b() -> Self {
        Self::llama3_shape(4096, 14336, 32, 32, false, 8.0)
    }

    /// Checks the invariants the network relies on.
    pub(crate) fn validate(&self, path: &Path) -> crate::Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::config(path, field, "must be greater than 0"));
            }
        }
        // Upper bounds well past any real Llama (405B: 126 layers, 16,384 wide, 128
        // heads, 128K vocabulary, 128K context), so that no allocation is sized from a
        // crafted number.
        let at_most = [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_layers, 1024),
            ("num_attention_heads", self.num_heads, 1024),
            ("num_key_value_heads", self.num_kv_heads, 1024),
            ("head_dim", self.head_dim, 1024),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ];
        for (field, value, max) in at_most {
            if value > max {
                return Err(Error::config(
                    path,
                    field,
                    format!("{value} is out of range (at most {max})"),
                ));
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(Error::config(
                path,
                "rms_norm_eps",
                format!(
                    "must be a finite number in (0, 1), got {}",
                    self.rms_norm_eps
                ),
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::config(
                path,
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                path,
                "head_dim",
                format!(
                    "rotary embeddings need an even head_dim, got {}",
                    self.head_dim
                ),
            ));
        }
        if !(self.rope.theta.is_finite() && self.rope.theta > 0.0) {
            return Err(Error::config(
                path,
                "rope_theta",
                "must be a positive number",
            ));
        }
        // Each part may be in range while their combination is not (a linear factor of
        // 1e-40 divides a frequency into infinity): every angle would be NaN.
        let frequencies = crate::model::rope::inverse_frequencies(&self.rope, self.head_dim);
        if let Some(bad) = frequencies.iter().find(|f| !f.is_finite()) {
            return Err(Error::config(
                path,
                "rope_scaling",
                format!(
                    "rope_theta {} with {:?} gives a rotary frequency of {bad}",
                    self.rope.theta, self.rope.scaling
                ),
            ));
        }
        Ok(())
    }
}

/// `eos_token_id` may be an integer or a list of integers.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub(crate) fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The serde mirror of a Llama `config.json`. Unknown fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct HfConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    num_labels: Option<usize>,
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<TokenIds>,
}

/// Reads and resolves a `config.json`.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Json`] when it is not valid
/// JSON, [`Error::UnsupportedArchitecture`] for a `model_type` other than `llama`, and
/// [`Error::Config`] for a missing or invalid field.
pub(crate) fn read_hf_config(path: &Path) -> crate::Result<ModelConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let raw: HfConfig = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
    raw.resolve(path)
}

fn required(path: &Path, field: &str, value: Option<usize>) -> crate::Result<usize> {
    value.ok_or_else(|| Error::config(path, field, "missing"))
}

impl HfConfig {
    pub(crate) fn resolve(&self, path: &Path) -> crate::Result<ModelConfig> {
        match self.model_type.as_deref() {
            Some("llama") => {}
            Some(other) => {
                return Err(Error::UnsupportedArchitecture {
                    architecture: other.to_string(),
                    path: path.to_path_buf(),
                })
            }
            None => {
                let arch = self.architectures.first().cloned().unwrap_or_default();
                if !arch.starts_with("Llama") {
                    return Err(Error::config(
                        path,
                        "model_type",
                        "missing (and `architectures` does not name a Llama model)",
                    ));
                }
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(Error::config(
                    path,
                    "hidden_act",
                    format!("only \"silu\" is supported, got {act:?}"),
                ));
            }
        }
        let hidden_size = required(path, "hidden_size", self.hidden_size)?;
        let num_heads = required(path, "num_attention_heads", self.num_attention_heads)?;
        if num_heads == 0 {
            return Err(Error::config(
                path,
                "num_attention_heads",
                "must be greater than 0",
            ));
        }
        let head_dim = self.head_dim.unwrap_or(hidden_size / num_heads);
        let num_labels = self
            .num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()));
        let cfg = ModelConfig {
            vocab_size: required(path, "vocab_size", self.vocab_size)?,
            hidden_size,
            intermediate_size: required(path, "intermediate_size", self.intermediate_size)?,
            num_layers: required(path, "num_hidden_layers", self.num_hidden_layers)?,
            num_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope: self.rope(path)?,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            // transformers' LlamaConfig defaults `tie_word_embeddings` to False.
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            num_labels,
            bos_token_id: self
                .bos_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: self
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
            pad_token_id: self
                .pad_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn rope(&self, path: &Path) -> crate::Result<RopeConfig> {
        // transformers 5 writes `rope_parameters` (with `rope_theta` inside); older files
        // have `rope_theta` at the top level and an optional `rope_scaling` object.
        let (params, field) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if !p.is_null() => (Some(p), "rope_parameters"),
            (_, Some(s)) if !s.is_null() => (Some(s), "rope_scaling"),
            _ => (None, "rope_scaling"),
        };
        let theta_in_params = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64);
        let theta = theta_in_params.or(self.rope_theta).unwrap_or(10_000.0) as f32;
        let Some(params) = params else {
            return Ok(RopeConfig {
                theta,
                scaling: RopeScaling::Default,
            });
        };
        let rope_type = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default");
        let num = |key: &str| -> crate::Result<f64> {
            params
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| {
                    Error::config(path, format!("{field}.{key}"), "missing or not a number")
                })
        };
        // transformers only warns about odd values; these are the ones whose
        // frequencies would be infinite or NaN (every score NaN), so they are refused.
        let positive = |key: &str| -> crate::Result<f32> {
            let value = num(key)?;
            let narrow = value as f32;
            if narrow.is_finite() && narrow > 0.0 {
                Ok(narrow)
            } else {
                Err(Error::config(
                    path,
                    format!("{field}.{key}"),
                    format!("must be a finite number greater than 0, got {value}"),
                ))
            }
        };
        let scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: positive("factor")?,
            },
            "llama3" => {
                let original = num("original_max_position_embeddings")?;
                if !(original >= 1.0 && original <= MAX_POSITIONS as f64 && original.fract() == 0.0)
                {
                    return Err(Error::config(
                        path,
                        format!("{field}.original_max_position_embeddings"),
                        format!("must be a whole number in 1..={MAX_POSITIONS}, got {original}"),
                    ));
                }
                let low = positive("low_freq_factor")?;
                let high = positive("high_freq_factor")?;
                if high <= low {
                    return Err(Error::config(
                        path,
                        format!("{field}.high_freq_factor"),
                        format!("must be greater than low_freq_factor ({high} <= {low})"),
                    ));
                }
                RopeScaling::Llama3 {
                    factor: positive("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original as usize,
                }
            }
            other => {
                return Err(Error::config(
                    path,
                    format!("{field}.rope_type"),
                    format!("unsupported rope type {other:?} (supported: default, linear, llama3)"),
                ))
            }
        };
        Ok(RopeConfig { theta, scaling })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> crate::Result<ModelConfig> {
        let raw: HfConfig =
            serde_json::from_str(json).map_err(|e| Error::json("config.json", e))?;
        raw.resolve(Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4"#;

    #[test]
    fn classic_and_new_rope_forms_agree() -> crate::Result<()> {
        let classic = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 500000.0,
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))?;
        let new = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_parameters": {{"rope_type": "llama3",
            "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))?;
        assert_eq!(classic, new);
        assert_eq!(new.rope.theta, 500000.0);
        assert!(matches!(new.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        Ok(())
    }

    /// Crafted sizes and epsilons are named errors before anything is allocated.
    #[test]
    fn crafted_values_are_refused_by_name() {
        let cases = [
            (r#""num_hidden_layers": 1000000000000"#, "num_hidden_layers"),
            (
                r#""max_position_embeddings": 100000000000"#,
                "max_position_embeddings",
            ),
            (r#""rms_norm_eps": -1e-6"#, "rms_norm_eps"),
            (r#""rms_norm_eps": 0.0"#, "rms_norm_eps"),
            (r#""rms_norm_eps": 1e300"#, "rms_norm_eps"),
            (
                r#""rope_scaling": {"type": "linear", "factor": 0.0}"#,
                "rope_scaling.factor",
            ),
            (
                r#""rope_scaling": {"type": "linear", "factor": 1e300}"#,
                "rope_scaling.factor",
            ),
            (
                r#""rope_scaling": {"type": "linear", "factor": 1e-40}"#,
                "rope_scaling",
            ),
            (
                r#""rope_parameters": {"rope_type": "llama3", "factor": -8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
                "rope_parameters.factor",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
                "rope_scaling.low_freq_factor",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": -1}"#,
                "rope_scaling.original_max_position_embeddings",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192.5}"#,
                "rope_scaling.original_max_position_embeddings",
            ),
        ];
        for (field_json, field) in cases {
            let base = BASE.replace(r#""num_hidden_layers": 2,"#, "");
            let json = format!(r#"{{"model_type": "llama", {base}, {field_json}}}"#);
            let json = if field == "num_hidden_layers" {
                json
            } else {
                json.replace(
                    r#""model_type": "llama","#,
                    r#""model_type": "llama", "num_hidden_layers": 2,"#,
                )
            };
            match parse(&json) {
                Err(Error::Config {
                    field: f, message, ..
                }) => {
                    assert_eq!(f, field, "{json}: {message}");
                }
                other => panic!("{json}: expected a config error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_follow_transformers() -> crate::Result<()> {
        let cfg = parse(&format!(r#"{{"model_type": "llama", {BASE}}}"#))?;
        assert_eq!(cfg.num_kv_heads, 4);
        assert_eq!(cfg.head_dim, 16);
        assert!(!cfg.tie_word_embeddings);
        assert_eq!(cfg.rope.scaling, RopeScaling::Default);
        assert_eq!(cfg.rope.theta, 10_000.0);
        Ok(())
    }

    #[test]
    fn legacy_type_key_and_eos_list() -> crate::Result<()> {
        let cfg = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"type": "linear", "factor": 2.0}},
            "eos_token_id": [7, 9], "bos_token_id": 3}}"#
        ))?;
        assert_eq!(cfg.rope.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(cfg.eos_token_ids, vec![7, 9]);
        assert_eq!(cfg.bos_token_id, Some(3));
        Ok(())
    }

    #[test]
    fn errors_name_the_problem() {
        let unknown = parse(&format!(r#"{{"model_type": "mistralish", {BASE}}}"#));
        assert!(
            matches!(unknown, Err(Error::UnsupportedArchitecture { ref architecture, .. }) if architecture == "mistralish")
        );
        let missing = parse(r#"{"model_type": "llama", "vocab_size": 10}"#);
        let msg = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("hidden_size"), "{msg}");
        let gqa = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#
        ));
        let msg = gqa.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("num_key_value_heads"), "{msg}");
        let rope = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 2.0}}}}"#
        ));
        let msg = rope.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("yarn"), "{msg}");
    }
}
