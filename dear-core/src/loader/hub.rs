//! Hub ids (`org/name`) resolved through the Hugging Face cache, laid out as
//! `huggingface_hub` lays it out:
//!
//! ```text
//! <cache>/models--<org>--<name>/refs/<revision>          (a file holding a commit hash)
//! <cache>/models--<org>--<name>/snapshots/<commit>/<file> (a link into blobs/)
//! <cache>/models--<org>--<name>/blobs/<etag>
//! ```
//!
//! `<cache>` is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//! A model already in the cache loads with no network at all; with `HF_HUB_OFFLINE=1`
//! (or [`HubOptions::with_offline`]) nothing is downloaded and a file that is not
//! cached is an error naming the repository, revision and cache folder.
//!
//! Downloads read the rest of the environment as `huggingface_hub` does:
//!
//! - the access token from `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else from
//!   the token file `huggingface-cli login` writes: `HF_TOKEN_PATH`, else `HF_HOME/token`,
//!   else `~/.cache/huggingface/token`;
//! - the server from `HF_ENDPOINT` (default `https://huggingface.co`);
//! - a progress bar on stderr when it is a terminal, unless `HF_HUB_DISABLE_PROGRESS_BARS`
//!   is set.
//!
//! Each can be given explicitly on [`HubOptions`] instead, and then wins.

use std::ffi::OsString;
use std::fmt;
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
///     .with_revision("main")
///     .with_endpoint("https://hf-mirror.example")
///     .with_progress(false);
/// assert_eq!(hub.cache_dir(), std::path::PathBuf::from("/tmp/hf-cache"));
/// assert!(hub.offline());
/// ```
#[derive(Clone, Default)]
pub struct HubOptions {
    cache_dir: Option<PathBuf>,
    offline: Option<bool>,
    revision: Option<String>,
    token: Option<String>,
    endpoint: Option<String>,
    progress: Option<bool>,
}

/// Shows every field but the token, which is only said to be set or not.
impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("revision", &self.revision)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("endpoint", &self.endpoint)
            .field("progress", &self.progress)
            .finish()
    }
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

/// The hub server used when neither [`HubOptions::with_endpoint`] nor `HF_ENDPOINT` says
/// otherwise.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

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

    /// An access token for gated or private repositories; it wins over the environment,
    /// and an empty one sends no token at all. Default, as in `huggingface_hub`:
    /// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file that
    /// `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `HF_HOME/token`, else
    /// `~/.cache/huggingface/token`), with surrounding blanks and line breaks removed.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The hub server to download from, such as a mirror: an `http://` or `https://`
    /// URL, trailing `/` ignored. Default: `HF_ENDPOINT`, else `https://huggingface.co`.
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Whether downloads draw a progress bar on stderr; `false` keeps them quiet.
    /// Default: on, unless `HF_HUB_DISABLE_PROGRESS_BARS` is set (`1`, `true`, `yes`,
    /// `on`). Either way no bar is drawn when stderr is not a terminal, so pipes, logs
    /// and tests stay clean.
    #[must_use]
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The cache folder in effect.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir_in(&process_env)
    }

    /// Whether the network is off.
    pub fn offline(&self) -> bool {
        self.offline
            .unwrap_or_else(|| env_flag(&process_env, "HF_HUB_OFFLINE"))
    }

    /// The revision in effect.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    fn cache_dir_in(&self, env: Env<'_>) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        if let Some(dir) = env_os(env, "HF_HUB_CACHE") {
            return PathBuf::from(dir);
        }
        hf_home(env)
            .unwrap_or_else(|| Path::new(".cache").join("huggingface"))
            .join("hub")
    }
}

/// Reads one environment variable. Passed in rather than read directly so that the
/// rules below can be tested without touching the process environment.
type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process environment, as an [`Env`].
fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// A variable's value; `None` when it is unset or empty.
fn env_os(env: Env<'_>, name: &str) -> Option<OsString> {
    env(name).filter(|v| !v.is_empty())
}

/// A variable's value as text; `None` when it is unset or empty.
///
/// # Errors
/// When the value is not UTF-8; the message names the variable.
fn env_text(env: Env<'_>, name: &str) -> std::result::Result<Option<String>, String> {
    env_os(env, name)
        .map(|v| {
            v.into_string()
                .map_err(|_| format!("the environment variable {name} is not valid UTF-8"))
        })
        .transpose()
}

