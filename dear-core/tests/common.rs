//! Shared helpers: fixture locations and numeric comparisons.

use std::path::PathBuf;

use dear_core::{LanguageModel, LoadOptions};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A golden fixture directory made by `golden/make_golden.py`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/models")
        .join(name)
}

/// The expected outputs of a fixture.
pub fn expected(name: &str) -> serde_json::Value {
    let path = fixture(name).join("expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad {}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    s.as_array()
                        .map(|x| {
                            x.iter()
                                .filter_map(|t| t.as_u64())
                                .map(|t| t as u32)
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn floats(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    s.as_array()
                        .map(|x| {
                            x.iter()
                                .filter_map(|t| t.as_f64())
                                .map(|t| t as f32)
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The default model, fetched by `scripts/fetch-model.sh`. Fails (never skips) when absent.
pub fn default_model() -> LanguageModel {
    let path = dear_core::default_model_path();
    assert!(
        path.is_file(),
        "the default model is missing at {}: run `bash scripts/fetch-model.sh` first",
        path.display()
    );
    LanguageModel::load(path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("cannot load the default model: {e}"))
}

/// Copies a fixture into a fresh temporary directory, to break it there.
pub fn scratch_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture(name)).expect("fixture dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

/// Pearson correlation of two equally long vectors.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|x| *x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|x| *x as f64).sum::<f64>() / n;
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (*x as f64 - ma, *y as f64 - mb);
        ab += dx * dy;
        aa += dx * dx;
        bb += dy * dy;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// `n` short passage texts about capitals, Paris and biology, numbered to be distinct.
pub fn short_texts(n: usize) -> Vec<String> {
    let texts = [
        "Paris is the capital and most populous city of France.",
        "The Eiffel Tower was built for the 1889 World's Fair in Paris.",
        "Photosynthesis converts light energy into chemical energy in plants.",
        "Berlin is the capital of Germany.",
        "France is a country in Western Europe; its capital is Paris.",
        "The mitochondrion is the powerhouse of the cell.",
    ];
    (0..n)
        .map(|i| format!("{} ({i})", texts[i % texts.len()]))
        .collect()
}
