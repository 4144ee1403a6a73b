//! The decoder block and RMS norm, as transformers' `LlamaDecoderLayer` and
//! `LlamaRMSNorm`.

use candle_core::{DType, Tensor, D};

use crate::model::attention::{Attention, LayerContext, PackInfo};
use crate::model::kv_cache::KvCache;
use crate::model::mlp::Mlp;
use crate::model::rope::RopeTables;

/// `weight * (x / sqrt(mean(x²) + eps))`, computed in f32 and cast back, as transformers does.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    /// `[hidden]`, in the activation dtype.
    pub(crate) weight: Tensor,
    pub(crate) eps: f64,
}

impl RmsNorm {
    /// `x: [tokens, hidden]` → `[tokens, hidden]`.
    pub(crate) fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        if x.dtype() == DType::F32 {
            return Ok(candle_nn::ops::rms_norm(
                &x.contiguous()?,
                &self.weight,
                self.eps as f32,
            )?);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) self_attn: Attention,
    pub(crate) post_attention_layernorm: RmsNorm,
    pub(crate) mlp: Mlp,
}

impl Block {
    /// `x: [tokens, hidden]` → `[tokens, hidden]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        pack: &PackInfo,
        caches: &mut [KvCache],
        layer: usize,
        ctx: &LayerContext,
    ) -> crate::Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let h = self.self_attn.forward(&h, rope, pack, caches, layer, ctx)?;
        let x = (x + h)?;
        let h = self.post_attention_layernorm.forward(&x)?;
        let h = self.mlp.forward(&h, ctx.adapter)?;
        Ok((x + h)?)
    }
}
