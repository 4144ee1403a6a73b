//! Bad input gets a clear error naming the problem, never a panic.

use std::io::Write;

use dear_core::{generate, Device, Error, GenerateOptions, HubOptions, LanguageModel, LoadOptions};

use crate::common::{default_model, fixture, scratch_copy, TestResult};

fn load_dir(dir: &std::path::Path) -> Result<LanguageModel, Error> {
    LanguageModel::load(dir, &LoadOptions::default())
}

fn edit_config(dir: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) -> TestResult {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    f(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

#[test]
fn missing_config_names_the_directory() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    std::fs::remove_file(dir.path().join("config.json"))?;
    let err = load_dir(dir.path())
        .err()
        .ok_or("loaded without config.json")?;
    assert!(matches!(err, Error::ModelNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("config.json") && msg.contains(&*dir.path().to_string_lossy()),
        "{msg}"
    );
    Ok(())
}

#[test]
fn corrupt_config_is_a_json_error() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\", ",
    )?;
    let err = load_dir(dir.path())
        .err()
        .ok_or("loaded a corrupt config")?;
    assert!(
        matches!(err, Error::Json { ref path, .. } if path.ends_with("config.json")),
        "{err}"
    );
    Ok(())
}

#[test]
fn unknown_architecture_is_named() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    edit_config(dir.path(), |c| c["model_type"] = "gpt_neox".into())?;
    let err = load_dir(dir.path()).err().ok_or("loaded gpt_neox")?;
    assert!(
        matches!(err, Error::UnsupportedArchitecture { ref architecture, .. } if architecture == "gpt_neox"),
        "{err}"
    );
    Ok(())
}

#[test]
fn truncated_safetensors_names_the_file() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let err = load_dir(dir.path())
        .err()
        .ok_or("loaded a truncated file")?;
    assert!(
        matches!(err, Error::CorruptFile { ref path, .. } if path.ends_with("model.safetensors")),
        "{err}"
    );
    Ok(())
}

#[test]
fn missing_shard_is_named() -> TestResult {
    let dir = scratch_copy("tiny-sharded");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors"))?;
    let err = load_dir(dir.path()).err().ok_or("loaded without a shard")?;
    assert!(
        err.to_string().contains("model-00002-of-00003.safetensors"),
        "{err}"
    );
    Ok(())
}

#[test]
fn wrong_tensor_shape_is_named() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    edit_config(dir.path(), |c| c["intermediate_size"] = 96.into())?;
    let err = load_dir(dir.path())
        .err()
        .ok_or("loaded mismatched weights")?;
    match err {
        Error::TensorShape {
            name,
            expected,
            actual,
        } => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(expected, vec![96, 64]);
            assert_eq!(actual, vec![128, 64]);
        }
        other => return Err(format!("wrong error: {other}").into()),
    }
    Ok(())
}

#[test]
fn missing_tensor_is_named() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    edit_config(dir.path(), |c| c["num_hidden_layers"] = 3.into())?;
    let err = load_dir(dir.path()).err().ok_or("loaded a missing layer")?;
    assert!(err.to_string().contains("model.layers.2."), "{err}");
    Ok(())
}

#[test]
fn missing_tokenizer_names_the_file() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    std::fs::remove_file(dir.path().join("tokenizer.json"))?;
    let err = load_dir(dir.path())
        .err()
        .ok_or("loaded without tokenizer")?;
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    Ok(())
}

#[test]
fn bin_checkpoint_is_refused_with_a_reason() -> TestResult {
    let dir = scratch_copy("tiny-gqa");
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("pytorch_model.bin"),
    )?;
    let err = load_dir(dir.path()).err().ok_or("loaded a .bin")?;
    assert!(err.to_string().contains("only safetensors"), "{err}");
    Ok(())
}

#[test]
fn truncated_gguf_is_named() -> TestResult {
    let src = dear_core::default_model_path();
    assert!(src.is_file(), "run `bash scripts/fetch-model.sh` first");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&src)?;
    std::fs::File::create(&path)?.write_all(&bytes[..4 << 20])?;
    let err = LanguageModel::load(&path, &LoadOptions::default())
        .err()
        .ok_or("loaded a truncated GGUF")?;
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Not even a header.
    std::fs::write(&path, b"GGUF")?;
    let err = LanguageModel::load(path, &LoadOptions::default())
        .err()
        .ok_or("loaded a 4-byte GGUF")?;
    assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
    Ok(())
}

