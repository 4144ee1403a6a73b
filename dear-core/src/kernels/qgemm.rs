//! Matrix products of f32 activations with ggml block-quantized weights:
//! `out[m, n] = x[m, k] · w[n, k]ᵀ`, for prefill (many rows) and decoding (1–8 rows).
//!
//! # The arithmetic
//! Every supported weight format is read per 32-value (sub-)block as
//! `w_j = d · q_j + mn` with `q_j` an unsigned byte and `d`, `mn` f32:
//!
//! | format | block | `q` | `d` | `mn` |
//! |---|---|---|---|---|
//! | q4_0 | 18 B: f16 `d`, 16 B nibbles | nibble (0..=15) | `d` | `−8·d` |
//! | q4_1 | 20 B: f16 `d`, f16 `m`, 16 B nibbles | nibble | `d` | `m` |
//! | q8_0 | 34 B: f16 `d`, 32 × i8 | `i8 + 128` | `d` | `−128·d` |
//! | q4_K | 144 B per 256 values (8 sub-blocks) | nibble | `d·sc` | `−dmin·m` |
//!
//! (nibble `j` of q4_0/q4_1, the low half of byte `j`, is element `j`, the high half
//! element `j + 16`; q4_K's 6-bit `sc`/`m` come from `get_scale_min_k4`.) The values
//! `d·q + mn` equal candle's `dequantize` bit for bit (see the tests).
//!
//! Activations are rounded per row and 32-value block, with `dx = max|x| / 127`:
//! - [`Precision::Int8`]: `qh = round(x / dx)` ∈ [−127, 127], `x̃ = dx · qh`;
//! - [`Precision::Int16`]: the 16-bit integer `x16 = round(256 · x / dx)` ∈
//!   [−32512, 32512], stored as two byte planes `qh = (x16 + 128) >> 8` ∈ [−127, 127]
//!   and `ql = x16 − 256·qh` ∈ [−128, 127], so `x̃ = dx · (qh + ql / 256)` and
//!   `|x − x̃| ≤ dx / 512`.
//!
//! and the result is `Σ_blocks d·dx·(Σ q·qh + Σ q·ql / 256) + mn·dx·(Σ qh + Σ ql / 256)`
//! (the `ql` terms for Int16 only): exactly the dot product of the dequantized weights
//! with `x̃`, up to the order of the f32 sums. [`Isa::Scalar`] computes that formula
//! literally; the SIMD levels compute the same integer sums (with `256·qh + ql` as
//! one 16-bit value where that is faster) and differ only by f32 rounding.
//!
//! # Kernels
//! - Many rows: each tile of `NR` output columns is unpacked once into the layout
//!   the integer dot instruction wants (`vpdpbusd`: 4 consecutive `k` of one column
//!   per 32-bit lane; `vpdpwssd` / `vpmaddwd`: 2 consecutive `k` as 16-bit values),
//!   with the tile's `d` and `mn` as f32 vectors; then micro-tiles of a few rows ×
//!   `NR` columns run against it, holding the block's i32 sums and the f32 totals in
//!   registers. Parallel over (row chunk × column group) tasks.
//! - Up to `DECODE_MAX_ROWS` rows: no unpacking pass; the packed blocks are
//!   expanded in registers (two 32-value blocks per 512-bit vector) and dotted with
//!   every row at once. Parallel over chunks of output columns.

use std::ops::Range;

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

use super::Isa;

#[cfg(target_arch = "x86_64")]
#[path = "qgemm_x86.rs"]
mod x86;

/// How activations are rounded before the integer dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// 8-bit per 32-value block (llama.cpp's q8 activations): fastest.
    Int8,
    /// Two 8-bit planes per block (hi + lo residual, ~15 bits): near-f32 results.
    #[default]
    Int16,
}

impl Precision {
    /// How a block is rounded: `(lim, scale_mul, s_mul)`: the integers are
    /// `round(x · (127 / amax) · scale_mul)` clamped to `±lim`, and the block's scale
    /// is `(amax / 127) · s_mul` (Int16 keeps 8 more bits, rescaled by [`RS`]).
    pub(super) fn rounding(self) -> (i32, f32, f32) {
        match self {
            Precision::Int8 => (127, 1.0, 1.0),
            Precision::Int16 => (X16_MAX, 256.0, RS),
        }
    }
}

/// `(amax / 127, 127 / amax)` of a block, or zeros for an all-zero block (every
/// level's quantization uses this, so they agree exactly).
#[inline(always)]
pub(super) fn block_scale(amax: f32) -> (f32, f32) {
    if amax > 0.0 {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    }
}

