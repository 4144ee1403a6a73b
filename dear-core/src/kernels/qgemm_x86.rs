//! The x86-64 kernels of `qgemm`: all of its `unsafe` code.
//!
//! Entry points are safe: each takes a CPU token ([`Avx512`] / [`Avx2`]) that can only
//! be made after run-time feature detection, checks every length the kernels rely on
//! (panicking on a violated invariant, which would be a bug in `qgemm`), and only then
//! calls the `#[target_feature]` functions, which read through raw pointers.

use std::arch::x86_64::*;

use super::{
    block_scale, scale_min_k4, Acts, DecodeActs, Format, Isa, OutBlock, PanelKind, Precision,
    Problem, RowsMut, Tile, TileMut, DECODE_MAX_ROWS, NR, QK,
};

/// Rows per AVX-512 micro-tile (× [`NR`] = 32 columns: 2 × 6 i32 block sums and
/// 2 × 6 f32 totals in registers).
pub(super) const AVX512_MR: usize = 4;
/// Rows per AVX2 micro-tile (× 16 columns).
pub(super) const AVX2_MR: usize = 3;

/// Proof that this CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx512(());

impl Avx512 {
    pub(super) fn new() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then_some(Avx512(()))
    }
}

/// Proof that this CPU has AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

impl Avx2 {
    pub(super) fn new() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then_some(Avx2(()))
    }
}

// ---------------------------------------------------------------------------------
// Portable loops compiled with the features on.

/// Checks the lengths `quantize_rows_*` rely on; returns the number of rows.
fn check_rows(rows: &RowsMut<'_>) -> usize {
    let (k, lda) = (rows.k, rows.lda);
    assert!(k.is_multiple_of(QK) && lda >= k && rows.x.len().is_multiple_of(k.max(1)));
    let m = rows.x.len().checked_div(k).unwrap_or(0);
    let nb = k / QK;
    assert!(rows.s.len() == m * nb && rows.sa.len() == m * nb && rows.sum.len() == m * nb);
    assert!(rows.qh.is_empty() || rows.qh.len() == m * lda);
    assert!(rows.ql.is_empty() || rows.ql.len() == m * lda);
    assert!(rows.a16.is_empty() || rows.a16.len() == m * lda);
    m
}

/// `qgemm::quantize_rows` with explicit AVX-512: the same IEEE operations (so the
/// same results for finite inputs), 16 values per instruction.
///
/// # Safety
/// The CPU has the enabled features; `rows` passed [`check_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quantize_rows_avx512(precision: Precision, rows: RowsMut<'_>, m: usize) {
    let (k, lda, nb) = (rows.k, rows.lda, rows.k / QK);
    let int16 = precision == Precision::Int16;
    let (lim, scale_mul, s_mul) = precision.rounding();
    let magic = _mm512_set1_ps(super::ROUND_MAGIC);
    let (hi_lim, lo_lim) = (_mm512_set1_epi32(lim), _mm512_set1_epi32(-lim));
    let half = _mm512_set1_epi32(128);
    for r in 0..m {
        for b in 0..nb {
            let xp = rows.x.as_ptr().add(r * k + b * QK);
            let x0 = _mm512_loadu_ps(xp);
            let x1 = _mm512_loadu_ps(xp.add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            let (dx, id) = block_scale(amax);
            let idv = _mm512_set1_ps(id * scale_mul);
            let quant = |x: __m512| {
                let v = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, idv), magic), magic);
                _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(v), hi_lim), lo_lim)
            };
            let (i0, i1) = (quant(x0), quant(x1));
            let total = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
            let sv = dx * s_mul;
            *rows.s.get_unchecked_mut(r * nb + b) = sv;
            *rows.sum.get_unchecked_mut(r * nb + b) = total;
            *rows.sa.get_unchecked_mut(r * nb + b) = sv * total as f32;
            let at = r * lda + b * QK;
            if !rows.qh.is_empty() {
                let (h0, h1) = if int16 {
                    let h0 = _mm512_srai_epi32::<8>(_mm512_add_epi32(i0, half));
                    let h1 = _mm512_srai_epi32::<8>(_mm512_add_epi32(i1, half));
                    let l0 = _mm512_sub_epi32(i0, _mm512_slli_epi32::<8>(h0));
                    let l1 = _mm512_sub_epi32(i1, _mm512_slli_epi32::<8>(h1));
                    let lp = rows.ql.as_mut_ptr().add(at);
                    _mm_storeu_si128(lp.cast(), _mm512_cvtepi32_epi8(l0));
                    _mm_storeu_si128(lp.add(16).cast(), _mm512_cvtepi32_epi8(l1));
                    (h0, h1)
                } else {
                    (i0, i1)
                };
                let hp = rows.qh.as_mut_ptr().add(at);
                _mm_storeu_si128(hp.cast(), _mm512_cvtepi32_epi8(h0));
                _mm_storeu_si128(hp.add(16).cast(), _mm512_cvtepi32_epi8(h1));
            }
            if !rows.a16.is_empty() {
                let wp = rows.a16.as_mut_ptr().add(at);
                _mm256_storeu_si256(wp.cast(), _mm512_cvtepi32_epi16(i0));
                _mm256_storeu_si256(wp.add(16).cast(), _mm512_cvtepi32_epi16(i1));
            }
        }
    }
}

/// [`quantize_rows_avx512`] with AVX2, 8 values per instruction.
///
/// # Safety
/// The CPU has the enabled features; `rows` passed [`check_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_rows_avx2(precision: Precision, rows: RowsMut<'_>, m: usize) {
    let (k, lda, nb) = (rows.k, rows.lda, rows.k / QK);
    let int16 = precision == Precision::Int16;
    let (lim, scale_mul, s_mul) = precision.rounding();
    let magic = _mm256_set1_ps(super::ROUND_MAGIC);
    let (hi_lim, lo_lim) = (_mm256_set1_epi32(lim), _mm256_set1_epi32(-lim));
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    for r in 0..m {
        for b in 0..nb {
            let xp = rows.x.as_ptr().add(r * k + b * QK);
            let xs: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xp.add(8 * i)));
            let mut am = _mm256_and_ps(xs[0], abs_mask);
            for x in &xs[1..] {
                am = _mm256_max_ps(am, _mm256_and_ps(*x, abs_mask));
            }
            let am4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps::<1>(am));
            let am4 = _mm_max_ps(am4, _mm_movehl_ps(am4, am4));
            let amax = _mm_cvtss_f32(_mm_max_ss(am4, _mm_movehdup_ps(am4)));
            let (dx, id) = block_scale(amax);
            let idv = _mm256_set1_ps(id * scale_mul);
            let ints: [__m256i; 4] = std::array::from_fn(|i| {
                let v = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xs[i], idv), magic), magic);
                _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(v), hi_lim), lo_lim)
            });
            let mut vals = [0i32; QK];
            for (i, v) in ints.iter().enumerate() {
                _mm256_storeu_si256(vals.as_mut_ptr().add(8 * i).cast(), *v);
            }
            let total: i32 = vals.iter().sum();
            let sv = dx * s_mul;
            *rows.s.get_unchecked_mut(r * nb + b) = sv;
            *rows.sum.get_unchecked_mut(r * nb + b) = total;
            *rows.sa.get_unchecked_mut(r * nb + b) = sv * total as f32;
            let at = r * lda + b * QK;
            if !rows.qh.is_empty() {
                let qh = rows.qh.get_unchecked_mut(at..at + QK);
                if int16 {
                    let ql = rows.ql.get_unchecked_mut(at..at + QK);
                    for ((h, l), v) in qh.iter_mut().zip(ql.iter_mut()).zip(&vals) {
                        let hi = (*v + 128) >> 8;
                        *h = hi as i8;
                        *l = (*v - (hi << 8)) as i8;
                    }
                } else {
                    for (h, v) in qh.iter_mut().zip(&vals) {
                        *h = *v as i8;
                    }
                }
            }
            if !rows.a16.is_empty() {
                for (w, v) in rows
                    .a16
                    .get_unchecked_mut(at..at + QK)
                    .iter_mut()
                    .zip(&vals)
                {
                    *w = *v as i16;
                }
            }
        }
    }
}

