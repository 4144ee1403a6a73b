//! dear's CPU kernels against the reference path on the default model (Q4_1): the
//! integer kernels must give the scores of the unoptimised path (weights dequantized to
//! f32 for every product), and re-quantized weights must load and behave.

use std::sync::Arc;

use dear_core::{
    Batch, GenerateOptions, LanguageModel, LoadOptions, Outputs, Passage, PointwiseConfig,
    PointwiseScorer, Quantization, QuantizedMatmul, Query,
};

use crate::common::{max_abs_diff, pearson, TestResult};

fn load(options: LoadOptions) -> Arc<LanguageModel> {
    let path = dear_core::default_model_path();
    assert!(
        path.is_file(),
        "the default model is missing at {}: run `bash scripts/fetch-model.sh` first",
        path.display()
    );
    Arc::new(
        LanguageModel::load(path, &options)
            .unwrap_or_else(|e| panic!("cannot load the default model: {e}")),
    )
}

fn passages() -> Vec<Passage> {
    [
        "Rain is liquid water in the form of droplets that have condensed from atmospheric water vapor.",
        "The Rust compiler checks borrows at compile time, so data races cannot happen in safe code.",
        "Clouds form when water vapour cools and condenses around dust; droplets grow until they fall as rain.",
        "A sonnet is a poem of fourteen lines, usually in iambic pentameter.",
        "Evaporation from oceans supplies most of the moisture that later falls as precipitation.",
        "The stock market closed higher on Friday after a week of losses.",
    ]
    .into_iter()
    .map(Passage::new)
    .collect()
}

fn scores(lm: &Arc<LanguageModel>) -> Vec<f32> {
    let scorer = PointwiseScorer::new(lm.clone(), None, PointwiseConfig::yes_no()).expect("scorer");
    scorer
        .score(&Query::new("what causes rain"), &passages())
        .expect("scores")
}

/// The default kernels (16-bit activations, integer dot products) score like the
/// reference path: measured within 1e-3 here (the bound allows 2e-3 because the
/// summation order, and so the last bits, differ between AVX2 and AVX-512 machines).
/// 8-bit activations (llama.cpp's rounding) move this 135M model's yes/no scores by
/// a few tenths: that is why they are not the default.
#[test]
fn integer_kernels_score_like_the_dequantized_path() -> TestResult {
    let reference = scores(&load(
        LoadOptions::default().with_quantized_matmul(QuantizedMatmul::Dequantize),
    ));
    let int16 = scores(&load(LoadOptions::default()));
    let int8 = scores(&load(
        LoadOptions::default().with_quantized_matmul(QuantizedMatmul::Int8),
    ));
    let d16 = max_abs_diff(&reference, &int16);
    assert!(
        d16 < 2e-3,
        "int16 vs reference: {d16} ({reference:?} vs {int16:?})"
    );
    let d8 = max_abs_diff(&reference, &int8);
    assert!(d8 > d16, "int8 ({d8}) rounds more than int16 ({d16})");
    assert!(
        d8 < 0.5,
        "int8 vs reference: {d8} ({reference:?} vs {int8:?})"
    );
    let r = pearson(&reference, &int8);
    assert!(r > 0.8, "int8 correlation {r}: {reference:?} vs {int8:?}");
    Ok(())
}

/// A long prompt (prefill in many-row products and blocked attention) then greedy
/// decoding (one-row products, attention over the cache): the same tokens as the
/// reference path, and last-position logits within 1e-2.
#[test]
fn integer_kernels_generate_like_the_dequantized_path() -> TestResult {
    let reference = load(LoadOptions::default().with_quantized_matmul(QuantizedMatmul::Dequantize));
    let fast = load(LoadOptions::default());
    let text = passages()
        .iter()
        .map(|p| p.text.clone())
        .collect::<Vec<_>>()
        .join(" ");
    let prompt = fast.chat_prompt(&format!("Summarise in one sentence: {text}"))?;
    let logits = |lm: &LanguageModel| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let out = lm.llama().forward(
            &Batch::from_sequences(std::slice::from_ref(&prompt))?,
            &mut [],
            Outputs::last_logits(),
        )?;
        Ok(out.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?)
    };
    let d = max_abs_diff(&logits(&reference)?, &logits(&fast)?);
    assert!(d < 1e-2, "last-position logits differ by {d}");
    let options = GenerateOptions::default().with_max_new_tokens(16);
    let a = reference.generate(&prompt, &options, &mut |_| true)?;
    let b = fast.generate(&prompt, &options, &mut |_| true)?;
    assert_eq!(a.tokens, b.tokens);
    Ok(())
}

/// The same weights re-quantized at load: `dense` computes what the reference path
/// computes; q8_0 and q4_k are finer roundings of the same values, so their scores
/// track the stored Q4_1 model's without being equal; q4_0 (a coarser, symmetric
/// rounding of already rounded values) loads and runs, and moves the scores most.
#[test]
fn gguf_weights_requantize_at_load() -> TestResult {
    let reference = scores(&load(
        LoadOptions::default().with_quantized_matmul(QuantizedMatmul::Dequantize),
    ));
    let dense = scores(&load(
        LoadOptions::default().with_quantization(Quantization::Dense),
    ));
    let d = max_abs_diff(&reference, &dense);
    assert!(d < 1e-3, "dense vs stored Q4_1: {d}");
    let mut moved = Vec::new();
    for q in [Quantization::Q8_0, Quantization::Q4K, Quantization::Q4_0] {
        let got = scores(&load(LoadOptions::default().with_quantization(q)));
        assert!(got.iter().all(|s| s.is_finite()), "{q:?}: {got:?}");
        let d = max_abs_diff(&reference, &got);
        assert!(
            d > 1e-5,
            "{q:?} changed nothing: were the weights converted?"
        );
        if q != Quantization::Q4_0 {
            let r = pearson(&reference, &got);
            assert!(r > 0.9, "{q:?}: correlation {r} ({reference:?} vs {got:?})");
        }
        moved.push(d);
    }
    // q8_0 keeps the Q4_1 values almost exactly (8 bits per value): the least change.
    assert!(
        moved[0] < moved[2],
        "q8_0 moved {} vs q4_0 {}",
        moved[0],
        moved[2]
    );
    Ok(())
}
