//! One linear layer type over dense weights (f32/f16/bf16) and block-quantized ones
//! (GGUF formats), so the network code never cares which it holds, plus unmerged LoRA
//! deltas. Mirrors `torch.nn.Linear`: `y = x Wᵀ + b` with `W: [out, in]`.
//!
//! A quantized product is computed, in order of preference:
//! - on the CPU with [`QuantizedMatmul::Int16`]/[`QuantizedMatmul::Int8`], by dear's
//!   integer kernels (`crate::kernels::qgemm`, q4_0/q4_1/q8_0/q4_K);
//! - for more than [`DEQUANTIZE_ABOVE_ROWS`] rows (prefill), by an f32 matmul with the
//!   dequantized weights;
//! - for fewer rows on the CPU, by `crate::kernels::dequant` (blocks expanded to f32,
//!   q4_0/q4_1/q8_0);
//! - otherwise by candle's `QMatMul` (activations quantized to 8 bits per block).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::kernels::{dequant, qgemm};
use crate::loader::QuantizedMatmul;

/// Without dear's integer kernels, inputs with more rows than this are multiplied with
/// dequantized f32 weights; smaller ones (decoding) expand the blocks on the fly (or
/// use candle's quantized kernels where that cannot).
const DEQUANTIZE_ABOVE_ROWS: usize = 8;

/// The weight of a linear layer.
#[derive(Clone, Debug)]
pub(crate) enum LinearWeight {
    /// `[out, in]`, in the model's activation dtype.
    Dense(Tensor),
    /// A block-quantized `[out, in]` matrix; inputs and outputs are f32.
    Quantized {
        /// candle's quantized matmul (activations quantized to 8 bits per block).
        matmul: QMatMul,
        /// The blocks themselves, for dear's kernels.
        blocks: Arc<QTensor>,
        /// How the product is computed on the CPU.
        kernel: QuantizedMatmul,
    },
}

/// An unmerged LoRA delta on a linear layer, used when its adapter is selected.
#[derive(Clone, Debug)]
pub(crate) struct LoraDelta {
    /// Index of the adapter in the model's adapter table.
    pub(crate) adapter: usize,
    /// `[r, in]`
    pub(crate) a: Tensor,
    /// `[out, r]`
    pub(crate) b: Tensor,
    pub(crate) scale: f64,
    /// A bias the adapter trained, replacing the base bias.
    pub(crate) bias: Option<Tensor>,
}

/// A linear layer: weight plus optional bias, plus any unmerged LoRA deltas.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub(crate) weight: LinearWeight,
    pub(crate) bias: Option<Tensor>,
    loras: Vec<LoraDelta>,
}

impl Linear {
    pub(crate) fn dense(weight: Tensor, bias: Option<Tensor>) -> crate::Result<Self> {
        weight.dims2()?;
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
            loras: Vec::new(),
        })
    }

    pub(crate) fn quantized(
        weight: Arc<QTensor>,
        bias: Option<Tensor>,
        kernel: QuantizedMatmul,
    ) -> crate::Result<Self> {
        weight.shape().dims2()?;
        Ok(Self {
            weight: LinearWeight::Quantized {
                matmul: QMatMul::from_arc(weight.clone())?,
                blocks: weight,
                kernel,
            },
            bias,
            loras: Vec::new(),
        })
    }

    /// The number of output features.
    pub(crate) fn out_dim(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[0],
            LinearWeight::Quantized { blocks, .. } => blocks.shape().dims()[0],
        }
    }

    /// Adds an unmerged LoRA delta.
    pub(crate) fn push_lora(&mut self, delta: LoraDelta) {
        self.loras.push(delta);
    }

    /// `x: [tokens, in]` → `[tokens, out]`, in `x`'s dtype, with the delta of
    /// `adapter` when this layer has one: `y = W x + b + scale · B (A x)` (peft's
    /// `lora.Linear.forward`).
    pub(crate) fn forward(&self, x: &Tensor, adapter: Option<usize>) -> crate::Result<Tensor> {
        let delta = adapter.and_then(|id| self.loras.iter().find(|d| d.adapter == id));
        let y = self.forward_base(x)?;
        let bias = delta.and_then(|d| d.bias.as_ref()).or(self.bias.as_ref());
        let y = match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match delta {
            None => Ok(y),
            Some(d) => {
                let low = x.matmul(&d.a.t()?)?;
                let up = low.matmul(&d.b.t()?)?;
                Ok((y + (up * d.scale)?)?)
            }
        }
    }

    fn forward_base(&self, x: &Tensor) -> crate::Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => x.matmul(&w.t()?)?,
            LinearWeight::Quantized {
                matmul,
                blocks,
                kernel,
            } => {
                let dtype = x.dtype();
                let x = x.to_dtype(DType::F32)?;
                let precision = match kernel {
                    QuantizedMatmul::Int16 => Some(qgemm::Precision::Int16),
                    QuantizedMatmul::Int8 => Some(qgemm::Precision::Int8),
                    QuantizedMatmul::Dequantize => None,
                };
                let y = if let Some(precision) =
                    precision.filter(|_| x.device().is_cpu() && qgemm::supported(blocks.dtype()))
                {
                    // dear's integer kernels: activations rounded per block of 32,
                    // weights used as stored.
                    super::cpu_ops::qmatmul(&x, blocks, precision)?
                } else if x.dim(0)? > DEQUANTIZE_ABOVE_ROWS {
                    // Prefill: dequantize the blocks once and run an f32 GEMM over all
                    // rows. Exact with respect to the stored weights (no 8-bit
                    // activation rounding), as transformers computes GGUF models.
                    let w = blocks.dequantize(x.device())?;
                    x.matmul(&w.t()?)?
                } else if x.device().is_cpu() && dequant::supported(blocks.dtype()) {
                    // Decoding: f32 activations against the blocks, same result.
                    super::cpu_ops::dequant_matmul(&x, blocks)?
                } else {
                    matmul.forward(&x)?
                };
                y.to_dtype(dtype)?
            }
        };
        Ok(y)
    }
}
