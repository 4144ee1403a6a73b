//! The `dear` command line, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use dear::dear_core::{
    AdapterMode, LanguageModel, LoadOptions, Passage, PointwiseConfig, PointwiseScorer, Query,
    Recipe,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("dear-core/tests/golden/models")
        .join(name)
}

fn dear() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dear"))
}

#[test]
fn generate_json_matches_the_library() -> TestResult {
    let model = fixture("tiny-gqa");
    let out = dear()
        .args(["generate", "--model"])
        .arg(&model)
        .args(["--prompt", "hello there", "--max-new-tokens", "6", "--json"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let cli_ids: Vec<u32> = json["token_ids"]
        .as_array()
        .ok_or("no token_ids")?
        .iter()
        .filter_map(|v| v.as_u64().map(|v| v as u32))
        .collect();
    let lm = dear::dear_core::LanguageModel::load(
        &model.to_string_lossy(),
        &dear::dear_core::LoadOptions::default(),
    )?;
    let prompt = lm.plain_prompt("hello there")?;
    let opts = dear::dear_core::GenerateOptions::default().with_max_new_tokens(6);
    let lib = lm.generate(&prompt, &opts, &mut |_| true)?;
    assert_eq!(cli_ids, lib.tokens);
    assert_eq!(
        json["text"].as_str(),
        Some(lm.tokenizer().decode(&lib.tokens, true)?.as_str())
    );
    Ok(())
}

fn build_hub_cache(root: &Path) -> TestResult {
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = root.join("models--test-org--tiny-gqa");
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs/main"), commit)?;
    for entry in std::fs::read_dir(fixture("tiny-gqa"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), snap.join(entry.file_name()))?;
    }
    Ok(())
}

/// A hub id resolves through `HF_HOME` with `HF_HUB_OFFLINE=1`: no network at all.
#[test]
fn hub_id_through_hf_home_offline() -> TestResult {
    let home = tempfile::tempdir()?;
    build_hub_cache(&home.path().join("hub"))?;
    let out = dear()
        .args([
            "generate",
            "--model",
            "test-org/tiny-gqa",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
            "--json",
        ])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Same id, not cached anywhere: a clear error, not a download attempt.
    let out = dear()
        .args([
            "generate",
            "--model",
            "test-org/not-there",
            "--prompt",
            "hi",
        ])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("test-org/not-there") && err.contains("offline"),
        "{err}"
    );
    Ok(())
}

#[test]
fn bad_input_fails_with_a_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("prompt.txt");
    std::fs::write(&bad, b"caf\xe9 au lait")?;
    let out = dear()
        .args(["generate", "--model"])
        .arg(fixture("tiny-gqa"))
        .arg("--prompt-file")
        .arg(&bad)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not valid UTF-8"), "{err}");
    let out = dear()
        .args(["generate", "--model"])
        .arg(fixture("tiny-gqa"))
        .args(["--prompt", ""])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    let out = dear()
        .args([
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--prompt",
            "x",
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model.gguf"));
    Ok(())
}

// ---------------------------------------------------------------------------
// `dear score` and `dear recipes`

fn lora_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("dear-core/tests/golden/lora")
        .join(name)
}

const QUERY: &str = "why does it rain";

/// Short passages (the tiny fixtures hold 128 positions), with every id form.
const DOCS: &str = concat!(
    r#"{"id": "rain", "title": "Rain", "text": "Rain forms when droplets coalesce."}"#,
    "\n\n",
    r#"{"_id": "beir-1", "text": "Paris is the capital of France."}"#,
    "\r\n",
    r#"{"text": "The sky is blue because of scattering."}"#,
    "\n",
    r#"{"_id": 42, "title": "", "text": "Clouds hold water vapour."}"#,
    "\n",
);

fn docs_passages() -> Vec<Passage> {
    vec![
        Passage::new("Rain forms when droplets coalesce.")
            .with_title("Rain")
            .with_id("rain"),
        Passage::new("Paris is the capital of France.").with_id("beir-1"),
        Passage::new("The sky is blue because of scattering."),
        Passage::new("Clouds hold water vapour.")
            .with_title("")
            .with_id("42"),
    ]
}

