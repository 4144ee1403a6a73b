//! The gated feed-forward layer, as transformers' `LlamaMLP`:
//! `down(silu(gate(x)) * up(x))`.

use candle_core::Tensor;

use crate::model::linear::Linear;

#[derive(Debug)]
pub(crate) struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl Mlp {
    /// `x: [tokens, hidden]` → `[tokens, hidden]`.
    pub(crate) fn forward(&self, x: &Tensor, adapter: Option<usize>) -> crate::Result<Tensor> {
        let gate = self.gate_proj.forward(x, adapter)?;
        let up = self.up_proj.forward(x, adapter)?;
        self.down_proj
            .forward(&super::cpu_ops::silu_mul(&gate, &up)?, adapter)
    }
}
