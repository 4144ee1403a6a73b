//! Causal self-attention with grouped-query heads over packed (varlen) batches,
//! mirroring transformers' `LlamaAttention` (`models/llama/modeling_llama.py`).
//!
//! Each sequence of the pack attends only to itself (and to its KV cache, when one
//! is given). Two execution paths compute the same thing:
//! - CPU with f32 activations: dear's blocked kernel (`crate::kernels::attention`);
//!   with f16, candle-nn's fused varlen flash attention (both use an online softmax
//!   and never materialise a padded score matrix);
//! - everything else: a masked matmul path per sequence, softmax in f32 as
//!   transformers' eager attention does.

use candle_core::{DType, Tensor};

use crate::kernels::attention::SeqSpan;
use crate::model::cpu_ops;
use crate::model::kv_cache::KvCache;
use crate::model::linear::Linear;
use crate::model::rope::RopeTables;

/// The packing facts every layer needs, computed once per forward pass.
#[derive(Debug)]
pub(crate) struct PackInfo {
    /// Token range of each sequence in the pack.
    pub(crate) ranges: Vec<std::ops::Range<usize>>,
    /// `[num_sequences]` u32 on the CPU: each sequence's length.
    pub(crate) seqlens: Tensor,
    /// The longest sequence.
    pub(crate) max_len: usize,
}

/// Per-call settings every layer sees.
#[derive(Debug, Default)]
pub(crate) struct LayerContext<'a> {
    /// The unmerged adapter to apply, if any.
    pub(crate) adapter: Option<usize>,
    /// Shared prefixes: `(caches, prefix index of each sequence)`. Sequence `i`
    /// attends to `caches[of_sequence[i]]` before its own tokens.
    pub(crate) prefixes: Option<(&'a [KvCache], &'a [usize])>,
}

#[derive(Debug)]
pub(crate) struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
}

