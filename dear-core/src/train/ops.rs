//! The two differentiable operations the training graph needs beyond candle's own:
//!
//! - [`FrozenLinear`]: `y = x Wᵀ` with a frozen `W`. candle's matmul backward computes
//!   the gradient of both operands; a frozen weight needs only `∂x = ∂y W`, which saves
//!   a third of the work of every projection.
//! - [`CausalAttention`]: causal softmax attention over packed sequences (no padding),
//!   with grouped key/value heads, forward and backward on the CPU with `gemm`. The
//!   backward recomputes the probabilities instead of storing `[L, L]` per head.
//!
//! Everything else (norms, rotary embedding, SiLU, LoRA, losses) is composed of
//! candle's differentiable ops.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;

use crate::model::frozen::QuantizedBlocks;
use rayon::prelude::*;

pub(crate) fn slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("training op input is not contiguous".into()))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// A raw pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a region no other task touches (see the call sites).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// A strided matrix operand: element `(i, j)` is at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
    /// Elements addressable from `ptr` (checked by [`matmul_into`]).
    len: usize,
}

impl Mat {
    /// A row-major matrix with `cols` columns.
    pub(crate) fn rows(data: &[f32], cols: usize) -> Self {
        Mat {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
            len: data.len(),
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub(crate) fn transposed(data: &[f32], cols: usize) -> Self {
        Mat {
            ptr: data.as_ptr(),
            rs: 1,
            cs: cols as isize,
            len: data.len(),
        }
    }

    /// Whether `rows × cols` elements lie inside the operand.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || ((rows - 1) as isize * self.rs + (cols - 1) as isize * self.cs) < self.len as isize
    }
}

/// `dst[m×n] = (accumulate ? dst : 0) + beta · lhs[m×k] rhs[k×n]`, `dst` row-major,
/// the product split over the rayon pool.
///
/// # Panics
/// When an operand is smaller than its shape (a bug in the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
) {
    assert!(
        dst.len() >= m * n && lhs.covers(m, k) && rhs.covers(k, n),
        "matmul_into: operands smaller than [{m}, {k}] x [{k}, {n}]"
    );
    // SAFETY: the bounds were checked above.
    unsafe {
        sgemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n as isize,
            accumulate,
            lhs,
            rhs,
            beta,
            threads(),
        )
    }
}

/// `dst[m×n] = (accumulate ? dst : 0) + beta · lhs[m×k] · rhs[k×n]`, `dst` row-major
/// with row stride `dst_rs`.
///
/// # Safety
/// Every operand must cover the elements its strides address.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(dst.offset(i as isize * dst_rs), 0, n);
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

fn threads() -> Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// `g [rows, out] · W`, the weight `[out, in]` row-major.
fn matmul_frozen_t(g: &[f32], rows: usize, w: &[f32], out_dim: usize, in_dim: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * in_dim];
    matmul_into(
        &mut y,
        rows,
        in_dim,
        out_dim,
        false,
        Mat::rows(g, out_dim),
        Mat::rows(w, in_dim),
        1.0,
    );
    y
}

/// `x Wᵀ` into `y` (`[rows, out]`, overwritten): with dear's integer kernels on the
/// stored blocks of a quantized weight (activations rounded to ~15 bits per block, as
/// inference computes them by default), else an f32 GEMM.
pub(crate) fn forward_product(
    y: &mut [f32],
    x: &[f32],
    rows: usize,
    weight: &[f32],
    blocks: Option<&QuantizedBlocks>,
    out_dim: usize,
    in_dim: usize,
) -> candle_core::Result<()> {
    if let Some(b) = blocks {
        return crate::kernels::qgemm::matmul(
            b.dtype,
            &b.data,
            out_dim,
            in_dim,
            x,
            rows,
            y,
            crate::kernels::qgemm::Precision::Int16,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()));
    }
    matmul_into(
        y,
        rows,
        out_dim,
        in_dim,
        false,
        Mat::rows(x, in_dim),
        Mat::transposed(weight, in_dim),
        1.0,
    );
    Ok(())
}

/// `x Wᵀ` with a frozen weight: the backward gives `∂x = ∂y W` and nothing for `W`.
#[derive(Clone, Debug)]
pub(crate) struct FrozenLinear {
    pub(crate) weight: Arc<Vec<f32>>,
    pub(crate) blocks: Option<QuantizedBlocks>,
    pub(crate) out_dim: usize,
    pub(crate) in_dim: usize,
}

