//! Recipes: a reranker described by name, so a user can ask for `dear-8b-ce` and get
//! the right base model, adapter, head and input lengths.
//!
//! A [`Recipe`] is plain serde data (JSON), so a custom reranker can be written to a
//! file and loaded like a built-in one. The built-ins are DeAR's published
//! checkpoints (full `LlamaForSequenceClassification` models and their LoRA
//! adapters, 8B and 3B, trained with cross-entropy or RankNet) and `smollm2`, the
//! default model with the yes/no head.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::lora::AdapterMode;
use crate::rerank::pointwise::{PointwiseConfig, PointwiseScorer};
use crate::{Error, LanguageModel, LoadOptions};

/// Where recipe JSON errors say the problem is.
const RECIPE_PATH: &str = "<recipe>";

/// A named reranker: base model, optional adapter and pointwise settings.
///
/// # Example
/// ```
/// use dear_core::{Head, Recipe};
/// let recipe = Recipe::builtin("dear-8b-ce").ok_or("no such recipe")?;
/// assert_eq!(recipe.base, "abdoelsayed/dear-8b-reranker-ce-v1");
/// assert_eq!(recipe.pointwise.head, Head::Classifier);
/// let same = Recipe::from_json(&serde_json::to_string(&recipe)?)?;
/// assert_eq!(same, recipe);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Loading one (downloads the model unless it is in the Hugging Face cache):
/// ```no_run
/// use dear_core::{LoadOptions, Passage, Query, Recipe};
/// let recipe = Recipe::builtin("dear-3b-ce").ok_or("no such recipe")?;
/// let scorer = recipe.load(&LoadOptions::default())?;
/// let scores = scorer.score(&Query::new("what causes rain"), &[Passage::new("Rain forms when droplets coalesce.")])?;
/// println!("{scores:?}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The name the recipe is asked for by.
    pub name: String,
    /// Base model: GGUF path, Hugging Face directory or hub id. For an adapter
    /// recipe, the base the adapter names in its `adapter_config.json`.
    pub base: String,
    /// Optional PEFT LoRA adapter (directory or hub id), applied merged.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Pointwise settings (head, `q_max_len`, `p_max_len`, ...).
    pub pointwise: PointwiseConfig,
}

impl Recipe {
    fn new(name: &str, base: &str, adapter: Option<&str>, pointwise: PointwiseConfig) -> Self {
        Self {
            name: name.to_string(),
            base: base.to_string(),
            adapter: adapter.map(str::to_string),
            pointwise,
        }
    }

    /// The built-in recipe called `name`, if any.
    pub fn builtin(name: &str) -> Option<Recipe> {
        Self::builtins().into_iter().find(|r| r.name == name)
    }

    /// Every built-in recipe: DeAR's 8B and 3B rerankers (full checkpoints and LoRA
    /// adapters, cross-entropy and RankNet) with the classifier head, and `smollm2`,
    /// the default model ([`crate::default_model_path`]) with the yes/no head.
    pub fn builtins() -> Vec<Recipe> {
        const LLAMA_8B: &str = "meta-llama/Llama-3.1-8B";
        const LLAMA_3B: &str = "meta-llama/Llama-3.2-3B";
        let full =
            |name: &str, repo: &str| Recipe::new(name, repo, None, PointwiseConfig::classifier());
        let lora = |name: &str, base: &str, repo: &str| {
            Recipe::new(name, base, Some(repo), PointwiseConfig::classifier())
        };
        vec![
            full("dear-8b-ce", "abdoelsayed/dear-8b-reranker-ce-v1"),
            full("dear-8b-ranknet", "abdoelsayed/dear-8b-reranker-ranknet-v1"),
            lora(
                "dear-8b-ce-lora",
                LLAMA_8B,
                "abdoelsayed/dear-8b-reranker-ce-lora-v1",
            ),
            lora(
                "dear-8b-ranknet-lora",
                LLAMA_8B,
                "abdoelsayed/dear-8b-reranker-ranknet-lora-v1",
            ),
            full("dear-3b-ce", "abdoelsayed/dear-3b-reranker-ce-v1"),
            full("dear-3b-ranknet", "abdoelsayed/dear-3b-reranker-ranknet-v1"),
            lora(
                "dear-3b-ce-lora",
                LLAMA_3B,
                "abdoelsayed/dear-3b-reranker-ce-lora-v1",
            ),
            lora(
                "dear-3b-ranknet-lora",
                LLAMA_3B,
                "abdoelsayed/dear-3b-reranker-ranknet-lora-v1",
            ),
            Recipe::new(
                "smollm2",
                &crate::default_model_path().to_string_lossy(),
                None,
                PointwiseConfig::yes_no(),
            ),
        ]
    }

