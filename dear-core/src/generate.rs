//! Autoregressive generation: prefill every prompt in one packed batch, then decode
//! all unfinished sequences together, one token each per step, each with its own KV
//! cache. Greedy or seeded temperature/top-p sampling; stops at any stop token, at
//! `max_new_tokens`, at the end of the context window, or when the callback says so.
//!
//! A [`LogitsHook`] ([`generate_with_hook`]) sees each sequence's next-token logits
//! before a token is chosen: it can change them (mask tokens out), choose the next
//! tokens itself, or end the sequence. Constrained listwise decoding is such a hook.

use std::time::Instant;

use candle_core::{DType, Tensor};
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
    deadline: Option<Instant>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: Sampling::Greedy,
            stop_tokens: None,
            adapter: None,
            deadline: None,
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

    /// Gives up at `deadline` with [`Error::DeadlineExceeded`]: checked before each
    /// decoding step and between the layers of every forward pass (the prompt's
    /// included), so a long prompt cannot run far past it. Default: none.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
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
    /// The [`LogitsHook`] ended the sequence ([`NextToken::Stop`]).
    Hook,
}

/// What a [`LogitsHook`] decides for a sequence's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextToken {
    /// Choose the next token from the logits (as the hook left them) with the options'
    /// [`Sampling`] rule.
    Sample,
    /// Append these tokens without sampling (all fed to the model in one step). They
    /// are checked like sampled ones, in order: the token callback, the stop tokens,
    /// `max_new_tokens` and the context window can end the sequence part way. An empty
    /// list is an error.
    Force(Vec<u32>),
    /// End the sequence now, adding nothing ([`FinishReason::Hook`]).
    Stop,
}

/// Looks at (and may change) each sequence's next-token logits before a token is
/// chosen; see [`generate_with_hook`].
///
/// Closures `FnMut(usize, &[u32], &mut [f32]) -> crate::Result<NextToken>` are hooks.
pub trait LogitsHook {
    /// Called once per step for every running sequence, before its next token is
    /// chosen: `seq` is its index in the prompts, `generated` the tokens it has
    /// generated so far (forced ones included), `logits` its next-token logits as f32
    /// (one per vocabulary entry), which the hook may modify for [`NextToken::Sample`].
    ///
    /// # Errors
    /// An error ends the whole generation with that error.
    fn next_token(
        &mut self,
        seq: usize,
        generated: &[u32],
        logits: &mut [f32],
    ) -> crate::Result<NextToken>;
}

impl<F> LogitsHook for F
where
    F: FnMut(usize, &[u32], &mut [f32]) -> crate::Result<NextToken>,
{
    fn next_token(
        &mut self,
        seq: usize,
        generated: &[u32],
        logits: &mut [f32],
    ) -> crate::Result<NextToken> {
        self(seq, generated, logits)
    }
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
    run(model, prompts, options, stop_tokens, None, on_token)
}

