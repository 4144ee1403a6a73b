//! Hub ids (`org/name`) resolved through the Hugging Face cache, laid out as
//! `huggingface_hub` lays it out:
//!
//! ```text
//! <cache>/models--<org>--<name>/refs/<revision>          (a file holding a commit hash)
//! <cache>/models--<org>--<name>/snapshots/<commit>/<file>
//! ```
//!
//! `<cache>` is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//! A model already in the cache loads with no network at all; with `HF_HUB_OFFLINE=1`
//! (or [`HubOptions::with_offline`]) nothing is downloaded and a file that is not
//! cached is an error naming the repository, revision and cache folder.

use std::path::{Path, PathBuf};

use crate::Error;

/// How hub ids are resolved.
///
/// Every field left unset falls back to the standard environment variables.
///
/// # Example
/// ```
/// use dear_core::HubOptions;
/// let hub = HubOptions::default()
///     .with_cache_dir("/tmp/hf-cache")
///     .with_offline(true)
///     .with_revision("main");
/// assert_eq!(hub.cache_dir(), std::path::PathBuf::from("/tmp/hf-cache"));
/// assert!(hub.offline());
/// ```
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    cache_dir: Option<PathBuf>,
    offline: Option<bool>,
    revision: Option<String>,
    token: Option<String>,
}

/// The files a model repository may hold that loading uses. Weights are added from
/// the index when there is one.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "adapter_config.json",
    "adapter_model.safetensors",
];

impl HubOptions {
    /// The cache folder (the one holding `models--*` folders). Default: `HF_HUB_CACHE`,
    /// else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    #[must_use]
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Never use the network. Default: `HF_HUB_OFFLINE` (`1`, `true`, `yes`, `on`).
    #[must_use]
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = Some(offline);
        self
    }

    /// A branch, tag or commit hash. Default: `main`.
    #[must_use]
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    /// An access token for gated or private repositories. Default: `HF_TOKEN`, else
    /// the token file in `HF_HOME`.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The cache folder in effect.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
        if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join("hub");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        home.join(".cache").join("huggingface").join("hub")
    }

    /// Whether the network is off.
    pub fn offline(&self) -> bool {
        self.offline.unwrap_or_else(|| {
            std::env::var("HF_HUB_OFFLINE")
                .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
                .unwrap_or(false)
        })
    }

    /// The revision in effect.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    fn token(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()))
    }
}

fn repo_folder(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The cached snapshot folder of `repo` at the options' revision, if any.
fn cached_snapshot(repo: &str, hub: &HubOptions) -> Option<PathBuf> {
    let folder = repo_folder(&hub.cache_dir(), repo);
    let revision = hub.revision();
    let commit = match std::fs::read_to_string(folder.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) if is_commit_hash(revision) => revision.to_string(),
        Err(_) => return None,
    };
    let snapshot = folder.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

/// Whether a snapshot holds a loadable model or adapter.
fn snapshot_is_complete(dir: &Path) -> bool {
    if dir.join("adapter_config.json").is_file() {
        return dir.join("adapter_model.safetensors").is_file();
    }
    dir.join("config.json").is_file() && crate::loader::safetensors::weight_files(dir).is_ok()
}

/// Resolves a hub id to a local snapshot folder, downloading what is missing unless
/// offline.
///
/// # Errors
/// [`Error::Hub`] when the model is not cached and the network is off or the
/// download fails.
pub(crate) fn resolve_hub_model(repo: &str, hub: &HubOptions) -> crate::Result<PathBuf> {
    if let Some(dir) = cached_snapshot(repo, hub).filter(|d| snapshot_is_complete(d)) {
        tracing::debug!(repo, dir = %dir.display(), "hub model found in the cache");
        return Ok(dir);
    }
    let hub_error = |message: String| Error::Hub {
        repo: repo.to_string(),
        revision: hub.revision().to_string(),
        message,
    };
    if hub.offline() {
        return Err(hub_error(format!(
            "not in the cache at {} and offline mode is on (HF_HUB_OFFLINE): download it first or unset HF_HUB_OFFLINE",
            hub.cache_dir().display()
        )));
    }
    download(repo, hub).map_err(hub_error)
}

fn download(repo: &str, hub: &HubOptions) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    let api = ApiBuilder::new()
        .with_cache_dir(hub.cache_dir())
        .with_token(hub.token())
        .with_progress(false)
        .build()
        .map_err(|e| format!("cannot start the hub client: {e}"))?;
    let api = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        hub.revision().to_string(),
    ));
    let mut snapshot: Option<PathBuf> = None;
    for file in MODEL_FILES {
        match api.get(file) {
            Ok(path) => {
                snapshot = snapshot.or_else(|| path.parent().map(Path::to_path_buf));
            }
            Err(e) => tracing::debug!(repo, file, error = %e, "optional file not downloaded"),
        }
    }
    let dir = snapshot.ok_or_else(|| {
        "none of config.json, adapter_config.json could be downloaded (check the id, revision, network and token)"
            .to_string()
    })?;
    if dir.join("config.json").is_file() {
        let weights = match api.get("model.safetensors.index.json") {
            Ok(index) => {
                let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
                let json: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("bad index: {e}"))?;
                let mut shards: Vec<String> = json
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .map(|m| {
                        m.values()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                shards.sort();
                shards.dedup();
                shards
            }
            Err(_) => vec!["model.safetensors".to_string()],
        };
        for file in weights {
            api.get(&file)
                .map_err(|e| format!("cannot download {file}: {e}"))?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_options_win() {
        let hub = HubOptions::default()
            .with_cache_dir("/x/y")
            .with_offline(true)
            .with_revision("v1");
        assert_eq!(hub.cache_dir(), PathBuf::from("/x/y"));
        assert!(hub.offline());
        assert_eq!(hub.revision(), "v1");
        assert_eq!(
            repo_folder(Path::new("/c"), "org/name"),
            PathBuf::from("/c/models--org--name")
        );
    }
}