/// `qgemm::quantize_rows` at `isa` (the same results for finite inputs).
pub(super) fn quantize_rows(isa: Isa, precision: Precision, rows: RowsMut<'_>) {
    let m = check_rows(&rows);
    if isa == Isa::Avx512 && Avx512::new().is_some() {
        // SAFETY: the CPU has the enabled features (checked just above); `check_rows`
        // checked every length the loop reads and writes.
        unsafe { quantize_rows_avx512(precision, rows, m) }
    } else if Avx2::new().is_some() {
        // SAFETY: as above, for AVX2/FMA/F16C.
        unsafe { quantize_rows_avx2(precision, rows, m) }
    } else {
        super::quantize_rows(precision, rows)
    }
}

/// The `q` of 32-value block `b` of a weight row, in order, with its `d` and `mn`
/// (computed as `qgemm::unpack_block` does, so the same f32 values).
///
/// # Safety
/// The CPU has the enabled features; `row` holds a whole weight row of `fmt` with
/// more than `b` 32-value blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_q(fmt: Format, row: *const u8, b: usize) -> (__m256i, f32, f32) {
    let nibbles = _mm256_set1_epi8(0x0F);
    let expand =
        |x: __m128i| _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(x), x), nibbles);
    match fmt {
        Format::Q4_0 => {
            let blk = row.add(b * 18);
            let d = f16_to_f32(blk.cast::<u16>().read_unaligned());
            (expand(_mm_loadu_si128(blk.add(2).cast())), d, -8.0 * d)
        }
        Format::Q4_1 => {
            let blk = row.add(b * 20);
            let d = f16_to_f32(blk.cast::<u16>().read_unaligned());
            let m = f16_to_f32(blk.add(2).cast::<u16>().read_unaligned());
            (expand(_mm_loadu_si128(blk.add(4).cast())), d, m)
        }
        Format::Q8_0 => {
            let blk = row.add(b * 34);
            let d = f16_to_f32(blk.cast::<u16>().read_unaligned());
            let q = _mm256_xor_si256(
                _mm256_loadu_si256(blk.add(2).cast()),
                _mm256_set1_epi8(-128),
            );
            (q, d, -128.0 * d)
        }
        Format::Q4K => {
            let blk = row.add(b / 8 * 144);
            let j = b % 8;
            let d = f16_to_f32(blk.cast::<u16>().read_unaligned());
            let dmin = f16_to_f32(blk.add(2).cast::<u16>().read_unaligned());
            let (sc, m) = scale_min_k4(j, std::slice::from_raw_parts(blk.add(4), 12));
            let y = _mm256_loadu_si256(blk.add(16 + 32 * (j / 2)).cast());
            let q = if j.is_multiple_of(2) {
                _mm256_and_si256(y, nibbles)
            } else {
                _mm256_and_si256(_mm256_srli_epi16::<4>(y), nibbles)
            };
            (q, d * sc as f32, -(dmin * m as f32))
        }
    }
}

/// Transposes 4 rows of 8 dwords: returns `o` with `o[g]` = dword `g` of each row for
/// `g` in 0..4 in the low 128 bits and `g + 4` in the high 128 bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose4x8(r: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// Stores the 4×8 transpose of `r` as 8 words of 4 columns: word `g` of the 4 rows at
/// `dst + (g0 + g) · NR`.
///
/// # Safety
/// `dst` valid for writes of 4 words at each of those 8 places.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_transposed(r: [__m256i; 4], dst: *mut u32, g0: usize) {
    let o = transpose4x8(r);
    for (g, v) in o.iter().enumerate() {
        _mm_storeu_si128(dst.add((g0 + g) * NR).cast(), _mm256_castsi256_si128(*v));
        _mm_storeu_si128(
            dst.add((g0 + g + 4) * NR).cast(),
            _mm256_extracti128_si256::<1>(*v),
        );
    }
}

/// `qgemm::unpack_tile` with AVX2: 4 columns × one block at a time, transposed in
/// registers into the panel layout.
///
/// # Safety
/// The CPU has the enabled features; `tile` passed the checks of [`unpack_tile`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_tile_simd(p: &Problem<'_>, tile: TileMut<'_>) {
    let nb = p.k / QK;
    let valid = tile.cols.len();
    let words = tile.words.as_mut_ptr();
    for c4 in (0..NR).step_by(4) {
        let mut rows = [std::ptr::null::<u8>(); 4];
        for (i, r) in rows.iter_mut().enumerate() {
            if c4 + i < valid {
                *r = p.w.as_ptr().add((tile.cols.start + c4 + i) * p.row_bytes);
            }
        }
        for b in 0..nb {
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                let (mut d, mut mn) = (0.0, 0.0);
                if !rows[i].is_null() {
                    (q[i], d, mn) = block_q(p.fmt, rows[i], b);
                }
                *tile.d.get_unchecked_mut(b * NR + c4 + i) = d;
                *tile.mn.get_unchecked_mut(b * NR + c4 + i) = mn;
            }
            let dst = words.add(c4);
            match tile.kind {
                PanelKind::U8x4 => store_transposed(q, dst, b * 8),
                PanelKind::I16x2 => {
                    let lo = q.map(|v| _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)));
                    let hi = q.map(|v| _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v)));
                    store_transposed(lo, dst, b * 16);
                    store_transposed(hi, dst, b * 16 + 8);
                }
            }
        }
    }
}

