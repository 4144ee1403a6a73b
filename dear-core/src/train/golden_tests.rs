//! dear's training arithmetic against PyTorch + peft: `tests/golden/train/`, written by
//! `tests/golden/make_train_golden.py` (pinned torch/transformers/peft). Scores,
//! every loss type, the KL term, their gradients w.r.t. every LoRA and head tensor,
//! three AdamW steps with warmup and clipping, and the schedules, all within 1e-4.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::loss::{distillation, main_loss, total_loss, LossType};
use super::net::{Net, Packed, Trainable};
use super::optim::{adamw_step, clip_grad_norm, AdamWConfig, Moments, Schedule};
use super::peft;
use crate::model::frozen::FrozenLlama;
use crate::{LanguageModel, LoadOptions};

fn golden(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(path)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(golden("train/expected.json")).expect("train/expected.json");
    serde_json::from_str(&text).expect("json")
}

fn base() -> FrozenLlama {
    let lm =
        LanguageModel::load(golden("models/tiny-gqa"), &LoadOptions::default()).expect("tiny-gqa");
    lm.llama().frozen().expect("frozen")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().expect("array").iter().map(floats).collect()
}

fn batch(exp: &serde_json::Value) -> Packed {
    let mut p = Packed::default();
    for group in exp["batch"]["groups"].as_array().expect("groups") {
        for seq in group.as_array().expect("group") {
            let ids: Vec<u32> = seq
                .as_array()
                .expect("ids")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect();
            p.push(&ids);
        }
    }
    p
}

