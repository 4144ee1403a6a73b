//! Autoregressive generation: prefill every prompt in one packed batch, then decode
//! all unfinished sequences together, one token each per step, each with its own KV
//! cache. Greedy or seeded temperature/top-p sampling; stops at any stop token, at
//! `max_new_tokens`, at the end of the context window, or when the callback says so.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};

use crate::batch::Batch;
use crate::model::{AdapterId, ForwardOptions, KvCache, Llama, Outputs};
use crate::Error;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Sampling {
    /// The most likely token (deterministic; what rerankers use).
    #[default]
    Greedy,
    /// Nucleus sampling at a temperature, reproducible for a given seed.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Cumulative probability kept (0 < p ≤ 1).
        top_p: f64,
        /// Seed of the random generator; sequence `i` of a batch uses `seed + i`.
        seed: u64,
    },
}

/// Generation settings.
///
/// # Example
/// ```
/// use dear_core::{GenerateOptions, Sampling};
/// let opts = GenerateOptions::default().with_max_new_tokens(32).with_sampling(Sampling::Greedy);
/// assert_eq!(opts.max_new_tokens(), 32);
/// ```
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    max_new_tokens: usize,
    sampling: Sampling,
    stop_tokens: Option<Vec<u32>>,
    adapter: Option<AdapterId>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: Sampling::Greedy,
            stop_tokens: None,
            adapter: None,
        }
    }
}

impl GenerateOptions {
    /// The most tokens generated per sequence. Default: 256.
    #[must_use]
    pub fn with_max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// How tokens are chosen. Default: greedy.
    #[must_use]
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// The tokens that end a sequence. Default: the tokenizer's end tokens (eos and the
    /// chat template's end-of-turn tokens). An empty list never stops early.
    #[must_use]
    pub fn with_stop_tokens(mut self, tokens: Vec<u32>) -> Self {
        self.stop_tokens = Some(tokens);
        self
    }

    /// Generates with an unmerged adapter (see [`crate::Llama::adapter`]). Default: none.
    #[must_use]
    pub fn with_adapter(mut self, adapter: Option<AdapterId>) -> Self {
        self.adapter = adapter;
        self
    }

    /// The adapter used.
    pub fn adapter(&self) -> Option<AdapterId> {
        self.adapter
    }

    /// The most tokens generated per sequence.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }

    /// The sampling rule.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// The stop tokens, if set explicitly.
    pub fn stop_tokens(&self) -> Option<&[u32]> {
        self.stop_tokens.as_deref()
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was generated (it is the last of the tokens).
    Stop(u32),
    /// `max_new_tokens` were generated.
    Length,
    /// The context window is full.
    ContextFull,
    /// The token callback asked to stop.
    Cancelled,
}

/// One sequence's generated tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The generated token ids (the stop token included, as transformers does).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: FinishReason,
}

fn processor(sampling: Sampling, i: usize) -> crate::Result<LogitsProcessor> {
    Ok(match sampling {
        Sampling::Greedy => LogitsProcessor::from_sampling(0, CandleSampling::ArgMax),
        Sampling::TopP {
            temperature,
            top_p,
            seed,
        } => {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "temperature must be positive, got {temperature}"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::InvalidArgument(format!(
                    "top_p must be in (0, 1], got {top_p}"
                )));
            }
            LogitsProcessor::from_sampling(
                seed.wrapping_add(i as u64),
                CandleSampling::TopP {
                    p: top_p,
                    temperature,
                },
            )
        }
    })
}

/// Generates continuations of several prompts at once.
///
/// `stop_tokens` are used when the options set none. `on_token(sequence, token)` is
/// called for every generated token as soon as it is chosen; returning `false` stops
/// that sequence ([`FinishReason::Cancelled`]).
///
/// # Errors
/// [`Error::EmptyInput`] for an empty prompt, [`Error::ContextOverflow`] for a prompt
/// that does not leave room for one new token, and model errors.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    stop_tokens: &[u32],
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> crate::Result<Vec<Generation>> {
    let ctx = model.config().max_position_embeddings;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::EmptyInput(format!("prompt {i} has no tokens")));
        }
        if p.len() >= ctx {
            return Err(Error::ContextOverflow {
                what: format!("prompt {i}"),
                tokens: p.len(),
                max: ctx - 1,
            });
        }
    }
    let stops = options.stop_tokens().unwrap_or(stop_tokens);
    let mut results: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            finish: FinishReason::Length,
        })
        .collect();
    if prompts.is_empty() || options.max_new_tokens == 0 {
        return Ok(results);
    }
    let mut processors = (0..prompts.len())
        .map(|i| processor(options.sampling, i))
        .collect::<crate::Result<Vec<_>>>()?;
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new()).collect();
    // Indices (into `prompts`) of the sequences still running, and their last logits.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let batch = Batch::from_sequences(prompts)?;
    let mut logits = last_logits(model, &batch, &mut caches, options.adapter)?;
    loop {
        let mut next_active = Vec::with_capacity(active.len());
        let mut next_tokens = Vec::with_capacity(active.len());
        for (row, &seq) in active.iter().enumerate() {
            let token = processors[seq].sample(&logits.get(row)?)?;
            let out = &mut results[seq];
            out.tokens.push(token);
            if !on_token(seq, token) {
                out.finish = FinishReason::Cancelled;
            } else if stops.contains(&token) {
                out.finish = FinishReason::Stop(token);
            } else if out.tokens.len() >= options.max_new_tokens {
                out.finish = FinishReason::Length;
            } else if caches[seq].len() + 1 >= ctx {
                out.finish = FinishReason::ContextFull;
            } else {
                next_active.push(seq);
                next_tokens.push(token);
            }
        }
        if next_active.is_empty() {
            return Ok(results);
        }
        let mut batch = Batch::new();
        let mut step_caches = Vec::with_capacity(next_active.len());
        // Move the active caches out for this step, then put them back.
        for (&seq, &token) in next_active.iter().zip(&next_tokens) {
            batch.push(&[token], caches[seq].len())?;
            step_caches.push(std::mem::take(&mut caches[seq]));
        }
        let step = last_logits(model, &batch, &mut step_caches, options.adapter);
        for (&seq, cache) in next_active.iter().zip(step_caches) {
            caches[seq] = cache;
        }
        logits = step?;
        active = next_active;
    }
}

fn last_logits(
    model: &Llama,
    batch: &Batch,
    caches: &mut [KvCache],
    adapter: Option<AdapterId>,
) -> crate::Result<Tensor> {
    let options = ForwardOptions::default().with_adapter(adapter);
    let out = model.forward_with(batch, caches, Outputs::last_logits(), options)?;
    out.logits
        .ok_or_else(|| Error::InvalidArgument("the model returned no logits".into()))
}