impl Attention {
    /// `x: [tokens, hidden]` → `[tokens, hidden]`.
    ///
    /// With `caches` non-empty (one per sequence), each sequence's new keys/values
    /// are appended to its cache and the queries attend to the whole cache.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        pack: &PackInfo,
        caches: &mut [KvCache],
        layer: usize,
        ctx: &LayerContext,
    ) -> crate::Result<Tensor> {
        let adapter = ctx.adapter;
        let tokens = x.dim(0)?;
        let q =
            self.q_proj
                .forward(x, adapter)?
                .reshape((tokens, self.num_heads, self.head_dim))?;
        let k =
            self.k_proj
                .forward(x, adapter)?
                .reshape((tokens, self.num_kv_heads, self.head_dim))?;
        let v = self
            .v_proj
            .forward(x, adapter)?
            .reshape((tokens, self.num_kv_heads, self.head_dim))?
            .contiguous()?;
        let q = rope.apply(&q)?;
        let k = rope.apply(&k)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();

        let out = if let Some((prefixes, of_sequence)) = ctx.prefixes {
            self.attend_with_prefixes(&q, &k, &v, pack, prefixes, of_sequence, layer, scale)?
        } else if caches.is_empty() {
            if use_dear_kernel(&q) {
                let spans: Vec<SeqSpan> = pack
                    .ranges
                    .iter()
                    .map(|r| SeqSpan {
                        q: r.clone(),
                        k: r.clone(),
                    })
                    .collect();
                cpu_ops::attention(&q, &k, &v, &spans, scale as f32)?
            } else if use_fused(&q) {
                candle_nn::attention::flash_attn_varlen_cpu(
                    &q,
                    &k,
                    &v,
                    None,
                    &pack.seqlens,
                    &pack.seqlens,
                    pack.max_len,
                    pack.max_len,
                    scale as f32,
                    true,
                    None,
                    None,
                )?
            } else {
                let parts = pack
                    .ranges
                    .iter()
                    .map(|r| {
                        let n = r.len();
                        attend_masked(
                            &q.narrow(0, r.start, n)?,
                            &k.narrow(0, r.start, n)?,
                            &v.narrow(0, r.start, n)?,
                            scale,
                        )
                    })
                    .collect::<crate::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)?
            }
        } else {
            let mut parts = Vec::with_capacity(pack.ranges.len());
            for (r, cache) in pack.ranges.iter().zip(caches.iter_mut()) {
                let n = r.len();
                let qi = q.narrow(0, r.start, n)?.contiguous()?;
                let (ki, vi) =
                    cache.append(layer, &k.narrow(0, r.start, n)?, &v.narrow(0, r.start, n)?)?;
                let lk = ki.dim(0)?;
                let part = if use_dear_kernel(&qi) {
                    let spans = [SeqSpan { q: 0..n, k: 0..lk }];
                    cpu_ops::attention(&qi, &ki, &vi, &spans, scale as f32)?
                } else if use_fused(&qi) {
                    let dev = &candle_core::Device::Cpu;
                    candle_nn::attention::flash_attn_varlen_cpu(
                        &qi,
                        &ki,
                        &vi,
                        None,
                        &Tensor::new(&[n as u32], dev)?,
                        &Tensor::new(&[lk as u32], dev)?,
                        n,
                        lk,
                        scale as f32,
                        true,
                        None,
                        None,
                    )?
                } else {
                    attend_masked(&qi, &ki, &vi, scale)?
                };
                parts.push(part);
            }
            Tensor::cat(&parts, 0)?
        };
        let out = out.reshape((tokens, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&out, adapter)
    }

    /// Every sequence attends to its shared prefix, then causally to itself.
    #[allow(clippy::too_many_arguments)]
    fn attend_with_prefixes(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pack: &PackInfo,
        prefixes: &[KvCache],
        of_sequence: &[usize],
        layer: usize,
        scale: f64,
    ) -> crate::Result<Tensor> {
        let mut ks = Vec::with_capacity(pack.ranges.len() * 2);
        let mut vs = Vec::with_capacity(pack.ranges.len() * 2);
        let mut seqlens_k = Vec::with_capacity(pack.ranges.len());
        for (i, r) in pack.ranges.iter().enumerate() {
            let n = r.len();
            let prefix = of_sequence
                .get(i)
                .and_then(|p| prefixes.get(*p))
                .ok_or_else(|| {
                    crate::Error::InvalidArgument(format!("sequence {i} has no prefix"))
                })?;
            let (pk, pv) = prefix.layer(layer)?;
            seqlens_k.push((pk.dim(0)? + n) as u32);
            ks.push(pk);
            vs.push(pv);
            ks.push(k.narrow(0, r.start, n)?);
            vs.push(v.narrow(0, r.start, n)?);
        }
        let k_all = Tensor::cat(&ks, 0)?;
        let v_all = Tensor::cat(&vs, 0)?;
        if use_dear_kernel(q) {
            let mut start_k = 0usize;
            let spans: Vec<SeqSpan> = pack
                .ranges
                .iter()
                .zip(&seqlens_k)
                .map(|(r, lk)| {
                    let span = SeqSpan {
                        q: r.clone(),
                        k: start_k..start_k + *lk as usize,
                    };
                    start_k += *lk as usize;
                    span
                })
                .collect();
            return cpu_ops::attention(q, &k_all, &v_all, &spans, scale as f32);
        }
        if use_fused(q) {
            let max_k = seqlens_k.iter().copied().max().unwrap_or(0) as usize;
            let seqlens_k = Tensor::new(seqlens_k.as_slice(), &candle_core::Device::Cpu)?;
            return Ok(candle_nn::attention::flash_attn_varlen_cpu(
                q,
                &k_all,
                &v_all,
                None,
                &pack.seqlens,
                &seqlens_k,
                pack.max_len,
                max_k,
                scale as f32,
                true,
                None,
                None,
            )?);
        }
        let mut parts = Vec::with_capacity(pack.ranges.len());
        let mut start_k = 0usize;
        for (r, lk) in pack.ranges.iter().zip(&seqlens_k) {
            let lk = *lk as usize;
            parts.push(attend_masked(
                &q.narrow(0, r.start, r.len())?,
                &k_all.narrow(0, start_k, lk)?,
                &v_all.narrow(0, start_k, lk)?,
                scale,
            )?);
            start_k += lk;
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// f32 on the CPU: dear's blocked attention kernel.
fn use_dear_kernel(q: &Tensor) -> bool {
    cpu_ops::cpu_f32(q)
}

/// f16 on the CPU: candle-nn's fused varlen kernel.
fn use_fused(q: &Tensor) -> bool {
    q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F16)
}

/// Causal attention of one sequence whose queries are the last `lq` of `lk` keys.
///
/// `q: [lq, Hq, D]`, `k, v: [lk, Hkv, D]` → `[lq, Hq, D]`.
fn attend_masked(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> crate::Result<Tensor> {
    let (lq, hq, d) = q.dims3()?;
    let (lk, hkv, _) = k.dims3()?;
    let groups = hq / hkv;
    let dtype = q.dtype();
    // Query head h uses key/value head h / groups (transformers' `repeat_kv`), so the
    // query heads of one group are consecutive: fold them into the row dimension.
    let q = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((hkv, groups * lq, d))?;
    let k = k.transpose(0, 1)?.contiguous()?;
    let v = v.transpose(0, 1)?.contiguous()?;
    let scores = (q.matmul(&k.t()?)? * scale)?
        .to_dtype(DType::F32)?
        .reshape((hkv, groups, lq, lk))?;
    let offset = lk - lq;
    let mask: Vec<f32> = (0..lq)
        .flat_map(|i| {
            (0..lk).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (lq, lk), q.device())?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?
        .to_dtype(dtype)?
        .reshape((hkv, groups * lq, lk))?;
    let out = probs.matmul(&v)?.reshape((hq, lq, d))?;
    Ok(out.transpose(0, 1)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused and masked paths compute the same attention.
    #[test]
    fn fused_equals_masked() -> crate::Result<()> {
        let dev = Device::Cpu;
        let (lq, lk, hq, hkv, d) = (5, 9, 4, 2, 8);
        let q = Tensor::randn(0f32, 1.0, (lq, hq, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (lk, hkv, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (lk, hkv, d), &dev)?;
        let scale = 1.0 / (d as f64).sqrt();
        let masked = attend_masked(&q, &k, &v, scale)?;
        let fused = candle_nn::attention::flash_attn_varlen_cpu(
            &q,
            &k,
            &v,
            None,
            &Tensor::new(&[lq as u32], &dev)?,
            &Tensor::new(&[lk as u32], &dev)?,
            lq,
            lk,
            scale as f32,
            true,
            None,
            None,
        )?;
        let diff = (masked - fused)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }
}
