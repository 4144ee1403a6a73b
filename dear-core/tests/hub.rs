//! Hub ids resolve through a Hugging Face cache folder with no network at all.

use std::path::Path;

use dear_core::{Batch, HubOptions, LanguageModel, LoadOptions, Outputs};

use crate::common::{expected, fixture, floats, ids, max_abs_diff, TestResult};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Builds `models--test-org--tiny-gqa/{refs/main, snapshots/<commit>/...}` as
/// huggingface_hub lays it out.
fn build_cache(root: &Path) -> TestResult {
    let repo = root.join("models--test-org--tiny-gqa");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs").join("main"), COMMIT)?;
    std::fs::write(repo.join("refs").join("v1.0"), COMMIT)?;
    for entry in std::fs::read_dir(fixture("tiny-gqa"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), snap.join(entry.file_name()))?;
    }
    Ok(())
}

fn logits_of(lm: &LanguageModel) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let input = ids(&expected("tiny-gqa")["inputs"])[1].clone();
    let out = lm.llama().forward(
        &Batch::from_sequences(&[input])?,
        &mut [],
        Outputs::last_logits(),
    )?;
    Ok(out.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?)
}

#[test]
fn cached_model_loads_offline_by_branch_tag_and_commit() -> TestResult {
    let cache = tempfile::tempdir()?;
    build_cache(cache.path())?;
    let want = floats(&expected("tiny-gqa")["last_logits"])[1].clone();
    for revision in ["main", "v1.0", COMMIT] {
        let hub = HubOptions::default()
            .with_cache_dir(cache.path())
            .with_offline(true)
            .with_revision(revision);
        let lm = LanguageModel::load("test-org/tiny-gqa", &LoadOptions::default().with_hub(hub))?;
        let d = max_abs_diff(&logits_of(&lm)?, &want);
        assert!(d < 1e-4, "revision {revision}: logits differ by {d}");
    }
    let hub = HubOptions::default()
        .with_cache_dir(cache.path())
        .with_offline(true)
        .with_revision("v2.0");
    let err = LanguageModel::load("test-org/tiny-gqa", &LoadOptions::default().with_hub(hub))
        .err()
        .ok_or("resolved a revision that is not cached")?;
    assert!(err.to_string().contains("v2.0"), "{err}");
    Ok(())
}
