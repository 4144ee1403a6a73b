//! Fused training ops with hand-written backward passes, so that a block's autograd
//! graph holds one tensor per step of the block instead of one per elementary op
//! (a whole graph then fits in memory and no block is recomputed), and each step is
//! one parallel pass over the data:
//!
//! - [`LoraLinear`]: peft's `lora.Linear` in training mode,
//!   `y = x Wᵀ + b + scale · (dropout(x) Aᵀ) Bᵀ`, `W` frozen; gradients for `x`, `A`, `B`.
//! - [`RmsNorm`]: `LlamaRMSNorm` with a frozen weight.
//! - [`Rotary`]: `apply_rotary_pos_emb` (half-split pairs).
//! - [`SiluMul`]: `silu(gate) · up`.
//!
//! Each is checked against the same arithmetic composed of candle's differentiable
//! ops (tests below) and, through the network, against PyTorch (`golden_tests`).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{forward_product, matmul_into, slice, Mat};
use crate::model::frozen::QuantizedBlocks;

fn msg(s: String) -> candle_core::Error {
    candle_core::Error::Msg(s)
}

fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Rows per parallel task of the element-wise passes.
const ROWS_PER_TASK: usize = 16;

/// A dropout mask for `rows × cols` values: kept with probability `1 - p`, scaled by
/// `1 / (1 - p)`. Drawn from SplitMix64 streams seeded per block of rows, so the mask
/// depends on `(seed, p, shape)` only (not on the thread count), and the recomputation
/// of a block draws it again bit for bit.
pub(crate) fn dropout_mask(seed: u64, rows: usize, cols: usize, p: f64) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    let keep = (1.0 / (1.0 - p)) as f32;
    let threshold = (p * 65536.0).round() as u64;
    out.par_chunks_mut(ROWS_PER_TASK * cols.max(1))
        .enumerate()
        .for_each(|(chunk, values)| {
            let mut state = seed ^ (chunk as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut next = || {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            };
            for four in values.chunks_mut(4) {
                let bits = next();
                for (k, v) in four.iter_mut().enumerate() {
                    *v = if (bits >> (16 * k)) & 0xffff < threshold {
                        0.0
                    } else {
                        keep
                    };
                }
            }
        });
    out
}

/// peft's `lora.Linear` in training mode over a frozen weight.
#[derive(Clone, Debug)]
pub(crate) struct LoraLinear {
    /// `[out, in]`, row-major.
    pub(crate) weight: Arc<Vec<f32>>,
    /// The stored blocks of a quantized weight (the forward product runs on them).
    pub(crate) blocks: Option<QuantizedBlocks>,
    pub(crate) bias: Option<Arc<Vec<f32>>>,
    pub(crate) out_dim: usize,
    pub(crate) in_dim: usize,
    pub(crate) rank: usize,
    pub(crate) scale: f32,
    /// `(seed, p)` of the input dropout, when training.
    pub(crate) dropout: Option<(u64, f64)>,
}

impl LoraLinear {
    fn dropped(&self, x: &[f32], rows: usize) -> Option<Vec<f32>> {
        let (seed, p) = self.dropout?;
        let mask = dropout_mask(seed, rows, self.in_dim, p);
        Some(mask.iter().zip(x).map(|(m, v)| m * v).collect())
    }

