//! Rotary position embeddings, as transformers' `LlamaRotaryEmbedding` and
//! `modeling_rope_utils.py` compute them (default, linear and llama3 scaling).
//!
//! Convention: NEOX / half-split (transformers' `rotate_half`): dimension `i` is paired
//! with `i + head_dim/2`. GGUF files store q/k rows permuted for the interleaved
//! convention; the GGUF loader permutes them back at load, so one convention serves
//! every checkpoint (and LoRA deltas, which are written against the HF layout).

use candle_core::{DType, Device, Tensor};

use crate::config::{RopeConfig, RopeScaling};

/// Rotary embedding: the inverse frequencies, from which per-batch cos/sin tables
/// are computed for exactly the positions a batch holds.
#[derive(Clone, Debug)]
pub(crate) struct Rope {
    /// `[head_dim / 2]`
    inv_freq: Vec<f32>,
}

/// The cos/sin tables for one packed batch: `[tokens, head_dim / 2]` each.
#[derive(Clone, Debug)]
pub(crate) struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

/// The inverse frequencies, `[head_dim / 2]`, computed in f32 exactly as transformers does.
pub(crate) fn inverse_frequencies(cfg: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let base = cfg.theta;
    let dim = head_dim as f32;
    // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in f32.
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0f32 / base.powf(i as f32 / dim))
        .collect();
    match cfg.scaling {
        RopeScaling::Default => inv,
        RopeScaling::Linear { factor } => inv.into_iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_context = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            inv.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        f
                    };
                    let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    if is_medium {
                        let smooth = (old_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

impl Rope {
    /// `freq_divisors`, when given (a GGUF `rope_freqs.weight`), divides each inverse
    /// frequency, as llama.cpp does for Llama-3.1 files.
    pub(crate) fn new(cfg: &RopeConfig, head_dim: usize, freq_divisors: Option<&[f32]>) -> Self {
        let mut inv_freq = inverse_frequencies(cfg, head_dim);
        if let Some(div) = freq_divisors {
            for (f, d) in inv_freq.iter_mut().zip(div) {
                *f /= *d;
            }
        }
        Self { inv_freq }
    }

    /// The tables for `positions` (one per token of a packed batch).
    pub(crate) fn tables(
        &self,
        positions: &[u32],
        dtype: DType,
        device: &Device,
    ) -> crate::Result<RopeTables> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &pos in positions {
            for f in &self.inv_freq {
                // transformers multiplies in f32 (`inv_freq @ position_ids` in float32).
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let n = positions.len();
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
        })
    }
}

impl RopeTables {
    /// `cos` and `sin`, `[tokens, head_dim / 2]` each.
    pub(crate) fn cos_sin(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Rotates packed queries or keys.
    ///
    /// `x: [tokens, heads, head_dim]` → `[tokens, heads, head_dim]`.
    pub(crate) fn apply(&self, x: &Tensor) -> crate::Result<Tensor> {
        let x = x.unsqueeze(0)?.contiguous()?;
        let out = candle_nn::rotary_emb::rope_thd(&x, &self.cos, &self.sin)?;
        Ok(out.squeeze(0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
        let plain = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Default,
        };
        let scaled = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        };
        let a = inverse_frequencies(&plain, 128);
        let b = inverse_frequencies(&scaled, 128);
        // Highest frequency (short wavelength): untouched.
        assert_eq!(a[0], b[0]);
        // Lowest frequency (wavelength far above 8192): divided by the factor.
        assert!((a[63] / 8.0 - b[63]).abs() <= f32::EPSILON * a[63]);
        // In between, smoothly interpolated: strictly between the two.
        let mid = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| **y < **x && **y > **x / 8.0)
            .count();
        assert!(mid > 0);
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() -> crate::Result<()> {
        let cfg = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::Default,
        };
        let dev = Device::Cpu;
        let rope = Rope::new(&cfg, 8, None);
        let x = Tensor::arange(0f32, 48.0, &dev)?.reshape((3, 2, 8))?;
        let y = rope.tables(&[0, 5, 9], DType::F32, &dev)?.apply(&x)?;
        let x0 = x.get(0)?.to_vec2::<f32>()?;
        let y0 = y.get(0)?.to_vec2::<f32>()?;
        assert_eq!(x0, y0);
        let nx = x.sqr()?.sum_keepdim(2)?.flatten_all()?.to_vec1::<f32>()?;
        let ny = y.sqr()?.sum_keepdim(2)?.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in nx.iter().zip(&ny) {
            assert!((a - b).abs() < 1e-2 * a.max(1.0), "{a} vs {b}");
        }
        Ok(())
    }
}
