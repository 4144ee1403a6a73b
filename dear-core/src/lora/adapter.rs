//! A PEFT LoRA adapter in memory: the A/B matrices of every targeted module, the
//! scaling, optional bias overrides and `modules_to_save` tensors (such as the `score`
//! head of a sequence-classification adapter), checked against the base model.
//!
//! Key names are the ones peft writes (`peft/utils/save_and_load.py`): the adapter name
//! is dropped and a `base_model.model.` prefix added, e.g.
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` and, for a module
//! in `modules_to_save`, `base_model.model.score.weight`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::lora::config::AdapterConfig;
use crate::Error;

/// One module's low-rank update: `ΔW = scale · B A`.
#[derive(Clone, Debug)]
pub(crate) struct LoraWeights {
    /// `[r, in]`
    pub(crate) a: Tensor,
    /// `[out, r]`
    pub(crate) b: Tensor,
    pub(crate) scale: f64,
}

/// A loaded LoRA adapter.
#[derive(Clone, Debug)]
pub(crate) struct LoraAdapter {
    pub(crate) name: String,
    pub(crate) config: AdapterConfig,
    /// By module name (`model.layers.0.self_attn.q_proj`).
    pub(crate) deltas: BTreeMap<String, LoraWeights>,
    /// Bias tensors the adapter trained (`bias = "all"` or `"lora_only"`), by tensor name.
    pub(crate) biases: BTreeMap<String, Tensor>,
    /// `modules_to_save` tensors, by tensor name (`score.weight`).
    pub(crate) saved: BTreeMap<String, Tensor>,
}

const PREFIX: &str = "base_model.model.";

/// The linear modules of a Llama base with their `(in, out)` sizes.
pub(crate) fn base_linears(cfg: &ModelConfig) -> BTreeMap<String, (usize, usize)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_heads * cfg.head_dim;
    let kv = cfg.num_kv_heads * cfg.head_dim;
    let mut out = BTreeMap::new();
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        out.insert(format!("{p}.self_attn.q_proj"), (h, q));
        out.insert(format!("{p}.self_attn.k_proj"), (h, kv));
        out.insert(format!("{p}.self_attn.v_proj"), (h, kv));
        out.insert(format!("{p}.self_attn.o_proj"), (q, h));
        out.insert(format!("{p}.mlp.gate_proj"), (h, i));
        out.insert(format!("{p}.mlp.up_proj"), (h, i));
        out.insert(format!("{p}.mlp.down_proj"), (i, h));
    }
    out.insert("lm_head".to_string(), (h, cfg.vocab_size));
    out
}

impl LoraAdapter {
    /// Loads an adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
    /// and checks it against the base model's config.
    ///
    /// # Errors
    /// [`Error::ModelNotFound`] for a missing file (and a clear refusal of `.bin`
    /// adapters), [`Error::CorruptFile`] for unreadable weights, and
    /// [`Error::TensorShape`] / [`Error::InvalidArgument`] naming the module when the
    /// adapter does not fit the base.
    pub(crate) fn load(
        dir: &Path,
        name: &str,
        base: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> crate::Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        if !cfg_path.is_file() {
            return Err(Error::ModelNotFound {
                path: dir.to_path_buf(),
                message: "no adapter_config.json in this directory".into(),
            });
        }
        let config = AdapterConfig::read(&cfg_path)?;
        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            let message = if dir.join("adapter_model.bin").is_file() {
                "only safetensors adapters are supported, found adapter_model.bin (re-save it with safe_serialization=True)"
            } else {
                "no adapter_model.safetensors in this directory"
            };
            return Err(Error::ModelNotFound {
                path: dir.to_path_buf(),
                message: message.into(),
            });
        }
        if config.fan_in_fan_out {
            // peft resets fan_in_fan_out to False for nn.Linear targets (Llama has no Conv1D).
            tracing::warn!(
                adapter = name,
                "fan_in_fan_out=True is ignored for Linear modules, as peft does"
            );
        }
        let linears = base_linears(base);
        if let Some(layers) = config.layers() {
            if let Some(&l) = layers.iter().find(|&&l| l >= base.num_layers) {
                return Err(Error::config(
                    &cfg_path,
                    "layers_to_transform",
                    format!(
                        "layer {l} is past the last layer of the base model ({} layers)",
                        base.num_layers
                    ),
                ));
            }
        }
        let targeted: Vec<&String> = linears.keys().filter(|m| config.targets(m)).collect();
        if targeted.is_empty() {
            // peft: "Target modules ... not found in the base model."
            return Err(Error::config(
                &cfg_path,
                "target_modules",
                format!(
                    "{} (with layers_to_transform {:?}) match no module of the base model",
                    config.target_modules_text(),
                    config.layers()
                ),
            ));
        }
        let st = crate::loader::safetensors::mmap(&weights)?;
        let mut a_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut b_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut biases = BTreeMap::new();
        let mut saved = BTreeMap::new();
        let mut tensors = st.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, view) in tensors {
            if !matches!(
                view.dtype(),
                safetensors::Dtype::F16
                    | safetensors::Dtype::BF16
                    | safetensors::Dtype::F32
                    | safetensors::Dtype::F64
            ) {
                return Err(Error::corrupt(
                    &weights,
                    format!(
                        "tensor '{key}' has dtype {:?}; adapter weights must be f16, bf16, f32 or f64",
                        view.dtype()
                    ),
                ));
            }
            let Some(rest) = key.strip_prefix(PREFIX) else {
                return Err(Error::corrupt(
                    &weights,
                    format!(
                        "tensor '{key}' does not start with '{PREFIX}' (not a peft adapter file)"
                    ),
                ));
            };
            if rest.contains("lora_embedding_") || rest.contains("lora_magnitude") {
                return Err(Error::InvalidArgument(format!(
                    "adapter '{name}': tensor '{key}' (embedding LoRA / DoRA) is not supported"
                )));
            }
            let stray = |what: &str| {
                Error::corrupt(
                    &weights,
                    format!(
                        "tensor '{key}' is {what}, which adapter_config.json does not target \
                         (target_modules {}, layers_to_transform {:?}, modules_to_save {:?}, bias {:?}); \
                         peft would not apply it",
                        config.target_modules_text(),
                        config.layers(),
                        config.modules_to_save,
                        config.bias.as_deref().unwrap_or("none"),
                    ),
                )
            };
            // Checked before the tensor is read, so a stray tensor costs no memory.
            let part = if let Some(module) = rest.strip_suffix(".lora_A.weight") {
                if !config.targets(module) {
                    return Err(stray("a LoRA matrix for a module"));
                }
                Part::A(module)
            } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
                if !config.targets(module) {
                    return Err(stray("a LoRA matrix for a module"));
                }
                Part::B(module)
            } else if config.saves(rest) {
                Part::Saved
            } else if let Some(module) = rest.strip_suffix(".bias") {
                let allowed = match config.bias.as_deref() {
                    Some("all") => true,
                    Some("lora_only") => config.targets(module),
                    _ => false,
                };
                if !allowed {
                    return Err(stray("a bias"));
                }
                Part::Bias
            } else {
                return Err(stray("a module-to-save tensor"));
            };
            let t = st
                .load(&key, device)
                .map_err(|e| Error::corrupt(&weights, format!("tensor '{key}': {e}")))?
                .to_dtype(dtype)?;
            if !all_finite(&t)? {
                return Err(Error::corrupt(
                    &weights,
                    format!("tensor '{key}' holds NaN or infinite values (in {dtype:?})"),
                ));
            }
            match part {
                Part::A(module) => {
                    a_parts.insert(module.to_string(), t);
                }
                Part::B(module) => {
                    b_parts.insert(module.to_string(), t);
                }
                Part::Bias => {
                    biases.insert(rest.to_string(), t);
                }
                Part::Saved => {
                    saved.insert(rest.to_string(), t);
                }
            }
        }
        let mut deltas = BTreeMap::new();
        for (module, a) in a_parts {
            let b = b_parts
                .remove(&module)
                .ok_or_else(|| Error::MissingTensor {
                    name: format!("{PREFIX}{module}.lora_B.weight"),
                    path: weights.clone(),
                })?;
            let &(in_dim, out_dim) = linears.get(&module).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "adapter '{name}' has LoRA weights for module '{module}', which the base model does not have"
                ))
            })?;
            let r = config.rank(&module);
            check(
                &format!("{PREFIX}{module}.lora_A.weight"),
                &[r, in_dim],
                a.dims(),
            )?;
            check(
                &format!("{PREFIX}{module}.lora_B.weight"),
                &[out_dim, r],
                b.dims(),
            )?;
            let scale = config.scale(&module);
            deltas.insert(module, LoraWeights { a, b, scale });
        }
        if let Some(module) = b_parts.keys().next() {
            return Err(Error::MissingTensor {
                name: format!("{PREFIX}{module}.lora_A.weight"),
                path: weights.clone(),
            });
        }
        for module in linears.keys() {
            if config.targets(module) && module != "lm_head" && !deltas.contains_key(module) {
                return Err(Error::MissingTensor {
                    name: format!("{PREFIX}{module}.lora_A.weight"),
                    path: weights.clone(),
                });
            }
        }
        if config.task_type.as_deref() == Some("SEQ_CLS") && !saved.contains_key("score.weight") {
            return Err(Error::MissingTensor {
                name: format!("{PREFIX}score.weight (the head of a SEQ_CLS adapter)"),
                path: weights.clone(),
            });
        }
        if deltas.is_empty() && saved.is_empty() {
            return Err(Error::corrupt(
                &weights,
                "the adapter holds no LoRA weights",
            ));
        }
        for (tensor, t) in &saved {
            let expected: Option<Vec<usize>> = match tensor.as_str() {
                "score.weight" => Some(vec![
                    t.dims().first().copied().unwrap_or(0),
                    base.hidden_size,
                ]),
                "lm_head.weight" | "model.embed_tokens.weight" => {
                    Some(vec![base.vocab_size, base.hidden_size])
                }
                "model.norm.weight" => Some(vec![base.hidden_size]),
                _ => None,
            };
            if let Some(expected) = expected {
                check(&format!("{PREFIX}{tensor}"), &expected, t.dims())?;
            }
        }
        Ok(Self {
            name: name.to_string(),
            config,
            deltas,
            biases,
            saved,
        })
    }

    /// `scale · B A` for a module, in f32: `[out, in]`.
    pub(crate) fn delta_f32(&self, module: &str) -> crate::Result<Option<Tensor>> {
        let Some(w) = self.deltas.get(module) else {
            return Ok(None);
        };
        let a = w.a.to_dtype(DType::F32)?;
        let b = w.b.to_dtype(DType::F32)?;
        Ok(Some((b.matmul(&a)? * w.scale)?))
    }
}

/// What a tensor of the adapter file is.
enum Part<'a> {
    A(&'a str),
    B(&'a str),
    Bias,
    Saved,
}

/// Whether every value of `t` is finite.
fn all_finite(t: &Tensor) -> crate::Result<bool> {
    if t.elem_count() == 0 {
        return Ok(true);
    }
    let f = t.to_dtype(DType::F32)?.flatten_all()?;
    // `0 · x` is 0 for a finite x and NaN for an infinite or NaN one.
    Ok(f.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()? == 0.0)
}

fn check(name: &str, expected: &[usize], actual: &[usize]) -> crate::Result<()> {
    crate::loader::check_shape(name, expected, actual)
}
