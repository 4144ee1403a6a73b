//! `dear train`: DeAR's stage-1 distillation (a LoRA adapter + `score` head) or, with
//! `--stage listwise`, stage 2 (a CAUSAL_LM LoRA adapter that writes rankings), from
//! judged BEIR collections and/or self-supervised title → passage pairs, with BM25
//! candidates from a tantivy index built on the fly: flag parsing, data loading and a
//! progress bar around [`PointwiseTrainer`] and [`ListwiseTrainer`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use dear::dear_core::eval::{Dataset, FirstStage, RunFirstStage};
use dear::dear_core::train::{
    ListwiseObjective, ListwiseTargets, ListwiseTrainer, LossType, Permutations, PointwiseTrainer,
    Schedule, Teacher, TeacherRun, TrainConfig, TrainingSet,
};
use dear::dear_core::{corpus, Passage, PointwiseConfig, PointwiseScorer};
use dear::dear_tantivy::{IndexFirstStage, PassageIndex};
use indicatif::ProgressBar;

use crate::pipeline::progress;
use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// pointwise (stage 1: a `score` head, DeAR's distilled student) or listwise
    /// (stage 2: a CAUSAL_LM adapter fine-tuned to write rankings).
    #[arg(long, default_value = "pointwise", value_parser = ["pointwise", "listwise"])]
    stage: String,
    /// Stage 2's loss: answer (cross-entropy of the answer tokens, DeAR) or
    /// first-token (FIRST's ranking loss on the first identifier's logits).
    #[arg(long, default_value = "answer")]
    objective: String,
    /// Stage 2: passages per training window (the first stage's top N).
    #[arg(long, default_value_t = 20)]
    window: usize,
    /// Stage 2: windows longer than N tokens (prompt and answer) are skipped.
    #[arg(long, default_value_t = 5000)]
    cutoff_len: usize,
    /// Stage 2: the prompt format, rankllm or plain.
    #[arg(long, default_value = "rankllm")]
    prompt: String,
    /// Stage 2: teacher permutations (JSON Lines: query_id, ranking, rationale)
    /// instead of targets from the judgments.
    #[arg(long, conflicts_with = "student_adapter")]
    permutations: Option<PathBuf>,
    /// Stage 2: order the non-relevant passages of each window by this pointwise
    /// adapter on --model (DeAR's stage-1 student) instead of the first stage.
    #[arg(long)]
    student_adapter: Option<PathBuf>,
    /// A BEIR folder with judgments (corpus.jsonl, queries.jsonl, qrels/<split>.tsv);
    /// repeat for several. `DIR:SPLIT` picks another split than --split for it.
    #[arg(long)]
    dataset: Vec<String>,
    /// The judgments trained on (qrels/<split>.tsv). Never train on what you report.
    #[arg(long, default_value = "train")]
    split: String,
    /// Self-supervised pairs from a corpus without judgments: each passage's title (a
    /// BEIR corpus.jsonl's `title`, a text folder's first heading) is the query of its
    /// own text. Repeatable.
    #[arg(long)]
    self_supervised: Vec<PathBuf>,
    /// Take the negatives from this TREC run instead of BM25 (one --dataset only).
    #[arg(long)]
    run: Option<PathBuf>,
    /// A TREC run with the teacher's scores (DeAR precomputes its 13B teacher's), for
    /// the queries of one --dataset.
    #[arg(long, conflicts_with = "teacher")]
    teacher_run: Option<PathBuf>,
    /// A teacher model scored on the fly (a DeAR/RankLLaMA checkpoint, GGUF, HF dir or
    /// hub id), with --teacher-adapter merged in when given.
    #[arg(long)]
    teacher: Option<String>,
    /// A PEFT adapter for --teacher.
    #[arg(long, requires = "teacher")]
    teacher_adapter: Option<String>,
    /// Output adapter directory.
    #[arg(long)]
    out: PathBuf,
    /// `base_model_name_or_path` written into adapter_config.json (the hub id peft
    /// loads the base from) [default: the --model path].
    #[arg(long)]
    base_model_name: Option<String>,
    /// Replace --out if it exists (its checkpoints are lost).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Continue the run in --out from its latest checkpoint (same options).
    #[arg(long)]
    resume: bool,
    /// Start from this pointwise adapter (same --lora-r, --lora-alpha and targets)
    /// instead of fresh weights: another training cycle, or new data, on an adapter
    /// `dear train` or peft wrote.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// Main loss: softmax_ce, ranknet_binary, ranknet_binary_softmax_ce,
    /// listnet_binary, lambda_loss_binary, ranknet_teacher, listnet_teacher,
    /// lambda_loss_teacher.
    #[arg(long, default_value = "softmax_ce")]
    loss: String,
    /// Distillation temperature T.
    #[arg(long, default_value_t = 2.0)]
    temperature: f64,
    /// Weight of the KL term (with a teacher).
    #[arg(long, default_value_t = 0.1)]
    alpha: f64,
    /// LoRA rank [default: 32 pointwise, 16 listwise].
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha [default: 64 pointwise, 32 listwise].
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// LoRA dropout [default: 0.1 pointwise, 0 listwise].
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Comma-separated LoRA targets [default: q,v,o,gate,up,down pointwise; all seven
    /// projections listwise].
    #[arg(long)]
    targets: Option<String>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// linear, cosine or constant [default: linear pointwise, cosine listwise].
    #[arg(long)]
    schedule: Option<String>,
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Stop after N optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Groups (1 positive + negatives), or listwise windows, per forward/backward pass.
    #[arg(long, default_value_t = 2)]
    batch_groups: usize,
    /// Passes per optimizer step [default: 2 pointwise, 4 listwise].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Negatives per group.
    #[arg(long, default_value_t = 7)]
    negatives: usize,
    /// Negatives are drawn from the top N non-relevant first-stage candidates.
    #[arg(long, default_value_t = 30)]
    negative_depth: usize,
    #[arg(long, default_value_t = 32)]
    q_max_len: usize,
    #[arg(long, default_value_t = 196)]
    p_max_len: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// Training queries held back to validate each epoch (the best epoch is kept).
    #[arg(long, default_value_t = 50)]
    dev_queries: usize,
    /// Use at most N queries of each source (in file order).
    #[arg(long)]
    max_queries: Option<usize>,
    /// Write every pass's token ids to FILE (JSON Lines), to replay the same batches
    /// in another trainer (scripts/train_peer.py).
    #[arg(long)]
    save_batches: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn index_of(
    passages: impl FnOnce(&mut dyn FnMut(Passage)) -> dear::dear_core::Result<()>,
) -> anyhow::Result<PassageIndex> {
    let index = PassageIndex::create_in_ram()?;
    let mut writer = index.writer()?;
    let mut failed = None;
    passages(&mut |p| {
        if failed.is_none() {
            if let Err(e) = writer.upsert(&p) {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    writer.commit()?;
    Ok(index)
}

fn read_any(path: &Path) -> anyhow::Result<Vec<Passage>> {
    let mut out = Vec::new();
    if path.is_dir() && path.join("corpus.jsonl").is_file() {
        corpus::read_beir_corpus(&path.join("corpus.jsonl"), |p| out.push(p))?;
    } else if path.is_dir() {
        corpus::read_text_folder(path, |p| out.push(p))?;
    } else {
        corpus::read_beir_corpus(path, |p| out.push(p))?;
    }
    Ok(out)
}

pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    if args.dataset.is_empty() && args.self_supervised.is_empty() {
        bail!("nothing to train on: give --dataset DIR (judged) and/or --self-supervised CORPUS");
    }
    if args.teacher_run.is_some() && (args.dataset.len() != 1 || !args.self_supervised.is_empty()) {
        bail!("--teacher-run scores the queries of one --dataset; give exactly one and no --self-supervised");
    }
    if args.run.is_some() && args.dataset.len() != 1 {
        bail!("--run gives the negatives of one --dataset; give exactly one");
    }
    if args.out.exists() {
        if args.overwrite {
            std::fs::remove_dir_all(&args.out)
                .with_context(|| format!("removing {}", args.out.display()))?;
        } else if !args.resume {
            bail!(
                "{} already exists: --resume continues its run, --overwrite replaces it",
                args.out.display()
            );
        } else if !args.out.join("checkpoints").is_dir() {
            bail!(
                "--resume: {} holds no checkpoints of a run",
                args.out.display()
            );
        }
    } else if args.resume {
        bail!("--resume: {} does not exist", args.out.display());
    }
    let listwise = args.stage == "listwise";
    if !listwise && (args.permutations.is_some() || args.student_adapter.is_some()) {
        bail!("--permutations and --student-adapter build stage-2 targets: add --stage listwise");
    }
    if listwise && (args.teacher.is_some() || args.teacher_run.is_some()) {
        bail!("--teacher and --teacher-run distil stage 1; stage 2 learns from --permutations (a teacher's rankings) or the judgments");
    }
    let defaults = if listwise {
        TrainConfig::listwise()
    } else {
        TrainConfig::default()
    };
    let config = TrainConfig {
        loss: args.loss.parse::<LossType>()?,
        temperature: args.temperature,
        alpha: args.alpha,
        lora_r: args.lora_r.unwrap_or(defaults.lora_r),
        lora_alpha: args.lora_alpha.unwrap_or(defaults.lora_alpha),
        lora_dropout: args.lora_dropout.unwrap_or(defaults.lora_dropout),
        targets: match &args.targets {
            Some(t) => t
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => defaults.targets.clone(),
        },
        learning_rate: args.lr,
        schedule: match &args.schedule {
            Some(s) => s.parse::<Schedule>()?,
            None => defaults.schedule,
        },
        warmup_ratio: args.warmup_ratio,
        max_grad_norm: args.max_grad_norm,
        adamw: dear::dear_core::train::AdamWConfig {
            weight_decay: args.weight_decay,
            ..Default::default()
        },
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch_groups: args.batch_groups,
        grad_accum: args.grad_accum.unwrap_or(defaults.grad_accum),
        negatives: args.negatives,
        negative_depth: args.negative_depth,
        q_max_len: args.q_max_len,
        p_max_len: args.p_max_len,
        seed: args.seed,
        save_every: args.save_every,
        dev_queries: args.dev_queries,
        eval_depth: 30,
        base_model: args.base_model_name.clone().unwrap_or_default(),
        init_adapter: args.init_adapter.clone(),
        listwise: dear::dear_core::train::ListwiseTrainOptions {
            objective: args.objective.parse::<ListwiseObjective>()?,
            prompt: args.prompt.parse()?,
            window: args.window,
            cutoff_len: args.cutoff_len,
        },
    };
    let lm = args.model.load()?;
    enum Trainer {
        Pointwise(Box<PointwiseTrainer>),
        Listwise(Box<ListwiseTrainer>),
    }
    let trainer = if listwise {
        if args.save_batches.is_some() {
            bail!("--save-batches records stage-1 batches only");
        }
        Trainer::Listwise(Box::new(ListwiseTrainer::new(&lm, config)?))
    } else {
        let mut t = PointwiseTrainer::new(&lm, config)?;
        if let Some(path) = &args.save_batches {
            t = t.with_batch_log(path);
        }
        Trainer::Pointwise(Box::new(t))
    };

    // Training data: judged datasets, then self-supervised corpora. Query ids keep
    // their source's name as a prefix when there are several sources.
    let single = args.dataset.len() + args.self_supervised.len() == 1;
    let mut set = TrainingSet::default();
    let depth = (args.negative_depth + 20).max(args.window);
    for spec in &args.dataset {
        let (dir, split) = match spec.rsplit_once(':') {
            Some((d, s)) if Path::new(d).is_dir() => (d, s),
            _ => (spec.as_str(), args.split.as_str()),
        };
        let mut dataset = Dataset::open(dir, split)?;
        if let Some(n) = args.max_queries {
            dataset = dataset.with_query_limit(n);
        }
        let run_stage;
        let index;
        let first: &dyn FirstStage = match &args.run {
            Some(path) => {
                run_stage = RunFirstStage::new(path, &dataset)?;
                &run_stage
            }
            None => {
                index = index_of(|add| dataset.read_corpus(add))?;
                &IndexFirstStage(&index)
            }
        };
        let part = TrainingSet::from_dataset(&dataset, first, depth, args.negatives)?;
        eprintln!(
            "{} ({split}): {} queries, skipped {} without a positive in the corpus and {} with fewer than {} negatives",
            dataset.name(),
            part.queries.len(),
            part.skipped.no_positive,
            part.skipped.few_negatives,
            args.negatives
        );
        let tag = if single {
            String::new()
        } else {
            dataset.name()
        };
        set.extend(&tag, part);
    }
    for path in &args.self_supervised {
        let passages = read_any(path)?;
        let index = index_of(|add| {
            passages.iter().cloned().for_each(add);
            Ok(())
        })?;
        let mut part = TrainingSet::self_supervised(
            &passages,
            &IndexFirstStage(&index),
            depth,
            args.negatives,
            2,
        )?;
        if let Some(n) = args.max_queries {
            part.queries.truncate(n);
        }
        eprintln!(
            "{} (self-supervised): {} title queries, skipped {} untitled or short-titled and {} with fewer than {} negatives",
            path.display(),
            part.queries.len(),
            part.skipped.no_positive,
            part.skipped.few_negatives,
            args.negatives
        );
        let tag = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        set.extend(
            &if single {
                String::new()
            } else {
                format!("self:{tag}")
            },
            part,
        );
    }

    // The teacher.
    let teacher_run;
    let teacher_scorer;
    let teacher = match (&args.teacher_run, &args.teacher) {
        (Some(path), _) => {
            teacher_run = TeacherRun::read(path, &set)?;
            teacher_run.restrict(&mut set, args.negatives);
            Some(Teacher::Run(&teacher_run))
        }
        (None, Some(model)) => {
            let spec = ModelArgs {
                model: Some(model.clone()),
                adapter: args.teacher_adapter.clone(),
                ..args.model.clone()
            };
            let tlm = Arc::new(spec.load()?);
            let cfg = PointwiseConfig::for_model(&tlm, None)?;
            teacher_scorer = PointwiseScorer::new(tlm, None, cfg)?;
            Some(Teacher::Model(&teacher_scorer))
        }
        (None, None) => None,
    };

    // Stage 2's targets.
    let permutations = match &args.permutations {
        Some(path) => Some(Permutations::read(path)?),
        None => None,
    };
    let student_scorer;
    let targets = match (&permutations, &args.student_adapter) {
        (Some(p), _) => ListwiseTargets::Permutations(p),
        (None, Some(dir)) => {
            let spec = ModelArgs {
                adapter: Some(dir.display().to_string()),
                ..args.model.clone()
            };
            let slm = Arc::new(spec.load()?);
            let cfg = PointwiseConfig::for_model(&slm, None)?;
            student_scorer = PointwiseScorer::new(slm, None, cfg)?;
            eprintln!("ordering each window's non-relevant passages with the student");
            ListwiseTargets::Student(&student_scorer)
        }
        (None, None) => ListwiseTargets::Qrels,
    };

    let total_queries = set.queries.len();
    let bar: ProgressBar = progress(0, "train");
    let on_step = |s: &dear::dear_core::train::StepReport| {
        if bar.length() != Some(s.total_steps as u64) {
            bar.set_length(s.total_steps as u64);
        }
        bar.set_position(s.step as u64);
        let line = format!(
            "epoch {} loss {:.4} lr {:.2e} {:.0} tok/s",
            s.epoch, s.loss, s.learning_rate, s.tokens_per_second
        );
        if bar.is_hidden() {
            // No terminal (a log file, nohup): a line every 10 steps instead of a bar.
            if s.step.is_multiple_of(10) || s.step == s.total_steps {
                eprintln!("step {}/{}: {line}", s.step, s.total_steps);
            }
        } else {
            bar.set_message(line);
        }
        if let Some(n) = s.dev_ndcg {
            bar.suspend(|| eprintln!("step {}: dev nDCG@10 {n:.4}", s.step));
        }
    };
    let report = match &trainer {
        Trainer::Pointwise(t) => t.train(&set, teacher, &args.out, on_step)?,
        Trainer::Listwise(t) => t.train(&set, targets, &args.out, on_step)?,
    };
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "trained {} ({} queries, {} trainable values)",
        args.out.display(),
        total_queries,
        report.parameters
    )?;
    writeln!(
        out,
        "steps {} (resumed from {}), last loss {:.4}, {:.0} tokens/s, {:.0} s",
        report.steps,
        report.resumed_from,
        report.last_loss,
        report.tokens_per_second,
        report.seconds
    )?;
    if listwise {
        let k = report.skipped;
        writeln!(
            out,
            "windows {} (skipped: {} without a relevant passage in the top {}, {} over {} tokens, {} without a permutation)",
            report.queries, k.no_positive_in_window, args.window, k.over_cutoff, args.cutoff_len, k.no_permutation
        )?;
    }
    if let Some(base) = report.dev_first_stage_ndcg {
        let epochs: Vec<String> = report.dev_ndcg.iter().map(|n| format!("{n:.4}")).collect();
        writeln!(
            out,
            "dev nDCG@10 ({} queries): first stage {base:.4}, epochs [{}], kept epoch {}",
            report.dev_queries,
            epochs.join(", "),
            report
                .best_epoch
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into())
        )?;
    }
    Ok(())
}
