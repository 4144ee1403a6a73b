//! The grammar of a well-formed listwise answer, `[a] > [b] > … > [z]`, over the ids
//! of one window, used to constrain decoding: at every step only tokens whose text
//! keeps the output a prefix of a full permutation of not-yet-used ids are allowed, so
//! the answer is always complete and valid and no token is wasted.
//!
//! [`ConstrainedHook`] runs that decoding inside [`crate::generate_with_hook`]: an
//! optional bounded free reasoning section (`<think>…</think>`), then the ranking, one
//! grammar-checked token at a time.

use crate::generate::{LogitsHook, NextToken};
use crate::Tokenizer;

/// Checks prefixes of `[id] > [id] > …` for a window of `n` ids starting at `first`.
#[derive(Clone, Debug)]
pub(crate) struct RankingGrammar {
    n: usize,
    first: usize,
}

/// Where a prefix stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Not a prefix of any valid answer.
    Invalid,
    /// A proper prefix: more must follow.
    Partial,
    /// A complete answer: every id once, the last bracket closed.
    Complete,
}

impl RankingGrammar {
    pub(crate) fn new(n: usize, first: usize) -> Self {
        Self { n, first }
    }

    fn id_ok(&self, id: usize) -> bool {
        id >= self.first && id < self.first + self.n
    }

    /// Whether some unused id starts with the digits `digits`.
    fn digits_can_grow(&self, digits: &str, used: &[bool]) -> bool {
        (self.first..self.first + self.n)
            .filter(|id| !used[id - self.first])
            .any(|id| id.to_string().starts_with(digits))
    }

    /// Classifies `text` as a prefix of `[a] > [b] > …`.
    pub(crate) fn check(&self, text: &str) -> Progress {
        if self.n == 0 {
            return if text.is_empty() {
                Progress::Complete
            } else {
                Progress::Invalid
            };
        }
        let mut used = vec![false; self.n];
        let mut count = 0;
        let mut rest = text;
        loop {
            // Expect "[" (after a separator when not first).
            if count > 0 {
                let sep = " > ";
                if rest.len() < sep.len() {
                    return if sep.starts_with(rest) && count < self.n {
                        Progress::Partial
                    } else if rest.is_empty() && count == self.n {
                        Progress::Complete
                    } else {
                        Progress::Invalid
                    };
                }
                match rest.strip_prefix(sep) {
                    Some(r) if count < self.n => rest = r,
                    _ => return Progress::Invalid,
                }
            }
            let Some(r) = rest.strip_prefix('[') else {
                return if rest.is_empty() {
                    Progress::Partial
                } else {
                    Progress::Invalid
                };
            };
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            let after = &r[digits.len()..];
            if digits.is_empty() {
                return if after.is_empty() {
                    Progress::Partial
                } else {
                    Progress::Invalid
                };
            }
            if digits.len() > 1 && digits.starts_with('0') {
                return Progress::Invalid;
            }
            if after.is_empty() {
                return if self.digits_can_grow(&digits, &used) {
                    Progress::Partial
                } else {
                    Progress::Invalid
                };
            }
            let Some(after) = after.strip_prefix(']') else {
                return Progress::Invalid;
            };
            let Ok(id) = digits.parse::<usize>() else {
                return Progress::Invalid;
            };
            if !self.id_ok(id) || used[id - self.first] {
                return Progress::Invalid;
            }
            used[id - self.first] = true;
            count += 1;
            rest = after;
            if rest.is_empty() {
                return if count == self.n {
                    Progress::Complete
                } else {
                    Progress::Partial
                };
            }
        }
    }
}

/// Which part of the output a [`ConstrainedHook`] is writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The free reasoning section, up to its token bound.
    Reasoning,
    /// The ranking, constrained by the grammar.
    Answer,
}

/// Greedy constrained decoding of one window's ranking, as a [`LogitsHook`] over a
/// single sequence whose prompt has `prompt_len` tokens.
///
/// With a reasoning bound, tokens are first chosen freely (greedy) until the text holds
/// `</think>`, an end token is written, the bound is reached or the context is full.
/// Then: without `<think>` in that text the model did not reason, and the hook stops
/// with [`ConstrainedHook::restart`] set (generate again from the prompt with a hook
/// of no reasoning bound); otherwise the text is kept as the reasoning, `</think>\n` is
/// forced if it is not closed yet, and the ranking follows. The ranking stops when it
/// is complete, when the output holds `budget` tokens, when the context is full, or
/// when no token can continue it (deadlines are the generation loop's: see
/// [`GenerateOptions::with_deadline`](crate::GenerateOptions::with_deadline)).
pub(crate) struct ConstrainedHook<'a> {
    grammar: RankingGrammar,
    /// Tokens that can write an answer, with their text.
    vocab: &'a [(u32, String)],
    tokenizer: &'a Tokenizer,
    limits: Limits,
    phase: Phase,
    /// The ranking written so far.
    pub(crate) answer: String,
    /// The reasoning kept (it holds `<think>`), without a forced `</think>`.
    pub(crate) reasoning: Option<String>,
    /// The model did not reason: generate again from the prompt, without reasoning.
    pub(crate) restart: bool,
}