fn write_docs(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path)
}

/// One row of `dear score --json`: index, id, score.
type ScoreRow = (u64, Option<String>, f32);

/// Runs `dear score ARGS --query QUERY --docs DOCS --json`: (index, id, score) rows.
fn score_json(
    args: &[&std::ffi::OsStr],
    docs: &Path,
) -> Result<Vec<ScoreRow>, Box<dyn std::error::Error>> {
    let out = dear()
        .arg("score")
        .args(args)
        .args(["--query", QUERY, "--json", "--docs"])
        .arg(docs)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("passages/s"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = json.as_array().ok_or("not an array")?;
    rows.iter()
        .map(|r| {
            Ok((
                r["index"].as_u64().ok_or("no index")?,
                r["id"].as_str().map(str::to_string),
                r["score"].as_f64().ok_or("no score")? as f32,
            ))
        })
        .collect()
}

fn assert_close(cli: &[f32], lib: &[f32]) {
    assert_eq!(cli.len(), lib.len());
    for (c, l) in cli.iter().zip(lib) {
        assert!(
            (c - l).abs() <= 1e-5 * l.abs().max(1.0),
            "cli {cli:?} lib {lib:?}"
        );
    }
}

fn library_scores(
    lm: LanguageModel,
    config: PointwiseConfig,
) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let scorer = PointwiseScorer::new(std::sync::Arc::new(lm), None, config)?;
    Ok(scorer.score(&Query::new(QUERY), &docs_passages())?)
}

/// A full `LlamaForSequenceClassification` checkpoint: `--head auto` picks the
/// classifier, and the scores equal the library's, in input order.
#[test]
fn score_json_matches_the_library() -> TestResult {
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let model = lora_fixture("tiny-seqcls");
    let rows = score_json(&["--model".as_ref(), model.as_os_str()], &docs)?;
    let indices: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(indices, vec![0, 1, 2, 3]);
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r.1.as_deref()).collect();
    assert_eq!(ids, vec![Some("rain"), Some("beir-1"), None, Some("42")]);
    let lm = LanguageModel::load(&model.to_string_lossy(), &LoadOptions::default())?;
    let lib = library_scores(lm, PointwiseConfig::classifier())?;
    let cli: Vec<f32> = rows.iter().map(|r| r.2).collect();
    assert_close(&cli, &lib);
    // Distinct passages, distinct scores: the order is meaningful.
    assert!(cli.windows(2).all(|w| w[0] != w[1]), "{cli:?}");

    // The same through a recipe file, and with explicit lengths (the defaults).
    let recipe = Recipe {
        name: "tiny".into(),
        base: model.to_string_lossy().into_owned(),
        adapter: None,
        pointwise: PointwiseConfig::classifier(),
    };
    let recipe_file = dir.path().join("tiny.json");
    std::fs::write(&recipe_file, serde_json::to_string(&recipe)?)?;
    let rows = score_json(&["--recipe".as_ref(), recipe_file.as_os_str()], &docs)?;
    assert_close(&rows.iter().map(|r| r.2).collect::<Vec<_>>(), &lib);
    let rows = score_json(
        &[
            "--model".as_ref(),
            model.as_os_str(),
            "--head".as_ref(),
            "classifier".as_ref(),
            "--q-max-len".as_ref(),
            "32".as_ref(),
            "--p-max-len".as_ref(),
            "196".as_ref(),
        ],
        &docs,
    )?;
    assert_close(&rows.iter().map(|r| r.2).collect::<Vec<_>>(), &lib);
    // Shorter passages change the scores.
    let rows = score_json(
        &[
            "--model".as_ref(),
            model.as_os_str(),
            "--p-max-len".as_ref(),
            "6".as_ref(),
        ],
        &docs,
    )?;
    assert_ne!(rows.iter().map(|r| r.2).collect::<Vec<_>>(), lib);
    Ok(())
}

