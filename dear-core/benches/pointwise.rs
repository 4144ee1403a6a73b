//! Pointwise throughput on the default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
//!
//! - W1 (`benches/data/w1_pointwise.jsonl`): 100 sequences x 228 tokens, last-token
//!   hidden state only, as one packed forward per batch of 4,096 tokens; once with
//!   every token computed, once with the 12-token query prefix computed once and
//!   shared.
//! - DeAR end to end: 100 SciFact passages scored against one query through
//!   `PointwiseScorer` (yes/no head: the default model has no classification head),
//!   passages cut to 196 tokens.
//!
//! ```text
//! bash scripts/fetch-model.sh && cargo bench -p dear-core --bench pointwise
//! ```

use std::sync::Arc;
use std::time::Instant;

use dear_core::{
    Batch, ForwardOptions, KvCache, LanguageModel, LoadOptions, Outputs, Passage, PointwiseConfig,
    PointwiseScorer, Query, Scheduler,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn w1() -> Res<Vec<Vec<u32>>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/data");
    Ok(dear_core::bench::Workloads::load(dir)?.w1)
}

fn best_of<F: FnMut() -> Res<()>>(runs: usize, mut f: F) -> Res<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> Res<()> {
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pointwise bench: run with `cargo bench -p dear-core --bench pointwise`");
        return Ok(());
    }
    let runs: usize = std::env::var("DEAR_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let path = dear_core::default_model_path();
    if !path.is_file() {
        return Err(format!(
            "missing {}: run `bash scripts/fetch-model.sh`",
            path.display()
        )
        .into());
    }
    let lm = Arc::new(LanguageModel::load(path, &LoadOptions::default())?);
    let seqs = w1()?;
    let total: usize = seqs.iter().map(Vec::len).sum();
    let budget = 4096;

    let secs = best_of(runs, || {
        let mut start = 0;
        while start < seqs.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < seqs.len() && tokens + seqs[end].len() <= budget {
                tokens += seqs[end].len();
                end += 1;
            }
            let batch = Batch::from_sequences(&seqs[start..end])?;
            lm.llama()
                .forward(&batch, &mut [], Outputs::last_hidden())?;
            start = end;
        }
        Ok(())
    })?;
    println!(
        "W1 full        : {total} tokens in {secs:.2} s = {:.1} tokens/s ({:.2} s per query)",
        total as f64 / secs,
        secs
    );

    let prefix = &seqs[0][..12];
    let secs = best_of(runs, || {
        let mut cache = KvCache::new();
        lm.llama().forward(
            &Batch::from_sequences(&[prefix])?,
            std::slice::from_mut(&mut cache),
            Outputs::default(),
        )?;
        let caches = [cache];
        let mut start = 0;
        while start < seqs.len() {
            let mut batch = Batch::new();
            let mut tokens = 0;
            let mut end = start;
            while end < seqs.len() && tokens + seqs[end].len() - 12 <= budget {
                batch.push(&seqs[end][12..], 12)?;
                tokens += seqs[end].len() - 12;
                end += 1;
            }
            let of_sequence = vec![0usize; end - start];
            lm.llama().forward_with(
                &batch,
                &mut [],
                Outputs::last_hidden(),
                ForwardOptions::default().with_prefixes(&caches, &of_sequence),
            )?;
            start = end;
        }
        Ok(())
    })?;
    println!(
        "W1 shared pref.: {total} tokens in {secs:.2} s = {:.1} tokens/s ({:.2} s per query)",
        total as f64 / secs,
        secs
    );

    let passages: Vec<Passage> = seqs
        .iter()
        .map(|s| Ok(Passage::new(lm.tokenizer().decode(&s[12..], true)?)))
        .collect::<Res<_>>()?;
    let scorer = PointwiseScorer::new(lm.clone(), None, PointwiseConfig::yes_no())?;
    let query = Query::new("Cellular aging closely links to an older appearance.");
    let enc = scorer.encode(&query, &passages)?;
    let tokens: usize = enc.suffixes.iter().map(Vec::len).sum::<usize>() + enc.prefix.len();
    let secs = best_of(runs, || {
        scorer.score(&query, &passages)?;
        Ok(())
    })?;
    println!(
        "yes/no scorer  : 100 passages ({tokens} tokens) in {secs:.2} s = {:.1} passages/s",
        100.0 / secs
    );

    // Four callers with 25 passages each: one after another, then all at once through
    // the scheduler thread (their passages share batches).
    let scheduler = Arc::new(Scheduler::from_scorer(scorer)?);
    let queries = [
        "Cellular aging closely links to an older appearance.",
        "What causes the skin to wrinkle with age?",
        "Drug safety events after FDA approval",
        "Effects of exercise on the heart",
    ];
    let serial = best_of(runs, || {
        for (i, q) in queries.iter().enumerate() {
            scheduler.score(&Query::new(*q), &passages[i * 25..(i + 1) * 25], None)?;
        }
        Ok(())
    })?;
    let concurrent = best_of(runs, || {
        let handles: Vec<_> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let r = scheduler.clone();
                let p = passages[i * 25..(i + 1) * 25].to_vec();
                let q = Query::new(*q);
                std::thread::spawn(move || r.score(&q, &p, None).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "thread panicked")??;
        }
        Ok(())
    })?;
    println!(
        "4 callers x 25 : serial {serial:.2} s, concurrent {concurrent:.2} s ({:.2}x)",
        serial / concurrent
    );
    Ok(())
}
