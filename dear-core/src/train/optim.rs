//! AdamW, learning-rate schedules and gradient clipping, exactly as PyTorch
//! (`torch.optim.AdamW`, single-tensor path; `clip_grad_norm_`) and transformers
//! (`get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`) compute them.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The shape of the learning rate over training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warmup from 0, then linear decay to 0 (transformers' default; DeAR stage 1).
    Linear,
    /// Linear warmup, then half a cosine down to 0 (DeAR stage 2).
    Cosine,
    /// Linear warmup, then constant.
    Constant,
}

impl FromStr for Schedule {
    type Err = Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            "constant" => Ok(Schedule::Constant),
            other => Err(Error::InvalidArgument(format!(
                "unknown schedule {other:?} (linear, cosine or constant)"
            ))),
        }
    }
}

impl Schedule {
    /// The factor on the peak learning rate at optimizer step `step` (0-based), with
    /// `warmup` warmup steps out of `total`.
    pub fn factor(&self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (total.saturating_sub(step) as f64
                / total.saturating_sub(warmup).max(1) as f64)
                .max(0.0),
            Schedule::Cosine => {
                let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

/// AdamW's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// transformers' Trainer defaults: (0.9, 0.999), 1e-8, no weight decay.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW's state for one parameter tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Moments {
    pub(crate) m: Vec<f32>,
    pub(crate) v: Vec<f32>,
}

/// One AdamW update of `param` in place, at 1-based step `t`, as PyTorch's
/// single-tensor AdamW: decay, moments, bias corrections, `addcdiv`.
pub(crate) fn adamw_step(
    cfg: &AdamWConfig,
    lr: f64,
    t: u64,
    param: &mut [f32],
    grad: &[f32],
    state: &mut Moments,
) {
    if state.m.len() != param.len() {
        state.m = vec![0.0; param.len()];
        state.v = vec![0.0; param.len()];
    }
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let decay = (1.0 - lr * cfg.weight_decay) as f32;
    let bc1 = 1.0 - cfg.beta1.powi(t as i32);
    let bc2_sqrt = (1.0 - cfg.beta2.powi(t as i32)).sqrt() as f32;
    let step_size = (lr / bc1) as f32;
    let eps = cfg.eps as f32;
    for (((p, &g), m), v) in param
        .iter_mut()
        .zip(grad)
        .zip(state.m.iter_mut())
        .zip(state.v.iter_mut())
    {
        *p *= decay;
        *m = *m * b1 + g * (1.0 - b1);
        *v = *v * b2 + g * g * (1.0 - b2);
        let denom = v.sqrt() / bc2_sqrt + eps;
        *p -= step_size * *m / denom;
    }
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`
/// (`clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, clamped to 1) and
/// returns the norm before clipping.
pub(crate) fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g *= coef;
            }
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_and_decay() {
        let l = Schedule::Linear;
        assert_eq!(l.factor(0, 2, 10), 0.0);
        assert_eq!(l.factor(1, 2, 10), 0.5);
        assert_eq!(l.factor(2, 2, 10), 1.0);
        assert_eq!(l.factor(6, 2, 10), 0.5);
        assert_eq!(l.factor(10, 2, 10), 0.0);
        let c = Schedule::Cosine;
        assert!((c.factor(6, 2, 10) - 0.5).abs() < 1e-12);
        assert!(c.factor(10, 2, 10).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(9, 2, 10), 1.0);
    }

    #[test]
    fn adamw_first_step_moves_by_the_learning_rate() {
        // At t = 1 the bias-corrected update is lr · g / (|g| + eps) ≈ lr · sign(g).
        let cfg = AdamWConfig::default();
        let mut p = vec![1.0f32, -1.0];
        let mut st = Moments::default();
        adamw_step(&cfg, 0.1, 1, &mut p, &[3.0, -0.5], &mut st);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        assert!((g[0][0] - 0.6).abs() < 1e-5 && (g[1][0] - 0.8).abs() < 1e-5);
    }
}