/// A SEQ_CLS adapter merged into a causal base gives that base a score head.
#[test]
fn score_with_a_classifier_adapter() -> TestResult {
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let model = fixture("tiny-gqa");
    let adapter = lora_fixture("seqcls-a");
    let rows = score_json(
        &[
            "--model".as_ref(),
            model.as_os_str(),
            "--adapter".as_ref(),
            adapter.as_os_str(),
        ],
        &docs,
    )?;
    let lm = LanguageModel::load(
        &model.to_string_lossy(),
        &LoadOptions::default().with_adapter(adapter.to_string_lossy(), AdapterMode::Merged),
    )?;
    let lib = library_scores(lm, PointwiseConfig::classifier())?;
    assert_close(&rows.iter().map(|r| r.2).collect::<Vec<_>>(), &lib);

    // Without the adapter the base has no score head.
    let out = dear()
        .args(["score", "--head", "classifier", "--query", QUERY, "--model"])
        .arg(&model)
        .arg("--docs")
        .arg(&docs)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("score` head"), "{err}");
    Ok(())
}

/// The yes/no head. "yes" and "no" are not single tokens in tiny-gqa's tokenizer,
/// so this runs on the default model (`bash scripts/fetch-model.sh`).
#[test]
fn score_yes_no_on_the_default_model() -> TestResult {
    let path = dear::dear_core::default_model_path();
    assert!(
        path.is_file(),
        "the default model is missing at {}: run `bash scripts/fetch-model.sh`",
        path.display()
    );
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let lm = LanguageModel::load(&path.to_string_lossy(), &LoadOptions::default())?;
    let lib = library_scores(lm, PointwiseConfig::yes_no())?;
    // No --model and --head auto: the default model has no score head.
    let rows = score_json(&[], &docs)?;
    assert_close(&rows.iter().map(|r| r.2).collect::<Vec<_>>(), &lib);
    let rows = score_json(&["--recipe".as_ref(), "smollm2".as_ref()], &docs)?;
    assert_close(&rows.iter().map(|r| r.2).collect::<Vec<_>>(), &lib);
    Ok(())
}

#[test]
fn score_table_is_sorted_by_score() -> TestResult {
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let out = dear()
        .args(["score", "--query", QUERY, "--model"])
        .arg(lora_fixture("tiny-seqcls"))
        .arg("--docs")
        .arg(&docs)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].contains("rank") && lines[0].contains("score"),
        "{text}"
    );
    let mut scores = Vec::new();
    let mut ids = Vec::new();
    for (k, line) in lines[1..].iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.first().copied(),
            Some((k + 1).to_string().as_str()),
            "{line}"
        );
        let score = fields.get(1).ok_or("no score")?;
        assert_eq!(score.split('.').nth(1).map(str::len), Some(4), "{line}");
        scores.push(score.parse::<f32>()?);
        ids.push(fields.get(2).copied().ok_or("no id")?);
    }
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{text}");
    ids.sort_unstable();
    assert_eq!(ids, vec!["-", "42", "beir-1", "rain"]);
    assert!(
        text.contains("Rain: Rain forms when droplets coalesce."),
        "{text}"
    );
    Ok(())
}