/// Unpacks `tile` (SIMD when the CPU has AVX2, else the portable loop).
pub(super) fn unpack_tile(p: &Problem<'_>, tile: TileMut<'_>) {
    let nb = p.k / QK;
    assert!(
        p.k.is_multiple_of(p.fmt.block_values()) && tile.cols.len() <= NR && tile.cols.end <= p.n
    );
    assert!(
        p.w.len() == p.n * p.row_bytes
            && p.row_bytes == p.k / p.fmt.block_values() * p.fmt.block_bytes()
    );
    assert_eq!(tile.words.len(), p.k / tile.kind.k_per_word() * NR);
    assert!(tile.d.len() == nb * NR && tile.mn.len() == nb * NR);
    if Avx2::new().is_some() {
        // SAFETY: the CPU has the enabled features (checked just above); the asserts
        // give whole weight rows for `tile.cols` and a tile buffer of `k / 32` blocks
        // × `NR` columns (8 or 16 words per block and column).
        unsafe { unpack_tile_simd(p, tile) }
    } else {
        super::unpack_tile(p, tile)
    }
}

// ---------------------------------------------------------------------------------
// Many rows: micro-tiles against unpacked panels.

/// What one micro-tile call reads; every pointer is valid for the reads described
/// (established by [`check_gemm`] and the tile buffer in [`for_each_tile`]).
struct TileArgs {
    /// The tile's panel: `nb · steps` rows of [`NR`] words.
    words: *const u32,
    /// The tile's `d` and `mn`: `nb` rows of [`NR`] f32.
    d: *const f32,
    mn: *const f32,
    /// The first row's activation bytes (`qh` or `a16`); row `r` at `r · lda_bytes`.
    a: *const u8,
    lda_bytes: usize,
    /// The first row's `s`, `sa`, `sum`; row `r` at `r · nb`.
    s: *const f32,
    sa: *const f32,
    sum: *const i32,
    nb: usize,
    /// `c` of [`Format::offset`] (used when the format has one).
    bias_c: i32,
}

/// Validated geometry of one [`OutBlock`] for the many-row kernels.
struct GemmBlock {
    /// The tiles the block's columns span.
    tile0: usize,
    tile1: usize,
    /// Columns of the block (every row slice has this length).
    width: usize,
    /// The activation plane (`qh` or `a16`) as bytes and its row stride in bytes.
    a: *const u8,
    lda_bytes: usize,
}

/// Checks everything the micro-tiles rely on. Panics (a bug in `qgemm`) otherwise.
fn check_gemm(p: &Problem<'_>, kind: PanelKind, acts: &Acts, blk: &OutBlock<'_>) -> GemmBlock {
    let (nb, lda) = (acts.nb, acts.lda);
    assert!(p.k == acts.k && p.k.is_multiple_of(QK) && lda >= p.k && nb * QK == p.k);
    let (a, lda_bytes) = match kind {
        PanelKind::U8x4 => {
            assert_eq!(acts.qh.len(), acts.m * lda);
            (acts.qh.as_ptr().cast::<u8>(), lda)
        }
        PanelKind::I16x2 => {
            assert_eq!(acts.a16.len(), acts.m * lda);
            (acts.a16.as_ptr().cast::<u8>(), 2 * lda)
        }
    };
    assert!(acts.s.len() == acts.m * nb && acts.sa.len() == acts.m * nb);
    assert_eq!(acts.sum.len(), acts.m * nb);
    assert!(blk.row0 + blk.rows.len() <= acts.m);
    let width = blk.rows.first().map_or(0, |r| r.len());
    assert!(blk.rows.iter().all(|r| r.len() == width));
    assert!(blk.col0.is_multiple_of(NR) && blk.col0 + width <= p.n);
    GemmBlock {
        tile0: blk.col0 / NR,
        tile1: (blk.col0 + width).div_ceil(NR),
        width,
        a,
        lda_bytes,
    }
}

/// Unpacks every tile of the block in turn and runs
/// `kernel(args, rows, col_off, cols)` on each micro-tile of `mr` rows against it.
fn for_each_tile(
    p: &Problem<'_>,
    kind: PanelKind,
    acts: &Acts,
    mut blk: OutBlock<'_>,
    mr: usize,
    mut kernel: impl FnMut(&TileArgs, &mut [&mut [f32]], usize, usize),
) {
    let g = check_gemm(p, kind, acts, &blk);
    let nb = acts.nb;
    let mut tile = Tile::new(kind, p.k);
    for t in g.tile0..g.tile1 {
        let col_off = (t - g.tile0) * NR;
        let cols = (g.width - col_off).min(NR);
        unpack_tile(p, tile.fill(t * NR..t * NR + cols));
        for (si, strip) in blk.rows.chunks_mut(mr).enumerate() {
            let row = blk.row0 + si * mr;
            // In bounds: `row + strip.len() <= acts.m` (checked); the tile holds
            // `k / 32` blocks of `NR` columns.
            let args = TileArgs {
                words: tile.words.as_ptr(),
                d: tile.d.as_ptr(),
                mn: tile.mn.as_ptr(),
                a: g.a.wrapping_add(row * g.lda_bytes),
                lda_bytes: g.lda_bytes,
                s: acts.s[row * nb..].as_ptr(),
                sa: acts.sa[row * nb..].as_ptr(),
                sum: acts.sum[row * nb..].as_ptr(),
                nb,
                bias_c: p.fmt.offset().unwrap_or(0),
            };
            kernel(&args, strip, col_off, cols);
        }
    }
}

/// Lanes `0..valid` of a 16-lane mask.
fn mask16(valid: usize) -> u16 {
    if valid >= 16 {
        u16::MAX
    } else {
        (1u16 << valid) - 1
    }
}

/// One output block at AVX-512 (`vpdpbusd` on byte panels, `vpdpwssd` on 16-bit ones).
pub(super) fn gemm_avx512(
    _cpu: Avx512,
    p: &Problem<'_>,
    kind: PanelKind,
    acts: &Acts,
    blk: OutBlock<'_>,
) {
    let i16 = kind == PanelKind::I16x2;
    let mn = p.fmt.offset().is_none();
    for_each_tile(
        p,
        kind,
        acts,
        blk,
        AVX512_MR,
        |args, rows, col_off, cols| {
            macro_rules! go {
                ($mr:literal) => {
                    match (i16, mn) {
                        // SAFETY: `_cpu` proves the features; `for_each_tile` checked the
                        // reads of `args`, `rows` holds `$mr` slices with `col_off + cols`
                        // values and `cols <= NR` (stores are masked to `cols`).
                        (false, false) => unsafe {
                            gemm_tile_avx512::<$mr, false, false>(args, rows, col_off, cols)
                        },
                        // SAFETY: as above.
                        (false, true) => unsafe {
                            gemm_tile_avx512::<$mr, false, true>(args, rows, col_off, cols)
                        },
                        // SAFETY: as above.
                        (true, false) => unsafe {
                            gemm_tile_avx512::<$mr, true, false>(args, rows, col_off, cols)
                        },
                        // SAFETY: as above.
                        (true, true) => unsafe {
                            gemm_tile_avx512::<$mr, true, true>(args, rows, col_off, cols)
                        },
                    }
                };
            }
            match rows.len() {
                1 => go!(1),
                2 => go!(2),
                3 => go!(3),
                4 => go!(4),
                5 => go!(5),
                6 => go!(6),
                n => unreachable!("micro-tile of {n} rows"),
            }
        },
    );
}

