//! The listwise stage end to end on the default model, and its failure handling.

use std::sync::Arc;
use std::time::Instant;

use dear_core::{
    parse_ranking, AdapterMode, Batch, Error, GenerateOptions, LanguageModel, ListwiseConfig,
    ListwiseMode, ListwiseOptions, ListwisePrompt, ListwiseRanker, LoadOptions, Outputs, Passage,
    Query, StageFailure, WindowConfig,
};

use crate::common::{default_model, fixture, floats, ids, max_abs_diff, short_texts, TestResult};

fn passages(n: usize) -> Vec<Passage> {
    short_texts(n)
        .into_iter()
        .enumerate()
        .map(|(i, t)| Passage::new(t).with_id(format!("d{i}")))
        .collect()
}

fn is_permutation(order: &[usize], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order
            .iter()
            .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
}

fn config(mode: ListwiseMode, prompt: ListwisePrompt) -> ListwiseConfig {
    ListwiseConfig {
        prompt,
        mode,
        max_new_tokens: 64,
        ..ListwiseConfig::default()
    }
}

#[test]
fn every_mode_returns_a_permutation() -> TestResult {
    let lm = Arc::new(default_model());
    let query = Query::new("What is the capital of France?");
    let docs = passages(4);
    for prompt in [ListwisePrompt::RankLlm, ListwisePrompt::Plain] {
        for mode in [
            ListwiseMode::Generate,
            ListwiseMode::Constrained,
            ListwiseMode::FirstToken,
        ] {
            let r = ListwiseRanker::new(lm.clone(), None, config(mode, prompt))?;
            let out = r.rank(&query, &docs, &ListwiseOptions::default())?;
            assert!(
                out.failure.is_none(),
                "{mode:?} {prompt:?}: {:?}",
                out.failure
            );
            assert!(
                is_permutation(&out.order, 4),
                "{mode:?} {prompt:?}: {:?}",
                out.order
            );
            assert_eq!(out.windows.len(), 1);
            if mode == ListwiseMode::Constrained {
                // Always a complete, well-formed permutation of the window's ids.
                let raw = &out.windows[0].raw;
                let first = if prompt == ListwisePrompt::RankLlm {
                    1
                } else {
                    0
                };
                let mut ids: Vec<usize> = raw
                    .split(" > ")
                    .map(|t| {
                        t.trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse()
                            .unwrap_or(99)
                    })
                    .collect();
                ids.sort_unstable();
                assert_eq!(ids, (first..first + 4).collect::<Vec<_>>(), "raw {raw:?}");
                assert_eq!(out.windows[0].parsed_ids, 4);
                let parsed = parse_ranking(raw, 4, prompt.id_base());
                assert_eq!(parsed.order, out.order);
            }
            if mode == ListwiseMode::FirstToken {
                assert_eq!(out.windows[0].generated_tokens, 0);
            }
        }
    }
    Ok(())
}

#[test]
fn windows_slide_over_long_lists() -> TestResult {
    let lm = Arc::new(default_model());
    let docs = passages(30);
    let cfg = ListwiseConfig {
        mode: ListwiseMode::FirstToken,
        window: WindowConfig::dear_eval(),
        ..ListwiseConfig::default()
    };
    let r = ListwiseRanker::new(lm, None, cfg)?;
    let out = r.rank(
        &Query::new("capital of France"),
        &docs,
        &ListwiseOptions::default(),
    )?;
    assert!(is_permutation(&out.order, 30));
    let spans: Vec<(usize, usize)> = out.windows.iter().map(|w| (w.start, w.end)).collect();
    assert_eq!(spans, vec![(10, 30), (0, 20)]);
    Ok(())
}

