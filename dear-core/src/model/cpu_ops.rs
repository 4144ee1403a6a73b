//! candle glue for dear's CPU kernels (`crate::kernels`): custom ops that borrow the
//! tensors' storage (no copies in) and return new storage.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::kernels;
use crate::kernels::attention::SeqSpan;
use crate::kernels::qgemm::Precision;

/// The contiguous f32 values of a CPU tensor's storage.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("kernel input is not contiguous".into()))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// dear-core's error as a candle error (the message is kept).
pub(crate) fn to_candle(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Whether a tensor can go through the CPU kernels: f32 on the CPU.
pub(crate) fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// `silu(gate) · up`, element-wise (`LlamaMLP`'s product) in one pass.
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "dear-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(candle_core::Error::Msg(format!(
                "silu_mul: gate {:?} and up {:?} differ in shape",
                l1.shape(),
                l2.shape()
            )));
        }
        let gate = f32_slice(s1, l1)?;
        let up = f32_slice(s2, l2)?;
        let mut out = vec![0f32; gate.len()];
        kernels::activation::silu_mul(gate, up, &mut out).map_err(to_candle)?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `silu(gate) · up`: the fused kernel for f32 CPU tensors, candle's ops otherwise.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> crate::Result<Tensor> {
    if cpu_f32(gate) && cpu_f32(up) {
        let gate = gate.contiguous()?;
        let up = up.contiguous()?;
        return Ok(gate.apply_op2_no_bwd(&up, &SiluMul)?);
    }
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

/// `x · wᵀ` with block-quantized `w`: by [`kernels::qgemm`] at a precision, or by
/// `kernels::dequant` (activations as they are) for `None`.
struct QMatMulOp<'a> {
    w: &'a QTensor,
    precision: Option<Precision>,
}

impl CustomOp1 for QMatMulOp<'_> {
    fn name(&self) -> &'static str {
        "dear-qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let (n, wk) = self.w.shape().dims2()?;
        if k != wk {
            return Err(candle_core::Error::Msg(format!(
                "quantized matmul of [{m}, {k}] by [{n}, {wk}]ᵀ"
            )));
        }
        let x = f32_slice(s, l)?;
        let data = self.w.data()?;
        let mut out = vec![0f32; m * n];
        let dtype = self.w.dtype();
        match self.precision {
            Some(precision) => {
                kernels::qgemm::matmul(dtype, &data, n, k, x, m, &mut out, precision)
            }
            None => kernels::qgemm::problem(dtype, &data, n, k, x, m, &out)
                .and_then(|p| kernels::dequant::matmul(&p, x, m, &mut out)),
        }
        .map_err(to_candle)?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `x: [m, k]` (f32, CPU) times `wᵀ` for quantized `w: [n, k]` → `[m, n]`.
pub(crate) fn qmatmul(x: &Tensor, w: &Arc<QTensor>, precision: Precision) -> crate::Result<Tensor> {
    let x = x.contiguous()?;
    Ok(x.apply_op1_no_bwd(&QMatMulOp {
        w,
        precision: Some(precision),
    })?)
}

/// `x: [m, k]` (f32, CPU) times `wᵀ` for quantized `w: [n, k]` → `[m, n]`, with `w`'s
/// blocks expanded to f32 (no rounding of `x`); the caller checks
/// `kernels::dequant::supported` first.
pub(crate) fn dequant_matmul(x: &Tensor, w: &QTensor) -> crate::Result<Tensor> {
    let x = x.contiguous()?;
    Ok(x.apply_op1_no_bwd(&QMatMulOp { w, precision: None })?)
}

/// Causal attention over packed sequences, by [`kernels::attention`].
struct AttentionOp<'a> {
    spans: &'a [SeqSpan],
    scale: f32,
}

impl CustomOp3 for AttentionOp<'_> {
    fn name(&self) -> &'static str {
        "dear-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tq, hq, d) = lq.shape().dims3()?;
        let (_, hkv, dk) = lk.shape().dims3()?;
        if lk.shape() != lv.shape() || dk != d {
            return Err(candle_core::Error::Msg(format!(
                "attention: q {:?}, k {:?}, v {:?}",
                lq.shape(),
                lk.shape(),
                lv.shape()
            )));
        }
        let (q, k, v) = (f32_slice(sq, lq)?, f32_slice(sk, lk)?, f32_slice(sv, lv)?);
        let mut out = vec![0f32; tq * hq * d];
        kernels::attention::attention(q, k, v, self.spans, hq, hkv, d, self.scale, &mut out)
            .map_err(to_candle)?;
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }
}

/// Causal attention: `q: [tokens_q, hq, d]`, `k, v: [tokens_k, hkv, d]` (f32, CPU),
/// each span's queries being the last positions of its keys → `[tokens_q, hq, d]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[SeqSpan],
    scale: f32,
) -> crate::Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(q.apply_op3_no_bwd(&k, &v, &AttentionOp { spans, scale })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused op equals candle's `silu(gate) * up`.
    #[test]
    fn silu_mul_equals_candle() -> crate::Result<()> {
        let dev = Device::Cpu;
        let gate = Tensor::randn(0f32, 3.0, (37, 50), &dev)?;
        let up = Tensor::randn(0f32, 1.0, (37, 50), &dev)?;
        let want = (candle_nn::ops::silu(&gate)? * &up)?;
        let got = silu_mul(&gate, &up)?;
        let d = (want - got)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "max diff {d}");
        Ok(())
    }
}
