//! Random weights in the shape of any Llama configuration, built in memory: the cost
//! of the real DeAR sizes (3B, 8B) can be measured without downloading them.
//!
//! Matrices are drawn from N(0, 0.02²) (transformers' `initializer_range`), norm
//! weights are 1 and biases 0. Each matrix is quantized as soon as it is drawn, so
//! an 8B model in q4_0 needs ~4.5 GB, never its 32 GB of f32.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::loader::{check_shape, quantize_matrix, Matrix, WeightSource};

pub(crate) struct RandomSource {
    pub(crate) config: ModelConfig,
    pub(crate) device: Device,
    pub(crate) quantization: Option<GgmlDType>,
}

impl RandomSource {
    fn random(&self, shape: &[usize]) -> crate::Result<Tensor> {
        Ok(Tensor::randn(0f32, 0.02, shape, &self.device)?)
    }
}

impl WeightSource for RandomSource {
    fn contains(&self, name: &str) -> bool {
        match name {
            "lm_head.weight" => !self.config.tie_word_embeddings,
            "score.weight" => self.config.num_labels.is_some(),
            _ => true,
        }
    }

    fn dense(&self, name: &str, shape: &[usize], dtype: DType) -> crate::Result<Tensor> {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, &self.device)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, &self.device)?
        } else {
            self.random(shape)?
        };
        check_shape(name, shape, t.dims())?;
        Ok(t.to_dtype(dtype)?)
    }

    fn matrix(&self, name: &str, shape: (usize, usize), dtype: DType) -> crate::Result<Matrix> {
        let w = self.random(&[shape.0, shape.1])?;
        match self.quantization {
            Some(q) => quantize_matrix(name, &w, q, dtype),
            None => Ok(Matrix::Dense(w.to_dtype(dtype)?)),
        }
    }

    fn stored_quantization(&self, _name: &str) -> Option<GgmlDType> {
        self.quantization
    }
}
