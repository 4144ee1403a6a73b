//! The `dear` command line, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use dear::dear_core::{
    AdapterMode, LanguageModel, ListwiseConfig, ListwiseMode, ListwisePrompt, ListwiseRanker,
    LoadOptions, Passage, PointwiseConfig, PointwiseScorer, Query, Recipe, WindowConfig,
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
    let lm = dear::dear_core::LanguageModel::load(model, &dear::dear_core::LoadOptions::default())?;
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
    let lm = LanguageModel::load(&model, &LoadOptions::default())?;
    let lib = library_scores(lm, PointwiseConfig::classifier())?;
    let cli: Vec<f32> = rows.iter().map(|r| r.2).collect();
    assert_close(&cli, &lib);
    // Distinct passages, distinct scores: the order is meaningful.
    assert!(cli.windows(2).all(|w| w[0] != w[1]), "{cli:?}");
    // The query from a file gives the same scores.
    let qfile = dir.path().join("query.txt");
    std::fs::write(&qfile, QUERY)?;
    let out = dear()
        .arg("score")
        .arg("--model")
        .arg(&model)
        .arg("--query-file")
        .arg(&qfile)
        .arg("--json")
        .arg("--docs")
        .arg(&docs)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let from_file: Vec<f32> = json
        .as_array()
        .ok_or("not an array")?
        .iter()
        .filter_map(|r| r["score"].as_f64().map(|s| s as f32))
        .collect();
    assert_eq!(from_file, cli);

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
        &model,
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
    let lm = LanguageModel::load(path, &LoadOptions::default())?;
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
        err.contains("latin1.jsonl:3:") && err.contains("UTF-8"),
        "{err}"
    );
    let err = run(
        "notext.jsonl",
        b"{\"text\": \"ok\"}\n{\"id\": \"x\", \"title\": \"t\"}\n",
    )?;
    assert!(
        err.contains("notext.jsonl:2:") && err.contains("`text`"),
        "{err}"
    );
    let err = run(
        "broken.jsonl",
        b"{\"text\": \"ok\"}\n{\"text\": \"unclosed\n",
    )?;
    assert!(err.contains(":2:") && err.contains("invalid JSON"), "{err}");
    let err = run("array.jsonl", b"{\"text\": \"ok\"}\n[\"text\"]\n")?;
    assert!(
        err.contains(":2:") && err.contains("expected a JSON object"),
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

/// `dear score` on the tiny classifier: its stdout (a table, or JSON with `json`).
fn tiny_score(docs: &Path, json: bool) -> Result<String, Box<dyn std::error::Error>> {
    let mut cmd = dear();
    cmd.args(["score", "--query", QUERY, "--model"])
        .arg(lora_fixture("tiny-seqcls"))
        .arg("--docs")
        .arg(docs);
    if json {
        cmd.arg("--json");
    }
    run_ok(&mut cmd)
}

#[test]
fn empty_docs_print_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    for (name, content) in [
        ("empty.jsonl", &b""[..]),
        ("blank.jsonl", &b"\n  \n\r\n"[..]),
    ] {
        let docs = write_docs(dir.path(), name, content)?;
        assert_eq!(tiny_score(&docs, true)?.trim(), "[]", "{name}");
        assert_eq!(tiny_score(&docs, false)?, "", "{name}");
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
        &model,
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

// ---------------------------------------------------------------------------
// `dear listwise`
//
// Listwise prompts are far longer than the tiny fixtures' 128 positions, so these
// run on the default model (`bash scripts/fetch-model.sh`); they fail, not skip,
// when it is missing.

fn default_model() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let path = dear::dear_core::default_model_path();
    if !path.is_file() {
        return Err(format!(
            "the default model is missing at {}: run `bash scripts/fetch-model.sh`",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// Runs `dear listwise --query QUERY --docs DOCS ARGS`; asserts success and
/// returns stdout (stderr must carry the timings).
fn listwise_run(docs: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = dear()
        .args(["listwise", "--query", QUERY, "--docs"])
        .arg(docs)
        .args(args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    assert!(
        stderr.contains("window") && stderr.contains(" s"),
        "{stderr}"
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `dear listwise ARGS --json`, parsed; the output is exactly one line.
fn listwise_json(
    docs: &Path,
    args: &[&str],
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut all = args.to_vec();
    all.push("--json");
    let stdout = listwise_run(docs, &all)?;
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout)?;
    assert!(json.get("raw").is_some_and(|r| r.is_string()), "{json}");
    assert!(json.get("failure").is_some_and(|f| f.is_null()), "{json}");
    Ok(json)
}

fn permutation_of(json: &serde_json::Value) -> Result<Vec<usize>, Box<dyn std::error::Error>> {
    json["permutation"]
        .as_array()
        .ok_or("no permutation")?
        .iter()
        .map(|v| Ok(v.as_u64().ok_or("not an index")? as usize))
        .collect()
}

fn assert_permutation(p: &[usize], n: usize) {
    let mut sorted = p.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{p:?}");
}

/// The ids of a raw answer of exactly the form `[a] > [b] > …`.
fn ranking_ids(raw: &str) -> Vec<usize> {
    raw.split(" > ")
        .map(|part| {
            part.strip_prefix('[')
                .and_then(|p| p.strip_suffix(']'))
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse().ok())
                .unwrap_or_else(|| panic!("{part:?} in {raw:?} is not [id]"))
        })
        .collect()
}

/// Three passages the default model reorders under `--prompt plain --mode
/// first-token` (the rain passage is not first), so agreeing with the library
/// means something.
const SHUFFLED_DOCS: &str = concat!(
    r#"{"id": "paris", "text": "Paris is the capital of France."}"#,
    "\n",
    r#"{"id": "sky", "text": "The sky is blue because of scattering."}"#,
    "\n",
    r#"{"id": "rain", "title": "Rain", "text": "Rain forms when water droplets in clouds coalesce and fall."}"#,
    "\n",
);

fn shuffled_passages() -> Vec<Passage> {
    vec![
        Passage::new("Paris is the capital of France.").with_id("paris"),
        Passage::new("The sky is blue because of scattering.").with_id("sky"),
        Passage::new("Rain forms when water droplets in clouds coalesce and fall.")
            .with_title("Rain")
            .with_id("rain"),
    ]
}

/// `--mode first-token` gives the library's order (in the same process), for both
/// prompts and with several windows; the table shows the same order.
#[test]
fn listwise_first_token_matches_the_library() -> TestResult {
    let model = default_model()?;
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let shuffled = write_docs(dir.path(), "shuffled.jsonl", SHUFFLED_DOCS.as_bytes())?;
    let lm = std::sync::Arc::new(LanguageModel::load(model, &LoadOptions::default())?);
    let (docs_list, shuffled_list) = (docs_passages(), shuffled_passages());
    let windows_of_two = WindowConfig {
        rank_start: 0,
        rank_end: 4,
        window: 2,
        step: 1,
    };
    type Case<'a> = (
        &'a Path,
        &'a [Passage],
        &'a [&'a str],
        ListwisePrompt,
        WindowConfig,
    );
    let cases: [Case; 4] = [
        (
            &docs,
            &docs_list,
            &[],
            ListwisePrompt::RankLlm,
            WindowConfig::top(4),
        ),
        (
            &docs,
            &docs_list,
            &["--prompt", "plain"],
            ListwisePrompt::Plain,
            WindowConfig::top(4),
        ),
        (
            &docs,
            &docs_list,
            &["--window", "2", "--step", "1"],
            ListwisePrompt::RankLlm,
            windows_of_two,
        ),
        (
            &shuffled,
            &shuffled_list,
            &["--prompt", "plain"],
            ListwisePrompt::Plain,
            WindowConfig::top(3),
        ),
    ];
    let mut reordered = 0;
    let mut shuffled_order = Vec::new();
    for (docs, passages, extra, prompt, window) in cases {
        let n = passages.len();
        let mut args = vec!["--mode", "first-token"];
        args.extend_from_slice(extra);
        let json = listwise_json(docs, &args)?;
        let cli = permutation_of(&json)?;
        assert_permutation(&cli, n);
        let config = ListwiseConfig {
            prompt,
            mode: ListwiseMode::FirstToken,
            window,
            ..ListwiseConfig::default()
        };
        let lib = ListwiseRanker::new(lm.clone(), None, config)?.rank(
            &Query::new(QUERY),
            passages,
            &dear::dear_core::ListwiseOptions::default(),
        )?;
        assert_eq!(lib.failure, None);
        assert_eq!(cli, lib.order, "{args:?}");
        if cli != (0..n).collect::<Vec<_>>() {
            reordered += 1;
        }
        let windows = json["windows"].as_array().ok_or("no windows")?;
        let spans: Vec<(u64, u64)> = windows
            .iter()
            .map(|w| {
                (
                    w["start"].as_u64().unwrap_or(99),
                    w["end"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        let lib_spans: Vec<(u64, u64)> = lib
            .windows
            .iter()
            .map(|w| (w.start as u64, w.end as u64))
            .collect();
        assert_eq!(spans, lib_spans);
        if window.window == 2 {
            // Windows of 2 slide up by 1 from the bottom.
            assert_eq!(spans, vec![(2, 4), (1, 3), (0, 2)]);
        } else {
            assert_eq!(spans, vec![(0, n as u64)]);
        }
        // First-token mode writes nothing: one empty raw text per window.
        assert_eq!(json["raw"], "\n".repeat(spans.len() - 1), "{json}");
        if n == 3 {
            shuffled_order = cli;
        }
    }
    assert!(reordered > 0, "every case kept the incoming order");
    // The table: rank, input index, id, passage, then the window.
    let text = listwise_run(&shuffled, &["--mode", "first-token", "--prompt", "plain"])?;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("rank") && lines[0].contains("index") && lines[0].contains("id"),
        "{text}"
    );
    let ids = ["paris", "sky", "rain"];
    let indices: Vec<usize> = lines[1..=3]
        .iter()
        .enumerate()
        .map(|(k, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields[0], (k + 1).to_string(), "{line}");
            let index: usize = fields[1].parse().map_err(|e| format!("{line}: {e}"))?;
            assert_eq!(fields.get(2), ids.get(index), "{line}");
            Ok::<_, String>(index)
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(indices, shuffled_order, "{text}");
    assert!(
        text.contains("Rain: Rain forms when water droplets"),
        "{text}"
    );
    assert!(text.contains("window 1 (ranks 1-3"), "{text}");
    Ok(())
}

/// `--mode constrained`: the raw answer is exactly a full ranking, 1-based for
/// rankllm and 0-based for plain, and the permutation is the one it writes.
#[test]
fn listwise_constrained_writes_a_full_ranking() -> TestResult {
    default_model()?;
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let n = docs_passages().len();
    for (prompt, first) in [("rankllm", 1), ("plain", 0)] {
        let json = listwise_json(&docs, &["--mode", "constrained", "--prompt", prompt])?;
        let permutation = permutation_of(&json)?;
        assert_permutation(&permutation, n);
        let raw = json["raw"].as_str().ok_or("no raw")?;
        let ids = ranking_ids(raw);
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (first..first + n).collect::<Vec<_>>(),
            "{prompt}: {raw}"
        );
        let from_raw: Vec<usize> = ids.iter().map(|id| id - first).collect();
        assert_eq!(permutation, from_raw, "{prompt}: {raw}");
        assert_eq!(json["windows"][0]["parsed_ids"], n, "{json}");
    }
    Ok(())
}

/// One passage is its own ranking; zero passages give an empty one.
#[test]
fn listwise_one_and_zero_docs() -> TestResult {
    default_model()?;
    let dir = tempfile::tempdir()?;
    let one = write_docs(
        dir.path(),
        "one.jsonl",
        br#"{"id": "only", "text": "Rain forms when droplets coalesce."}"#,
    )?;
    let json = listwise_json(&one, &[])?;
    assert_eq!(permutation_of(&json)?, vec![0], "{json}");
    assert_eq!(json["raw"], "", "{json}");
    let none = write_docs(dir.path(), "none.jsonl", b"\n \n")?;
    for mode in ["generate", "constrained", "first-token"] {
        let json = listwise_json(&none, &["--mode", mode])?;
        assert_eq!(permutation_of(&json)?, Vec::<usize>::new(), "{json}");
        assert_eq!(json["raw"], "", "{json}");
        assert_eq!(listwise_run(&none, &["--mode", mode])?, "");
    }
    Ok(())
}

/// A model that cannot read the prompt (the tiny fixture holds 128 positions):
/// the incoming order, exit 0, and the reason on stderr and in the JSON.
#[test]
fn listwise_failure_keeps_the_incoming_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let out = dear()
        .args(["listwise", "--query", QUERY, "--json", "--model"])
        .arg(fixture("tiny-gqa"))
        .arg("--docs")
        .arg(&docs)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("context window"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(permutation_of(&json)?, vec![0, 1, 2, 3], "{json}");
    assert!(
        json["failure"]["message"]
            .as_str()
            .is_some_and(|f| f.contains("context window"))
            && json["failure"]["kind"] == "model",
        "{json}"
    );
    Ok(())
}

/// Bad window flags and bad docs fail before any model is loaded, naming the
/// flag or the line.
#[test]
fn listwise_bad_input_fails_with_a_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    let fail = |docs: &Path, args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let out = dear()
            .args([
                "listwise",
                "--query",
                QUERY,
                "--model",
                "/no/such/model.gguf",
                "--docs",
            ])
            .arg(docs)
            .args(args)
            .output()?;
        assert!(!out.status.success(), "{args:?} was accepted");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (args, wanted) in [
        (&["--window", "0"][..], "`window` must be at least 1"),
        (
            &["--window", "4", "--step", "0"][..],
            "`step` must be at least 1",
        ),
        (
            &["--window", "2", "--step", "3"][..],
            "must not exceed `window`",
        ),
        (
            &["--rank-end", "0"][..],
            "`rank_start` (0) must be below `rank_end` (0)",
        ),
        (&["--mode", "sideways"][..], "sideways"),
        (&["--prompt", "fancy"][..], "fancy"),
    ] {
        let err = fail(&docs, args)?;
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(!err.contains("/no/such/model.gguf"), "{args:?}: {err}");
    }
    let err = fail(&docs, &["--window", "0"])?;
    assert!(err.contains("--window 0"), "{err}");
    let none = write_docs(dir.path(), "none.jsonl", b"")?;
    let err = fail(&none, &["--window", "0"])?;
    assert!(err.contains("`window` must be at least 1"), "{err}");

    let broken = write_docs(
        dir.path(),
        "broken.jsonl",
        b"{\"text\": \"ok\"}\n\n{\"text\": \"unclosed\n",
    )?;
    let err = fail(&broken, &[])?;
    assert!(
        err.contains("broken.jsonl:3:") && err.contains("invalid JSON"),
        "{err}"
    );
    let notext = write_docs(
        dir.path(),
        "notext.jsonl",
        b"{\"text\": \"ok\"}\n{\"id\": \"x\"}\n",
    )?;
    let err = fail(&notext, &[])?;
    assert!(
        err.contains("notext.jsonl:2:") && err.contains("`text`"),
        "{err}"
    );
    // A good file reaches the model, whose absence is then the error.
    let err = fail(&docs, &[])?;
    assert!(err.contains("/no/such/model.gguf"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------- index, search, eval

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

fn run_ok(cmd: &mut Command) -> Result<String, Box<dyn std::error::Error>> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

const TINY_CORPUS: &str = r#"{"_id": "d1", "title": "Rain", "text": "Rain falls when droplets in clouds grow heavy."}
{"_id": "d2", "title": "Snow", "text": "Snow forms when water vapour freezes into ice crystals in clouds."}
{"_id": "d3", "title": "Paris", "text": "Paris is the capital of France."}
{"_id": 4, "text": "Clouds are made of droplets; rain and snow fall from clouds."}
"#;

#[test]
fn index_replaces_ids_and_search_returns_bm25_hits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let corpus = dir.path().join("corpus.jsonl");
    write(&corpus, TINY_CORPUS)?;
    let index = dir.path().join("index");
    let out = run_ok(
        dear()
            .args(["index", "--corpus"])
            .arg(&corpus)
            .arg("--index")
            .arg(&index),
    )?;
    assert!(out.contains("4 new, 0 replaced"), "{out}");
    // Re-indexing: d3 changes, d5 is new, nothing is duplicated.
    let update = dir.path().join("update.jsonl");
    write(
        &update,
        "{\"_id\": \"d3\", \"text\": \"Paris, on the Seine, is the capital of France.\"}\n{\"_id\": \"d5\", \"text\": \"Hail is frozen rain.\"}\n",
    )?;
    let out = run_ok(
        dear()
            .args(["index", "--corpus"])
            .arg(&update)
            .arg("--index")
            .arg(&index),
    )?;
    assert!(
        out.contains("1 new, 1 replaced") && out.contains("5 documents"),
        "{out}"
    );

    let out = run_ok(dear().args(["search", "--index"]).arg(&index).args([
        "--stages",
        "bm25",
        "--json",
        "clouds rain",
    ]))?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let ids: Vec<&str> = json["hits"]
        .as_array()
        .ok_or("no hits")?
        .iter()
        .filter_map(|h| h["passage"]["id"].as_str())
        .collect();
    // The library's BM25 order over the same index.
    let lib = dear::dear_tantivy::PassageIndex::open(&index)?;
    let results = dear::dear_tantivy::SearchReranked::search_reranked(
        &lib.searcher(),
        &lib.query("clouds rain")?,
        &dear::Reranker::new(),
        &dear::SearchOptions::new(10),
    )?;
    let want: Vec<&str> = results.hits.iter().map(|h| h.id()).collect();
    assert_eq!(ids, want);
    assert!(
        ids.contains(&"4") && ids.contains(&"d5") && !ids.contains(&"d3"),
        "{ids:?}"
    );
    let stages = json["report"]["stages"].as_array().ok_or("no stages")?;
    assert_eq!(stages[0]["stage"], "first");
    assert_eq!(stages[1]["status"], "skipped");

    // The table shows BM25's order and the final one.
    let table = run_ok(
        dear()
            .args(["search", "--index"])
            .arg(&index)
            .args(["--stages", "bm25", "snow"]),
    )?;
    assert!(
        table.contains("BM25 top") && table.contains("d2"),
        "{table}"
    );
    Ok(())
}

#[test]
fn index_a_folder_of_text_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(
        &dir.path().join("docs/guide.md"),
        "# Guide\n\nInstall with cargo.",
    )?;
    write(&dir.path().join("docs/notes/todo.txt"), "Write the tests.")?;
    let index = dir.path().join("index");
    let out = run_ok(
        dear()
            .args(["index", "--dir"])
            .arg(dir.path().join("docs"))
            .arg("--index")
            .arg(&index),
    )?;
    assert!(out.contains("2 new"), "{out}");
    let out = run_ok(dear().args(["search", "--index"]).arg(&index).args([
        "--stages",
        "bm25",
        "--json",
        "install cargo",
    ]))?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["hits"][0]["passage"]["id"], "guide.md#0");
    assert_eq!(json["hits"][0]["passage"]["title"], "Guide");
    Ok(())
}

#[test]
fn bad_search_input_is_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dear()
        .args(["search", "--index"])
        .arg(dir.path().join("nothing"))
        .args(["--stages", "bm25", "rain"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nothing") && err.contains("no tantivy index"),
        "{err}"
    );
    let out = dear()
        .args(["search", "--index", "x", "--stages", "bm25,dense", "rain"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("dense"), "{err}");
    let corpus = dir.path().join("bad.jsonl");
    write(
        &corpus,
        "{\"_id\": \"a\", \"text\": \"ok\"}\n{\"_id\": \"b\"}\n",
    )?;
    let out = dear()
        .args(["index", "--corpus"])
        .arg(&corpus)
        .arg("--index")
        .arg(dir.path().join("i"))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.jsonl:2"),
        "{err}"
    );
    Ok(())
}

/// A tiny BEIR dataset: the corpus above, three judged queries.
fn tiny_dataset(root: &Path) -> std::io::Result<()> {
    write(&root.join("corpus.jsonl"), TINY_CORPUS)?;
    write(
        &root.join("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"why does rain fall from clouds\"}\n{\"_id\": \"q2\", \"text\": \"capital of France\"}\n{\"_id\": \"q3\", \"text\": \"ice crystals\"}\n{\"_id\": \"q4\", \"text\": \"unjudged query\"}\n",
    )?;
    write(
        &root.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t4\t1\nq2\td3\t1\nq3\td2\t1\nq3\tmissing-doc\t2\n",
    )
}

#[test]
fn eval_reports_trec_eval_metrics_and_writes_runs() -> TestResult {
    use dear::eval::{evaluate, Qrels, Run};
    let dir = tempfile::tempdir()?;
    let ds = dir.path().join("tiny");
    tiny_dataset(&ds)?;
    let runs = dir.path().join("runs");
    let out = run_ok(
        dear()
            .args(["eval", "--dataset"])
            .arg(&ds)
            .args(["--stages", "bm25", "--json", "--runs-dir"])
            .arg(&runs),
    )?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["queries"], 3);
    let run_file = runs.join("tiny.first.trec");
    let run = Run::from_path(&run_file)?;
    let qrels = Qrels::from_path(ds.join("qrels/test.tsv"))?;
    let mean = evaluate(&qrels, &run).mean;
    let bm25 = &json["stages"]["first"];
    assert_eq!(bm25["ndcg@10"].as_f64(), Some(mean.ndcg_at_10));
    assert_eq!(bm25["mrr@10"].as_f64(), Some(mean.mrr_at_10));
    assert_eq!(bm25["recall@100"].as_f64(), Some(mean.recall_at_100));
    // q3's judged document missing from the corpus still counts: recall@100 < 1.
    assert!(mean.recall_at_100 < 1.0 && mean.mrr_at_10 > 0.0);
    assert!(json["stages"].get("pointwise").is_none());

    // Reranking a given run with no model stage gives that run's figures back.
    let again = run_ok(
        dear()
            .args(["eval", "--dataset"])
            .arg(&ds)
            .arg("--run")
            .arg(&run_file)
            .args(["--stages", "bm25", "--json", "--runs-dir"])
            .arg(dir.path().join("runs2")),
    )?;
    let again: serde_json::Value = serde_json::from_str(&again)?;
    for metric in ["ndcg@10", "mrr@10", "recall@100"] {
        assert_eq!(
            again["stages"]["first"][metric],
            json["stages"]["first"][metric]
        );
    }

    // --queries takes the first judged queries.
    let one = run_ok(
        dear()
            .args(["eval", "--dataset"])
            .arg(&ds)
            .args(["--stages", "bm25", "--queries", "1", "--json", "--runs-dir"])
            .arg(dir.path().join("runs3")),
    )?;
    let one: serde_json::Value = serde_json::from_str(&one)?;
    assert_eq!(one["queries"], 1);
    Ok(())
}

#[test]
fn search_with_the_default_model_reranks() -> TestResult {
    let model = default_model()?;
    let dir = tempfile::tempdir()?;
    let corpus = dir.path().join("corpus.jsonl");
    write(&corpus, TINY_CORPUS)?;
    let index = dir.path().join("index");
    run_ok(
        dear()
            .args(["index", "--corpus"])
            .arg(&corpus)
            .arg("--index")
            .arg(&index),
    )?;
    let out = run_ok(
        dear()
            .args(["search", "--index"])
            .arg(&index)
            .arg("--model")
            .arg(&model)
            .args(["--json", "rain clouds"]),
    )?;
    // The default model brings its pointwise student, fused with BM25, and no
    // listwise stage.
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let hits = json["hits"].as_array().ok_or("no hits")?;
    assert!(hits.len() >= 2);
    let column = |hits: &[serde_json::Value], key: &str| -> Vec<f64> {
        hits.iter()
            .map(|h| h[key].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let fused = column(hits, "fused_score");
    assert!(fused.windows(2).all(|w| w[0] >= w[1]), "{fused:?}");
    assert!(fused.iter().all(|f| (0.0..=1.0).contains(f)), "{fused:?}");
    assert!(hits.iter().all(|h| h["placed_by"] == "pointwise"));
    let stages = &json["report"]["stages"];
    assert_eq!(stages[1]["status"], "completed");
    assert!(
        stages[1]["notes"]
            .to_string()
            .contains("fused with the first stage"),
        "{stages}"
    );
    assert_eq!(
        (&stages[2]["status"], &stages[2]["reason"]),
        (&"skipped".into(), &"not requested".into())
    );
    // --fusion off: the student's scores alone order the hits.
    let out = run_ok(dear().args(["search", "--index"]).arg(&index).args([
        "--fusion",
        "off",
        "--json",
        "rain clouds",
    ]))?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let hits = json["hits"].as_array().ok_or("no hits")?;
    let scores = column(hits, "pointwise_score");
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(hits.iter().all(|h| h["fused_score"].is_null()));
    Ok(())
}

/// BM25 on SciFact (../shared/data, BEIR test split) is within 0.02 nDCG@10 of
/// Anserini's BM25 multifield baseline, 0.679.
#[test]
fn eval_bm25_on_scifact_is_near_anserini() -> TestResult {
    // The shared collections sit next to the checkout (../shared); DEAR_SHARED_DIR
    // points elsewhere.
    let candidates = [
        std::env::var_os("DEAR_SHARED_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")),
        Some(PathBuf::from("/work/shared")),
    ];
    let Some(ds) = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("data/scifact"))
        .find(|d| d.join("corpus.jsonl").is_file())
    else {
        eprintln!("SKIPPED: SciFact not found (../shared/data/scifact; set DEAR_SHARED_DIR)");
        return Ok(());
    };
    let runs = tempfile::tempdir()?;
    let out = run_ok(
        dear()
            .args(["eval", "--dataset"])
            .arg(&ds)
            .args(["--stages", "bm25", "--json", "--runs-dir"])
            .arg(runs.path()),
    )?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["queries"], 300);
    let ndcg = json["stages"]["first"]["ndcg@10"]
        .as_f64()
        .ok_or("no nDCG")?;
    assert!((ndcg - 0.679).abs() <= 0.02, "nDCG@10 {ndcg}");
    Ok(())
}

#[test]
fn bench_runs_the_fixed_workloads() -> TestResult {
    let model = default_model()?;
    let out = run_ok(dear().args(["bench", "--model"]).arg(&model).args([
        "--sequences",
        "2",
        "--prompt-tokens",
        "64",
        "--decode-tokens",
        "3",
        "--json",
    ]))?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["w1"]["sequences"], 2);
    assert_eq!(json["w1"]["tokens"], 456);
    assert!(json["w1"]["tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(json["w2"]["prompt_tokens"], 64);
    assert_eq!(json["w2"]["decode_tokens"], 3);
    assert!(json["w2"]["decode_tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(json["peak_rss_mib"].as_f64().unwrap_or(0.0) > 0.0);
    // A random-weight shape whose vocabulary the W1 ids fit.
    let out = dear()
        .args(["bench", "--synthetic", "llama-3.2-8b"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("llama-3.2-8b"),
        "{err}"
    );
    Ok(())
}

/// Absurd values end in a clear error naming the flag, before any index or model is
/// opened: no panic, no abort on a huge allocation.
#[test]
fn absurd_values_are_refused_by_name() -> TestResult {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--candidates", "1000000000"],
            "candidates must be between 1 and 100000",
        ),
        (
            &["--timeout", "1e300"],
            "--timeout must be a number of seconds",
        ),
        (&["--timeout", "0"], "--timeout must be a number of seconds"),
        (
            &["--top-k", "1000000000"],
            "offset + limit must be at most 100000",
        ),
    ];
    for (flags, expected) in cases {
        let out = dear()
            .args(["search", "--index", "/nonexistent-dear-index"])
            .args(flags)
            .arg("a query")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{flags:?}: {stderr}");
    }
    Ok(())
}

/// Control and bidirectional-control characters in documents reach the terminal
/// escaped in the table; `--json` keeps the text exact.
#[test]
fn table_output_escapes_control_and_bidi_characters() -> TestResult {
    let dir = tempfile::tempdir()?;
    let corpus = dir.path().join("corpus.jsonl");
    let hostile = "rust ownership \u{1b}[2J\u{1b}]0;owned\u{7} text \u{202e}txet desrever";
    let line = serde_json::json!({"_id": "id\u{1b}[31m", "title": "t\u{2066}x", "text": hostile});
    std::fs::write(&corpus, format!("{line}\n"))?;
    let index = index_corpus(&corpus, dir.path())?;
    let search = |json: bool| -> Result<String, Box<dyn std::error::Error>> {
        let mut cmd = dear();
        cmd.arg("search").arg("--index").arg(&index);
        cmd.args(["--stages", "bm25"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg("rust ownership").output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let table = search(false)?;
    for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\u{2066}'] {
        assert!(!table.contains(raw), "raw {raw:?} in\n{table}");
    }
    assert!(
        table.contains("\\u{1b}") && table.contains("\\u{202e}"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&search(true)?)?;
    assert_eq!(json["hits"][0]["passage"]["text"], hostile);
    Ok(())
}

/// Ids are table cells too: `dear score` escapes them, and an id longer than its
/// column is cut with an ellipsis in the table but kept whole in `--json`.
#[test]
fn table_ids_are_escaped_and_fit_their_column() -> TestResult {
    let dir = tempfile::tempdir()?;
    let long = format!("doc-{}", "x".repeat(80));
    let docs = [
        serde_json::json!({"_id": "id\u{1b}[31m\u{202e}", "text": "Rain forms when droplets coalesce."}),
        serde_json::json!({"_id": long, "text": "Clouds hold water vapour."}),
    ]
    .iter()
    .map(|d| format!("{d}\n"))
    .collect::<String>();
    let docs = write_docs(dir.path(), "docs.jsonl", docs.as_bytes())?;
    let table = tiny_score(&docs, false)?;
    for raw in ['\u{1b}', '\u{202e}'] {
        assert!(!table.contains(raw), "raw {raw:?} in\n{table}");
    }
    assert!(table.contains("id\\u{1b}[31m\\u{202e}"), "{table}");
    assert!(!table.contains(&long), "{table}");
    let cut: String = long.chars().take(31).collect();
    assert!(table.contains(&format!("{cut}… ")), "{table}");
    let rows = tiny_score(&docs, true)?;
    assert!(rows.contains(&long), "{rows}");
    Ok(())
}

/// A model whose weights overflow f32 (a final norm of 3e38) computes non-finite scores:
/// `dear score` fails naming it instead of printing `"score": null`.
#[test]
fn a_non_finite_score_is_an_error_not_null() -> TestResult {
    let dir = tempfile::tempdir()?;
    let docs = write_docs(dir.path(), "docs.jsonl", DOCS.as_bytes())?;
    // A base whose final norm scales hidden states past f32's range (an absurd
    // adapter is refused at load, so the overflow comes from the base's weights).
    let model = dir.path().join("overflowing");
    std::fs::create_dir(&model)?;
    for e in std::fs::read_dir(fixture("tiny-gqa"))? {
        let e = e?;
        std::fs::copy(e.path(), model.join(e.file_name()))?;
    }
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights)?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len])?;
    let norm = &header["model.norm.weight"];
    assert_eq!(norm["dtype"], "F32");
    let offsets = norm["data_offsets"].as_array().ok_or("no offsets")?;
    let (start, end) = (
        8 + header_len + offsets[0].as_u64().ok_or("offset")? as usize,
        8 + header_len + offsets[1].as_u64().ok_or("offset")? as usize,
    );
    for chunk in bytes[start..end].chunks_exact_mut(4) {
        chunk.copy_from_slice(&3.0e38f32.to_le_bytes());
    }
    std::fs::write(&weights, bytes)?;
    let adapter = lora_fixture("seqcls-a");
    let out = dear()
        .args(["score", "--json", "--query", QUERY, "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--docs")
        .arg(&docs)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("non-finite"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("null"));
    Ok(())
}

/// Queries too long for the command line come from a file or standard input; a file
/// that is not UTF-8 is a named error.
#[test]
fn long_queries_come_from_a_file_or_stdin() -> TestResult {
    use std::io::Write as _;
    let dir = tempfile::tempdir()?;
    let corpus = dir.path().join("corpus.jsonl");
    std::fs::write(
        &corpus,
        "{\"_id\": \"a\", \"text\": \"ownership and borrowing in rust\"}\n{\"_id\": \"b\", \"text\": \"closures capture their environment\"}\n",
    )?;
    let index = index_corpus(&corpus, dir.path())?;
    let search = || {
        let mut c = dear();
        c.arg("search").arg("--index").arg(&index).args([
            "--stages",
            "bm25",
            "--json",
            "--query-file",
        ]);
        c
    };
    // 160 KB: past what one argument may carry on Linux (128 KiB).
    let long = dir.path().join("long.txt");
    std::fs::write(&long, "borrowing ownership ".repeat(8000))?;
    let out = search().arg(&long).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["hits"][0]["passage"]["id"], "a");

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"rust \xff\xfe")?;
    let out = search().arg(&bad).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not UTF-8") && stderr.contains("bad.txt"),
        "{stderr}"
    );

    let mut child = search()
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(b"closures environment")?;
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["hits"][0]["passage"]["id"], "b");
    Ok(())
}

/// Builds `<dir>/index` from a BEIR corpus with `dear index`, which must succeed.
fn index_corpus(corpus: &Path, dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let index = dir.join("index");
    let out = dear()
        .arg("index")
        .arg("--corpus")
        .arg(corpus)
        .arg("--index")
        .arg(&index)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(index)
}

/// Runs `dear` and returns (exit code, stdout, stderr); a panic (exit 101) or a
/// signal fails the test.
fn run_no_panic(cmd: &mut Command) -> Result<(i32, String, String), Box<dyn std::error::Error>> {
    let out = cmd.env_remove("RUST_BACKTRACE").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out
        .status
        .code()
        .ok_or(format!("killed by a signal: {stderr}"))?;
    assert_ne!(code, 101, "panicked: {stderr}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
    Ok((code, String::from_utf8(out.stdout)?, stderr))
}

/// `dear index` commits in batches and records its corpus; `--check` validates an
/// index; a damaged index is named by `--check`, refused by `dear index`, and a search
/// over it ends in an error or in results, never a panic.
#[test]
fn index_batches_records_its_corpus_and_refuses_damage() -> TestResult {
    let dir = tempfile::tempdir()?;
    let corpus = dir.path().join("corpus.jsonl");
    write(&corpus, TINY_CORPUS)?;
    let index = dir.path().join("index");
    let index_cmd = |extra: &[&str]| {
        let mut c = dear();
        c.arg("index")
            .arg("--corpus")
            .arg(&corpus)
            .arg("--index")
            .arg(&index)
            .args(extra);
        c
    };
    let (code, _, err) = run_no_panic(&mut index_cmd(&["--commit-every", "0"]))?;
    assert!(code == 1 || code == 2, "{err}");
    assert!(err.contains("--commit-every"), "{err}");
    // One commit per passage: each batch is durable on its own.
    let out = run_ok(&mut index_cmd(&["--commit-every", "1"]))?;
    assert!(out.contains("4 documents"), "{out}");
    let out = run_ok(dear().args(["index", "--check", "--index"]).arg(&index))?;
    assert!(out.starts_with("ok: 4 documents"), "{out}");
    assert!(out.contains("corpus.jsonl (fnv1a64:"), "{out}");
    assert!(!out.contains("incomplete"), "{out}");
    // The index's record matches the library's fingerprint of the file.
    let idx = dear::dear_tantivy::PassageIndex::open(&index)?;
    let fp = dear::dear_tantivy::corpus_fingerprint(&corpus)?;
    assert!(idx.sources()?.is_exactly(&fp));
    drop(idx);

    // Damage the stored documents: flip bytes in the middle of each .store file.
    let mut damaged = 0;
    for e in std::fs::read_dir(&index)? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "store") {
            let mut bytes = std::fs::read(&path)?;
            let mid = bytes.len() / 2;
            for b in &mut bytes[mid.saturating_sub(4)..mid] {
                *b ^= 0x5a;
            }
            std::fs::write(&path, bytes)?;
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no .store file in the index");
    let (code, _, err) = run_no_panic(dear().args(["index", "--check", "--index"]).arg(&index))?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("damaged") && err.contains("checksum mismatch"),
        "{err}"
    );
    assert!(err.contains(".store"), "{err}");
    let (code, _, err) = run_no_panic(&mut index_cmd(&[]))?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("damaged"), "{err}");
    let (code, _, err) = run_no_panic(
        dear()
            .args(["search", "--stages", "bm25", "--index"])
            .arg(&index)
            .arg("rain clouds"),
    )?;
    assert!(code == 0 || code == 1, "{err}");
    Ok(())
}

/// `dear eval` refuses an index that does not hold exactly the dataset's corpus, and a
/// run that ranks nothing of the dataset, instead of printing wrong metrics.
#[test]
fn eval_refuses_another_corpus_and_an_empty_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ds = dir.path().join("tiny");
    tiny_dataset(&ds)?;
    let eval = |extra: &[&str]| {
        let mut c = dear();
        c.args(["eval", "--stages", "bm25", "--json", "--dataset"])
            .arg(&ds)
            .arg("--runs-dir")
            .arg(dir.path().join("runs"))
            .args(extra);
        c
    };
    // An index of another corpus (one document more).
    let other = dir.path().join("other.jsonl");
    write(
        &other,
        &format!("{TINY_CORPUS}{{\"_id\": \"d9\", \"text\": \"Unrelated.\"}}\n"),
    )?;
    let other_index = index_corpus(&other, &dir.path().join("o"))?;
    let (code, _, err) =
        run_no_panic(&mut eval(&["--index", other_index.to_str().ok_or("path")?]))?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("other.jsonl") && err.contains("not exactly"),
        "{err}"
    );
    // An empty folder is built from the dataset's corpus; the same index is then reused.
    let own = dir.path().join("own");
    let first = run_ok(&mut eval(&["--index", own.to_str().ok_or("path")?]))?;
    let again = run_ok(&mut eval(&["--index", own.to_str().ok_or("path")?]))?;
    let metric = |s: &str| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        Ok(serde_json::from_str::<serde_json::Value>(s)?["stages"]["first"]["ndcg@10"].clone())
    };
    assert_eq!(metric(&first)?, metric(&again)?);
    // Runs that rank nothing.
    let empty = dir.path().join("empty.trec");
    write(&empty, "")?;
    let (code, _, err) = run_no_panic(&mut eval(&["--run", empty.to_str().ok_or("path")?]))?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is empty"), "{err}");
    let foreign = dir.path().join("foreign.trec");
    write(&foreign, "x1 Q0 d1 1 3.5 other\n")?;
    let (code, _, err) = run_no_panic(&mut eval(&["--run", foreign.to_str().ok_or("path")?]))?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ranks none"), "{err}");
    Ok(())
}