fn load_safetensors(name: &str) -> HashMap<String, Vec<f32>> {
    let path = golden(name);
    let st = crate::loader::safetensors::mmap(&path).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, _)| {
            let t = st.load(&k, &Device::Cpu).expect("tensor");
            (
                k,
                t.flatten_all()
                    .expect("flat")
                    .to_vec1::<f32>()
                    .expect("f32"),
            )
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn grads_of(loss: &Tensor, params: &Trainable) -> Vec<(String, Vec<f32>)> {
    let g = loss.backward().expect("backward");
    params
        .named()
        .into_iter()
        .map(|(k, v)| {
            let t = g.get(v.as_tensor()).expect("gradient");
            (
                k,
                t.flatten_all()
                    .expect("flat")
                    .to_vec1::<f32>()
                    .expect("f32"),
            )
        })
        .collect()
}

fn grouped_scores(base: &FrozenLlama, params: &Trainable, exp: &serde_json::Value) -> Tensor {
    let net = Net { base, params };
    net.scores(&batch(exp), None)
        .expect("scores")
        .reshape((2, 4))
        .expect("reshape")
}

#[test]
fn scores_losses_and_gradients_match_pytorch() {
    let exp = expected();
    let base = base();
    let (params, meta) = peft::load(&golden("train/init"), &base, 0.0).expect("init adapter");
    assert_eq!(meta.task_type, "SEQ_CLS");
    assert_eq!(params.named().len(), 25);
    let teacher = rows(&exp["batch"]["teacher_scores"]);
    let (t, alpha) = (2.0, 0.1);
    let want = rows(&exp["student_scores"]).concat();
    let got = grouped_scores(&base, &params, &exp)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(max_diff(&got, &want) < 1e-4, "scores {got:?} vs {want:?}");

    let grads = load_safetensors("train/grads.safetensors");
    let check = |prefix: &str, got: &[(String, Vec<f32>)]| {
        for (key, g) in got {
            let want = grads
                .get(&format!("{prefix}/{key}"))
                .unwrap_or_else(|| panic!("{prefix}/{key}"));
            let d = max_diff(g, want);
            assert!(d < 1e-4, "{prefix}: gradient of {key} differs by {d}");
        }
    };
    // The KL term alone.
    let s = grouped_scores(&base, &params, &exp);
    let kl = distillation(&s, &teacher, t).unwrap();
    let kl_value = kl.to_scalar::<f32>().unwrap();
    assert!((kl_value - exp["distill"]["kl"].as_f64().unwrap() as f32).abs() < 1e-4);
    let kl_grads = grads_of(&kl, &params);
    check("kl", &kl_grads);
    for kind in LossType::ALL {
        let s = grouped_scores(&base, &params, &exp);
        let main = main_loss(kind, &s, Some(&teacher)).unwrap();
        let want_main = exp["losses"][kind.name()]["main"].as_f64().unwrap() as f32;
        let got_main = main.to_scalar::<f32>().unwrap();
        assert!(
            (got_main - want_main).abs() < 1e-4,
            "{kind}: {got_main} vs {want_main}"
        );
        check(kind.name(), &grads_of(&main, &params));
        // The total and its gradient: (1 - α)·main + α·KL.
        let s = grouped_scores(&base, &params, &exp);
        let total = total_loss(kind, &s, Some(&teacher), t, alpha).unwrap();
        let want_total = exp["losses"][kind.name()]["total"].as_f64().unwrap() as f32;
        assert!(
            (total.to_scalar::<f32>().unwrap() - want_total).abs() < 1e-4,
            "{kind} total"
        );
        let main_grads = grads_of(
            &main_loss(kind, &grouped_scores(&base, &params, &exp), Some(&teacher)).unwrap(),
            &params,
        );
        for ((key, g), ((_, m), (_, k))) in grads_of(&total, &params)
            .iter()
            .zip(main_grads.iter().zip(&kl_grads))
        {
            let mixed: Vec<f32> = m.iter().zip(k).map(|(m, k)| 0.9 * m + 0.1 * k).collect();
            assert!(
                max_diff(g, &mixed) < 1e-5,
                "{kind}: total gradient of {key}"
            );
        }
    }
}

#[test]
fn checkpointed_backward_gives_the_same_gradients() {
    let exp = expected();
    let base = base();
    let (params, _) = peft::load(&golden("train/init"), &base, 0.0).expect("init adapter");
    let teacher = rows(&exp["batch"]["teacher_scores"]);
    let grads = load_safetensors("train/grads.safetensors");
    let net = Net {
        base: &base,
        params: &params,
    };
    let (value, got) = net
        .scores_backward(&batch(&exp), None, true, |s| {
            total_loss(
                LossType::ListnetTeacher,
                &s.reshape((2, 4))?,
                Some(&teacher),
                2.0,
                0.1,
            )
        })
        .unwrap();
    let want_total = exp["losses"]["listnet_teacher"]["total"].as_f64().unwrap();
    assert!((value - want_total).abs() < 1e-4, "{value} vs {want_total}");
    for ((key, _), g) in params.named().iter().zip(&got) {
        let mixed: Vec<f32> = grads[&format!("listnet_teacher/{key}")]
            .iter()
            .zip(&grads[&format!("kl/{key}")])
            .map(|(m, k)| 0.9 * m + 0.1 * k)
            .collect();
        let d = max_diff(g, &mixed);
        assert!(d < 1e-4, "checkpointed gradient of {key} differs by {d}");
    }
    // Dropout masks are drawn again identically in the recomputation: the
    // checkpointed gradients equal the one-graph gradients with dropout on.
    let (dropped, _) = peft::load(&golden("train/init"), &base, 0.3).unwrap();
    let net = Net {
        base: &base,
        params: &dropped,
    };
    let (_, ckpt) = net
        .scores_backward(&batch(&exp), Some(7), true, softmax_ce_of)
        .unwrap();
    let full = grads_of(
        &softmax_ce_of(&net.scores(&batch(&exp), Some(7)).unwrap()).unwrap(),
        &dropped,
    );
    let plain = grads_of(
        &softmax_ce_of(&net.scores(&batch(&exp), None).unwrap()).unwrap(),
        &dropped,
    );
    let mut differs_from_plain = false;
    for ((key, a), b) in full.iter().zip(&ckpt) {
        assert!(
            max_diff(a, b) < 1e-5,
            "{key}: dropout masks differ between passes"
        );
    }
    for ((_, a), (_, b)) in full.iter().zip(&plain) {
        differs_from_plain |= max_diff(a, b) > 1e-3;
    }
    assert!(differs_from_plain, "dropout changed nothing");
}

fn softmax_ce_of(s: &Tensor) -> crate::Result<Tensor> {
    super::loss::softmax_ce(&s.reshape((2, 4))?)
}

#[test]
fn three_adamw_steps_match_pytorch() {
    let exp = expected();
    let base = base();
    let (params, _) = peft::load(&golden("train/init"), &base, 0.0).expect("init adapter");
    let teacher = rows(&exp["batch"]["teacher_scores"]);
    let a = &exp["adamw"];
    let cfg = AdamWConfig {
        weight_decay: a["weight_decay"].as_f64().unwrap(),
        ..AdamWConfig::default()
    };
    let lr = a["lr"].as_f64().unwrap();
    let mut moments = vec![Moments::default(); params.named().len()];
    for (step, want) in a["steps"].as_array().unwrap().iter().enumerate() {
        let s = grouped_scores(&base, &params, &exp);
        let loss = total_loss(LossType::RanknetTeacher, &s, Some(&teacher), 2.0, 0.1).unwrap();
        let value = loss.to_scalar::<f32>().unwrap();
        assert!(
            (value - want["loss"].as_f64().unwrap() as f32).abs() < 1e-4,
            "step {step} loss"
        );
        let mut grads: Vec<Vec<f32>> = grads_of(&loss, &params)
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        let norm = clip_grad_norm(&mut grads, 1.0);
        assert!(
            (norm - want["grad_norm"].as_f64().unwrap()).abs() < 1e-4,
            "step {step} norm"
        );
        let step_lr = lr * Schedule::Linear.factor(step, 1, 4);
        assert!((step_lr - want["lr"].as_f64().unwrap()).abs() < 1e-12);
        for (((_, var), g), m) in params.named().iter().zip(&grads).zip(moments.iter_mut()) {
            let mut p = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            adamw_step(&cfg, step_lr, step as u64 + 1, &mut p, g, m);
            var.set(&Tensor::from_vec(p, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let after = load_safetensors("train/adamw.safetensors");
    for (key, var) in params.named() {
        let got = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = max_diff(&got, &after[&key]);
        assert!(d < 1e-4, "{key} after 3 steps differs by {d}");
    }
}

#[test]
fn schedules_match_transformers() {
    let exp = expected();
    let s = &exp["schedules"];
    for (name, kind) in [("linear", Schedule::Linear), ("cosine", Schedule::Cosine)] {
        for (step, want) in s[name].as_array().unwrap().iter().enumerate() {
            let got = kind.factor(step, 2, 10);
            assert!(
                (got - want.as_f64().unwrap()).abs() < 1e-12,
                "{name} {step}"
            );
        }
    }
}

#[test]
fn written_adapters_reload_with_the_same_tensors() {
    let base = base();
    let (params, meta) = peft::load(&golden("train/init"), &base, 0.0).expect("init adapter");
    let dir = tempfile::tempdir().unwrap();
    peft::save(dir.path(), &params, &meta).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("train/init/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let got: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    // Every field peft wrote, with peft's values (the base's name aside).
    for (k, v) in want.as_object().unwrap() {
        if k != "base_model_name_or_path" {
            assert_eq!(&got[k], v, "adapter_config.json field {k}");
        }
    }
    let (again, _) = peft::load(dir.path(), &base, 0.0).unwrap();
    for ((k, a), (_, b)) in params.named().iter().zip(again.named()) {
        let (a, b) = (
            a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            b.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        assert_eq!(a, b, "{k}");
    }
}

/// A tiny judged set over the passages of `lora/expected.json`.
fn tiny_set() -> super::TrainingSet {
    let text = std::fs::read_to_string(golden("lora/expected.json")).expect("lora/expected.json");
    let exp: serde_json::Value = serde_json::from_str(&text).expect("json");
    let d = &exp["dear_inputs"];
    let passages: Vec<crate::Passage> = d["passages"]
        .as_array()
        .expect("passages")
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut passage =
                crate::Passage::new(p["text"].as_str().expect("text")).with_id(format!("d{i}"));
            if let Some(t) = p["title"].as_str().filter(|t| !t.is_empty()) {
                passage = passage.with_title(t);
            }
            passage
        })
        .collect();
    let q = |text: &str, pos: usize, negs: [usize; 3]| super::TrainingQuery {
        id: text.chars().take(12).collect(),
        text: text.to_string(),
        positives: vec![passages[pos].clone()],
        negatives: negs.iter().map(|&i| passages[i].clone()).collect(),
        candidates: Vec::new(),
    };
    let queries = d["queries"].as_array().expect("queries");
    super::TrainingSet {
        queries: vec![
            q(queries[0].as_str().unwrap(), 0, [2, 4, 3]),
            q(queries[1].as_str().unwrap(), 3, [2, 4, 0]),
            q("how is a single relevance score computed?", 1, [2, 4, 3]),
        ],
        ..Default::default()
    }
}

/// `dear train` on tiny-gqa (3 steps, dropout on, lr 1e-2) writes the committed
/// `train/dear-trained/` adapter again (the run is reproducible), and transformers +
/// peft, loading that adapter (`make_train_golden.py --peft-scores`), score the golden
/// batch as dear's inference engine does. `DEAR_WRITE_GOLDEN=1` rewrites the adapter
/// instead of comparing (then rerun the script for the peft scores).
#[test]
fn dear_trained_adapters_are_reproducible_and_load_in_peft() {
    let lm =
        LanguageModel::load(golden("models/tiny-gqa"), &LoadOptions::default()).expect("tiny-gqa");
    let config = super::TrainConfig {
        lora_r: 4,
        lora_alpha: 8.0,
        learning_rate: 1e-2,
        negatives: 3,
        negative_depth: 3,
        batch_groups: 2,
        grad_accum: 1,
        max_steps: Some(3),
        dev_queries: 0,
        save_every: 0,
        seed: 7,
        base_model: "test-org/tiny-gqa".into(),
        ..super::TrainConfig::default()
    };
    let trainer = super::PointwiseTrainer::new(&lm, config).expect("trainer");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    let report = trainer
        .train(&tiny_set(), None, &out, |_| {})
        .expect("train");
    assert_eq!(report.steps, 3);
    let committed = golden("train/dear-trained");
    if std::env::var_os("DEAR_WRITE_GOLDEN").is_some() {
        std::fs::create_dir_all(&committed).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(out.join(f), committed.join(f)).unwrap();
        }
        return;
    }
    let got = load_safetensors_at(&out.join("adapter_model.safetensors"));
    let want = load_safetensors_at(&committed.join("adapter_model.safetensors"));
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        let d = max_diff(&got[k], v);
        assert!(d < 1e-6, "retrained {k} differs by {d}");
    }
    // The committed adapter through dear's inference engine vs transformers + peft.
    let peft_scores: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("train/dear-trained-peft-scores.json"))
            .expect("peft scores"),
    )
    .unwrap();
    let want = rows(&peft_scores["scores"]).concat();
    let opts = LoadOptions::default()
        .with_adapter(committed.to_string_lossy(), crate::AdapterMode::Unmerged);
    let lm = LanguageModel::load(golden("models/tiny-gqa"), &opts).expect("with adapter");
    let adapter = lm.llama().adapter("dear-trained");
    assert!(adapter.is_some(), "adapter name");
    let exp = expected();
    let packed = batch(&exp);
    for (i, span) in packed.spans.iter().enumerate() {
        let ids = &packed.ids[span.clone()];
        let out = lm
            .llama()
            .forward_with(
                &crate::Batch::from_sequences(&[ids]).unwrap(),
                &mut [],
                crate::Outputs::last_scores(),
                crate::ForwardOptions::default().with_adapter(adapter),
            )
            .unwrap();
        let got = out
            .scores
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(
            (got - want[i]).abs() < 1e-4,
            "sequence {i}: dear {got} vs peft {}",
            want[i]
        );
    }
}

/// tiny-gqa copied with a 4,096-token context (its own 128 holds no listwise prompt;
/// rotary positions need no table, so nothing else changes).
fn long_context_tiny(dir: &std::path::Path) -> PathBuf {
    let to = dir.join("tiny-gqa-4k");
    std::fs::create_dir_all(&to).unwrap();
    for f in std::fs::read_dir(golden("models/tiny-gqa")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    let path = to.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = serde_json::json!(4096);
    std::fs::write(&path, config.to_string()).unwrap();
    to
}

/// Stage 2: `ListwiseTrainer` on tiny-gqa (rankllm windows of 3, answer tokens, 3
/// steps, lr 1e-2) writes the committed `train/dear-trained-causal/` again, and
/// transformers + peft, loading that adapter (`make_train_golden.py --peft-logits`),
/// give the logits dear's inference engine gives with it. `DEAR_WRITE_GOLDEN=1`
/// rewrites the adapter instead of comparing (then rerun the script for the logits).
#[test]
fn dear_trained_listwise_adapters_are_reproducible_and_load_in_peft() {
    let dir = tempfile::tempdir().unwrap();
    let lm = LanguageModel::load(long_context_tiny(dir.path()), &LoadOptions::default())
        .expect("tiny-gqa");
    let config = super::TrainConfig {
        lora_r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.1,
        learning_rate: 1e-2,
        batch_groups: 1,
        grad_accum: 2,
        max_steps: Some(3),
        dev_queries: 0,
        save_every: 0,
        seed: 7,
        base_model: "test-org/tiny-gqa".into(),
        listwise: super::ListwiseTrainOptions {
            window: 3,
            ..Default::default()
        },
        ..super::TrainConfig::listwise()
    };
    let trainer = super::ListwiseTrainer::new(&lm, config).expect("trainer");
    let mut set = tiny_set();
    for q in &mut set.queries {
        // The window as a first stage would give it: a negative, the positive, a negative.
        q.candidates = vec![
            q.negatives[0].clone(),
            q.positives[0].clone(),
            q.negatives[1].clone(),
        ];
    }
    let out = dir.path().join("adapter");
    let report = trainer
        .train(&set, super::ListwiseTargets::Qrels, &out, |_| {})
        .expect("train");
    assert_eq!((report.steps, report.queries), (3, 3));
    let committed = golden("train/dear-trained-causal");
    if std::env::var_os("DEAR_WRITE_GOLDEN").is_some() {
        std::fs::create_dir_all(&committed).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(out.join(f), committed.join(f)).unwrap();
        }
        return;
    }
    let got = load_safetensors_at(&out.join("adapter_model.safetensors"));
    let want = load_safetensors_at(&committed.join("adapter_model.safetensors"));
    assert_eq!(got.len(), want.len());
    assert_eq!(got.len(), 2 * 7 * 2, "A and B of 7 projections in 2 layers");
    for (k, v) in &want {
        let d = max_diff(&got[k], v);
        assert!(d < 1e-6, "retrained {k} differs by {d}");
    }
    // The committed adapter through dear's inference engine vs transformers + peft.
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("train/dear-trained-causal-peft-logits.json"))
            .expect("peft logits"),
    )
    .unwrap();
    assert_eq!(peft["adapter_config"]["task_type"], "CAUSAL_LM");
    let want: Vec<f32> = peft["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let opts = LoadOptions::default()
        .with_adapter(committed.to_string_lossy(), crate::AdapterMode::Unmerged);
    let lm = LanguageModel::load(golden("models/tiny-gqa"), &opts).expect("with adapter");
    let adapter = lm.llama().adapter("dear-trained-causal");
    assert!(adapter.is_some(), "adapter name");
    let ids: Vec<u32> = expected()["causal"]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let out = lm
        .llama()
        .forward_with(
            &crate::Batch::from_sequences(&[ids.as_slice()]).unwrap(),
            &mut [],
            crate::Outputs::last_logits(),
            crate::ForwardOptions::default().with_adapter(adapter),
        )
        .unwrap();
    let got = out
        .logits
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "dear's logits differ from peft's by {d}");
    // Training moved the adapter: the base model alone gives other logits.
    let base = LanguageModel::load(golden("models/tiny-gqa"), &LoadOptions::default()).unwrap();
    let plain = base
        .llama()
        .forward_with(
            &crate::Batch::from_sequences(&[ids.as_slice()]).unwrap(),
            &mut [],
            crate::Outputs::last_logits(),
            crate::ForwardOptions::default(),
        )
        .unwrap();
    let plain = plain
        .logits
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(max_diff(&plain, &want) > 1e-3);
}