/// `∂y W`, the backward of [`FrozenLinear`].
struct FrozenLinearBackward(FrozenLinear);

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "dear-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        if cols != self.in_dim {
            return Err(candle_core::Error::Msg(format!(
                "frozen linear: input has {cols} features, the weight {}",
                self.in_dim
            )));
        }
        let x = slice(s, l)?;
        let mut y = vec![0f32; rows * self.out_dim];
        forward_product(
            &mut y,
            x,
            rows,
            &self.weight,
            self.blocks.as_ref(),
            self.out_dim,
            self.in_dim,
        )?;
        Ok((CpuStorage::F32(y), Shape::from((rows, self.out_dim))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            grad.apply_op1_no_bwd(&FrozenLinearBackward(self.clone()))?,
        ))
    }
}

impl CustomOp1 for FrozenLinearBackward {
    fn name(&self) -> &'static str {
        "dear-frozen-linear-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let w = &self.0;
        if cols != w.out_dim {
            return Err(candle_core::Error::Msg(format!(
                "frozen linear backward: gradient has {cols} features, the weight {}",
                w.out_dim
            )));
        }
        let g = slice(s, l)?;
        let dx = matmul_frozen_t(g, rows, &w.weight, w.out_dim, w.in_dim);
        Ok((CpuStorage::F32(dx), Shape::from((rows, w.in_dim))))
    }
}

/// Causal attention over packed sequences: `q [tokens, heads·d]`, `k` and `v`
/// `[tokens, kv_heads·d]` → `[tokens, heads·d]`; token ranges `spans` are independent
/// sequences; query head `h` reads key/value head `h / (heads / kv_heads)`.
#[derive(Clone, Debug)]
pub(crate) struct CausalAttention {
    pub(crate) spans: Arc<Vec<Range<usize>>>,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) scale: f32,
}

/// The three buffers of one attention call.
struct Qkv<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl CausalAttention {
    fn check(&self, tokens: usize, q: usize, k: usize, v: usize) -> candle_core::Result<()> {
        let d = self.head_dim;
        let ok = self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && q == tokens * self.heads * d
            && k == tokens * self.kv_heads * d
            && v == k
            && self
                .spans
                .iter()
                .all(|s| s.start <= s.end && s.end <= tokens);
        if ok {
            Ok(())
        } else {
            Err(candle_core::Error::Msg(format!(
                "causal attention: {tokens} tokens, q {q}, k {k}, v {v} values for {} heads, {} kv heads of {d}",
                self.heads, self.kv_heads
            )))
        }
    }