#[test]
fn small_and_empty_inputs() -> TestResult {
    let lm = Arc::new(default_model());
    let r = ListwiseRanker::new(
        lm,
        None,
        config(ListwiseMode::Generate, ListwisePrompt::RankLlm),
    )?;
    let q = Query::new("capital of France");
    assert_eq!(
        r.rank(&q, &[], &ListwiseOptions::default())?.order,
        Vec::<usize>::new()
    );
    let one = r.rank(&q, &passages(1), &ListwiseOptions::default())?;
    assert_eq!(one.order, vec![0]);
    assert!(one.windows.is_empty(), "no model call for one passage");
    let empty_text = vec![
        Passage::new(""),
        Passage::new("Paris is the capital of France."),
    ];
    assert!(is_permutation(
        &r.rank(&q, &empty_text, &ListwiseOptions::default())?.order,
        2
    ));
    assert!(matches!(
        r.rank(&Query::new(" "), &passages(2), &ListwiseOptions::default()),
        Err(Error::EmptyInput(_))
    ));
    Ok(())
}

#[test]
fn failures_keep_the_incoming_order() -> TestResult {
    let lm = Arc::new(default_model());
    let r = ListwiseRanker::new(
        lm.clone(),
        None,
        config(ListwiseMode::Generate, ListwisePrompt::RankLlm),
    )?;
    let docs = passages(5);
    let out = r.rank(
        &Query::new("capital of France"),
        &docs,
        &ListwiseOptions::default().with_deadline(Instant::now()),
    )?;
    assert_eq!(out.order, vec![0, 1, 2, 3, 4]);
    assert!(
        matches!(out.failure, Some(StageFailure::Deadline { .. })),
        "{:?}",
        out.failure
    );
    // A deadline that passes during a window's passes (its prompt is ~500 tokens)
    // stops every mode there, with the same outcome.
    let docs = passages(20);
    for mode in [
        ListwiseMode::Generate,
        ListwiseMode::Constrained,
        ListwiseMode::FirstToken,
    ] {
        let r = ListwiseRanker::new(lm.clone(), None, config(mode, ListwisePrompt::RankLlm))?;
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        let out = r.rank(
            &Query::new("capital of France"),
            &docs,
            &ListwiseOptions::default().with_deadline(soon),
        )?;
        assert_eq!(out.order, (0..20).collect::<Vec<_>>(), "{mode:?}");
        assert!(
            matches!(out.failure, Some(StageFailure::Deadline { .. })),
            "{mode:?}: {:?}",
            out.failure
        );
    }
    // An adapter that is not loaded is refused up front.
    let err = ListwiseRanker::new(lm, Some("missing"), ListwiseConfig::default()).err();
    assert!(matches!(err, Some(Error::InvalidArgument(_))), "{err:?}");
    Ok(())
}

/// One base, two adapters selected per call: the listwise CAUSAL_LM adapter and a
/// pointwise SEQ_CLS adapter; each gives its own outputs (peft's, for the causal one).
#[test]
fn listwise_and_pointwise_adapters_share_one_base() -> TestResult {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lora");
    let opts = LoadOptions::default()
        .with_adapter(
            dir.join("causal-lora").to_string_lossy(),
            AdapterMode::Unmerged,
        )
        .with_adapter(
            dir.join("seqcls-a").to_string_lossy(),
            AdapterMode::Unmerged,
        );
    let lm = LanguageModel::load(fixture("tiny-gqa"), &opts)?;
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let causal = lm.llama().adapter("causal-lora");
    let input = ids(&exp["causal"]["inputs"])[0].clone();
    let out = lm.generate(
        &input,
        &GenerateOptions::default()
            .with_max_new_tokens(8)
            .with_stop_tokens(vec![])
            .with_adapter(causal),
        &mut |_| true,
    )?;
    assert_eq!(out.tokens, ids(&exp["causal"]["unmerged"]["greedy"])[0]);
    // Without the adapter the base's own continuation differs.
    let plain = lm.llama().forward(
        &Batch::from_sequences(std::slice::from_ref(&input))?,
        &mut [],
        Outputs::last_logits(),
    )?;
    let base_logits = plain.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?;
    let want = &floats(&exp["causal"]["unmerged"]["last_logits"])[0];
    assert!(max_abs_diff(&base_logits, want) > 1e-2);
    Ok(())
}
