//! DeAR's stage 2 in dear's runtime: a CAUSAL_LM LoRA adapter fine-tuned to write
//! rankings (`train_listwise.sh`: LLaMA-Factory SFT on permutations with rationales),
//! on the listwise prompt dear renders at inference (the model's chat template over
//! [`ListwisePrompt`]'s messages).
//!
//! Each training query gives one window: the first stage's top `window` candidates in
//! their first-stage order, and a target ranking of them —
//! - [`ListwiseTargets::Qrels`]: the relevant passages first, then the rest in the
//!   first stage's order;
//! - [`ListwiseTargets::Student`]: the relevant passages first, then the rest by a
//!   pointwise model's scores (DeAR's stage-1 student);
//! - [`ListwiseTargets::Permutations`]: a teacher's permutation read from a file, with
//!   its optional rationale written inside `<think>…</think>` before the ranking.
//!
//! Two objectives ([`ListwiseObjective`]): supervised fine-tuning with the
//! cross-entropy of the answer tokens only (the rendered assistant turn: ranking and
//! the template's end-of-turn), or FIRST's weighted RankNet on the logits of the
//! first identifier token after `[` (what dear's `first-token` mode reads).
//!
//! Validation (when training queries are held back) reads the same first-token
//! logits: the window ordered by each identifier's first-token logit, nDCG@10 against
//! the judgments, next to the first stage's order. Windows longer than `cutoff_len`
//! tokens (or the model's context, if shorter) are skipped and counted (LLaMA-Factory
//! cuts them instead, which would drop passages the answer names); a held-back window
//! that long keeps its first-stage order in validation.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::loss;
use super::net::{Net, Packed, Trainable};
use super::{
    candidate_id, mean_ndcg, Engine, PassPlan, PassResult, RunSpec, Skipped, StepReport,
    TrainConfig, TrainReport, TrainingQuery, TrainingSet,
};
use crate::listwise_passage_text;
use crate::{ChatMessage, Error, LanguageModel, ListwisePrompt, Passage, PointwiseStage, Query};

/// What stage 2 is trained to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListwiseObjective {
    /// Supervised fine-tuning: cross-entropy of the answer tokens (DeAR).
    #[default]
    Answer,
    /// FIRST: a weighted RankNet loss on the first identifier token's logits.
    FirstToken,
}

impl FromStr for ListwiseObjective {
    type Err = Error;

    /// Parses `answer` (or `sft`) and `first-token` (or `first`).
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "answer" | "sft" => Ok(Self::Answer),
            "first-token" | "first" => Ok(Self::FirstToken),
            other => Err(Error::InvalidArgument(format!(
                "unknown listwise objective '{other}' (answer or first-token)"
            ))),
        }
    }
}

impl std::fmt::Display for ListwiseObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Answer => "answer",
            Self::FirstToken => "first-token",
        })
    }
}

/// Stage 2's own settings (in [`TrainConfig::listwise`](super::TrainConfig)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListwiseTrainOptions {
    /// The loss.
    pub objective: ListwiseObjective,
    /// The prompt format (DeAR: rankllm).
    pub prompt: ListwisePrompt,
    /// Passages per window (DeAR: 20).
    pub window: usize,
    /// Windows with more tokens (prompt and answer) are skipped (DeAR: 5,000).
    pub cutoff_len: usize,
}

impl Default for ListwiseTrainOptions {
    fn default() -> Self {
        Self {
            objective: ListwiseObjective::Answer,
            prompt: ListwisePrompt::RankLlm,
            window: 20,
            cutoff_len: 5000,
        }
    }
}

