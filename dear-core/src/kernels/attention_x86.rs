//! The AVX-512 and AVX2 + FMA bodies of [`super`]: one flash-attention tile kernel,
//! written once over a small vector trait ([`Vf`]) and compiled for 16-lane (`zmm`)
//! and 8-lane (`ymm`) registers.
//!
//! The SIMD lanes run over the tile's *query rows* (positions × query heads of one
//! kv group): Q is packed transposed (`Qᵀ`, `d × rows`, pre-scaled by
//! `scale · log2 e`), so that
//! - `Sᵀ = K · Qᵀ` broadcasts one key element against a vector of rows (K is read in
//!   place, no packing);
//! - the online softmax is per lane: running max / sum / rescale factor need no
//!   horizontal reductions, and the block max comes out of the `Sᵀ` microkernel;
//! - `Oᵀ += Vᵀ · Pᵀ` broadcasts one value element against a vector of rows (V is read
//!   in place too).
//!
//! Everything `unsafe` of the attention kernels is in this file.

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{Dims, Sink, Tile};

/// Keys per block of the online softmax.
const BK: usize = 64;
/// `log2 e`: scores are computed in base 2 (`2^(x·log2 e) = eˣ`).
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 · 2²³: adding it rounds an f32 of magnitude < 2²² to an integer (ties to even).
const ROUND_MAGIC: f32 = 12_582_912.0;
/// `exp2` flushes to 0 below this (2^-127 has no normal representation).
const EXP2_MIN: f32 = -127.0;
/// Cephes' `exp2f` polynomial: `2^f ≈ 1 + f·P(f)` on `[-0.5, 0.5]`.
const P5: f32 = 1.535_336_2e-4;
const P4: f32 = 1.339_887_4e-3;
const P3: f32 = 9.618_437e-3;
const P2: f32 = 5.550_332_5e-2;
const P1: f32 = 2.402_264_8e-1;
const P0: f32 = 6.931_472e-1;

/// One vector width: the operations the tile kernel needs.
///
/// Every method is `unsafe`: it must only run on a CPU with the width's features
/// (AVX-512 F for [`Z`], AVX2 + FMA for [`Y`]), inlined into a function compiled with
/// them; the pointer methods additionally need `L` valid floats at the address.
trait Vf: Copy {
    /// Lanes per vector.
    const L: usize;
    /// The register type.
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, x: Self::V);
    /// `a · b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise max; returns `b` where `a` is NaN (x86 `maxps` semantics).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `x` where `j <= lim`, `-∞` elsewhere (the causal mask).
    unsafe fn visible(j: Self::V, lim: Self::V, x: Self::V) -> Self::V;
    /// `2ˣ` for `x <= 0`: exact 0 below -127 and for NaN, within 2 ulp above (see
    /// [`exp2_lanes`] and the tests).
    unsafe fn exp2(x: Self::V) -> Self::V;
    /// The lane sums of four vectors, written to `out[0..4]`.
    unsafe fn hsum4(a: Self::V, b: Self::V, c: Self::V, d: Self::V, out: *mut f32);
}

/// 16 lanes in a `zmm` register (AVX-512 F).
#[derive(Clone, Copy)]
struct Z;

/// 8 lanes in a `ymm` register (AVX2 + FMA).
#[derive(Clone, Copy)]
struct Y;

// SAFETY (whole impl): each method is a register intrinsic of AVX-512 F, or a load /
// store of 16 floats; the trait contract makes callers guarantee the CPU features, the
// inlining into an `avx512f` function and valid pointers.
impl Vf for Z {
    const L: usize = 16;
    type V = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, x: __m512) {
        _mm512_storeu_ps(p, x)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn visible(j: __m512, lim: __m512, x: __m512) -> __m512 {
        let keep = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(j, lim);
        _mm512_mask_blend_ps(keep, _mm512_set1_ps(f32::NEG_INFINITY), x)
    }
    #[inline(always)]
    unsafe fn exp2(x: __m512) -> __m512 {
        // max(x, -127) is -127 for NaN too (the second operand wins).
        let x = _mm512_max_ps(x, _mm512_set1_ps(EXP2_MIN));
        let t = _mm512_add_ps(x, _mm512_set1_ps(ROUND_MAGIC));
        let n = _mm512_sub_ps(t, _mm512_set1_ps(ROUND_MAGIC));
        let f = _mm512_sub_ps(x, n);
        let mut p = _mm512_set1_ps(P5);
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(P4));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(P3));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(P2));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(P1));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(P0));
        let y = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
        // 2ⁿ from the integer n in the low bits of t; n = -127 gives the bits of 0.0.
        let ni = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(ROUND_MAGIC.to_bits() as i32),
        );
        let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(scale))
    }
    #[inline(always)]
    unsafe fn hsum4(a: __m512, b: __m512, c: __m512, d: __m512, out: *mut f32) {
        // Fold each to 8 lanes, then as `Y` (no closure: it would not inherit the
        // target features).
        // SAFETY: register intrinsics and `out`'s 4 floats, as the contract states.
        unsafe { Y::hsum4(fold512(a), fold512(b), fold512(c), fold512(d), out) }
    }
}