fn load_safetensors_at(path: &std::path::Path) -> HashMap<String, Vec<f32>> {
    let st = crate::loader::safetensors::mmap(path).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, _)| {
            let t = st.load(&k, &Device::Cpu).expect("tensor");
            (
                k,
                t.flatten_all()
                    .expect("flat")
                    .to_vec1::<f32>()
                    .expect("f32"),
            )
        })
        .collect()
}

/// Stage 2 on tiny-gqa with a CAUSAL_LM LoRA: the SFT loss on the answer tokens and
/// FIRST's weighted RankNet on the first answer token's identifier logits, values and
/// gradients as PyTorch + peft compute them.
#[test]
fn listwise_sft_and_first_token_losses_match_pytorch() {
    let exp = expected();
    let c = &exp["causal"];
    let base = base();
    let (params, meta) =
        peft::load(&golden("train/init-causal"), &base, 0.0).expect("causal adapter");
    assert_eq!(meta.task_type, "CAUSAL_LM");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (prompt, input) = (ids(&c["prompt_ids"]), ids(&c["input_ids"]));
    let mut packed = Packed::default();
    packed.push(&input);
    let net = Net {
        base: &base,
        params: &params,
    };
    let grads = load_safetensors("train/grads.safetensors");
    let check = |prefix: &str, got: Vec<(String, Vec<f32>)>| {
        assert_eq!(got.len(), 24);
        for (key, g) in got {
            let d = max_diff(&g, &grads[&format!("{prefix}/{key}")]);
            assert!(d < 1e-4, "{prefix}: gradient of {key} differs by {d}");
        }
    };
    // SFT: rows prompt-1 .. len-2 predict the answer tokens.
    let rows: Vec<u32> = (prompt.len() as u32 - 1..input.len() as u32 - 1).collect();
    let logits = net.logits_at(&packed, &rows, None).unwrap();
    let sft = super::loss::answer_cross_entropy(&logits, &input[prompt.len()..]).unwrap();
    let want = c["sft"]["loss"].as_f64().unwrap() as f32;
    assert!((sft.to_scalar::<f32>().unwrap() - want).abs() < 1e-4);
    check("sft", grads_of(&sft, &params));
    // The trainer's path: the same loss through `logits_backward`, with and without
    // recomputing blocks in the backward.
    let answer = input[prompt.len()..].to_vec();
    for checkpoint in [false, true] {
        let (value, g) = net
            .logits_backward(&packed, &rows, None, checkpoint, |l| {
                super::loss::answer_cross_entropy(l, &answer)
            })
            .unwrap();
        assert!((value as f32 - want).abs() < 1e-4);
        let named: Vec<(String, Vec<f32>)> =
            params.named().into_iter().map(|(k, _)| k).zip(g).collect();
        check("sft", named);
    }
    // FIRST on the last prompt position.
    let f = &c["first"];
    let order: Vec<usize> = f["target_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let pos = f["position"].as_u64().unwrap() as u32;
    let logits = net.logits_at(&packed, &[pos], None).unwrap();
    let loss = super::loss::first_token_loss(&logits, &ids(&f["identifier_ids"]), &order).unwrap();
    let want = f["weighted_ranknet"].as_f64().unwrap() as f32;
    assert!((loss.to_scalar::<f32>().unwrap() - want).abs() < 1e-4);
    check("first", grads_of(&loss, &params));
    assert!(
        super::loss::first_token_loss(&logits, &ids(&f["identifier_ids"]), &[0, 0, 1, 2, 3])
            .is_err()
    );
}
