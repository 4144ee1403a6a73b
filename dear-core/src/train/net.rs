//! The trainable network: a frozen Llama base (f32, CPU) with LoRA deltas and a
//! `score` head as candle [`Var`]s, run over packed sequences with autograd. The
//! arithmetic follows transformers' `LlamaForSequenceClassification` /
//! `LlamaForCausalLM` with peft's `lora.Linear` (`y = x Wᵀ + b + scale · B A dropout(x)`).

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fused::{LoraLinear, RmsNorm, Rotary, SiluMul};
use super::ops::{CausalAttention, FrozenLinear};
use crate::model::frozen::{FrozenLlama, FrozenMatrix};
use crate::Error;

/// The seven projections of a Llama block, in module order, with their module paths
/// under `model.layers.N.`.
pub(crate) const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The short name peft matches (`q_proj`, ...).
pub(crate) fn short_name(proj: usize) -> &'static str {
    short_name_of(PROJECTIONS[proj])
}

/// `self_attn.q_proj` → `q_proj`.
pub(crate) fn short_name_of(path: &'static str) -> &'static str {
    path.rsplit('.').next().unwrap_or(path)
}

/// One LoRA delta being trained: `A [r, in]`, `B [out, r]`.
#[derive(Debug)]
pub(crate) struct LoraPair {
    pub(crate) layer: usize,
    pub(crate) proj: usize,
    pub(crate) a: Var,
    pub(crate) b: Var,
}

/// The trainable parameters: LoRA pairs on the targeted projections and, for a
/// sequence-classification adapter, the `score` head.
#[derive(Debug)]
pub(crate) struct Trainable {
    pub(crate) pairs: Vec<LoraPair>,
    /// `[layer][proj]` → index into `pairs`.
    index: Vec<[Option<usize>; 7]>,
    pub(crate) score: Option<Var>,
    pub(crate) scale: f64,
    pub(crate) dropout: f64,
}

impl Trainable {
    /// Fresh parameters as peft initialises them: `A` Kaiming-uniform
    /// (`U(-1/√in, 1/√in)`), `B` zero; the head copied from the base's own `score`
    /// when it has one, else `N(0, 0.02²)` (transformers' `initializer_range`).
    pub(crate) fn init(
        base: &FrozenLlama,
        targets: &[usize],
        r: usize,
        scale: f64,
        dropout: f64,
        score: bool,
        seed: u64,
    ) -> crate::Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10ba_1e55);
        let dev = Device::Cpu;
        let mut pairs = Vec::new();
        for (layer, block) in base.blocks.iter().enumerate() {
            for &proj in targets {
                let m = &block.proj[proj];
                let bound = 1.0 / (m.in_dim as f32).sqrt();
                let a: Vec<f32> = (0..r * m.in_dim)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                pairs.push(LoraPair {
                    layer,
                    proj,
                    a: Var::from_tensor(&Tensor::from_vec(a, (r, m.in_dim), &dev)?)?,
                    b: Var::from_tensor(&Tensor::zeros((m.out_dim, r), DType::F32, &dev)?)?,
                });
            }
        }
        let score = if score {
            let h = base.config.hidden_size;
            let w = match &base.score {
                Some(w) if w.dims2()? == (1, h) => w.clone(),
                _ => {
                    let normal = rand_distr::Normal::new(0f32, 0.02)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    let v: Vec<f32> = (0..h).map(|_| rng.sample(normal)).collect();
                    Tensor::from_vec(v, (1, h), &dev)?
                }
            };
            Some(Var::from_tensor(&w)?)
        } else {
            None
        };
        Ok(Self::from_parts(
            base.blocks.len(),
            pairs,
            score,
            scale,
            dropout,
        ))
    }

    pub(crate) fn from_parts(
        layers: usize,
        pairs: Vec<LoraPair>,
        score: Option<Var>,
        scale: f64,
        dropout: f64,
    ) -> Self {
        let mut index = vec![[None; 7]; layers];
        for (i, p) in pairs.iter().enumerate() {
            index[p.layer][p.proj] = Some(i);
        }
        Self {
            pairs,
            index,
            score,
            scale,
            dropout,
        }
    }

    /// Every trainable tensor with its peft key, in a fixed order.
    pub(crate) fn named(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::with_capacity(self.pairs.len() * 2 + 1);
        for p in &self.pairs {
            let module = format!(
                "base_model.model.model.layers.{}.{}",
                p.layer, PROJECTIONS[p.proj]
            );
            out.push((format!("{module}.lora_A.weight"), &p.a));
            out.push((format!("{module}.lora_B.weight"), &p.b));
        }
        if let Some(s) = &self.score {
            out.push(("base_model.model.score.weight".to_string(), s));
        }
        out
    }

    /// The number of trainable values.
    pub(crate) fn parameters(&self) -> usize {
        self.named().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Sequences packed end to end: token ids, positions (each sequence from 0), spans.
#[derive(Clone, Debug, Default)]
pub(crate) struct Packed {
    pub(crate) ids: Vec<u32>,
    pub(crate) positions: Vec<u32>,
    pub(crate) spans: Vec<Range<usize>>,
}

impl Packed {
    pub(crate) fn push(&mut self, seq: &[u32]) {
        let start = self.ids.len();
        self.ids.extend_from_slice(seq);
        self.positions.extend(0..seq.len() as u32);
        self.spans.push(start..self.ids.len());
    }

    pub(crate) fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// The index of each sequence's last token.
    pub(crate) fn last(&self) -> Vec<u32> {
        self.spans.iter().map(|s| s.end as u32 - 1).collect()
    }
}

/// What a training forward pass runs with.
pub(crate) struct Net<'a> {
    pub(crate) base: &'a FrozenLlama,
    pub(crate) params: &'a Trainable,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    let weight = Arc::new(w.flatten_all()?.to_vec1::<f32>()?);
    Ok(x.contiguous()?.apply_op1(RmsNorm { weight, eps })?)
}