    fn check(
        &self,
        rows_x: (usize, usize),
        a: (usize, usize),
        b: (usize, usize),
    ) -> candle_core::Result<()> {
        if rows_x.1 != self.in_dim
            || a != (self.rank, self.in_dim)
            || b != (self.out_dim, self.rank)
        {
            return Err(msg(format!(
                "lora linear: x {rows_x:?}, A {a:?}, B {b:?} for a [{}, {}] weight of rank {}",
                self.out_dim, self.in_dim, self.rank
            )));
        }
        Ok(())
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "dear-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        self.check((rows, cols), l2.shape().dims2()?, l3.shape().dims2()?)?;
        let (x, a, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (n, k, r) = (self.out_dim, self.in_dim, self.rank);
        let mut y = vec![0f32; rows * n];
        // y = x Wᵀ
        forward_product(&mut y, x, rows, &self.weight, self.blocks.as_ref(), n, k)?;
        if let Some(bias) = &self.bias {
            y.par_chunks_mut(n)
                .for_each(|row| row.iter_mut().zip(bias.iter()).for_each(|(v, b)| *v += b));
        }
        // low = dropout(x) Aᵀ; y += scale · low Bᵀ
        let xd = self.dropped(x, rows);
        let xd = xd.as_deref().unwrap_or(x);
        let mut low = vec![0f32; rows * r];
        matmul_into(
            &mut low,
            rows,
            r,
            k,
            false,
            Mat::rows(xd, k),
            Mat::transposed(a, k),
            1.0,
        );
        matmul_into(
            &mut y,
            rows,
            n,
            r,
            true,
            Mat::rows(&low, r),
            Mat::transposed(b, r),
            self.scale,
        );
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, _) = x.dims2()?;
        let (n, k, r) = (self.out_dim, self.in_dim, self.rank);
        let (xv, av, bv, g) = (values(x)?, values(a)?, values(b)?, values(grad)?);
        if g.len() != rows * n {
            return Err(msg(
                "lora linear: the gradient does not match the output".into()
            ));
        }
        let dropped = self.dropped(&xv, rows);
        let xd = dropped.as_deref().unwrap_or(&xv);
        // gB = g B  [rows, r]
        let mut gb = vec![0f32; rows * r];
        matmul_into(
            &mut gb,
            rows,
            r,
            n,
            false,
            Mat::rows(&g, n),
            Mat::rows(&bv, r),
            1.0,
        );
        // ∂x = g W + scale · (gB A) ⊙ mask
        let mut dx = vec![0f32; rows * k];
        matmul_into(
            &mut dx,
            rows,
            k,
            n,
            false,
            Mat::rows(&g, n),
            Mat::rows(&self.weight, k),
            1.0,
        );
        match self.dropout {
            None => matmul_into(
                &mut dx,
                rows,
                k,
                r,
                true,
                Mat::rows(&gb, r),
                Mat::rows(&av, k),
                self.scale,
            ),
            Some((seed, p)) => {
                let mut d = vec![0f32; rows * k];
                matmul_into(
                    &mut d,
                    rows,
                    k,
                    r,
                    false,
                    Mat::rows(&gb, r),
                    Mat::rows(&av, k),
                    self.scale,
                );
                let mask = dropout_mask(seed, rows, k, p);
                dx.par_iter_mut()
                    .zip(d.par_iter().zip(mask.par_iter()))
                    .for_each(|(o, (d, m))| *o += d * m);
            }
        }
        // ∂A = scale · gBᵀ dropout(x)  [r, k]
        let mut da = vec![0f32; r * k];
        matmul_into(
            &mut da,
            r,
            k,
            rows,
            false,
            Mat::transposed(&gb, r),
            Mat::rows(xd, k),
            self.scale,
        );
        // ∂B = scale · gᵀ low  [n, r], low = dropout(x) Aᵀ
        let mut low = vec![0f32; rows * r];
        matmul_into(
            &mut low,
            rows,
            r,
            k,
            false,
            Mat::rows(xd, k),
            Mat::transposed(&av, k),
            1.0,
        );
        let mut db = vec![0f32; n * r];
        matmul_into(
            &mut db,
            n,
            r,
            rows,
            false,
            Mat::transposed(&g, n),
            Mat::rows(&low, r),
            self.scale,
        );
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (rows, k), dev)?),
            Some(Tensor::from_vec(da, (r, k), dev)?),
            Some(Tensor::from_vec(db, (n, r), dev)?),
        ))
    }
}

/// `LlamaRMSNorm` with a frozen weight: `w ⊙ x / sqrt(mean(x²) + eps)`.
#[derive(Clone, Debug)]
pub(crate) struct RmsNorm {
    pub(crate) weight: Arc<Vec<f32>>,
    pub(crate) eps: f64,
}

