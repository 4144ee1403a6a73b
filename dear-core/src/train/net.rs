//! The trainable network: a frozen Llama base (f32, CPU) with LoRA deltas and a
//! `score` head as candle [`Var`]s, run over packed sequences with autograd. The
//! arithmetic follows transformers' `LlamaForSequenceClassification` /
//! `LlamaForCausalLM` with peft's `lora.Linear` (`y = x Wᵀ + b + scale · B A dropout(x)`).

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    PROJECTIONS[proj]
        .rsplit('.')
        .next()
        .unwrap_or(PROJECTIONS[proj])
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
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&r)?.broadcast_mul(w)?)
}

fn frozen_linear(x: &Tensor, m: &FrozenMatrix) -> crate::Result<Tensor> {
    let y = x.contiguous()?.apply_op1(FrozenLinear {
        weight: m.weight.clone(),
        out_dim: m.out_dim,
        in_dim: m.in_dim,
    })?;
    Ok(match &m.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Inverted dropout's mask: each value kept with probability `1 - p` and scaled by
/// `1 / (1 - p)` (torch's `nn.Dropout` in training mode).
fn dropout_mask(rng: &mut ChaCha8Rng, shape: (usize, usize), p: f64) -> crate::Result<Tensor> {
    let n = shape.0 * shape.1;
    let keep = 1.0 / (1.0 - p) as f32;
    // 16 random bits per value.
    let threshold = (p * 65536.0).round() as u32;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let bits = rng.next_u64();
        for k in 0..4 {
            if v.len() == n {
                break;
            }
            let r = ((bits >> (16 * k)) & 0xffff) as u32;
            v.push(if r < threshold { 0.0 } else { keep });
        }
    }
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

impl Net<'_> {
    fn linear(
        &self,
        x: &Tensor,
        layer: usize,
        proj: usize,
        rng: &mut Option<ChaCha8Rng>,
    ) -> crate::Result<Tensor> {
        let m = &self.base.blocks[layer].proj[proj];
        let y = frozen_linear(x, m)?;
        let Some(i) = self.params.index[layer][proj] else {
            return Ok(y);
        };
        let pair = &self.params.pairs[i];
        let xd = match rng {
            Some(rng) if self.params.dropout > 0.0 => {
                (x * dropout_mask(rng, x.dims2()?, self.params.dropout)?)?
            }
            _ => x.clone(),
        };
        let low = xd.matmul(&pair.a.as_tensor().t()?)?;
        let up = low.matmul(&pair.b.as_tensor().t()?)?;
        Ok((y + (up * self.params.scale)?)?)
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> crate::Result<Tensor> {
        let t = x.dim(0)?;
        let d = self.base.config.head_dim;
        let half = d / 2;
        let x = x.reshape((t, heads, d))?;
        let x1 = x.narrow(2, 0, half)?;
        let x2 = x.narrow(2, half, half)?;
        let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        Ok(Tensor::cat(&[r1, r2], 2)?.reshape((t, heads * d))?)
    }

    /// The final hidden states (before the last norm) of every token: `[tokens, hidden]`.
    /// `dropout_seed` switches LoRA dropout on (training mode).
    pub(crate) fn hidden(
        &self,
        batch: &Packed,
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
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
        let dev = Device::Cpu;
        let mut rng = dropout_seed.map(ChaCha8Rng::seed_from_u64);
        let ids = Tensor::new(batch.ids.as_slice(), &dev)?;
        let mut x = self.base.embed.index_select(&ids, 0)?;
        let tables = self.base.rope.tables(&batch.positions, DType::F32, &dev)?;
        let (cos, sin) = tables.cos_sin();
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
        let attention = CausalAttention {
            spans: Arc::new(batch.spans.clone()),
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        };
        let eps = cfg.rms_norm_eps;
        for (l, block) in self.base.blocks.iter().enumerate() {
            let h = rms_norm(&x, &block.input_norm, eps)?;
            let q = self.linear(&h, l, 0, &mut rng)?;
            let k = self.linear(&h, l, 1, &mut rng)?;
            let v = self.linear(&h, l, 2, &mut rng)?;
            let q = self.rope(&q, &cos, &sin, cfg.num_heads)?;
            let k = self.rope(&k, &cos, &sin, cfg.num_kv_heads)?;
            let a = q.apply_op3(&k, &v.contiguous()?, attention.clone())?;
            x = (x + self.linear(&a, l, 3, &mut rng)?)?;
            let h = rms_norm(&x, &block.post_norm, eps)?;
            let gate = self.linear(&h, l, 4, &mut rng)?;
            let up = self.linear(&h, l, 5, &mut rng)?;
            x = (&x + self.linear(&(gate.silu()? * up)?, l, 6, &mut rng)?)?;
        }
        Ok(x)
    }

    /// The `score` head on each sequence's last token: `[sequences]`, as
    /// `LlamaForSequenceClassification` pools it.
    pub(crate) fn scores(
        &self,
        batch: &Packed,
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
        let score = self.params.score.as_ref().ok_or_else(|| {
            Error::InvalidArgument("scores asked of an adapter without a `score` head".into())
        })?;
        let x = self.hidden(batch, dropout_seed)?;
        let last = Tensor::new(batch.last().as_slice(), &Device::Cpu)?;
        let rows = rms_norm(
            &x.index_select(&last, 0)?,
            &self.base.norm,
            self.base.config.rms_norm_eps,
        )?;
        Ok(rows.matmul(&score.as_tensor().t()?)?.squeeze(1)?)
    }

    /// LM-head logits at the given token rows: `[rows.len(), vocab]`.
    pub(crate) fn logits_at(
        &self,
        batch: &Packed,
        rows: &[u32],
        dropout_seed: Option<u64>,
    ) -> crate::Result<Tensor> {
        let x = self.hidden(batch, dropout_seed)?;
        let idx = Tensor::new(rows, &Device::Cpu)?;
        let h = rms_norm(
            &x.index_select(&idx, 0)?,
            &self.base.norm,
            self.base.config.rms_norm_eps,
        )?;
        frozen_linear(&h, &self.base.lm_head)
    }
}
