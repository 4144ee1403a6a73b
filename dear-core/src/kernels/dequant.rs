//! Matrix products of f32 activations with ggml block-quantized weights, without
//! rounding the activations: `out[m, n] = x[m, k] · w[n, k]ᵀ` where each weight block
//! is expanded to f32 (by [`qgemm`](super::qgemm)'s block decoder, so the values equal
//! candle's `dequantize` bit for bit) and dotted with the inputs. The result is an f32
//! matmul with the dequantized weights (what transformers computes for a GGUF
//! checkpoint) while the weights stay quantized in memory. Meant for few rows
//! (decoding); safe code, parallel over output columns.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::qgemm::{unpack_block, Format, Problem, QK};

/// Whether [`matmul`] takes this block type (q4_0, q4_1, q8_0).
pub(crate) fn supported(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0)
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` (row-major) for the weights of `p` (checked by
/// [`qgemm::problem`](super::qgemm::problem) against `x` and `out`). `out` is
/// overwritten.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] when the block type is not [`supported`].
pub(crate) fn matmul(p: &Problem<'_>, x: &[f32], m: usize, out: &mut [f32]) -> crate::Result<()> {
    let Problem {
        fmt,
        w,
        n,
        k,
        row_bytes,
    } = *p;
    if !matches!(fmt, Format::Q4_0 | Format::Q4_1 | Format::Q8_0) {
        return Err(crate::Error::InvalidArgument(format!(
            "dequantizing matmul: unsupported block type {fmt:?} (q4_0, q4_1 and q8_0 are)"
        )));
    }
    if n == 0 || m == 0 {
        return Ok(());
    }
    let bv = fmt.block_values();
    let sub = bv / QK;
    // Output transposed ([n, m]), so each task owns whole weight rows.
    let mut out_t = vec![0f32; n * m];
    const ROWS_PER_TASK: usize = 16;
    out_t
        .par_chunks_mut(ROWS_PER_TASK * m)
        .zip(w.par_chunks(ROWS_PER_TASK * row_bytes))
        .for_each(|(out, rows)| {
            let (mut q, mut d, mut mn) = (vec![0u8; bv], vec![0f32; sub], vec![0f32; sub]);
            let mut values = [0f32; QK];
            for (acc, row) in out.chunks_mut(m).zip(rows.chunks_exact(row_bytes)) {
                for (b, block) in row.chunks_exact(fmt.block_bytes()).enumerate() {
                    unpack_block(fmt, block, &mut q, &mut d, &mut mn);
                    for s in 0..sub {
                        for (v, &qj) in values.iter_mut().zip(&q[s * QK..(s + 1) * QK]) {
                            *v = d[s] * qj as f32 + mn[s];
                        }
                        let at = b * bv + s * QK;
                        for (i, a) in acc.iter_mut().enumerate() {
                            let xb = &x[i * k + at..i * k + at + QK];
                            let mut sum = 0f32;
                            for (wv, xv) in values.iter().zip(xb) {
                                sum += wv * xv;
                            }
                            *a += sum;
                        }
                    }
                }
            }
        });
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::qgemm::problem;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Equal to an f32 matmul with candle's dequantized weights, for every supported type.
    #[test]
    fn equals_dequantized_matmul() -> crate::Result<()> {
        let dev = Device::Cpu;
        let (m, n, k) = (3, 40, 96);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype)?;
            let want = x
                .matmul(&q.dequantize(&dev)?.t()?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mut got = vec![0f32; m * n];
            let data = q.data()?;
            let p = problem(dtype, &data, n, k, &xs, m, &got)?;
            matmul(&p, &xs, m, &mut got)?;
            let d = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "{dtype:?}: {d}");
        }
        Ok(())
    }

    #[test]
    fn refuses_other_block_types() -> crate::Result<()> {
        let (w, x, mut out) = ([0u8; 144], [0f32; 256], [0f32; 1]);
        let p = problem(GgmlDType::Q4K, &w, 1, 256, &x, 1, &out)?;
        assert!(matmul(&p, &x, 1, &mut out).is_err());
        Ok(())
    }
}