/// `MR` rows × [`NR`] columns over the whole `k`.
///
/// Per 32-value block: i32 sums by `vpdpbusd` (`I16 = false`: 4 `k` per lane, 8 steps)
/// or `vpdpwssd` (`I16 = true`: 2 `k` per lane, 16 steps), started from `c · Σa` for
/// formats with a fixed offset (`MN = false`); then
/// `total += (f32(sum) · s) · d [+ mn · sa]`.
///
/// # Safety
/// The CPU has the enabled features; `args` is valid for `MR` rows (see [`TileArgs`]);
/// `rows.len() == MR`, every row has at least `col_off + cols` values, `cols <= NR`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemm_tile_avx512<const MR: usize, const I16: bool, const MN: bool>(
    args: &TileArgs,
    rows: &mut [&mut [f32]],
    col_off: usize,
    cols: usize,
) {
    let steps: usize = if I16 { 16 } else { 8 };
    let block_bytes: usize = if I16 { 64 } else { 32 };
    let nb = args.nb;
    let mut tot = [[_mm512_setzero_ps(); 2]; MR];
    for b in 0..nb {
        let mut acc = [[_mm512_setzero_si512(); 2]; MR];
        if !MN {
            for (r, acc) in acc.iter_mut().enumerate() {
                let v = _mm512_set1_epi32(args.bias_c * *args.sum.add(r * nb + b));
                *acc = [v, v];
            }
        }
        let wb = args.words.add(b * steps * NR);
        let ab = args.a.add(b * block_bytes);
        for g in 0..steps {
            let w0 = _mm512_loadu_si512(wb.add(g * NR).cast());
            let w1 = _mm512_loadu_si512(wb.add(g * NR + 16).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = ab
                    .add(r * args.lda_bytes + g * 4)
                    .cast::<i32>()
                    .read_unaligned();
                let av = _mm512_set1_epi32(x);
                if I16 {
                    acc[0] = _mm512_dpwssd_epi32(acc[0], w0, av);
                    acc[1] = _mm512_dpwssd_epi32(acc[1], w1, av);
                } else {
                    acc[0] = _mm512_dpbusd_epi32(acc[0], w0, av);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], w1, av);
                }
            }
        }
        let d0 = _mm512_loadu_ps(args.d.add(b * NR));
        let d1 = _mm512_loadu_ps(args.d.add(b * NR + 16));
        for r in 0..MR {
            let sv = _mm512_set1_ps(*args.s.add(r * nb + b));
            let t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][0]), sv);
            let t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][1]), sv);
            tot[r][0] = _mm512_fmadd_ps(t0, d0, tot[r][0]);
            tot[r][1] = _mm512_fmadd_ps(t1, d1, tot[r][1]);
        }
        if MN {
            let m0 = _mm512_loadu_ps(args.mn.add(b * NR));
            let m1 = _mm512_loadu_ps(args.mn.add(b * NR + 16));
            for (r, tot) in tot.iter_mut().enumerate() {
                let sav = _mm512_set1_ps(*args.sa.add(r * nb + b));
                tot[0] = _mm512_fmadd_ps(m0, sav, tot[0]);
                tot[1] = _mm512_fmadd_ps(m1, sav, tot[1]);
            }
        }
    }
    let (k0, k1) = (mask16(cols), mask16(cols.saturating_sub(16)));
    for (row, tot) in rows.iter_mut().zip(&tot) {
        let o = row.as_mut_ptr().add(col_off);
        _mm512_mask_storeu_ps(o, k0, tot[0]);
        _mm512_mask_storeu_ps(o.add(16), k1, tot[1]);
    }
}

/// One output block at AVX2 (`vpmaddubsw` on byte panels, `vpmaddwd` on 16-bit
/// ones), in two halves of 16 columns per tile.
pub(super) fn gemm_avx2(
    _cpu: Avx2,
    p: &Problem<'_>,
    kind: PanelKind,
    acts: &Acts,
    blk: OutBlock<'_>,
) {
    let i16 = kind == PanelKind::I16x2;
    let mn = p.fmt.offset().is_none();
    for_each_tile(p, kind, acts, blk, AVX2_MR, |args, rows, col_off, cols| {
        for half in 0..2 {
            if cols <= half * 16 {
                break;
            }
            macro_rules! go {
                ($mr:literal) => {
                    match (i16, mn) {
                        // SAFETY: `_cpu` proves the features; `for_each_tile` checked
                        // the reads of `args`; `rows` holds `$mr` slices with
                        // `col_off + cols` values, stores are masked to `cols`.
                        (false, false) => unsafe {
                            gemm_half_avx2::<$mr, false, false>(args, rows, col_off, cols, half)
                        },
                        // SAFETY: as above.
                        (false, true) => unsafe {
                            gemm_half_avx2::<$mr, false, true>(args, rows, col_off, cols, half)
                        },
                        // SAFETY: as above.
                        (true, false) => unsafe {
                            gemm_half_avx2::<$mr, true, false>(args, rows, col_off, cols, half)
                        },
                        // SAFETY: as above.
                        (true, true) => unsafe {
                            gemm_half_avx2::<$mr, true, true>(args, rows, col_off, cols, half)
                        },
                    }
                };
            }
            match rows.len() {
                1 => go!(1),
                2 => go!(2),
                3 => go!(3),
                n => unreachable!("micro-tile of {n} rows"),
            }
        }
    });
}

/// Lanes `0..valid` of an 8-lane mask for `vmaskmovps`.
#[target_feature(enable = "avx2,fma,f16c")]
fn mask8(valid: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.min(8) as i32), lanes)
}

