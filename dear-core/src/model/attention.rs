//! Causal self-attention with grouped-query heads over packed (varlen) batches,
//! mirroring transformers' `LlamaAttention` (`models/llama/modeling_llama.py`).
//!
//! Each sequence of the pack attends only to itself (and to its KV cache, when one
//! is given). Two execution paths compute the same thing:
//! - CPU with f32 activations: dear's blocked kernel (`crate::kernels::attention`);
//!   with f16, candle-nn's fused varlen flash attention (both use an online softmax
//!   and never materialise a padded score matrix);
//! - everything else (CUDA, bf16): transformers' eager attention (softmax in f32)
//!   as a few batched tensor ops per layer: the sequences of the pack are gathered
//!   into padded groups of similar length ([`PaddedPlan`], made once per forward
//!   pass, masks included), each group is one batched matmul / softmax / matmul, and
//!   the rows are scattered back; KV-cache steps and shared prefixes go sequence by
//!   sequence.

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
    /// The padded groups of the batched masked path, made by its first layer.
    pub(crate) padded: std::sync::OnceLock<PaddedPlan>,
}

impl PackInfo {
    /// The packing facts of sequences with these token ranges (`ranges` back to back).
    pub(crate) fn new(ranges: Vec<std::ops::Range<usize>>) -> crate::Result<Self> {
        let seqlens: Vec<u32> = ranges.iter().map(|r| r.len() as u32).collect();
        Ok(PackInfo {
            max_len: ranges.iter().map(|r| r.len()).max().unwrap_or(0),
            seqlens: Tensor::new(seqlens.as_slice(), &candle_core::Device::Cpu)?,
            ranges,
            padded: std::sync::OnceLock::new(),
        })
    }

    /// The padded groups for `heads` query heads on `device` (made once).
    fn padded(&self, heads: usize, device: &candle_core::Device) -> crate::Result<&PaddedPlan> {
        if let Some(plan) = self.padded.get() {
            return Ok(plan);
        }
        let plan = PaddedPlan::new(&self.ranges, heads, device)?;
        Ok(self.padded.get_or_init(|| plan))
    }
}

/// Most f32 scores one padded group materialises (all heads): 1 GiB. A single
/// sequence longer than that still runs, as a group of its own.
const MAX_GROUP_SCORES: usize = 1 << 28;

/// A group may hold this many times the score entries its sequences need unpadded.
const MAX_PADDING: f64 = 1.25;

/// One padded group: `seqs` sequences of at most `len` tokens as a `[seqs, len]` block.
#[derive(Debug)]
pub(crate) struct PaddedGroup {
    seqs: usize,
    len: usize,
    /// `[seqs · len]` u32: the packed token of each padded row (a sequence's last
    /// token repeated past its end; those rows are dropped by the scatter).
    gather: Tensor,
    /// `[seqs, 1, 1, len, len]` f32: 0 where query `i` may see key `j` (`j ≤ i` and
    /// `j` inside the sequence), −∞ elsewhere.
    mask: Tensor,
}

/// How the batched masked path lays a pack out in padded groups.
#[derive(Debug)]
pub(crate) struct PaddedPlan {
    groups: Vec<PaddedGroup>,
    /// `[tokens]` u32: the row of each packed token among the groups' padded rows.
    scatter: Tensor,
}