// SAFETY (whole impl): each method is a register intrinsic of AVX / AVX2 / FMA, or a
// load / store of 8 floats; the trait contract makes callers guarantee the CPU
// features, the inlining into an `avx2,fma` function and valid pointers.
impl Vf for Y {
    const L: usize = 8;
    type V = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, x: __m256) {
        _mm256_storeu_ps(p, x)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn visible(j: __m256, lim: __m256, x: __m256) -> __m256 {
        let keep = _mm256_cmp_ps::<_CMP_LE_OQ>(j, lim);
        _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), x, keep)
    }
    #[inline(always)]
    unsafe fn exp2(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(EXP2_MIN));
        let t = _mm256_add_ps(x, _mm256_set1_ps(ROUND_MAGIC));
        let n = _mm256_sub_ps(t, _mm256_set1_ps(ROUND_MAGIC));
        let f = _mm256_sub_ps(x, n);
        let mut p = _mm256_set1_ps(P5);
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P4));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P3));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P2));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P1));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P0));
        let y = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0));
        let ni = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32),
        );
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(ni, _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
    }
    #[inline(always)]
    unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256, out: *mut f32) {
        // hadd(hadd(a, b), hadd(c, d)) holds [Σa, Σb, Σc, Σd] of the low 4 lanes in
        // its low half and of the high 4 lanes in its high half.
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        _mm_storeu_ps(out, s)
    }
}

/// The low plus the high 8 lanes of a `zmm`.
///
/// # Safety
/// AVX-512 F must be enabled in the caller (this is inlined into it).
#[inline(always)]
unsafe fn fold512(x: __m512) -> __m256 {
    _mm256_add_ps(
        _mm512_castps512_ps256(x),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
    )
}

/// Query rows per tile at `isa` (the planner's tile height): 3 `zmm` or 3 `ymm`
/// vectors of rows.
pub(super) fn tile_rows(isa: super::Isa) -> usize {
    match isa {
        super::Isa::Avx512 => 3 * Z::L,
        _ => 3 * Y::L,
    }
}

fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && has_avx2()
}

fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Runs one tile at `isa` (AVX-512 or AVX2), writing its rows through `sink`.
///
/// # Panics
/// When `isa` is not AVX-512 / AVX2 or the CPU lacks it, or the tile does not fit the
/// buffers: the planner never does that (bugs, not inputs).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_tile(
    isa: super::Isa,
    t: &Tile,
    dm: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scratch: &mut Vec<f32>,
    sink: Sink<'_, '_>,
) {
    let nr = t.rows();
    let d = dm.d;
    // The bounds every raw access below stays within.
    assert!(
        nr > 0
            && t.p0 < t.p1
            && t.a < t.b
            && (t.b <= dm.group || (t.h == 0 && t.b == dm.hq && t.p1 - t.p0 == 1))
            && t.h < dm.hkv
            && dm.hq == dm.hkv * dm.group
            && d > 0
            && t.k0 < t.k1
            && (t.q_tok0 + t.p1) * dm.hq * d <= q.len()
            && (t.k_tok0 + t.k1) * dm.hkv * d <= k.len()
            && k.len() == v.len()
            && if t.b <= dm.group {
                nr <= tile_rows(isa)
            } else {
                rows_kernel_fits(isa, dm.hq, d)
            },
        "attention tile out of bounds: {t:?} {dm:?}"
    );
    match &sink {
        Sink::Out(rows) => assert!(rows.len() == nr && rows.iter().all(|r| r.len() == d)),
        Sink::Partial(buf) => assert!(buf.len() == nr * (d + 2)),
    }
    match isa {
        super::Isa::Avx512 => {
            assert!(has_avx512(), "this CPU lacks AVX-512");
            // SAFETY: the CPU has avx512f/bw/vl, avx2 and fma (checked just above);
            // the tile's accesses were bounds-checked above.
            unsafe { tile_avx512(t, dm, q, k, v, scratch, sink) }
        }
        super::Isa::Avx2 => {
            assert!(has_avx2(), "this CPU lacks AVX2 + FMA");
            // SAFETY: the CPU has avx2 and fma (checked just above); the tile's
            // accesses were bounds-checked above.
            unsafe { tile_avx2(t, dm, q, k, v, scratch, sink) }
        }
        super::Isa::Scalar => panic!("no SIMD tile kernel at Isa::Scalar"),
    }
}