/// `MR` rows × columns `16·half .. 16·half + 16` of a tile (2 × 8-lane vectors).
///
/// Byte panels (`I16 = false`, q4 formats at Int8 only): `vpmaddubsw` pairs summed in
/// i16 over the block (≤ 8 · 2 · 15 · 127 = 30480, no saturation), widened by
/// `vpmaddwd` with ones. 16-bit panels: `vpmaddwd` into i32.
///
/// # Safety
/// As [`gemm_tile_avx512`], for AVX2/FMA/F16C, with `cols > 16 · half`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_half_avx2<const MR: usize, const I16: bool, const MN: bool>(
    args: &TileArgs,
    rows: &mut [&mut [f32]],
    col_off: usize,
    cols: usize,
    half: usize,
) {
    let steps: usize = if I16 { 16 } else { 8 };
    let block_bytes: usize = if I16 { 64 } else { 32 };
    let nb = args.nb;
    let c0 = half * 16;
    let ones = _mm256_set1_epi16(1);
    let mut tot = [[_mm256_setzero_ps(); 2]; MR];
    for b in 0..nb {
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let wb = args.words.add(b * steps * NR + c0);
        let ab = args.a.add(b * block_bytes);
        for g in 0..steps {
            let w0 = _mm256_loadu_si256(wb.add(g * NR).cast());
            let w1 = _mm256_loadu_si256(wb.add(g * NR + 8).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = ab
                    .add(r * args.lda_bytes + g * 4)
                    .cast::<i32>()
                    .read_unaligned();
                let av = _mm256_set1_epi32(x);
                if I16 {
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(w0, av));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(w1, av));
                } else {
                    acc[0] = _mm256_add_epi16(acc[0], _mm256_maddubs_epi16(w0, av));
                    acc[1] = _mm256_add_epi16(acc[1], _mm256_maddubs_epi16(w1, av));
                }
            }
        }
        let d0 = _mm256_loadu_ps(args.d.add(b * NR + c0));
        let d1 = _mm256_loadu_ps(args.d.add(b * NR + c0 + 8));
        for r in 0..MR {
            let mut a0 = acc[r][0];
            let mut a1 = acc[r][1];
            if !I16 {
                a0 = _mm256_madd_epi16(a0, ones);
                a1 = _mm256_madd_epi16(a1, ones);
            }
            if !MN {
                let bias = _mm256_set1_epi32(args.bias_c * *args.sum.add(r * nb + b));
                a0 = _mm256_add_epi32(a0, bias);
                a1 = _mm256_add_epi32(a1, bias);
            }
            let sv = _mm256_set1_ps(*args.s.add(r * nb + b));
            let t0 = _mm256_mul_ps(_mm256_cvtepi32_ps(a0), sv);
            let t1 = _mm256_mul_ps(_mm256_cvtepi32_ps(a1), sv);
            tot[r][0] = _mm256_fmadd_ps(t0, d0, tot[r][0]);
            tot[r][1] = _mm256_fmadd_ps(t1, d1, tot[r][1]);
        }
        if MN {
            let m0 = _mm256_loadu_ps(args.mn.add(b * NR + c0));
            let m1 = _mm256_loadu_ps(args.mn.add(b * NR + c0 + 8));
            for (r, tot) in tot.iter_mut().enumerate() {
                let sav = _mm256_set1_ps(*args.sa.add(r * nb + b));
                tot[0] = _mm256_fmadd_ps(m0, sav, tot[0]);
                tot[1] = _mm256_fmadd_ps(m1, sav, tot[1]);
            }
        }
    }
    let valid = cols - c0;
    let (k0, k1) = (mask8(valid), mask8(valid.saturating_sub(8)));
    for (row, tot) in rows.iter_mut().zip(&tot) {
        let o = row.as_mut_ptr().add(col_off + c0);
        _mm256_maskstore_ps(o, k0, tot[0]);
        _mm256_maskstore_ps(o.add(8), k1, tot[1]);
    }
}

// ---------------------------------------------------------------------------------
// Few rows: direct dots over the packed blocks.

const F_Q4_0: u8 = 0;
const F_Q4_1: u8 = 1;
const F_Q8_0: u8 = 2;
const F_Q4K: u8 = 3;

fn format_id(fmt: Format) -> u8 {
    match fmt {
        Format::Q4_0 => F_Q4_0,
        Format::Q4_1 => F_Q4_1,
        Format::Q8_0 => F_Q8_0,
        Format::Q4K => F_Q4K,
    }
}

/// Checks the weight rows `col0..col0 + width` a decoding block reads; returns
/// `width`.
fn check_decode(p: &Problem<'_>, acts: &Acts, blk: &OutBlock<'_>) -> usize {
    assert!(p.k == acts.k && p.k.is_multiple_of(p.fmt.block_values()) && acts.nb * QK == p.k);
    assert_eq!(
        p.row_bytes,
        p.k / p.fmt.block_values() * p.fmt.block_bytes()
    );
    assert!(blk.row0 == 0 && blk.rows.len() == acts.m);
    let width = blk.rows.first().map_or(0, |r| r.len());
    assert!(blk.rows.iter().all(|r| r.len() == width));
    assert!(blk.col0 + width <= p.n && p.w.len() == p.n * p.row_bytes);
    assert!(acts.lda >= acts.nb.div_ceil(2) * 64);
    assert!(acts.s.len() == acts.m * acts.nb && acts.sa.len() == acts.m * acts.nb);
    width
}

/// Row pointers for the AVX2 decoding kernels.
struct DecodeArgs<const M: usize> {
    /// The first weight row of the block; row `j` at `j · row_bytes`.
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    /// Per activation row: a plane (`qh`, or `a16` for 16-bit words) and the
    /// per-block `s` and `sa`.
    a: [*const u8; M],
    s: [*const f32; M],
    sa: [*const f32; M],
}

/// What the AVX-512 decoding kernels read (see `DecodeActs`): valid for `width`
/// weight rows and `M` activation rows (established in [`decode_avx512`]).
struct Decode512Args<const M: usize> {
    /// The first weight row of the block; row `j` at `j · row_bytes`.
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    groups: usize,
    /// Per activation row: `groups · 128` bytes of `qh` (and `ql`, Int16).
    a: [*const i8; M],
    al: [*const i8; M],
    /// Per activation row: `groups · 32` lane scales and lane `sa`.
    s: [*const f32; M],
    sa: [*const f32; M],
    /// Per activation row: `groups · 16` lane biases.
    bias: [*const i32; M],
}

