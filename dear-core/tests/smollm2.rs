//! The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) end to end.

use dear_core::{Batch, GenerateOptions, Outputs};

use crate::common::{default_model, TestResult};

#[test]
fn answers_the_capital_of_france() -> TestResult {
    let lm = default_model();
    let prompt = lm.chat_prompt("What is the capital of France?")?;
    let out = lm.generate(
        &prompt,
        &GenerateOptions::default().with_max_new_tokens(24),
        &mut |_| true,
    )?;
    let text = lm.tokenizer().decode(&out.tokens, true)?;
    assert!(text.contains("Paris"), "answer: {text:?}");
    Ok(())
}

/// Batched decoding of several prompts gives each prompt's own greedy answer.
#[test]
fn batched_generation_equals_single() -> TestResult {
    let lm = default_model();
    let prompts = vec![
        lm.chat_prompt("What is the capital of France?")?,
        lm.chat_prompt("Name a primary colour.")?,
    ];
    let opts = GenerateOptions::default().with_max_new_tokens(8);
    let batched = dear_core::generate(
        lm.llama(),
        &prompts,
        &opts,
        lm.tokenizer().end_token_ids(),
        &mut |_, _| true,
    )?;
    for (p, b) in prompts.iter().zip(&batched) {
        let single = lm.generate(p, &opts, &mut |_| true)?;
        assert_eq!(single.tokens, b.tokens);
    }
    Ok(())
}

/// Q4_1 weights, packed: each sequence's logits equal its logits alone.
#[test]
fn gguf_packed_equals_single() -> TestResult {
    let lm = default_model();
    let seqs = vec![
        lm.plain_prompt("query: what causes rain")?,
        lm.plain_prompt("document: Rain is liquid water in the form of droplets.")?,
    ];
    let packed = lm
        .llama()
        .forward(
            &Batch::from_sequences(&seqs)?,
            &mut [],
            Outputs::last_logits(),
        )?
        .logits
        .ok_or("no logits")?;
    for (i, s) in seqs.iter().enumerate() {
        let alone = lm
            .llama()
            .forward(
                &Batch::from_sequences(std::slice::from_ref(s))?,
                &mut [],
                Outputs::last_logits(),
            )?
            .logits
            .ok_or("no logits")?;
        let a = packed.get(i)?.to_vec1::<f32>()?;
        let b = alone.get(0)?.to_vec1::<f32>()?;
        let d = crate::common::max_abs_diff(&a, &b);
        assert!(d < 1e-3, "sequence {i}: {d}");
    }
    Ok(())
}

/// Prompts that cannot fit the context window are refused before they are tokenized
/// (bounded time and memory), and a 50 MB passage without spaces costs the listwise
/// prompt no more than a long one.
#[test]
fn huge_prompts_are_refused_before_tokenizing() -> TestResult {
    let lm = default_model();
    let huge = "x".repeat(8 << 20);
    let started = std::time::Instant::now();
    for err in [
        lm.plain_prompt(&huge).err(),
        lm.chat_ids(&[dear_core::ChatMessage::user(huge.as_str())], true)
            .err(),
    ] {
        let err = err.ok_or("an 8 MB prompt was accepted")?;
        assert!(
            matches!(err, dear_core::Error::ContextOverflow { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("refused before tokenizing"),
            "{err}"
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let passage = dear_core::Passage::new("y".repeat(50 << 20));
    let started = std::time::Instant::now();
    let text = dear_core::listwise_passage_text(&passage);
    assert_eq!(text.chars().count(), 1 << 13);
    let ids = dear_core::listwise_prompt_ids(
        &lm,
        dear_core::ListwisePrompt::RankLlm,
        "q",
        &[passage, dear_core::Passage::new("short")],
    )?;
    assert!(ids.len() < 8192, "{}", ids.len());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    Ok(())
}
