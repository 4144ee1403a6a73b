//! `dear train` end to end on the tiny fixture model and a small judged collection
//! written by the test: a resumed run equals an uninterrupted one, the adapter loads
//! in `dear score`, and bad input gets named errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("dear-core/tests/golden/models")
        .join(name)
}

fn dear() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dear"))
}

const DOCS: [(&str, &str); 10] = [
    (
        "Cats",
        "A note about cats: small carnivores that eat meat and sleep most of the day.",
    ),
    (
        "Dogs",
        "A note about dogs: loyal animals that people keep as pets and working helpers.",
    ),
    (
        "Paris",
        "A note about Paris: the capital of France, on the river Seine.",
    ),
    (
        "Rust",
        "A note about Rust: a programming language focused on safety and speed.",
    ),
    (
        "Tea",
        "A note about tea: brewed from the leaves of the camellia plant in hot water.",
    ),
    (
        "Rain",
        "A note about rain: it falls when water droplets in clouds grow heavy enough.",
    ),
    (
        "Chess",
        "A note about chess: a board game for two players on a checkered board.",
    ),
    (
        "Bread",
        "A note about bread: baked from flour, water, salt and yeast in an oven.",
    ),
    (
        "Moon",
        "A note about the moon: it orbits the earth about once every twenty seven days.",
    ),
    (
        "Piano",
        "A note about pianos: they sound when hammers strike their metal strings.",
    ),
];

const QUERIES: [(&str, usize); 6] = [
    ("a note about what cats eat", 0),
    ("a note about the capital of France", 2),
    ("a note about a safe fast programming language", 3),
    ("a note about how bread is baked", 7),
    ("a note about why rain falls from clouds", 5),
    ("a note about how a piano makes sound", 9),
];

