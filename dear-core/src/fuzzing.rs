//! Fuzzing entry points (feature `fuzzing`; not part of the API).
//!
//! One function per parser that reads untrusted bytes: each feeds `data` to the same
//! code dear runs on a real file and ignores the result. An `Err` is the expected
//! answer to a bad input; a panic, an abort, a hang or a huge allocation is a bug.
//! `fuzz/` (cargo-afl) and `tests/props.rs` (proptest) both call these.
//!
//! Parsers that take a path get a scratch file under `/dev/shm` (or the temporary
//! directory), unique to the process and thread, removed after each call.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::loader::safetensors::{mmap, SafetensorsSource};
use crate::loader::{ModelFiles, Quantization, WeightSource};
use crate::{ChatMessage, ChatTemplate, IdBase, LoadOptions, ModelConfig, Tokenizer};

/// A fuzz target: feeds one input to a parser, ignoring its result.
pub type Target = fn(&[u8]);

/// Every target, by name: what `fuzz/` builds one binary for.
pub const TARGETS: &[(&str, Target)] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("config_json", config_json),
    ("adapter_config", adapter_config),
    ("tokenizer_gguf", tokenizer_gguf),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    ("permutation", permutation),
    ("corpus", corpus),
    ("qrels", qrels),
    ("run", run),
];

/// The scratch path prefix of this process and thread.
fn scratch_prefix() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let base = Path::new("/dev/shm");
            let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
            let id = format!("{:?}", std::thread::current().id());
            let id: String = id.chars().filter(char::is_ascii_digit).collect();
            base.join(format!("dear-fuzz-{}-{id}", std::process::id()))
        };
    }
    DIR.with(|d| d.clone())
}