impl RmsNorm {
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps as f32).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "dear-train-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        if cols != self.weight.len() {
            return Err(msg(format!(
                "rms norm: {cols} features, weight {}",
                self.weight.len()
            )));
        }
        let x = slice(s, l)?;
        let mut y = vec![0f32; rows * cols];
        y.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .for_each(|(yr, xr)| {
                let inv = self.inv_rms(xr);
                for ((o, v), w) in yr.iter_mut().zip(xr).zip(self.weight.iter()) {
                    *o = w * (v * inv);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, cols) = x.dims2()?;
        let (xv, g) = (values(x)?, values(grad)?);
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_mut(cols)
            .zip(xv.par_chunks(cols).zip(g.par_chunks(cols)))
            .for_each(|(dr, (xr, gr))| {
                let inv = self.inv_rms(xr);
                // dx_j = inv · w_j g_j − x_j inv³ · mean(w ⊙ g ⊙ x)
                let dot = xr
                    .iter()
                    .zip(gr)
                    .zip(self.weight.iter())
                    .map(|((x, g), w)| x * g * w)
                    .sum::<f32>()
                    / cols as f32;
                let c = inv * inv * inv * dot;
                for (((d, x), g), w) in dr.iter_mut().zip(xr).zip(gr).zip(self.weight.iter()) {
                    *d = inv * w * g - x * c;
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Rotary embedding of `[tokens, heads · d]` with per-token `cos`/`sin` `[tokens, d/2]`.
#[derive(Clone, Debug)]
pub(crate) struct Rotary {
    pub(crate) cos: Arc<Vec<f32>>,
    pub(crate) sin: Arc<Vec<f32>>,
    pub(crate) head_dim: usize,
}

impl Rotary {
    /// Rotates each row by `sign · θ`.
    fn rotate(&self, x: &[f32], cols: usize, sign: f32) -> Vec<f32> {
        let half = self.head_dim / 2;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .enumerate()
            .for_each(|(t, (yr, xr))| {
                let cos = &self.cos[t * half..(t + 1) * half];
                let sin = &self.sin[t * half..(t + 1) * half];
                for (yh, xh) in yr.chunks_mut(self.head_dim).zip(xr.chunks(self.head_dim)) {
                    for i in 0..half {
                        let (a, b) = (xh[i], xh[i + half]);
                        let (c, s) = (cos[i], sign * sin[i]);
                        yh[i] = a * c - b * s;
                        yh[i + half] = b * c + a * s;
                    }
                }
            });
        y
    }
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "dear-train-rotary"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let half = self.head_dim / 2;
        if !self.head_dim.is_multiple_of(2)
            || !cols.is_multiple_of(self.head_dim)
            || self.cos.len() != rows * half
        {
            return Err(msg(format!(
                "rotary: [{rows}, {cols}] for head_dim {} and {} angles",
                self.head_dim,
                self.cos.len()
            )));
        }
        Ok((
            CpuStorage::F32(self.rotate(slice(s, l)?, cols, 1.0)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, cols) = x.dims2()?;
        // The rotation is orthogonal: its transpose rotates by −θ.
        let dx = self.rotate(&values(grad)?, cols, -1.0);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `silu(gate) · up`, `LlamaMLP`'s product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SiluMul;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "dear-train-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(msg("silu·up: gate and up differ in shape".into()));
        }
        let (g, u) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(y, (g, u))| {
                for ((o, g), u) in y.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid(*g) * u;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, d) = (values(gate)?, values(up)?, values(grad)?);
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .zip(
                g.par_chunks(4096)
                    .zip(u.par_chunks(4096))
                    .zip(d.par_chunks(4096)),
            )
            .for_each(|((dg, du), ((g, u), d))| {
                for i in 0..g.len() {
                    let s = sigmoid(g[i]);
                    let silu = g[i] * s;
                    du[i] = d[i] * silu;
                    dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            });
        let dev = gate.device();
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), dev)?),
            Some(Tensor::from_vec(du, up.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "{what} differs by {d}");
    }

    fn grad_of(loss: &Tensor, v: &Var) -> Tensor {
        loss.backward().unwrap().get(v.as_tensor()).unwrap().clone()
    }

    #[test]
    fn lora_linear_matches_composed_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (t, k, n, r) = (37, 24, 40, 4);
        let w = Tensor::randn(0f32, 0.3, (n, k), &dev)?;
        let bias = Tensor::randn(0f32, 0.1, n, &dev)?;
        for dropout in [None, Some((99u64, 0.25))] {
            let x = Var::randn(0f32, 1.0, (t, k), &dev)?;
            let a = Var::randn(0f32, 0.2, (r, k), &dev)?;
            let b = Var::randn(0f32, 0.2, (n, r), &dev)?;
            let up = Tensor::randn(0f32, 1.0, (t, n), &dev)?;
            let op = LoraLinear {
                weight: Arc::new(values(&w)?),
                blocks: None,
                bias: Some(Arc::new(values(&bias)?)),
                out_dim: n,
                in_dim: k,
                rank: r,
                scale: 1.5,
                dropout,
            };
            let ours = x.as_tensor().apply_op3(a.as_tensor(), b.as_tensor(), op)?;
            let xd = match dropout {
                Some((seed, p)) => {
                    (x.as_tensor() * Tensor::from_vec(dropout_mask(seed, t, k, p), (t, k), &dev)?)?
                }
                None => x.as_tensor().clone(),
            };
            let theirs = (x.as_tensor().matmul(&w.t()?)?.broadcast_add(&bias)?
                + (xd
                    .matmul(&a.as_tensor().t()?)?
                    .matmul(&b.as_tensor().t()?)?
                    * 1.5)?)?;
            close(&ours, &theirs, 1e-4, "lora forward");
            for v in [&x, &a, &b] {
                let g1 = grad_of(&(&ours * &up)?.sum_all()?, v);
                let g2 = grad_of(&(&theirs * &up)?.sum_all()?, v);
                close(&g1, &g2, 1e-3, "lora gradient");
            }
        }
        Ok(())
    }

    #[test]
    fn dropout_masks_keep_the_expected_share_and_repeat() {
        let m = dropout_mask(5, 100, 64, 0.1);
        let kept = m.iter().filter(|v| **v > 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.9).abs() < 0.02, "kept {kept}");
        assert!(m.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(m, dropout_mask(5, 100, 64, 0.1));
        assert_ne!(m, dropout_mask(6, 100, 64, 0.1));
    }

    #[test]
    fn norm_rotary_and_silu_match_composed_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (t, h, d) = (9, 3, 8);
        let x = Var::randn(0f32, 1.0, (t, h * d), &dev)?;
        let up = Tensor::randn(0f32, 1.0, (t, h * d), &dev)?;
        // RMS norm.
        let w = Tensor::randn(1f32, 0.1, h * d, &dev)?;
        let ours = x.as_tensor().apply_op1(RmsNorm {
            weight: Arc::new(values(&w)?),
            eps: 1e-5,
        })?;
        let xt = x.as_tensor();
        let r = (xt.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?
            .sqrt()?
            .recip()?;
        let theirs = xt.broadcast_mul(&r)?.broadcast_mul(&w)?;
        close(&ours, &theirs, 1e-5, "rms forward");
        close(
            &grad_of(&(&ours * &up)?.sum_all()?, &x),
            &grad_of(&(&theirs * &up)?.sum_all()?, &x),
            1e-4,
            "rms gradient",
        );
        // Rotary.
        let angles: Vec<f32> = (0..t * d / 2).map(|i| i as f32 * 0.37).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let ct = Tensor::from_vec(cos.clone(), (t, 1, d / 2), &dev)?;
        let st = Tensor::from_vec(sin.clone(), (t, 1, d / 2), &dev)?;
        let ours = xt.apply_op1(Rotary {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            head_dim: d,
        })?;
        let x3 = xt.reshape((t, h, d))?;
        let (x1, x2) = (x3.narrow(2, 0, d / 2)?, x3.narrow(2, d / 2, d / 2)?);
        let theirs = Tensor::cat(
            &[
                (x1.broadcast_mul(&ct)? - x2.broadcast_mul(&st)?)?,
                (x2.broadcast_mul(&ct)? + x1.broadcast_mul(&st)?)?,
            ],
            2,
        )?
        .reshape((t, h * d))?;
        close(&ours, &theirs, 1e-5, "rotary forward");
        close(
            &grad_of(&(&ours * &up)?.sum_all()?, &x),
            &grad_of(&(&theirs * &up)?.sum_all()?, &x),
            1e-4,
            "rotary gradient",
        );
        // silu(gate) · up.
        let u = Var::randn(0f32, 1.0, (t, h * d), &dev)?;
        let ours = xt.apply_op2(u.as_tensor(), SiluMul)?;
        let theirs = (xt.silu()? * u.as_tensor())?;
        close(&ours, &theirs, 1e-5, "silu forward");
        for v in [&x, &u] {
            close(
                &grad_of(&(&ours * &up)?.sum_all()?, v),
                &grad_of(&(&theirs * &up)?.sum_all()?, v),
                1e-4,
                "silu gradient",
            );
        }
        Ok(())
    }
}
