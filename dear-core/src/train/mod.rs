//! DeAR's stage-1 training in dear's own runtime: a LoRA adapter plus a `score` head
//! distilled on a frozen Llama base (`pointwise_reranker/modeling.py`,
//! `rank_loss.py`, `train_pointwise.sh` of DataScienceUIBK/DeAR-Reranking), written
//! as a peft adapter directory that dear and transformers + peft both load.
//!
//! Groups of one positive and `negatives` hard negatives feed a loss from
//! [`LossType`], optionally mixed with the teacher's KL term
//! `(1 - α)·main + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`; AdamW with warmup and decay,
//! gradient clipping and accumulation; checkpoints every N steps and resuming after
//! a kill; validation nDCG@10 on held-back training queries after every epoch, the
//! best epoch kept.
//!
//! The run is a pure function of its configuration and data: the query order of an
//! epoch, each group's positive and negatives and every dropout mask come from
//! generators seeded by `(seed, epoch, step)`, so a resumed run takes exactly the
//! steps the uninterrupted one would have.
//!
//! # Example
//! ```no_run
//! use dear_core::train::{PointwiseTrainer, TrainConfig, TrainingQuery, TrainingSet};
//! use dear_core::{LanguageModel, LoadOptions, Passage};
//! let lm = LanguageModel::load(dear_core::default_model_path(), &LoadOptions::default())?;
//! let set = TrainingSet {
//!     queries: vec![TrainingQuery {
//!         id: "q1".into(),
//!         text: "what do cats eat".into(),
//!         positives: vec![Passage::new("Cats eat meat.").with_id("d1")],
//!         negatives: vec![Passage::new("Paris is in France.").with_id("d2")],
//!         candidates: vec![],
//!     }],
//!     ..TrainingSet::default()
//! };
//! let config = TrainConfig { negatives: 1, max_steps: Some(2), dev_queries: 0, ..TrainConfig::default() };
//! let trainer = PointwiseTrainer::new(&lm, config)?;
//! let report = trainer.train(&set, None, "student".as_ref(), |_| {})?;
//! println!("{} steps, last loss {:.4}", report.steps, report.last_loss);
//! # Ok::<(), dear_core::Error>(())
//! ```

mod data;
mod fused;
#[cfg(test)]
mod golden_tests;
mod listwise;
mod loss;
mod net;
mod ops;
mod optim;
mod peft;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use self::data::{Skipped, TeacherRun, TrainingQuery, TrainingSet};
pub use self::listwise::{
    ListwiseObjective, ListwiseTargets, ListwiseTrainOptions, ListwiseTrainer, Permutation,
    Permutations,
};
pub use self::loss::LossType;
pub use self::optim::{AdamWConfig, Schedule};

use self::net::{Net, Packed, Trainable, PROJECTIONS};
use self::optim::Moments;
use self::peft::AdapterMeta;
use crate::model::frozen::FrozenLlama;
use crate::rerank::pointwise::{encode_dear, EncodedQuery};
use crate::{Error, LanguageModel, Passage, PointwiseStage, Query};