#[test]
fn empty_and_oversized_prompts() -> TestResult {
    let lm = LanguageModel::load(fixture("tiny-gqa"), &LoadOptions::default())?;
    assert!(matches!(lm.plain_prompt(""), Err(Error::EmptyInput(_))));
    assert!(matches!(lm.chat_prompt("   "), Err(Error::EmptyInput(_))));
    let opts = GenerateOptions::default().with_max_new_tokens(4);
    let err = generate(lm.llama(), &[vec![]], &opts, &[], &mut |_, _| true).err();
    assert!(matches!(err, Some(Error::EmptyInput(_))), "{err:?}");
    // The fixture's context window is 128 positions.
    let long: Vec<u32> = (0..200).map(|i| 3 + (i % 300)).collect();
    let err = lm
        .generate(&long, &opts, &mut |_| true)
        .err()
        .ok_or("no overflow error")?;
    assert!(
        matches!(err, Error::ContextOverflow { tokens: 200, .. }),
        "{err}"
    );
    // Out-of-vocabulary ids are refused, not indexed.
    let err = lm
        .generate(&[1, 5000], &opts, &mut |_| true)
        .err()
        .ok_or("no vocab error")?;
    assert!(err.to_string().contains("5000"), "{err}");
    Ok(())
}

#[test]
fn generation_stops_at_the_context_end() -> TestResult {
    let lm = LanguageModel::load(fixture("tiny-gqa"), &LoadOptions::default())?;
    let prompt: Vec<u32> = (0..125).map(|i| 3 + (i % 300)).collect();
    let opts = GenerateOptions::default()
        .with_max_new_tokens(50)
        .with_stop_tokens(vec![]);
    let out = lm.generate(&prompt, &opts, &mut |_| true)?;
    assert_eq!(out.finish, dear_core::FinishReason::ContextFull);
    assert_eq!(prompt.len() + out.tokens.len(), 128);
    Ok(())
}

#[test]
fn cuda_in_a_cpu_build_is_an_error() {
    let opts = LoadOptions::default().with_device(Device::Cuda(0));
    let res = LanguageModel::load(fixture("tiny-gqa"), &opts);
    if cfg!(feature = "cuda") {
        return;
    }
    assert!(
        matches!(res, Err(Error::CudaNotCompiled)),
        "{:?}",
        res.err()
    );
}

#[test]
fn uncached_hub_id_offline_is_an_error() -> TestResult {
    let cache = tempfile::tempdir()?;
    let hub = HubOptions::default()
        .with_cache_dir(cache.path())
        .with_offline(true);
    let err = LanguageModel::load(
        "abdoelsayed/dear-3b-reranker-ce-v1",
        &LoadOptions::default().with_hub(hub),
    )
    .err()
    .ok_or("resolved an uncached id offline")?;
    let msg = err.to_string();
    assert!(matches!(err, Error::Hub { .. }), "{msg}");
    assert!(
        msg.contains("abdoelsayed/dear-3b-reranker-ce-v1") && msg.contains("offline"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn default_model_loads() {
    let lm = default_model();
    assert_eq!(lm.llama().config().num_layers, 30);
}

/// `LoadOptions::with_max_context` bounds every sequence: forward passes past it are
/// refused, generation stops when the context is full, long prompts are refused by
/// bytes before tokenizing. The declared context stays the ceiling; 0 is refused.
#[test]
fn the_context_cap_bounds_every_sequence() -> TestResult {
    let dir = fixture("tiny-gqa");
    let declared = load_dir(&dir)?;
    assert_eq!(declared.llama().config().max_position_embeddings, 128);
    assert_eq!(
        declared.llama().context_len(),
        128,
        "the default cap is above 128"
    );
    let wide = LanguageModel::load(&dir, &LoadOptions::default().with_max_context(1 << 20))?;
    assert_eq!(
        wide.llama().context_len(),
        128,
        "never above the declared context"
    );

    let lm = LanguageModel::load(&dir, &LoadOptions::default().with_max_context(16))?;
    assert_eq!(lm.llama().context_len(), 16);
    let run = |n: usize| {
        let batch = dear_core::Batch::from_sequences(&[vec![5u32; n]])?;
        lm.llama()
            .forward(&batch, &mut [], dear_core::Outputs::last_logits())
            .map(drop)
    };
    run(16)?;
    match run(17) {
        Err(Error::ContextOverflow { tokens, max, .. }) => assert_eq!((tokens, max), (17, 16)),
        other => panic!("17 tokens under a cap of 16: {other:?}"),
    }
    let out = lm.generate(
        &[5u32; 10],
        &GenerateOptions::default()
            .with_max_new_tokens(100)
            .with_stop_tokens(Vec::new()),
        &mut |_| true,
    )?;
    assert_eq!(out.finish, dear_core::FinishReason::ContextFull);
    assert!(
        10 + out.tokens.len() <= 16,
        "{} tokens generated",
        out.tokens.len()
    );
    let err = lm
        .plain_prompt(&"word ".repeat(100_000))
        .err()
        .ok_or("accepted")?;
    assert!(
        err.to_string().contains("refused before tokenizing"),
        "{err}"
    );

    let err = LanguageModel::load(&dir, &LoadOptions::default().with_max_context(0))
        .err()
        .ok_or("a cap of 0 loaded")?;
    assert!(err.to_string().contains("max_context"), "{err}");
    Ok(())
}
