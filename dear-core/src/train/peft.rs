//! Reading and writing adapters in peft's on-disk format (`PeftModel.save_pretrained`):
//! `adapter_config.json` with every field peft 0.21 writes, and
//! `adapter_model.safetensors` (F32, metadata `{"format": "pt"}`) with peft's key names.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Var};
use serde_json::json;

use super::net::{short_name, LoraPair, Trainable, PROJECTIONS};
use crate::model::frozen::FrozenLlama;
use crate::Error;

/// What `adapter_config.json` says about an adapter being written.
#[derive(Clone, Debug)]
pub(crate) struct AdapterMeta {
    /// `SEQ_CLS` (stage 1) or `CAUSAL_LM` (stage 2).
    pub(crate) task_type: &'static str,
    pub(crate) r: usize,
    pub(crate) alpha: f64,
    pub(crate) dropout: f64,
    /// Projection indices into [`PROJECTIONS`].
    pub(crate) targets: Vec<usize>,
    pub(crate) base_model: String,
}

fn number(x: f64) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The `adapter_config.json` text peft writes for such a LoRA.
pub(crate) fn adapter_config(meta: &AdapterMeta) -> String {
    let mut targets: Vec<&str> = meta.targets.iter().map(|&p| short_name(p)).collect();
    targets.sort_unstable();
    let modules_to_save = if meta.task_type == "SEQ_CLS" {
        json!(["classifier", "score"])
    } else {
        serde_json::Value::Null
    };
    let v = json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": meta.base_model,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": number(meta.alpha),
        "lora_bias": false,
        "lora_dropout": meta.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": modules_to_save,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": meta.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "target_parameters": null,
        "task_type": meta.task_type,
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// A tensor to write: `(key, values, shape)`.
pub(crate) type NamedTensor = (String, Vec<f32>, Vec<usize>);

/// The trainable tensors as `(peft key, values, shape)`.
pub(crate) fn tensors(params: &Trainable) -> crate::Result<Vec<NamedTensor>> {
    params
        .named()
        .into_iter()
        .map(|(k, v)| {
            let shape = v.dims().to_vec();
            Ok((k, v.as_tensor().flatten_all()?.to_vec1::<f32>()?, shape))
        })
        .collect()
}

/// Writes f32 tensors to a safetensors file (metadata `{"format": "pt"}`).
pub(crate) fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> crate::Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, v, s)| {
            (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                s.clone(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// Writes `params` as a peft adapter directory (which must exist).
pub(crate) fn save(dir: &Path, params: &Trainable, meta: &AdapterMeta) -> crate::Result<()> {
    let cfg = dir.join("adapter_config.json");
    std::fs::write(&cfg, adapter_config(meta)).map_err(|e| Error::io(&cfg, e))?;
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors(params)?)
}

/// Loads a peft LoRA directory as trainable parameters on `base` (to continue
/// training it, or to check gradients against a reference).
///
/// # Errors
/// As [`crate::lora`]'s loader: missing files, shapes that do not fit the base; and
/// [`Error::InvalidArgument`] for a module dear cannot train (`lm_head`, biases,
/// `modules_to_save` other than `score`) or mixed scalings.
pub(crate) fn load(
    dir: &Path,
    base: &FrozenLlama,
    dropout: f64,
) -> crate::Result<(Trainable, AdapterMeta)> {
    let adapter =
        crate::lora::LoraAdapter::load(dir, "train", &base.config, &Device::Cpu, DType::F32)?;
    if !adapter.biases.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: adapters with trained biases cannot be trained further",
            dir.display()
        )));
    }
    let mut pairs = Vec::new();
    let mut scale = None;
    let mut targets = std::collections::BTreeSet::new();
    for (module, w) in &adapter.deltas {
        let (layer, proj) = module
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(l, p)| {
                Some((
                    l.parse::<usize>().ok()?,
                    PROJECTIONS.iter().position(|x| *x == p)?,
                ))
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: dear trains LoRA on the seven block projections only, not '{module}'",
                    dir.display()
                ))
            })?;
        if scale.is_some_and(|s: f64| (s - w.scale).abs() > 1e-12) {
            return Err(Error::InvalidArgument(format!(
                "{}: modules with different scalings (rank_pattern/alpha_pattern) cannot be trained",
                dir.display()
            )));
        }
        scale = Some(w.scale);
        targets.insert(proj);
        pairs.push(LoraPair {
            layer,
            proj,
            a: Var::from_tensor(&w.a.to_dtype(DType::F32)?.contiguous()?)?,
            b: Var::from_tensor(&w.b.to_dtype(DType::F32)?.contiguous()?)?,
        });
    }
    pairs.sort_by_key(|p| (p.layer, p.proj));
    let mut score = None;
    for (name, t) in &adapter.saved {
        if name == "score.weight" {
            score = Some(Var::from_tensor(&t.to_dtype(DType::F32)?.contiguous()?)?);
        } else {
            return Err(Error::InvalidArgument(format!(
                "{}: dear cannot train the saved module '{name}'",
                dir.display()
            )));
        }
    }
    let cfg = &adapter.config;
    let meta = AdapterMeta {
        task_type: if score.is_some() {
            "SEQ_CLS"
        } else {
            "CAUSAL_LM"
        },
        r: cfg.r,
        alpha: cfg.lora_alpha,
        dropout,
        targets: targets.into_iter().collect(),
        base_model: cfg.base_model_name_or_path.clone().unwrap_or_default(),
    };
    let params = Trainable::from_parts(
        base.blocks.len(),
        pairs,
        score,
        scale.unwrap_or(0.0),
        dropout,
    );
    Ok((params, meta))
}
