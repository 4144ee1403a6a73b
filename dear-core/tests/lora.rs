//! PEFT LoRA adapters and DeAR's pointwise scorer against transformers + peft
//! (fixtures made by `golden/make_lora_golden.py`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dear_core::{
    AdapterMode, Batch, Error, LanguageModel, LoadOptions, Outputs, Passage, PointwiseConfig,
    PointwiseScorer, Quantization, Query, Scheduler,
};

use crate::common::{fixture, floats, ids, max_abs_diff, TestResult};

pub(crate) fn lora_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/lora")
        .join(name)
}

pub(crate) fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(lora_dir("expected.json")).expect("lora/expected.json");
    serde_json::from_str(&text).expect("valid json")
}

/// tiny-gqa with room for DeAR's 228-token inputs (transformers ignores
/// `max_position_embeddings`; dear enforces it).
pub(crate) fn base_copy(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(from).expect("dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
    }
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    cfg["max_position_embeddings"] = 512.into();
    std::fs::write(&path, cfg.to_string()).expect("write");
    dir
}

/// Queries, passages, the (query, passage) pair of each case, and each case's input ids.
type Cases = (Vec<Query>, Vec<Passage>, Vec<(usize, usize)>, Vec<Vec<u32>>);

fn cases(exp: &serde_json::Value) -> Cases {
    let d = &exp["dear_inputs"];
    let queries: Vec<Query> = d["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .map(|q| Query::new(q.as_str().expect("str")))
        .collect();
    let passages: Vec<Passage> = d["passages"]
        .as_array()
        .expect("passages")
        .iter()
        .map(|p| {
            let mut passage = Passage::new(p["text"].as_str().expect("text"));
            if let Some(t) = p["title"].as_str().filter(|t| !t.is_empty()) {
                passage = passage.with_title(t);
            }
            passage
        })
        .collect();
    let mut pairs = Vec::new();
    let mut inputs = Vec::new();
    for c in d["cases"].as_array().expect("cases") {
        pairs.push((
            c["query_index"].as_u64().expect("qi") as usize,
            c["passage_index"].as_u64().expect("pi") as usize,
        ));
        inputs.push(ids(&serde_json::json!([c["input_ids"]]))[0].clone());
    }
    (queries, passages, pairs, inputs)
}

pub(crate) fn scores_of(
    scorer: &PointwiseScorer,
    exp: &serde_json::Value,
) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let (queries, passages, pairs, _) = cases(exp);
    let mut out = vec![0f32; pairs.len()];
    for (qi, q) in queries.iter().enumerate() {
        let s = scorer.score(q, &passages)?;
        for (k, &(cq, cp)) in pairs.iter().enumerate() {
            if cq == qi {
                out[k] = s[cp];
            }
        }
    }
    Ok(out)
}

pub(crate) fn want(exp: &serde_json::Value, key: &str) -> Vec<f32> {
    floats(&serde_json::json!([exp["scores"][key]]))[0].clone()
}

/// DeAR's input ids, token for token.
#[test]
fn dear_input_format_matches_reference() -> TestResult {
    let exp = expected();
    let base = base_copy(&lora_dir("tiny-seqcls"));
    let lm = Arc::new(LanguageModel::load(base.path(), &LoadOptions::default())?);
    let scorer = PointwiseScorer::new(lm, None, PointwiseConfig::classifier())?;
    let (queries, passages, pairs, inputs) = cases(&exp);
    for (k, &(qi, pi)) in pairs.iter().enumerate() {
        let enc = scorer.encode(&queries[qi], &passages)?;
        assert_eq!(
            enc.full(pi),
            inputs[k],
            "case {k} (query {qi}, passage {pi})"
        );
    }
    Ok(())
}

/// A full `LlamaForSequenceClassification` checkpoint scores like transformers.
#[test]
fn full_checkpoint_scores_match() -> TestResult {
    let exp = expected();
    let base = base_copy(&lora_dir("tiny-seqcls"));
    let lm = Arc::new(LanguageModel::load(base.path(), &LoadOptions::default())?);
    let got = scores_of(
        &PointwiseScorer::new(lm, None, PointwiseConfig::classifier())?,
        &exp,
    )?;
    let d = max_abs_diff(&got, &want(&exp, "base_full"));
    assert!(d < 1e-4, "scores differ by {d}");
    Ok(())
}

