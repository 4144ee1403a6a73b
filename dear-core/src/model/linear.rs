//! One linear layer type over dense weights (f32/f16/bf16) and candle's quantized
//! `QMatMul` (GGUF block formats), so the network code never cares which it holds.
//! Mirrors `torch.nn.Linear`: `y = x Wᵀ + b` with `W: [out, in]`.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

/// The weight of a linear layer.
#[derive(Clone, Debug)]
pub(crate) enum LinearWeight {
    /// `[out, in]`, in the model's activation dtype.
    Dense(Tensor),
    /// A block-quantized `[out, in]` matrix; inputs and outputs are f32.
    Quantized(QMatMul),
}

/// A linear layer: weight plus optional bias.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

impl Linear {
    pub(crate) fn dense(weight: Tensor, bias: Option<Tensor>) -> crate::Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
            in_dim,
            out_dim,
        })
    }

    pub(crate) fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> crate::Result<Self> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        Ok(Self {
            weight: LinearWeight::Quantized(QMatMul::from_arc(weight)?),
            bias,
            in_dim,
            out_dim,
        })
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x: [tokens, in]` → `[tokens, out]`, in `x`'s dtype.
    pub(crate) fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => x.matmul(&w.t()?)?,
            LinearWeight::Quantized(q) => {
                let dtype = x.dtype();
                let y = q.forward(&x.to_dtype(DType::F32)?)?;
                y.to_dtype(dtype)?
            }
        };
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }
}
