//! GGUF loading end to end: a golden fixture converted to GGUF the way llama.cpp's
//! converter writes it (llama.* metadata, gpt2 tokenizer metadata, q/k rows permuted
//! for interleaved rotary embeddings), in several tensor types, then loaded back and
//! compared with transformers' outputs.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use dear_core::{Batch, LanguageModel, LoadOptions, Outputs, Quantization};

use crate::common::{expected, fixture, floats, ids, max_abs_diff, pearson, TestResult};

/// llama.cpp's `permute(w, n_head)`: transformers row `h*hd + t*hd/2 + j` goes to
/// GGUF row `h*hd + 2j + t`.
fn permute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let mut name = hf.replace("model.layers.", "blk.");
    for (a, b) in map {
        name = name.replace(a, b);
    }
    name
}

/// Writes tiny-gqa as a GGUF with matrices in `dtype` (norms stay f32).
fn write_gguf(path: &std::path::Path, dtype: GgmlDType) -> TestResult {
    write_gguf_with(path, dtype, vec![], vec![])
}

/// [`write_gguf`] with more metadata and tensors.
fn write_gguf_with(
    path: &std::path::Path,
    dtype: GgmlDType,
    extra_metadata: Vec<(&str, Value)>,
    extra_tensors: Vec<(String, QTensor)>,
) -> TestResult {
    let dir = fixture("tiny-gqa");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let heads = cfg["num_attention_heads"].as_u64().ok_or("heads")? as usize;
    let kv_heads = cfg["num_key_value_heads"].as_u64().ok_or("kv heads")? as usize;
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &weights {
        let t = if name.ends_with("q_proj.weight") {
            permute(t, heads)?
        } else if name.ends_with("k_proj.weight") {
            permute(t, kv_heads)?
        } else {
            t.clone()
        };
        let ty = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        tensors.push((gguf_name(name), QTensor::quantize(&t, ty)?));
    }
    // The byte-level BPE vocabulary, as llama.cpp stores it.
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json"))?)?;
    let vocab = tok["model"]["vocab"].as_object().ok_or("vocab")?;
    let mut by_id: HashMap<u64, String> = vocab
        .iter()
        .filter_map(|(k, v)| v.as_u64().map(|id| (id, k.clone())))
        .collect();
    let mut special = Vec::new();
    for added in tok["added_tokens"].as_array().ok_or("added")? {
        let id = added["id"].as_u64().ok_or("id")?;
        by_id.insert(id, added["content"].as_str().ok_or("content")?.to_string());
        special.push(id);
    }
    let n = by_id.len() as u64;
    let tokens: Vec<Value> = (0..n)
        .map(|i| Value::String(by_id.get(&i).cloned().unwrap_or_default()))
        .collect();
    let types: Vec<Value> = (0..n)
        .map(|i| Value::I32(if special.contains(&i) { 3 } else { 1 }))
        .collect();
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .ok_or("merges")?
        .iter()
        .filter_map(|m| {
            let pair = m.as_array()?;
            Some(Value::String(format!(
                "{} {}",
                pair[0].as_str()?,
                pair[1].as_str()?
            )))
        })
        .collect();
    let u = |k: &str| Value::U32(cfg[k].as_u64().unwrap_or(0) as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", u("num_hidden_layers")),
        ("llama.context_length", u("max_position_embeddings")),
        ("llama.embedding_length", u("hidden_size")),
        ("llama.feed_forward_length", u("intermediate_size")),
        ("llama.attention.head_count", u("num_attention_heads")),
        ("llama.attention.head_count_kv", u("num_key_value_heads")),
        ("llama.rope.dimension_count", u("head_dim")),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.padding_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ];
    let metadata: Vec<(&str, Value)> = metadata.into_iter().chain(extra_metadata).collect();
    tensors.extend(extra_tensors);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path)?;
    gguf_file::write(&mut file, &md, &ts)?;
    Ok(())
}