/// A BEIR folder with a `train` split (and an empty `dev` one).
fn collection(dir: &Path) -> std::io::Result<()> {
    let mut corpus = String::new();
    for (i, (title, text)) in DOCS.iter().enumerate() {
        corpus.push_str(
            &serde_json::json!({"_id": format!("d{i}"), "title": title, "text": text}).to_string(),
        );
        corpus.push('\n');
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus)?;
    let mut queries = String::new();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (i, (q, d)) in QUERIES.iter().enumerate() {
        queries.push_str(&serde_json::json!({"_id": format!("q{i}"), "text": q}).to_string());
        queries.push('\n');
        qrels.push_str(&format!("q{i}\td{d}\t1\n"));
    }
    std::fs::write(dir.join("queries.jsonl"), queries)?;
    std::fs::create_dir_all(dir.join("qrels"))?;
    std::fs::write(dir.join("qrels/train.tsv"), qrels)?;
    std::fs::write(
        dir.join("qrels/dev.tsv"),
        "query-id\tcorpus-id\tscore\nq0\td1\t0\n",
    )?;
    Ok(())
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> std::io::Result<Output> {
    dear()
        .arg("train")
        .arg("--model")
        .arg(fixture("tiny-gqa"))
        .arg("--dataset")
        .arg(data)
        .args(["--negatives", "2", "--negative-depth", "4"])
        .args([
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--q-max-len",
            "16",
            "--p-max-len",
            "48",
        ])
        .args([
            "--batch-groups",
            "2",
            "--grad-accum",
            "1",
            "--lr",
            "5e-3",
            "--dev-queries",
            "0",
        ])
        .args([
            "--max-steps",
            "4",
            "--save-every",
            "1",
            "--seed",
            "3",
            "--json",
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
}

fn ok(out: &Output) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    collection(&data)?;
    let whole = tmp.path().join("whole");
    let report = ok(&train(&data, &whole, &[])?)?;
    assert_eq!(report["steps"], 4);
    assert_eq!(report["queries"], 6);

    // A run killed after its third checkpoint: the newest checkpoint and the output
    // files are gone (a kill -9 between step 3's checkpoint and step 4's).
    let cut = tmp.path().join("cut");
    std::fs::create_dir_all(cut.join("checkpoints"))?;
    for e in std::fs::read_dir(whole.join("checkpoints"))? {
        let e = e?;
        if e.file_name() == "step-0000003" {
            let to = cut.join("checkpoints").join(e.file_name());
            std::fs::create_dir_all(&to)?;
            for f in std::fs::read_dir(e.path())? {
                let f = f?;
                std::fs::copy(f.path(), to.join(f.file_name()))?;
            }
        }
    }
    // Resuming needs --resume.
    assert!(err(&train(&data, &cut, &[])?).contains("--resume"));
    let resumed = ok(&train(&data, &cut, &["--resume"])?)?;
    assert_eq!(resumed["resumed_from"], 3);
    assert_eq!(resumed["steps"], 4);
    let a = std::fs::read(whole.join("adapter_model.safetensors"))?;
    let b = std::fs::read(cut.join("adapter_model.safetensors"))?;
    assert!(
        a == b,
        "the resumed adapter differs from the uninterrupted one"
    );

    // Resuming with other settings is refused, naming the checkpoint.
    let e = err(&train(&data, &cut, &["--resume", "--warmup-ratio", "0.5"])?);
    assert!(e.contains("other settings"), "{e}");

    // The adapter is a peft SEQ_CLS LoRA that `dear score` runs with its head.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("adapter_config.json"))?)?;
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(
        config["modules_to_save"],
        serde_json::json!(["classifier", "score"])
    );
    let docs = tmp.path().join("docs.jsonl");
    std::fs::write(
        &docs,
        "{\"text\": \"Cats eat meat.\"}\n{\"text\": \"Paris is in France.\"}\n",
    )?;
    let scored = dear()
        .arg("score")
        .arg("--model")
        .arg(fixture("tiny-gqa"))
        .arg("--adapter")
        .arg(&whole)
        .args([
            "--head",
            "classifier",
            "--query",
            "what do cats eat",
            "--json",
        ])
        .arg("--docs")
        .arg(&docs)
        .output()?;
    let scored = ok(&scored)?;
    let rows = scored.as_array().ok_or("rows")?;
    assert_eq!(rows.len(), 2, "{scored}");
    Ok(())
}

#[test]
fn bad_training_input_gets_named_errors() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    collection(&data)?;
    // A split that judges nothing relevant.
    let e = err(&train(&data, &tmp.path().join("a"), &["--split", "dev"])?);
    assert!(e.contains("judges no passage relevant"), "{e}");
    // A split that does not exist.
    let e = err(&train(&data, &tmp.path().join("b"), &["--split", "nope"])?);
    assert!(e.contains("nope"), "{e}");
    // An output directory that exists.
    let taken = tmp.path().join("taken");
    std::fs::create_dir_all(&taken)?;
    std::fs::write(taken.join("x"), "")?;
    let e = err(&train(&data, &taken, &[])?);
    assert!(
        e.contains("already exists") && e.contains("--overwrite"),
        "{e}"
    );
    // Absurd options.
    let e = err(&train(
        &data,
        &tmp.path().join("c"),
        &["--lora-dropout", "1.5"],
    )?);
    assert!(e.contains("lora_dropout"), "{e}");
    let e = err(&train(&data, &tmp.path().join("d"), &["--loss", "hinge"])?);
    assert!(e.contains("unknown loss type"), "{e}");
    // A teacher loss without a teacher.
    let e = err(&train(
        &data,
        &tmp.path().join("e"),
        &["--loss", "ranknet_teacher"],
    )?);
    assert!(e.contains("needs a teacher"), "{e}");
    // A teacher run for queries the set does not have.
    let run = tmp.path().join("teacher.trec");
    std::fs::write(&run, "zz9 Q0 d1 1 3.5 t\n")?;
    let e = err(&train(
        &data,
        &tmp.path().join("f"),
        &["--teacher-run", run.to_str().ok_or("path")?],
    )?);
    assert!(e.contains("zz9"), "{e}");
    Ok(())
}

#[test]
fn training_continues_from_an_adapter() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    collection(&data)?;
    let first = tmp.path().join("first");
    ok(&train(&data, &first, &[])?)?;
    let first_str = first.to_str().ok_or("path")?;
    // A second cycle starts from the first's adapter: its weights, not fresh ones.
    let second = tmp.path().join("second");
    ok(&train(&data, &second, &["--init-adapter", first_str])?)?;
    let fresh = tmp.path().join("fresh");
    ok(&train(&data, &fresh, &[])?)?;
    let weights = |dir: &Path| std::fs::read(dir.join("adapter_model.safetensors"));
    assert_ne!(weights(&second)?, weights(&fresh)?);
    assert_ne!(weights(&second)?, weights(&first)?);
    // An adapter of another shape is refused, naming the difference.
    let e = err(&train(
        &data,
        &tmp.path().join("r8"),
        &["--init-adapter", first_str, "--targets", "q_proj,v_proj"],
    )?);
    assert!(e.contains("it targets") && e.contains("first"), "{e}");
    Ok(())
}

#[test]
fn a_teacher_run_distils_into_the_student() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    collection(&data)?;
    // The teacher scores every passage of every query (relevant ones highest).
    let mut run = String::new();
    for (i, (_, rel)) in QUERIES.iter().enumerate() {
        for d in 0..DOCS.len() {
            let score = if d == *rel { 5.0 } else { -(d as f64) * 0.3 };
            run.push_str(&format!("q{i} Q0 d{d} {} {score} teacher\n", d + 1));
        }
    }
    let path = tmp.path().join("teacher.trec");
    std::fs::write(&path, run)?;
    let report = ok(&train(
        &data,
        &tmp.path().join("out"),
        &[
            "--loss",
            "listnet_teacher",
            "--teacher-run",
            path.to_str().ok_or("path")?,
        ],
    )?)?;
    assert_eq!(report["steps"], 4);
    assert!(report["last_loss"].as_f64().is_some_and(f64::is_finite));
    Ok(())
}

