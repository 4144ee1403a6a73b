//! Matrix products of f32 activations with block-quantized weights, without
//! quantizing the activations: each weight block is expanded to f32 and dotted with
//! the inputs, so the result equals an f32 matmul with the dequantized weights (what
//! transformers computes for a GGUF checkpoint) while the weights stay quantized in
//! memory. Used for small row counts (decoding); safe code, parallel over output rows.
//!
//! Block layouts are ggml's: `q4_0` = f16 scale + 16 bytes of nibbles; `q4_1` =
//! f16 scale, f16 minimum + 16 bytes; `q8_0` = f16 scale + 32 signed bytes. Nibble `j`
//! (low half of byte `j`) is element `j`, the high half is element `j + 16`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

/// Whether [`matmul`] has a kernel for this block type.
pub(crate) fn supported(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Expands one block into `out` (32 values).
fn dequantize_block(dtype: GgmlDType, block: &[u8], out: &mut [f32; QK]) {
    match dtype {
        GgmlDType::Q4_0 => {
            let d = f16_at(block, 0);
            let qs = &block[2..18];
            for j in 0..16 {
                out[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
                out[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlDType::Q4_1 => {
            let d = f16_at(block, 0);
            let m = f16_at(block, 2);
            let qs = &block[4..20];
            for j in 0..16 {
                out[j] = (qs[j] & 0x0F) as f32 * d + m;
                out[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlDType::Q8_0 => {
            let d = f16_at(block, 0);
            for (o, q) in out.iter_mut().zip(&block[2..34]) {
                *o = (*q as i8) as f32 * d;
            }
        }
        _ => out.fill(0.0),
    }
}

/// `x: [m, k]` (f32, contiguous) times `wᵀ` for `w: [n, k]` quantized → `[m, n]`.
///
/// The caller checks [`supported`] first.
pub(crate) fn matmul(w: &QTensor, x: &Tensor) -> crate::Result<Tensor> {
    let dtype = w.dtype();
    let (n, k) = w.shape().dims2()?;
    let (m, kx) = x.dims2()?;
    if kx != k || k % QK != 0 || !supported(dtype) {
        return Err(crate::Error::InvalidArgument(format!(
            "quantized matmul of [{m}, {kx}] by [{n}, {k}] {dtype:?}"
        )));
    }
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let data = w.data()?;
    let block_bytes = dtype.type_size();
    let row_bytes = k / QK * block_bytes;
    let mut out_t = vec![0f32; n * m]; // [n, m]
    const ROWS_PER_TASK: usize = 16;
    out_t
        .par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            let mut buf = [0f32; QK];
            let first = task * ROWS_PER_TASK;
            for (r, acc) in out.chunks_mut(m).enumerate() {
                let row = &data[(first + r) * row_bytes..(first + r + 1) * row_bytes];
                for (b, block) in row.chunks_exact(block_bytes).enumerate() {
                    dequantize_block(dtype, block, &mut buf);
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xb = &xs[i * k + b * QK..i * k + (b + 1) * QK];
                        let mut s = 0f32;
                        for (wv, xv) in buf.iter().zip(xb) {
                            s += wv * xv;
                        }
                        *a += s;
                    }
                }
            }
        });
    let t = Tensor::from_vec(out_t, (n, m), x.device())?;
    Ok(t.t()?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Equal to an f32 matmul with the dequantized weights, for every supported type.
    #[test]
    fn equals_dequantized_matmul() -> crate::Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (40, 96), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (3, 96), &dev)?;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype)?;
            let want = x.matmul(&q.dequantize(&dev)?.t()?)?;
            let got = matmul(&q, &x)?;
            let d = (want - got)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(d < 1e-4, "{dtype:?}: {d}");
        }
        Ok(())
    }
}