#[test]
fn gguf_in_every_block_type_matches_transformers() -> TestResult {
    let exp = expected("tiny-gqa");
    let inputs = ids(&exp["inputs"]);
    let want = floats(&exp["last_logits"]);
    let dir = tempfile::tempdir()?;
    // (type, max |Δ| against transformers where the type is exact, correlation floor,
    //  the same quantization applied at load to the safetensors, when dear offers it)
    let cases = [
        (GgmlDType::F32, Some(1e-4), 0.99999, None),
        (GgmlDType::F16, Some(2e-2), 0.9999, None),
        (GgmlDType::Q8_0, None, 0.99, Some(Quantization::Q8_0)),
        (GgmlDType::Q4_0, None, 0.8, Some(Quantization::Q4_0)),
        (GgmlDType::Q4_1, None, 0.8, None),
        (GgmlDType::Q5_0, None, 0.9, None),
        (GgmlDType::Q5_1, None, 0.9, None),
    ];
    let packed = Batch::from_sequences(&inputs)?;
    for (dtype, tol, min_r, at_load) in cases {
        let path = dir.path().join(format!("tiny-{dtype:?}.gguf"));
        write_gguf(&path, dtype)?;
        let lm = LanguageModel::load(path, &LoadOptions::default())?;
        assert_eq!(lm.llama().config().num_kv_heads, 2);
        assert!(lm.llama().config().tie_word_embeddings);
        let out = lm
            .llama()
            .forward(&packed, &mut [], Outputs::last_logits())?;
        let logits = out.logits.ok_or("no logits")?;
        for (i, w) in want.iter().enumerate() {
            let got = logits.get(i)?.to_vec1::<f32>()?;
            if let Some(tol) = tol {
                let d = max_abs_diff(&got, w);
                assert!(d < tol, "{dtype:?} input {i}: logits differ by {d}");
            }
            let r = pearson(&got, w);
            assert!(r > min_r, "{dtype:?} input {i}: correlation {r}");
        }
        // Same blocks as quantizing the safetensors at load: the GGUF path (metadata,
        // names, q/k row permutation undone on quantized rows) changes nothing else.
        if let Some(q) = at_load {
            let direct = LanguageModel::load(
                fixture("tiny-gqa"),
                &LoadOptions::default().with_quantization(q),
            )?;
            let other = direct
                .llama()
                .forward(&packed, &mut [], Outputs::last_logits())?
                .logits
                .ok_or("no logits")?;
            let d = max_abs_diff(
                &logits.flatten_all()?.to_vec1::<f32>()?,
                &other.flatten_all()?.to_vec1::<f32>()?,
            );
            assert!(
                d < 1e-4,
                "{dtype:?}: GGUF and load-time quantization differ by {d}"
            );
        }
        // The tokenizer rebuilt from the GGUF metadata encodes like tokenizer.json.
        let text_cases = exp["text_cases"].as_array().ok_or("text_cases")?;
        let text = text_cases[0]["text"].as_str().ok_or("text")?;
        let want_ids = ids(&serde_json::json!([text_cases[0]["ids_no_special"]]))[0].clone();
        assert_eq!(
            lm.tokenizer().encode(text, false)?,
            want_ids,
            "{dtype:?}: {text:?}"
        );
    }
    Ok(())
}

/// llama.cpp's `rope_freqs.weight` divides each rotary frequency (Llama-3.1 files).
/// Divisors of 1 change nothing; a table of the wrong length or holding 0, NaN or a
/// divisor that makes a frequency infinite is refused at load, naming the tensor, as
/// is a linear scaling factor of 0 (every angle would be NaN).
#[test]
fn rope_frequency_tables_and_factors_are_checked() -> TestResult {
    let exp = expected("tiny-gqa");
    let packed = Batch::from_sequences(&ids(&exp["inputs"]))?;
    let dir = tempfile::tempdir()?;
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixture("tiny-gqa").join("config.json"),
    )?)?;
    let half = cfg["head_dim"].as_u64().ok_or("head_dim")? as usize / 2;
    let table = |values: Vec<f32>| -> Result<(String, QTensor), Box<dyn std::error::Error>> {
        let n = values.len();
        let t = Tensor::from_vec(values, n, &Device::Cpu)?;
        Ok((
            "rope_freqs.weight".to_string(),
            QTensor::quantize(&t, GgmlDType::F32)?,
        ))
    };
    let logits = |path: &std::path::Path| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let lm = LanguageModel::load(path, &LoadOptions::default())?;
        let out = lm
            .llama()
            .forward(&packed, &mut [], Outputs::last_logits())?;
        Ok(out
            .logits
            .ok_or("no logits")?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let plain = dir.path().join("plain.gguf");
    write_gguf(&plain, GgmlDType::F32)?;
    let ones = dir.path().join("ones.gguf");
    write_gguf_with(&ones, GgmlDType::F32, vec![], vec![table(vec![1.0; half])?])?;
    assert_eq!(logits(&ones)?, logits(&plain)?);
    let doubled = dir.path().join("doubled.gguf");
    write_gguf_with(
        &doubled,
        GgmlDType::F32,
        vec![],
        vec![table(vec![2.0; half])?],
    )?;
    assert_ne!(
        logits(&doubled)?,
        logits(&plain)?,
        "the divisors are applied"
    );

    let mut zero = vec![1.0; half];
    zero[1] = 0.0;
    let mut nan = vec![1.0; half];
    nan[0] = f32::NAN;
    let bad = [
        (
            "short",
            vec![table(vec![1.0; half - 1])?],
            vec![],
            "rope_freqs.weight",
        ),
        ("zero", vec![table(zero)?], vec![], "rope_freqs.weight"),
        ("nan", vec![table(nan)?], vec![], "rope_freqs.weight"),
        (
            "tiny",
            vec![table(vec![1e-45; half])?],
            vec![],
            "rope_freqs.weight",
        ),
        (
            "linear0",
            vec![],
            vec![
                ("llama.rope.scaling.type", Value::String("linear".into())),
                ("llama.rope.scaling.factor", Value::F32(0.0)),
            ],
            "llama.rope.scaling.factor",
        ),
    ];
    for (name, tensors, metadata, named) in bad {
        let path = dir.path().join(format!("{name}.gguf"));
        write_gguf_with(&path, GgmlDType::F32, metadata, tensors)?;
        let err = LanguageModel::load(&path, &LoadOptions::default())
            .err()
            .ok_or(format!("{name}: loaded"))?
            .to_string();
        assert!(err.contains(named), "{name}: {err}");
    }
    Ok(())
}