/// tiny-gqa with a 4,096-token context (its own is 128, shorter than any listwise
/// prompt), copied into `dir`.
fn long_context_model(dir: &Path) -> std::io::Result<PathBuf> {
    let to = dir.join("tiny-gqa-4k");
    std::fs::create_dir_all(&to)?;
    for f in std::fs::read_dir(fixture("tiny-gqa"))? {
        let f = f?;
        std::fs::copy(f.path(), to.join(f.file_name()))?;
    }
    let path = to.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    config["max_position_embeddings"] = serde_json::json!(4096);
    std::fs::write(&path, config.to_string())?;
    Ok(to)
}

fn train_listwise(data: &Path, out: &Path, extra: &[&str]) -> std::io::Result<Output> {
    let model = data.parent().unwrap_or(data).join("tiny-gqa-4k");
    if !model.is_dir() {
        long_context_model(data.parent().unwrap_or(data))?;
    }
    dear()
        .arg("train")
        .args(["--stage", "listwise", "--model"])
        .arg(&model)
        .arg("--dataset")
        .arg(data)
        .args(["--negatives", "2", "--lora-r", "4", "--lora-alpha", "8"])
        .args(if extra.contains(&"--window") {
            &[][..]
        } else {
            &["--window", "4"][..]
        })
        .args(["--batch-groups", "2", "--grad-accum", "1", "--lr", "5e-3"])
        .args([
            "--max-steps",
            "3",
            "--save-every",
            "1",
            "--seed",
            "5",
            "--json",
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
}

#[test]
fn the_listwise_stage_trains_resumes_and_loads() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    collection(&data)?;
    let whole = tmp.path().join("whole");
    let report = ok(&train_listwise(&data, &whole, &["--dev-queries", "2"])?)?;
    assert_eq!(report["steps"], 3);
    assert_eq!(report["dev_queries"], 2);
    // Every query whose relevant passage is in BM25's top 4 gives a window; the others
    // are counted.
    let windows = report["queries"].as_u64().ok_or("queries")?;
    let missed = report["skipped"]["no_positive_in_window"]
        .as_u64()
        .ok_or("skipped")?;
    assert_eq!(windows + missed, 4, "{report}");
    assert!(windows > 0, "{report}");
    // Validation after each epoch (3 steps of 2 windows cross an epoch boundary).
    let epochs = windows.div_ceil(2);
    let expected = 3u64.div_ceil(epochs) as usize;
    assert_eq!(
        report["dev_ndcg"].as_array().ok_or("dev")?.len(),
        expected,
        "{report}"
    );
    assert!(report["dev_first_stage_ndcg"].as_f64().is_some());

    // A kill after the second checkpoint (which ended epoch 0 and kept its adapter as
    // the best so far), then --resume: the same adapter.
    let cut = tmp.path().join("cut");
    for (from, to) in [
        ("checkpoints/step-0000002", "checkpoints/step-0000002"),
        ("best", "best"),
    ] {
        if from == "best" && epochs > 2 {
            continue; // epoch 0 had not ended at step 2
        }
        std::fs::create_dir_all(cut.join(to))?;
        for f in std::fs::read_dir(whole.join(from))? {
            let f = f?;
            std::fs::copy(f.path(), cut.join(to).join(f.file_name()))?;
        }
    }
    let resumed = ok(&train_listwise(
        &data,
        &cut,
        &["--dev-queries", "2", "--resume"],
    )?)?;
    assert_eq!(resumed["resumed_from"], 2);
    assert!(
        std::fs::read(whole.join("adapter_model.safetensors"))?
            == std::fs::read(cut.join("adapter_model.safetensors"))?,
        "the resumed listwise adapter differs from the uninterrupted one"
    );

    // A peft CAUSAL_LM adapter on every projection, with no saved head.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("adapter_config.json"))?)?;
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["modules_to_save"], serde_json::Value::Null);
    assert_eq!(
        config["target_modules"].as_array().ok_or("targets")?.len(),
        7
    );
    assert_eq!(config["r"], 4);

    // `dear listwise` runs it (first-token mode: one forward pass) and returns a
    // permutation of the passages.
    let docs = tmp.path().join("docs.jsonl");
    std::fs::write(
        &docs,
        "{\"id\": \"a\", \"text\": \"Cats eat meat.\"}\n{\"id\": \"b\", \"text\": \"Paris is in France.\"}\n{\"id\": \"c\", \"text\": \"Tea is brewed.\"}\n",
    )?;
    let ranked = dear()
        .arg("listwise")
        .arg("--model")
        .arg(tmp.path().join("tiny-gqa-4k"))
        .arg("--adapter")
        .arg(&whole)
        .args([
            "--mode",
            "first-token",
            "--query",
            "what do cats eat",
            "--json",
        ])
        .arg("--docs")
        .arg(&docs)
        .output()?;
    let ranked = ok(&ranked)?;
    let mut perm: Vec<u64> = ranked["permutation"]
        .as_array()
        .ok_or("permutation")?
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    perm.sort_unstable();
    assert_eq!(perm, [0, 1, 2], "{ranked}");
    assert_eq!(ranked["windows"][0]["parsed_ids"], 3, "{ranked}");
    assert!(ranked["failure"].is_null(), "{ranked}");
    Ok(())
}