/// Returns [`rows`] at vector type `$s` from the enclosing function when the head dim
/// is 2, 4, 8 or 16 of its vectors (the widths `rows` is built for).
macro_rules! try_rows {
    ($s:ty, $t:expr, $dm:expr, $q:expr, $k:expr, $v:expr, $scratch:expr, $sink:expr) => {
        if $dm.d.is_multiple_of(<$s>::L) {
            match $dm.d / <$s>::L {
                2 => return rows::<$s, 2>($t, $dm, $q, $k, $v, $scratch, $sink),
                4 => return rows::<$s, 4>($t, $dm, $q, $k, $v, $scratch, $sink),
                8 => return rows::<$s, 8>($t, $dm, $q, $k, $v, $scratch, $sink),
                16 => return rows::<$s, 16>($t, $dm, $q, $k, $v, $scratch, $sink),
                _ => {}
            }
        }
    };
}

/// The AVX-512 tile: `zmm` rows, or `ymm` when the tile has at most 8 rows (decode:
/// same throughput per lane on Zen 4, half the padding). Tiles for [`rows`] take its
/// `ymm` form where the head dim allows: cheaper horizontal sums, and measured 1.3×
/// faster than `zmm` on the decode bench.
///
/// # Safety
/// The CPU must have avx512f/bw/vl, avx2 and fma; `run_tile`'s bounds must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn tile_avx512(
    t: &Tile,
    dm: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scratch: &mut Vec<f32>,
    sink: Sink<'_, '_>,
) {
    let nr = t.rows();
    // SAFETY: the features are enabled here, as `rows` and `tile` need; bounds from
    // the caller.
    unsafe {
        if nr <= ROW_KERNEL_ROWS || t.b > dm.group {
            try_rows!(Y, t, dm, q, k, v, scratch, sink);
            try_rows!(Z, t, dm, q, k, v, scratch, sink);
        }
        match nr.div_ceil(Z::L) {
            _ if nr <= Y::L => tile::<Y, 1, 8>(t, dm, q, k, v, scratch, sink),
            1 => tile::<Z, 1, 8>(t, dm, q, k, v, scratch, sink),
            2 => tile::<Z, 2, 8>(t, dm, q, k, v, scratch, sink),
            _ => tile::<Z, 3, 8>(t, dm, q, k, v, scratch, sink),
        }
    }
}

/// The AVX2 tile (16 `ymm` registers: 8 to 12 accumulators).
///
/// # Safety
/// The CPU must have avx2 and fma; `run_tile`'s bounds must hold.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    t: &Tile,
    dm: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scratch: &mut Vec<f32>,
    sink: Sink<'_, '_>,
) {
    let nr = t.rows();
    // SAFETY: the features are enabled here, as `rows` and `tile` need; bounds from
    // the caller.
    unsafe {
        if nr <= ROW_KERNEL_ROWS_AVX2 || t.b > dm.group {
            try_rows!(Y, t, dm, q, k, v, scratch, sink);
        }
        match nr.div_ceil(Y::L) {
            1 => tile::<Y, 1, 8>(t, dm, q, k, v, scratch, sink),
            2 => tile::<Y, 2, 6>(t, dm, q, k, v, scratch, sink),
            _ => tile::<Y, 3, 3>(t, dm, q, k, v, scratch, sink),
        }
    }
}