fn frozen_linear(x: &Tensor, m: &FrozenMatrix) -> crate::Result<Tensor> {
    let y = x.contiguous()?.apply_op1(FrozenLinear {
        weight: m.weight.clone(),
        blocks: m.blocks.clone(),
        out_dim: m.out_dim,
        in_dim: m.in_dim,
    })?;
    Ok(match &m.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

impl Net<'_> {
    fn linear(
        &self,
        x: &Tensor,
        layer: usize,
        proj: usize,
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
        let m = &self.base.blocks[layer].proj[proj];
        let Some(i) = self.params.index[layer][proj] else {
            return frozen_linear(x, m);
        };
        let pair = &self.params.pairs[i];
        let dropout = match dropout_seed {
            Some(seed) if self.params.dropout > 0.0 => Some((
                seed ^ ((layer * 7 + proj) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                self.params.dropout,
            )),
            _ => None,
        };
        let op = LoraLinear {
            weight: m.weight.clone(),
            blocks: m.blocks.clone(),
            bias: match &m.bias {
                Some(b) => Some(Arc::new(b.flatten_all()?.to_vec1::<f32>()?)),
                None => None,
            },
            out_dim: m.out_dim,
            in_dim: m.in_dim,
            rank: pair.a.dims()[0],
            scale: self.params.scale as f32,
            dropout,
        };
        Ok(x.contiguous()?
            .apply_op3(pair.a.as_tensor(), pair.b.as_tensor(), op)?)
    }

    fn check(&self, batch: &Packed) -> crate::Result<()> {
        let cfg = &self.base.config;
        if batch.ids.is_empty() {
            return Err(Error::EmptyInput("a training batch has no tokens".into()));
        }
        if let Some(bad) = batch.ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// What every layer of one batch shares: rotary tables and the attention op.
    fn context(&self, batch: &Packed) -> crate::Result<LayerInputs> {
        let cfg = &self.base.config;
        let tables = self
            .base
            .rope
            .tables(&batch.positions, DType::F32, &Device::Cpu)?;
        let (cos, sin) = tables.cos_sin();
        Ok(LayerInputs {
            rotary: Rotary {
                cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
                sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
                head_dim: cfg.head_dim,
            },
            attention: CausalAttention {
                spans: Arc::new(batch.spans.clone()),
                heads: cfg.num_heads,
                kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            },
        })
    }

    fn embed(&self, batch: &Packed) -> crate::Result<Tensor> {
        let ids = Tensor::new(batch.ids.as_slice(), &Device::Cpu)?;
        Ok(self.base.embed.index_select(&ids, 0)?)
    }

    /// Decoder block `l` on `x` (`LlamaDecoderLayer`). Its dropout masks are drawn
    /// from seeds derived from `(dropout_seed, l, projection)`, so running the block
    /// again (the recomputation of a checkpointed backward) draws the same masks.
    fn layer(
        &self,
        l: usize,
        x: &Tensor,
        ctx: &LayerInputs,
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
        let cfg = &self.base.config;
        let block = &self.base.blocks[l];
        let eps = cfg.rms_norm_eps;
        let h = rms_norm(x, &block.input_norm, eps)?;
        let q = self.linear(&h, l, 0, dropout_seed)?;
        let k = self.linear(&h, l, 1, dropout_seed)?;
        let v = self.linear(&h, l, 2, dropout_seed)?;
        let q = q.apply_op1(ctx.rotary.clone())?;
        let k = k.apply_op1(ctx.rotary.clone())?;
        let a = q.apply_op3(&k, &v, ctx.attention.clone())?;
        let x = (x + self.linear(&a, l, 3, dropout_seed)?)?;
        let h = rms_norm(&x, &block.post_norm, eps)?;
        let gate = self.linear(&h, l, 4, dropout_seed)?;
        let up = self.linear(&h, l, 5, dropout_seed)?;
        let act = gate.apply_op2(&up, SiluMul)?;
        Ok((&x + self.linear(&act, l, 6, dropout_seed)?)?)
    }

    /// The final hidden states (before the last norm) of every token, `[tokens,
    /// hidden]`, as one autograd graph (memory grows with every layer: for tests and
    /// small batches). `dropout_seed` switches LoRA dropout on (training mode).
    pub(crate) fn hidden(
        &self,
        batch: &Packed,
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
        self.check(batch)?;
        let ctx = self.context(batch)?;
        let mut x = self.embed(batch)?;
        for l in 0..self.base.blocks.len() {
            x = self.layer(l, &x, &ctx, dropout_seed)?;
        }
        Ok(x)
    }

    fn head_scores(&self, x: &Tensor, batch: &Packed) -> crate::Result<Tensor> {
        let score = self.params.score.as_ref().ok_or_else(|| {
            Error::InvalidArgument("scores asked of an adapter without a `score` head".into())
        })?;
        let last = Tensor::new(batch.last().as_slice(), &Device::Cpu)?;
        let rows = rms_norm(
            &x.index_select(&last, 0)?,
            &self.base.norm,
            self.base.config.rms_norm_eps,
        )?;
        Ok(rows.matmul(&score.as_tensor().t()?)?.squeeze(1)?)
    }

    /// The `score` head on each sequence's last token: `[sequences]`, as
    /// `LlamaForSequenceClassification` pools it, as one autograd graph.
    #[cfg(test)]
    pub(crate) fn scores(
        &self,
        batch: &Packed,
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
        let x = self.hidden(batch, dropout_seed)?;
        self.head_scores(&x, batch)
    }

    /// Scores without a graph (evaluation): each block's output is detached, so the
    /// memory is one block's, whatever the depth.
    pub(crate) fn scores_detached(&self, batch: &Packed) -> crate::Result<Vec<f32>> {
        self.check(batch)?;
        let ctx = self.context(batch)?;
        let mut x = self.embed(batch)?;
        for l in 0..self.base.blocks.len() {
            x = self.layer(l, &x, &ctx, None)?.detach();
        }
        Ok(self.head_scores(&x, batch)?.detach().to_vec1::<f32>()?)
    }

    /// One training pass of the `score` head with per-block gradient checkpointing
    /// when `checkpoint` is set: `loss` maps the scores `[sequences]` to a scalar.
    /// Returns the loss value and the gradient of every trainable tensor (in
    /// [`Trainable::named`] order; zeros for one untouched).
    pub(crate) fn scores_backward(
        &self,
        batch: &Packed,
        dropout_seed: Option<u64>,
        checkpoint: bool,
        loss: impl FnOnce(&Tensor) -> crate::Result<Tensor>,
    ) -> crate::Result<(f64, Vec<Vec<f32>>)> {
        self.backward(batch, dropout_seed, checkpoint, |x| {
            loss(&self.head_scores(x, batch)?)
        })
    }

    /// One training pass of the LM head (stage 2): `loss` maps the logits at `rows`
    /// (`[rows, vocab]`) to a scalar. As [`Net::scores_backward`] otherwise.
    pub(crate) fn logits_backward(
        &self,
        batch: &Packed,
        rows: &[u32],
        dropout_seed: Option<u64>,
        checkpoint: bool,
        loss: impl FnOnce(&Tensor) -> crate::Result<Tensor>,
    ) -> crate::Result<(f64, Vec<Vec<f32>>)> {
        self.backward(batch, dropout_seed, checkpoint, |x| {
            loss(&self.lm_logits(x, rows)?)
        })
    }

    /// The backward pass both heads share. With `checkpoint`, the forward keeps only
    /// each block's input; the backward recomputes one block at a time and
    /// backpropagates the vector-Jacobian product through it. `head` maps the last
    /// block's output `[tokens, hidden]` to the scalar loss.
    fn backward(
        &self,
        batch: &Packed,
        dropout_seed: Option<u64>,
        checkpoint: bool,
        head: impl FnOnce(&Tensor) -> crate::Result<Tensor>,
    ) -> crate::Result<(f64, Vec<Vec<f32>>)> {
        self.check(batch)?;
        if !checkpoint {
            // One graph over every block: no recomputation.
            let value_t = head(&self.hidden(batch, dropout_seed)?)?;
            let value = value_t.to_scalar::<f32>()? as f64;
            let store = value_t.backward()?;
            let mut grads = Vec::new();
            for (_, var) in self.params.named() {
                grads.push(match store.get(var.as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0f32; var.elem_count()],
                });
            }
            return Ok((value, grads));
        }
        let ctx = self.context(batch)?;
        let layers = self.base.blocks.len();
        let mut inputs = Vec::with_capacity(layers);
        let mut x = self.embed(batch)?;
        for l in 0..layers {
            let y = self.layer(l, &x, &ctx, dropout_seed)?.detach();
            inputs.push(x);
            x = y;
        }
        let named = self.params.named();
        let mut grads: Vec<Vec<f32>> = named
            .iter()
            .map(|(_, v)| vec![0f32; v.elem_count()])
            .collect();
        let mut take = |store: &candle_core::backprop::GradStore| -> crate::Result<()> {
            for ((_, var), acc) in named.iter().zip(grads.iter_mut()) {
                if let Some(g) = store.get(var.as_tensor()) {
                    for (a, b) in acc.iter_mut().zip(g.flatten_all()?.to_vec1::<f32>()?) {
                        *a += b;
                    }
                }
            }
            Ok(())
        };
        // The head and the loss.
        let top = Var::from_tensor(&x)?;
        let value_t = head(top.as_tensor())?;
        let value = value_t.to_scalar::<f32>()? as f64;
        let store = value_t.backward()?;
        take(&store)?;
        let mut upstream = store
            .get(top.as_tensor())
            .cloned()
            .ok_or_else(|| Error::Internal("no gradient reached the last block".into()))?;
        drop(store);
        // The blocks, last to first.
        for l in (0..layers).rev() {
            let input = Var::from_tensor(&inputs[l])?;
            let y = self.layer(l, input.as_tensor(), &ctx, dropout_seed)?;
            let store = (y * &upstream)?.sum_all()?.backward()?;
            take(&store)?;
            if l > 0 {
                upstream = store
                    .get(input.as_tensor())
                    .cloned()
                    .ok_or_else(|| Error::Internal(format!("no gradient reached block {l}")))?;
            }
        }
        Ok((value, grads))
    }

    /// The final norm and the (frozen) LM head on rows `rows` of the last block's
    /// output: `[rows.len(), vocab]`.
    fn lm_logits(&self, x: &Tensor, rows: &[u32]) -> crate::Result<Tensor> {
        let idx = Tensor::new(rows, &Device::Cpu)?;
        let h = rms_norm(
            &x.index_select(&idx, 0)?,
            &self.base.norm,
            self.base.config.rms_norm_eps,
        )?;
        frozen_linear(&h, &self.base.lm_head)
    }

    /// LM-head logits at `rows` without a graph (validation), one block's memory.
    pub(crate) fn logits_detached(&self, batch: &Packed, rows: &[u32]) -> crate::Result<Tensor> {
        self.check(batch)?;
        let ctx = self.context(batch)?;
        let mut x = self.embed(batch)?;
        for l in 0..self.base.blocks.len() {
            x = self.layer(l, &x, &ctx, None)?.detach();
        }
        Ok(self.lm_logits(&x, rows)?.detach())
    }

    /// LM-head logits at the given token rows, `[rows.len(), vocab]`, as one graph
    /// (`LlamaForCausalLM`; the head is frozen, as DeAR's listwise LoRA leaves it).
    #[cfg(test)]
    pub(crate) fn logits_at(
        &self,
        batch: &Packed,
        rows: &[u32],
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
        let x = self.hidden(batch, dropout_seed)?;
        self.lm_logits(&x, rows)
    }
}

/// Per-batch inputs every block reads.
struct LayerInputs {
    rotary: Rotary,
    attention: CausalAttention,
}