#[test]
fn bad_docs_name_the_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let run = |name: &str, content: &[u8]| -> Result<String, Box<dyn std::error::Error>> {
        let docs = write_docs(dir.path(), name, content)?;
        let out = dear()
            .args(["score", "--query", QUERY, "--model"])
            .arg(lora_fixture("tiny-seqcls"))
            .arg("--docs")
            .arg(&docs)
            .output()?;
        assert!(!out.status.success(), "{name} was accepted");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let err = run(
        "latin1.jsonl",
        b"{\"text\": \"ok\"}\n\n{\"text\": \"caf\xe9\"}\n",
    )?;
    assert!(
        err.contains("latin1.jsonl") && err.contains("line 3") && err.contains("UTF-8"),
        "{err}"
    );
    let err = run(
        "notext.jsonl",
        b"{\"text\": \"ok\"}\n{\"id\": \"x\", \"title\": \"t\"}\n",
    )?;
    assert!(
        err.contains("notext.jsonl") && err.contains("line 2") && err.contains("`text`"),
        "{err}"
    );
    let err = run(
        "broken.jsonl",
        b"{\"text\": \"ok\"}\n{\"text\": \"unclosed\n",
    )?;
    assert!(
        err.contains("line 2") && err.contains("invalid JSON"),
        "{err}"
    );
    let err = run("array.jsonl", b"{\"text\": \"ok\"}\n[\"text\"]\n")?;
    assert!(
        err.contains("line 2") && err.contains("expected a JSON object"),
        "{err}"
    );
    let out = dear()
        .args(["score", "--query", QUERY, "--model"])
        .arg(lora_fixture("tiny-seqcls"))
        .arg("--docs")
        .arg(dir.path().join("missing.jsonl"))
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jsonl"));
    let out = dear()
        .args([
            "score",
            "--recipe",
            "no-such-recipe",
            "--query",
            QUERY,
            "--docs",
        ])
        .arg(write_docs(dir.path(), "ok.jsonl", b"{\"text\": \"ok\"}\n")?)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-recipe") && err.contains("dear-8b-ce"),
        "{err}"
    );
    let bad_recipe = write_docs(dir.path(), "recipe.json", br#"{"name": "x", "base": "b"}"#)?;
    let out = dear()
        .args(["score", "--query", QUERY, "--recipe"])
        .arg(&bad_recipe)
        .arg("--docs")
        .arg(dir.path().join("ok.jsonl"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("recipe.json") && err.contains("missing field `pointwise`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn empty_docs_print_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    for (name, content) in [
        ("empty.jsonl", &b""[..]),
        ("blank.jsonl", &b"\n  \n\r\n"[..]),
    ] {
        let docs = write_docs(dir.path(), name, content)?;
        let run = |json: bool| -> Result<String, Box<dyn std::error::Error>> {
            let mut cmd = dear();
            cmd.args(["score", "--query", QUERY, "--model"])
                .arg(lora_fixture("tiny-seqcls"))
                .arg("--docs")
                .arg(&docs);
            if json {
                cmd.arg("--json");
            }
            let out = cmd.output()?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8(out.stdout)?)
        };
        assert_eq!(run(true)?.trim(), "[]", "{name}");
        assert_eq!(run(false)?, "", "{name}");
    }
    Ok(())
}

/// `generate --adapter` merges a causal-LM adapter, as the library does.
#[test]
fn generate_with_a_merged_adapter() -> TestResult {
    let model = fixture("tiny-gqa");
    let adapter = lora_fixture("causal-lora");
    let out = dear()
        .args(["generate", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(&adapter)
        .args(["--prompt", "hello there", "--max-new-tokens", "6", "--json"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let cli_ids: Vec<u32> = json["token_ids"]
        .as_array()
        .ok_or("no token_ids")?
        .iter()
        .filter_map(|v| v.as_u64().map(|v| v as u32))
        .collect();
    let lm = LanguageModel::load(
        &model.to_string_lossy(),
        &LoadOptions::default().with_adapter(adapter.to_string_lossy(), AdapterMode::Merged),
    )?;
    let prompt = lm.plain_prompt("hello there")?;
    let opts = dear::dear_core::GenerateOptions::default().with_max_new_tokens(6);
    let lib = lm.generate(&prompt, &opts, &mut |_| true)?;
    assert_eq!(cli_ids, lib.tokens);
    Ok(())
}

#[test]
fn recipes_are_listed() -> TestResult {
    let out = dear().args(["recipes", "--json"]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipes: Vec<Recipe> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(recipes, Recipe::builtins());
    let names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&"dear-8b-ce") && names.contains(&"smollm2"),
        "{names:?}"
    );
    let out = dear().arg("recipes").output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.contains("dear-8b-ce-lora")
            && text.contains("abdoelsayed/dear-8b-reranker-ce-lora-v1")
            && text.contains("meta-llama/Llama-3.1-8B")
            && text.contains("yes-no"),
        "{text}"
    );
    Ok(())
}