/// Values per activation block and per weight (sub-)block.
pub(super) const QK: usize = 32;
/// Output columns per unpacked weight tile (the many-row kernels' panel width).
const NR: usize = 32;
/// Inputs with at most this many rows take the direct (decoding) kernels.
const DECODE_MAX_ROWS: usize = 4;
/// The residual plane's weight: `x̃ = dx · (qh + RS · ql)`.
const RS: f32 = 1.0 / 256.0;
/// Largest `|x16|`: `127 · 256`.
const X16_MAX: i32 = 127 * 256;
/// `1.5 · 2²³`: `(v + ROUND_MAGIC) − ROUND_MAGIC` rounds `|v| < 2²²` to the nearest
/// integer, ties to even, with plain adds (so it vectorises and every level agrees).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Whether [`matmul`] has a kernel for this block type (q4_0, q4_1, q8_0, q4_K).
pub fn supported(dtype: GgmlDType) -> bool {
    Format::of(dtype).is_some()
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` (all row-major), with `w` the raw ggml block bytes
/// of an `[n, k]` matrix (what candle's `QTensor::data()` returns), at the CPU's best
/// [`Isa`]. `out` is overwritten.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] when `dtype` is not [`supported`], `k` is not a
/// multiple of its block size, or a slice's length does not match `n`, `k` and `m`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    precision: Precision,
) -> crate::Result<()> {
    matmul_with(Isa::detect(), dtype, w, n, k, x, m, out, precision)
}

/// [`matmul`] at a given [`Isa`] (tests and benchmarks compare the levels).
///
/// # Errors
/// As [`matmul`], and when this CPU cannot run `isa`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    isa: Isa,
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    precision: Precision,
) -> crate::Result<()> {
    let problem = problem(dtype, w, n, k, x, m, out)?;
    let fmt = problem.fmt;
    let bad = |what: String| {
        Err(crate::Error::InvalidArgument(format!(
            "quantized matmul of x [{m}, {k}] by w [{n}, {k}] {dtype:?}: {what}"
        )))
    };
    if !Isa::available().contains(&isa) {
        return bad(format!("this CPU cannot run {isa:?} kernels"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0.0);
        return Ok(());
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            let Some(cpu) = x86::Avx512::new() else {
                return bad("this CPU cannot run Avx512 kernels".into());
            };
            if m <= DECODE_MAX_ROWS {
                let plan = ActPlan::decode_avx512(precision);
                let acts = Acts::quantize(isa, x, m, k, precision, plan);
                let lanes = DecodeActs::new(fmt, &acts);
                run_blocks(m, n, out, decode_grid(m, n, k), |blk| {
                    x86::decode_avx512(cpu, &problem, &acts, &lanes, blk)
                });
            } else {
                let kind = PanelKind::for_avx512(precision);
                let acts = Acts::quantize(isa, x, m, k, precision, ActPlan::gemm(kind));
                run_blocks(m, n, out, gemm_grid(m, n, k, x86::AVX512_MR), |blk| {
                    x86::gemm_avx512(cpu, &problem, kind, &acts, blk)
                });
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let Some(cpu) = x86::Avx2::new() else {
                return bad("this CPU cannot run Avx2 kernels".into());
            };
            if m <= DECODE_MAX_ROWS {
                let plan = ActPlan::decode_avx2(fmt, precision);
                let acts = Acts::quantize(isa, x, m, k, precision, plan);
                run_blocks(m, n, out, decode_grid(m, n, k), |blk| {
                    x86::decode_avx2(cpu, &problem, &acts, blk)
                });
            } else {
                let kind = PanelKind::for_avx2(fmt, precision);
                let acts = Acts::quantize(isa, x, m, k, precision, ActPlan::gemm(kind));
                run_blocks(m, n, out, gemm_grid(m, n, k, x86::AVX2_MR), |blk| {
                    x86::gemm_avx2(cpu, &problem, kind, &acts, blk)
                });
            }
        }
        _ => {
            let acts = Acts::quantize(isa, x, m, k, precision, ActPlan::reference());
            reference(&problem, &acts, out);
        }
    }
    Ok(())
}

/// Checks the operands of `out[m, n] = x[m, k] · w[n, k]ᵀ` (`w` the raw ggml blocks of
/// an `[n, k]` matrix of type `dtype`) against each other and the block layout.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] when `dtype` is not [`supported`], `k` is not a
/// multiple of its block size, or a slice's length does not match `n`, `k` and `m`.
pub(crate) fn problem<'a>(
    dtype: GgmlDType,
    w: &'a [u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &[f32],
) -> crate::Result<Problem<'a>> {
    let bad = |what: String| {
        Err(crate::Error::InvalidArgument(format!(
            "quantized matmul of x [{m}, {k}] by w [{n}, {k}] {dtype:?}: {what}"
        )))
    };
    let Some(fmt) = Format::of(dtype) else {
        return bad("unsupported block type (q4_0, q4_1, q8_0 and q4_K are)".into());
    };
    if !k.is_multiple_of(fmt.block_values()) {
        return bad(format!(
            "k = {k} is not a multiple of the block size {}",
            fmt.block_values()
        ));
    }
    let row_bytes = k / fmt.block_values() * fmt.block_bytes();
    match n.checked_mul(row_bytes) {
        Some(len) if len == w.len() => {}
        _ => {
            return bad(format!(
                "w has {} bytes, expected n · k / {} · {} = {n} · {row_bytes}",
                w.len(),
                fmt.block_values(),
                fmt.block_bytes()
            ))
        }
    }
    match m.checked_mul(k) {
        Some(len) if len == x.len() => {}
        _ => return bad(format!("x has {} values, expected m · k", x.len())),
    }
    match m.checked_mul(n) {
        Some(len) if len == out.len() => {}
        _ => return bad(format!("out has {} values, expected m · n", out.len())),
    }
    Ok(Problem {
        fmt,
        w,
        n,
        k,
        row_bytes,
    })
}

/// The weight side of one call, checked by [`problem`].
#[derive(Clone, Copy)]
pub(crate) struct Problem<'a> {
    pub(super) fmt: Format,
    /// `n` rows of `row_bytes` block bytes.
    pub(super) w: &'a [u8],
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) row_bytes: usize,
}

/// The supported ggml block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
}

impl Format {
    pub(super) fn of(dtype: GgmlDType) -> Option<Format> {
        match dtype {
            GgmlDType::Q4_0 => Some(Format::Q4_0),
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q8_0 => Some(Format::Q8_0),
            GgmlDType::Q4K => Some(Format::Q4K),
            _ => None,
        }
    }

    /// Values per ggml block.
    pub(super) fn block_values(self) -> usize {
        match self {
            Format::Q4K => 256,
            _ => QK,
        }
    }

    /// Bytes per ggml block.
    pub(super) fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
        }
    }

    /// `Some(c)` when every block's `mn` is `c · d` (q4_0: −8, q8_0: −128): the kernels
    /// then add `c · Σ activations` to the block's integer sum instead of a second
    /// f32 term.
    fn offset(self) -> Option<i32> {
        match self {
            Format::Q4_0 => Some(-8),
            Format::Q8_0 => Some(-128),
            Format::Q4_1 | Format::Q4K => None,
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// q4_K's 6-bit scale and minimum of sub-block `j` (ggml's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Unpacks one ggml block (`fmt.block_values()` values) into `q` (that many bytes) and
/// one `d` / `mn` per 32 values: value `j` is `d[j / 32] · q[j] + mn[j / 32]`. The one
/// block decoder of the crate (the integer kernels here and [`super::dequant`]).
#[inline(always)]
pub(super) fn unpack_block(fmt: Format, block: &[u8], q: &mut [u8], d: &mut [f32], mn: &mut [f32]) {
    match fmt {
        Format::Q4_0 | Format::Q4_1 => {
            let dd = f16_at(block, 0);
            d[0] = dd;
            let qs: &[u8; 16] = if fmt == Format::Q4_0 {
                // candle computes `(q − 8) · d`; `d·q + (−8·d)` is the same f32: both
                // products are exact (11-bit mantissa × 4-bit integer) and so is the sum.
                mn[0] = -8.0 * dd;
                block[2..18].try_into().expect("18-byte block")
            } else {
                mn[0] = f16_at(block, 2);
                block[4..20].try_into().expect("20-byte block")
            };
            for j in 0..16 {
                q[j] = qs[j] & 0x0F;
                q[j + 16] = qs[j] >> 4;
            }
        }
        Format::Q8_0 => {
            // candle computes `i8 · d`; `d·(i8 + 128) + (−128·d)` is the same f32
            // (exact products, exact sum).
            let dd = f16_at(block, 0);
            d[0] = dd;
            mn[0] = -128.0 * dd;
            for (q, b) in q[..QK].iter_mut().zip(&block[2..34]) {
                *q = b ^ 0x80;
            }
        }
        Format::Q4K => {
            // candle: `d1 = d · sc; m1 = dmin · m; y = d1 · q − m1`; with `mn = −m1`,
            // `d1 · q + mn` is the same operation.
            let dd = f16_at(block, 0);
            let dmin = f16_at(block, 2);
            let scales = &block[4..16];
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                d[j] = dd * sc as f32;
                mn[j] = -(dmin * m as f32);
            }
            let qs = &block[16..144];
            for p in 0..4 {
                for l in 0..32 {
                    let b = qs[32 * p + l];
                    q[64 * p + l] = b & 0x0F;
                    q[64 * p + 32 + l] = b >> 4;
                }
            }
        }
    }
}

/// Unpacks one weight row (`k` values) into `q` (k bytes) and `d` / `mn` (k / 32).
#[inline(always)]
fn unpack_row(fmt: Format, row: &[u8], q: &mut [u8], d: &mut [f32], mn: &mut [f32]) {
    let bv = fmt.block_values();
    let sub = bv / QK;
    for (i, block) in row.chunks_exact(fmt.block_bytes()).enumerate() {
        unpack_block(
            fmt,
            block,
            &mut q[i * bv..(i + 1) * bv],
            &mut d[i * sub..(i + 1) * sub],
            &mut mn[i * sub..(i + 1) * sub],
        );
    }
}

/// Which activation planes a kernel reads.
#[derive(Clone, Copy, Debug)]
struct ActPlan {
    /// `qh` (and for Int16 `ql`) as bytes.
    bytes: bool,
    /// The 16-bit plane: `x16` for Int16, `qh` widened for Int8.
    words: bool,
}

impl ActPlan {
    fn reference() -> Self {
        ActPlan {
            bytes: true,
            words: false,
        }
    }

    fn gemm(kind: PanelKind) -> Self {
        ActPlan {
            bytes: kind == PanelKind::U8x4,
            words: kind == PanelKind::I16x2,
        }
    }

    /// AVX-512 decoding: `vpdpbusd` on the byte planes (Int16 as two of them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn decode_avx512(_: Precision) -> Self {
        ActPlan {
            bytes: true,
            words: false,
        }
    }

    /// AVX2 decoding: `vpmaddubsw` on bytes for q4 formats at Int8, `vpmaddwd` on
    /// 16-bit values otherwise (q8_0's `255 · 127 · 2` would saturate 16 bits).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn decode_avx2(fmt: Format, precision: Precision) -> Self {
        let words = precision == Precision::Int16 || fmt == Format::Q8_0;
        ActPlan {
            bytes: !words,
            words,
        }
    }
}

/// Quantized activations, `m` rows.
///
/// Per row and 32-value block `b` the kernels use one scale `s`, the integer sum
/// `sum` of the activation integers `a` they multiply, and `sa = s · sum`: the block
/// contributes `d · s · Σ q·a + mn · sa`. Int8: `a = qh`, `s = dx`. Int16:
/// `a = x16 = 256·qh + ql`, `s = dx / 256`.
struct Acts {
    m: usize,
    k: usize,
    /// Blocks per row (`k / 32`).
    nb: usize,
    /// Row stride of the planes: `k` rounded up to 64 (zero padding), so the decoding
    /// kernels can read whole pairs of blocks.
    lda: usize,
    precision: Precision,
    /// `[m, lda]`: `qh` (empty unless the plan asks for bytes).
    qh: Vec<i8>,
    /// `[m, lda]`: `ql`, Int16 only (empty otherwise).
    ql: Vec<i8>,
    /// `[m, lda]`: `x16` (Int16) or `qh` (Int8) as i16 (empty unless the plan asks).
    a16: Vec<i16>,
    /// `[m, nb]`
    s: Vec<f32>,
    /// `[m, nb]`
    sa: Vec<f32>,
    /// `[m, nb]`
    sum: Vec<i32>,
}

/// Rows quantized per parallel task.
const QUANTIZE_ROWS_PER_TASK: usize = 16;

impl Acts {
    fn quantize(
        isa: Isa,
        x: &[f32],
        m: usize,
        k: usize,
        precision: Precision,
        plan: ActPlan,
    ) -> Acts {
        let nb = k / QK;
        let lda = k.div_ceil(64) * 64;
        let plane = m * lda;
        let int16 = precision == Precision::Int16;
        let mut acts = Acts {
            m,
            k,
            nb,
            lda,
            precision,
            qh: vec![0; if plan.bytes { plane } else { 0 }],
            ql: vec![0; if plan.bytes && int16 { plane } else { 0 }],
            a16: vec![0; if plan.words { plane } else { 0 }],
            s: vec![0.0; m * nb],
            sa: vec![0.0; m * nb],
            sum: vec![0; m * nb],
        };
        let threads = rayon::current_num_threads().max(1);
        let rows = QUANTIZE_ROWS_PER_TASK.max(m.div_ceil(4 * threads));
        let tasks = m.div_ceil(rows);
        let mut qh = chunks_or_empty(&mut acts.qh, rows * lda, tasks);
        let mut ql = chunks_or_empty(&mut acts.ql, rows * lda, tasks);
        let mut a16 = chunks_or_empty(&mut acts.a16, rows * lda, tasks);
        let mut jobs = Vec::with_capacity(tasks);
        for ((x, s), (sa, sum)) in x.chunks(rows * k).zip(acts.s.chunks_mut(rows * nb)).zip(
            acts.sa
                .chunks_mut(rows * nb)
                .zip(acts.sum.chunks_mut(rows * nb)),
        ) {
            jobs.push(RowsMut {
                x,
                k,
                lda,
                qh: next_or_empty(&mut qh),
                ql: next_or_empty(&mut ql),
                a16: next_or_empty(&mut a16),
                s,
                sa,
                sum,
            });
        }
        let run = |rows: RowsMut<'_>| match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx2 => x86::quantize_rows(isa, precision, rows),
            _ => quantize_rows(precision, rows),
        };
        if m * k < 1 << 16 || jobs.len() == 1 {
            jobs.into_iter().for_each(run);
        } else {
            jobs.into_par_iter().for_each(run);
        }
        acts
    }
}

fn chunks_or_empty<T>(v: &mut [T], size: usize, count: usize) -> std::vec::IntoIter<&mut [T]> {
    let chunks: Vec<&mut [T]> = if v.is_empty() {
        Vec::new()
    } else {
        v.chunks_mut(size).collect()
    };
    debug_assert!(chunks.is_empty() || chunks.len() == count);
    chunks.into_iter()
}

fn next_or_empty<'a, T>(it: &mut std::vec::IntoIter<&'a mut [T]>) -> &'a mut [T] {
    it.next().unwrap_or_default()
}

/// A few rows of activations and where their quantized forms go.
struct RowsMut<'a> {
    x: &'a [f32],
    k: usize,
    lda: usize,
    qh: &'a mut [i8],
    ql: &'a mut [i8],
    a16: &'a mut [i16],
    s: &'a mut [f32],
    sa: &'a mut [f32],
    sum: &'a mut [i32],
}

/// Quantizes rows (see [`Acts`]); written so that it vectorises, and compiled again
/// with AVX2 / AVX-512 enabled in the x86 module (same IEEE operations, same bits).
#[inline(always)]
fn quantize_rows(precision: Precision, rows: RowsMut<'_>) {
    let RowsMut {
        x,
        k,
        lda,
        qh,
        ql,
        a16,
        s,
        sa,
        sum,
    } = rows;
    let nb = k / QK;
    let round = |v: f32| (v + ROUND_MAGIC) - ROUND_MAGIC;
    for (r, x) in x.chunks_exact(k).enumerate() {
        for b in 0..nb {
            let xb: &[f32; QK] = x[b * QK..(b + 1) * QK].try_into().expect("block");
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (dx, id) = block_scale(amax);
            let at = r * lda + b * QK;
            let mut ints = [0i32; QK];
            let (lim, scale_mul, s_mul) = precision.rounding();
            let id = id * scale_mul;
            for (i, v) in ints.iter_mut().zip(xb) {
                *i = (round(v * id) as i32).clamp(-lim, lim);
            }
            s[r * nb + b] = dx * s_mul;
            let total: i32 = ints.iter().sum();
            sum[r * nb + b] = total;
            sa[r * nb + b] = s[r * nb + b] * total as f32;
            if !qh.is_empty() {
                let h = &mut qh[at..at + QK];
                match precision {
                    Precision::Int8 => {
                        for (h, i) in h.iter_mut().zip(&ints) {
                            *h = *i as i8;
                        }
                    }
                    Precision::Int16 => {
                        let l = &mut ql[at..at + QK];
                        for ((h, l), i) in h.iter_mut().zip(l.iter_mut()).zip(&ints) {
                            let hi = (*i + 128) >> 8;
                            *h = hi as i8;
                            *l = (*i - (hi << 8)) as i8;
                        }
                    }
                }
            }
            if !a16.is_empty() {
                for (w, i) in a16[at..at + QK].iter_mut().zip(&ints) {
                    *w = *i as i16;
                }
            }
        }
    }
}

/// The literal formula of the module docs, one output at a time (the reference the
/// SIMD levels are tested against, and the portable fallback). Parallel over rows.
fn reference(p: &Problem<'_>, acts: &Acts, out: &mut [f32]) {
    let (n, k, nb, lda) = (p.n, p.k, acts.nb, acts.lda);
    let int16 = acts.precision == Precision::Int16;
    const ROWS: usize = 16;
    let run = |(c, out): (usize, &mut [f32])| {
        let mut q = vec![0u8; k];
        let mut d = vec![0f32; nb];
        let mut mn = vec![0f32; nb];
        let rows = c * ROWS..(c * ROWS + out.len() / n);
        for j in 0..n {
            unpack_row(
                p.fmt,
                &p.w[j * p.row_bytes..(j + 1) * p.row_bytes],
                &mut q,
                &mut d,
                &mut mn,
            );
            for (i, o) in rows.clone().zip(out.chunks_exact_mut(n)) {
                let mut total = 0f32;
                for b in 0..nb {
                    let at = i * lda + b * QK;
                    let qb = &q[b * QK..(b + 1) * QK];
                    let qh = &acts.qh[at..at + QK];
                    let sh: i32 = qb.iter().zip(qh).map(|(q, a)| *q as i32 * *a as i32).sum();
                    let sum_h: i32 = qh.iter().map(|a| *a as i32).sum();
                    let (dot, sum) = if int16 {
                        let ql = &acts.ql[at..at + QK];
                        let sl: i32 = qb.iter().zip(ql).map(|(q, a)| *q as i32 * *a as i32).sum();
                        let sum_l: i32 = ql.iter().map(|a| *a as i32).sum();
                        (sh as f32 + RS * sl as f32, sum_h as f32 + RS * sum_l as f32)
                    } else {
                        (sh as f32, sum_h as f32)
                    };
                    let dx = acts.s[i * nb + b] / if int16 { RS } else { 1.0 };
                    total += d[b] * dx * dot + mn[b] * dx * sum;
                }
                o[j] = total;
            }
        }
    };
    out.par_chunks_mut(ROWS * n).enumerate().for_each(run);
}

/// How the weights of a tile are laid out for the many-row kernels: `[steps][NR]` u32
/// words, each word the next few `k` of one output column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PanelKind {
    /// 4 consecutive `q` as bytes (`vpdpbusd`, `vpmaddubsw`).
    U8x4,
    /// 2 consecutive `q` as 16-bit values (`vpdpwssd`, `vpmaddwd`).
    I16x2,
}

impl PanelKind {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn for_avx512(precision: Precision) -> Self {
        match precision {
            Precision::Int8 => PanelKind::U8x4,
            Precision::Int16 => PanelKind::I16x2,
        }
    }

    /// `vpmaddubsw` saturates at 16 bits: fine for nibbles (2 · 15 · 127), not for
    /// q8_0's bytes (2 · 255 · 127), which take the 16-bit route.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn for_avx2(fmt: Format, precision: Precision) -> Self {
        match (precision, fmt) {
            (Precision::Int8, Format::Q4_0 | Format::Q4_1 | Format::Q4K) => PanelKind::U8x4,
            _ => PanelKind::I16x2,
        }
    }

    /// `k` per word.
    fn k_per_word(self) -> usize {
        match self {
            PanelKind::U8x4 => 4,
            PanelKind::I16x2 => 2,
        }
    }
}

/// One tile of [`NR`] weight rows unpacked for the many-row kernels (a buffer that
/// each task fills tile after tile).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile {
    kind: PanelKind,
    /// `[k / k_per_word][NR]`
    words: Vec<u32>,
    /// `[nb][NR]`
    d: Vec<f32>,
    /// `[nb][NR]`
    mn: Vec<f32>,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Tile {
    fn new(kind: PanelKind, k: usize) -> Tile {
        Tile {
            kind,
            words: vec![0; k / kind.k_per_word() * NR],
            d: vec![0.0; k / QK * NR],
            mn: vec![0.0; k / QK * NR],
        }
    }

    /// The tile for weight rows `cols` (at most [`NR`]).
    fn fill(&mut self, cols: Range<usize>) -> TileMut<'_> {
        TileMut {
            kind: self.kind,
            cols,
            words: &mut self.words,
            d: &mut self.d,
            mn: &mut self.mn,
        }
    }
}

/// A [`Tile`] being filled.
struct TileMut<'a> {
    kind: PanelKind,
    /// The weight rows (output columns) it holds: at most [`NR`].
    cols: Range<usize>,
    words: &'a mut [u32],
    d: &'a mut [f32],
    mn: &'a mut [f32],
}

/// Unpacks a tile's weight rows and interleaves them into the panel layout (the
/// portable version, which the SIMD one is tested against).
#[cfg_attr(not(test), allow(dead_code))]
fn unpack_tile(p: &Problem<'_>, tile: TileMut<'_>) {
    let nb = p.k / QK;
    let mut q = vec![0u8; p.k];
    let mut d = vec![0f32; nb];
    let mut mn = vec![0f32; nb];
    for (c, col) in tile.cols.clone().enumerate() {
        unpack_row(
            p.fmt,
            &p.w[col * p.row_bytes..(col + 1) * p.row_bytes],
            &mut q,
            &mut d,
            &mut mn,
        );
        match tile.kind {
            PanelKind::U8x4 => {
                for (g, q4) in q.chunks_exact(4).enumerate() {
                    tile.words[g * NR + c] = u32::from_le_bytes([q4[0], q4[1], q4[2], q4[3]]);
                }
            }
            PanelKind::I16x2 => {
                for (g, q2) in q.chunks_exact(2).enumerate() {
                    tile.words[g * NR + c] = q2[0] as u32 | (q2[1] as u32) << 16;
                }
            }
        }
        for b in 0..nb {
            tile.d[b * NR + c] = d[b];
            tile.mn[b * NR + c] = mn[b];
        }
    }
    // Columns past the last weight row: zeros (the buffer is reused).
    for c in tile.cols.len()..NR {
        for g in 0..p.k / tile.kind.k_per_word() {
            tile.words[g * NR + c] = 0;
        }
        for b in 0..nb {
            tile.d[b * NR + c] = 0.0;
            tile.mn[b * NR + c] = 0.0;
        }
    }
}

/// The activations in the order the AVX-512 decoding kernels read them: groups of 128
/// values (4 blocks), each as two 64-byte halves that meet two 512-bit vectors of
/// expanded weights, with per-lane scales. A lane (4 bytes of a half) always belongs
/// to one block.
///
/// - q4_0, q4_1, q8_0: half 0 holds elements 0–15 of blocks 0–3 (16 bytes each), half
///   1 elements 16–31; both halves feed one accumulator whose lanes `4j..4j+4` belong
///   to block `j` (8 activations per lane).
/// - q4_K (sub-blocks of a 256-value block, ggml's nibble order): half 0 holds
///   sub-blocks 0 and 2 (the low nibbles of the first 64 bytes of `qs`), half 1
///   sub-blocks 1 and 3 (the high nibbles); each half has its own accumulator, lanes
///   0–7 for the first sub-block, 8–15 for the second.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct DecodeActs {
    /// Groups of 128 values per row (`k / 128` rounded up; missing blocks are zeros).
    groups: usize,
    /// `[m][groups][128]`: `qh` in kernel order.
    a: Vec<i8>,
    /// `[m][groups][128]`: `ql` in kernel order (Int16; empty otherwise).
    al: Vec<i8>,
    /// `[m][groups][2][16]`: `s` of each lane's block, for the two halves' accumulators
    /// (q4_K) or for the one accumulator (both copies equal).
    s: Vec<f32>,
    /// `[m][groups][2][16]`: `sa` of each lane's block divided by the lanes that block
    /// spans (their sum is `sa`); zero for formats with an offset.
    sa: Vec<f32>,
    /// `[m][groups][16]`: `c · Σ a` over each lane's 8 activations, for formats with an
    /// offset `c` (q4_0, q8_0; see [`Format::offset`]), else zero.
    bias: Vec<i32>,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl DecodeActs {
    /// Where element `e` (0..128) of a group goes, and the (half, lane) it lands in.
    fn position(fmt: Format, e: usize) -> usize {
        let (sub, o) = (e / QK, e % QK);
        if fmt == Format::Q4K {
            // sub-blocks 0, 2 → half 0; 1, 3 → half 1.
            (sub % 2) * 64 + (sub / 2) * 32 + o
        } else {
            (o / 16) * 64 + sub * 16 + o % 16
        }
    }

    /// The block (0..4 within the group) of lane `l` of half `h`.
    fn lane_block(fmt: Format, h: usize, l: usize) -> usize {
        if fmt == Format::Q4K {
            h + 2 * (l / 8)
        } else {
            l / 4
        }
    }

    fn new(fmt: Format, acts: &Acts) -> Self {
        let (m, k, nb, lda) = (acts.m, acts.k, acts.nb, acts.lda);
        let groups = nb.div_ceil(4);
        let int16 = acts.precision == Precision::Int16;
        let mut d = DecodeActs {
            groups,
            a: vec![0; m * groups * 128],
            al: vec![0; if int16 { m * groups * 128 } else { 0 }],
            s: vec![0.0; m * groups * 32],
            sa: vec![0.0; m * groups * 32],
            bias: vec![0; m * groups * 16],
        };
        let lanes_per_block = if fmt == Format::Q4K { 8.0 } else { 4.0 };
        let c = fmt.offset().unwrap_or(0);
        for r in 0..m {
            for g in 0..groups {
                let base = (r * groups + g) * 128;
                for e in 0..(128).min(k - g * 128) {
                    let p = base + Self::position(fmt, e);
                    let at = r * lda + g * 128 + e;
                    d.a[p] = acts.qh[at];
                    if int16 {
                        d.al[p] = acts.ql[at];
                    }
                }
                for h in 0..2 {
                    for l in 0..16 {
                        let b = g * 4 + Self::lane_block(fmt, h, l);
                        if b >= nb {
                            continue;
                        }
                        let at = (r * groups + g) * 32 + h * 16 + l;
                        d.s[at] = acts.s[r * nb + b];
                        if c == 0 {
                            d.sa[at] = acts.sa[r * nb + b] / lanes_per_block;
                        }
                    }
                }
                if c != 0 {
                    for l in 0..16 {
                        let lane_sum: i32 = (0..2)
                            .flat_map(|h| (0..4).map(move |t| base + h * 64 + 4 * l + t))
                            .map(|p| {
                                let hi = d.a[p] as i32;
                                if int16 {
                                    256 * hi + d.al[p] as i32
                                } else {
                                    hi
                                }
                            })
                            .sum();
                        d.bias[(r * groups + g) * 16 + l] = c * lane_sum;
                    }
                }
            }
        }
        d
    }
}

/// The output of one parallel task: rows `row0..`, columns `col0..` of `out`, one
/// slice per row.
struct OutBlock<'a> {
    row0: usize,
    col0: usize,
    rows: Vec<&'a mut [f32]>,
}

/// A task grid: rows in chunks of `row_step`, columns split at `col_bounds`.
struct Grid {
    row_step: usize,
    col_bounds: Vec<usize>,
}

/// Multiply-adds below which a call runs on the calling thread: handing work to the
/// rayon pool and waiting for it costs some 10–20 µs (more in VMs), the time of a few
/// hundred thousand multiply-adds.
const PARALLEL_MIN_MACS: usize = 1 << 20;
/// The least work a parallel task gets.
const TASK_MIN_MACS: usize = 1 << 18;

/// How many tasks `macs` multiply-adds are worth: one below [`PARALLEL_MIN_MACS`],
/// else up to 4 per thread of at least [`TASK_MIN_MACS`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn task_count(macs: usize) -> usize {
    if macs < PARALLEL_MIN_MACS {
        return 1;
    }
    let threads = rayon::current_num_threads().max(1);
    (macs / TASK_MIN_MACS).clamp(1, 4 * threads)
}

/// Many-row kernels: each task unpacks its tiles once and runs its rows against
/// them, so tasks take as many rows as they can: column groups (whole tiles) first,
/// then row chunks (multiples of `mr`) when there are too few tiles.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn gemm_grid(m: usize, n: usize, k: usize, mr: usize) -> Grid {
    let tasks = task_count(m * n * k);
    let tiles = n.div_ceil(NR);
    let groups = tiles.min(tasks);
    let per = tiles.div_ceil(groups);
    let col_bounds = (0..tiles.div_ceil(per))
        .map(|g| g * per * NR)
        .chain(std::iter::once(n))
        .collect();
    let row_chunks = tasks.div_ceil(tiles.div_ceil(per));
    let row_step = m.div_ceil(row_chunks).div_ceil(mr) * mr;
    Grid {
        row_step,
        col_bounds,
    }
}

/// Decoding kernels: every row at once, columns in chunks of at least 8.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn decode_grid(m: usize, n: usize, k: usize) -> Grid {
    let tasks = task_count(m * n * k);
    let per = n.div_ceil(tasks).div_ceil(8) * 8;
    let col_bounds = (0..n.div_ceil(per))
        .map(|g| g * per)
        .chain(std::iter::once(n))
        .collect();
    Grid {
        row_step: m,
        col_bounds,
    }
}

/// Splits `out` (`[m, n]`) along `grid` and runs `f` on every block, in parallel
/// when there is more than one.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn run_blocks(
    m: usize,
    n: usize,
    out: &mut [f32],
    grid: Grid,
    f: impl Fn(OutBlock<'_>) + Sync + Send,
) {
    let groups = grid.col_bounds.len() - 1;
    let mut blocks = Vec::with_capacity(m.div_ceil(grid.row_step) * groups);
    for (ci, chunk) in out.chunks_mut(grid.row_step * n).enumerate() {
        let mut per: Vec<Vec<&mut [f32]>> = (0..groups)
            .map(|_| Vec::with_capacity(grid.row_step))
            .collect();
        for row in chunk.chunks_mut(n) {
            let mut rest = row;
            for (g, rows) in per.iter_mut().enumerate() {
                let (a, b) = std::mem::take(&mut rest)
                    .split_at_mut(grid.col_bounds[g + 1] - grid.col_bounds[g]);
                rows.push(a);
                rest = b;
            }
        }
        for (g, rows) in per.into_iter().enumerate() {
            blocks.push(OutBlock {
                row0: ci * grid.row_step,
                col0: grid.col_bounds[g],
                rows,
            });
        }
    }
    if blocks.len() == 1 {
        blocks.into_iter().for_each(f);
    } else {
        blocks.into_par_iter().for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    const DTYPES: [GgmlDType; 4] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
    ];
    const PRECISIONS: [Precision; 2] = [Precision::Int8, Precision::Int16];

    /// Deterministic pseudo-random values in about [-1, 1], with some rows scaled up
    /// and one block of zeros, so blocks differ in range.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                let scale = if (i / 32) % 5 == 3 { 7.5 } else { 1.0 };
                if (i / 32) % 11 == 7 {
                    0.0
                } else {
                    u * scale
                }
            })
            .collect()
    }

    /// Quantizes a `[n, k]` matrix with candle; returns its bytes and candle's
    /// dequantized values.
    fn weights(
        dtype: GgmlDType,
        n: usize,
        k: usize,
        seed: u64,
    ) -> crate::Result<(Vec<u8>, Vec<f32>)> {
        let t = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu)?;
        let q = QTensor::quantize(&t, dtype)?;
        let bytes = q.data()?.into_owned();
        let deq = q
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((bytes, deq))
    }

    fn ks(dtype: GgmlDType) -> [usize; 2] {
        if dtype == GgmlDType::Q4K {
            [256, 512]
        } else {
            [96, 288]
        }
    }

    /// `x̃`, the activations the kernels actually multiply, from the quantized planes.
    fn rounded(acts: &Acts) -> Vec<f32> {
        let mut out = vec![0f32; acts.m * acts.k];
        for i in 0..acts.m {
            for b in 0..acts.nb {
                let s = acts.s[i * acts.nb + b];
                for j in 0..QK {
                    let at = i * acts.lda + b * QK + j;
                    out[i * acts.k + b * QK + j] = match acts.precision {
                        Precision::Int8 => s * acts.qh[at] as f32,
                        Precision::Int16 => s * (256.0 * acts.qh[at] as f32 + acts.ql[at] as f32),
                    };
                }
            }
        }
        out
    }

    /// `out = x · wᵀ` in f64, and `Σ |w||x|` per output (the error scale).
    fn exact(w: &[f32], x: &[f32], n: usize, k: usize, m: usize) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let (a, b) = (x[i * k + l] as f64, w[j * k + l] as f64);
                    out[i * n + j] += a * b;
                    mag[i * n + j] += (a * b).abs();
                }
            }
        }
        (out, mag)
    }

    fn worst_rel(got: &[f32], want: &[f64], mag: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .zip(mag)
            .map(|((g, w), s)| {
                let e = (*g as f64 - w).abs() / s.max(1e-30);
                // `f64::max` would drop a NaN: count it as the worst error.
                if e.is_nan() {
                    f64::INFINITY
                } else {
                    e
                }
            })
            .fold(0.0, f64::max)
    }

    /// Unpacking equals candle's `dequantize` for every format (as f32 values: the
    /// only possible bit difference is the sign of a zero, e.g. q4_0 with `d = −0`).
    #[test]
    fn unpack_equals_candle_dequantize() -> crate::Result<()> {
        for dtype in DTYPES {
            let fmt = Format::of(dtype).expect("supported");
            let (n, k) = (5, 512);
            let (bytes, deq) = weights(dtype, n, k, 3)?;
            let row_bytes = k / fmt.block_values() * fmt.block_bytes();
            let (mut q, mut d, mut mn) = (vec![0u8; k], vec![0f32; k / QK], vec![0f32; k / QK]);
            for j in 0..n {
                unpack_row(
                    fmt,
                    &bytes[j * row_bytes..(j + 1) * row_bytes],
                    &mut q,
                    &mut d,
                    &mut mn,
                );
                for l in 0..k {
                    let ours = d[l / QK] * q[l] as f32 + mn[l / QK];
                    let theirs = deq[j * k + l];
                    assert!(
                        ours == theirs,
                        "{dtype:?} row {j} value {l}: {ours} (q {} d {} mn {}) vs candle {theirs}",
                        q[l],
                        d[l / QK],
                        mn[l / QK]
                    );
                }
            }
        }
        Ok(())
    }

    /// Every SIMD level against the scalar reference, at both precisions: within 1e-5
    /// of `Σ |w||x|` (`mag`) per output, f32 summation order being the only difference.
    #[allow(clippy::too_many_arguments)]
    fn check_levels(
        dtype: GgmlDType,
        w: &[u8],
        n: usize,
        k: usize,
        x: &[f32],
        m: usize,
        mag: &[f64],
        what: &str,
    ) -> crate::Result<()> {
        for precision in PRECISIONS {
            let mut want = vec![0f32; m * n];
            matmul_with(Isa::Scalar, dtype, w, n, k, x, m, &mut want, precision)?;
            let want: Vec<f64> = want.iter().map(|v| *v as f64).collect();
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; m * n];
                matmul_with(isa, dtype, w, n, k, x, m, &mut got, precision)?;
                let err = worst_rel(&got, &want, mag);
                assert!(
                    err <= 1e-5,
                    "{dtype:?} {precision:?} {isa:?} {what}: error {err:e}"
                );
            }
        }
        Ok(())
    }

    /// Every SIMD level equals the scalar reference up to f32 summation order.
    #[test]
    fn simd_levels_match_reference() -> crate::Result<()> {
        for dtype in DTYPES {
            for k in ks(dtype) {
                for n in [40usize, 67] {
                    let (w, wf) = weights(dtype, n, k, n as u64 + k as u64)?;
                    for m in [1usize, 3, 8, 9, 37] {
                        let x = values(m * k, 100 + m as u64);
                        let (_, mag) = exact(&wf, &x, n, k, m);
                        check_levels(dtype, &w, n, k, &x, m, &mag, &format!("m {m} n {n} k {k}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The reference equals an f32 matmul of candle's dequantized weights with the
    /// rounded activations `x̃` (1e-5 of Σ|w||x|: only f32 rounding differs), and
    /// approximates the unrounded product within the rounding's bound.
    ///
    /// Bounds against the unrounded `x`: per element `|x − x̃| ≤ dx/2` (Int8) or
    /// `dx/512` (Int16) with `dx = max|x_block| / 127`, so the error is at most
    /// `Σ |w| · max|x| / 254` (Int8) or `/ 65024` (Int16). Relative to `Σ |w||x|` that
    /// is `(max|x| / mean|x|) / 254` resp. `/ 65024` in the worst case; these inputs
    /// are uniform (mean|x| ≈ max|x| / 2) with errors of random sign that partly
    /// cancel, so 1e-2 (Int8) and 1e-4 (Int16) hold with margin.
    #[test]
    fn reference_equals_dequantized_matmul() -> crate::Result<()> {
        let (m, n) = (7, 33);
        for dtype in DTYPES {
            for k in ks(dtype) {
                let (w, wf) = weights(dtype, n, k, 11)?;
                let x = values(m * k, 12);
                let (exact_x, mag) = exact(&wf, &x, n, k, m);
                for precision in PRECISIONS {
                    let mut got = vec![0f32; m * n];
                    matmul_with(Isa::Scalar, dtype, &w, n, k, &x, m, &mut got, precision)?;
                    let acts =
                        Acts::quantize(Isa::Scalar, &x, m, k, precision, ActPlan::reference());
                    let (exact_rounded, _) = exact(&wf, &rounded(&acts), n, k, m);
                    let err = worst_rel(&got, &exact_rounded, &mag);
                    assert!(err <= 1e-5, "{dtype:?} {precision:?} k {k}: vs x̃ {err:e}");
                    let err = worst_rel(&got, &exact_x, &mag);
                    let bound = match precision {
                        Precision::Int8 => 1e-2,
                        Precision::Int16 => 1e-4,
                    };
                    assert!(err <= bound, "{dtype:?} {precision:?} k {k}: vs x {err:e}");
                }
            }
        }
        Ok(())
    }

    /// Inputs big enough to be split into parallel tasks (row chunks and column
    /// groups in the many-row path, column chunks in decoding) give the reference's
    /// result too.
    #[test]
    fn parallel_splits_match_reference() -> crate::Result<()> {
        let (n, k) = (330, 1024);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q4K] {
            let (w, wf) = weights(dtype, n, k, 21)?;
            for m in [5usize, 70] {
                assert!(task_count(m * n * k) > 1 || rayon::current_num_threads() == 1);
                let x = values(m * k, 22);
                let (_, mag) = exact(&wf, &x, n, k, m);
                check_levels(dtype, &w, n, k, &x, m, &mag, &format!("m {m}"))?;
            }
        }
        Ok(())
    }

    /// The vectorised quantization gives the portable one's values exactly.
    #[test]
    fn quantization_is_the_same_at_every_level() {
        let (m, k) = (5, 320);
        let x = values(m * k, 8);
        let plan = ActPlan {
            bytes: true,
            words: true,
        };
        for precision in PRECISIONS {
            let want = Acts::quantize(Isa::Scalar, &x, m, k, precision, plan);
            for isa in Isa::available() {
                let got = Acts::quantize(isa, &x, m, k, precision, plan);
                assert_eq!(got.qh, want.qh, "{isa:?} {precision:?}");
                assert_eq!(got.ql, want.ql, "{isa:?} {precision:?}");
                assert_eq!(got.a16, want.a16, "{isa:?} {precision:?}");
                assert_eq!(got.sum, want.sum, "{isa:?} {precision:?}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.s), bits(&want.s), "{isa:?} {precision:?}");
                assert_eq!(bits(&got.sa), bits(&want.sa), "{isa:?} {precision:?}");
            }
        }
    }

    /// The SIMD tile unpacking writes the portable one's words, scales and padding.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_unpack_equals_portable() -> crate::Result<()> {
        let (n, k) = (37, 512);
        for dtype in DTYPES {
            let fmt = Format::of(dtype).expect("supported");
            let (w, _) = weights(dtype, n, k, 9)?;
            let p = Problem {
                fmt,
                w: &w,
                n,
                k,
                row_bytes: k / fmt.block_values() * fmt.block_bytes(),
            };
            for kind in [PanelKind::U8x4, PanelKind::I16x2] {
                for cols in [0..32, 32..37] {
                    let mut want = Tile::new(kind, k);
                    unpack_tile(&p, want.fill(cols.clone()));
                    let mut got = Tile::new(kind, k);
                    got.words.fill(u32::MAX);
                    got.d.fill(f32::NAN);
                    got.mn.fill(f32::NAN);
                    x86::unpack_tile(&p, got.fill(cols.clone()));
                    assert_eq!(got.words, want.words, "{dtype:?} {kind:?} {cols:?}");
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got.d), bits(&want.d), "{dtype:?} {kind:?} {cols:?}");
                    assert_eq!(bits(&got.mn), bits(&want.mn), "{dtype:?} {kind:?} {cols:?}");
                }
            }
        }
        Ok(())
    }

    /// The planes decode to `x16` and stay within their ranges.
    #[test]
    fn int16_planes_are_consistent() {
        let (m, k) = (3, 128);
        let x = values(m * k, 5);
        let plan = ActPlan {
            bytes: true,
            words: true,
        };
        let acts = Acts::quantize(Isa::Scalar, &x, m, k, Precision::Int16, plan);
        for i in 0..m {
            for l in 0..k {
                let at = i * acts.lda + l;
                let (h, lo, w) = (acts.qh[at] as i32, acts.ql[at] as i32, acts.a16[at] as i32);
                assert_eq!(256 * h + lo, w);
                assert!((-127..=127).contains(&h) && (-128..=127).contains(&lo));
                let s = acts.s[i * acts.nb + l / QK];
                assert!((x[i * k + l] - s * w as f32).abs() <= s * 0.5 * 1.0001 + 1e-30);
            }
        }
    }

    #[test]
    fn zero_rows_and_zero_activations() -> crate::Result<()> {
        let (n, k) = (40, 96);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q8_0] {
            let (w, _) = weights(dtype, n, k, 1)?;
            for isa in Isa::available() {
                for precision in PRECISIONS {
                    matmul_with(isa, dtype, &w, n, k, &[], 0, &mut [], precision)?;
                    for m in [1usize, 20] {
                        let x = vec![0f32; m * k];
                        let mut out = vec![f32::NAN; m * n];
                        matmul_with(isa, dtype, &w, n, k, &x, m, &mut out, precision)?;
                        assert!(out.iter().all(|v| *v == 0.0), "{isa:?} {dtype:?} m {m}");
                    }
                }
            }
        }
        // n = 0 and k = 0.
        matmul(
            GgmlDType::Q4_0,
            &[],
            0,
            96,
            &[0.0; 96],
            1,
            &mut [],
            Precision::Int8,
        )?;
        let mut out = [f32::NAN; 6];
        matmul(
            GgmlDType::Q4_0,
            &[],
            3,
            0,
            &[],
            2,
            &mut out,
            Precision::Int8,
        )?;
        assert_eq!(out, [0.0; 6]);
        Ok(())
    }

    #[test]
    fn bad_sizes_are_errors() -> crate::Result<()> {
        let (n, k, m) = (8, 64, 2);
        let (w, _) = weights(GgmlDType::Q4_1, n, k, 2)?;
        let x = vec![0.5f32; m * k];
        let mut out = vec![0f32; m * n];
        let p = Precision::Int8;
        let msg = |r: crate::Result<()>| r.expect_err("should fail").to_string();
        let e = msg(matmul(
            GgmlDType::Q4_1,
            &w,
            n,
            48,
            &x[..m * 48],
            m,
            &mut out,
            p,
        ));
        assert!(e.contains("k = 48 is not a multiple"), "{e}");
        let e = msg(matmul(GgmlDType::Q4_1, &w[1..], n, k, &x, m, &mut out, p));
        assert!(e.contains("w has"), "{e}");
        let e = msg(matmul(GgmlDType::Q4_1, &w, n, k, &x[1..], m, &mut out, p));
        assert!(e.contains("x has"), "{e}");
        let e = msg(matmul(GgmlDType::Q4_1, &w, n, k, &x, m, &mut out[1..], p));
        assert!(e.contains("out has"), "{e}");
        let e = msg(matmul(GgmlDType::F32, &w, n, k, &x, m, &mut out, p));
        assert!(e.contains("unsupported block type"), "{e}");
        let e = msg(matmul(GgmlDType::Q4K, &w, n, k, &x, m, &mut out, p));
        assert!(e.contains("multiple of the block size 256"), "{e}");
        assert!(supported(GgmlDType::Q4K) && !supported(GgmlDType::Q6K));
        Ok(())
    }

    #[test]
    fn isa_above_the_cpu_is_an_error() -> crate::Result<()> {
        let best = *Isa::available().last().expect("scalar");
        if best == Isa::Avx512 {
            return Ok(());
        }
        let (w, _) = weights(GgmlDType::Q8_0, 4, 32, 0)?;
        let mut out = vec![0f32; 4];
        let e = matmul_with(
            Isa::Avx512,
            GgmlDType::Q8_0,
            &w,
            4,
            32,
            &[1.0; 32],
            1,
            &mut out,
            Precision::Int8,
        )
        .expect_err("should fail");
        assert!(e.to_string().contains("cannot run"), "{e}");
        Ok(())
    }
}