/// Attention of one tile: `NV` vectors of query rows, `MR` keys (for `Sᵀ`) or value
/// columns (for `Oᵀ`) per microkernel call.
///
/// # Safety
/// `S`'s features must be enabled in the caller (this is inlined into it); the tile
/// must satisfy `run_tile`'s checks and have at most `NV · S::L` rows.
#[inline(always)]
unsafe fn tile<S: Vf, const NV: usize, const MR: usize>(
    t: &Tile,
    dm: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scratch: &mut Vec<f32>,
    sink: Sink<'_, '_>,
) {
    let nr = t.rows();
    let rp = NV * S::L;
    let d = dm.d;
    debug_assert!(nr <= rp && rp <= MAX_ROWS);
    // Scratch: Qᵀ [d × rp], Sᵀ/Pᵀ [(BK + MR) × rp], Oᵀ [d × rp], then m, l, alpha and
    // the causal limit per row, 64-byte aligned.
    let st_off = d * rp;
    let ot_off = st_off + (BK + MR) * rp;
    let m_off = ot_off + d * rp;
    let l_off = m_off + rp;
    let a_off = l_off + rp;
    let lim_off = a_off + rp;
    let total = lim_off + rp;
    if scratch.len() < total + 16 {
        scratch.resize(total + 16, 0.0);
    }
    let align = scratch.as_ptr().align_offset(64).min(16);
    let buf = &mut scratch[align..align + total];
    // Pack Qᵀ (scaled into base 2) and the per-row limits. Padding rows repeat the
    // last row and see every key (finite, ignored).
    let qscale = dm.scale * LOG2E;
    let width = t.b - t.a;
    buf[m_off..l_off].fill(f32::NEG_INFINITY);
    buf[l_off..a_off].fill(0.0);
    buf[lim_off..total].fill(f32::MAX);
    buf[ot_off..m_off].fill(0.0);
    let mut qrows = [0usize; MAX_ROWS];
    for r in 0..rp {
        let rr = r.min(nr - 1);
        let pos = t.p0 + rr / width;
        let head = t.h * dm.group + t.a + rr % width;
        let at = ((t.q_tok0 + pos) * dm.hq + head) * d;
        // Bounds of every row the transposes below read (checked once per row).
        assert!(at + d <= q.len());
        qrows[r] = at;
        if r < nr {
            buf[lim_off + r] = (t.offset + pos) as f32;
        }
    }
    // SAFETY: `qrows` are checked row starts of `q`, `buf` holds `d × rp` floats of
    // Qᵀ; AVX is enabled in the caller.
    unsafe { pack_qt(q.as_ptr(), &qrows[..rp], d, qscale, buf.as_mut_ptr()) };
    let base = buf.as_mut_ptr();
    let qt = base as *const f32;
    // SAFETY: every offset below stays inside `buf` (layout above), K / V rows
    // `k_tok0 + k0 .. k_tok0 + k1` of head `h` are inside `k` / `v` (checked by
    // `run_tile`), and `S`'s features are enabled in the caller.
    unsafe {
        let st = base.add(st_off);
        let ot = base.add(ot_off);
        let mv = base.add(m_off);
        let lv = base.add(l_off);
        let av = base.add(a_off);
        let limv = base.add(lim_off);
        let stride = dm.hkv * d;
        let kp = k.as_ptr().add((t.k_tok0 * dm.hkv + t.h) * d);
        let vp = v.as_ptr().add((t.k_tok0 * dm.hkv + t.h) * d);
        let mut lim = [S::zero(); NV];
        for n in 0..NV {
            lim[n] = S::load(limv.add(n * S::L));
        }
        // The smallest causal limit of the tile: blocks past it need the mask.
        let lim_min = t.offset + t.p0;
        let mut kb = t.k0;
        while kb < t.k1 {
            let ke = (kb + BK).min(t.k1);
            let nk = ke - kb;
            let diag = ke - 1 > lim_min;
            // Sᵀ = K · Qᵀ, MR keys at a time (the last call repeats the last key into
            // the padding rows), with the block max per row.
            let mut bmax = [S::splat(f32::NEG_INFINITY); NV];
            let mut j = 0;
            while j < nk {
                let krows: [*const f32; MR] =
                    std::array::from_fn(|i| kp.add((kb + (j + i).min(nk - 1)) * stride));
                let jpos = if diag { Some((kb + j) as f32) } else { None };
                qk::<S, NV, MR>(&krows, qt, rp, d, st.add(j * rp), &lim, jpos, &mut bmax);
                j += MR;
            }
            // Online softmax: new max, rescale factor, P = 2^(S - max), row sums.
            let mut mnew = [S::zero(); NV];
            let mut sum = [S::zero(); NV];
            for n in 0..NV {
                let mold = S::load(mv.add(n * S::L));
                mnew[n] = S::max(mold, bmax[n]);
                S::store(av.add(n * S::L), S::exp2(S::sub(mold, mnew[n])));
                S::store(mv.add(n * S::L), mnew[n]);
            }
            for j in 0..nk {
                let row = st.add(j * rp);
                for n in 0..NV {
                    let p = S::exp2(S::sub(S::load(row.add(n * S::L)), mnew[n]));
                    S::store(row.add(n * S::L), p);
                    sum[n] = S::add(sum[n], p);
                }
            }
            for n in 0..NV {
                let l = S::load(lv.add(n * S::L));
                S::store(
                    lv.add(n * S::L),
                    S::fma(l, S::load(av.add(n * S::L)), sum[n]),
                );
            }
            // Oᵀ = alpha · Oᵀ + Vᵀ · Pᵀ, MR value columns at a time.
            let vrow = vp.add(kb * stride);
            let mut c = 0;
            while c + MR <= d {
                pv::<S, NV, MR>(vrow.add(c), stride, st, rp, nk, ot.add(c * rp), av);
                c += MR;
            }
            while c < d {
                pv::<S, NV, 1>(vrow.add(c), stride, st, rp, nk, ot.add(c * rp), av);
                c += 1;
            }
            kb = ke;
        }
    }
    let (ot, rest) = buf[ot_off..].split_at(d * rp);
    let m = &rest[..rp];
    let l = &rest[rp..2 * rp];
    match sink {
        Sink::Out(rows) => {
            let mut inv = [0f32; MAX_ROWS];
            for r in 0..nr {
                inv[r] = 1.0 / l[r];
            }
            // SAFETY: `ot` holds `d × rp` floats, every row of `rows` `d` floats
            // (checked by `run_tile`), `nr <= rp`; AVX is enabled in the caller.
            unsafe { unpack_ot(ot, rp, d, &inv[..nr], rows) };
        }
        Sink::Partial(part) => {
            for (r, row) in part.chunks_exact_mut(d + 2).enumerate() {
                row[0] = m[r];
                row[1] = l[r];
                for (c, o) in row[2..].iter_mut().enumerate() {
                    *o = ot[c * rp + r];
                }
            }
        }
    }
}