/// Groups sequences of lengths `lens` for padding: longest first, a group taking the
/// next sequence while its padded score entries stay within [`MAX_PADDING`] of the
/// unpadded ones and under [`MAX_GROUP_SCORES`] (for `heads` heads). Sequences of
/// length 0 are left out.
fn plan_groups(lens: &[usize], heads: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).filter(|&i| lens[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut need = 0usize;
    for i in order {
        let n = lens[i];
        if let Some(g) = groups.last_mut() {
            let l = lens[g[0]];
            let padded = (g.len() + 1) * l * l;
            let fits = padded as f64 <= MAX_PADDING * (need + n * n) as f64
                && padded.saturating_mul(heads) <= MAX_GROUP_SCORES;
            if fits {
                g.push(i);
                need += n * n;
                continue;
            }
        }
        groups.push(vec![i]);
        need = n * n;
    }
    groups
}

impl PaddedPlan {
    fn new(
        ranges: &[std::ops::Range<usize>],
        heads: usize,
        device: &candle_core::Device,
    ) -> crate::Result<Self> {
        let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
        let tokens = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let mut scatter = vec![0u32; tokens];
        let mut groups = Vec::new();
        let mut row0 = 0usize;
        for members in plan_groups(&lens, heads) {
            let len = lens[members[0]];
            let seqs = members.len();
            let mut gather = Vec::with_capacity(seqs * len);
            let mut mask = vec![f32::NEG_INFINITY; seqs * len * len];
            for (b, &i) in members.iter().enumerate() {
                let r = &ranges[i];
                let n = r.len();
                for p in 0..len {
                    gather.push((r.start + p.min(n - 1)) as u32);
                    let row = &mut mask[(b * len + p) * len..][..len];
                    row[..(p + 1).min(n)].fill(0.0);
                }
                for p in 0..n {
                    scatter[r.start + p] = (row0 + b * len + p) as u32;
                }
            }
            row0 += seqs * len;
            groups.push(PaddedGroup {
                seqs,
                len,
                gather: Tensor::from_vec(gather, seqs * len, device)?,
                mask: Tensor::from_vec(mask, (seqs, 1, 1, len, len), device)?,
            });
        }
        Ok(PaddedPlan {
            groups,
            scatter: Tensor::from_vec(scatter, tokens, device)?,
        })
    }
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
                attend_padded(&q, &k, &v, pack.padded(self.num_heads, q.device())?, scale)?
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

/// Causal attention of every sequence of a pack laid out by `plan`, as
/// [`attend_masked`] computes it, one padded group at a time.
///
/// `q: [tokens, Hq, D]`, `k, v: [tokens, Hkv, D]` → `[tokens, Hq, D]`.
fn attend_padded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &PaddedPlan,
    scale: f64,
) -> crate::Result<Tensor> {
    let (_, hq, d) = q.dims3()?;
    let hkv = k.dim(1)?;
    let groups = hq / hkv;
    let dtype = q.dtype();
    let mut outs = Vec::with_capacity(plan.groups.len());
    for g in &plan.groups {
        let (b, l) = (g.seqs, g.len);
        // As in `attend_masked`: the query heads of one kv head fold into its rows.
        let qg = q
            .index_select(&g.gather, 0)?
            .reshape((b, l, hkv, groups, d))?
            .permute((0, 2, 3, 1, 4))?
            .contiguous()?
            .reshape((b, hkv, groups * l, d))?;
        let kv = |t: &Tensor| -> crate::Result<Tensor> {
            Ok(t.index_select(&g.gather, 0)?
                .reshape((b, l, hkv, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (kg, vg) = (kv(k)?, kv(v)?);
        let scores = (qg.matmul(&kg.t()?)? * scale)?
            .to_dtype(DType::F32)?
            .reshape((b, hkv, groups, l, l))?
            .broadcast_add(&g.mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?
            .to_dtype(dtype)?
            .reshape((b, hkv, groups * l, l))?;
        let out = probs
            .matmul(&vg)?
            .reshape((b, hkv, groups, l, d))?
            .permute((0, 3, 1, 2, 4))?
            .contiguous()?
            .reshape((b * l, hq, d))?;
        outs.push(out);
    }
    let all = match outs.len() {
        // No sequence has a token: nothing to attend.
        0 => return Ok(q.zeros_like()?),
        1 => outs.remove(0),
        _ => Tensor::cat(&outs, 0)?,
    };
    Ok(all.index_select(&plan.scatter, 0)?)
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
    // One query (a decoding step) sees every key: no mask to build and upload.
    let scores = if lq == 1 {
        scores
    } else {
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
        scores.broadcast_add(&Tensor::from_vec(mask, (lq, lk), q.device())?)?
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?
        .to_dtype(dtype)?
        .reshape((hkv, groups * lq, lk))?;
    let out = probs.matmul(&v)?.reshape((hq, lq, d))?;
    Ok(out.transpose(0, 1)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The batched padded path computes, for every sequence of a pack, what the
    /// per-sequence masked path does (several groups, padding, GQA, one token).
    #[test]
    fn padded_equals_masked() -> crate::Result<()> {
        let dev = Device::Cpu;
        let (hq, hkv, d) = (6, 2, 8);
        let lens = [5usize, 3, 9, 1, 9, 2, 0, 7];
        let mut ranges = Vec::new();
        let mut at = 0;
        for n in lens {
            ranges.push(at..at + n);
            at += n;
        }
        let q = Tensor::randn(0f32, 1.0, (at, hq, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (at, hkv, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (at, hkv, d), &dev)?;
        let scale = 1.0 / (d as f64).sqrt();
        let pack = PackInfo::new(ranges.clone())?;
        let plan = pack.padded(hq, &dev)?;
        assert!(
            plan.groups.len() > 1,
            "lengths this varied need several groups"
        );
        let padded = attend_padded(&q, &k, &v, plan, scale)?;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            let n = r.len();
            let want = attend_masked(
                &q.narrow(0, r.start, n)?,
                &k.narrow(0, r.start, n)?,
                &v.narrow(0, r.start, n)?,
                scale,
            )?;
            let diff = (padded.narrow(0, r.start, n)? - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "sequence {r:?}: max diff {diff}");
        }
        Ok(())
    }

    /// Equal lengths share one group; a long sequence does not pad short ones; the
    /// score budget splits groups; empty sequences are left out.
    #[test]
    fn padded_groups() {
        assert_eq!(plan_groups(&[228, 228, 228], 9), vec![vec![0, 1, 2]]);
        let mut lens = vec![20usize; 10];
        lens.push(200);
        let groups = plan_groups(&lens, 9);
        assert_eq!(groups[0], vec![10]);
        assert_eq!(groups[1].len(), 10);
        // Within MAX_PADDING: 228 pads 220 (ratio 1.07).
        assert_eq!(plan_groups(&[220, 228], 9), vec![vec![1, 0]]);
        assert_eq!(plan_groups(&[0, 4, 0], 9), vec![vec![1]]);
        // 2 × 32 heads × 2048² scores = 2^28: two fit, a third does not.
        let groups = plan_groups(&[2048; 3], 32);
        assert_eq!(groups, vec![vec![0, 1], vec![2]]);
    }

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