/// Whether a variable is set to `1`, `true`, `yes` or `on` (any case).
fn env_flag(env: Env<'_>, name: &str) -> bool {
    env_os(env, name)
        .and_then(|v| v.into_string().ok())
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// `HF_HOME`, else `~/.cache/huggingface`; `None` when neither `HF_HOME` nor `HOME` is
/// set.
fn hf_home(env: Env<'_>) -> Option<PathBuf> {
    env_os(env, "HF_HOME").map(PathBuf::from).or_else(|| {
        env_os(env, "HOME").map(|home| PathBuf::from(home).join(".cache").join("huggingface"))
    })
}

/// Where the token in effect came from: named in messages, unlike the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TokenSource {
    /// [`HubOptions::with_token`].
    Options,
    /// An environment variable: `HF_TOKEN` or `HUGGING_FACE_HUB_TOKEN`.
    Env(&'static str),
    /// The token file `huggingface-cli login` writes.
    File(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Options => f.write_str("HubOptions::with_token"),
            Self::Env(name) => f.write_str(name),
            Self::File(path) => write!(f, "the token file {}", path.display()),
        }
    }
}

/// An access token and where it came from. Not `Debug`, so it cannot reach a log.
struct Token {
    secret: String,
    source: TokenSource,
}

/// The token with line breaks and surrounding blanks removed, as `huggingface_hub`
/// cleans it; `None` when nothing is left.
fn clean_token(raw: &str) -> Option<String> {
    let token: String = raw.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// The token file: `HF_TOKEN_PATH`, else `HF_HOME/token`, else
/// `~/.cache/huggingface/token`.
fn token_path(env: Env<'_>) -> Option<PathBuf> {
    env_os(env, "HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| hf_home(env).map(|home| home.join("token")))
}

/// The access token to send, following `huggingface_hub`'s `get_token`: the explicit
/// token when there is one (an empty one means none); else `HF_TOKEN`, or when that is
/// unset or empty `HUGGING_FACE_HUB_TOKEN`; else, when that gives no token, the token
/// file. A token file that does not exist means no token.
///
/// # Errors
/// When a token variable is not UTF-8, or the token file exists but cannot be read as
/// text; the message names the variable or the file.
fn resolve_token(
    explicit: Option<&str>,
    env: Env<'_>,
) -> std::result::Result<Option<Token>, String> {
    if let Some(token) = explicit {
        return Ok(clean_token(token).map(|secret| Token {
            secret,
            source: TokenSource::Options,
        }));
    }
    for name in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Some(raw) = env_text(env, name)? {
            if let Some(secret) = clean_token(&raw) {
                return Ok(Some(Token {
                    secret,
                    source: TokenSource::Env(name),
                }));
            }
            // Set but blank: huggingface_hub goes on to the file, not to the next name.
            break;
        }
    }
    let Some(path) = token_path(env) else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(clean_token(&text).map(|secret| Token {
            secret,
            source: TokenSource::File(path),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read the token file {}: {e}",
            path.display()
        )),
    }
}

/// The hub server in effect, without a trailing `/`: the explicit endpoint, else
/// `HF_ENDPOINT`, else `https://huggingface.co`.
///
/// # Errors
/// When the endpoint in effect is not an `http://` or `https://` URL, or `HF_ENDPOINT`
/// is not UTF-8; the message names where the value came from.
fn resolve_endpoint(explicit: Option<&str>, env: Env<'_>) -> std::result::Result<String, String> {
    let (value, source) = match explicit.filter(|e| !e.is_empty()) {
        Some(endpoint) => (endpoint.to_string(), "HubOptions::with_endpoint"),
        None => match env_text(env, "HF_ENDPOINT")? {
            Some(endpoint) => (endpoint, "HF_ENDPOINT"),
            None => return Ok(DEFAULT_ENDPOINT.to_string()),
        },
    };
    let endpoint = value.trim().trim_end_matches('/');
    let host = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    match host {
        Some(host) if !host.is_empty() => Ok(endpoint.to_string()),
        _ => Err(format!(
            "the endpoint `{value}` from {source} is not an http:// or https:// URL"
        )),
    }
}

/// Whether downloads draw a progress bar: unless turned off explicitly or by
/// `HF_HUB_DISABLE_PROGRESS_BARS`, and only on a terminal.
fn show_progress(explicit: Option<bool>, env: Env<'_>, stderr_is_terminal: bool) -> bool {
    explicit.unwrap_or(true) && !env_flag(env, "HF_HUB_DISABLE_PROGRESS_BARS") && stderr_is_terminal
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

/// Downloads what loading `repo` needs into the cache and returns its snapshot folder.
///
/// # Errors
/// A message naming the endpoint, the file and the token's source (never the token)
/// when the client cannot start or a needed file cannot be downloaded.
fn download(repo: &str, hub: &HubOptions) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};
    use std::io::IsTerminal;

    let env: Env<'_> = &process_env;
    let endpoint = resolve_endpoint(hub.endpoint.as_deref(), env)?;
    let token = resolve_token(hub.token.as_deref(), env)?;
    let progress = show_progress(hub.progress, env, std::io::stderr().is_terminal());
    let token_note = match &token {
        Some(token) => format!("token from {}", token.source),
        None => {
            "no token sent: gated or private repositories need HF_TOKEN or `huggingface-cli login`"
                .to_string()
        }
    };
    tracing::debug!(repo, endpoint, token = %token_note, "downloading from the hub");

    // `from_cache` rather than `new`: the latter panics when there is no home folder.
    let api = ApiBuilder::from_cache(Cache::new(hub.cache_dir()))
        .with_endpoint(endpoint.clone())
        .with_token(token.map(|t| t.secret))
        .with_progress(progress)
        .build()
        .map_err(|e| format!("cannot start the hub client for {endpoint}: {e}"))?;
    let api = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        hub.revision().to_string(),
    ));
    let mut snapshot: Option<PathBuf> = None;
    let mut config_errors = Vec::new();
    for file in MODEL_FILES {
        match api.get(file) {
            Ok(path) => {
                snapshot = snapshot.or_else(|| path.parent().map(Path::to_path_buf));
            }
            Err(e) => {
                tracing::debug!(repo, file, error = %e, "optional file not downloaded");
                if matches!(*file, "config.json" | "adapter_config.json") {
                    config_errors.push(format!("{file}: {e}"));
                }
            }
        }
    }
    let dir = snapshot.ok_or_else(|| {
        format!(
            "none of config.json, adapter_config.json could be downloaded from {endpoint} ({}; {token_note})",
            config_errors.join("; ")
        )
    })?;
    if dir.join("config.json").is_file() {
        let weights = match api.get("model.safetensors.index.json") {
            Ok(index) => {
                let text = std::fs::read_to_string(&index)
                    .map_err(|e| format!("cannot read {}: {e}", index.display()))?;
                let json: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("bad index {}: {e}", index.display()))?;
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
            api.get(&file).map_err(|e| {
                format!("cannot download {file} from {endpoint}: {e} ({token_note})")
            })?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// An [`Env`] over fixed values.
    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), OsString::from(v)))
            .collect();
        move |name: &str| vars.get(name).cloned()
    }

    fn token_in(
        explicit: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<Option<(String, TokenSource)>, String> {
        Ok(resolve_token(explicit, &env_of(vars))?.map(|t| (t.secret, t.source)))
    }

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

    #[test]
    fn cache_dir_follows_hf_hub_cache_then_hf_home_then_home() {
        let hub = HubOptions::default();
        let all = [("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h"), ("HOME", "/u")];
        assert_eq!(hub.cache_dir_in(&env_of(&all)), PathBuf::from("/c"));
        assert_eq!(
            hub.cache_dir_in(&env_of(&all[1..])),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            hub.cache_dir_in(&env_of(&all[2..])),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
        let empty = [("HF_HUB_CACHE", ""), ("HF_HOME", ""), ("HOME", "/u")];
        assert_eq!(
            hub.cache_dir_in(&env_of(&empty)),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
    }

    #[test]
    fn token_follows_huggingface_hub_precedence() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let home = dir.path().join("home");
        let default_file = home.join(".cache/huggingface/token");
        std::fs::create_dir_all(home.join(".cache/huggingface"))?;
        std::fs::write(&default_file, "  hf_default \r\n")?;
        let hf_home = dir.path().join("hf-home");
        std::fs::create_dir_all(&hf_home)?;
        std::fs::write(hf_home.join("token"), "hf_home\n")?;
        let custom = dir.path().join("custom-token");
        std::fs::write(&custom, "hf_custom")?;
        let (home_s, hf_home_s, custom_s) = (
            home.to_string_lossy(),
            hf_home.to_string_lossy(),
            custom.to_string_lossy(),
        );

        let mut vars = vec![("HOME", &*home_s)];
        let file = |p: &Path| TokenSource::File(p.to_path_buf());
        assert_eq!(
            token_in(None, &vars)?,
            Some(("hf_default".into(), file(&default_file)))
        );
        vars.push(("HF_HOME", &hf_home_s));
        assert_eq!(
            token_in(None, &vars)?,
            Some(("hf_home".into(), file(&hf_home.join("token"))))
        );
        vars.push(("HF_TOKEN_PATH", &custom_s));
        assert_eq!(
            token_in(None, &vars)?,
            Some(("hf_custom".into(), file(&custom)))
        );
        vars.push(("HUGGING_FACE_HUB_TOKEN", " hf_legacy\n"));
        assert_eq!(
            token_in(None, &vars)?,
            Some((
                "hf_legacy".into(),
                TokenSource::Env("HUGGING_FACE_HUB_TOKEN")
            ))
        );
        vars.push(("HF_TOKEN", "hf_env"));
        assert_eq!(
            token_in(None, &vars)?,
            Some(("hf_env".into(), TokenSource::Env("HF_TOKEN")))
        );
        assert_eq!(
            token_in(Some(" hf_explicit\n"), &vars)?,
            Some(("hf_explicit".into(), TokenSource::Options))
        );
        assert_eq!(
            token_in(Some(""), &vars)?,
            None,
            "an empty explicit token sends none"
        );

        // An empty HF_TOKEN is unset; a blank one skips to the file, as in huggingface_hub.
        let mut empty = vars.clone();
        *empty.last_mut().ok_or("no vars")? = ("HF_TOKEN", "");
        assert_eq!(
            token_in(None, &empty)?.map(|t| t.1),
            Some(TokenSource::Env("HUGGING_FACE_HUB_TOKEN"))
        );
        *empty.last_mut().ok_or("no vars")? = ("HF_TOKEN", " \n");
        assert_eq!(token_in(None, &empty)?.map(|t| t.1), Some(file(&custom)));
        Ok(())
    }

    #[test]
    fn token_file_missing_blank_or_unreadable() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        let path_s = path.to_string_lossy().into_owned();
        let vars = [("HF_TOKEN_PATH", path_s.as_str())];
        assert_eq!(token_in(None, &vars)?, None, "no file, no token");
        std::fs::write(&path, " \n")?;
        assert_eq!(token_in(None, &vars)?, None, "blank file, no token");
        assert_eq!(token_in(None, &[])?, None, "no HOME, no token");
        let not_a_file = dir.path().to_string_lossy().into_owned();
        let err = token_in(None, &[("HF_TOKEN_PATH", &not_a_file)])
            .err()
            .ok_or("a folder read as a token file")?;
        assert!(
            err.contains(&not_a_file) && err.contains("token file"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn endpoint_from_options_then_hf_endpoint() -> Result<(), String> {
        let env = env_of(&[("HF_ENDPOINT", "http://mirror.test:8080/")]);
        assert_eq!(resolve_endpoint(None, &env_of(&[]))?, DEFAULT_ENDPOINT);
        assert_eq!(resolve_endpoint(None, &env)?, "http://mirror.test:8080");
        assert_eq!(
            resolve_endpoint(Some("https://other.test"), &env)?,
            "https://other.test"
        );
        assert_eq!(resolve_endpoint(Some(""), &env)?, "http://mirror.test:8080");
        let err = resolve_endpoint(None, &env_of(&[("HF_ENDPOINT", "mirror.test")]))
            .err()
            .ok_or("accepted an endpoint with no scheme")?;
        assert!(
            err.contains("HF_ENDPOINT") && err.contains("mirror.test"),
            "{err}"
        );
        let err = resolve_endpoint(Some("https://"), &env)
            .err()
            .ok_or("accepted an endpoint with no host")?;
        assert!(err.contains("with_endpoint"), "{err}");
        Ok(())
    }

    #[test]
    fn progress_only_on_a_terminal_unless_quiet() {
        let none = env_of(&[]);
        let disabled = env_of(&[("HF_HUB_DISABLE_PROGRESS_BARS", "1")]);
        assert!(show_progress(None, &none, true));
        assert!(show_progress(Some(true), &none, true));
        assert!(!show_progress(Some(false), &none, true));
        assert!(!show_progress(None, &none, false));
        assert!(!show_progress(Some(true), &none, false));
        assert!(!show_progress(None, &disabled, true));
        assert!(!show_progress(Some(true), &disabled, true));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let hub = HubOptions::default().with_token("hf_secret");
        let shown = format!("{hub:?}");
        assert!(
            !shown.contains("hf_secret") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