/// SEQ_CLS adapters, merged and unmerged, give peft's scores; two unmerged adapters on
/// one base each give their own.
#[test]
fn seqcls_adapters_merged_and_unmerged_match_peft() -> TestResult {
    let exp = expected();
    let base = base_copy(&fixture("tiny-gqa"));
    let base_path = base.path().to_string_lossy().into_owned();
    for (adapter, key) in [("seqcls-a", "seqcls_a"), ("seqcls-b", "seqcls_b")] {
        let opts = LoadOptions::default()
            .with_adapter(lora_dir(adapter).to_string_lossy(), AdapterMode::Merged);
        let lm = Arc::new(LanguageModel::load(&base_path, &opts)?);
        let got = scores_of(
            &PointwiseScorer::new(lm, None, PointwiseConfig::classifier())?,
            &exp,
        )?;
        let d = max_abs_diff(&got, &want(&exp, &format!("{key}_merged")));
        assert!(d < 1e-4, "{adapter} merged: scores differ by {d}");
    }
    let opts = LoadOptions::default()
        .with_adapter(
            lora_dir("seqcls-a").to_string_lossy(),
            AdapterMode::Unmerged,
        )
        .with_adapter(
            lora_dir("seqcls-b").to_string_lossy(),
            AdapterMode::Unmerged,
        );
    let lm = Arc::new(LanguageModel::load(&base_path, &opts)?);
    assert_eq!(lm.llama().adapter_names(), vec!["seqcls-a", "seqcls-b"]);
    for (adapter, key) in [("seqcls-a", "seqcls_a"), ("seqcls-b", "seqcls_b")] {
        let scorer =
            PointwiseScorer::new(lm.clone(), Some(adapter), PointwiseConfig::classifier())?;
        let got = scores_of(&scorer, &exp)?;
        let d = max_abs_diff(&got, &want(&exp, &format!("{key}_unmerged")));
        assert!(d < 1e-4, "{adapter} unmerged: scores differ by {d}");
    }
    Ok(())
}

/// Under q8_0 the merged adapter keeps the reference ordering of each query's passages.
#[test]
fn q8_0_keeps_the_ordering() -> TestResult {
    let exp = expected();
    let base = base_copy(&fixture("tiny-gqa"));
    let opts = LoadOptions::default()
        .with_quantization(Quantization::Q8_0)
        .with_adapter(lora_dir("seqcls-a").to_string_lossy(), AdapterMode::Merged);
    let lm = Arc::new(LanguageModel::load(base.path(), &opts)?);
    let got = scores_of(
        &PointwiseScorer::new(lm, None, PointwiseConfig::classifier())?,
        &exp,
    )?;
    let reference = want(&exp, "seqcls_a_merged");
    let (_, _, pairs, _) = cases(&exp);
    for q in 0..2 {
        let idx: Vec<usize> = (0..pairs.len()).filter(|&k| pairs[k].0 == q).collect();
        let order = |s: &[f32]| {
            let mut o = idx.clone();
            o.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            o
        };
        assert_eq!(order(&got), order(&reference), "query {q}");
    }
    Ok(())
}

