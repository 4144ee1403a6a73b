//! CPU compute kernels behind the network code: the quantized GEMM used for prefill
//! and decoding ([`qgemm`]), the f32 product with dequantized weight blocks used for
//! decoding without rounding the activations (`dequant`, on `qgemm`'s block decoder),
//! blocked causal attention over packed sequences ([`attention`]) and fused
//! element-wise activations ([`activation`]).
//!
//! Every kernel but `dequant` (portable code only) has a portable scalar reference
//! and SIMD versions chosen at run time
//! from the CPU's features ([`Isa::detect`]), so one binary runs everywhere and uses
//! AVX2 or AVX-512 (with VNNI) where present. `unsafe` lives only in the `*_x86`
//! modules, each block with a SAFETY comment.
//!
//! This module is public for dear-core's own benchmarks; it is not a stable API.

pub mod activation;
pub mod attention;
pub(crate) mod dequant;
pub mod qgemm;

use std::sync::OnceLock;

/// An instruction-set level a kernel can run at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no intrinsics: the reference every SIMD path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA (+ F16C).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (Zen 4, Ice Lake and later).
    Avx512,
}

impl Isa {
    /// The best level this CPU supports, detected once. `DEAR_ISA=scalar|avx2|avx512`
    /// lowers it (for comparisons); asking for more than the CPU has is ignored.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::best_supported();
            let wanted = match std::env::var("DEAR_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") => Isa::Avx2,
                Some("avx512") => Isa::Avx512,
                _ => best,
            };
            wanted.min(best)
        })
    }

    /// Every level this CPU can run, lowest first (tests compare them all).
    pub fn available() -> Vec<Isa> {
        let best = Self::best_supported();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| *i <= best)
            .collect()
    }

    fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}
