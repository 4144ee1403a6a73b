//! The `dear` command line, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

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