#[test]
fn listwise_targets_from_permutations_and_their_errors() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    collection(&data)?;
    // A teacher's ranking with its rationale, for one query; the others are skipped.
    let perms = tmp.path().join("perms.jsonl");
    std::fs::write(
        &perms,
        "{\"query_id\": \"q0\", \"ranking\": [\"d0\", \"d7\", \"d2\"], \"rationale\": \"d0 is about cats eating.\"}\n",
    )?;
    let p = perms.to_str().ok_or("path")?;
    let report = ok(&train_listwise(
        &data,
        &tmp.path().join("p"),
        &["--dev-queries", "0", "--permutations", p],
    )?)?;
    assert_eq!(report["queries"], 1);
    assert_eq!(report["skipped"]["no_permutation"], 5);

    // A permutation for a query the set does not have.
    std::fs::write(
        &perms,
        "{\"query_id\": \"zz7\", \"ranking\": [\"d0\", \"d1\"]}\n",
    )?;
    let e = err(&train_listwise(
        &data,
        &tmp.path().join("u"),
        &["--permutations", p],
    )?);
    assert!(e.contains("zz7"), "{e}");
    // A passage that is neither a candidate nor judged relevant.
    std::fs::write(
        &perms,
        "{\"query_id\": \"q1\", \"ranking\": [\"d2\", \"nope\"]}\n",
    )?;
    let e = err(&train_listwise(
        &data,
        &tmp.path().join("n"),
        &["--dev-queries", "0", "--permutations", p],
    )?);
    assert!(e.contains("'nope'"), "{e}");
    // A malformed line.
    std::fs::write(&perms, "{\"query_id\": \"q1\"}\n")?;
    let e = err(&train_listwise(
        &data,
        &tmp.path().join("m"),
        &["--permutations", p],
    )?);
    assert!(e.contains("perms.jsonl:1"), "{e}");
    // Every window over the cutoff.
    let e = err(&train_listwise(
        &data,
        &tmp.path().join("c"),
        &["--dev-queries", "0", "--cutoff-len", "64"],
    )?);
    assert!(e.contains("over the cutoff of 64"), "{e}");
    // ... or over the model's own context (128 tokens for tiny-gqa), whatever the cutoff.
    let e = err(&dear()
        .args(["train", "--stage", "listwise", "--model"])
        .arg(fixture("tiny-gqa"))
        .arg("--dataset")
        .arg(&data)
        .args([
            "--negatives",
            "2",
            "--window",
            "4",
            "--dev-queries",
            "0",
            "--out",
        ])
        .arg(tmp.path().join("ctx"))
        .output()?);
    assert!(e.contains("over the cutoff of 128"), "{e}");
    // FIRST: a ranking loss on the first identifier token's logits; windows whose ids
    // share a first token ([1] and [10] here) are refused, naming the largest window.
    let first = ok(&train_listwise(
        &data,
        &tmp.path().join("first"),
        &["--dev-queries", "0", "--objective", "first-token"],
    )?)?;
    assert_eq!(first["steps"], 3);
    assert!(
        first["last_loss"].as_f64().is_some_and(f64::is_finite),
        "{first}"
    );
    let e = err(&train_listwise(
        &data,
        &tmp.path().join("first12"),
        &["--objective", "first-token", "--window", "12"],
    )?);
    assert!(e.contains("[1] and [10]") && e.contains("at most 9"), "{e}");
    // Stage-2 flags on stage 1, and a pointwise adapter to start stage 2 from.
    let e = err(&train(
        &data,
        &tmp.path().join("s"),
        &["--permutations", p],
    )?);
    assert!(e.contains("--stage listwise"), "{e}");
    let pointwise = tmp.path().join("pointwise");
    ok(&train(
        &data,
        &pointwise,
        &[
            "--targets",
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        ],
    )?)?;
    let e = err(&train_listwise(
        &data,
        &tmp.path().join("i"),
        &["--init-adapter", pointwise.to_str().ok_or("path")?],
    )?);
    assert!(e.contains("CAUSAL_LM"), "{e}");
    Ok(())
}