impl ListwiseTrainOptions {
    pub(crate) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A teacher's ranking of one query's passages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permutation {
    /// The query, as the training set names it.
    pub query_id: String,
    /// Passage ids, best first: the window is these passages (shown in their
    /// first-stage order), the answer is this order.
    pub ranking: Vec<String>,
    /// The teacher's reasoning, written inside `<think>…</think>` before the ranking.
    #[serde(default)]
    pub rationale: Option<String>,
}

/// Teacher permutations by query id, read from JSON Lines (one [`Permutation`] per
/// line: `{"query_id": "q1", "ranking": ["d3", "d1", "d2"], "rationale": "…"}`).
#[derive(Clone, Debug, Default)]
pub struct Permutations {
    by_query: HashMap<String, Permutation>,
}

impl Permutations {
    /// Reads a permutation file.
    ///
    /// # Errors
    /// [`Error::Training`] naming the file and line: unreadable JSON, an empty
    /// ranking, a passage named twice, a query given twice, an empty file.
    pub fn read(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let p: Permutation = serde_json::from_str(line)
                .map_err(|e| Error::Training(format!("{}:{}: {e}", path.display(), n + 1)))?;
            entries.push((n + 1, p));
        }
        Self::build(entries, &path.display().to_string())
    }

    /// Permutations given in memory.
    ///
    /// # Errors
    /// As [`Permutations::read`].
    pub fn from_entries(entries: Vec<Permutation>) -> crate::Result<Self> {
        Self::build(
            entries
                .into_iter()
                .enumerate()
                .map(|(i, p)| (i + 1, p))
                .collect(),
            "permutations",
        )
    }

    fn build(entries: Vec<(usize, Permutation)>, source: &str) -> crate::Result<Self> {
        if entries.is_empty() {
            return Err(Error::Training(format!("{source}: no permutation")));
        }
        let mut by_query = HashMap::new();
        for (line, p) in entries {
            let at = |what: String| Error::Training(format!("{source}:{line}: {what}"));
            if p.ranking.len() < 2 {
                return Err(at(format!(
                    "the ranking of query '{}' has {} passage(s); a window needs at least 2",
                    p.query_id,
                    p.ranking.len()
                )));
            }
            let mut seen = HashSet::new();
            if let Some(d) = p.ranking.iter().find(|d| !seen.insert(d.as_str())) {
                return Err(at(format!(
                    "the ranking of query '{}' names passage '{d}' twice",
                    p.query_id
                )));
            }
            if by_query.contains_key(&p.query_id) {
                return Err(at(format!("query '{}' is given twice", p.query_id)));
            }
            by_query.insert(p.query_id.clone(), p);
        }
        Ok(Self { by_query })
    }

    /// The permutation of a query.
    pub fn get(&self, query_id: &str) -> Option<&Permutation> {
        self.by_query.get(query_id)
    }

    /// How many queries have one.
    pub fn len(&self) -> usize {
        self.by_query.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_query.is_empty()
    }
}