/// Shared prefix == unshared; packed == one by one; concurrent == serial.
#[test]
fn batching_strategies_agree() -> TestResult {
    let exp = expected();
    let base = base_copy(&lora_dir("tiny-seqcls"));
    let lm = Arc::new(LanguageModel::load(base.path(), &LoadOptions::default())?);
    let (queries, passages, _, _) = cases(&exp);
    let shared = PointwiseScorer::new(lm.clone(), None, PointwiseConfig::classifier())?;
    let mut cfg = PointwiseConfig::classifier();
    cfg.share_prefix = false;
    let unshared = PointwiseScorer::new(lm.clone(), None, cfg.clone())?;
    cfg.max_batch_tokens = 1; // one passage per batch
    let one_by_one = PointwiseScorer::new(lm.clone(), None, cfg)?;
    let scheduler = Arc::new(Scheduler::new(lm, None, PointwiseConfig::classifier())?);
    for q in &queries {
        let a = shared.score(q, &passages)?;
        let b = unshared.score(q, &passages)?;
        let c = one_by_one.score(q, &passages)?;
        assert!(max_abs_diff(&a, &b) < 1e-5, "shared vs unshared");
        assert!(max_abs_diff(&a, &c) < 1e-5, "packed vs one by one");
        let serial = scheduler.score(q, &passages, None)?.scores;
        assert!(max_abs_diff(&a, &serial) < 1e-5, "scheduler vs direct");
    }
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let r = scheduler.clone();
            let q = queries[i % queries.len()].clone();
            let p = passages.clone();
            std::thread::spawn(move || r.score(&q, &p, None).map(|s| (i, s.scores)))
        })
        .collect();
    for h in handles {
        let (i, s) = h.join().map_err(|_| "thread panicked")??;
        let alone = shared.score(&queries[i % queries.len()], &passages)?;
        assert!(max_abs_diff(&s, &alone) < 1e-5, "concurrent call {i}");
    }
    // Every call and passage was counted once, in at most one round per call.
    let stats = scheduler.batch_stats();
    let calls = queries.len() as u64 + 8;
    assert_eq!(stats.calls, calls);
    assert_eq!(stats.passages, calls * passages.len() as u64);
    assert!(stats.rounds >= 1 && stats.rounds <= calls, "{stats:?}");
    Ok(())
}

/// The CAUSAL_LM adapter (unmerged and merged) reproduces peft's logits and greedy tokens.
#[test]
fn causal_lm_adapter_matches_peft() -> TestResult {
    let exp = expected();
    let causal = &exp["causal"];
    let inputs = ids(&causal["inputs"]);
    for mode in [AdapterMode::Unmerged, AdapterMode::Merged] {
        let key = if mode == AdapterMode::Merged {
            "merged"
        } else {
            "unmerged"
        };
        let opts =
            LoadOptions::default().with_adapter(lora_dir("causal-lora").to_string_lossy(), mode);
        let lm = LanguageModel::load(fixture("tiny-gqa"), &opts)?;
        let adapter = lm.llama().adapter("causal-lora");
        let want_logits = floats(&causal[key]["last_logits"]);
        let want_greedy = ids(&causal[key]["greedy"]);
        for (i, input) in inputs.iter().enumerate() {
            let out = lm.llama().forward_with(
                &Batch::from_sequences(std::slice::from_ref(input))?,
                &mut [],
                Outputs::last_logits(),
                dear_core::ForwardOptions::default().with_adapter(adapter),
            )?;
            let got = out.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?;
            let d = max_abs_diff(&got, &want_logits[i]);
            assert!(d < 1e-4, "{key} input {i}: logits differ by {d}");
            if mode == AdapterMode::Merged {
                let g = lm.generate(
                    input,
                    &dear_core::GenerateOptions::default()
                        .with_max_new_tokens(8)
                        .with_stop_tokens(vec![]),
                    &mut |_| true,
                )?;
                assert_eq!(g.tokens, want_greedy[i], "{key} input {i}: greedy tokens");
            }
        }
    }
    Ok(())
}

/// An adapter given as the model resolves its base (peft's AutoPeftModel).
#[test]
fn adapter_as_model_resolves_its_base() -> TestResult {
    let cache = tempfile::tempdir()?;
    let snap = cache
        .path()
        .join("models--test-org--tiny-gqa/snapshots/0000000000000000000000000000000000000001");
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(cache.path().join("models--test-org--tiny-gqa/refs"))?;
    std::fs::write(
        cache.path().join("models--test-org--tiny-gqa/refs/main"),
        "0000000000000000000000000000000000000001",
    )?;
    for e in std::fs::read_dir(fixture("tiny-gqa"))? {
        let e = e?;
        std::fs::copy(e.path(), snap.join(e.file_name()))?;
    }
    let hub = dear_core::HubOptions::default()
        .with_cache_dir(cache.path())
        .with_offline(true);
    let lm = LanguageModel::load(
        lora_dir("causal-lora"),
        &LoadOptions::default().with_hub(hub),
    )?;
    let exp = expected();
    let input = ids(&exp["causal"]["inputs"])[1].clone();
    let out = lm.llama().forward(
        &Batch::from_sequences(&[input])?,
        &mut [],
        Outputs::last_logits(),
    )?;
    let got = out.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?;
    let d = max_abs_diff(&got, &floats(&exp["causal"]["merged"]["last_logits"])[1]);
    assert!(d < 1e-4, "{d}");
    Ok(())
}