/// One decoding block at AVX-512: four 32-value blocks (two 512-bit vectors of
/// weights) per step, every activation row against them.
pub(super) fn decode_avx512(
    _cpu: Avx512,
    p: &Problem<'_>,
    acts: &Acts,
    lanes: &DecodeActs,
    mut blk: OutBlock<'_>,
) {
    let width = check_decode(p, acts, &blk);
    let (m, g) = (acts.m, lanes.groups);
    let int16 = acts.precision == Precision::Int16;
    assert!((1..=DECODE_MAX_ROWS).contains(&m) && g * 4 >= acts.nb && g * 128 >= p.k);
    assert_eq!(lanes.a.len(), m * g * 128);
    assert!(!int16 || lanes.al.len() == m * g * 128);
    assert!(lanes.s.len() == m * g * 32 && lanes.sa.len() == m * g * 32);
    assert_eq!(lanes.bias.len(), m * g * 16);
    if p.fmt == Format::Q4K {
        assert!(acts.nb.is_multiple_of(8) && g * 4 == acts.nb);
    }
    let w = p.w[blk.col0 * p.row_bytes..].as_ptr();
    macro_rules! go {
        ($m:literal) => {{
            let args = Decode512Args::<$m> {
                w,
                row_bytes: p.row_bytes,
                nb: acts.nb,
                groups: g,
                a: std::array::from_fn(|r| lanes.a[r * g * 128..].as_ptr()),
                al: std::array::from_fn(|r| {
                    if int16 {
                        lanes.al[r * g * 128..].as_ptr()
                    } else {
                        std::ptr::null()
                    }
                }),
                s: std::array::from_fn(|r| lanes.s[r * g * 32..].as_ptr()),
                sa: std::array::from_fn(|r| lanes.sa[r * g * 32..].as_ptr()),
                bias: std::array::from_fn(|r| lanes.bias[r * g * 16..].as_ptr()),
            };
            let rows = &mut blk.rows[..];
            // SAFETY: `_cpu` proves the features. `check_decode` and the asserts above
            // guarantee: `width` weight rows of `row_bytes` from `w` (q4_K: whole
            // groups of 4 sub-blocks); per activation row `128 · groups` bytes of `qh`
            // (and `ql` for Int16), `32 · groups` lane scales, `16 · groups` biases;
            // `rows` = `$m` slices of `width` values.
            unsafe {
                match (format_id(p.fmt), int16) {
                    (F_Q4_0, false) => decode_avx512_rows::<$m, F_Q4_0, false>(&args, rows, width),
                    (F_Q4_0, true) => decode_avx512_rows::<$m, F_Q4_0, true>(&args, rows, width),
                    (F_Q4_1, false) => decode_avx512_rows::<$m, F_Q4_1, false>(&args, rows, width),
                    (F_Q4_1, true) => decode_avx512_rows::<$m, F_Q4_1, true>(&args, rows, width),
                    (F_Q8_0, false) => decode_avx512_rows::<$m, F_Q8_0, false>(&args, rows, width),
                    (F_Q8_0, true) => decode_avx512_rows::<$m, F_Q8_0, true>(&args, rows, width),
                    (_, false) => decode_avx512_rows::<$m, F_Q4K, false>(&args, rows, width),
                    (_, true) => decode_avx512_rows::<$m, F_Q4K, true>(&args, rows, width),
                }
            }
        }};
    }
    match m {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        _ => go!(4),
    }
}

/// Lane `l` takes element `idx[l / 4]` (or `l / 8` for [`pair_index`]): spreads a few
/// scalars over the lanes of their blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quad_index(a: i32, b: i32, c: i32, d: i32) -> __m512i {
    _mm512_setr_epi32(a, a, a, a, b, b, b, b, c, c, c, c, d, d, d, d)
}

/// Two f16 values (little-endian halves of `bits`) as f32 in lanes 0 and 1.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16x2(bits: u32) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

/// Lanes 0–7 take element `lo`, 8–15 element `hi`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pair_index(lo: i32, hi: i32) -> __m512i {
    _mm512_setr_epi32(
        lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi,
    )
}

/// The integer dot of one half-pair of weight vectors with a row's planes:
/// `Σ q·qh` (Int8) or `256 · Σ q·qh + Σ q·ql` (Int16), started from `init`.
///
/// # Safety
/// The CPU has the enabled features; `a` (and `al` for Int16) valid for 64 bytes at
/// `at` (and at `at2` when `TWO`), per the caller.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn vnni_dot<const P16: bool>(
    init: __m512i,
    w0: __m512i,
    w1: Option<__m512i>,
    a: *const i8,
    al: *const i8,
) -> __m512i {
    let hi_init = if P16 { _mm512_setzero_si512() } else { init };
    let mut h = _mm512_dpbusd_epi32(hi_init, w0, _mm512_loadu_si512(a.cast()));
    if let Some(w1) = w1 {
        h = _mm512_dpbusd_epi32(h, w1, _mm512_loadu_si512(a.add(64).cast()));
    }
    if !P16 {
        return h;
    }
    let mut l = _mm512_dpbusd_epi32(init, w0, _mm512_loadu_si512(al.cast()));
    if let Some(w1) = w1 {
        l = _mm512_dpbusd_epi32(l, w1, _mm512_loadu_si512(al.add(64).cast()));
    }
    _mm512_add_epi32(_mm512_slli_epi32::<8>(h), l)
}

/// The weights of `n` (1..=4) blocks of q4_0 / q4_1 / q8_0 at `b0` (block stride
/// `bb`): the two vectors of `q` in the quad layout of `DecodeActs` (missing blocks
/// are zeros), their `d` over their lanes, and for q4_1 their `m`.
///
/// # Safety
/// The CPU has the enabled features; `n` whole blocks at `b0`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quad_weights<const F: u8>(
    b0: *const u8,
    bb: usize,
    n: usize,
) -> (__m512i, __m512i, __m512, __m512) {
    let ld = |j: usize, off: usize| {
        if j < n {
            _mm_loadu_si128(b0.add(j * bb + off).cast())
        } else {
            _mm_setzero_si128()
        }
    };
    let gather = |off: usize| {
        let z = _mm512_castsi128_si512(ld(0, off));
        let z = _mm512_inserti32x4::<1>(z, ld(1, off));
        let z = _mm512_inserti32x4::<2>(z, ld(2, off));
        _mm512_inserti32x4::<3>(z, ld(3, off))
    };
    let (w0, w1) = if F == F_Q8_0 {
        let flip = _mm512_set1_epi8(-128);
        (
            _mm512_xor_si512(gather(2), flip),
            _mm512_xor_si512(gather(18), flip),
        )
    } else {
        let z = gather(if F == F_Q4_0 { 2 } else { 4 });
        let nibbles = _mm512_set1_epi8(0x0F);
        (
            _mm512_and_si512(z, nibbles),
            _mm512_and_si512(_mm512_srli_epi16::<4>(z), nibbles),
        )
    };
    if F == F_Q4_1 {
        let h = |j: usize| {
            if j < n {
                b0.add(j * bb).cast::<u32>().read_unaligned() as i32
            } else {
                0
            }
        };
        // [d0, m0, d1, m1, d2, m2, d3, m3]
        let dm = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_set_epi32(h(3), h(2), h(1), h(0))));
        let dv = _mm512_permutexvar_ps(quad_index(0, 2, 4, 6), dm);
        let mv = _mm512_permutexvar_ps(quad_index(1, 3, 5, 7), dm);
        (w0, w1, dv, mv)
    } else {
        let h = |j: usize| {
            if j < n {
                b0.add(j * bb).cast::<u16>().read_unaligned() as i16
            } else {
                0
            }
        };
        let d4 = _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, h(3), h(2), h(1), h(0)));
        let dv = _mm512_permutexvar_ps(quad_index(0, 1, 2, 3), _mm512_castps128_ps512(d4));
        (w0, w1, dv, _mm512_setzero_ps())
    }
}

/// Weight rows are prefetched this far ahead of the row being dotted: one row is a
/// few hundred cycles of work, a little less than a trip to memory.
const PREFETCH_ROWS: usize = 4;

