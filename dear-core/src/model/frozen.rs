//! The network's weights as plain f32 matrices, for training: the base stays frozen,
//! so block-quantized matrices are expanded once (gradients flow through `x Wᵀ`, which
//! needs `W` itself) and everything else is copied out as is.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::linear::{Linear, LinearWeight};
use super::{Embedding, Llama};
use crate::config::ModelConfig;
use crate::Error;

/// A frozen `[out, in]` matrix (row-major f32) and its optional bias.
#[derive(Clone, Debug)]
pub(crate) struct FrozenMatrix {
    pub(crate) weight: Arc<Vec<f32>>,
    /// The stored ggml blocks of a quantized weight, when dear's integer kernels take
    /// them (`x Wᵀ` then runs on the weights exactly as stored, as inference does).
    pub(crate) blocks: Option<QuantizedBlocks>,
    pub(crate) out_dim: usize,
    pub(crate) in_dim: usize,
    pub(crate) bias: Option<Tensor>,
}

/// A block-quantized matrix's raw bytes, for `kernels::qgemm`.
#[derive(Clone, Debug)]
pub(crate) struct QuantizedBlocks {
    pub(crate) dtype: candle_core::quantized::GgmlDType,
    pub(crate) data: Arc<Vec<u8>>,
}

/// One decoder block's frozen weights, in transformers' module order.
#[derive(Clone, Debug)]
pub(crate) struct FrozenBlock {
    pub(crate) input_norm: Tensor,
    pub(crate) post_norm: Tensor,
    /// q, k, v, o, gate, up, down.
    pub(crate) proj: [FrozenMatrix; 7],
}

/// The frozen base: embeddings, blocks, final norm, rotary frequencies.
#[derive(Clone, Debug)]
pub(crate) struct FrozenLlama {
    pub(crate) config: ModelConfig,
    /// `[vocab, hidden]`.
    pub(crate) embed: Tensor,
    pub(crate) blocks: Vec<FrozenBlock>,
    pub(crate) norm: Tensor,
    /// The base's own `score` head, when it has one (`[labels, hidden]`).
    pub(crate) score: Option<Tensor>,
    /// `[vocab, hidden]` LM head (the embedding when tied).
    #[allow(dead_code)] // stage 2's trainer reads it; golden-tested against PyTorch now
    pub(crate) lm_head: FrozenMatrix,
    pub(crate) rope: super::rope::Rope,
}

fn f32_cpu(t: &Tensor) -> crate::Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

fn frozen(linear: &Linear) -> crate::Result<FrozenMatrix> {
    let (w, blocks) = match &linear.weight {
        LinearWeight::Dense(w) => (f32_cpu(w)?, None),
        LinearWeight::Quantized { blocks, .. } => {
            let raw = crate::kernels::qgemm::supported(blocks.dtype()).then(
                || -> crate::Result<QuantizedBlocks> {
                    Ok(QuantizedBlocks {
                        dtype: blocks.dtype(),
                        data: Arc::new(blocks.data()?.into_owned()),
                    })
                },
            );
            (blocks.dequantize(&Device::Cpu)?, raw.transpose()?)
        }
    };
    let (out_dim, in_dim) = w.dims2()?;
    Ok(FrozenMatrix {
        weight: Arc::new(w.flatten_all()?.to_vec1::<f32>()?),
        blocks,
        out_dim,
        in_dim,
        bias: match &linear.bias {
            Some(b) => Some(f32_cpu(b)?),
            None => None,
        },
    })
}

impl Llama {
    /// The base weights as f32 on the CPU, with no adapter, for training.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the model carries unmerged LoRA deltas (train
    /// on the base, or on a checkpoint with its adapter merged); dequantization errors.
    pub(crate) fn frozen(&self) -> crate::Result<FrozenLlama> {
        if !self.adapters.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "training needs the base model alone, but adapters {:?} are loaded unmerged",
                self.adapter_names()
            )));
        }
        let embed = match &self.embed_tokens {
            Embedding::Dense(w) => f32_cpu(w)?,
            Embedding::Quantized(q) => q.dequantize(&Device::Cpu)?,
        };
        let mut blocks = Vec::with_capacity(self.layers.len());
        for b in &self.layers {
            let a = &b.self_attn;
            let m = &b.mlp;
            blocks.push(FrozenBlock {
                input_norm: f32_cpu(&b.input_layernorm.weight)?,
                post_norm: f32_cpu(&b.post_attention_layernorm.weight)?,
                proj: [
                    frozen(&a.q_proj)?,
                    frozen(&a.k_proj)?,
                    frozen(&a.v_proj)?,
                    frozen(&a.o_proj)?,
                    frozen(&m.gate_proj)?,
                    frozen(&m.up_proj)?,
                    frozen(&m.down_proj)?,
                ],
            });
        }
        let score = match &self.score {
            Some(s) => Some(match &s.weight {
                LinearWeight::Dense(w) => f32_cpu(w)?,
                LinearWeight::Quantized { blocks, .. } => blocks.dequantize(&Device::Cpu)?,
            }),
            None => None,
        };
        Ok(FrozenLlama {
            config: self.cfg.clone(),
            embed,
            blocks,
            norm: f32_cpu(&self.norm.weight)?,
            lm_head: frozen(&self.lm_head)?,
            score,
            rope: self.rope.clone(),
        })
    }
}