#[test]
fn bad_adapters_and_inputs_are_refused() -> TestResult {
    let base = fixture("tiny-gqa").to_string_lossy().into_owned();
    // An adapter for another base: shapes that do not fit, named.
    let other = tempfile::tempdir()?;
    for e in std::fs::read_dir(lora_dir("seqcls-a"))? {
        let e = e?;
        std::fs::copy(e.path(), other.path().join(e.file_name()))?;
    }
    let err = LanguageModel::load(
        fixture("tiny-llama3"),
        &LoadOptions::default().with_adapter(other.path().to_string_lossy(), AdapterMode::Merged),
    )
    .err()
    .ok_or("loaded an adapter for another base")?;
    let msg = err.to_string();
    assert!(matches!(err, Error::TensorShape { .. }), "{msg}");
    assert!(
        msg.contains("lora_A") || msg.contains("lora_B") || msg.contains("score"),
        "{msg}"
    );
    // A .bin adapter.
    std::fs::rename(
        other.path().join("adapter_model.safetensors"),
        other.path().join("adapter_model.bin"),
    )?;
    let err = LanguageModel::load(
        &base,
        &LoadOptions::default().with_adapter(other.path().to_string_lossy(), AdapterMode::Merged),
    )
    .err()
    .ok_or("loaded a .bin adapter")?;
    assert!(err.to_string().contains("only safetensors"), "{err}");
    // Classifier head on a model without one.
    let lm = Arc::new(LanguageModel::load(&base, &LoadOptions::default())?);
    let err = PointwiseScorer::new(lm, None, PointwiseConfig::classifier())
        .err()
        .ok_or("no head error")?;
    assert!(err.to_string().contains("score"), "{err}");
    // Empty query; zero passages; empty passage text; a 1 MB passage (truncated, not an error).
    let seq = base_copy(&lora_dir("tiny-seqcls"));
    let lm = Arc::new(LanguageModel::load(seq.path(), &LoadOptions::default())?);
    let scheduler = Scheduler::new(lm, None, PointwiseConfig::classifier())?;
    assert!(matches!(
        scheduler.score(&Query::new("  "), &[Passage::new("x")], None),
        Err(Error::EmptyInput(_))
    ));
    assert!(scheduler
        .score(&Query::new("q"), &[], None)?
        .scores
        .is_empty());
    let huge = "lorem ipsum ".repeat(90_000);
    let s = scheduler
        .score(
            &Query::new("q"),
            &[Passage::new(""), Passage::new(huge)],
            None,
        )?
        .scores;
    assert!(s.iter().all(|x| x.is_finite()), "{s:?}");
    let enc = scheduler.scorer().encode(
        &Query::new("q"),
        &[Passage::new("lorem ipsum ".repeat(90_000))],
    )?;
    assert!(enc.full(0).len() <= 226);
    Ok(())
}

#[test]
fn deadline_is_honoured() -> TestResult {
    let seq = base_copy(&lora_dir("tiny-seqcls"));
    let lm = Arc::new(LanguageModel::load(seq.path(), &LoadOptions::default())?);
    let scheduler = Scheduler::new(lm, None, PointwiseConfig::classifier())?;
    let passages: Vec<Passage> = (0..64)
        .map(|i| Passage::new(format!("passage {i} ").repeat(40)))
        .collect();
    let past = std::time::Instant::now();
    let err = scheduler
        .score(&Query::new("q"), &passages, Some(past))
        .err();
    assert!(
        matches!(err, Some(Error::DeadlineExceeded { .. })),
        "{err:?}"
    );
    // The scorer is still usable afterwards.
    assert_eq!(
        scheduler
            .score(&Query::new("q"), &passages[..2], None)?
            .scores
            .len(),
        2
    );
    Ok(())
}

/// A copy of `seqcls-a` with its config edited by `edit` and its tensors by `tensors`.
fn edited_adapter(
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
    let src = lora_dir("seqcls-a");
    let dir = tempfile::tempdir()?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json"))?)?;
    edit(&mut cfg);
    std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string())?;
    let mut map = candle_core::safetensors::load(
        src.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    tensors(&mut map);
    candle_core::safetensors::save(&map, dir.path().join("adapter_model.safetensors"))?;
    Ok(dir)
}