/// Tiles of one kv head with at most this many query rows go to [`rows`] at AVX-512
/// ...
const ROW_KERNEL_ROWS: usize = 8;
/// ... and at AVX2. Tiles of every head of one position (decode: see
/// [`rows_kernel_fits`]) always do.
const ROW_KERNEL_ROWS_AVX2: usize = 4;

/// Whether [`rows`] can run a tile of all `hq` heads of one position at `isa` (the
/// planner then gives decode steps such tiles, so that a thread streams whole K / V
/// rows, every kv head at once).
pub(super) fn rows_kernel_fits(isa: super::Isa, hq: usize, d: usize) -> bool {
    let fits = |lanes: usize| d.is_multiple_of(lanes) && matches!(d / lanes, 2 | 4 | 8 | 16);
    hq <= MAX_ROWS
        && match isa {
            // `ymm` lanes first (see `tile_avx512`), `zmm` for wider heads.
            super::Isa::Avx512 => fits(Y::L) || fits(Z::L),
            super::Isa::Avx2 => fits(Y::L),
            super::Isa::Scalar => false,
        }
}

/// Keys per block of [`rows`] (a block of K and of V stays in L1 while every row of
/// the tile goes through it; at least the widest vector, 16 lanes). Measured on the
/// decode bench (`ATTN_BENCH_CASE=d`): 16 keys beat 32 and 64 once the next block's
/// prefetch is spread over the rows.
const ROW_BK: usize = 16;
// The softmax of a block reads whole vectors of scores.
const _: () = assert!(ROW_BK >= 16 && ROW_BK.is_multiple_of(4));

/// Asks for floats `cols` of rows `at + j` (`j` in `keys`, rows `stride` floats apart
/// from `base`) to be brought into L2 (a hint: never faults, any address).
#[inline(always)]
fn prefetch_rows(
    base: *const f32,
    at: usize,
    keys: std::ops::Range<usize>,
    stride: usize,
    cols: std::ops::Range<usize>,
) {
    for j in keys {
        let row = base.wrapping_add((at + j) * stride);
        for c in cols.clone().step_by(16) {
            // SAFETY: a prefetch reads nothing architecturally and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(c) as *const i8) };
        }
    }
}