    /// Row-wise causal softmax of `scale · Q Kᵀ` for head `h` of sequence `span` into
    /// `p` (`[L, L]`, zero above the diagonal).
    fn probabilities(&self, x: &Qkv, span: &Range<usize>, h: usize, p: &mut [f32]) {
        let (hd, kvd) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let g = h / (self.heads / self.kv_heads);
        let l = span.len();
        let d = self.head_dim;
        // SAFETY: Q rows span × [h·d, h·d + d), K rows span × [g·d, g·d + d), p is L×L.
        unsafe {
            sgemm(
                l,
                l,
                d,
                p.as_mut_ptr(),
                l as isize,
                false,
                Mat {
                    ptr: x.q.as_ptr().add(span.start * hd + h * d),
                    rs: hd as isize,
                    cs: 1,
                    len: 0,
                },
                Mat {
                    ptr: x.k.as_ptr().add(span.start * kvd + g * d),
                    rs: 1,
                    cs: kvd as isize,
                    len: 0,
                },
                self.scale,
                Parallelism::None,
            )
        };
        for i in 0..l {
            let row = &mut p[i * l..(i + 1) * l];
            let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0f32;
            for x in &mut row[..=i] {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in &mut row[..=i] {
                *x *= inv;
            }
            row[i + 1..].fill(0.0);
        }
    }

    fn tasks(&self) -> Vec<(usize, usize)> {
        (0..self.spans.len())
            .flat_map(|s| (0..self.kv_heads).map(move |g| (s, g)))
            .filter(|&(s, _)| !self.spans[s].is_empty())
            .collect()
    }

    fn forward(&self, x: &Qkv, tokens: usize) -> Vec<f32> {
        let d = self.head_dim;
        let (hd, kvd) = (self.heads * d, self.kv_heads * d);
        let rep = self.heads / self.kv_heads;
        let mut out = vec![0f32; tokens * hd];
        let out_ptr = SharedMut(out.as_mut_ptr());
        self.tasks().into_par_iter().for_each(|(s, g)| {
            let out_ptr = &out_ptr;
            let span = &self.spans[s];
            let l = span.len();
            let mut p = vec![0f32; l * l];
            for h in g * rep..(g + 1) * rep {
                self.probabilities(x, span, h, &mut p);
                // SAFETY: this task alone writes rows `span` × columns of head h
                // (heads of group g belong to this task only).
                unsafe {
                    sgemm(
                        l,
                        d,
                        l,
                        out_ptr.0.add(span.start * hd + h * d),
                        hd as isize,
                        false,
                        Mat {
                            ptr: p.as_ptr(),
                            rs: l as isize,
                            cs: 1,
                            len: 0,
                        },
                        Mat {
                            ptr: x.v.as_ptr().add(span.start * kvd + g * d),
                            rs: kvd as isize,
                            cs: 1,
                            len: 0,
                        },
                        1.0,
                        Parallelism::None,
                    )
                };
            }
        });
        out
    }

    /// `(∂q, ∂k, ∂v)` for the output gradient `dout`.
    fn backward(&self, x: &Qkv, dout: &[f32], tokens: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = self.head_dim;
        let (hd, kvd) = (self.heads * d, self.kv_heads * d);
        let rep = self.heads / self.kv_heads;
        let mut dq = vec![0f32; tokens * hd];
        let mut dk = vec![0f32; tokens * kvd];
        let mut dv = vec![0f32; tokens * kvd];
        let (dq_ptr, dk_ptr, dv_ptr) = (
            SharedMut(dq.as_mut_ptr()),
            SharedMut(dk.as_mut_ptr()),
            SharedMut(dv.as_mut_ptr()),
        );
        self.tasks().into_par_iter().for_each(|(s, g)| {
            let (dq_ptr, dk_ptr, dv_ptr) = (dq_ptr, dk_ptr, dv_ptr);
            let span = &self.spans[s];
            let l = span.len();
            let mut p = vec![0f32; l * l];
            let mut dp = vec![0f32; l * l];
            let kv_off = span.start * kvd + g * d;
            for h in g * rep..(g + 1) * rep {
                let q_off = span.start * hd + h * d;
                self.probabilities(x, span, h, &mut p);
                let do_h = Mat {
                    ptr: unsafe { dout.as_ptr().add(q_off) },
                    rs: hd as isize,
                    cs: 1,
                    len: 0,
                };
                // SAFETY (all products below): operands lie inside their buffers;
                // this task alone writes rows `span` of head h (dq) and of kv head g
                // (dk, dv).
                unsafe {
                    // ∂V_g += Pᵀ ∂O_h
                    sgemm(
                        l,
                        d,
                        l,
                        dv_ptr.0.add(kv_off),
                        kvd as isize,
                        true,
                        Mat {
                            ptr: p.as_ptr(),
                            rs: 1,
                            cs: l as isize,
                            len: 0,
                        },
                        do_h,
                        1.0,
                        Parallelism::None,
                    );
                    // ∂P = ∂O_h V_gᵀ
                    sgemm(
                        l,
                        l,
                        d,
                        dp.as_mut_ptr(),
                        l as isize,
                        false,
                        do_h,
                        Mat {
                            ptr: x.v.as_ptr().add(kv_off),
                            rs: 1,
                            cs: kvd as isize,
                            len: 0,
                        },
                        1.0,
                        Parallelism::None,
                    );
                }
                // ∂S = P ⊙ (∂P − rowsum(P ⊙ ∂P))
                for i in 0..l {
                    let pr = &p[i * l..(i + 1) * l];
                    let dr = &mut dp[i * l..(i + 1) * l];
                    let delta: f32 = pr[..=i].iter().zip(&dr[..=i]).map(|(a, b)| a * b).sum();
                    for j in 0..=i {
                        dr[j] = pr[j] * (dr[j] - delta);
                    }
                    dr[i + 1..].fill(0.0);
                }
                unsafe {
                    // ∂Q_h = scale · ∂S K_g
                    sgemm(
                        l,
                        d,
                        l,
                        dq_ptr.0.add(q_off),
                        hd as isize,
                        false,
                        Mat {
                            ptr: dp.as_ptr(),
                            rs: l as isize,
                            cs: 1,
                            len: 0,
                        },
                        Mat {
                            ptr: x.k.as_ptr().add(kv_off),
                            rs: kvd as isize,
                            cs: 1,
                            len: 0,
                        },
                        self.scale,
                        Parallelism::None,
                    );
                    // ∂K_g += scale · ∂Sᵀ Q_h
                    sgemm(
                        l,
                        d,
                        l,
                        dk_ptr.0.add(kv_off),
                        kvd as isize,
                        true,
                        Mat {
                            ptr: dp.as_ptr(),
                            rs: 1,
                            cs: l as isize,
                            len: 0,
                        },
                        Mat {
                            ptr: x.q.as_ptr().add(q_off),
                            rs: hd as isize,
                            cs: 1,
                            len: 0,
                        },
                        self.scale,
                        Parallelism::None,
                    );
                }
            }
        });
        (dq, dk, dv)
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "dear-causal-attention"
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
        let tokens = l1.shape().dims2()?.0;
        let x = Qkv {
            q: slice(s1, l1)?,
            k: slice(s2, l2)?,
            v: slice(s3, l3)?,
        };
        self.check(tokens, x.q.len(), x.k.len(), x.v.len())?;
        let out = self.forward(&x, tokens);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let tokens = q.dims2()?.0;
        let values = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
        let (qv, kv, vv, gv) = (values(q)?, values(k)?, values(v)?, values(grad)?);
        let x = Qkv {
            q: &qv,
            k: &kv,
            v: &vv,
        };
        self.check(tokens, qv.len(), kv.len(), vv.len())?;
        if gv.len() != qv.len() {
            return Err(candle_core::Error::Msg(
                "causal attention: the gradient does not match the output".into(),
            ));
        }
        let (dq, dk, dv) = self.backward(&x, &gv, tokens);
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Reference attention of one sequence from candle's differentiable ops.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        a: &CausalAttention,
    ) -> candle_core::Result<Tensor> {
        let mut outs = Vec::new();
        let d = a.head_dim;
        let rep = a.heads / a.kv_heads;
        for span in a.spans.iter() {
            let l = span.len();
            let mut heads = Vec::new();
            for h in 0..a.heads {
                let g = h / rep;
                let qh = q.narrow(0, span.start, l)?.narrow(1, h * d, d)?;
                let kh = k.narrow(0, span.start, l)?.narrow(1, g * d, d)?;
                let vh = v.narrow(0, span.start, l)?.narrow(1, g * d, d)?;
                let s = (qh.matmul(&kh.t()?)? * a.scale as f64)?;
                let mask: Vec<f32> = (0..l * l)
                    .map(|i| {
                        if i % l > i / l {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let s = s.broadcast_add(&Tensor::from_vec(mask, (l, l), q.device())?)?;
                let max = s.max_keepdim(D::Minus1)?.detach();
                let e = s.broadcast_sub(&max)?.exp()?;
                let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
                heads.push(p.matmul(&vh)?);
            }
            outs.push(Tensor::cat(&heads, 1)?);
        }
        Tensor::cat(&outs, 0)
    }

    #[test]
    fn attention_and_its_gradients_match_candles_autograd() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (heads, kv_heads, d) = (4, 2, 8);
        let spans = vec![0..5, 5..6, 6..13];
        let t = 13;
        let a = CausalAttention {
            spans: Arc::new(spans),
            heads,
            kv_heads,
            head_dim: d,
            scale: 0.35,
        };
        let q = Var::randn(0f32, 1.0, (t, heads * d), &dev)?;
        let k = Var::randn(0f32, 1.0, (t, kv_heads * d), &dev)?;
        let v = Var::randn(0f32, 1.0, (t, kv_heads * d), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (t, heads * d), &dev)?;
        let ours = q
            .as_tensor()
            .apply_op3(k.as_tensor(), v.as_tensor(), a.clone())?;
        let theirs = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), &a)?;
        let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "forward differs by {diff}");
        let g1 = (ours * &w)?.sum_all()?.backward()?;
        let g2 = (theirs * &w)?.sum_all()?.backward()?;
        for var in [&q, &k, &v] {
            let a = g1.get(var.as_tensor()).expect("gradient");
            let b = g2.get(var.as_tensor()).expect("gradient");
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "gradient differs by {diff}");
        }
        Ok(())
    }

    #[test]
    fn frozen_linear_gives_only_the_input_gradient() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev)?;
        let lin = FrozenLinear {
            weight: Arc::new(w.flatten_all()?.to_vec1()?),
            blocks: None,
            out_dim: 5,
            in_dim: 3,
        };
        let x = Var::randn(0f32, 1.0, (4, 3), &dev)?;
        let up = Tensor::randn(0f32, 1.0, (4, 5), &dev)?;
        let ours = x.as_tensor().apply_op1(lin)?;
        let theirs = x.as_tensor().matmul(&w.t()?)?;
        let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5);
        let ga = (ours * &up)?.sum_all()?.backward()?;
        let gb = (theirs * &up)?.sum_all()?.backward()?;
        let a = ga.get(x.as_tensor()).expect("gradient");
        let b = gb.get(x.as_tensor()).expect("gradient");
        assert!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }
}