/// Asks for row `j` of the `row_bytes`-byte rows at `w` to be brought into L1 (a hint:
/// never faults, so `j` may be one past the end).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_row(w: *const u8, j: usize, row_bytes: usize) {
    let row = w.wrapping_add(j * row_bytes);
    for line in (0..row_bytes).step_by(64) {
        // A hint: reads nothing architecturally and cannot fault, whatever the address.
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(line).cast());
    }
}

/// `width` weight rows × `M` activation rows, the weights expanded in registers.
///
/// # Safety
/// See the call in [`decode_avx512`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn decode_avx512_rows<const M: usize, const F: u8, const P16: bool>(
    args: &Decode512Args<M>,
    rows: &mut [&mut [f32]],
    width: usize,
) {
    let nb = args.nb;
    let bb: usize = match F {
        F_Q4_0 => 18,
        F_Q4_1 => 20,
        F_Q8_0 => 34,
        _ => 144,
    };
    let nibbles = _mm512_set1_epi8(0x0F);
    for j in 0..width {
        let row = args.w.add(j * args.row_bytes);
        prefetch_row(args.w, (j + PREFETCH_ROWS).min(width), args.row_bytes);
        let mut tot = [_mm512_setzero_ps(); M];
        let mut tot2 = [_mm512_setzero_ps(); M];
        let mut tot_m = [_mm512_setzero_ps(); M];
        if F == F_Q4K {
            for sb in 0..nb / 8 {
                let blk = row.add(sb * 144);
                let dm = f16x2(blk.cast::<u32>().read_unaligned());
                let d = _mm512_set1_ps(_mm_cvtss_f32(dm));
                let dmin = _mm512_set1_ps(-_mm_cvtss_f32(_mm_movehdup_ps(dm)));
                // ggml's unpacking of the 12 scale bytes into 8 scales and 8 minimums
                // (the same values as `scale_min_k4`).
                let sp = blk.add(4);
                let u0 = sp.cast::<u32>().read_unaligned();
                let u1 = sp.add(4).cast::<u32>().read_unaligned();
                let u2 = sp.add(8).cast::<u32>().read_unaligned();
                const K1: u32 = 0x3f3f_3f3f;
                const K2: u32 = 0x0f0f_0f0f;
                const K3: u32 = 0x0303_0303;
                let sc_lo = u0 & K1;
                let sc_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
                let m_lo = u1 & K1;
                let m_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
                let sm = _mm_set_epi32(m_hi as i32, m_lo as i32, sc_hi as i32, sc_lo as i32);
                // Lanes 0–7: d · sc; 8–15: −dmin · m (as `d·sc` and `−(dmin·m)`).
                let f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sm));
                let dd = _mm512_mul_ps(f, _mm512_mask_blend_ps(0xFF00, d, dmin));
                for h in 0..2 {
                    let q = _mm512_loadu_si512(blk.add(16 + 64 * h).cast());
                    let w_lo = _mm512_and_si512(q, nibbles);
                    let w_hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), nibbles);
                    let s0 = 4 * h as i32;
                    let dv_lo = _mm512_permutexvar_ps(pair_index(s0, s0 + 2), dd);
                    let dv_hi = _mm512_permutexvar_ps(pair_index(s0 + 1, s0 + 3), dd);
                    let mv_lo = _mm512_permutexvar_ps(pair_index(s0 + 8, s0 + 10), dd);
                    let mv_hi = _mm512_permutexvar_ps(pair_index(s0 + 9, s0 + 11), dd);
                    let grp = sb * 2 + h;
                    for r in 0..M {
                        let (a, al) =
                            (args.a[r].add(grp * 128), args.al[r].wrapping_add(grp * 128));
                        let zero = _mm512_setzero_si512();
                        let s_lo = vnni_dot::<P16>(zero, w_lo, None, a, al);
                        let s_hi =
                            vnni_dot::<P16>(zero, w_hi, None, a.add(64), al.wrapping_add(64));
                        let sc = args.s[r].add(grp * 32);
                        let sa = args.sa[r].add(grp * 32);
                        let t_lo = _mm512_mul_ps(_mm512_cvtepi32_ps(s_lo), _mm512_loadu_ps(sc));
                        let t_hi =
                            _mm512_mul_ps(_mm512_cvtepi32_ps(s_hi), _mm512_loadu_ps(sc.add(16)));
                        tot[r] = _mm512_fmadd_ps(t_lo, dv_lo, tot[r]);
                        tot2[r] = _mm512_fmadd_ps(t_hi, dv_hi, tot2[r]);
                        tot_m[r] = _mm512_fmadd_ps(mv_lo, _mm512_loadu_ps(sa), tot_m[r]);
                        tot_m[r] = _mm512_fmadd_ps(mv_hi, _mm512_loadu_ps(sa.add(16)), tot_m[r]);
                    }
                }
            }
        } else {
            for grp in 0..args.groups {
                let n = (nb - grp * 4).min(4);
                let (w0, w1, dv, mv) = quad_weights::<F>(row.add(grp * 4 * bb), bb, n);
                for r in 0..M {
                    let init = if F == F_Q4_1 {
                        _mm512_setzero_si512()
                    } else {
                        _mm512_loadu_si512(args.bias[r].add(grp * 16).cast())
                    };
                    let a = args.a[r].add(grp * 128);
                    let al = args.al[r].wrapping_add(grp * 128);
                    let sum = vnni_dot::<P16>(init, w0, Some(w1), a, al);
                    let t = _mm512_mul_ps(
                        _mm512_cvtepi32_ps(sum),
                        _mm512_loadu_ps(args.s[r].add(grp * 32)),
                    );
                    tot[r] = _mm512_fmadd_ps(t, dv, tot[r]);
                    if F == F_Q4_1 {
                        tot_m[r] = _mm512_fmadd_ps(
                            mv,
                            _mm512_loadu_ps(args.sa[r].add(grp * 32)),
                            tot_m[r],
                        );
                    }
                }
            }
        }
        for r in 0..M {
            let t = _mm512_add_ps(_mm512_add_ps(tot[r], tot2[r]), tot_m[r]);
            *rows[r].get_unchecked_mut(j) = _mm512_reduce_add_ps(t);
        }
    }
}

