//! DeAR's pointwise stage: score each (query, passage) pair independently.
//!
//! Two heads:
//! - [`Head::Classifier`], DeAR's own: a `LlamaForSequenceClassification` `score` head
//!   (from a full checkpoint or an adapter's `modules_to_save`) on the last token of
//!   `[bos] + enc("query: " + q)[:32] + [bos] + enc("document: " + title + " " + text)[:193]`
//!   (DeAR's `data.py`: `RerankerInferencePreProcessor` + `prepare_for_model`, whose
//!   `only_second` truncation keeps the pair within `32 + 196 - 2` tokens, so a full
//!   query trims one more passage token). The raw logit is the score, as DeAR
//!   reports it.
//! - [`Head::YesNo`], for instruction-tuned causal LMs with no head: the query and the
//!   passage in a chat prompt asking whether the passage answers the query;
//!   score = logit("yes") − logit("no") at the answer position.
//!
//! Every input is a shared prefix (what depends on the query only) followed by a
//! per-passage suffix. The prefix is computed once per query and its keys/values are
//! reused by every passage; passages are sorted by length and packed into batches
//! under a token budget.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::model::{AdapterId, ForwardOptions, KvCache, Outputs};
use crate::rerank::types::{Passage, Query};
use crate::{ChatMessage, Error, LanguageModel};

/// Where the prompt of [`Head::YesNo`] puts the passage.
const PASSAGE_MARKER: &str = "\u{1}PASSAGE\u{1}";

/// How relevance is read off the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Head {
    /// DeAR: the `score` head of `LlamaForSequenceClassification` on the last token.
    Classifier,
    /// `logit(yes) − logit(no)` after a chat prompt (instruction-tuned causal LMs).
    YesNo {
        /// The user message; `{query}` and `{passage}` are replaced. `{passage}` must
        /// come after `{query}` and start a line, so the query part is a shared prefix.
        prompt: String,
        /// An optional system message (otherwise the template's default).
        #[serde(default)]
        system: Option<String>,
        /// The "relevant" answer token.
        yes: String,
        /// The "not relevant" answer token.
        no: String,
    },
}

impl Head {
    /// The yes/no prompt that ranked best on the development collections (see
    /// BENCHMARKS.md).
    pub fn default_yes_no() -> Self {
        Head::YesNo {
            prompt: "Query: {query}\nPassage:\n{passage}\n\nDoes the passage answer the query? Answer yes or no."
                .to_string(),
            system: None,
            yes: "yes".to_string(),
            no: "no".to_string(),
        }
    }

    /// The kind of head, as `--head` and `dear recipes` name it: `"classifier"` or
    /// `"yes-no"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Head::Classifier => "classifier",
            Head::YesNo { .. } => "yes-no",
        }
    }
}

/// Settings of the pointwise scorer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointwiseConfig {
    /// How scores are read.
    pub head: Head,
    /// Query tokens kept (DeAR: 32).
    #[serde(default = "default_q_max_len")]
    pub q_max_len: usize,
    /// Passage budget (DeAR: 196, of which 193 tokens of passage).
    #[serde(default = "default_p_max_len")]
    pub p_max_len: usize,
    /// Most tokens in one packed batch.
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// Compute the query prefix once and reuse its keys/values for every passage.
    #[serde(default = "default_true")]
    pub share_prefix: bool,
}

fn default_q_max_len() -> usize {
    32
}
fn default_p_max_len() -> usize {
    196
}
fn default_max_batch_tokens() -> usize {
    4096
}
fn default_true() -> bool {
    true
}

impl PointwiseConfig {
    /// DeAR's classifier input (q 32, p 196).
    pub fn classifier() -> Self {
        Self {
            head: Head::Classifier,
            q_max_len: 32,
            p_max_len: 196,
            max_batch_tokens: 4096,
            share_prefix: true,
        }
    }

    /// The yes/no head with the default prompt.
    pub fn yes_no() -> Self {
        Self {
            head: Head::default_yes_no(),
            ..Self::classifier()
        }
    }

    /// DeAR's input on the head `lm` has: the classifier when the model (or the
    /// unmerged adapter named `adapter`) has a `score` head, else the yes/no prompt.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown adapter.
    pub fn for_model(lm: &LanguageModel, adapter: Option<&str>) -> crate::Result<Self> {
        let id = lm.llama().adapter_named(adapter)?;
        Ok(if lm.llama().score_labels(id).is_some() {
            Self::classifier()
        } else {
            Self::yes_no()
        })
    }
}

