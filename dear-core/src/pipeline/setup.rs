//! DeAR's setup as a builder: one base model, a pointwise adapter and a listwise
//! adapter loaded unmerged side by side (or merged checkpoints, or a recipe by name),
//! turned into a [`Reranker`].

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::{
    AdapterMode, Error, Fusion, Head, LanguageModel, ListwiseConfig, ListwiseMode, ListwiseRanker,
    LoadOptions, PointwiseConfig, Recipe, Reranker, Scheduler, Stages,
};

/// How pointwise scores are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadChoice {
    /// DeAR's classifier when the model (or the pointwise adapter) has a `score`
    /// head, else the yes/no prompt ([`PointwiseConfig::for_model`]).
    #[default]
    Auto,
    /// DeAR's `LlamaForSequenceClassification` input and `score` head.
    Classifier,
    /// `logit(yes) - logit(no)` after a chat prompt (instruction-tuned causal LMs).
    YesNo,
}

impl HeadChoice {
    /// The head asked for explicitly: `None` for [`HeadChoice::Auto`].
    pub fn explicit(self) -> Option<Head> {
        match self {
            HeadChoice::Auto => None,
            HeadChoice::Classifier => Some(Head::Classifier),
            HeadChoice::YesNo => Some(Head::default_yes_no()),
        }
    }

    /// The head for `lm` (with `adapter` selected, if any): the explicit one, or for
    /// [`HeadChoice::Auto`] the one [`PointwiseConfig::for_model`] picks.
    ///
    /// # Errors
    /// As [`PointwiseConfig::for_model`].
    pub fn resolve(self, lm: &LanguageModel, adapter: Option<&str>) -> crate::Result<Head> {
        match self.explicit() {
            Some(head) => Ok(head),
            None => Ok(PointwiseConfig::for_model(lm, adapter)?.head),
        }
    }
}

impl FromStr for HeadChoice {
    type Err = Error;

    /// `auto`, `classifier` or `yes-no` (also spelled `yes_no` or `yesno`).
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(HeadChoice::Auto),
            "classifier" => Ok(HeadChoice::Classifier),
            "yes-no" | "yes_no" | "yesno" => Ok(HeadChoice::YesNo),
            other => Err(Error::InvalidArgument(format!(
                "unknown head '{other}' (use auto, classifier or yes-no)"
            ))),
        }
    }
}

/// The name the pointwise adapter is loaded under.
const POINTWISE: &str = "pointwise";
/// The name the listwise adapter is loaded under.
const LISTWISE: &str = "listwise";

/// DeAR's real setup, built by the library: a base model loaded once, DeAR's pointwise
/// (SEQ_CLS) and listwise (CAUSAL_LM) LoRA adapters applied unmerged on it, selected
/// per stage; or a merged checkpoint; or a [`Recipe`] by name.
///
/// # Example
/// ```no_run
/// use dear_core::{DearSetup, RerankOptions};
/// let reranker = DearSetup::new("meta-llama/Llama-3.1-8B")
///     .with_pointwise_adapter("abdoelsayed/dear-8b-reranker-ranknet-lora-v1")
///     .with_listwise_adapter("my-org/my-listwise-lora")
///     .build()?;
/// let ranking = reranker.rank("what causes rain", ["Rain forms when droplets coalesce."], &RerankOptions::default())?;
/// # Ok::<(), dear_core::Error>(())
/// ```
///
/// The default model with its pointwise student:
/// ```no_run
/// let reranker = dear_core::DearSetup::default_model().build()?;
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct DearSetup {
    model: PathBuf,
    load: LoadOptions,
    merged_adapter: Option<String>,
    pointwise_adapter: Option<String>,
    listwise_adapter: Option<String>,
    head: HeadChoice,
    pointwise: Option<PointwiseConfig>,
    listwise: ListwiseConfig,
    stages: Stages,
    fusion: Fusion,
}

/// How the default student's scores are fused with BM25's: the interpolation weight
/// that scored best on the student's held-back validation queries (see
/// `models/smollm2-135m-dear-student/README.md`).
pub const DEFAULT_STUDENT_FUSION: Fusion = Fusion::Interpolate { weight: 0.5 };