/// One decoding block at AVX2: one 32-value block per step, rows in groups of 4.
pub(super) fn decode_avx2(_cpu: Avx2, p: &Problem<'_>, acts: &Acts, mut blk: OutBlock<'_>) {
    let width = check_decode(p, acts, &blk);
    let lda = acts.lda;
    let words = !acts.a16.is_empty();
    if words {
        assert_eq!(acts.a16.len(), acts.m * lda);
    } else {
        assert_eq!(acts.qh.len(), acts.m * lda);
        // vpmaddubsw pairs cannot saturate: nibbles × |qh| ≤ 127 only.
        assert!(p.fmt != Format::Q8_0 && acts.precision == Precision::Int8);
    }
    let nb = acts.nb;
    let w = p.w[blk.col0 * p.row_bytes..].as_ptr();
    for (g, rows) in blk.rows.chunks_mut(4).enumerate() {
        let r0 = g * 4;
        macro_rules! go {
            ($m:literal) => {{
                let args = DecodeArgs::<$m> {
                    w,
                    row_bytes: p.row_bytes,
                    nb,
                    a: std::array::from_fn(|r| {
                        if words {
                            acts.a16[(r0 + r) * lda..].as_ptr().cast()
                        } else {
                            acts.qh[(r0 + r) * lda..].as_ptr().cast()
                        }
                    }),
                    s: std::array::from_fn(|r| acts.s[(r0 + r) * nb..].as_ptr()),
                    sa: std::array::from_fn(|r| acts.sa[(r0 + r) * nb..].as_ptr()),
                };
                // SAFETY: `_cpu` proves the features. `check_decode` and the asserts
                // above guarantee `width` weight rows from `w`, a plane of `lda >= k`
                // values per activation row, `nb` scales per row, and `rows` = `$m`
                // slices of `width` values.
                unsafe {
                    match (format_id(p.fmt), words) {
                        (F_Q4_0, false) => {
                            decode_avx2_rows::<$m, F_Q4_0, false>(&args, rows, width)
                        }
                        (F_Q4_0, true) => decode_avx2_rows::<$m, F_Q4_0, true>(&args, rows, width),
                        (F_Q4_1, false) => {
                            decode_avx2_rows::<$m, F_Q4_1, false>(&args, rows, width)
                        }
                        (F_Q4_1, true) => decode_avx2_rows::<$m, F_Q4_1, true>(&args, rows, width),
                        (F_Q8_0, _) => decode_avx2_rows::<$m, F_Q8_0, true>(&args, rows, width),
                        (_, false) => decode_avx2_rows::<$m, F_Q4K, false>(&args, rows, width),
                        (_, true) => decode_avx2_rows::<$m, F_Q4K, true>(&args, rows, width),
                    }
                }
            }};
        }
        match rows.len() {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            _ => go!(4),
        }
    }
}

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum256(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_movehdup_ps(x));
    _mm_cvtss_f32(x)
}

/// f16 bits to f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One 32-value block (`wq`: its `q` as bytes, in order) dotted with every row:
/// `tot += f32(Σ q·a) · d · s`, `tot_m += mn · sa`.
///
/// # Safety
/// The CPU has the enabled features; every plane of `args` has block `b`, every
/// scale array index `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_block_avx2<const M: usize, const WORDS: bool>(
    args: &DecodeArgs<M>,
    b: usize,
    wq: __m256i,
    d: f32,
    mn: f32,
    tot: &mut [__m256; M],
    tot_m: &mut [f32; M],
) {
    let (w_lo, w_hi) = if WORDS {
        (
            _mm256_cvtepu8_epi16(_mm256_castsi256_si128(wq)),
            _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(wq)),
        )
    } else {
        (wq, wq)
    };
    let ones = _mm256_set1_epi16(1);
    for r in 0..M {
        let sum = if WORDS {
            let a = args.a[r].add(b * 64);
            let a0 = _mm256_loadu_si256(a.cast());
            let a1 = _mm256_loadu_si256(a.add(32).cast());
            _mm256_add_epi32(_mm256_madd_epi16(w_lo, a0), _mm256_madd_epi16(w_hi, a1))
        } else {
            let a = _mm256_loadu_si256(args.a[r].add(b * 32).cast());
            _mm256_madd_epi16(_mm256_maddubs_epi16(wq, a), ones)
        };
        let s = *args.s[r].add(b);
        tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * s), tot[r]);
        tot_m[r] += mn * *args.sa[r].add(b);
    }
}

/// `width` weight rows × `M` activation rows at AVX2.
///
/// # Safety
/// See the call in [`decode_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_avx2_rows<const M: usize, const F: u8, const WORDS: bool>(
    args: &DecodeArgs<M>,
    rows: &mut [&mut [f32]],
    width: usize,
) {
    let nb = args.nb;
    let nibbles = _mm256_set1_epi8(0x0F);
    for j in 0..width {
        let row = args.w.add(j * args.row_bytes);
        prefetch_row(args.w, (j + PREFETCH_ROWS).min(width), args.row_bytes);
        let mut tot = [_mm256_setzero_ps(); M];
        let mut tot_m = [0f32; M];
        if F == F_Q4K {
            for sb in 0..nb / 8 {
                let blk = row.add(sb * 144);
                let d = f16_to_f32(blk.cast::<u16>().read_unaligned());
                let dmin = f16_to_f32(blk.add(2).cast::<u16>().read_unaligned());
                let scales = std::slice::from_raw_parts(blk.add(4), 12);
                for jp in 0..4 {
                    let y = _mm256_loadu_si256(blk.add(16 + 32 * jp).cast());
                    let (sc0, m0) = scale_min_k4(2 * jp, scales);
                    let (sc1, m1) = scale_min_k4(2 * jp + 1, scales);
                    let lo = _mm256_and_si256(y, nibbles);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(y), nibbles);
                    let b = sb * 8 + 2 * jp;
                    dot_block_avx2::<M, WORDS>(
                        args,
                        b,
                        lo,
                        d * sc0 as f32,
                        -(dmin * m0 as f32),
                        &mut tot,
                        &mut tot_m,
                    );
                    dot_block_avx2::<M, WORDS>(
                        args,
                        b + 1,
                        hi,
                        d * sc1 as f32,
                        -(dmin * m1 as f32),
                        &mut tot,
                        &mut tot_m,
                    );
                }
            }
        } else {
            for b in 0..nb {
                let (wq, d, mn);
                if F == F_Q8_0 {
                    let blk = row.add(b * 34);
                    d = f16_to_f32(blk.cast::<u16>().read_unaligned());
                    mn = -128.0 * d;
                    let y = _mm256_loadu_si256(blk.add(2).cast());
                    wq = _mm256_xor_si256(y, _mm256_set1_epi8(-128));
                } else {
                    let (bb, off) = if F == F_Q4_0 { (18, 2) } else { (20, 4) };
                    let blk = row.add(b * bb);
                    d = f16_to_f32(blk.cast::<u16>().read_unaligned());
                    mn = if F == F_Q4_0 {
                        -8.0 * d
                    } else {
                        f16_to_f32(blk.add(2).cast::<u16>().read_unaligned())
                    };
                    let x = _mm_loadu_si128(blk.add(off).cast());
                    wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(x), x), nibbles);
                }
                dot_block_avx2::<M, WORDS>(args, b, wq, d, mn, &mut tot, &mut tot_m);
            }
        }
        for r in 0..M {
            *rows[r].get_unchecked_mut(j) = hsum256(tot[r]) + tot_m[r];
        }
    }
}
