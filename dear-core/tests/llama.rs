//! The Llama runtime against transformers 5.23 (golden fixtures made by
//! `golden/make_golden.py`), and the packed-batch / KV-cache invariants.

use dear_core::{
    generate, Batch, GenerateOptions, KvCache, LanguageModel, LoadOptions, Outputs, Quantization,
    Select, WeightDType,
};

use crate::common::{expected, fixture, floats, ids, max_abs_diff, pearson, TestResult};

pub(crate) const FIXTURES: &[&str] = &[
    "tiny-gqa",
    "tiny-llama3",
    "tiny-bf16",
    "tiny-sharded",
    "tiny-bias",
];

fn load(name: &str, options: &LoadOptions) -> LanguageModel {
    LanguageModel::load(fixture(name), options)
        .unwrap_or_else(|e| panic!("cannot load {name}: {e}"))
}

/// Last-token logits and final hidden states equal transformers' within 1e-4 (f32).
#[test]
fn logits_and_hidden_match_transformers() -> TestResult {
    for name in FIXTURES {
        let lm = load(name, &LoadOptions::default());
        let exp = expected(name);
        let inputs = ids(&exp["inputs"]);
        let want_logits = floats(&exp["last_logits"]);
        let want_hidden = floats(&exp["last_hidden"]);
        for (i, input) in inputs.iter().enumerate() {
            let batch = Batch::from_sequences(std::slice::from_ref(input))?;
            let out = lm.llama().forward(
                &batch,
                &mut [],
                Outputs::last_logits().with_hidden(Select::Last),
            )?;
            let logits = out.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?;
            let hidden = out.hidden.ok_or("no hidden")?.get(0)?.to_vec1::<f32>()?;
            let d = max_abs_diff(&logits, &want_logits[i]);
            assert!(d < 1e-4, "{name} input {i}: logits differ by {d}");
            let d = max_abs_diff(&hidden, &want_hidden[i]);
            assert!(d < 1e-4, "{name} input {i}: hidden states differ by {d}");
        }
    }
    Ok(())
}

/// Greedy continuations equal transformers' `generate(do_sample=False)`, decoding all
/// prompts of a fixture in one batch.
#[test]
fn greedy_generation_matches_transformers() -> TestResult {
    for name in FIXTURES {
        let lm = load(name, &LoadOptions::default());
        let exp = expected(name);
        let inputs = ids(&exp["inputs"]);
        let want = ids(&exp["greedy"]);
        let opts = GenerateOptions::default()
            .with_max_new_tokens(8)
            .with_stop_tokens(vec![]);
        let mut streamed = vec![Vec::new(); inputs.len()];
        let out = generate(lm.llama(), &inputs, &opts, &[], &mut |seq, tok| {
            streamed[seq].push(tok);
            true
        })?;
        for (i, g) in out.iter().enumerate() {
            assert_eq!(g.tokens, want[i], "{name} prompt {i}");
            assert_eq!(streamed[i], want[i], "{name} prompt {i}: streamed tokens");
        }
    }
    Ok(())
}

/// A packed batch of sequences of different lengths gives each sequence's outputs alone.
#[test]
fn packed_batch_equals_one_by_one() -> TestResult {
    let lm = load("tiny-llama3", &LoadOptions::default());
    let inputs = ids(&expected("tiny-llama3")["inputs"]);
    let packed = lm.llama().forward(
        &Batch::from_sequences(&inputs)?,
        &mut [],
        Outputs::last_logits().with_hidden(Select::Last),
    )?;
    let packed_logits = packed.logits.ok_or("no logits")?;
    for (i, input) in inputs.iter().enumerate() {
        let alone = lm
            .llama()
            .forward(
                &Batch::from_sequences(std::slice::from_ref(input))?,
                &mut [],
                Outputs::last_logits(),
            )?
            .logits
            .ok_or("no logits")?;
        let d = max_abs_diff(
            &packed_logits.get(i)?.to_vec1::<f32>()?,
            &alone.get(0)?.to_vec1::<f32>()?,
        );
        assert!(d < 1e-5, "sequence {i}: packed differs from alone by {d}");
    }
    // Every position's logits: the last row of each sequence is its last-token logits.
    let all = lm
        .llama()
        .forward(
            &Batch::from_sequences(&inputs)?,
            &mut [],
            Outputs::default().with_logits(Select::All),
        )?
        .logits
        .ok_or("no logits")?;
    let total: usize = inputs.iter().map(Vec::len).sum();
    assert_eq!(all.dims()[0], total);
    let last_of_second = inputs[0].len() + inputs[1].len() - 1;
    let d = max_abs_diff(
        &all.get(last_of_second)?.to_vec1::<f32>()?,
        &packed_logits.get(1)?.to_vec1::<f32>()?,
    );
    assert!(
        d < 1e-5,
        "all-positions logits disagree with last-token logits by {d}"
    );
    Ok(())
}