    /// Reads a recipe from JSON: `{"name", "base", "adapter"?, "pointwise": {"head":
    /// {"kind": "classifier"}, "q_max_len"?, "p_max_len"?, ...}}`.
    ///
    /// # Errors
    /// [`Error::Json`] (path `<recipe>`) when the text is not valid JSON, a field is
    /// missing, unknown or of the wrong type, or `name`, `base` or `adapter` is empty.
    pub fn from_json(text: &str) -> crate::Result<Recipe> {
        let recipe: Recipe = serde_json::from_str(text).map_err(|e| Error::json(RECIPE_PATH, e))?;
        let empty = |field: &str| Error::json(RECIPE_PATH, format!("`{field}` is empty"));
        if recipe.name.trim().is_empty() {
            return Err(empty("name"));
        }
        if recipe.base.trim().is_empty() {
            return Err(empty("base"));
        }
        if recipe
            .adapter
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(empty("adapter"));
        }
        Ok(recipe)
    }

    /// Loads the base model with `options` (device, dtype, quantization, hub), merges
    /// the recipe's adapter into it if there is one, and returns a scorer with the
    /// recipe's pointwise settings. Hub ids resolve from the Hugging Face cache, or
    /// are downloaded when the cache lacks them and the hub is not offline.
    ///
    /// # Errors
    /// Any error of [`LanguageModel::load`] (missing or corrupt files, an uncached hub
    /// id offline, an adapter that does not fit the base) and of
    /// [`PointwiseScorer::new`] (a classifier recipe on a model without a `score`
    /// head, a yes/no head without a chat template).
    pub fn load(&self, options: &LoadOptions) -> crate::Result<PointwiseScorer> {
        let options = match &self.adapter {
            Some(adapter) => options
                .clone()
                .with_adapter(adapter.clone(), AdapterMode::Merged),
            None => options.clone(),
        };
        let lm = LanguageModel::load(&self.base, &options)?;
        PointwiseScorer::new(Arc::new(lm), None, self.pointwise.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{Head, Passage, Query};

    fn golden(path: &str) -> String {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(path)
            .to_string_lossy()
            .into_owned()
    }

    fn message(result: crate::Result<Recipe>) -> String {
        match result {
            Ok(r) => format!("unexpectedly parsed {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builtins_round_trip_through_json() -> crate::Result<()> {
        let all = Recipe::builtins();
        assert_eq!(all.len(), 9);
        for recipe in &all {
            let text = serde_json::to_string(recipe).map_err(|e| Error::json("<test>", e))?;
            assert_eq!(&Recipe::from_json(&text)?, recipe, "{text}");
            assert_eq!(Recipe::builtin(&recipe.name).as_ref(), Some(recipe));
        }
        let mut names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate recipe names");
        Ok(())
    }

    #[test]
    fn builtins_name_the_published_models() {
        let get = |name: &str| Recipe::builtin(name);
        let ce = get("dear-8b-ce");
        assert_eq!(
            ce.as_ref().map(|r| r.base.as_str()),
            Some("abdoelsayed/dear-8b-reranker-ce-v1")
        );
        assert_eq!(ce.map(|r| r.pointwise.head), Some(Head::Classifier));
        let lora = get("dear-3b-ranknet-lora");
        assert_eq!(
            lora.as_ref()
                .map(|r| (r.base.as_str(), r.adapter.as_deref())),
            Some((
                "meta-llama/Llama-3.2-3B",
                Some("abdoelsayed/dear-3b-reranker-ranknet-lora-v1")
            ))
        );
        let small = get("smollm2");
        assert_eq!(
            small.as_ref().map(|r| r.base.clone()),
            Some(crate::default_model_path().to_string_lossy().into_owned())
        );
        assert_eq!(
            small.map(|r| r.pointwise.head),
            Some(Head::default_yes_no())
        );
        assert_eq!(get("nope"), None);
    }

    #[test]
    fn minimal_json_takes_defaults() -> crate::Result<()> {
        let r = Recipe::from_json(
            r#"{"name": "mine", "base": "org/model", "pointwise": {"head": {"kind": "classifier"}}}"#,
        )?;
        assert_eq!(r.adapter, None);
        assert_eq!(r.pointwise, PointwiseConfig::classifier());
        Ok(())
    }

    #[test]
    fn bad_json_names_the_problem() {
        let m = message(Recipe::from_json("{not json"));
        assert!(m.contains("<recipe>"), "{m}");
        let m = message(Recipe::from_json(
            r#"{"name": "x", "pointwise": {"head": {"kind": "classifier"}}}"#,
        ));
        assert!(m.contains("missing field `base`"), "{m}");
        let m = message(Recipe::from_json(r#"{"name": "x", "base": "b"}"#));
        assert!(m.contains("missing field `pointwise`"), "{m}");
        let m = message(Recipe::from_json(
            r#"{"name": "x", "base": "b", "adaptor": "a", "pointwise": {"head": {"kind": "classifier"}}}"#,
        ));
        assert!(m.contains("unknown field `adaptor`"), "{m}");
        let m = message(Recipe::from_json(
            r#"{"name": "x", "base": "b", "pointwise": {"head": {"kind": "maybe"}}}"#,
        ));
        assert!(m.contains("maybe"), "{m}");
        let m = message(Recipe::from_json(
            r#"{"name": "x", "base": " ", "pointwise": {"head": {"kind": "classifier"}}}"#,
        ));
        assert!(m.contains("`base` is empty"), "{m}");
        let m = message(Recipe::from_json(
            r#"{"name": "x", "base": "b", "adapter": "", "pointwise": {"head": {"kind": "classifier"}}}"#,
        ));
        assert!(m.contains("`adapter` is empty"), "{m}");
    }

    #[test]
    fn loads_a_checkpoint_and_an_adapter() -> crate::Result<()> {
        let query = Query::new("rain");
        let passages = [Passage::new("Rain falls."), Passage::new("Paris.")];
        let full = Recipe::new(
            "tiny",
            &golden("lora/tiny-seqcls"),
            None,
            PointwiseConfig::classifier(),
        );
        let scores = full
            .load(&LoadOptions::default())?
            .score(&query, &passages)?;
        assert_eq!(scores.len(), 2);
        assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");

        let adapter = Recipe::new(
            "tiny-lora",
            &golden("models/tiny-gqa"),
            Some(&golden("lora/seqcls-a")),
            PointwiseConfig::classifier(),
        );
        let scorer = adapter.load(&LoadOptions::default())?;
        assert!(scorer.model().llama().score_labels(None).is_some());
        let via_recipe = scorer.score(&query, &passages)?;
        let lm = LanguageModel::load(
            golden("models/tiny-gqa"),
            &LoadOptions::default().with_adapter(golden("lora/seqcls-a"), AdapterMode::Merged),
        )?;
        let direct = PointwiseScorer::new(Arc::new(lm), None, PointwiseConfig::classifier())?
            .score(&query, &passages)?;
        assert_eq!(via_recipe, direct);

        // A classifier recipe on a model without a score head says so.
        let no_head = Recipe::new(
            "no-head",
            &golden("models/tiny-gqa"),
            None,
            PointwiseConfig::classifier(),
        );
        let err = no_head.load(&LoadOptions::default()).err();
        let m = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(m.contains("score"), "{m}");
        Ok(())
    }
}
