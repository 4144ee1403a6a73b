//! The portable element-wise loops of `activation`, compiled with AVX-512 / AVX2
//! enabled. The only unsafe code is the call across the `target_feature` boundary.

use super::silu_mul_portable;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn silu_mul_avx512_impl(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_portable(gate, up, out)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2_impl(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_portable(gate, up, out)
}

/// `silu_mul_portable` vectorised for AVX-512.
pub(super) fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    // SAFETY: callers reach this only for `Isa::Avx512`, which `Isa::detect` /
    // `Isa::available` grant after checking avx512f/bw/vl, avx2 and fma at run time;
    // the body is safe slice code.
    unsafe { silu_mul_avx512_impl(gate, up, out) }
}

/// `silu_mul_portable` vectorised for AVX2 + FMA.
pub(super) fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    // SAFETY: callers reach this only for `Isa::Avx2` or better, granted after
    // checking avx2 and fma at run time; the body is safe slice code.
    unsafe { silu_mul_avx2_impl(gate, up, out) }
}