/// Feeding a sequence in chunks through a KV cache gives the logits of one pass.
#[test]
fn kv_cache_chunks_equal_one_pass() -> TestResult {
    let lm = load("tiny-gqa", &LoadOptions::default());
    let exp = expected("tiny-gqa");
    let input = ids(&exp["inputs"])[2].clone();
    let want = &floats(&exp["last_logits"])[2];
    let mut cache = KvCache::new();
    let mut last = None;
    for chunk in [&input[..5], &input[5..6], &input[6..]] {
        let mut batch = Batch::new();
        batch.push(chunk, cache.len())?;
        last = lm
            .llama()
            .forward(
                &batch,
                std::slice::from_mut(&mut cache),
                Outputs::last_logits(),
            )?
            .logits;
    }
    assert_eq!(cache.len(), input.len());
    let got = last.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?;
    let d = max_abs_diff(&got, want);
    assert!(d < 1e-4, "chunked logits differ by {d}");
    Ok(())
}

/// bf16 activations stay close to the f32 reference.
#[test]
fn bf16_dtype_is_close() -> TestResult {
    let lm = load(
        "tiny-bf16",
        &LoadOptions::default().with_dtype(WeightDType::BF16),
    );
    let exp = expected("tiny-bf16");
    let input = ids(&exp["inputs"])[1].clone();
    let out = lm.llama().forward(
        &Batch::from_sequences(&[input])?,
        &mut [],
        Outputs::last_logits(),
    )?;
    let got = out.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?;
    let want = &floats(&exp["last_logits"])[1];
    let d = max_abs_diff(&got, want);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        d < 0.05 * scale.max(1.0),
        "bf16 logits differ by {d} (scale {scale})"
    );
    Ok(())
}

/// Quantizing at load (q8_0, q4_0) keeps the logits close to the dense reference.
#[test]
fn quantized_at_load_tracks_reference() -> TestResult {
    let exp = expected("tiny-gqa");
    let inputs = ids(&exp["inputs"]);
    let want = floats(&exp["last_logits"]);
    for (quant, min_r) in [(Quantization::Q8_0, 0.995), (Quantization::Q4_0, 0.8)] {
        let lm = load("tiny-gqa", &LoadOptions::default().with_quantization(quant));
        let out = lm
            .llama()
            .forward(
                &Batch::from_sequences(&inputs)?,
                &mut [],
                Outputs::last_logits(),
            )?
            .logits
            .ok_or("no logits")?;
        for (i, w) in want.iter().enumerate() {
            let r = pearson(&out.get(i)?.to_vec1::<f32>()?, w);
            assert!(r > min_r, "{quant:?} input {i}: correlation {r}");
        }
    }
    Ok(())
}

/// `ForwardOptions::with_interrupt` is polled before every layer and stops the pass at
/// the first `true`; a generation deadline stops even the prompt's pass.
#[test]
fn an_interrupt_stops_a_pass_between_layers() -> TestResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let lm = load("tiny-gqa", &LoadOptions::default());
    let layers = lm.llama().config().num_layers;
    assert!(layers >= 2);
    let batch = Batch::from_sequences(&[vec![5u32, 6, 7]])?;
    let run = |stop_at: usize| {
        let polls = AtomicUsize::new(0);
        let interrupt = || polls.fetch_add(1, Ordering::Relaxed) + 1 >= stop_at;
        let options = dear_core::ForwardOptions::default().with_interrupt(&interrupt);
        let result = lm
            .llama()
            .forward_with(&batch, &mut [], Outputs::last_logits(), options);
        (result, polls.load(Ordering::Relaxed))
    };
    let (done, polls) = run(usize::MAX);
    done?;
    assert_eq!(polls, layers, "polled once per layer");
    for stop_at in [1, layers] {
        let (stopped, polls) = run(stop_at);
        assert!(
            matches!(stopped, Err(dear_core::Error::Cancelled)),
            "{stopped:?}"
        );
        assert_eq!(polls, stop_at, "stopped at the first true");
    }

    let past = std::time::Instant::now();
    let err = lm
        .generate(
            &[5, 6, 7],
            &GenerateOptions::default().with_deadline(past),
            &mut |_| true,
        )
        .err()
        .ok_or("generated past the deadline")?;
    assert!(
        matches!(err, dear_core::Error::DeadlineExceeded { .. }),
        "{err}"
    );
    Ok(())
}