/// Attention of a tile with few query rows (decode), SIMD lanes over the head dim
/// (`d = ND · S::L`): each row's scores are dot products reduced four keys at a time
/// ([`Vf::hsum4`]), its online softmax is scalar per block of [`ROW_BK`] keys, and its
/// output accumulates `p_j · V[j]` in registers. K and V rows are read contiguously,
/// once from memory per block (the tile kernel's lanes over rows would leave most
/// lanes idle here and walk V column by column).
///
/// # Safety
/// `S`'s features must be enabled in the caller (this is inlined into it); the tile
/// must satisfy `run_tile`'s checks, have at most [`ROW_KERNEL_ROWS`] rows, and
/// `dm.d == ND · S::L` with `ND` even.
#[inline(always)]
unsafe fn rows<S: Vf, const ND: usize>(
    t: &Tile,
    dm: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scratch: &mut Vec<f32>,
    sink: Sink<'_, '_>,
) {
    const MAXR: usize = MAX_ROWS;
    let nr = t.rows();
    let d = dm.d;
    debug_assert!(nr <= MAXR && d == ND * S::L && ND.is_multiple_of(2));
    // Scratch: scaled Q rows [nr × d], outputs [nr × d], scores [nr × ROW_BK].
    let o_off = nr * d;
    let s_off = 2 * nr * d;
    let total = s_off + nr * ROW_BK;
    if scratch.len() < total {
        scratch.resize(total, 0.0);
    }
    let buf = &mut scratch[..total];
    let qscale = dm.scale * LOG2E;
    let width = t.b - t.a;
    let mut lim = [0usize; MAXR];
    // Each row's kv head (a tile of all heads spans several).
    let mut kvh = [0usize; MAXR];
    let mut m = [f32::NEG_INFINITY; MAXR];
    let mut l = [0f32; MAXR];
    for r in 0..nr {
        let pos = t.p0 + r / width;
        let head = t.h * dm.group + t.a + r % width;
        let at = ((t.q_tok0 + pos) * dm.hq + head) * d;
        for (x, y) in buf[r * d..(r + 1) * d].iter_mut().zip(&q[at..at + d]) {
            *x = y * qscale;
        }
        lim[r] = t.offset + pos;
        kvh[r] = head / dm.group;
    }
    buf[o_off..s_off].fill(0.0);
    let base = buf.as_mut_ptr();
    // SAFETY: every offset below stays inside `buf` (layout above); K / V rows
    // `k_tok0 + k0 .. k_tok0 + k1` (all kv heads) are inside `k` / `v` (checked by
    // `run_tile`), the rows' kv heads `< hkv`, each `d = ND · S::L` floats; `S`'s
    // features are enabled in the caller.
    unsafe {
        let stride = dm.hkv * d;
        // The kv heads the rows read: floats `h_lo · d .. h_hi · d` of every K / V row.
        let h_lo = kvh[..nr].iter().copied().min().unwrap_or(0);
        let h_hi = kvh[..nr].iter().copied().max().unwrap_or(0) + 1;
        let k0p = k.as_ptr().add(t.k_tok0 * stride);
        let v0p = v.as_ptr().add(t.k_tok0 * stride);
        let mut kb = t.k0;
        while kb < t.k1 {
            let ke = (kb + ROW_BK).min(t.k1);
            let nk = ke - kb;
            // Prefetch the next block's K and V rows into L2 (a long KV cache streams
            // from memory; into L1 they would evict the block in use, measured slower).
            let next = (t.k1 - ke).min(ROW_BK);
            for r in 0..nr {
                // Each row asks for its share of the next block (spread out, so that
                // the misses overlap the work instead of queueing up at once).
                let share = next * r / nr..next * (r + 1) / nr;
                prefetch_rows(k0p, ke, share.clone(), stride, h_lo * d..h_hi * d);
                // Keys past the row's causal limit are masked; a block wholly past
                // it changes nothing (key chunks of a split tile can be).
                if kb > lim[r] {
                    continue;
                }
                let qr = base.add(r * d) as *const f32;
                let mut qv = [S::zero(); ND];
                for c in 0..ND {
                    qv[c] = S::load(qr.add(c * S::L));
                }
                let sr = base.add(s_off + r * ROW_BK);
                let kp = k0p.add(kvh[r] * d);
                let vp = v0p.add(kvh[r] * d);
                // Scores, four keys at a time.
                let key = |j: usize| kp.add((kb + j.min(nk - 1)) * stride);
                let mut j = 0;
                while j < nk {
                    let kr = [key(j), key(j + 1), key(j + 2), key(j + 3)];
                    // Two accumulators per key (even and odd vectors of the row).
                    let (mut e0, mut e1, mut e2, mut e3) =
                        (S::zero(), S::zero(), S::zero(), S::zero());
                    let (mut o0, mut o1, mut o2, mut o3) =
                        (S::zero(), S::zero(), S::zero(), S::zero());
                    let mut c = 0;
                    while c + 2 <= ND {
                        let (x, y) = (qv[c], qv[c + 1]);
                        let (c0, c1) = (c * S::L, (c + 1) * S::L);
                        e0 = S::fma(x, S::load(kr[0].add(c0)), e0);
                        e1 = S::fma(x, S::load(kr[1].add(c0)), e1);
                        e2 = S::fma(x, S::load(kr[2].add(c0)), e2);
                        e3 = S::fma(x, S::load(kr[3].add(c0)), e3);
                        o0 = S::fma(y, S::load(kr[0].add(c1)), o0);
                        o1 = S::fma(y, S::load(kr[1].add(c1)), o1);
                        o2 = S::fma(y, S::load(kr[2].add(c1)), o2);
                        o3 = S::fma(y, S::load(kr[3].add(c1)), o3);
                        c += 2;
                    }
                    let mut four = [0f32; 4];
                    S::hsum4(
                        S::add(e0, o0),
                        S::add(e1, o1),
                        S::add(e2, o2),
                        S::add(e3, o3),
                        four.as_mut_ptr(),
                    );
                    for i in 0..4.min(nk - j) {
                        *sr.add(j + i) = four[i];
                    }
                    j += 4;
                }
                // Causal mask, block max, online softmax update.
                let visible = (lim[r] + 1 - kb).min(nk);
                let mut bmax = f32::NEG_INFINITY;
                for j in 0..visible {
                    bmax = bmax.max(*sr.add(j));
                }
                for j in visible..ROW_BK {
                    *sr.add(j) = f32::NEG_INFINITY;
                }
                let mnew = m[r].max(bmax);
                let alpha = (m[r] - mnew).exp2();
                let mv = S::splat(mnew);
                let mut sum = S::zero();
                let mut c = 0;
                while c < visible {
                    let p = S::exp2(S::sub(S::load(sr.add(c)), mv));
                    S::store(sr.add(c), p);
                    sum = S::add(sum, p);
                    c += S::L;
                }
                let mut four = [0f32; 4];
                S::hsum4(sum, S::zero(), S::zero(), S::zero(), four.as_mut_ptr());
                l[r] = l[r] * alpha + four[0];
                m[r] = mnew;
                prefetch_rows(v0p, ke, share, stride, h_lo * d..h_hi * d);
                // O = alpha · O + Σ_j p_j V[j] (two accumulator sets: even and odd keys).
                let or = base.add(o_off + r * d);
                let av = S::splat(alpha);
                let mut a0 = [S::zero(); ND];
                let mut a1 = [S::zero(); ND];
                for c in 0..ND {
                    a0[c] = S::mul(S::load(or.add(c * S::L)), av);
                }
                let mut j = 0;
                while j + 2 <= visible {
                    let (p0, p1) = (S::splat(*sr.add(j)), S::splat(*sr.add(j + 1)));
                    let v0 = vp.add((kb + j) * stride);
                    let v1 = v0.add(stride);
                    for c in 0..ND {
                        a0[c] = S::fma(p0, S::load(v0.add(c * S::L)), a0[c]);
                        a1[c] = S::fma(p1, S::load(v1.add(c * S::L)), a1[c]);
                    }
                    j += 2;
                }
                if j < visible {
                    let p0 = S::splat(*sr.add(j));
                    let v0 = vp.add((kb + j) * stride);
                    for c in 0..ND {
                        a0[c] = S::fma(p0, S::load(v0.add(c * S::L)), a0[c]);
                    }
                }
                for c in 0..ND {
                    S::store(or.add(c * S::L), S::add(a0[c], a1[c]));
                }
            }
            kb = ke;
        }
    }
    let o = &buf[o_off..s_off];
    match sink {
        Sink::Out(out) => {
            for (r, row) in out.iter_mut().enumerate() {
                let inv = 1.0 / l[r];
                for (y, x) in row.iter_mut().zip(&o[r * d..(r + 1) * d]) {
                    *y = x * inv;
                }
            }
        }
        Sink::Partial(part) => {
            for (r, row) in part.chunks_exact_mut(d + 2).enumerate() {
                row[0] = m[r];
                row[1] = l[r];
                row[2..].copy_from_slice(&o[r * d..(r + 1) * d]);
            }
        }
    }
}

