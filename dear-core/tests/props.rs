//! Property tests over the fuzz targets (`dear_core::fuzzing`, feature `fuzzing`):
//! the committed seeds of `fuzz/seeds/<target>/`, mutated (bit flips, truncation,
//! splices, random bytes, huge numbers), must never panic and must return within a
//! bound. Every input under `fuzz/regressions/<target>/` (what fuzzing found) is
//! replayed as well. See RELIABILITY.md.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRng, TestRunner};

/// How long one call may take in the test profile (a hang under the fuzzer is one
/// second at full optimisation; this leaves room for a shared, loaded machine).
const BOUND: Duration = Duration::from_secs(10);

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn target(name: &str) -> dear_core::fuzzing::Target {
    dear_core::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// The files of `fuzz/<kind>/<name>/`, sorted, as (file name, bytes).
fn files(kind: &str, name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("readable seed");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

/// Runs `f(data)` on its own thread: an error naming the input when it panics or
/// takes longer than [`BOUND`].
fn run_bounded(name: &str, f: dear_core::fuzzing::Target, data: Vec<u8>) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let len = data.len();
    let start = Instant::now();
    let handle = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .spawn(move || {
            f(&data);
            let _ = tx.send(());
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(BOUND) {
        Ok(()) => {
            let _ = handle.join();
            Ok(())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let why = match handle.join() {
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into()),
                Ok(()) => "the target thread ended without finishing".into(),
            };
            Err(format!("{name}: panicked on a {len}-byte input: {why}"))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "{name}: a {len}-byte input took more than {:?} (still running after {:?})",
            BOUND,
            start.elapsed()
        )),
    }
}

/// Numbers that break naive size arithmetic, as text and as little-endian bytes.
const HUGE: &[u64] = &[
    0,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 53,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 7,
];

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    /// Replace `[at, at + len)` with a piece of another seed.
    Splice {
        at: usize,
        len: usize,
        seed: usize,
        from: usize,
        take: usize,
    },
    Insert(usize, Vec<u8>),
    /// A huge number written over the bytes at `at`, as u32/u64 LE.
    OverwriteNumber {
        at: usize,
        number: usize,
        wide: bool,
    },
    /// A huge (or negative, or fractional) number inserted as text.
    InsertNumberText(usize, usize, u8),
    Duplicate {
        at: usize,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = any::<usize>();
    prop_oneof![
        3 => (pos, 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        2 => (pos, any::<u8>()).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        1 => pos.prop_map(Mutation::Truncate),
        1 => (pos, 0usize..64, any::<usize>(), pos, 0usize..256).prop_map(
            |(at, len, seed, from, take)| Mutation::Splice { at, len, seed, from, take }
        ),
        2 => (pos, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        2 => (pos, 0..HUGE.len(), any::<bool>())
            .prop_map(|(at, number, wide)| Mutation::OverwriteNumber { at, number, wide }),
        2 => (pos, 0..HUGE.len(), 0u8..4)
            .prop_map(|(p, n, style)| Mutation::InsertNumberText(p, n, style)),
        1 => (pos, 1usize..512).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation, seeds: &[(String, Vec<u8>)]) {
    let at = |p: usize, d: &Vec<u8>| if d.is_empty() { 0 } else { p % (d.len() + 1) };
    match m {
        Mutation::FlipBit(p, b) if !data.is_empty() => {
            let i = p % data.len();
            data[i] ^= 1 << b;
        }
        Mutation::SetByte(p, b) if !data.is_empty() => {
            let i = p % data.len();
            data[i] = *b;
        }
        Mutation::Truncate(p) => {
            let n = at(*p, data);
            data.truncate(n);
        }
        Mutation::Splice {
            at: p,
            len,
            seed,
            from,
            take,
        } => {
            let other = &seeds[seed % seeds.len()].1;
            let from = if other.is_empty() {
                0
            } else {
                from % other.len()
            };
            let piece = &other[from..(from + take).min(other.len())];
            let start = at(*p, data);
            let end = (start + len).min(data.len());
            data.splice(start..end, piece.iter().copied());
        }
        Mutation::Insert(p, bytes) => {
            let i = at(*p, data);
            data.splice(i..i, bytes.iter().copied());
        }
        Mutation::OverwriteNumber {
            at: p,
            number,
            wide,
        } => {
            let v = HUGE[*number];
            let bytes: Vec<u8> = if *wide {
                v.to_le_bytes().to_vec()
            } else {
                (v as u32).to_le_bytes().to_vec()
            };
            let i = at(*p, data).min(data.len().saturating_sub(bytes.len()));
            let end = (i + bytes.len()).min(data.len());
            data.splice(i..end, bytes);
        }
        Mutation::InsertNumberText(p, n, style) => {
            let v = HUGE[*n];
            let text = match style {
                0 => v.to_string(),
                1 => format!("-{v}"),
                2 => format!("{v}e308"),
                _ => format!("{v}.5e-9"),
            };
            let i = at(*p, data);
            data.splice(i..i, text.into_bytes());
        }
        Mutation::Duplicate { at: p, len } if !data.is_empty() => {
            let i = p % data.len();
            let piece: Vec<u8> = data[i..(i + len).min(data.len())].to_vec();
            data.splice(i..i, piece);
        }
        _ => {}
    }
}

/// `cases` mutated seeds (plus every seed as is, and random bytes) through `name`.
fn check(name: &str, cases: u32) {
    let f = target(name);
    let seeds = files("seeds", name);
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{name}");
    for (file, bytes) in &seeds {
        if let Err(e) = run_bounded(name, f, bytes.clone()) {
            panic!("seed {file}: {e}");
        }
    }
    // A fixed seed: the suite is reproducible (it must not turn red by chance on an
    // open finding, e.g. a mutated `tojson(indent=...)` that aborts the process).
    // `fuzz/` is where inputs are explored at random.
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let n_seeds = seeds.len();
    let input = prop_oneof![
        8 => (0..n_seeds, prop::collection::vec(mutation(), 1..6)),
        1 => (0..n_seeds, Just(Vec::new())),
    ];
    let random = prop::collection::vec(any::<u8>(), 0..2048);
    let strategy = (input, random, 0u8..16);
    let result = runner.run(&strategy, |((seed, mutations), random, pick)| {
        let data = if pick == 0 {
            random
        } else {
            let mut data = seeds[seed].1.clone();
            for m in &mutations {
                apply(&mut data, m, &seeds);
            }
            data
        };
        run_bounded(name, f, data).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

#[test]
fn gguf_mutations() {
    check("gguf", 256);
}

#[test]
fn safetensors_mutations() {
    check("safetensors", 256);
}

#[test]
fn config_json_mutations() {
    check("config_json", 256);
}

#[test]
fn adapter_config_mutations() {
    check("adapter_config", 256);
}

#[test]
fn tokenizer_gguf_mutations() {
    check("tokenizer_gguf", 256);
}

#[test]
fn tokenizer_json_mutations() {
    check("tokenizer_json", 128);
}

#[test]
fn chat_template_mutations() {
    check("chat_template", 256);
}

#[test]
fn permutation_mutations() {
    check("permutation", 256);
}

#[test]
fn corpus_mutations() {
    check("corpus", 256);
}

#[test]
fn qrels_mutations() {
    check("qrels", 256);
}

#[test]
fn run_mutations() {
    check("run", 256);
}

/// Every input the fuzzers found (`fuzz/regressions/<target>/`), replayed.
#[test]
fn fuzz_regressions() {
    let mut seen = 0;
    for (name, f) in dear_core::fuzzing::TARGETS {
        for (file, bytes) in files("regressions", name) {
            seen += 1;
            if let Err(e) = run_bounded(name, *f, bytes) {
                panic!("regression fuzz/regressions/{name}/{file}: {e}");
            }
        }
    }
    eprintln!("{seen} fuzz regressions replayed");
}

/// The seeds are real inputs: each one parses (the targets' happy paths run).
#[test]
fn seeds_are_valid_inputs() {
    let seeds = fuzz_dir().join("seeds");
    for (dir, file) in [
        ("gguf", "tiny-llama.gguf"),
        ("tokenizer_gguf", "tiny_gpt2.gguf"),
    ] {
        let tok = dear_core::Tokenizer::from_gguf_file(&seeds.join(dir).join(file));
        assert!(tok.is_ok(), "{file}: {:?}", tok.err());
    }
    let tok = dear_core::Tokenizer::from_gguf_file(&seeds.join("gguf/tiny-llama.gguf"));
    let rendered = tok.ok().and_then(|t| {
        Some(
            t.chat_template()?
                .render(&[dear_core::ChatMessage::user("hi")], true),
        )
    });
    assert!(matches!(rendered, Some(Ok(_))), "{rendered:?}");
    for (file, bytes) in files("seeds", "corpus") {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(&file);
        std::fs::write(&path, &bytes).expect("write");
        let read = if file.contains("queries") {
            dear_core::corpus::read_beir_queries(&path).map(|q| q.len())
        } else {
            dear_core::corpus::read_passages(&path).map(|p| p.len())
        };
        assert!(matches!(read, Ok(n) if n > 0), "{file}: {read:?}");
    }
    for (file, bytes) in files("seeds", "qrels") {
        let q = dear_core::eval::Qrels::from_reader(&bytes[..], &file);
        assert!(q.is_ok(), "{file}: {q:?}");
    }
    for (file, bytes) in files("seeds", "run") {
        let r = dear_core::eval::Run::from_reader(&bytes[..], &file);
        assert!(r.is_ok(), "{file}: {r:?}");
    }
    for (file, bytes) in files("seeds", "chat_template") {
        let source = String::from_utf8_lossy(&bytes[1..]);
        let t = dear_core::ChatTemplate::new(&source, Some("<s>"), Some("</s>"));
        assert!(t.is_ok(), "{file}: {:?}", t.err());
    }
}

/// What fuzzing the GGUF loader found (fixed in `loader/gguf.rs`): each input of
/// `fuzz/regressions/gguf/` now loads as a named error, through the public API.
#[test]
fn gguf_fuzz_findings_are_named_errors() {
    let cases = [
        // Tensor dimensions whose product overflows usize (2^32 x 2^32).
        ("dims-product-overflow.gguf", "too many elements"),
        // Elements fit, bytes do not (2^62 f32 values).
        ("byte-count-overflow.gguf", "truncated"),
        // A 0-element tensor: candle viewed its dangling buffer as f32 blocks.
        ("empty-rope-freqs.gguf", "is empty"),
        // A scalar token_embd.weight, read for the vocabulary size.
        ("scalar-token-embd.gguf", "llama.vocab_size"),
    ];
    for (file, expected) in cases {
        let path = fuzz_dir().join("regressions/gguf").join(file);
        assert!(path.is_file(), "{} is missing", path.display());
        let loaded = dear_core::LanguageModel::load(&path, &dear_core::LoadOptions::default());
        match loaded {
            Ok(_) => panic!("{file}: loaded"),
            Err(e) => assert!(
                e.to_string().contains(expected),
                "{file}: {e} (expected {expected:?})"
            ),
        }
    }
}

/// A GGUF header with `general.alignment = 0`: candle's reader divides by it.
/// `Tokenizer::from_gguf_file` called candle's reader directly and panicked; it now
/// reads through dear's checked reader (an error).
#[test]
fn tokenizer_from_gguf_file_alignment_zero() {
    let path = fuzz_dir().join("regressions/tokenizer_gguf/alignment-zero.gguf");
    let read = std::panic::catch_unwind(|| dear_core::Tokenizer::from_gguf_file(&path).is_err());
    assert!(matches!(read, Ok(true)), "from_gguf_file panicked");
}

/// `tokenizer.ggml.scores` holding NaN (the golden `tiny_llama_scores.gguf` with
/// scores 247 to 259 set to NaN): the merges derived from the scores are sorted with
/// `partial_cmp(..).unwrap_or(Equal)`, not a total order, and std's sort panicked.
/// Non-finite scores are now a named tokenizer error.
#[test]
fn tokenizer_gguf_nan_scores() {
    let path = fuzz_dir().join("regressions/tokenizer_gguf/nan-scores.gguf");
    let f = target("tokenizer_gguf");
    let bytes = std::fs::read(&path).expect("readable finding");
    if let Err(e) = run_bounded("tokenizer_gguf", f, bytes) {
        panic!("{}: {e}", path.display());
    }
}

/// `{{ messages | tojson(indent=2222222222222) }}`: dear's `tojson` filter built the
/// indent with `" ".repeat(width)` for any width, and the 2 TB allocation aborted the
/// process; an indent above 64 is now a template error.
#[test]
fn chat_template_tojson_huge_indent() {
    let path = fuzz_dir().join("regressions/chat_template/tojson-huge-indent.jinja");
    let bytes = std::fs::read(&path).expect("readable finding");
    if let Err(e) = run_bounded("chat_template", target("chat_template"), bytes) {
        panic!("{}: {e}", path.display());
    }
}