/// Stage-1 training options. The defaults are DeAR's (`modeling.py`'s `LoraConfig`,
/// `train_pointwise.sh`, transformers' Trainer defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The main loss.
    pub loss: LossType,
    /// Distillation temperature `T`.
    pub temperature: f64,
    /// Weight `α` of the KL term (used when a teacher is given).
    pub alpha: f64,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha (scaling `alpha / r`).
    pub lora_alpha: f64,
    /// Dropout on each LoRA input during training.
    pub lora_dropout: f64,
    /// Targeted projections (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
    /// `up_proj`, `down_proj`).
    pub targets: Vec<String>,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip (0 = none).
    pub max_grad_norm: f64,
    /// AdamW's moments and weight decay.
    pub adamw: AdamWConfig,
    /// Passes over the training queries.
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs`' count).
    pub max_steps: Option<usize>,
    /// Groups per forward/backward pass.
    pub batch_groups: usize,
    /// Passes accumulated per optimizer step.
    pub grad_accum: usize,
    /// Negatives per group (the group has `negatives + 1` passages).
    pub negatives: usize,
    /// Negatives are sampled from the first `negative_depth` non-relevant candidates.
    pub negative_depth: usize,
    /// Query tokens kept (DeAR's `q_max_len`).
    pub q_max_len: usize,
    /// Passage budget (DeAR's `p_max_len`).
    pub p_max_len: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (0 = only at the end).
    pub save_every: usize,
    /// Training queries held back for validation (0 = no validation).
    pub dev_queries: usize,
    /// Candidates each validation query reranks (its positives are not added: the
    /// first stage's top `eval_depth` as it is, as in a real search).
    pub eval_depth: usize,
    /// `base_model_name_or_path` written into `adapter_config.json`.
    pub base_model: String,
    /// Start from this adapter (a peft directory with a `score` head, the same rank,
    /// alpha and targets) instead of fresh weights: training continues it on new data
    /// or for another cycle, with a fresh optimizer and schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_adapter: Option<std::path::PathBuf>,
    /// Stage 2's settings, read by [`ListwiseTrainer`] only (`batch_groups` then
    /// counts windows per pass).
    #[serde(skip_serializing_if = "ListwiseTrainOptions::is_default")]
    pub listwise: ListwiseTrainOptions,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss: LossType::SoftmaxCe,
            temperature: 2.0,
            alpha: 0.1,
            lora_r: 32,
            lora_alpha: 64.0,
            lora_dropout: 0.1,
            targets: [
                "q_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
            learning_rate: 1e-4,
            schedule: Schedule::Linear,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            epochs: 2,
            max_steps: None,
            batch_groups: 2,
            grad_accum: 2,
            negatives: 7,
            negative_depth: 30,
            q_max_len: 32,
            p_max_len: 196,
            seed: 42,
            save_every: 50,
            dev_queries: 0,
            eval_depth: 30,
            base_model: String::new(),
            init_adapter: None,
            listwise: ListwiseTrainOptions::default(),
        }
    }
}

impl TrainConfig {
    /// DeAR's stage-2 defaults (`train_listwise.sh` with LLaMA-Factory's LoRA
    /// defaults): r 16, alpha 32, no dropout, every projection, lr 1e-4, cosine
    /// schedule with 10 % warmup, 2 windows per pass × 4 passes per step, answer
    /// tokens only, cutoff 5,000 tokens.
    pub fn listwise() -> Self {
        Self {
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            targets: PROJECTIONS
                .iter()
                .map(|p| net::short_name_of(p).to_string())
                .collect(),
            schedule: Schedule::Cosine,
            batch_groups: 2,
            grad_accum: 4,
            ..Self::default()
        }
    }

    fn validate(&self) -> crate::Result<Vec<usize>> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if self.lora_r == 0 || self.lora_r > 4096 {
            return bad(format!("lora_r must be in 1..=4096, got {}", self.lora_r));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return bad(format!("lora_alpha must be > 0, got {}", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate < 1.0)
        {
            return bad(format!(
                "learning_rate must be in (0, 1), got {}",
                self.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio must be in [0, 1], got {}",
                self.warmup_ratio
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("temperature must be > 0, got {}", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad(format!("alpha must be in [0, 1], got {}", self.alpha));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!(
                "max_grad_norm must be >= 0, got {}",
                self.max_grad_norm
            ));
        }
        if self.batch_groups == 0 || self.grad_accum == 0 || self.epochs == 0 {
            return bad("batch_groups, grad_accum and epochs must be > 0".into());
        }
        if self.negatives == 0 || self.negatives > 255 {
            return bad(format!(
                "negatives must be in 1..=255, got {}",
                self.negatives
            ));
        }
        if self.negative_depth < self.negatives {
            return bad(format!(
                "negative_depth ({}) must be at least negatives ({})",
                self.negative_depth, self.negatives
            ));
        }
        if self.q_max_len == 0 || self.p_max_len < 4 || self.q_max_len + self.p_max_len > 8192 {
            return bad("q_max_len must be > 0, p_max_len >= 4, and their sum at most 8192".into());
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be > 0".into());
        }
        let mut targets = Vec::new();
        for t in &self.targets {
            let p = PROJECTIONS
                .iter()
                .position(|x| x.rsplit('.').next() == Some(t.as_str()))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown LoRA target '{t}' (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                    ))
                })?;
            if !targets.contains(&p) {
                targets.push(p);
            }
        }
        if targets.is_empty() {
            return bad("no LoRA target module".into());
        }
        targets.sort_unstable();
        Ok(targets)
    }

    /// The settings a resumed run must share with its checkpoint.
    fn fingerprint(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            // Where to stop and how often to save may change between sessions.
            o.remove("max_steps");
            o.remove("save_every");
        }
        v
    }
}

/// Where teacher scores come from.
pub enum Teacher<'a> {
    /// A TREC run with the teacher's scores (DeAR precomputes them the same way).
    Run(&'a TeacherRun),
    /// Any pointwise stage dear runs (a RankLLaMA checkpoint, a DeAR student...),
    /// scored on the fly and cached per (query, passage).
    Model(&'a dyn PointwiseStage),
}

/// One optimizer step, as the progress callback sees it.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Epoch of the step (0-based).
    pub epoch: usize,
    /// The step's loss (mean over its passes).
    pub loss: f64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens the step read.
    pub tokens: usize,
    /// Tokens per second over the step (forward and backward).
    pub tokens_per_second: f64,
    /// Validation nDCG@10 when this step ended an epoch with validation.
    pub dev_ndcg: Option<f64>,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Optimizer steps done in all (resumed runs included).
    pub steps: usize,
    /// The step the run resumed from (0 for a fresh one).
    pub resumed_from: usize,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Training queries used and skipped.
    pub queries: usize,
    /// Queries left out, by reason.
    pub skipped: Skipped,
    /// Held-back validation queries.
    pub dev_queries: usize,
    /// Validation nDCG@10 of the first stage's order (the baseline).
    pub dev_first_stage_ndcg: Option<f64>,
    /// Validation nDCG@10 per finished epoch.
    pub dev_ndcg: Vec<f64>,
    /// The epoch whose adapter was kept (0-based), when validation ran.
    pub best_epoch: Option<usize>,
    /// Trainable values.
    pub parameters: usize,
    /// Mean tokens per second of the steps this session ran.
    pub tokens_per_second: f64,
    /// Wall time of this session's steps.
    pub seconds: f64,
}

/// What both trainers share: the frozen base, its tokenizer, the options, and the run
/// loop (the split, checkpoints and resuming, AdamW, validation, the adapter).
pub(crate) struct Engine {
    batch_log: Option<PathBuf>,
    pub(crate) base: FrozenLlama,
    pub(crate) tokenizer: crate::Tokenizer,
    pub(crate) config: TrainConfig,
    targets: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    total_steps: usize,
    config: serde_json::Value,
    dev_ndcg: Vec<f64>,
    best_epoch: Option<usize>,
    dev_first_stage_ndcg: Option<f64>,
    last_loss: f64,
}

const CHECKPOINTS: &str = "checkpoints";
/// The held-back validation query ids, one per line, written into the output folder.
const DEV_QUERIES: &str = "dev-queries.txt";

/// A pass whose graph would hold more than this recomputes each block in its backward
/// (gradient checkpointing) instead: a third more arithmetic, a block's memory.
const GRAPH_BUDGET_BYTES: usize = 6 << 30;

pub(crate) fn seed_for(seed: u64, parts: &[u64]) -> u64 {
    // SplitMix64 over the parts: well-spread seeds for (seed, epoch, query, ...).
    let mut x = seed;
    for &p in parts {
        x = x.wrapping_add(p.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}

/// One forward/backward pass, as the run loop asks for it.
pub(crate) struct PassPlan<'a> {
    pub(crate) step: usize,
    pub(crate) epoch: usize,
    pub(crate) micro: usize,
    /// Indices into the training items.
    pub(crate) picked: &'a [usize],
    pub(crate) dropout_seed: u64,
}

/// What a pass gives back.
pub(crate) struct PassResult {
    /// The pass's loss (before the division by the accumulation).
    pub(crate) value: f64,
    /// Gradients of the loss divided by the accumulation, in [`Trainable::named`] order.
    pub(crate) grads: Vec<Vec<f32>>,
    pub(crate) tokens: usize,
}

/// What the run loop needs besides the configuration.
pub(crate) struct RunSpec<'a> {
    pub(crate) out: &'a Path,
    pub(crate) meta: AdapterMeta,
    /// Training items (groups, windows).
    pub(crate) items: usize,
    /// Held-back query ids (written to `dev-queries.txt`).
    pub(crate) dev_ids: Vec<String>,
    /// For the report.
    pub(crate) queries: usize,
    pub(crate) skipped: Skipped,
}

impl Engine {
    fn new(lm: &LanguageModel, config: TrainConfig) -> crate::Result<Self> {
        let targets = config.validate()?;
        let base = lm.llama().frozen()?;
        let mut config = config;
        if config.base_model.is_empty() {
            config.base_model = lm.source().to_string();
        }
        Ok(Self {
            batch_log: None,
            base,
            tokenizer: lm.tokenizer().clone(),
            config,
            targets,
        })
    }

    fn meta(&self, task_type: &'static str) -> AdapterMeta {
        AdapterMeta {
            task_type,
            r: self.config.lora_r,
            alpha: self.config.lora_alpha,
            dropout: self.config.lora_dropout,
            targets: self.targets.clone(),
            base_model: self.config.base_model.clone(),
        }
    }

    /// The seeded split of `n` queries: (held back, trained on), as indices.
    pub(crate) fn split(&self, n: usize) -> (Vec<usize>, Vec<usize>) {
        let cfg = &self.config;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed_for(cfg.seed, &[0xdef])));
        let dev_n = if cfg.dev_queries > 0 {
            cfg.dev_queries.min(n / 2)
        } else {
            0
        };
        (order[..dev_n].to_vec(), order[dev_n..].to_vec())
    }

    /// The starting parameters: fresh, or the `init_adapter` checked against the run.
    fn fresh(&self, want: &AdapterMeta) -> crate::Result<Trainable> {
        let score = want.task_type == "SEQ_CLS";
        if let Some(dir) = &self.config.init_adapter {
            let (params, meta) = peft::load(dir, &self.base, self.config.lora_dropout)?;
            let mismatch = if score && params.score.is_none() {
                Some("it has no `score` head (a SEQ_CLS adapter is needed)".to_string())
            } else if !score && params.score.is_some() {
                Some("it has a `score` head (a CAUSAL_LM adapter is needed)".to_string())
            } else if meta.r != want.r {
                Some(format!("its rank is {}, the run's {}", meta.r, want.r))
            } else if (meta.alpha - want.alpha).abs() > 1e-9 {
                Some(format!(
                    "its lora_alpha is {}, the run's {}",
                    meta.alpha, want.alpha
                ))
            } else if meta.targets != want.targets {
                let names =
                    |t: &[usize]| -> Vec<&str> { t.iter().map(|&i| PROJECTIONS[i]).collect() };
                Some(format!(
                    "it targets {:?}, the run {:?}",
                    names(&meta.targets),
                    names(&want.targets)
                ))
            } else {
                None
            };
            if let Some(why) = mismatch {
                return Err(Error::InvalidArgument(format!(
                    "cannot start from {}: {why}",
                    dir.display()
                )));
            }
            return Ok(params);
        }
        Trainable::init(
            &self.base,
            &self.targets,
            self.config.lora_r,
            self.config.lora_alpha / self.config.lora_r as f64,
            self.config.lora_dropout,
            score,
            self.config.seed,
        )
    }

    /// About how many bytes one pass's autograd graph holds for `tokens` tokens: the
    /// outputs of a block's steps (norms, projections, rotary, attention, MLP).
    pub(crate) fn graph_bytes(&self, tokens: usize) -> usize {
        let c = &self.base.config;
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        let per_token = 7 * c.hidden_size + 3 * q + 3 * kv + 3 * c.intermediate_size;
        tokens * per_token * 4 * c.num_layers
    }

    /// Whether a pass of `tokens` tokens should recompute blocks in its backward.
    pub(crate) fn checkpointed(&self, tokens: usize) -> bool {
        self.graph_bytes(tokens) > GRAPH_BUDGET_BYTES
    }

    /// The run loop: resumes from the newest checkpoint in `spec.out` or starts
    /// fresh, then takes optimizer steps of `grad_accum` passes of `batch_groups`
    /// items each (`pass` computes one), validates after every epoch (`validate`:
    /// `None` = the first stage's order), keeps the best epoch and writes the adapter
    /// and `training.json`.
    fn run(
        &self,
        spec: RunSpec<'_>,
        mut validate: impl FnMut(Option<&Trainable>) -> crate::Result<f64>,
        mut pass: impl FnMut(&Trainable, &PassPlan<'_>) -> crate::Result<PassResult>,
        mut progress: impl FnMut(&StepReport),
    ) -> crate::Result<TrainReport> {
        let cfg = &self.config;
        let out = spec.out;
        let per_step = cfg.batch_groups * cfg.grad_accum;
        let steps_per_epoch = spec.items.div_ceil(per_step);
        let total_steps = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs);
        let warmup = (cfg.warmup_ratio * total_steps as f64).ceil() as usize;

        // Output directory and resuming.
        let ckpt_root = out.join(CHECKPOINTS);
        let mut state = CheckpointState {
            step: 0,
            total_steps,
            config: cfg.fingerprint(),
            dev_ndcg: Vec::new(),
            best_epoch: None,
            dev_first_stage_ndcg: None,
            last_loss: f64::NAN,
        };
        let (params, mut moments) = match latest_checkpoint(&ckpt_root)? {
            Some(dir) => {
                let st: CheckpointState = read_json(&dir.join("state.json"))?;
                if st.config != state.config {
                    return Err(Error::Training(format!(
                        "{} holds a run with other settings; train into a new directory or pass the same options",
                        dir.display()
                    )));
                }
                let (params, _) = peft::load(&dir, &self.base, cfg.lora_dropout)?;
                let moments = read_moments(&dir.join("optimizer.safetensors"), &params)?;
                state = CheckpointState { total_steps, ..st };
                (params, moments)
            }
            None => {
                if out.exists()
                    && std::fs::read_dir(out)
                        .map(|mut d| d.next().is_some())
                        .unwrap_or(true)
                {
                    return Err(Error::Training(format!(
                        "{} already exists and holds no checkpoint of this run (choose another directory or remove it)",
                        out.display()
                    )));
                }
                std::fs::create_dir_all(&ckpt_root).map_err(|e| Error::io(&ckpt_root, e))?;
                let params = self.fresh(&spec.meta)?;
                let moments = vec![Moments::default(); params.named().len()];
                (params, moments)
            }
        };
        let resumed_from = state.step;
        let has_dev = !spec.dev_ids.is_empty();
        if has_dev {
            // The held-back ids, for tuning anything else (fusion weights) on them only.
            let path = out.join(DEV_QUERIES);
            let ids: String = spec.dev_ids.iter().map(|q| format!("{q}\n")).collect();
            std::fs::write(&path, ids).map_err(|e| Error::io(&path, e))?;
            if state.dev_first_stage_ndcg.is_none() {
                state.dev_first_stage_ndcg = Some(validate(None)?);
            }
        }

        let started = Instant::now();
        let mut tokens_done = 0usize;
        let mut step = state.step;
        while step < total_steps {
            let t0 = Instant::now();
            let epoch = step / steps_per_epoch;
            let within = step % steps_per_epoch;
            let mut epoch_order: Vec<usize> = (0..spec.items).collect();
            epoch_order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed_for(
                cfg.seed,
                &[1, epoch as u64],
            )));
            let mut grads: Vec<Vec<f32>> = Vec::new();
            let mut loss_sum = 0.0;
            let mut tokens = 0usize;
            let mut passes = 0usize;
            for micro in 0..cfg.grad_accum {
                let start = (within * cfg.grad_accum + micro) * cfg.batch_groups;
                let picked: Vec<usize> = (start..start + cfg.batch_groups)
                    .filter(|&i| i < epoch_order.len())
                    .map(|i| epoch_order[i])
                    .collect();
                if picked.is_empty() {
                    continue;
                }
                let plan = PassPlan {
                    step,
                    epoch,
                    micro,
                    picked: &picked,
                    dropout_seed: seed_for(cfg.seed, &[3, step as u64, micro as u64]),
                };
                let r = pass(&params, &plan)?;
                if !r.value.is_finite() {
                    return Err(self.diverged(step, r.value, &ckpt_root));
                }
                if grads.is_empty() {
                    grads = r.grads;
                } else {
                    for (acc, gv) in grads.iter_mut().zip(r.grads) {
                        for (a, b) in acc.iter_mut().zip(gv) {
                            *a += b;
                        }
                    }
                }
                loss_sum += r.value;
                tokens += r.tokens;
                passes += 1;
            }
            let grad_norm = optim::clip_grad_norm(&mut grads, cfg.max_grad_norm);
            if !grad_norm.is_finite() {
                return Err(self.diverged(step, grad_norm, &ckpt_root));
            }
            let lr = cfg.learning_rate * cfg.schedule.factor(step, warmup, total_steps);
            for (((_, var), grad), m) in params.named().iter().zip(&grads).zip(moments.iter_mut()) {
                let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                optim::adamw_step(&cfg.adamw, lr, step as u64 + 1, &mut p, grad, m);
                var.set(&Tensor::from_vec(p, var.shape(), &Device::Cpu)?)?;
            }
            step += 1;
            tokens_done += tokens;
            state.step = step;
            state.last_loss = loss_sum / passes.max(1) as f64;
            let epoch_done = step.is_multiple_of(steps_per_epoch) || step == total_steps;
            let mut dev_ndcg = None;
            if epoch_done && has_dev {
                let ndcg = validate(Some(&params))?;
                let epoch_index = (step - 1) / steps_per_epoch;
                if state.dev_ndcg.len() <= epoch_index {
                    state.dev_ndcg.resize(epoch_index + 1, f64::NAN);
                }
                state.dev_ndcg[epoch_index] = ndcg;
                let best = state
                    .best_epoch
                    .and_then(|b| state.dev_ndcg.get(b).copied());
                if best.is_none_or(|b| ndcg > b) {
                    state.best_epoch = Some(epoch_index);
                    // Written aside and renamed: a kill never leaves half a best adapter.
                    let best_dir = out.join("best");
                    let tmp = out.join("best.tmp");
                    let _ = std::fs::remove_dir_all(&tmp);
                    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
                    peft::save(&tmp, &params, &spec.meta)?;
                    let _ = std::fs::remove_dir_all(&best_dir);
                    std::fs::rename(&tmp, &best_dir).map_err(|e| Error::io(&best_dir, e))?;
                }
                dev_ndcg = Some(ndcg);
            }
            let secs = t0.elapsed().as_secs_f64();
            progress(&StepReport {
                step,
                total_steps,
                epoch,
                loss: state.last_loss,
                learning_rate: lr,
                grad_norm,
                tokens,
                tokens_per_second: tokens as f64 / secs.max(1e-9),
                dev_ndcg,
            });
            if (cfg.save_every > 0 && step.is_multiple_of(cfg.save_every)) || epoch_done {
                save_checkpoint(&ckpt_root, &params, &moments, &state, &spec.meta)?;
            }
        }
        // The adapter: the best validated epoch when validation ran, else the last step.
        match state.best_epoch {
            Some(_) => {
                let best = out.join("best");
                for f in ["adapter_config.json", "adapter_model.safetensors"] {
                    std::fs::copy(best.join(f), out.join(f))
                        .map_err(|e| Error::io(out.join(f), e))?;
                }
            }
            None => peft::save(out, &params, &spec.meta)?,
        }
        let seconds = started.elapsed().as_secs_f64();
        let report = TrainReport {
            steps: step,
            resumed_from,
            last_loss: state.last_loss,
            queries: spec.queries,
            skipped: spec.skipped,
            dev_queries: spec.dev_ids.len(),
            dev_first_stage_ndcg: state.dev_first_stage_ndcg,
            dev_ndcg: state.dev_ndcg.clone(),
            best_epoch: state.best_epoch,
            parameters: params.parameters(),
            tokens_per_second: tokens_done as f64 / seconds.max(1e-9),
            seconds,
        };
        let path = out.join("training.json");
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "config": cfg,
            "report": report,
        }))
        .map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        Ok(report)
    }

    fn diverged(&self, step: usize, value: f64, ckpt_root: &Path) -> Error {
        let last = latest_checkpoint(ckpt_root).ok().flatten();
        Error::Training(format!(
            "the loss became {value} at step {}; stopped. {}",
            step + 1,
            match last {
                Some(d) => format!(
                    "The last good checkpoint is {} (lower the learning rate and resume from it)",
                    d.display()
                ),
                None => "No checkpoint was written before it".to_string(),
            }
        ))
    }
}

/// Mean nDCG@10 of rankings: per query, the candidate ids in ranked order and the
/// ids judged relevant.
pub(crate) fn mean_ndcg<'a>(
    rankings: impl IntoIterator<Item = (Vec<String>, &'a [Passage])>,
) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (ranked, positives) in rankings {
        let judgments: std::collections::BTreeMap<String, i32> = positives
            .iter()
            .filter_map(|p| p.id.clone())
            .map(|id| (id, 1))
            .collect();
        let scored: Vec<(String, f64)> = ranked
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, -(i as f64)))
            .collect();
        sum += crate::eval::ndcg_at(&scored, &judgments, 10);
        n += 1;
    }
    sum / n.max(1) as f64
}

/// Stage-1 trainer over one base model.
pub struct PointwiseTrainer {
    engine: Engine,
    bos: u32,
}

impl PointwiseTrainer {
    /// A trainer on `lm`'s weights (expanded to f32 on the CPU; quantized bases are
    /// dequantized once) with `config`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for absurd options, a base with unmerged adapters,
    /// or a tokenizer without a bos token (DeAR's input needs it).
    pub fn new(lm: &LanguageModel, config: TrainConfig) -> crate::Result<Self> {
        let engine = Engine::new(lm, config)?;
        let bos = lm
            .tokenizer()
            .bos_token_id()
            .or(engine.base.config.bos_token_id)
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "DeAR's input needs a bos token and the tokenizer has none".into(),
                )
            })?;
        Ok(Self { engine, bos })
    }

    /// Also writes every pass's token ids to `path` as JSON Lines (a `{"config": …}`
    /// line, then `{"step", "micro", "groups": [[ids, …], …]}` per pass), so that
    /// another trainer can replay exactly the same batches (`scripts/train_peer.py`).
    #[must_use]
    pub fn with_batch_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.engine.batch_log = Some(path.into());
        self
    }

    /// The options in use.
    pub fn config(&self) -> &TrainConfig {
        &self.engine.config
    }

    fn encode(&self, query: &str, passages: &[Passage]) -> crate::Result<EncodedQuery> {
        let cfg = &self.engine.config;
        encode_dear(
            &self.engine.tokenizer,
            self.bos,
            query,
            passages,
            cfg.q_max_len,
            cfg.p_max_len,
        )
    }

    /// Student scores of passages for a query (no dropout, no graph kept).
    fn score(
        &self,
        params: &Trainable,
        query: &str,
        passages: &[Passage],
    ) -> crate::Result<Vec<f32>> {
        let enc = self.encode(query, passages)?;
        let mut out = Vec::with_capacity(passages.len());
        // Batches of about 4k tokens keep the graph small.
        let mut batch = Packed::default();
        let net = Net {
            base: &self.engine.base,
            params,
        };
        for i in 0..passages.len() {
            batch.push(&enc.full(i));
            if batch.tokens() >= 4096 || i + 1 == passages.len() {
                out.extend(rayon::scope(|_| net.scores_detached(&batch))?);
                batch = Packed::default();
            }
        }
        Ok(out)
    }

    /// Mean nDCG@10 over the dev queries of the first stage's top `eval_depth`
    /// (`params` = None) or of the student's reranking of them. Relevant passages
    /// the first stage missed count in the ideal ranking, as in any evaluation.
    fn validate(&self, params: Option<&Trainable>, dev: &[&TrainingQuery]) -> crate::Result<f64> {
        let mut rankings = Vec::with_capacity(dev.len());
        for q in dev {
            let depth = q.candidates.len().min(self.engine.config.eval_depth);
            let cands = &q.candidates[..depth];
            let mut order: Vec<usize> = (0..cands.len()).collect();
            if let Some(p) = params.filter(|_| !cands.is_empty()) {
                let s = self.score(p, &q.text, cands)?;
                order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            }
            let ids = order.iter().map(|&i| candidate_id(cands, i)).collect();
            rankings.push((ids, q.positives.as_slice()));
        }
        Ok(mean_ndcg(rankings))
    }

    /// Trains on `set` and writes the adapter to `out` (which must not exist, unless
    /// it holds this run's checkpoints: then the run resumes from the latest one).
    /// `progress` sees every step.
    ///
    /// # Errors
    /// [`Error::Training`] for a set with no query, an `out` that exists and is not
    /// this run's, a checkpoint of another configuration, or a loss that stops being
    /// finite (the last good checkpoint is kept and named); I/O and model errors.
    pub fn train(
        &self,
        set: &TrainingSet,
        teacher: Option<Teacher<'_>>,
        out: &Path,
        progress: impl FnMut(&StepReport),
    ) -> crate::Result<TrainReport> {
        let cfg = &self.engine.config;
        if cfg.loss.needs_teacher() && teacher.is_none() {
            return Err(Error::InvalidArgument(format!(
                "the loss {} needs a teacher (a run with scores or a model)",
                cfg.loss
            )));
        }
        let (dev_idx, train_idx) = self.engine.split(set.queries.len());
        let dev: Vec<&TrainingQuery> = dev_idx.iter().map(|&i| &set.queries[i]).collect();
        let mut train: Vec<&TrainingQuery> = train_idx.iter().map(|&i| &set.queries[i]).collect();
        train.retain(|q| !q.positives.is_empty() && q.negatives.len() >= cfg.negatives);
        if train.is_empty() {
            return Err(Error::Training(format!(
                "no training query with a positive and {} negatives ({} given, {} held back for validation)",
                cfg.negatives,
                set.queries.len(),
                dev.len()
            )));
        }
        let mut batch_log = match &self.engine.batch_log {
            Some(path) => {
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
                );
                let line = serde_json::json!({ "config": cfg });
                writeln!(f, "{line}").map_err(|e| Error::io(path, e))?;
                Some((path.clone(), f))
            }
            None => None,
        };
        let mut teacher_cache: HashMap<(String, String), f32> = HashMap::new();
        let spec = RunSpec {
            out,
            meta: self.engine.meta("SEQ_CLS"),
            items: train.len(),
            dev_ids: dev.iter().map(|q| q.id.clone()).collect(),
            queries: train.len(),
            skipped: set.skipped,
        };
        let pass = |params: &Trainable, plan: &PassPlan<'_>| -> crate::Result<PassResult> {
            let mut packed = Packed::default();
            let mut teacher_rows = Vec::new();
            let mut logged_groups = Vec::new();
            for &qi in plan.picked {
                let q = train[qi];
                let mut rng = ChaCha8Rng::seed_from_u64(seed_for(
                    cfg.seed,
                    &[2, plan.epoch as u64, qi as u64],
                ));
                let pos = q
                    .positives
                    .choose(&mut rng)
                    .cloned()
                    .ok_or_else(|| Error::Internal("no positive".into()))?;
                let pool = &q.negatives[..q.negatives.len().min(cfg.negative_depth)];
                let negs: Vec<Passage> = pool
                    .choose_multiple(&mut rng, cfg.negatives)
                    .cloned()
                    .collect();
                let mut group = vec![pos];
                group.extend(negs);
                let enc = self.encode(&q.text, &group)?;
                let seqs: Vec<Vec<u32>> = (0..group.len()).map(|i| enc.full(i)).collect();
                for seq in &seqs {
                    packed.push(seq);
                }
                if batch_log.is_some() {
                    logged_groups.push(seqs);
                }
                if let Some(t) = &teacher {
                    teacher_rows.push(self.teacher_scores(t, q, &group, &mut teacher_cache)?);
                }
            }
            if let Some((path, f)) = batch_log.as_mut() {
                let line = serde_json::json!({ "step": plan.step, "micro": plan.micro, "groups": logged_groups });
                writeln!(f, "{line}").map_err(|e| Error::io(&*path, e))?;
            }
            let net = Net {
                base: &self.engine.base,
                params,
            };
            let groups = plan.picked.len();
            let accum = cfg.grad_accum as f64;
            let teacher_scores = teacher.as_ref().map(|_| teacher_rows.as_slice());
            let checkpoint = self.engine.checkpointed(packed.tokens());
            let (value, grads) = net.scores_backward(
                &packed,
                Some(plan.dropout_seed),
                checkpoint,
                |scores: &Tensor| {
                    let scores = scores.reshape((groups, cfg.negatives + 1))?;
                    let loss = loss::total_loss(
                        cfg.loss,
                        &scores,
                        teacher_scores,
                        cfg.temperature,
                        cfg.alpha,
                    )?;
                    Ok((loss / accum)?)
                },
            )?;
            Ok(PassResult {
                value: value * accum,
                grads,
                tokens: packed.tokens(),
            })
        };
        let report = self
            .engine
            .run(spec, |params| self.validate(params, &dev), pass, progress)?;
        if let Some((path, mut f)) = batch_log.take() {
            f.flush().map_err(|e| Error::io(&path, e))?;
        }
        Ok(report)
    }

    fn teacher_scores(
        &self,
        teacher: &Teacher<'_>,
        q: &TrainingQuery,
        group: &[Passage],
        cache: &mut HashMap<(String, String), f32>,
    ) -> crate::Result<Vec<f32>> {
        match teacher {
            Teacher::Run(run) => group
                .iter()
                .map(|p| {
                    let doc = p.id.as_deref().unwrap_or("");
                    run.score(&q.id, doc).ok_or_else(|| {
                        Error::Training(format!(
                            "the teacher run has no score for query '{}' and passage '{doc}' (restrict the set to the run first)",
                            q.id
                        ))
                    })
                })
                .collect(),
            Teacher::Model(stage) => {
                let key = |p: &Passage| (q.id.clone(), p.id.clone().unwrap_or_else(|| p.text.clone()));
                let missing: Vec<Passage> = group.iter().filter(|p| !cache.contains_key(&key(p))).cloned().collect();
                if !missing.is_empty() {
                    let scored = stage.score(&Query::new(q.text.clone()), &missing, None)?;
                    for (p, s) in missing.iter().zip(scored.scores) {
                        cache.insert(key(p), s);
                    }
                }
                Ok(group.iter().map(|p| cache[&key(p)]).collect())
            }
        }
    }
}

/// The id a candidate is judged by (`candidate-N` for one without an id).
pub(crate) fn candidate_id(candidates: &[Passage], i: usize) -> String {
    candidates[i]
        .id
        .clone()
        .unwrap_or_else(|| format!("candidate-{i}"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> crate::Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, e))
}

/// The newest complete checkpoint under `root` (`step-N` directories; a `.tmp` one
/// is an interrupted write and ignored).
fn latest_checkpoint(root: &Path) -> crate::Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(None);
    };
    let mut best: Option<(usize, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if e.path().join("state.json").is_file() && best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, e.path()));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn save_checkpoint(
    root: &Path,
    params: &Trainable,
    moments: &[Moments],
    state: &CheckpointState,
    meta: &AdapterMeta,
) -> crate::Result<()> {
    let name = format!("step-{:07}", state.step);
    let tmp = root.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    peft::save(&tmp, params, meta)?;
    let mut opt = Vec::new();
    for ((key, var), m) in params.named().iter().zip(moments) {
        let shape = var.dims().to_vec();
        let n = var.elem_count();
        let fill = |v: &Vec<f32>| {
            if v.len() == n {
                v.clone()
            } else {
                vec![0.0; n]
            }
        };
        opt.push((format!("m/{key}"), fill(&m.m), shape.clone()));
        opt.push((format!("v/{key}"), fill(&m.v), shape));
    }
    peft::write_safetensors(&tmp.join("optimizer.safetensors"), &opt)?;
    let path = tmp.join("state.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    let dest = root.join(&name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    // Keep the two newest checkpoints.
    let mut steps: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("step-")?
                .parse::<usize>()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    steps.sort();
    for (_, p) in steps.iter().rev().skip(2) {
        let _ = std::fs::remove_dir_all(p);
    }
    Ok(())
}

fn read_moments(path: &Path, params: &Trainable) -> crate::Result<Vec<Moments>> {
    let st = crate::loader::safetensors::mmap(path)?;
    let mut out = Vec::new();
    for (key, var) in params.named() {
        let get = |k: &str| -> crate::Result<Vec<f32>> {
            let t = st.load(k, &Device::Cpu).map_err(|_| {
                Error::Training(format!("{}: optimizer state has no '{k}'", path.display()))
            })?;
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            if v.len() != var.elem_count() {
                return Err(Error::Training(format!(
                    "{}: '{k}' has the wrong size",
                    path.display()
                )));
            }
            Ok(v)
        };
        out.push(Moments {
            m: get(&format!("m/{key}"))?,
            v: get(&format!("v/{key}"))?,
        });
    }
    Ok(out)
}
