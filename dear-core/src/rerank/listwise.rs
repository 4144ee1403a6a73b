//! DeAR's listwise stage: a causal LM (usually a CAUSAL_LM LoRA adapter on a Llama
//! base) reads a RankGPT/RankLLM-style prompt over a window of passages and writes a
//! ranking, `[4] > [1] > [2] …`, optionally after reasoning inside `<think>…</think>`.
//! Windows slide from the bottom of the list up ([`WindowConfig`]).
//!
//! Three ways to get a window's ranking, selectable per reranker:
//! - [`ListwiseMode::Generate`]: free greedy generation, then parsing (RankLLM's rules:
//!   numbers in order, duplicates and out-of-range ids dropped, missing ids appended);
//! - [`ListwiseMode::Constrained`]: greedy generation where, while the ranking is
//!   written, only tokens that keep the output a prefix of a full `[id] > [id] > …`
//!   permutation of unused ids are allowed (after an optional bounded reasoning
//!   section), so the answer is always complete and nothing is wasted;
//! - [`ListwiseMode::FirstToken`]: FIRST (Reddy et al., 2024): one prefill, and the
//!   passages ordered by the model's probability of each identifier as the first
//!   thing it writes (ids spanning several tokens are scored along a trie of their
//!   tokens, so `[1]` and `[12]` are told apart).
//!
//! A window with no parseable id keeps its incoming order; a deadline or a model error
//! stops the pass and returns the order the finished windows reached, with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::generate::{generate, GenerateOptions};
use crate::model::{AdapterId, ForwardOptions, KvCache, Outputs};
use crate::rerank::constrained::{ConstrainedHook, Limits, RankingGrammar};
use crate::rerank::permutation::{parse_ranking, IdBase};
use crate::rerank::prompt::{listwise_prompt_ids, ListwisePrompt};
use crate::rerank::types::{Passage, Query};
use crate::rerank::window::{slide, WindowConfig};
use crate::{Error, LanguageModel, StageFailure};

/// How a window's ranking is obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListwiseMode {
    /// Free greedy generation, then parsing.
    #[default]
    Generate,
    /// Greedy generation constrained to a well-formed permutation.
    Constrained,
    /// One forward pass; ids ordered by their probability as the first output.
    FirstToken,
}

impl std::str::FromStr for ListwiseMode {
    type Err = Error;

    /// Parses `generate`, `constrained` or `first-token`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "generate" => Ok(ListwiseMode::Generate),
            "constrained" => Ok(ListwiseMode::Constrained),
            "first-token" | "first" => Ok(ListwiseMode::FirstToken),
            _ => Err(Error::InvalidArgument(format!(
                "unknown listwise mode {s:?} (use generate, constrained or first-token)"
            ))),
        }
    }
}

/// Settings of the listwise stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListwiseConfig {
    /// The prompt format. Default: rankllm (what DeAR trains with).
    pub prompt: ListwisePrompt,
    /// How rankings are read. Default: free generation.
    pub mode: ListwiseMode,
    /// The sliding windows. Default: one window over the top 20.
    pub window: WindowConfig,
    /// Most tokens generated per window (CoT models need up to 1024). Default: 256.
    pub max_new_tokens: usize,
    /// In constrained mode, tokens a reasoning section (`<think>…</think>`) may take
    /// before the ranking is forced. Default: 0 (the ranking starts at once).
    pub max_reasoning_tokens: usize,
}

impl Default for ListwiseConfig {
    fn default() -> Self {
        Self {
            prompt: ListwisePrompt::RankLlm,
            mode: ListwiseMode::Generate,
            window: WindowConfig::top(20),
            max_new_tokens: 256,
            max_reasoning_tokens: 0,
        }
    }
}

/// What happened in one window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowReport {
    /// First rank of the window in the list as it stood.
    pub start: usize,
    /// One past its last rank.
    pub end: usize,
    /// The generated text (empty in first-token mode).
    pub raw: String,
    /// The reasoning the model wrote inside `<think>…</think>`, if any.
    pub reasoning: Option<String>,
    /// How many ids came from the model (the rest kept their incoming order).
    pub parsed_ids: usize,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Why the window kept its incoming order, if it did.
    pub failure: Option<StageFailure>,
}

