//! PEFT LoRA adapters: reading `adapter_config.json` + `adapter_model.safetensors`,
//! checking them against the base, and applying them in one of two modes:
//!
//! - **merged**: `W' = W + scale · B A` is folded into the base weights at load, before
//!   any quantization; fastest, one adapter per loaded model;
//! - **unmerged**: `y = W x + scale · B (A x)` on top of the (possibly quantized) base,
//!   so several adapters share one base in memory and each call names its adapter.
//!
//! Scaling is `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`, as in
//! peft's `LoraLayer.update_layer`.

mod adapter;
mod config;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};

use crate::loader::{quantize_matrix, Matrix, WeightSource};

pub(crate) use self::adapter::LoraAdapter;

/// Serves a base model's weights with one adapter merged in.
pub(crate) struct MergedSource {
    pub(crate) inner: Box<dyn WeightSource>,
    pub(crate) adapter: Arc<LoraAdapter>,
}

impl WeightSource for MergedSource {
    fn contains(&self, name: &str) -> bool {
        self.adapter.saved.contains_key(name) || self.inner.contains(name)
    }

    fn dense(&self, name: &str, shape: &[usize], dtype: DType) -> crate::Result<Tensor> {
        if let Some(t) = self
            .adapter
            .saved
            .get(name)
            .or_else(|| self.adapter.biases.get(name))
        {
            crate::loader::check_shape(name, shape, t.dims())?;
            return Ok(t.to_dtype(dtype)?);
        }
        self.inner.dense(name, shape, dtype)
    }

    fn matrix(&self, name: &str, shape: (usize, usize), dtype: DType) -> crate::Result<Matrix> {
        if let Some(t) = self.adapter.saved.get(name) {
            crate::loader::check_shape(name, &[shape.0, shape.1], t.dims())?;
            return Ok(Matrix::Dense(t.to_dtype(dtype)?));
        }
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let Some(delta) = self.adapter.delta_f32(module)? else {
            return self.inner.matrix(name, shape, dtype);
        };
        let base = self.inner.dense(name, &[shape.0, shape.1], DType::F32)?;
        let delta = delta.to_device(base.device())?;
        let merged = (base + delta)?;
        match self.inner.stored_quantization(name) {
            Some(q) => quantize_matrix(name, &merged, q, dtype),
            None => Ok(Matrix::Dense(merged.to_dtype(dtype)?)),
        }
    }

    fn stored_quantization(&self, name: &str) -> Option<GgmlDType> {
        self.inner.stored_quantization(name)
    }
}

/// The name an adapter gets when none is given: its folder name.
pub(crate) fn default_name(dir: &Path, spec: &str) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| spec.to_string())
}