impl DearSetup {
    /// A setup on `model`: a `.gguf` file, a Hugging Face directory or a hub id.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            load: LoadOptions::default(),
            merged_adapter: None,
            pointwise_adapter: None,
            listwise_adapter: None,
            head: HeadChoice::Auto,
            pointwise: None,
            listwise: ListwiseConfig::default(),
            stages: Stages::ALL,
            fusion: Fusion::Off,
        }
    }

    /// The default setup: the default model ([`default_model_path`]) with the default
    /// pointwise student ([`default_student_path`]: a LoRA adapter + `score` head that
    /// `dear train` distilled on SciFact's training claims and the Rust book), its scores
    /// fused with BM25's ([`DEFAULT_STUDENT_FUSION`]), and the pointwise stage only: the
    /// listwise stage of a 135M model with no listwise adapter reorders worse than
    /// BM25, so it stays off (ask for it with [`with_stages`](Self::with_stages)).
    /// Without the student installed: the default model's yes/no prompt, no fusion.
    ///
    /// [`default_model_path`]: crate::default_model_path
    /// [`default_student_path`]: crate::default_student_path
    pub fn default_model() -> Self {
        let mut setup = Self::new(crate::default_model_path()).with_stages(Stages {
            pointwise: true,
            listwise: false,
        });
        let student = crate::default_student_path();
        if student.join("adapter_config.json").is_file() {
            setup = setup
                .with_pointwise_adapter(student.to_string_lossy())
                .with_fusion(DEFAULT_STUDENT_FUSION);
        }
        setup
    }

    /// A setup from a recipe: its base, its adapter merged, its pointwise settings.
    pub fn from_recipe(recipe: &Recipe) -> Self {
        let mut setup = Self::new(&recipe.base).with_pointwise_config(recipe.pointwise.clone());
        setup.merged_adapter = recipe.adapter.clone();
        setup
    }

    /// A setup from a built-in recipe by name (see [`Recipe::builtins`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the unknown recipe and the known ones.
    pub fn recipe(name: &str) -> crate::Result<Self> {
        match Recipe::builtin(name) {
            Some(r) => Ok(Self::from_recipe(&r)),
            None => Err(Error::InvalidArgument(format!(
                "unknown recipe '{name}' (known: {})",
                Recipe::builtins()
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// How the model is loaded (device, dtype, quantization, hub). Adapters given here
    /// are loaded too.
    #[must_use]
    pub fn with_load_options(mut self, load: LoadOptions) -> Self {
        self.load = load;
        self
    }

    /// A LoRA adapter merged into the base (a merged checkpoint's delta).
    #[must_use]
    pub fn with_merged_adapter(mut self, adapter: impl Into<String>) -> Self {
        self.merged_adapter = Some(adapter.into());
        self
    }

    /// DeAR's pointwise adapter (SEQ_CLS, with its `score` head), loaded unmerged.
    #[must_use]
    pub fn with_pointwise_adapter(mut self, adapter: impl Into<String>) -> Self {
        self.pointwise_adapter = Some(adapter.into());
        self
    }

    /// DeAR's listwise adapter (CAUSAL_LM), loaded unmerged on the same base.
    #[must_use]
    pub fn with_listwise_adapter(mut self, adapter: impl Into<String>) -> Self {
        self.listwise_adapter = Some(adapter.into());
        self
    }

    /// How pointwise scores are read. Default: [`HeadChoice::Auto`].
    #[must_use]
    pub fn with_head(mut self, head: HeadChoice) -> Self {
        self.head = head;
        self
    }

    /// All pointwise settings (head, input lengths, batch size); overrides
    /// [`with_head`](Self::with_head).
    #[must_use]
    pub fn with_pointwise_config(mut self, config: PointwiseConfig) -> Self {
        self.pointwise = Some(config);
        self
    }

    /// Listwise settings (prompt, mode, windows, generation lengths). Default:
    /// [`ListwiseConfig::default`].
    #[must_use]
    pub fn with_listwise_config(mut self, config: ListwiseConfig) -> Self {
        self.listwise = config;
        self
    }

    /// The listwise mode (a shortcut into the listwise settings).
    #[must_use]
    pub fn with_listwise_mode(mut self, mode: ListwiseMode) -> Self {
        self.listwise.mode = mode;
        self
    }

    /// Which stages get a model. Default: both. With neither, [`build`](Self::build)
    /// loads nothing and the reranker keeps the first-stage order.
    #[must_use]
    pub fn with_stages(mut self, stages: Stages) -> Self {
        self.stages = stages;
        self
    }

    /// How the reranker fuses pointwise scores with the first stage's by default
    /// ([`Reranker::with_fusion`]). Default: [`Fusion::Off`].
    #[must_use]
    pub fn with_fusion(mut self, fusion: Fusion) -> Self {
        self.fusion = fusion;
        self
    }

    /// The fusion the reranker will use by default.
    pub fn fusion(&self) -> Fusion {
        self.fusion
    }

    /// The stages that get a model.
    pub fn stages(&self) -> Stages {
        self.stages
    }

    /// The pointwise adapter, if any.
    pub fn pointwise_adapter(&self) -> Option<&str> {
        self.pointwise_adapter.as_deref()
    }

    /// The listwise adapter, if any.
    pub fn listwise_adapter(&self) -> Option<&str> {
        self.listwise_adapter.as_deref()
    }

    /// The model path or hub id.
    pub fn model(&self) -> &std::path::Path {
        &self.model
    }

    /// The load options with this setup's adapters added.
    pub fn load_options(&self) -> LoadOptions {
        let mut load = self.load.clone();
        if let Some(a) = &self.merged_adapter {
            load = load.with_adapter(a.clone(), AdapterMode::Merged);
        }
        if let Some(a) = &self.pointwise_adapter {
            load = load.with_named_adapter(POINTWISE, a.clone(), AdapterMode::Unmerged);
        }
        if let Some(a) = &self.listwise_adapter {
            load = load.with_named_adapter(LISTWISE, a.clone(), AdapterMode::Unmerged);
        }
        load
    }

    /// Loads the model once (with its adapters).
    ///
    /// # Errors
    /// As [`LanguageModel::load`].
    pub fn load_model(&self) -> crate::Result<Arc<LanguageModel>> {
        Ok(Arc::new(LanguageModel::load(
            &self.model,
            &self.load_options(),
        )?))
    }

    /// Loads the model and builds the reranker: the pointwise stage as a
    /// [`Scheduler`] (on the pointwise adapter, if any), the listwise stage as a
    /// [`ListwiseRanker`] (on the listwise adapter, if any; only when the model has a
    /// chat template, unless a listwise adapter asks for it explicitly).
    ///
    /// # Errors
    /// As [`LanguageModel::load`], [`Scheduler::new`] (a classifier head the model
    /// lacks) and [`ListwiseRanker::new`] (a listwise adapter on a model with no chat
    /// template).
    pub fn build(&self) -> crate::Result<Reranker> {
        if !self.stages.pointwise && !self.stages.listwise {
            return Ok(Reranker::new());
        }
        let lm = self.load_model()?;
        self.build_on(lm)
    }

    /// [`build`](Self::build) on a model already loaded with
    /// [`load_options`](Self::load_options).
    ///
    /// # Errors
    /// As [`build`](Self::build), less the loading.
    pub fn build_on(&self, lm: Arc<LanguageModel>) -> crate::Result<Reranker> {
        let mut reranker = Reranker::new().with_fusion(self.fusion)?;
        if self.stages.pointwise {
            let adapter = self.pointwise_adapter.as_ref().map(|_| POINTWISE);
            let config = match &self.pointwise {
                Some(c) => c.clone(),
                None => PointwiseConfig {
                    head: self.head.resolve(&lm, adapter)?,
                    ..PointwiseConfig::classifier()
                },
            };
            reranker = reranker.with_pointwise(Scheduler::new(lm.clone(), adapter, config)?);
        }
        let adapter = self.listwise_adapter.as_ref().map(|_| LISTWISE);
        if self.stages.listwise && (adapter.is_some() || lm.tokenizer().chat_template().is_some()) {
            reranker =
                reranker.with_listwise(ListwiseRanker::new(lm, adapter, self.listwise.clone())?);
        }
        Ok(reranker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_recipes_and_heads_are_named() {
        let err = DearSetup::recipe("dear-1b").unwrap_err().to_string();
        assert!(
            err.contains("dear-1b") && err.contains("dear-8b-ce"),
            "{err}"
        );
        let err = "logits".parse::<HeadChoice>().unwrap_err().to_string();
        assert!(err.contains("logits"), "{err}");
        assert_eq!("yes-no".parse::<HeadChoice>().ok(), Some(HeadChoice::YesNo));
        assert_eq!("yes_no".parse::<HeadChoice>().ok(), Some(HeadChoice::YesNo));
        assert_eq!(HeadChoice::Auto.explicit(), None);
        assert_eq!(HeadChoice::Classifier.explicit(), Some(Head::Classifier));
        assert_eq!(
            HeadChoice::YesNo.explicit().map(|h| h.kind()),
            Some("yes-no")
        );
    }

    #[test]
    fn adapters_load_unmerged_under_their_stage_names() -> crate::Result<()> {
        let setup = DearSetup::recipe("dear-8b-ce-lora")?
            .with_pointwise_adapter("pw")
            .with_listwise_adapter("lw");
        let load = setup.load_options();
        let adapters: Vec<(Option<&str>, &str, AdapterMode)> = load
            .adapters()
            .iter()
            .map(|a| (a.name.as_deref(), a.source.as_str(), a.mode))
            .collect();
        assert_eq!(
            adapters,
            [
                (
                    None,
                    "abdoelsayed/dear-8b-reranker-ce-lora-v1",
                    AdapterMode::Merged
                ),
                (Some("pointwise"), "pw", AdapterMode::Unmerged),
                (Some("listwise"), "lw", AdapterMode::Unmerged),
            ]
        );
        assert_eq!(
            setup.model(),
            std::path::Path::new("meta-llama/Llama-3.1-8B")
        );
        Ok(())
    }

    #[test]
    fn no_stage_loads_nothing() -> crate::Result<()> {
        let r = DearSetup::new("/nonexistent/model.gguf")
            .with_stages(Stages::FIRST)
            .build()?;
        assert!(r.pointwise().is_none() && r.listwise().is_none());
        assert!(DearSetup::new("/nonexistent/model.gguf").build().is_err());
        Ok(())
    }
}