/// The bounds of a [`ConstrainedHook`]'s output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Tokens in the prompt.
    pub(crate) prompt_len: usize,
    /// The model's context window.
    pub(crate) context: usize,
    /// The most tokens generated, the reasoning included, before the ranking stops.
    pub(crate) budget: usize,
    /// Tokens the free reasoning section may take (0: none, the ranking starts at once).
    pub(crate) max_reasoning_tokens: usize,
}

impl<'a> ConstrainedHook<'a> {
    pub(crate) fn new(
        grammar: RankingGrammar,
        vocab: &'a [(u32, String)],
        tokenizer: &'a Tokenizer,
        limits: Limits,
    ) -> Self {
        Self {
            grammar,
            vocab,
            tokenizer,
            limits,
            phase: if limits.max_reasoning_tokens > 0 {
                Phase::Reasoning
            } else {
                Phase::Answer
            },
            answer: String::new(),
            reasoning: None,
            restart: false,
        }
    }

    /// Whether one more token fits in the context after the prompt and `generated`.
    fn room_for_one(&self, generated: &[u32]) -> bool {
        self.limits.prompt_len + generated.len() + 1 < self.limits.context
    }

    /// A step of the reasoning section: `Some` action, or `None` when the ranking
    /// starts on these logits.
    fn reasoning_step(&mut self, generated: &[u32]) -> crate::Result<Option<NextToken>> {
        let tok = self.tokenizer;
        let text = tok.decode(generated, false)?;
        let ended = generated
            .last()
            .is_some_and(|last| text.contains("</think>") || tok.end_token_ids().contains(last));
        if !ended
            && generated.len() < self.limits.max_reasoning_tokens
            && self.room_for_one(generated)
        {
            return Ok(Some(NextToken::Sample));
        }
        self.phase = Phase::Answer;
        if !text.contains("<think>") {
            self.restart = true;
            return Ok(Some(NextToken::Stop));
        }
        let closed = text.contains("</think>");
        self.reasoning = Some(text);
        if !closed {
            let close = tok.encode("</think>\n", false)?;
            if !close.is_empty() {
                return Ok(Some(NextToken::Force(close)));
            }
        }
        Ok(None)
    }

    /// The best-scoring answer token that keeps the ranking valid (the first of equal
    /// scores), as an index into the vocabulary.
    fn best_answer_token(&self, logits: &[f32]) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for (at, (id, text)) in self.vocab.iter().enumerate() {
            let s = logits
                .get(*id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            if best.is_some_and(|(_, b)| s <= b) {
                continue;
            }
            let candidate = format!("{}{text}", self.answer);
            if self.grammar.check(&candidate) != Progress::Invalid {
                best = Some((at, s));
            }
        }
        best.map(|(at, _)| at)
    }
}

impl LogitsHook for ConstrainedHook<'_> {
    fn next_token(
        &mut self,
        _seq: usize,
        generated: &[u32],
        logits: &mut [f32],
    ) -> crate::Result<NextToken> {
        if self.phase == Phase::Reasoning {
            if let Some(action) = self.reasoning_step(generated)? {
                return Ok(action);
            }
        }
        if self.grammar.check(&self.answer) == Progress::Complete
            || generated.len() >= self.limits.budget
            || !self.room_for_one(generated)
        {
            return Ok(NextToken::Stop);
        }
        let Some(at) = self.best_answer_token(logits) else {
            return Ok(NextToken::Stop);
        };
        let (id, text) = &self.vocab[at];
        self.answer.push_str(text);
        Ok(NextToken::Force(vec![*id]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_prefixes_of_permutations() {
        let g = RankingGrammar::new(3, 1);
        assert_eq!(g.check(""), Progress::Partial);
        assert_eq!(g.check("["), Progress::Partial);
        assert_eq!(g.check("[2"), Progress::Partial);
        assert_eq!(g.check("[2]"), Progress::Partial);
        assert_eq!(g.check("[2] "), Progress::Partial);
        assert_eq!(g.check("[2] >"), Progress::Partial);
        assert_eq!(g.check("[2] > [3] > [1]"), Progress::Complete);
        assert_eq!(g.check("[2] > [3] > [1] "), Progress::Invalid);
        assert_eq!(g.check("[2] > [2]"), Progress::Invalid);
        assert_eq!(g.check("[0]"), Progress::Invalid);
        assert_eq!(g.check("[4]"), Progress::Invalid);
        assert_eq!(g.check("2"), Progress::Invalid);
        assert_eq!(g.check("[2]>"), Progress::Invalid);
    }

    #[test]
    fn multi_digit_ids() {
        let g = RankingGrammar::new(20, 1);
        assert_eq!(g.check("[1"), Progress::Partial); // 1 or 10..19
        assert_eq!(g.check("[2"), Progress::Partial); // 2 or 20
        assert_eq!(g.check("[21"), Progress::Invalid);
        assert_eq!(g.check("[05]"), Progress::Invalid);
        let zero = RankingGrammar::new(12, 0);
        assert_eq!(zero.check("[0] > [11"), Progress::Partial);
        assert_eq!(zero.check("[12]"), Progress::Invalid);
        // Once 1 and 10..19 are used, "[1" can no longer grow.
        let all: Vec<String> = (10..20).map(|i| format!("[{i}]")).collect();
        let text = format!("[1] > {}", all.join(" > "));
        assert_eq!(g.check(&text), Progress::Partial);
        assert_eq!(g.check(&format!("{text} > [1")), Progress::Invalid);
    }
}