/// The result of a listwise pass.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListwiseOutcome {
    /// 0-based indices into the input passages, best first: a permutation of them.
    pub order: Vec<usize>,
    /// One report per window that finished, in the order the windows ran.
    pub windows: Vec<WindowReport>,
    /// Why the pass stopped early (deadline, model error), if it did; `order` then
    /// holds the work of the windows finished before it.
    pub failure: Option<StageFailure>,
}

impl ListwiseOutcome {
    /// The generated text of every window, in the order they ran, joined by newlines.
    pub fn raw(&self) -> String {
        let raws: Vec<&str> = self.windows.iter().map(|w| w.raw.as_str()).collect();
        raws.join("\n")
    }
}

/// Per-call settings of a listwise pass: `None` fields take the ranker's
/// [`ListwiseConfig`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ListwiseOptions {
    /// How windows are ranked.
    pub mode: Option<ListwiseMode>,
    /// The sliding windows.
    pub window: Option<WindowConfig>,
    /// When to stop (checked between windows and between generated tokens).
    pub deadline: Option<Instant>,
}

impl ListwiseOptions {
    /// Sets the mode.
    #[must_use]
    pub fn with_mode(mut self, mode: ListwiseMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Sets the windows.
    #[must_use]
    pub fn with_window(mut self, window: WindowConfig) -> Self {
        self.window = Some(window);
        self
    }

    /// Sets the deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// Token texts a constrained answer can be written with.
#[derive(Debug)]
struct AnswerVocab {
    tokens: Vec<(u32, String)>,
}

/// A listwise ranker over one model (and optionally one unmerged adapter).
#[derive(Debug)]
pub struct ListwiseRanker {
    lm: Arc<LanguageModel>,
    adapter: Option<AdapterId>,
    config: ListwiseConfig,
    vocab: OnceLock<AnswerVocab>,
}

impl ListwiseRanker {
    /// A listwise ranker using the unmerged adapter named `adapter`, if any.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown adapter or a zero window/step;
    /// [`Error::ChatTemplate`] when the model has no chat template.
    pub fn new(
        lm: Arc<LanguageModel>,
        adapter: Option<&str>,
        config: ListwiseConfig,
    ) -> crate::Result<Self> {
        let adapter = lm.llama().adapter_named(adapter)?;
        if config.window.window == 0 || config.window.step == 0 {
            return Err(Error::InvalidArgument(
                "window and step must be greater than 0".into(),
            ));
        }
        if lm.tokenizer().chat_template().is_none() {
            return Err(Error::ChatTemplate(format!(
                "listwise prompts are rendered with the chat template, and '{}' has none",
                lm.source()
            )));
        }
        let vocab = OnceLock::new();
        if config.mode == ListwiseMode::Constrained {
            let _ = vocab.set(answer_vocab(&lm)?);
        }
        Ok(Self {
            lm,
            adapter,
            config,
            vocab,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ListwiseConfig {
        &self.config
    }

    /// The model.
    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.lm
    }

    /// The name of the unmerged adapter the ranker uses, if any.
    pub fn adapter_name(&self) -> Option<&str> {
        self.adapter
            .and_then(|a| self.lm.llama().adapter_names().get(a.0).copied())
    }

    /// Reorders `passages` (in their incoming order, best first) for `query` in
    /// sliding windows, with the mode, windows and deadline of `options` (the
    /// configured ones where `None`).
    ///
    /// A window whose output has no parseable id keeps its order (its report says
    /// so); a deadline or a model error stops the pass, and the outcome keeps the
    /// order the finished windows reached, with [`ListwiseOutcome::failure`].
    ///
    /// # Errors
    /// [`Error::EmptyInput`] for an empty query; [`Error::InvalidArgument`] for
    /// windows that fail [`WindowConfig::validate`] (checked when there are at least
    /// two passages).
    pub fn rank(
        &self,
        query: &Query,
        passages: &[Passage],
        options: &ListwiseOptions,
    ) -> crate::Result<ListwiseOutcome> {
        let started = Instant::now();
        let mode = options.mode.unwrap_or(self.config.mode);
        let window = options.window.unwrap_or(self.config.window);
        let deadline = options.deadline;
        if passages.len() >= 2 {
            window.validate()?;
        }
        if mode == ListwiseMode::Constrained && self.vocab.get().is_none() {
            let _ = self.vocab.set(answer_vocab(&self.lm)?);
        }
        if query.text.trim().is_empty() {
            return Err(Error::EmptyInput("the query is empty".into()));
        }
        let incoming: Vec<usize> = (0..passages.len()).collect();
        let positions = window.windows(passages.len());
        let mut reports: Vec<WindowReport> = Vec::new();
        let result = slide(incoming, &window, |items: &[usize]| {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::deadline("listwise reranking", started));
            }
            let items: Vec<&Passage> = items.iter().map(|&i| &passages[i]).collect();
            let (order, mut report) = self.rank_window(query, &items, mode, deadline, started)?;
            // The window's true place in the list: the k-th window run is the k-th of
            // `positions`.
            if let Some(&(start, end)) = positions.get(reports.len()) {
                report.start = start;
                report.end = end;
                if let Some(StageFailure::Unparseable {
                    start: s, end: e, ..
                }) = &mut report.failure
                {
                    (*s, *e) = (start, end);
                }
            }
            reports.push(report);
            Ok(order)
        });
        let (order, failure) = match result {
            Ok((order, _)) => (order, None),
            Err(stopped) => (
                stopped.order,
                Some(StageFailure::from_error(stopped.error, started.elapsed())),
            ),
        };
        Ok(ListwiseOutcome {
            order,
            windows: reports,
            failure,
        })
    }

    /// Ranks one window; returns positions within the window, best first.
    fn rank_window(
        &self,
        query: &Query,
        items: &[&Passage],
        mode: ListwiseMode,
        deadline: Option<Instant>,
        started: Instant,
    ) -> crate::Result<(Vec<usize>, WindowReport)> {
        let n = items.len();
        let owned: Vec<Passage> = items.iter().map(|p| (*p).clone()).collect();
        // Rendering and tokenizing a window's prompt is bounded work (passages are read
        // up to a fixed length, the template has a fuel budget), but not free: a deadline
        // that passed before or during it stops the window here.
        let past_deadline = |what: &str| match deadline {
            Some(d) if Instant::now() >= d => Err(Error::DeadlineExceeded {
                what: what.to_string(),
                elapsed_ms: started.elapsed().as_millis(),
            }),
            _ => Ok(()),
        };
        past_deadline("listwise stage, before rendering a window's prompt")?;
        let prompt = listwise_prompt_ids(&self.lm, self.config.prompt, &query.text, &owned)?;
        past_deadline("listwise stage, rendering and tokenizing a window's prompt")?;
        let base = self.config.prompt.id_base();
        let mut report = WindowReport {
            start: 0,
            end: n,
            raw: String::new(),
            reasoning: None,
            parsed_ids: 0,
            prompt_tokens: prompt.len(),
            generated_tokens: 0,
            failure: None,
        };
        if n <= 1 {
            return Ok(((0..n).collect(), report));
        }
        let order = match mode {
            ListwiseMode::Generate => {
                let mut opts = GenerateOptions::default()
                    .with_max_new_tokens(self.config.max_new_tokens)
                    .with_adapter(self.adapter);
                if let Some(d) = deadline {
                    opts = opts.with_deadline(d);
                }
                // `with_deadline` is checked before each step and between layers.
                let out = generate(
                    self.lm.llama(),
                    &[prompt],
                    &opts,
                    self.lm.tokenizer().end_token_ids(),
                    &mut |_, _| true,
                )
                .map_err(|e| listwise_deadline(e, started))?
                .pop()
                .ok_or_else(|| Error::Internal("generation returned nothing".into()))?;
                report.generated_tokens = out.tokens.len();
                report.raw = self.lm.tokenizer().decode(&out.tokens, true)?;
                let parsed = parse_ranking(&report.raw, n, base);
                report.reasoning = parsed.reasoning.clone();
                report.parsed_ids = parsed.parsed;
                if parsed.parsed == 0 {
                    report.failure = Some(StageFailure::Unparseable {
                        start: 0,
                        end: n,
                        output: report.raw.clone(),
                    });
                }
                parsed.order
            }
            ListwiseMode::Constrained => {
                self.constrained(prompt, n, base, deadline, started, &mut report)?
            }
            ListwiseMode::FirstToken => {
                self.first_token(prompt, n, base, deadline, started, &mut report)?
            }
        };
        Ok((order, report))
    }

    /// One forward pass continuing `cache`, stopped between layers at `deadline`.
    fn step(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        deadline: Option<Instant>,
        started: Instant,
    ) -> crate::Result<Tensor> {
        let mut batch = Batch::new();
        batch.push(tokens, cache.len())?;
        let late = || deadline.is_some_and(|d| Instant::now() >= d);
        let out = self
            .lm
            .llama()
            .forward_with(
                &batch,
                std::slice::from_mut(cache),
                Outputs::last_logits(),
                ForwardOptions::default()
                    .with_adapter(self.adapter)
                    .with_interrupt(&late),
            )
            .map_err(|e| {
                e.cancelled_as_deadline(|| "listwise first-token scoring".into(), started)
            })?;
        let logits = out
            .logits
            .ok_or_else(|| Error::Internal("the forward pass returned no logits".into()))?;
        Ok(logits.get(0)?)
    }

    fn constrained(
        &self,
        prompt: Vec<u32>,
        n: usize,
        base: IdBase,
        deadline: Option<Instant>,
        started: Instant,
        report: &mut WindowReport,
    ) -> crate::Result<Vec<usize>> {
        let vocab = self
            .vocab
            .get()
            .ok_or_else(|| Error::Internal("no answer vocabulary".into()))?;
        let first = match base {
            IdBase::One => 1,
            IdBase::Zero => 0,
        };
        let tok = self.lm.tokenizer();
        let ctx = self.lm.llama().context_len();
        let budget = self.config.max_new_tokens.max(8 * n);
        // Constrained throughout: no stop tokens, no length limit but the hook's.
        let mut opts = GenerateOptions::default()
            .with_max_new_tokens(usize::MAX)
            .with_stop_tokens(Vec::new())
            .with_adapter(self.adapter);
        if let Some(d) = deadline {
            opts = opts.with_deadline(d);
        }
        let run = |max_reasoning_tokens: usize| {
            let limits = Limits {
                prompt_len: prompt.len(),
                context: ctx,
                budget,
                max_reasoning_tokens,
            };
            let grammar = RankingGrammar::new(n, first);
            let mut hook = ConstrainedHook::new(grammar, &vocab.tokens, tok, limits);
            let out = crate::generate::generate_with_hook(
                self.lm.llama(),
                std::slice::from_ref(&prompt),
                &opts,
                &[],
                &mut hook,
                &mut |_, _| true,
            )
            .map_err(|e| listwise_deadline(e, started))?
            .pop()
            .ok_or_else(|| Error::InvalidArgument("generation returned nothing".into()))?;
            Ok::<_, Error>((hook.answer, hook.reasoning, hook.restart, out.tokens.len()))
        };
        // An optional bounded reasoning section, generated freely; when the model does
        // not reason, the ranking starts from scratch.
        let (mut answer, mut reasoning, restart, mut generated) =
            run(self.config.max_reasoning_tokens)?;
        if restart {
            (answer, reasoning, _, generated) = run(0)?;
        }
        let prefix_text = reasoning.clone().unwrap_or_default();
        report.reasoning = reasoning;
        report.generated_tokens = generated;
        report.raw = format!("{prefix_text}{answer}");
        let parsed = parse_ranking(&answer, n, base);
        report.parsed_ids = parsed.parsed;
        if parsed.parsed == 0 {
            report.failure = Some(StageFailure::Unparseable {
                start: 0,
                end: n,
                output: report.raw.clone(),
            });
        }
        Ok(parsed.order)
    }

    /// FIRST: the probability of each identifier as the model's first output, read
    /// along the trie of the identifiers' tokens (one prefill plus one step for each
    /// token prefix shared by several identifiers).
    fn first_token(
        &self,
        prompt: Vec<u32>,
        n: usize,
        base: IdBase,
        deadline: Option<Instant>,
        started: Instant,
        report: &mut WindowReport,
    ) -> crate::Result<Vec<usize>> {
        let tok = self.lm.tokenizer();
        let first = match base {
            IdBase::One => 1,
            IdBase::Zero => 0,
        };
        let open = tok.encode("[", false)?;
        // Each id's tokens after "[": the digits and the closing bracket.
        let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(n);
        for k in 0..n {
            let full = tok.encode(&format!("[{}]", first + k), false)?;
            let rest = full
                .strip_prefix(open.as_slice())
                .map(<[u32]>::to_vec)
                .unwrap_or(full);
            seqs.push(rest);
        }
        let mut input = prompt;
        input.extend(&open);
        // Caches and log-prob distributions by token prefix (after "[").
        let mut caches: BTreeMap<Vec<u32>, KvCache> = BTreeMap::new();
        let mut dists: BTreeMap<Vec<u32>, Vec<f32>> = BTreeMap::new();
        let mut root = KvCache::new();
        dists.insert(
            Vec::new(),
            log_softmax(&self.step(&mut root, &input, deadline, started)?)?,
        );
        caches.insert(Vec::new(), root);
        // The continuations of every proper prefix of the ids' token sequences.
        let mut children: BTreeMap<Vec<u32>, BTreeSet<u32>> = BTreeMap::new();
        for s in &seqs {
            for d in 0..s.len() {
                children.entry(s[..d].to_vec()).or_default().insert(s[d]);
            }
        }
        // A distribution is needed where the ids diverge (and at the root).
        for (prefix, next) in &children {
            if prefix.is_empty() || next.len() < 2 {
                continue;
            }
            let (known, mut cache) = caches
                .iter()
                .filter(|(k, _)| prefix.starts_with(k))
                .max_by_key(|(k, _)| k.len())
                .map(|(k, c)| Ok::<_, Error>((k.len(), c.try_clone()?)))
                .transpose()?
                .ok_or_else(|| Error::Internal("no cache for the prefix".into()))?;
            let d = log_softmax(&self.step(&mut cache, &prefix[known..], deadline, started)?)?;
            dists.insert(prefix.clone(), d);
            caches.insert(prefix.clone(), cache);
        }
        let scores: Vec<f64> = seqs
            .iter()
            .map(|s| {
                (0..s.len())
                    .filter_map(|d| dists.get(&s[..d]).map(|dist| dist.get(s[d] as usize)))
                    .map(|lp| lp.copied().unwrap_or(f32::NEG_INFINITY) as f64)
                    .sum()
            })
            .collect();
        report.parsed_ids = n;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        Ok(order)
    }
}

fn log_softmax(logits: &Tensor) -> crate::Result<Vec<f32>> {
    Ok(candle_nn::ops::log_softmax(logits, 0)?.to_vec1::<f32>()?)
}

/// Every token whose text can appear in `[id] > [id]` (brackets, digits, `>` and
/// spaces), decoded once per reranker.
fn answer_vocab(lm: &LanguageModel) -> crate::Result<AnswerVocab> {
    let tok = lm.tokenizer();
    let mut tokens = Vec::new();
    for id in 0..tok.vocab_size() as u32 {
        let Ok(text) = tok.decode(&[id], false) else {
            continue;
        };
        if !text.is_empty()
            && text
                .chars()
                .all(|c| matches!(c, '[' | ']' | '>' | ' ' | '0'..='9'))
        {
            tokens.push((id, text));
        }
    }
    if tokens.is_empty() {
        return Err(Error::InvalidArgument(
            "the tokenizer has no token to write a ranking with".into(),
        ));
    }
    Ok(AnswerVocab { tokens })
}

/// A deadline inside generation, reported as the listwise stage's.
fn listwise_deadline(e: Error, started: Instant) -> Error {
    match e {
        Error::DeadlineExceeded { .. } => Error::deadline("listwise generation", started),
        other => other,
    }
}