/// Writes `data` to `<prefix>-<sub>/<name>`, runs `f` on that path, and removes the
/// file and its folder again (nothing is left behind between calls).
fn with_file(sub: &str, name: &str, data: &[u8], f: impl FnOnce(&Path)) {
    let mut dir = scratch_prefix().into_os_string();
    dir.push(format!("-{sub}"));
    let dir = PathBuf::from(dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let path = dir.join(name);
    if std::fs::write(&path, data).is_ok() {
        f(&path);
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

/// A GGUF model file: the header reader (`read_content`), the metadata to
/// [`ModelConfig`] checks, `rope_freqs.weight`, and reading the final norm, the
/// embedding and the first layer's q/k projections (rows un-permuted) as the config
/// names them.
pub fn gguf(data: &[u8]) {
    with_file("gguf", "model.gguf", data, |path| {
        let files = ModelFiles::Gguf(path.to_path_buf());
        let Ok(opened) = crate::loader::open(&files, &LoadOptions::default()) else {
            return;
        };
        let cfg = &opened.config;
        let w = &opened.weights;
        let _ = w.dense("model.norm.weight", &[cfg.hidden_size], DType::F32);
        let _ = w.matrix(
            "model.embed_tokens.weight",
            (cfg.vocab_size, cfg.hidden_size),
            DType::F32,
        );
        // q/k: rows permuted back from llama.cpp's layout.
        let q = (cfg.num_heads * cfg.head_dim, cfg.hidden_size);
        let k = (cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size);
        let _ = w.matrix("model.layers.0.self_attn.q_proj.weight", q, DType::F32);
        let _ = w.matrix("model.layers.0.self_attn.k_proj.weight", k, DType::F32);
    });
}

/// A safetensors weight file: the header (`mmap`), then every tensor read as a
/// model load reads it (dtype check, conversion to f32), and every matrix quantized
/// to q4_K as `--quantize q4k` does.
pub fn safetensors(data: &[u8]) {
    with_file("safetensors", "model.safetensors", data, |path| {
        let Ok(st) = mmap(path) else { return };
        let tensors: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        drop(st);
        let dir = path.parent().unwrap_or(path);
        let weights = [path.to_path_buf()];
        let Ok(plain) = SafetensorsSource::open(dir, &weights, Device::Cpu, Quantization::None)
        else {
            return;
        };
        let Ok(quantized) = SafetensorsSource::open(dir, &weights, Device::Cpu, Quantization::Q4K)
        else {
            return;
        };
        for (name, shape) in &tensors {
            let _ = plain.dense(name, shape, DType::F32);
            if let [rows, cols] = shape[..] {
                let _ = quantized.matrix(name, (rows, cols), DType::F32);
            }
        }
    });
}

/// A Hugging Face `config.json`, resolved and validated into a [`ModelConfig`].
pub fn config_json(data: &[u8]) {
    with_file("config", "config.json", data, |path| {
        let _ = crate::config::read_hf_config(path);
    });
}

/// A PEFT `adapter_config.json` (`AdapterConfig::read`, reached through the adapter
/// loader, which stops at the missing weights file).
pub fn adapter_config(data: &[u8]) {
    with_file("adapter", "adapter_config.json", data, |path| {
        let dir = path.parent().unwrap_or(path);
        let base = ModelConfig::llama_3_2_1b();
        let _ = crate::lora::LoraAdapter::load(dir, "fuzz", &base, &Device::Cpu, DType::F32);
    });
}

/// A GGUF file's tokenizer, read as a model load reads it (`read_content`, then
/// `Tokenizer::from_gguf`), then used on a short text.
pub fn tokenizer_gguf(data: &[u8]) {
    with_file("tokgguf", "model.gguf", data, |path| {
        let Ok(content) = crate::loader::read_content(path) else {
            return;
        };
        if let Ok(tok) = Tokenizer::from_gguf(&content, path) {
            exercise_tokenizer(&tok);
        }
    });
}

/// A `tokenizer.json` ([`Tokenizer::from_hf_dir`] on a folder holding only it), then
/// used on a short text.
pub fn tokenizer_json(data: &[u8]) {
    with_file("tokjson", "tokenizer.json", data, |path| {
        let dir = path.parent().unwrap_or(path);
        if let Ok(tok) = Tokenizer::from_hf_dir(dir) {
            exercise_tokenizer(&tok);
        }
    });
}

fn exercise_tokenizer(tok: &Tokenizer) {
    if let Ok(ids) = tok.encode("Hello world: [1] > [2] \u{e9}\u{1F600}", true) {
        let _ = tok.decode(&ids, false);
        let _ = tok.decode(&ids, true);
    }
    if let Some(t) = tok.chat_template() {
        let _ = t.render(&[ChatMessage::user("hi")], true);
    }
}

/// A Jinja chat template ([`ChatTemplate::new`]) rendered over a short conversation.
/// The first byte picks the special tokens and `add_generation_prompt`; the rest
/// (lossily decoded as UTF-8) is the template.
pub fn chat_template(data: &[u8]) {
    let (&flags, source) = data.split_first().unwrap_or((&0, &[]));
    let source = String::from_utf8_lossy(source);
    let bos = (flags & 1 != 0).then_some("<|begin_of_text|>");
    let eos = (flags & 2 != 0).then_some("<|eot_id|>");
    let Ok(template) = ChatTemplate::new(&source, bos, eos) else {
        return;
    };
    let messages = [
        ChatMessage::system("You rank passages."),
        ChatMessage::user("Query: what is DeAR?\n[1] a passage\n[2] another"),
        ChatMessage::assistant("[2] > [1]"),
    ];
    let n = 1 + usize::from(flags >> 2) % messages.len();
    let _ = template.render(&messages[..n], flags & 0x80 != 0);
}

/// A generated ranking ([`crate::parse_ranking`] and [`crate::has_ranking`]). The
/// first byte is the window size (0 to 127) and the id base; the rest (lossily
/// decoded as UTF-8) is the model's text. The result must be a permutation.
pub fn permutation(data: &[u8]) {
    let (&head, text) = data.split_first().unwrap_or((&0, &[]));
    let text = String::from_utf8_lossy(text);
    let n = usize::from(head & 0x7f);
    let base = if head & 0x80 != 0 {
        IdBase::Zero
    } else {
        IdBase::One
    };
    let parsed = crate::parse_ranking(&text, n, base);
    let mut sorted = parsed.order.clone();
    sorted.sort_unstable();
    assert!(
        sorted.iter().copied().eq(0..n),
        "parse_ranking returned {:?}, not a permutation of 0..{n}",
        parsed.order
    );
    assert!(parsed.parsed <= n);
    assert_eq!(crate::has_ranking(&parsed), parsed.parsed > 0);
}

/// A JSON-lines file read as a BEIR corpus, as BEIR queries and as passages.
pub fn corpus(data: &[u8]) {
    with_file("corpus", "corpus.jsonl", data, |path| {
        let _ = crate::corpus::read_beir_corpus(path, |_| {});
        let _ = crate::corpus::read_beir_queries(path);
        let _ = crate::corpus::read_passages(path);
    });
}

/// A TREC qrels file (or the BEIR TSV) ([`crate::eval::Qrels::from_reader`]).
pub fn qrels(data: &[u8]) {
    let _ = crate::eval::Qrels::from_reader(data, "fuzz.qrels");
}

/// A TREC run file ([`crate::eval::Run::from_reader`]), written back out when read.
pub fn run(data: &[u8]) {
    if let Ok(run) = crate::eval::Run::from_reader(data, "fuzz.run") {
        let _ = run.write_trec(std::io::sink(), "fuzz");
    }
}
