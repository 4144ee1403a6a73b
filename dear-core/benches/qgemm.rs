//! Throughput of `kernels::qgemm` (f32 activations × ggml block-quantized weights)
//! against the f32 path it replaces, on the linear layers of SmolLM2-135M.
//!
//! For each weight shape `[n, k]` and row count `m`, GFLOP/s = `2·m·n·k / seconds`
//! (best of a few runs) of:
//! - `f32`: candle's `x.matmul(&w.t())` with weights dequantized beforehand;
//! - `deq+f32`: the same, dequantizing the weights in every call (what a layer
//!   holding quantized weights does);
//! - `qgemm` at every [`Isa`] this CPU has, Int8 and Int16 activations.
//!
//! ```text
//! cargo bench -p dear-core --bench qgemm
//! DEAR_QGEMM_DTYPES=q4_0,q4_1,q8_0,q4k DEAR_QGEMM_M=1,8,4096 DEAR_QGEMM_SHAPES=576x1536 \
//!     DEAR_QGEMM_ISAS=avx512 cargo bench -p dear-core --bench qgemm
//! ```

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use dear_core::kernels::qgemm::{self, Precision};
use dear_core::kernels::Isa;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `(k, n)` of SmolLM2-135M's projections: q/o (576×576), gate/up (576→1536),
/// down (1536→576), k/v (576→192).
const SHAPES: [(usize, usize); 4] = [(576, 576), (576, 1536), (1536, 576), (576, 192)];

/// Seconds per call of `f`: best of `runs` runs, each long enough (≥ 20 ms) to time.
fn best_of<F: FnMut() -> Res<()>>(runs: usize, mut f: F) -> Res<f64> {
    let t = Instant::now();
    f()?;
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let iters = ((0.02 / once).ceil() as usize).clamp(1, 100_000);
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    Ok(best)
}

fn dtype(name: &str) -> Res<GgmlDType> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q8_0" => GgmlDType::Q8_0,
        "q4k" | "q4_k" => GgmlDType::Q4K,
        other => return Err(format!("unknown dtype {other:?} (q4_0, q4_1, q8_0, q4k)").into()),
    })
}

fn main() -> Res<()> {
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("qgemm bench: run with `cargo bench -p dear-core --bench qgemm`");
        return Ok(());
    }
    let runs: usize = std::env::var("DEAR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dtypes = std::env::var("DEAR_QGEMM_DTYPES").unwrap_or_else(|_| "q4_1".into());
    let ms: Vec<usize> = std::env::var("DEAR_QGEMM_M")
        .unwrap_or_else(|_| "1,4,64,4096".into())
        .split(',')
        .map(|v| v.trim().parse())
        .collect::<Result<_, _>>()?;
    let shapes: Vec<(usize, usize)> = match std::env::var("DEAR_QGEMM_SHAPES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                let (k, n) = s.trim().split_once('x').ok_or("shape as KxN")?;
                Ok((k.parse()?, n.parse()?))
            })
            .collect::<Res<_>>()?,
        Err(_) => SHAPES.to_vec(),
    };
    let only = std::env::var("DEAR_QGEMM_ISAS")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let isas: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|i| *i != Isa::Scalar)
        .filter(|i| {
            only.is_empty()
                || only
                    .split(',')
                    .any(|o| o == format!("{i:?}").to_ascii_lowercase())
        })
        .collect();
    let dev = Device::Cpu;
    println!(
        "qgemm: GFLOP/s (2·m·n·k / s, best of {runs}), {} rayon threads; (×N) = vs f32",
        rayon::current_num_threads()
    );
    for name in dtypes.split(',') {
        let dt = dtype(name)?;
        print!(
            "\n{:>6} {:>9} {:>5} {:>7} {:>7}",
            format!("{dt:?}"),
            "k×n",
            "m",
            "f32",
            "deq+f32"
        );
        for isa in &isas {
            for p in ["Int8", "Int16"] {
                print!(" {:>16}", format!("{isa:?} {p}"));
            }
        }
        println!();
        for &(k, n) in &shapes {
            let block = if dt == GgmlDType::Q4K { 256 } else { 32 };
            if k % block != 0 {
                println!(
                    "{:>6} {:>9}  (k not a multiple of {block})",
                    "",
                    format!("{k}×{n}")
                );
                continue;
            }
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?;
            let q = QTensor::quantize(&w, dt)?;
            let bytes = q.data()?.into_owned();
            let wd = q.dequantize(&dev)?;
            for &m in &ms {
                let flop = 2.0 * (m * n * k) as f64;
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let f32_s = best_of(runs, || {
                    x.matmul(&wd.t()?)?;
                    Ok(())
                })?;
                let deq_s = best_of(runs, || {
                    let wd = q.dequantize(&dev)?;
                    x.matmul(&wd.t()?)?;
                    Ok(())
                })?;
                let base = flop / f32_s / 1e9;
                print!(
                    "{:>6} {:>9} {m:>5} {base:>7.1} {:>7.1}",
                    "",
                    format!("{k}×{n}"),
                    flop / deq_s / 1e9
                );
                let mut out = vec![0f32; m * n];
                for &isa in &isas {
                    for p in [Precision::Int8, Precision::Int16] {
                        let s = best_of(runs, || {
                            qgemm::matmul_with(isa, dt, &bytes, n, k, &xs, m, &mut out, p)?;
                            Ok(())
                        })?;
                        let g = flop / s / 1e9;
                        print!(" {:>16}", format!("{g:.1} (×{:.2})", g / base));
                    }
                }
                println!();
            }
        }
    }
    Ok(())
}
