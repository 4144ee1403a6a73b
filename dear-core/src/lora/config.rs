//! `adapter_config.json`, as peft's `LoraConfig` writes it, and the rules peft uses
//! to decide which modules an adapter targets and how much each delta is scaled.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::Error;

/// The largest LoRA rank accepted (real adapters use 4 to 256).
pub(crate) const MAX_RANK: usize = 1 << 16;
/// The largest `lora_alpha` magnitude accepted (real adapters use up to a few hundred).
pub(crate) const MAX_ALPHA: f64 = 1e6;

/// `target_modules`: a list of module-name suffixes, or one regular expression
/// matched against the whole module name (peft's `check_target_module_exists`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum Layers {
    One(usize),
    Many(Vec<usize>),
}

/// The parts of a PEFT LoRA config that change inference.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct AdapterConfig {
    #[serde(default)]
    peft_type: Option<String>,
    pub(crate) r: usize,
    pub(crate) lora_alpha: f64,
    #[serde(default)]
    pub(crate) use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    pub(crate) target_modules: Option<TargetModules>,
    #[serde(default)]
    pub(crate) modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) task_type: Option<String>,
    #[serde(default)]
    pub(crate) base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub(crate) fan_in_fan_out: bool,
    #[serde(default)]
    pub(crate) bias: Option<String>,
    #[serde(default)]
    layers_to_transform: Option<Layers>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
}

impl AdapterConfig {
    /// Reads and checks an `adapter_config.json`.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Json`], or [`Error::Config`] for a non-LoRA adapter,
    /// DoRA, or a zero rank.
    pub(crate) fn read(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: AdapterConfig = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
        if let Some(t) = &cfg.peft_type {
            if t != "LORA" {
                return Err(Error::config(
                    path,
                    "peft_type",
                    format!("only LORA adapters are supported, got {t:?}"),
                ));
            }
        }
        if cfg.use_dora {
            return Err(Error::config(
                path,
                "use_dora",
                "DoRA adapters are not supported",
            ));
        }
        if cfg.r == 0 {
            return Err(Error::config(path, "r", "must be greater than 0"));
        }
        if let Some(bias) = &cfg.bias {
            if !matches!(bias.as_str(), "none" | "all" | "lora_only") {
                return Err(Error::config(
                    path,
                    "bias",
                    format!("unknown value {bias:?}"),
                ));
            }
        }
        if let Some(TargetModules::Regex(re)) = &cfg.target_modules {
            regex_full(re).map_err(|e| Error::config(path, "target_modules", e))?;
        }
        if matches!(&cfg.target_modules, Some(TargetModules::List(l)) if l.is_empty()) {
            // peft: "Target modules [] not found in the base model."
            return Err(Error::config(
                path,
                "target_modules",
                "is empty: the adapter targets no module",
            ));
        }
        let ranks = std::iter::once(("r".to_string(), cfg.r)).chain(
            cfg.rank_pattern
                .iter()
                .map(|(k, v)| (format!("rank_pattern.{k}"), *v)),
        );
        for (field, r) in ranks {
            if r == 0 || r > MAX_RANK {
                return Err(Error::config(
                    path,
                    field,
                    format!("rank {r} is out of range (1 to {MAX_RANK})"),
                ));
            }
        }
        let alphas = std::iter::once(("lora_alpha".to_string(), cfg.lora_alpha)).chain(
            cfg.alpha_pattern
                .iter()
                .map(|(k, v)| (format!("alpha_pattern.{k}"), *v)),
        );
        for (field, alpha) in alphas {
            if !(alpha.is_finite() && alpha.abs() <= MAX_ALPHA) {
                return Err(Error::config(
                    path,
                    field,
                    format!("{alpha} is out of range (a finite number of magnitude at most {MAX_ALPHA})"),
                ));
            }
        }
        Ok(cfg)
    }

    /// `target_modules` as written, for messages.
    pub(crate) fn target_modules_text(&self) -> String {
        match &self.target_modules {
            None => "(unset: peft's Llama default q_proj, v_proj)".to_string(),
            Some(TargetModules::List(l)) => format!("{l:?}"),
            Some(TargetModules::Regex(r)) => format!("{r:?}"),
        }
    }

    /// The layer indices of `layers_to_transform`, if set.
    pub(crate) fn layers(&self) -> Option<Vec<usize>> {
        self.layers_to_transform.as_ref().map(|l| match l {
            Layers::One(l) => vec![*l],
            Layers::Many(v) => v.clone(),
        })
    }

