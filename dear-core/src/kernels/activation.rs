//! Element-wise kernels: the SwiGLU product `silu(gate) · up` of `LlamaMLP` in one pass,
//! with an `exp` that vectorises (Cephes' `expf` polynomial, within 2 ulp of libm).
//!
//! The portable bodies are written so the compiler vectorises them; on x86-64 they
//! are compiled a second time with AVX-512 or AVX2 enabled and chosen at run time.

use rayon::prelude::*;

use super::Isa;

#[cfg(target_arch = "x86_64")]
#[path = "activation_x86.rs"]
mod x86;

/// Elements per parallel task (small enough to balance, big enough to amortise).
const CHUNK: usize = 16 * 1024;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two (Cephes' C1 + C2) so `x - n·ln 2` is exact enough.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding it rounds an f32 of magnitude < 2²² to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// `exp` is evaluated on `[EXP_MIN, EXP_MAX]`: `2ⁿ` stays a normal f32.
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.37;

/// `eˣ` for f32, within 2 ulp of libm on `[-87.3, 88.37]` (clamped outside it: the
/// result saturates at `e^-87.3 ≈ 1.2e-38` and `e^88.37 ≈ 2.4e38` instead of 0 and
/// ∞). Branch-free so that loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    // n = round(x / ln 2), found by the magic-number trick (vectorises, no cvt).
    let t = x.mul_add(LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let bits = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    // 2ⁿ: n (as the low bits of `t`) plus the exponent bias, shifted into place.
    let scale = f32::from_bits(bits.wrapping_add(127) << 23);
    y * scale
}

/// `out[i] = silu(gate[i]) · up[i]` with `silu(x) = x / (1 + e^-x)` (transformers'
/// `nn.SiLU`), on every element.
#[inline(always)]
pub(crate) fn silu_mul_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = *g / (1.0 + exp(-*g)) * *u;
    }
}

/// `out = silu(gate) · up`, element-wise, at the CPU's best [`Isa`].
///
/// # Errors
/// When the three slices differ in length.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> crate::Result<()> {
    silu_mul_with(Isa::detect(), gate, up, out)
}

/// [`silu_mul`] at a given [`Isa`] (for tests and benchmarks).
///
/// # Errors
/// When the slices differ in length or the CPU lacks `isa`.
pub fn silu_mul_with(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) -> crate::Result<()> {
    if gate.len() != up.len() || gate.len() != out.len() {
        return Err(crate::Error::InvalidArgument(format!(
            "silu_mul: gate has {} values, up {}, out {}",
            gate.len(),
            up.len(),
            out.len()
        )));
    }
    if !Isa::available().contains(&isa) {
        return Err(crate::Error::InvalidArgument(format!(
            "silu_mul: this CPU cannot run {isa:?} kernels"
        )));
    }
    let run = |g: &[f32], u: &[f32], o: &mut [f32]| match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::silu_mul_avx512(g, u, o),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::silu_mul_avx2(g, u, o),
        _ => silu_mul_portable(g, u, o),
    };
    if out.len() <= CHUNK {
        run(gate, up, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| run(g, u, o));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// Within 2 ulp of libm over the whole clamped range, on a dense grid.
    #[test]
    fn exp_matches_libm() {
        let mut worst = 0;
        let mut x = EXP_MIN;
        while x < EXP_MAX {
            let want = x.exp();
            worst = worst.max(ulps(exp(x), want));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        // Saturation outside the range instead of 0 / ∞ / NaN.
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.3e-38);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 2e38);
    }

    /// Every level equals `x / (1 + e^-x) · u` computed with libm, within 4 ulp-ish,
    /// including lengths that leave vector remainders and the parallel split.
    #[test]
    fn silu_mul_matches_reference_at_every_level() -> crate::Result<()> {
        for len in [0usize, 1, 7, 16, 33, 1000, CHUNK * 2 + 5] {
            let gate: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 2001) as f32 - 1000.0) / 50.0)
                .collect();
            let up: Vec<f32> = (0..len)
                .map(|i| ((i * 11 % 97) as f32 - 48.0) / 7.0)
                .collect();
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; len];
                silu_mul_with(isa, &gate, &up, &mut out)?;
                for i in 0..len {
                    let g = gate[i];
                    let want = g / (1.0 + (-g).exp()) * up[i];
                    let tol = 4.0 * f32::EPSILON * want.abs() + 1e-30;
                    assert!(
                        (out[i] - want).abs() <= tol,
                        "{isa:?} len {len} at {i}: silu({g})·{} = {} want {want}",
                        up[i],
                        out[i]
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn silu_mul_rejects_mismatched_lengths() {
        let mut out = vec![0.0; 3];
        let err = silu_mul(&[1.0; 3], &[1.0; 2], &mut out).unwrap_err();
        assert!(err.to_string().contains("up 2"), "{err}");
    }
}