/// Adapters whose settings and tensors disagree, or whose values are not usable, are
/// refused at load with an error naming the field or tensor, never applied silently
/// (peft raises for target modules that match nothing; it would skip stray tensors).
#[test]
fn adapters_that_disagree_with_their_config_are_refused() -> TestResult {
    let base = base_copy(&fixture("tiny-gqa"));
    let load = |dir: &tempfile::TempDir| {
        LanguageModel::load(
            base.path(),
            &LoadOptions::default().with_adapter(dir.path().to_string_lossy(), AdapterMode::Merged),
        )
        .err()
        .map(|e| e.to_string())
    };
    let no_tensor_edit = |_: &mut std::collections::HashMap<String, candle_core::Tensor>| {};
    // Each case: the edit and the words the error must contain.
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let config_cases: Vec<(Edit, &[&str])> = vec![
        (
            Box::new(|c| c["target_modules"] = serde_json::json!(["qkv_proj"])),
            &["target_modules", "match no module"],
        ),
        (
            Box::new(|c| c["target_modules"] = serde_json::json!([])),
            &["target_modules", "empty"],
        ),
        (
            Box::new(|c| c["layers_to_transform"] = serde_json::json!([0, 99])),
            &["layers_to_transform", "99", "past the last layer"],
        ),
        (
            // Targets only layer 0, but the file holds every layer's matrices.
            Box::new(|c| c["layers_to_transform"] = serde_json::json!([0])),
            &["model.layers.1.", "does not target"],
        ),
        (
            Box::new(|c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj"])),
            &["down_proj", "does not target"],
        ),
        (
            Box::new(|c| c["lora_alpha"] = serde_json::json!(1e39)),
            &["lora_alpha", "out of range"],
        ),
        (
            Box::new(|c| c["r"] = serde_json::json!(1u64 << 40)),
            &["`r`", "out of range"],
        ),
        (
            Box::new(|c| c["alpha_pattern"] = serde_json::json!({"q_proj": -1e300})),
            &["alpha_pattern.q_proj", "out of range"],
        ),
    ];
    for (edit, words) in config_cases {
        let dir = edited_adapter(|c| edit(c), no_tensor_edit)?;
        let msg = load(&dir).ok_or_else(|| format!("loaded; wanted an error with {words:?}"))?;
        for w in words {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
    }
    let a_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    // A tensor for a module the adapter does not save.
    let dir = edited_adapter(
        |_| {},
        |m| {
            let t = m[a_key].clone();
            m.insert("base_model.model.model.norm.weight".into(), t);
        },
    )?;
    let msg = load(&dir).ok_or("loaded a stray norm tensor")?;
    assert!(
        msg.contains("model.norm.weight") && msg.contains("does not target"),
        "{msg}"
    );
    // Integer weights.
    let dir = edited_adapter(
        |_| {},
        |m| {
            let t = m[a_key].to_dtype(candle_core::DType::U32).expect("u32");
            m.insert(a_key.into(), t);
        },
    )?;
    let msg = load(&dir).ok_or("loaded integer weights")?;
    assert!(msg.contains(a_key) && msg.contains("dtype"), "{msg}");
    // Non-finite values, in the LoRA matrices and in the head.
    for key in [a_key, "base_model.model.score.weight"] {
        let dir = edited_adapter(
            |_| {},
            |m| {
                let t = &m[key];
                let mut v: Vec<f32> = t
                    .to_dtype(candle_core::DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1())
                    .expect("values");
                let mid = v.len() / 2;
                v[mid] = f32::NAN;
                let bad = candle_core::Tensor::from_vec(v, t.dims(), &candle_core::Device::Cpu)
                    .expect("tensor");
                m.insert(key.into(), bad);
            },
        )?;
        let msg = load(&dir).ok_or("loaded NaN weights")?;
        assert!(msg.contains(key) && msg.contains("NaN"), "{msg}");
    }
    // The unedited copy still loads: the checks refuse only what is wrong.
    let dir = edited_adapter(|_| {}, no_tensor_edit)?;
    assert_eq!(load(&dir), None);
    Ok(())
}
