//! Causal GQA attention: `dear_core::kernels::attention` at every [`Isa`] the CPU has
//! versus candle-nn's `flash_attn_varlen_cpu`, on SmolLM2-135M shapes (9 query heads,
//! 3 kv heads, head dim 64):
//! (a) one 2,052-token prompt, (b) 16 sequences × 228 tokens packed, (c) decode: one
//! query against 2,100 cached keys.
//!
//! `cargo bench -p dear-core --bench attention`; `ATTN_BENCH_SECS` sets the time per
//! measurement (default 2 s). FLOPs count `4 · d · hq` per visible (query, key) pair
//! (the causal square halved); `ATTN_BENCH_CASE=c` runs only case (c).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use dear_core::kernels::attention::{attention_with, SeqSpan};
use dear_core::kernels::Isa;

const HQ: usize = 9;
const HKV: usize = 3;
const D: usize = 64;

struct Case {
    name: &'static str,
    /// `(lq, lk)` per sequence.
    lens: Vec<(usize, usize)>,
}

impl Case {
    fn flops(&self) -> f64 {
        self.lens
            .iter()
            .map(|&(lq, lk)| {
                let (lq, lk) = (lq as f64, lk as f64);
                4.0 * (D * HQ) as f64 * (lq * (lk - lq) + lq * lq / 2.0)
            })
            .sum()
    }
}

/// Median wall time of `f` over repeated runs within the time budget (at least 3 runs
/// after one warm-up, unless a single run takes longer than the budget).
fn time(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    f();
    let first = start.elapsed();
    if first > budget {
        return first;
    }
    let mut times = Vec::new();
    let begin = Instant::now();
    while times.len() < 3 || (begin.elapsed() < budget && times.len() < 1000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::var("ATTN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    let dev = Device::Cpu;
    let scale = 1.0 / (D as f32).sqrt();
    let cases = [
        Case {
            name: "(a) prefill 1 × 2052",
            lens: vec![(2052, 2052)],
        },
        Case {
            name: "(b) prefill 16 × 228",
            lens: vec![(228, 228); 16],
        },
        Case {
            name: "(c) decode 1 q × 2100 k",
            lens: vec![(1, 2100)],
        },
    ];
    println!(
        "attention f32, hq={HQ} hkv={HKV} d={D}, {} rayon threads, best isa {:?}",
        rayon::current_num_threads(),
        Isa::detect()
    );
    println!(
        "{:<26} {:<14} {:>10} {:>10} {:>9}",
        "case", "kernel", "ms", "GFLOP/s", "× candle"
    );
    // ATTN_BENCH_CASE=c runs only the cases whose name starts with "(c)".
    let only = std::env::var("ATTN_BENCH_CASE").ok();
    for case in cases.iter().filter(|c| {
        only.as_ref()
            .is_none_or(|o| c.name.starts_with(&format!("({o})")))
    }) {
        let tq: usize = case.lens.iter().map(|l| l.0).sum();
        let tk: usize = case.lens.iter().map(|l| l.1).sum();
        let q = Tensor::randn(0f32, 1.0, (tq, HQ, D), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (tk, HKV, D), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (tk, HKV, D), &dev)?;
        let sq: Vec<u32> = case.lens.iter().map(|l| l.0 as u32).collect();
        let sk: Vec<u32> = case.lens.iter().map(|l| l.1 as u32).collect();
        let max_q = case.lens.iter().map(|l| l.0).max().unwrap_or(0);
        let max_k = case.lens.iter().map(|l| l.1).max().unwrap_or(0);
        let (sq_t, sk_t) = (
            Tensor::new(sq.as_slice(), &dev)?,
            Tensor::new(sk.as_slice(), &dev)?,
        );
        let flops = case.flops();
        let row = |kernel: &str, t: Duration, base: Option<Duration>| {
            let ms = t.as_secs_f64() * 1e3;
            let speedup = base.map_or(String::from("1.00"), |b| {
                format!("{:.2}", b.as_secs_f64() / t.as_secs_f64())
            });
            println!(
                "{:<26} {:<14} {:>10.3} {:>10.1} {:>9}",
                case.name,
                kernel,
                ms,
                flops / t.as_secs_f64() / 1e9,
                speedup
            );
        };
        let mut candle_out = None;
        let candle = time(budget, || {
            candle_out = Some(
                candle_nn::attention::flash_attn_varlen_cpu(
                    &q, &k, &v, None, &sq_t, &sk_t, max_q, max_k, scale, true, None, None,
                )
                .expect("candle attention"),
            );
        });
        row("candle-nn", candle, None);
        let want = candle_out.expect("ran").flatten_all()?.to_vec1::<f32>()?;
        let (qv, kv, vv) = (
            q.flatten_all()?.to_vec1::<f32>()?,
            k.flatten_all()?.to_vec1::<f32>()?,
            v.flatten_all()?.to_vec1::<f32>()?,
        );
        let mut spans = Vec::new();
        let (mut at_q, mut at_k) = (0, 0);
        for &(lq, lk) in &case.lens {
            spans.push(SeqSpan {
                q: at_q..at_q + lq,
                k: at_k..at_k + lk,
            });
            at_q += lq;
            at_k += lk;
        }
        let mut out = vec![0f32; qv.len()];
        for isa in Isa::available() {
            // The scalar reference is slow: one short measurement.
            let b = if isa == Isa::Scalar {
                budget.min(Duration::from_millis(500))
            } else {
                budget
            };
            let t = time(b, || {
                attention_with(isa, &qv, &kv, &vv, &spans, HQ, HKV, D, scale, &mut out)
                    .expect("attention");
            });
            let diff = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{isa:?} differs from candle by {diff}");
            row(&format!("dear {isa:?}"), t, Some(candle));
        }
    }
    if only.as_ref().is_none_or(|o| o == "d") {
        cold_decode(scale, budget)?;
    }
    Ok(())
}

/// (d) decode as in a model: one query against 2,100 cached keys in each of 30
/// layers, every layer its own K/V (97 MB in all, more than the caches hold), so K and
/// V stream from memory as in generation. Reported per layer.
fn cold_decode(scale: f32, budget: Duration) -> Result<(), Box<dyn std::error::Error>> {
    const LAYERS: usize = 30;
    const LK: usize = 2100;
    let mut seed = 1u32;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let q = rnd(HQ * D);
    let kv: Vec<(Vec<f32>, Vec<f32>)> = (0..LAYERS)
        .map(|_| (rnd(LK * HKV * D), rnd(LK * HKV * D)))
        .collect();
    let spans = [SeqSpan { q: 0..1, k: 0..LK }];
    let mut out = vec![0f32; HQ * D];
    for isa in Isa::available().into_iter().filter(|i| *i != Isa::Scalar) {
        let t = time(budget, || {
            for (k, v) in &kv {
                attention_with(isa, &q, k, v, &spans, HQ, HKV, D, scale, &mut out)
                    .expect("attention");
            }
        });
        let per_layer = t.as_secs_f64() / LAYERS as f64;
        println!(
            "{:<26} {:<14} {:>10.3} {:>10.1} {:>9}",
            "(d) decode, 30 cold layers",
            format!("dear {isa:?}"),
            per_layer * 1e3,
            (2 * LK * HKV * D * 4) as f64 / per_layer / 1e9,
            "GB/s"
        );
    }
    Ok(())
}