/// Where a window's target ranking comes from.
pub enum ListwiseTargets<'a> {
    /// Relevant passages first, then the first stage's order.
    Qrels,
    /// Relevant passages first, then the rest by this pointwise stage's scores.
    Student(&'a dyn PointwiseStage),
    /// A teacher's permutations (queries without one are skipped and counted).
    Permutations(&'a Permutations),
}

/// One training window, encoded.
struct Example {
    /// Prompt (and, for the answer objective, answer) token ids.
    ids: Vec<u32>,
    prompt_len: usize,
    /// The target: window positions, best first.
    order: Vec<usize>,
}

/// Stage-2 trainer over one base model.
///
/// # Example
/// ```no_run
/// use dear_core::train::{ListwiseTargets, ListwiseTrainer, TrainConfig, TrainingSet};
/// use dear_core::{LanguageModel, LoadOptions};
/// # fn set() -> TrainingSet { TrainingSet::default() }
/// let lm = LanguageModel::load(dear_core::default_model_path(), &LoadOptions::default())?;
/// let config = TrainConfig { max_steps: Some(10), ..TrainConfig::listwise() };
/// let trainer = ListwiseTrainer::new(&lm, config)?;
/// let report = trainer.train(&set(), ListwiseTargets::Qrels, "listwise".as_ref(), |_| {})?;
/// println!("{} steps, last loss {:.4}", report.steps, report.last_loss);
/// # Ok::<(), dear_core::Error>(())
/// ```
pub struct ListwiseTrainer {
    engine: Engine,
    /// The tokens of `[`.
    open: Vec<u32>,
    /// Per window position, the first token of its identifier after `[`.
    first_ids: Vec<u32>,
}

impl ListwiseTrainer {
    /// A trainer on `lm`'s weights with `config` (start from
    /// [`TrainConfig::listwise`] for DeAR's stage-2 defaults).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for absurd options; [`Error::ChatTemplate`] when the
    /// model has no chat template; for the first-token objective, a tokenizer that
    /// starts two identifiers of a window with the same token.
    pub fn new(lm: &LanguageModel, config: TrainConfig) -> crate::Result<Self> {
        let o = &config.listwise;
        if !(2..=100).contains(&o.window) {
            return Err(Error::InvalidArgument(format!(
                "the listwise window must hold 2 to 100 passages, got {}",
                o.window
            )));
        }
        if !(64..=131_072).contains(&o.cutoff_len) {
            return Err(Error::InvalidArgument(format!(
                "cutoff_len must be in 64..=131072 tokens, got {}",
                o.cutoff_len
            )));
        }
        if lm.tokenizer().chat_template().is_none() {
            return Err(Error::ChatTemplate(format!(
                "the model at '{}' has no chat template: the listwise prompt cannot be rendered",
                lm.source()
            )));
        }
        let tok = lm.tokenizer();
        let first = match o.prompt.id_base() {
            crate::IdBase::One => 1,
            crate::IdBase::Zero => 0,
        };
        let open = tok.encode("[", false)?;
        let mut first_ids = Vec::with_capacity(o.window);
        for k in 0..o.window {
            let full = tok.encode(&format!("[{}]", first + k), false)?;
            let rest = full.strip_prefix(open.as_slice()).unwrap_or(&full);
            let t = *rest.first().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the tokenizer encodes '[{}]' as nothing",
                    first + k
                ))
            })?;
            if o.objective == ListwiseObjective::FirstToken {
                if let Some(j) = first_ids.iter().position(|&x| x == t) {
                    return Err(Error::InvalidArgument(format!(
                        "the tokenizer starts identifiers [{}] and [{}] with the same token, so \
                         their first-token logits cannot be told apart: FIRST training needs a \
                         window of at most {} passages with this model",
                        first + j,
                        first + k,
                        k
                    )));
                }
            }
            first_ids.push(t);
        }
        Ok(Self {
            engine: Engine::new(lm, config)?,
            open,
            first_ids,
        })
    }

    /// The options in use.
    pub fn config(&self) -> &TrainConfig {
        &self.engine.config
    }

    fn options(&self) -> &ListwiseTrainOptions {
        &self.engine.config.listwise
    }

    /// The longest window trained on: `cutoff_len`, or the model's context if shorter.
    fn cutoff(&self) -> usize {
        self.options()
            .cutoff_len
            .min(self.engine.base.config.max_position_embeddings)
    }

    /// The prompt's messages for a window.
    fn messages(&self, query: &str, window: &[Passage]) -> Vec<ChatMessage> {
        let texts: Vec<String> = window.iter().map(listwise_passage_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.options().prompt.messages(query, &refs)
    }

    fn render(&self, messages: &[ChatMessage], generation: bool) -> crate::Result<Vec<u32>> {
        let template = self
            .engine
            .tokenizer
            .chat_template()
            .ok_or_else(|| Error::ChatTemplate("the model has no chat template".into()))?;
        let text = template.render(messages, generation)?;
        self.engine.tokenizer.encode(&text, false)
    }

    /// The answer the model is taught for `order` (window positions, best first).
    fn answer_text(&self, order: &[usize], rationale: Option<&str>) -> String {
        let base = match self.options().prompt.id_base() {
            crate::IdBase::One => 1,
            crate::IdBase::Zero => 0,
        };
        let ranking = order
            .iter()
            .map(|&i| format!("[{}]", i + base))
            .collect::<Vec<_>>()
            .join(" > ");
        match rationale.map(str::trim).filter(|r| !r.is_empty()) {
            Some(r) if r.contains("<think>") => format!("{r}\n\n{ranking}"),
            Some(r) => format!("<think>\n{r}\n</think>\n\n{ranking}"),
            None => ranking,
        }
    }

    /// Encodes one window: prompt ids (plus `[` for FIRST, or the rendered answer).
    fn encode(
        &self,
        query: &str,
        window: &[Passage],
        order: Vec<usize>,
        rationale: Option<&str>,
    ) -> crate::Result<Example> {
        let messages = self.messages(query, window);
        let prompt = self.render(&messages, true)?;
        let prompt_len = prompt.len();
        let ids = match self.options().objective {
            ListwiseObjective::FirstToken => {
                let mut ids = prompt;
                ids.extend(&self.open);
                ids
            }
            ListwiseObjective::Answer => {
                let mut full_messages = messages;
                full_messages.push(ChatMessage::assistant(self.answer_text(&order, rationale)));
                let full = self.render(&full_messages, false)?;
                if !full.starts_with(&prompt) || full.len() <= prompt_len {
                    return Err(Error::ChatTemplate(
                        "the chat template does not render the answer after the generation prompt, so the answer tokens cannot be told from the prompt".into(),
                    ));
                }
                full
            }
        };
        Ok(Example {
            ids,
            prompt_len,
            order,
        })
    }

    /// The training window of a query and its target, or why it has none.
    fn example(
        &self,
        q: &TrainingQuery,
        targets: &ListwiseTargets<'_>,
        skipped: &mut Skipped,
    ) -> crate::Result<Option<Example>> {
        let w = self.options().window;
        let relevant: HashSet<&str> = q.positives.iter().filter_map(|p| p.id.as_deref()).collect();
        let (window, order, rationale): (Vec<Passage>, Vec<usize>, Option<&str>) = match targets {
            ListwiseTargets::Permutations(perms) => {
                let Some(p) = perms.get(&q.id) else {
                    skipped.no_permutation += 1;
                    return Ok(None);
                };
                // The named passages, shown in their first-stage order.
                let mut known: Vec<(usize, Passage)> = Vec::with_capacity(p.ranking.len());
                for d in &p.ranking {
                    let found = q
                        .candidates
                        .iter()
                        .position(|c| c.id.as_deref() == Some(d.as_str()))
                        .map(|i| (i, q.candidates[i].clone()))
                        .or_else(|| {
                            q.positives
                                .iter()
                                .find(|c| c.id.as_deref() == Some(d.as_str()))
                                .map(|c| (usize::MAX, c.clone()))
                        });
                    match found {
                        Some(x) => known.push(x),
                        None => {
                            return Err(Error::Training(format!(
                                "the permutation of query '{}' names passage '{d}', which is neither among its first-stage candidates nor judged relevant",
                                q.id
                            )))
                        }
                    }
                }
                let mut shown: Vec<usize> = (0..known.len()).collect();
                shown.sort_by_key(|&i| known[i].0);
                let window: Vec<Passage> = shown.iter().map(|&i| known[i].1.clone()).collect();
                // ranking position r is window position shown⁻¹[r].
                let mut at = vec![0; shown.len()];
                for (pos, &r) in shown.iter().enumerate() {
                    at[r] = pos;
                }
                (window, at, p.rationale.as_deref())
            }
            _ => {
                let window: Vec<Passage> = q.candidates.iter().take(w).cloned().collect();
                let is_rel = |p: &Passage| p.id.as_deref().is_some_and(|d| relevant.contains(d));
                if window.len() < 2 || !window.iter().any(is_rel) {
                    skipped.no_positive_in_window += 1;
                    return Ok(None);
                }
                let rest_scores: Vec<f32> = match targets {
                    ListwiseTargets::Student(stage) => {
                        stage
                            .score(&Query::new(q.text.clone()), &window, None)?
                            .scores
                    }
                    _ => (0..window.len()).map(|i| -(i as f32)).collect(),
                };
                let mut order: Vec<usize> = (0..window.len()).collect();
                // Relevant first (first-stage order among them), then the rest by score.
                order.sort_by(|&a, &b| {
                    is_rel(&window[b]).cmp(&is_rel(&window[a])).then_with(|| {
                        if is_rel(&window[a]) {
                            a.cmp(&b)
                        } else {
                            rest_scores[b].total_cmp(&rest_scores[a])
                        }
                    })
                });
                (window, order, None)
            }
        };
        let ex = self.encode(&q.text, &window, order, rationale)?;
        if ex.ids.len() > self.cutoff() {
            skipped.over_cutoff += 1;
            return Ok(None);
        }
        Ok(Some(ex))
    }

    /// Window positions ordered by their identifier's first-token logit (ties keep
    /// the first stage's order).
    fn first_token_order(
        &self,
        params: &Trainable,
        query: &str,
        window: &[Passage],
    ) -> crate::Result<Vec<usize>> {
        let mut ids = self.render(&self.messages(query, window), true)?;
        ids.extend(&self.open);
        if ids.len() > self.cutoff() {
            // Past what the model reads: the window keeps its first-stage order.
            return Ok((0..window.len()).collect());
        }
        let mut packed = Packed::default();
        packed.push(&ids);
        let net = Net {
            base: &self.engine.base,
            params,
        };
        let logits = rayon::scope(|_| net.logits_detached(&packed, &[ids.len() as u32 - 1]))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let s: Vec<f32> = self.first_ids[..window.len()]
            .iter()
            .map(|&t| logits.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY))
            .collect();
        let mut order: Vec<usize> = (0..window.len()).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
        Ok(order)
    }

    fn validate(&self, params: Option<&Trainable>, dev: &[&TrainingQuery]) -> crate::Result<f64> {
        let w = self.options().window;
        let mut rankings = Vec::with_capacity(dev.len());
        for q in dev {
            let window = &q.candidates[..q.candidates.len().min(w)];
            let order = match params {
                Some(p) if window.len() >= 2 => self.first_token_order(p, &q.text, window)?,
                _ => (0..window.len()).collect(),
            };
            let ids = order.iter().map(|&i| candidate_id(window, i)).collect();
            rankings.push((ids, q.positives.as_slice()));
        }
        Ok(mean_ndcg(rankings))
    }

    /// Trains on `set` (one window per query: its first-stage candidates) with
    /// `targets`, and writes the CAUSAL_LM adapter to `out` (resuming from its
    /// checkpoints when it holds this run's).
    ///
    /// # Errors
    /// [`Error::Training`] when no query gives a window (each reason counted), for a
    /// permutation file naming queries the set does not have or passages it cannot
    /// find, and as [`PointwiseTrainer::train`](super::PointwiseTrainer::train).
    pub fn train(
        &self,
        set: &TrainingSet,
        targets: ListwiseTargets<'_>,
        out: &Path,
        progress: impl FnMut(&StepReport),
    ) -> crate::Result<TrainReport> {
        if let ListwiseTargets::Permutations(perms) = &targets {
            let known: HashSet<&str> = set.queries.iter().map(|q| q.id.as_str()).collect();
            let mut unknown: Vec<&str> = perms
                .by_query
                .keys()
                .map(String::as_str)
                .filter(|q| !known.contains(q))
                .collect();
            if !unknown.is_empty() {
                unknown.sort_unstable();
                return Err(Error::Training(format!(
                    "the permutations name {} queries the training set does not have (e.g. {})",
                    unknown.len(),
                    unknown[..unknown.len().min(5)].join(", ")
                )));
            }
        }
        let (dev_idx, train_idx) = self.engine.split(set.queries.len());
        let dev: Vec<&TrainingQuery> = dev_idx.iter().map(|&i| &set.queries[i]).collect();
        let mut skipped = set.skipped;
        let mut examples = Vec::with_capacity(train_idx.len());
        for &i in &train_idx {
            if let Some(ex) = self.example(&set.queries[i], &targets, &mut skipped)? {
                examples.push(ex);
            }
        }
        if examples.is_empty() {
            return Err(Error::Training(format!(
                "no training window among {} queries ({} held back): {} without a relevant passage in the top {}, {} over the cutoff of {} tokens, {} without a permutation",
                set.queries.len(),
                dev.len(),
                skipped.no_positive_in_window,
                self.options().window,
                skipped.over_cutoff,
                self.cutoff(),
                skipped.no_permutation
            )));
        }
        let cfg = &self.engine.config;
        let objective = self.options().objective;
        let spec = RunSpec {
            out,
            meta: self.engine.meta("CAUSAL_LM"),
            items: examples.len(),
            dev_ids: dev.iter().map(|q| q.id.clone()).collect(),
            queries: examples.len(),
            skipped,
        };
        let pass = |params: &Trainable, plan: &PassPlan<'_>| -> crate::Result<PassResult> {
            let mut packed = Packed::default();
            let mut rows = Vec::new();
            let mut answer = Vec::new();
            let mut firsts: Vec<(usize, &[usize])> = Vec::new();
            for &i in plan.picked {
                let ex = &examples[i];
                let start = packed.tokens();
                packed.push(&ex.ids);
                match objective {
                    ListwiseObjective::Answer => {
                        rows.extend(
                            (start + ex.prompt_len - 1..start + ex.ids.len() - 1).map(|r| r as u32),
                        );
                        answer.extend_from_slice(&ex.ids[ex.prompt_len..]);
                    }
                    ListwiseObjective::FirstToken => {
                        firsts.push((rows.len(), &ex.order));
                        rows.push((start + ex.ids.len() - 1) as u32);
                    }
                }
            }
            let net = Net {
                base: &self.engine.base,
                params,
            };
            let accum = cfg.grad_accum as f64;
            let checkpoint = self.engine.checkpointed(packed.tokens());
            let (value, grads) = net.logits_backward(
                &packed,
                &rows,
                Some(plan.dropout_seed),
                checkpoint,
                |logits: &Tensor| {
                    let loss = match objective {
                        ListwiseObjective::Answer => loss::answer_cross_entropy(logits, &answer)?,
                        ListwiseObjective::FirstToken => {
                            let mut sum: Option<Tensor> = None;
                            for &(row, order) in &firsts {
                                let l = loss::first_token_loss(
                                    &logits.get(row)?,
                                    &self.first_ids[..order.len()],
                                    order,
                                )?;
                                sum = Some(match sum {
                                    Some(s) => (s + l)?,
                                    None => l,
                                });
                            }
                            let sum = sum.ok_or_else(|| Error::Internal("an empty pass".into()))?;
                            (sum / firsts.len() as f64)?
                        }
                    };
                    Ok((loss / accum)?)
                },
            )?;
            Ok(PassResult {
                value: value * accum,
                grads,
                tokens: packed.tokens(),
            })
        };
        self.engine
            .run(spec, |params| self.validate(params, &dev), pass, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_and_print() {
        for o in [ListwiseObjective::Answer, ListwiseObjective::FirstToken] {
            assert_eq!(o.to_string().parse::<ListwiseObjective>().unwrap(), o);
        }
        assert_eq!(
            "sft".parse::<ListwiseObjective>().unwrap(),
            ListwiseObjective::Answer
        );
        assert!("listnet".parse::<ListwiseObjective>().is_err());
    }

    #[test]
    fn permutations_refuse_bad_entries_by_line() {
        let p = |q: &str, r: &[&str]| Permutation {
            query_id: q.into(),
            ranking: r.iter().map(|s| s.to_string()).collect(),
            rationale: None,
        };
        let ok = Permutations::from_entries(vec![p("q1", &["a", "b"]), p("q2", &["c", "d"])]);
        assert_eq!(ok.unwrap().len(), 2);
        let e = Permutations::from_entries(vec![p("q1", &["a", "b"]), p("q1", &["c", "d"])])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("given twice"), "{e}");
        let e = Permutations::from_entries(vec![p("q1", &["a", "a"])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'a' twice"), "{e}");
        let e = Permutations::from_entries(vec![p("q1", &["a"])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2"), "{e}");
        assert!(Permutations::from_entries(vec![]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perm.jsonl");
        std::fs::write(
            &path,
            "{\"query_id\": \"q1\", \"ranking\": [\"a\", \"b\"], \"rationale\": \"a first\"}\n\n{\"query_id\": \"q2\", \"rank\": []}\n",
        )
        .unwrap();
        let e = Permutations::read(&path).unwrap_err().to_string();
        assert!(e.contains("perm.jsonl:3:"), "{e}");
    }
}