/// The most rows a tile kernel instance handles (3 `zmm` vectors).
const MAX_ROWS: usize = 48;

/// Transposes 8 `ymm` rows into 8 columns.
///
/// # Safety
/// AVX must be enabled in the caller (this is inlined into it).
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register-only AVX intrinsics; features from the caller.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }
}

/// `qt[c · rp + r] = q[rows[r] + c] · scale` for every row `r < rp` and `c < d`, by
/// 8 × 8 register transposes.
///
/// # Safety
/// `q + rows[r]` must point to `d` floats for every `r`, `rp = rows.len()` must be a
/// multiple of 8, `qt` must point to `d × rp` writable floats; AVX enabled in the
/// caller.
#[inline(always)]
unsafe fn pack_qt(q: *const f32, rows: &[usize], d: usize, scale: f32, qt: *mut f32) {
    let rp = rows.len();
    // SAFETY: pointers as documented, features from the caller.
    unsafe {
        let sv = _mm256_set1_ps(scale);
        for r0 in (0..rp).step_by(8) {
            let mut c0 = 0;
            while c0 + 8 <= d {
                // (No closures here: they would not inherit the target features.)
                let mut x = [_mm256_setzero_ps(); 8];
                for i in 0..8 {
                    x[i] = _mm256_loadu_ps(q.add(rows[r0 + i] + c0));
                }
                let cols = transpose8(x);
                for (i, col) in cols.iter().enumerate() {
                    _mm256_storeu_ps(qt.add((c0 + i) * rp + r0), _mm256_mul_ps(*col, sv));
                }
                c0 += 8;
            }
            for c in c0..d {
                for i in 0..8 {
                    *qt.add(c * rp + r0 + i) = *q.add(rows[r0 + i] + c) * scale;
                }
            }
        }
    }
}

/// `rows[r][c] = ot[c · rp + r] · inv[r]` for `r < rows.len()`, by 8 × 8 register
/// transposes.
///
/// # Safety
/// `ot` must hold `d × rp` floats with `rp` a multiple of 8 and `rows.len() <= rp`,
/// every row `d` floats, `inv` one float per row; AVX enabled in the caller.
#[inline(always)]
unsafe fn unpack_ot(ot: &[f32], rp: usize, d: usize, inv: &[f32], rows: &mut [&mut [f32]]) {
    let nr = rows.len();
    let op = ot.as_ptr();
    // SAFETY: pointers as documented, features from the caller.
    unsafe {
        for r0 in (0..nr).step_by(8) {
            let n = (nr - r0).min(8);
            let mut c0 = 0;
            while c0 + 8 <= d {
                let mut x = [_mm256_setzero_ps(); 8];
                for i in 0..8 {
                    x[i] = _mm256_loadu_ps(op.add((c0 + i) * rp + r0));
                }
                let rs = transpose8(x);
                for i in 0..n {
                    let y = _mm256_mul_ps(rs[i], _mm256_set1_ps(inv[r0 + i]));
                    _mm256_storeu_ps(rows[r0 + i].as_mut_ptr().add(c0), y);
                }
                c0 += 8;
            }
            for i in 0..n {
                for c in c0..d {
                    rows[r0 + i][c] = ot[c * rp + r0 + i] * inv[r0 + i];
                }
            }
        }
    }
}