    /// Whether `modules_to_save` (with the heads peft adds for a SEQ_CLS task)
    /// covers the tensor `name` (e.g. `score.weight`).
    pub(crate) fn saves(&self, name: &str) -> bool {
        let implicit: &[&str] = if self.task_type.as_deref() == Some("SEQ_CLS") {
            // peft's PeftModelForSequenceClassification adds these to modules_to_save.
            &["classifier", "score"]
        } else {
            &[]
        };
        self.modules_to_save
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(implicit.iter().copied())
            .any(|s| name.starts_with(&format!("{s}.")) || name.contains(&format!(".{s}.")))
    }

    /// Whether peft would wrap the module called `name` (e.g.
    /// `model.layers.0.self_attn.q_proj`).
    pub(crate) fn targets(&self, name: &str) -> bool {
        let matched = match &self.target_modules {
            // peft fills in its default for Llama (`q_proj`, `v_proj`) and saves it.
            None => name.ends_with(".q_proj") || name.ends_with(".v_proj"),
            Some(TargetModules::Regex(re)) => regex_full(re).is_ok_and(|r| r.is_match(name)),
            Some(TargetModules::List(list)) => list.iter().any(|t| {
                t == "all-linear" && !name.ends_with("lm_head") && !name.ends_with("score")
                    || name == t
                    || name.ends_with(&format!(".{t}"))
            }),
        };
        if !matched {
            return false;
        }
        match &self.layers_to_transform {
            None => true,
            Some(layers) => {
                let wanted: Vec<usize> = match layers {
                    Layers::One(l) => vec![*l],
                    Layers::Many(v) => v.clone(),
                };
                layer_index(name).is_some_and(|l| wanted.contains(&l))
            }
        }
    }

    /// The scale of a module's delta: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA,
    /// with per-module `rank_pattern` / `alpha_pattern` overrides.
    pub(crate) fn scale(&self, name: &str) -> f64 {
        let r = pattern_value(&self.rank_pattern, name).unwrap_or(self.r) as f64;
        let alpha = pattern_value(&self.alpha_pattern, name).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// The rank a module is expected to have.
    pub(crate) fn rank(&self, name: &str) -> usize {
        pattern_value(&self.rank_pattern, name).unwrap_or(self.r)
    }
}

fn regex_full(re: &str) -> std::result::Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("invalid regex {re:?}: {e}"))
}

/// peft's `get_pattern_key`: a pattern applies when the module name ends with it
/// (as a regex, at a dot boundary).
fn pattern_value<T: Copy>(patterns: &BTreeMap<String, T>, name: &str) -> Option<T> {
    patterns.iter().find_map(|(pattern, v)| {
        regex::Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$"))
            .ok()
            .filter(|r| r.is_match(name))
            .map(|_| *v)
    })
}

fn layer_index(name: &str) -> Option<usize> {
    let rest = name.split(".layers.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> AdapterConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn targets_follow_peft_rules() {
        let list = cfg(r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}"#);
        assert!(list.targets("model.layers.3.self_attn.q_proj"));
        assert!(!list.targets("model.layers.3.self_attn.k_proj"));
        assert!(!list.targets("model.layers.3.self_attn.xq_proj"));
        let re = cfg(r#"{"r": 4, "lora_alpha": 8, "target_modules": ".*\\.(q_proj|down_proj)$"}"#);
        assert!(re.targets("model.layers.0.mlp.down_proj"));
        assert!(!re.targets("model.layers.0.mlp.up_proj"));
        let layers = cfg(
            r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "layers_to_transform": [1]}"#,
        );
        assert!(layers.targets("model.layers.1.self_attn.q_proj"));
        assert!(!layers.targets("model.layers.0.self_attn.q_proj"));
    }

    #[test]
    fn scaling_follows_peft() {
        let plain = cfg(r#"{"r": 8, "lora_alpha": 16}"#);
        assert_eq!(plain.scale("x"), 2.0);
        let rs = cfg(r#"{"r": 16, "lora_alpha": 8, "use_rslora": true}"#);
        assert_eq!(rs.scale("x"), 2.0);
        let pat = cfg(
            r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"q_proj": 32}}"#,
        );
        assert_eq!(pat.scale("model.layers.0.self_attn.q_proj"), 8.0);
        assert_eq!(pat.rank("model.layers.0.self_attn.q_proj"), 4);
        assert_eq!(pat.scale("model.layers.0.self_attn.v_proj"), 2.0);
    }
}