/// [`generate`] with a [`LogitsHook`] consulted before every token: it may modify the
/// logits the token is sampled from, force the next tokens, or end a sequence
/// ([`FinishReason::Hook`]).
///
/// # Errors
/// As [`generate`]; the hook's errors; [`Error::InvalidArgument`] when the hook forces
/// an empty list of tokens.
///
/// # Example
/// Forbid a token (here id 0) everywhere:
/// ```no_run
/// # fn main() -> dear_core::Result<()> {
/// use dear_core::{generate_with_hook, GenerateOptions, LanguageModel, LoadOptions, NextToken};
/// let lm = LanguageModel::load("SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default())?;
/// let prompt = lm.tokenizer().encode("Hello", true)?;
/// let mut no_zero = |_: usize, _: &[u32], logits: &mut [f32]| {
///     logits[0] = f32::NEG_INFINITY;
///     Ok::<_, dear_core::Error>(NextToken::Sample)
/// };
/// let out = generate_with_hook(
///     lm.llama(),
///     &[prompt],
///     &GenerateOptions::default().with_max_new_tokens(8),
///     lm.tokenizer().end_token_ids(),
///     &mut no_zero,
///     &mut |_, _| true,
/// )?;
/// assert!(!out[0].tokens.contains(&0));
/// # Ok(())
/// # }
/// ```
pub fn generate_with_hook(
    model: &Llama,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    stop_tokens: &[u32],
    hook: &mut dyn LogitsHook,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> crate::Result<Vec<Generation>> {
    run(model, prompts, options, stop_tokens, Some(hook), on_token)
}

fn run(
    model: &Llama,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    stop_tokens: &[u32],
    mut hook: Option<&mut dyn LogitsHook>,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> crate::Result<Vec<Generation>> {
    let ctx = model.context_len();
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
    let started = Instant::now();
    let deadline = options.deadline;
    let late = move || deadline.is_some_and(|d| Instant::now() >= d);
    let mut logits = last_logits(model, &batch, &mut caches, options.adapter, &late, started)?;
    loop {
        if late() {
            return Err(Error::deadline("generation", started));
        }
        let mut next_active = Vec::with_capacity(active.len());
        let mut next_tokens = Vec::with_capacity(active.len());
        for (row, &seq) in active.iter().enumerate() {
            let row_logits = logits.get(row)?;
            let new = match hook.as_deref_mut() {
                None => vec![processors[seq].sample(&row_logits)?],
                Some(hook) => {
                    let mut values = row_logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                    match hook.next_token(seq, &results[seq].tokens, &mut values)? {
                        NextToken::Sample => {
                            let len = values.len();
                            let t = Tensor::from_vec(values, len, &candle_core::Device::Cpu)?;
                            vec![processors[seq].sample(&t)?]
                        }
                        NextToken::Force(tokens) if tokens.is_empty() => {
                            return Err(Error::InvalidArgument(format!(
                                "the logits hook forced no tokens for sequence {seq}"
                            )))
                        }
                        NextToken::Force(tokens) => tokens,
                        NextToken::Stop => {
                            results[seq].finish = FinishReason::Hook;
                            continue;
                        }
                    }
                }
            };
            let cached = caches[seq].len();
            if let Some(tokens) = append(
                &mut results[seq],
                seq,
                new,
                cached,
                ctx,
                stops,
                options,
                on_token,
            ) {
                next_active.push(seq);
                next_tokens.push(tokens);
            }
        }
        if next_active.is_empty() {
            return Ok(results);
        }
        let mut batch = Batch::new();
        let mut step_caches = Vec::with_capacity(next_active.len());
        // Move the active caches out for this step, then put them back.
        for (&seq, tokens) in next_active.iter().zip(&next_tokens) {
            batch.push(tokens, caches[seq].len())?;
            step_caches.push(std::mem::take(&mut caches[seq]));
        }
        let step = last_logits(
            model,
            &batch,
            &mut step_caches,
            options.adapter,
            &late,
            started,
        );
        for (&seq, cache) in next_active.iter().zip(step_caches) {
            caches[seq] = cache;
        }
        logits = step?;
        active = next_active;
    }
}

/// Appends a sequence's next tokens (one sampled or several forced) to its output,
/// checking after each the token callback, the stop tokens and `max_new_tokens`, and
/// then the context window (`cached` tokens are in its KV cache). Returns the tokens
/// to feed to the model next, or `None` when the sequence has finished.
#[allow(clippy::too_many_arguments)]
fn append(
    out: &mut Generation,
    seq: usize,
    tokens: Vec<u32>,
    cached: usize,
    ctx: usize,
    stops: &[u32],
    options: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Option<Vec<u32>> {
    for &token in &tokens {
        out.tokens.push(token);
        if !on_token(seq, token) {
            out.finish = FinishReason::Cancelled;
        } else if stops.contains(&token) {
            out.finish = FinishReason::Stop(token);
        } else if out.tokens.len() >= options.max_new_tokens {
            out.finish = FinishReason::Length;
        } else {
            continue;
        }
        return None;
    }
    if cached + tokens.len() >= ctx {
        out.finish = FinishReason::ContextFull;
        return None;
    }
    Some(tokens)
}

fn last_logits(
    model: &Llama,
    batch: &Batch,
    caches: &mut [KvCache],
    adapter: Option<AdapterId>,
    late: &(dyn Fn() -> bool + Sync),
    started: Instant,
) -> crate::Result<Tensor> {
    let options = ForwardOptions::default()
        .with_adapter(adapter)
        .with_interrupt(late);
    let out = model
        .forward_with(batch, caches, Outputs::last_logits(), options)
        .map_err(|e| e.cancelled_as_deadline(|| "generation".into(), started))?;
    out.logits
        .ok_or_else(|| Error::InvalidArgument("the model returned no logits".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Generation {
        Generation {
            tokens: Vec::new(),
            finish: FinishReason::Length,
        }
    }

    /// Forced tokens go through the same checks as sampled ones, token by token.
    #[test]
    fn forced_tokens_are_checked_in_order() {
        let options = GenerateOptions::default().with_max_new_tokens(10);
        let mut yes = |_: usize, _: u32| true;
        // All fit: fed to the model together.
        let mut out = fresh();
        let next = append(&mut out, 0, vec![1, 2, 3], 5, 100, &[9], &options, &mut yes);
        assert_eq!(next, Some(vec![1, 2, 3]));
        // A stop token part way ends the sequence there.
        let mut out = fresh();
        assert_eq!(
            append(&mut out, 0, vec![1, 9, 3], 5, 100, &[9], &options, &mut yes),
            None
        );
        assert_eq!(
            (out.tokens, out.finish),
            (vec![1, 9], FinishReason::Stop(9))
        );
        // So does max_new_tokens.
        let mut out = fresh();
        let short = GenerateOptions::default().with_max_new_tokens(2);
        assert_eq!(
            append(&mut out, 0, vec![1, 2, 3], 5, 100, &[], &short, &mut yes),
            None
        );
        assert_eq!((out.tokens, out.finish), (vec![1, 2], FinishReason::Length));
        // And the token callback.
        let mut out = fresh();
        let mut not_two = |_: usize, t: u32| t != 2;
        assert_eq!(
            append(
                &mut out,
                0,
                vec![1, 2, 3],
                5,
                100,
                &[],
                &options,
                &mut not_two
            ),
            None
        );
        assert_eq!(
            (out.tokens, out.finish),
            (vec![1, 2], FinishReason::Cancelled)
        );
        // Tokens that fill the context are kept; the sequence ends.
        let mut out = fresh();
        assert_eq!(
            append(&mut out, 0, vec![1, 2], 8, 10, &[], &options, &mut yes),
            None
        );
        assert_eq!(
            (out.tokens, out.finish),
            (vec![1, 2], FinishReason::ContextFull)
        );
    }
}