/// `Sᵀ[i, :] = K[i] · Qᵀ` for `MR` keys and `NV` vectors of rows, masked by the
/// causal limits when `jpos` (the first key's index) is given, folding each row's max
/// into `bmax`.
///
/// # Safety
/// `krows[i]` and `qt` must point to `d` floats (key rows) and `d × rp` floats; `st`
/// to `MR × rp` writable floats; `S`'s features enabled in the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn qk<S: Vf, const NV: usize, const MR: usize>(
    krows: &[*const f32; MR],
    qt: *const f32,
    rp: usize,
    d: usize,
    st: *mut f32,
    lim: &[S::V; NV],
    jpos: Option<f32>,
    bmax: &mut [S::V; NV],
) {
    // SAFETY: pointers as documented, features from the caller.
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        let mut qrow = qt;
        for c in 0..d {
            let mut qv = [S::zero(); NV];
            for n in 0..NV {
                qv[n] = S::load(qrow.add(n * S::L));
            }
            for i in 0..MR {
                let kx = S::splat(*krows[i].add(c));
                for n in 0..NV {
                    acc[i][n] = S::fma(kx, qv[n], acc[i][n]);
                }
            }
            qrow = qrow.add(rp);
        }
        for i in 0..MR {
            for n in 0..NV {
                let mut s = acc[i][n];
                if let Some(j0) = jpos {
                    s = S::visible(S::splat(j0 + i as f32), lim[n], s);
                }
                bmax[n] = S::max(bmax[n], s);
                S::store(st.add(i * rp + n * S::L), s);
            }
        }
    }
}

/// `Oᵀ[i, :] = alpha · Oᵀ[i, :] + Σ_j V[j, i] · Pᵀ[j, :]` for `MR` value columns,
/// `nk` keys and `NV` vectors of rows.
///
/// # Safety
/// `vrow + j·stride` must point to `MR` floats for `j < nk`; `pt` to `nk × rp`
/// floats, `ot` to `MR × rp` writable floats, `alpha` to `NV · S::L` floats; `S`'s
/// features enabled in the caller.
#[inline(always)]
unsafe fn pv<S: Vf, const NV: usize, const MR: usize>(
    vrow: *const f32,
    stride: usize,
    pt: *const f32,
    rp: usize,
    nk: usize,
    ot: *mut f32,
    alpha: *const f32,
) {
    // SAFETY: pointers as documented, features from the caller.
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        for n in 0..NV {
            let a = S::load(alpha.add(n * S::L));
            for i in 0..MR {
                acc[i][n] = S::mul(S::load(ot.add(i * rp + n * S::L)), a);
            }
        }
        let mut vr = vrow;
        let mut prow = pt;
        for _ in 0..nk {
            let mut p = [S::zero(); NV];
            for n in 0..NV {
                p[n] = S::load(prow.add(n * S::L));
            }
            for i in 0..MR {
                let vx = S::splat(*vr.add(i));
                for n in 0..NV {
                    acc[i][n] = S::fma(vx, p[n], acc[i][n]);
                }
            }
            vr = vr.add(stride);
            prow = prow.add(rp);
        }
        for i in 0..MR {
            for n in 0..NV {
                S::store(ot.add(i * rp + n * S::L), acc[i][n]);
            }
        }
    }
}

/// `2ˣ` of every element with the `isa` kernel's vector `exp2` (tests check it
/// against libm). Elements past the last full vector use the 8-lane version.
#[cfg(test)]
pub(super) fn exp2_lanes(isa: super::Isa, xs: &[f32]) -> Vec<f32> {
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn z(xs: &[f32], out: &mut [f32]) {
        for (x, o) in xs.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
            // SAFETY: 16 floats each side; features enabled here.
            unsafe { Z::store(o.as_mut_ptr(), Z::exp2(Z::load(x.as_ptr()))) }
        }
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn y(xs: &[f32], out: &mut [f32]) {
        for (x, o) in xs.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            // SAFETY: 8 floats each side; features enabled here.
            unsafe { Y::store(o.as_mut_ptr(), Y::exp2(Y::load(x.as_ptr()))) }
        }
    }
    let mut out = vec![f32::NAN; xs.len()];
    match isa {
        super::Isa::Avx512 => {
            assert!(has_avx512() && xs.len().is_multiple_of(16));
            // SAFETY: features checked just above.
            unsafe { z(xs, &mut out) }
        }
        _ => {
            assert!(has_avx2() && xs.len().is_multiple_of(8));
            // SAFETY: features checked just above.
            unsafe { y(xs, &mut out) }
        }
    }
    out
}