/// One query's model input: a shared prefix and one suffix per passage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedQuery {
    /// Tokens every passage's input starts with.
    pub prefix: Vec<u32>,
    /// Each passage's own tokens, in input order.
    pub suffixes: Vec<Vec<u32>>,
}

impl EncodedQuery {
    /// Tokens the model reads for all passages (the shared prefix counted once).
    pub fn tokens(&self) -> usize {
        self.prefix.len() + self.suffixes.iter().map(Vec::len).sum::<usize>()
    }

    /// The full input of passage `i` (prefix then suffix).
    pub fn full(&self, i: usize) -> Vec<u32> {
        let mut v = self.prefix.clone();
        v.extend_from_slice(&self.suffixes[i]);
        v
    }
}

/// Scores from a pointwise stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// One score per passage, in input order; higher is better.
    pub scores: Vec<f32>,
    /// Tokens the model read.
    pub tokens: usize,
}

/// Scores passages against a query with one model (and optionally one adapter).
#[derive(Debug, Clone)]
pub struct PointwiseScorer {
    lm: Arc<LanguageModel>,
    adapter: Option<AdapterId>,
    config: PointwiseConfig,
    yes_no: Option<(u32, u32)>,
    bos: Option<u32>,
}

impl PointwiseScorer {
    /// A scorer over `lm`, using the unmerged adapter named `adapter` if given.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown adapter, a classifier head the model
    /// lacks, or yes/no answers that are not single tokens; [`Error::ChatTemplate`]
    /// when the yes/no head has no chat template to use.
    pub fn new(
        lm: Arc<LanguageModel>,
        adapter: Option<&str>,
        config: PointwiseConfig,
    ) -> crate::Result<Self> {
        let adapter = lm.llama().adapter_named(adapter)?;
        if config.q_max_len == 0 || config.p_max_len < 4 || config.max_batch_tokens == 0 {
            return Err(Error::InvalidArgument(
                "q_max_len must be > 0, p_max_len >= 4 and max_batch_tokens > 0".into(),
            ));
        }
        let bos = lm
            .tokenizer()
            .bos_token_id()
            .or(lm.llama().config().bos_token_id);
        let yes_no = match &config.head {
            Head::Classifier => {
                if lm.llama().score_labels(adapter).is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "the model '{}' has no `score` head (not a sequence-classification checkpoint or adapter); use the yes/no head",
                        lm.source()
                    )));
                }
                if bos.is_none() {
                    return Err(Error::InvalidArgument(
                        "DeAR's input needs a bos token and the tokenizer has none".into(),
                    ));
                }
                None
            }
            Head::YesNo {
                prompt, yes, no, ..
            } => {
                if lm.tokenizer().chat_template().is_none() {
                    return Err(Error::ChatTemplate(format!(
                        "the yes/no head needs a chat template and '{}' has none",
                        lm.source()
                    )));
                }
                let q = prompt.find("{query}");
                let p = prompt.find("{passage}");
                if !matches!((q, p), (Some(q), Some(p)) if q < p) {
                    return Err(Error::InvalidArgument(
                        "the yes/no prompt must contain {query} before {passage}".into(),
                    ));
                }
                let single = |word: &str| -> crate::Result<u32> {
                    match lm.tokenizer().encode(word, false)?.as_slice() {
                        [id] => Ok(*id),
                        other => Err(Error::InvalidArgument(format!(
                            "the answer {word:?} is {} tokens, not one",
                            other.len()
                        ))),
                    }
                };
                Some((single(yes)?, single(no)?))
            }
        };
        Ok(Self {
            lm,
            adapter,
            config,
            yes_no,
            bos,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.lm
    }

    /// The name of the unmerged adapter the scorer uses, if any.
    pub fn adapter_name(&self) -> Option<&str> {
        self.adapter
            .and_then(|a| self.lm.llama().adapter_names().get(a.0).copied())
    }

    /// The settings.
    pub fn config(&self) -> &PointwiseConfig {
        &self.config
    }

    /// How many tokens of `passage.text` this scorer reads before it truncates: the
    /// passage budget less what the input format and the title take (with the
    /// classifier, one token is kept in hand for a long query's cut, see
    /// [`PointwiseScorer::encode`]; the yes/no prompt has no such cut, so an untitled
    /// passage's first [`Chunking`](crate::Chunking) window is what truncation reads).
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn text_budget(&self, passage: &Passage) -> crate::Result<usize> {
        let tok = self.lm.tokenizer();
        let title = passage.title.as_deref().unwrap_or("");
        let (lead, budget) = match &self.config.head {
            Head::Classifier => (
                format!("document: {title} "),
                self.config.p_max_len.saturating_sub(4),
            ),
            Head::YesNo { .. } if title.is_empty() => (String::new(), self.config.p_max_len),
            Head::YesNo { .. } => (format!("{title}\n"), self.config.p_max_len),
        };
        let lead = if lead.is_empty() {
            0
        } else {
            tok.encode(&lead, false)?.len()
        };
        Ok(budget.saturating_sub(lead).max(1))
    }

    /// Builds the model input of a query and its passages.
    ///
    /// # Errors
    /// [`Error::EmptyInput`] for an empty query; tokenizer and template errors.
    pub fn encode(&self, query: &Query, passages: &[Passage]) -> crate::Result<EncodedQuery> {
        let q = query.text.trim();
        if q.is_empty() {
            return Err(Error::EmptyInput("the query is empty".into()));
        }
        let tok = self.lm.tokenizer();
        match &self.config.head {
            Head::Classifier => {
                let bos = self
                    .bos
                    .ok_or_else(|| Error::InvalidArgument("no bos token".into()))?;
                encode_dear(
                    tok,
                    bos,
                    &query.text,
                    passages,
                    self.config.q_max_len,
                    self.config.p_max_len,
                )
            }
            Head::YesNo { prompt, system, .. } => {
                let template = self
                    .lm
                    .tokenizer()
                    .chat_template()
                    .ok_or_else(|| Error::ChatTemplate("no chat template".into()))?;
                let mut qids = tok.encode(&cut_chars(q, self.config.q_max_len), false)?;
                qids.truncate(self.config.q_max_len);
                let query_text = tok.decode(&qids, true)?;
                let user = prompt
                    .replace("{query}", &query_text)
                    .replace("{passage}", PASSAGE_MARKER);
                let mut messages = Vec::new();
                if let Some(s) = system {
                    messages.push(ChatMessage::system(s.clone()));
                }
                messages.push(ChatMessage::user(user));
                let rendered = template.render(&messages, true)?;
                let (before, after) = rendered.split_once(PASSAGE_MARKER).ok_or_else(|| {
                    Error::ChatTemplate("the chat template dropped the passage".into())
                })?;
                let prefix = tok.encode(before, false)?;
                let tail = tok.encode(after, false)?;
                let keep = self.config.p_max_len;
                let suffixes = passages
                    .iter()
                    .map(|p| {
                        let text = match p.title.as_deref() {
                            Some(t) if !t.is_empty() => format!("{t}\n{}", p.text),
                            _ => p.text.clone(),
                        };
                        let mut ids = tok.encode(&cut_chars(&text, keep), false)?;
                        ids.truncate(keep);
                        ids.extend_from_slice(&tail);
                        Ok(ids)
                    })
                    .collect::<crate::Result<Vec<_>>>()?;
                Ok(EncodedQuery { prefix, suffixes })
            }
        }
    }

    /// Scores the passages of one query, in input order (no scheduler).
    ///
    /// # Errors
    /// See [`PointwiseScorer::encode`]; model errors.
    pub fn score(&self, query: &Query, passages: &[Passage]) -> crate::Result<Vec<f32>> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.encode(query, passages)?;
        let mut out = self.score_encoded(&[&enc], &|| false)?;
        out.pop()
            .ok_or_else(|| Error::InvalidArgument("no scores".into()))
    }

    /// Scores several encoded queries together: all their passages are packed into
    /// shared batches. `cancelled` is polled between batches and layers; once it is
    /// true the call ends with [`Error::Cancelled`].
    pub(crate) fn score_encoded(
        &self,
        queries: &[&EncodedQuery],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> crate::Result<Vec<Vec<f32>>> {
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); queries.len()];
        self.score_encoded_each(queries, &|_| cancelled(), &mut |qi, scores| {
            out[qi] = scores
        })?;
        Ok(out)
    }

    /// Scores every passage of `queries` in batches of at most `max_batch_tokens`,
    /// the queries in the order given (a batch may end one query and start the next),
    /// and hands each query's scores to `done` as soon as its last passage is scored:
    /// calls packed together share batches, and the first ones are answered first.
    ///
    /// `cancelled(query)` says that a query's caller gave up: its passages not yet
    /// scored are dropped from the batches still to form, and a pass whose queries all
    /// gave up stops at the next layer, while the other queries go on. Such a query
    /// never reaches `done`, and the call then ends with [`Error::Cancelled`] (after
    /// every other query has been answered).
    pub(crate) fn score_encoded_each(
        &self,
        queries: &[&EncodedQuery],
        cancelled: &(dyn Fn(usize) -> bool + Sync),
        done: &mut dyn FnMut(usize, Vec<f32>),
    ) -> crate::Result<()> {
        let mut out: Vec<Vec<f32>> = queries
            .iter()
            .map(|q| vec![f32::NAN; q.suffixes.len()])
            .collect();
        let mut left: Vec<usize> = queries.iter().map(|q| q.suffixes.len()).collect();
        for (qi, _) in left.iter().enumerate().filter(|(_, &n)| n == 0) {
            done(qi, Vec::new());
        }
        // (query, passage, length): queries in order, each one's passages by length, so
        // that batches hold similar lengths.
        let mut items: Vec<(usize, usize, usize)> = queries
            .iter()
            .enumerate()
            .flat_map(|(qi, q)| {
                q.suffixes.iter().enumerate().map(move |(pi, s)| {
                    (
                        qi,
                        pi,
                        s.len()
                            + if self.config.share_prefix {
                                0
                            } else {
                                q.prefix.len()
                            },
                    )
                })
            })
            .collect();
        items.sort_by_key(|&(qi, _, len)| (qi, len));
        let prefixes: Vec<KvCache> = if self.config.share_prefix {
            queries
                .iter()
                .map(|q| self.prefix_cache(&q.prefix))
                .collect::<crate::Result<_>>()?
        } else {
            Vec::new()
        };
        let mut start = 0;
        let mut chunk = Vec::new();
        while start < items.len() {
            // The next batch, without the passages of queries whose callers gave up.
            chunk.clear();
            let mut tokens = 0;
            while let Some(&(qi, pi, len)) = items.get(start) {
                if cancelled(qi) {
                    start += 1;
                    continue;
                }
                if !chunk.is_empty() && tokens + len > self.config.max_batch_tokens {
                    break;
                }
                tokens += len;
                chunk.push((qi, pi, len));
                start += 1;
            }
            if chunk.is_empty() {
                break;
            }
            // Items are grouped by query: its queries are the distinct runs.
            let mut in_chunk: Vec<usize> = chunk.iter().map(|&(qi, _, _)| qi).collect();
            in_chunk.dedup();
            let all_gave_up = || in_chunk.iter().all(|&qi| cancelled(qi));
            let scores = match self.run_batch(queries, &prefixes, &chunk, &all_gave_up) {
                // Every query of this batch gave up during the pass: go on with the rest.
                Err(Error::Cancelled) => continue,
                other => other?,
            };
            if let Some((k, s)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
                let (qi, pi, _) = chunk[k];
                return Err(Error::NonFinite(format!(
                    "{s} for passage {pi} of query {qi}"
                )));
            }
            for (&(qi, pi, _), s) in chunk.iter().zip(scores) {
                out[qi][pi] = s;
                left[qi] -= 1;
                if left[qi] == 0 {
                    done(qi, std::mem::take(&mut out[qi]));
                }
            }
        }
        if left.iter().any(|&n| n > 0) {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    fn prefix_cache(&self, prefix: &[u32]) -> crate::Result<KvCache> {
        let mut cache = KvCache::new();
        let batch = Batch::from_sequences(&[prefix])?;
        self.lm.llama().forward_with(
            &batch,
            std::slice::from_mut(&mut cache),
            Outputs::default(),
            ForwardOptions::default().with_adapter(self.adapter),
        )?;
        Ok(cache)
    }

    fn run_batch(
        &self,
        queries: &[&EncodedQuery],
        prefixes: &[KvCache],
        chunk: &[(usize, usize, usize)],
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> crate::Result<Vec<f32>> {
        let mut batch = Batch::new();
        let mut of_sequence = Vec::with_capacity(chunk.len());
        for &(qi, pi, _) in chunk {
            let q = queries[qi];
            if self.config.share_prefix {
                batch.push(&q.suffixes[pi], q.prefix.len())?;
                of_sequence.push(qi);
            } else {
                batch.push(&q.full(pi), 0)?;
            }
        }
        let mut options = ForwardOptions::default()
            .with_adapter(self.adapter)
            .with_interrupt(cancelled);
        if self.config.share_prefix {
            options = options.with_prefixes(prefixes, &of_sequence);
        }
        let outputs = match self.yes_no {
            None => Outputs::last_scores(),
            Some(_) => Outputs::last_logits(),
        };
        let out = self
            .lm
            .llama()
            .forward_with(&batch, &mut [], outputs, options)?;
        match self.yes_no {
            None => {
                let s = out
                    .scores
                    .ok_or_else(|| Error::InvalidArgument("no scores".into()))?;
                Ok(s.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?)
            }
            Some((yes, no)) => {
                let l = out
                    .logits
                    .ok_or_else(|| Error::InvalidArgument("no logits".into()))?;
                let y = l.narrow(1, yes as usize, 1)?;
                let n = l.narrow(1, no as usize, 1)?;
                Ok((y - n)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }
}

/// Cuts very long texts before tokenizing: no token covers 64 characters, so this
/// changes none of the first `tokens` tokens kept and keeps a 1 MB passage cheap.
fn cut_chars(s: &str, tokens: usize) -> String {
    let limit = tokens.saturating_mul(64);
    match s.char_indices().nth(limit) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// DeAR's pointwise input (`data.py`, `RerankerInferencePreProcessor`):
/// `[bos] + enc("query: " + q)[:q_max_len]` shared, then per passage
/// `[bos] + enc("document: " + title + " " + text)[:p_max_len - 3]`, the pair cut to
/// `q_max_len + p_max_len - 2` tokens as transformers-4.x `prepare_for_model` does.
pub(crate) fn encode_dear(
    tok: &crate::Tokenizer,
    bos: u32,
    query: &str,
    passages: &[Passage],
    q_max_len: usize,
    p_max_len: usize,
) -> crate::Result<EncodedQuery> {
    let mut qids = tok.encode(&cut_chars(&format!("query: {query}"), q_max_len), false)?;
    qids.truncate(q_max_len);
    let mut prefix = vec![bos];
    prefix.extend(qids);
    let keep = p_max_len.saturating_sub(3);
    let suffixes = passages
        .iter()
        .map(|p| {
            let text = format!("document: {} {}", p.title.as_deref().unwrap_or(""), p.text);
            let mut ids = tok.encode(&cut_chars(&text, keep), false)?;
            ids.truncate(keep);
            // `prepare_for_model(.., truncation="only_second", max_length=q+p)`
            // reserves room for the two special tokens a pair would get, so
            // the pair is cut to q + p - 2 tokens from the passage's end.
            let budget = (q_max_len + p_max_len)
                .saturating_sub(2)
                .saturating_sub(prefix.len() + 1);
            ids.truncate(budget);
            let mut s = vec![bos];
            s.extend(ids);
            Ok(s)
        })
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(EncodedQuery { prefix, suffixes })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn tiny_scorer() -> crate::Result<PointwiseScorer> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lora/tiny-seqcls");
        let lm = LanguageModel::load(&dir, &crate::LoadOptions::default())?;
        // Small batches, so that each query takes several.
        let config = PointwiseConfig {
            max_batch_tokens: 64,
            ..PointwiseConfig::classifier()
        };
        PointwiseScorer::new(Arc::new(lm), None, config)
    }

    fn passages(tag: &str) -> Vec<Passage> {
        (0..6)
            .map(|i| Passage::new(format!("{tag} passage {i} about rain and clouds")))
            .collect()
    }

    /// A query whose caller gave up loses its unscored passages; the queries packed
    /// with it are still scored, exactly as alone, and the call reports the drop.
    #[test]
    fn a_query_that_gave_up_is_dropped_and_the_others_go_on() -> crate::Result<()> {
        let scorer = tiny_scorer()?;
        let a = scorer.encode(&Query::new("why does it rain"), &passages("first"))?;
        let b = scorer.encode(&Query::new("what are clouds"), &passages("second"))?;
        let c = scorer.encode(&Query::new("where is paris"), &passages("third"))?;
        let alone = |q: &EncodedQuery| scorer.score_encoded(&[q], &|| false);
        let (b_alone, c_alone) = (alone(&b)?.remove(0), alone(&c)?.remove(0));

        // `a` gave up before anything ran, `c` after `b` was answered.
        let c_gave_up = AtomicBool::new(false);
        let gave_up = |qi: usize| qi == 0 || (qi == 2 && c_gave_up.load(Ordering::Relaxed));
        let mut answers = Vec::new();
        let result = scorer.score_encoded_each(&[&a, &b, &c], &gave_up, &mut |qi, s| {
            if qi == 1 {
                c_gave_up.store(true, Ordering::Relaxed);
            }
            answers.push((qi, s));
        });
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert_eq!(answers, vec![(1, b_alone.clone())]);

        // Nobody gave up: everyone is answered, in order, with the scores alone.
        let mut answers = Vec::new();
        scorer.score_encoded_each(&[&b, &c], &|_| false, &mut |qi, s| answers.push((qi, s)))?;
        assert_eq!(answers, vec![(0, b_alone), (1, c_alone)]);

        // Everybody gave up: nothing runs.
        let mut answers = Vec::new();
        let result =
            scorer.score_encoded_each(&[&b, &c], &|_| true, &mut |qi, s| answers.push((qi, s)));
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert!(answers.is_empty());
        Ok(())
    }
}
