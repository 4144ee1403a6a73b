//! The model and reranking flags `search` and `eval` share, turned into the library's
//! [`DearSetup`] and [`RerankOptions`].

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use dear::dear_core::{
    default_model_path, Chunking, DearSetup, Fusion, HeadChoice, ListwiseMode, RerankOptions,
    Reranker, Stages,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::{head_choices, mode_choices, ModelArgs};

/// The model and reranking flags `search` and `eval` share.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// A pointwise LoRA adapter (SEQ_CLS, e.g. DeAR's `dear-8b-reranker-ranknet-lora-v1`),
    /// loaded unmerged next to --listwise-adapter on the same base.
    #[arg(long)]
    pointwise_adapter: Option<String>,
    /// A listwise LoRA adapter (CAUSAL_LM), loaded unmerged on the same base.
    #[arg(long)]
    listwise_adapter: Option<String>,
    /// How pointwise scores are read: auto (the classifier when there is a `score`
    /// head, else yes/no), classifier or yes-no.
    #[arg(long, default_value = "auto", value_parser = head_choices())]
    head: HeadChoice,
    /// The stages to run: the first stage (bm25) plus any of pointwise, listwise
    /// (comma-separated) [default: bm25,pointwise on the default model, whose listwise
    /// stage has no trained adapter yet; bm25,pointwise,listwise otherwise].
    #[arg(long)]
    stages: Option<Stages>,
    /// How the pointwise order fuses the model's scores with BM25's: off,
    /// interpolate:W (min-max normalised, W the model's weight in [0, 1]) or rrf:K
    /// [default: the default student's tuned interpolation; off with any other model].
    #[arg(long)]
    fusion: Option<Fusion>,
    /// BM25 candidates, all scored pointwise.
    #[arg(long, default_value_t = 100)]
    candidates: usize,
    /// How many of the top candidates the listwise stage reorders.
    #[arg(long, default_value_t = 20)]
    listwise_top: usize,
    /// Listwise window size.
    #[arg(long, default_value_t = 20)]
    window: usize,
    /// Listwise window step.
    #[arg(long, default_value_t = 10)]
    step: usize,
    /// How listwise windows are ranked.
    #[arg(long, default_value = "generate", value_parser = mode_choices())]
    mode: ListwiseMode,
    /// Cut every passage to this many tokens before the model stages read it.
    #[arg(long)]
    max_passage_tokens: Option<usize>,
    /// Split passages longer than the pointwise budget into overlapping windows,
    /// score each and keep the best (MaxP) instead of truncating them (DeAR's way).
    #[arg(long)]
    max_p: bool,
    /// MaxP window size in tokens [default: the pointwise stage's budget].
    #[arg(long, requires = "max_p")]
    chunk_tokens: Option<usize>,
    /// MaxP window overlap in tokens.
    #[arg(long, default_value_t = 32, requires = "max_p")]
    chunk_overlap: usize,
    /// Time budget per query in seconds; a stage still running then keeps the order
    /// before it.
    #[arg(long)]
    timeout: Option<f64>,
}

impl PipelineArgs {
    /// Whether the flags ask for the default setup: the default model (omitted, or
    /// given by its path) with no adapter or head chosen, which brings its pointwise
    /// student ([`DearSetup::default_model`]).
    fn is_default_setup(&self) -> bool {
        let default_model = match &self.model.model {
            None => true,
            Some(m) => {
                let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
                let given = canon(std::path::Path::new(m));
                given.is_some() && given == canon(&default_model_path())
            }
        };
        default_model
            && self.model.adapter.is_none()
            && self.pointwise_adapter.is_none()
            && self.head == HeadChoice::Auto
    }

    /// The stages asked for, or the setup's default.
    pub fn stages(&self) -> Stages {
        match self.stages {
            Some(s) => s,
            None if self.is_default_setup() => DearSetup::default_model().stages(),
            None => Stages::ALL,
        }
    }

    /// The `--timeout` given, if any (checked by [`PipelineArgs::options`]).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
            .filter(|t| *t > 0.0)
            .and_then(|t| Duration::try_from_secs_f64(t).ok())
    }

    pub fn options(&self) -> anyhow::Result<RerankOptions> {
        let mut o = RerankOptions::default()
            .with_candidates(self.candidates)
            .with_listwise_depth(self.listwise_top)
            .with_window(self.window, self.step)
            .with_stages(self.stages())
            .with_listwise_mode(self.mode);
        if let Some(f) = self.fusion {
            o = o.with_fusion(f);
        }
        if self.max_p {
            let mut c = Chunking::max_p().with_overlap(self.chunk_overlap);
            if let Some(t) = self.chunk_tokens {
                c = c.with_tokens(t);
            }
            o = o.with_chunking(c);
        }
        if let Some(n) = self.max_passage_tokens {
            o = o.with_max_passage_tokens(n);
        }
        if let Some(t) = self.timeout {
            let d = Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| t > 0.0 && *d <= Duration::from_secs(86_400));
            let Some(d) = d else {
                bail!("--timeout must be a number of seconds in (0, 86400], not {t:?}");
            };
            o = o.with_timeout(d);
        }
        o.validate()?;
        Ok(o)
    }

    /// The library setup the flags describe.
    pub fn setup(&self) -> anyhow::Result<DearSetup> {
        let spec = self.model.spec()?;
        let base = if self.is_default_setup() {
            DearSetup::default_model()
        } else {
            DearSetup::new(spec)
        };
        let mut setup = base
            .with_load_options(self.model.options())
            .with_head(self.head)
            .with_listwise_mode(self.mode)
            .with_stages(self.stages());
        if let Some(f) = self.fusion {
            setup = setup.with_fusion(f);
        }
        if let Some(a) = &self.model.adapter {
            setup = setup.with_merged_adapter(a.clone());
        }
        if let Some(a) = &self.pointwise_adapter {
            setup = setup.with_pointwise_adapter(a.clone());
        }
        if let Some(a) = &self.listwise_adapter {
            setup = setup.with_listwise_adapter(a.clone());
        }
        Ok(setup)
    }

    /// The reranker the flags describe; no model is loaded for the first stage alone.
    pub fn reranker(&self) -> anyhow::Result<Reranker> {
        let setup = self.setup()?;
        let stages = self.stages();
        if !stages.pointwise && !stages.listwise {
            return Ok(Reranker::new());
        }
        let started = Instant::now();
        let lm = setup
            .load_model()
            .with_context(|| format!("loading model {}", setup.model().display()))?;
        eprintln!(
            "model: {} ({:.1} s to load)",
            lm.source(),
            started.elapsed().as_secs_f64()
        );
        if let Some(a) = setup.pointwise_adapter() {
            eprintln!(
                "pointwise adapter: {a} (fusion with BM25: {})",
                setup.fusion()
            );
        }
        Ok(setup.build_on(lm)?)
    }
}

pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
