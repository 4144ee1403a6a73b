//! Hub ids resolve through a Hugging Face cache folder with no network at all, and
//! download into it from a hub-shaped HTTP server on loopback.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use dear_core::{Batch, HubOptions, LanguageModel, LoadOptions, Outputs};

use crate::common::{expected, fixture, floats, ids, max_abs_diff, TestResult};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Builds `models--test-org--tiny-gqa/{refs/main, snapshots/<commit>/...}` as
/// huggingface_hub lays it out.
fn build_cache(root: &Path) -> TestResult {
    let repo = root.join("models--test-org--tiny-gqa");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs").join("main"), COMMIT)?;
    std::fs::write(repo.join("refs").join("v1.0"), COMMIT)?;
    for entry in std::fs::read_dir(fixture("tiny-gqa"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), snap.join(entry.file_name()))?;
    }
    Ok(())
}

fn logits_of(lm: &LanguageModel) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let input = ids(&expected("tiny-gqa")["inputs"])[1].clone();
    let out = lm.llama().forward(
        &Batch::from_sequences(&[input])?,
        &mut [],
        Outputs::last_logits(),
    )?;
    Ok(out.logits.ok_or("no logits")?.get(0)?.to_vec1::<f32>()?)
}

#[test]
fn cached_model_loads_offline_by_branch_tag_and_commit() -> TestResult {
    let cache = tempfile::tempdir()?;
    build_cache(cache.path())?;
    let want = floats(&expected("tiny-gqa")["last_logits"])[1].clone();
    for revision in ["main", "v1.0", COMMIT] {
        let hub = HubOptions::default()
            .with_cache_dir(cache.path())
            .with_offline(true)
            .with_revision(revision);
        let lm = LanguageModel::load("test-org/tiny-gqa", &LoadOptions::default().with_hub(hub))?;
        let d = max_abs_diff(&logits_of(&lm)?, &want);
        assert!(d < 1e-4, "revision {revision}: logits differ by {d}");
    }
    let hub = HubOptions::default()
        .with_cache_dir(cache.path())
        .with_offline(true)
        .with_revision("v2.0");
    let err = LanguageModel::load("test-org/tiny-gqa", &LoadOptions::default().with_hub(hub))
        .err()
        .ok_or("resolved a revision that is not cached")?;
    assert!(err.to_string().contains("v2.0"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Downloads, against a fake hub on loopback.
// ---------------------------------------------------------------------------------------

const REPO: &str = "test-org/tiny-gqa";

/// The files of `tiny-gqa` that a download must bring into the snapshot.
const DOWNLOADED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
];

/// One request the fake hub received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// What the fake hub serves: `test-org/tiny-gqa` at [`COMMIT`], gated behind one token.
struct Served {
    files: HashMap<String, Vec<u8>>,
    token: String,
}

/// A hub-shaped HTTP/1.1 server on `127.0.0.1`, one thread per connection, each closed
/// after one answer. It answers `GET`/`HEAD /{repo}/resolve/{revision}/{file}` as
/// huggingface.co does for what hf-hub's sync client reads:
///
/// - `401` (`x-error-code: GatedRepo`) unless `authorization: Bearer <token>` is sent;
/// - small files: `x-repo-commit` and a quoted `etag`, the bytes asked for by `range`
///   (`206` with `content-range: bytes a-b/total`, which is how the client learns the
///   size), or all of them (`200`);
/// - `*.safetensors` (LFS on the hub): `302` to an absolute `/cdn/{etag}` URL carrying
///   `x-repo-commit`, `x-linked-etag` and `x-linked-size`, the CDN answering ranges the
///   same way and asking for no token;
/// - `404` with `x-error-code` `EntryNotFound` / `RevisionNotFound` otherwise.
///
/// Every request's path and `authorization` header are recorded.
struct FakeHub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    fn start(token: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(fixture("tiny-gqa"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "expected.json" {
                files.insert(name, std::fs::read(entry.path())?);
            }
        }
        let served = Arc::new(Served {
            files,
            token: token.to_string(),
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (served, seen) = (Arc::clone(&served), Arc::clone(&seen));
                    std::thread::spawn(move || {
                        // A broken connection fails the client, which the test reports.
                        let _ = answer(stream, addr, &served, &seen);
                    });
                }
            })
        };
        Ok(Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `resolve` requests (those the token must be sent with), which must exist.
    fn resolves(&self) -> Result<Vec<Seen>, String> {
        let resolves: Vec<Seen> = self
            .seen()
            .into_iter()
            .filter(|s| s.path.starts_with(&format!("/{REPO}/resolve/")))
            .collect();
        if resolves.is_empty() {
            return Err(format!("{} was never called", self.url()));
        }
        Ok(resolves)
    }

    /// Stops accepting and closes the port: later connections are refused.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP answer.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn write_to(&self, mut stream: &TcpStream, head_only: bool) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {} X\r\n", self.status);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            self.body.len()
        ));
        stream.write_all(head.as_bytes())?;
        if !head_only {
            stream.write_all(&self.body)?;
        }
        stream.flush()
    }
}

/// Reads one request, records it and answers it.
fn answer(
    stream: TcpStream,
    addr: SocketAddr,
    served: &Served,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            path: path.clone(),
            authorization: headers.get("authorization").cloned(),
        });
    route(&path, &headers, addr, served).write_to(&stream, method == "HEAD")
}

fn route(
    path: &str,
    headers: &HashMap<String, String>,
    addr: SocketAddr,
    served: &Served,
) -> Reply {
    if let Some(etag) = path.strip_prefix("/cdn/") {
        return match served.files.values().find(|body| etag_of(body) == etag) {
            Some(body) => ranged(body, headers),
            None => Reply::new(404),
        };
    }
    let Some(rest) = path.strip_prefix(&format!("/{REPO}/resolve/")) else {
        return Reply::new(404).header("x-error-code", "RepoNotFound");
    };
    if headers.get("authorization") != Some(&format!("Bearer {}", served.token)) {
        return Reply::new(401).header("x-error-code", "GatedRepo");
    }
    let Some((revision, file)) = rest.split_once('/') else {
        return Reply::new(404).header("x-error-code", "EntryNotFound");
    };
    if revision != "main" && revision != COMMIT {
        return Reply::new(404).header("x-error-code", "RevisionNotFound");
    }
    let Some(body) = served.files.get(file) else {
        return Reply::new(404)
            .header("x-repo-commit", COMMIT)
            .header("x-error-code", "EntryNotFound");
    };
    let etag = etag_of(body);
    if file.ends_with(".safetensors") {
        return Reply::new(302)
            .header("x-repo-commit", COMMIT)
            .header("x-linked-etag", format!("\"{etag}\""))
            .header("x-linked-size", body.len().to_string())
            .header("location", format!("http://{addr}/cdn/{etag}"));
    }
    ranged(body, headers)
        .header("x-repo-commit", COMMIT)
        .header("etag", format!("\"{etag}\""))
}

/// `body`, or the part of it the `range` header asks for.
fn ranged(body: &[u8], headers: &HashMap<String, String>) -> Reply {
    let Some(range) = headers.get("range") else {
        let mut reply = Reply::new(200);
        reply.body = body.to_vec();
        return reply;
    };
    let total = body.len();
    let parsed = range.strip_prefix("bytes=").and_then(|spec| {
        let (start, end) = spec.split_once('-')?;
        let start: usize = start.parse().ok()?;
        let last = total.checked_sub(1)?;
        let end = if end.is_empty() {
            last
        } else {
            end.parse::<usize>().ok()?.min(last)
        };
        (start <= end).then_some((start, end))
    });
    match parsed {
        Some((start, end)) => {
            let mut reply =
                Reply::new(206).header("content-range", format!("bytes {start}-{end}/{total}"));
            reply.body = body[start..=end].to_vec();
            reply
        }
        None => Reply::new(416).header("content-range", format!("bytes */{total}")),
    }
}

/// A content hash standing in for the hub's sha (FNV-1a).
fn etag_of(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Serializes the tests that set `HF_*` variables: the environment is process-wide.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// The variables hub resolution reads; cleared for each test that sets any.
const HUB_VARS: &[&str] = &[
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_HUB_DISABLE_PROGRESS_BARS",
];

/// Sets environment variables for one test and puts them back when dropped; holds
/// [`ENV_LOCK`] meanwhile.
struct EnvGuard {
    saved: Vec<(&'static str, Option<OsString>)>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl EnvGuard {
    /// Takes the lock and clears [`HUB_VARS`].
    fn clean() -> Self {
        let mut guard = Self {
            saved: Vec::new(),
            _lock: ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner),
        };
        for name in HUB_VARS {
            guard.unset(name);
        }
        guard
    }

    fn save(&mut self, name: &'static str) {
        if !self.saved.iter().any(|(saved, _)| *saved == name) {
            self.saved.push((name, std::env::var_os(name)));
        }
    }

    fn set(&mut self, name: &'static str, value: impl AsRef<OsStr>) {
        self.save(name);
        std::env::set_var(name, value);
    }

    fn unset(&mut self, name: &'static str) {
        self.save(name);
        std::env::remove_var(name);
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (name, value) in self.saved.drain(..).rev() {
            match value {
                Some(value) => std::env::set_var(name, value),
                None => std::env::remove_var(name),
            }
        }
    }
}

/// Hub options for tests: never a progress bar, even when `cargo test` runs on a
/// terminal.
fn quiet() -> HubOptions {
    HubOptions::default().with_progress(false)
}

fn load_checked(hub: HubOptions) -> TestResult {
    let lm = LanguageModel::load(REPO, &LoadOptions::default().with_hub(hub))?;
    let want = floats(&expected("tiny-gqa")["last_logits"])[1].clone();
    let d = max_abs_diff(&logits_of(&lm)?, &want);
    assert!(d < 1e-4, "logits differ by {d}");
    Ok(())
}

fn assert_all_sent(hub: &FakeHub, authorization: &str) -> TestResult {
    for seen in hub.resolves()? {
        assert_eq!(
            seen.authorization.as_deref(),
            Some(authorization),
            "{seen:?}"
        );
    }
    Ok(())
}

/// `refs/main` names the commit, each file sits in `snapshots/<commit>/` with the served
/// bytes, as a link into `blobs/`, and no partial download is left.
fn assert_cache_layout(cache: &Path) -> TestResult {
    let repo = cache.join("models--test-org--tiny-gqa");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main"))?, COMMIT);
    let snapshot = repo.join("snapshots").join(COMMIT);
    let blobs = repo.join("blobs").canonicalize()?;
    for file in DOWNLOADED {
        let path = snapshot.join(file);
        assert_eq!(
            std::fs::read(&path)?,
            std::fs::read(fixture("tiny-gqa").join(file))?,
            "{file}"
        );
        if cfg!(unix) {
            assert!(path.symlink_metadata()?.file_type().is_symlink(), "{file}");
            assert_eq!(
                path.canonicalize()?.parent(),
                Some(blobs.as_path()),
                "{file}"
            );
        }
    }
    for entry in std::fs::read_dir(&blobs)? {
        let name = entry?.file_name();
        assert!(
            !name.to_string_lossy().ends_with(".part"),
            "{name:?} left behind"
        );
    }
    Ok(())
}

#[test]
fn download_sends_the_token_file_or_hf_token_to_hf_endpoint_then_loads_offline() -> TestResult {
    let mut env = EnvGuard::clean();
    let home = tempfile::tempdir()?;
    std::fs::write(home.path().join("token"), "hf_from_file\n")?;
    env.set("HF_HOME", home.path());

    // HF_TOKEN unset: the token `huggingface-cli login` left in HF_HOME/token is sent to
    // HF_ENDPOINT, and the model lands in HF_HOME/hub.
    let mut gated_on_file = FakeHub::start("hf_from_file")?;
    env.set("HF_ENDPOINT", gated_on_file.url());
    load_checked(quiet())?;
    assert_all_sent(&gated_on_file, "Bearer hf_from_file")?;
    assert_cache_layout(&home.path().join("hub"))?;

    // HF_TOKEN set: it wins over the token file.
    let mut gated_on_env = FakeHub::start("hf_from_env")?;
    env.set("HF_ENDPOINT", gated_on_env.url());
    env.set("HF_TOKEN", "hf_from_env");
    let cache = tempfile::tempdir()?;
    load_checked(quiet().with_cache_dir(cache.path()))?;
    assert_all_sent(&gated_on_env, "Bearer hf_from_env")?;
    assert_cache_layout(cache.path())?;

    // No token anywhere: the gated repository refuses, and the error says so.
    env.unset("HF_TOKEN");
    std::fs::remove_file(home.path().join("token"))?;
    let empty = tempfile::tempdir()?;
    let before = gated_on_env.seen().len();
    let err = LanguageModel::load(
        REPO,
        &LoadOptions::default().with_hub(quiet().with_cache_dir(empty.path())),
    )
    .err()
    .ok_or("a gated repository downloaded with no token")?
    .to_string();
    assert!(
        err.contains(REPO) && err.contains("401") && err.contains("no token sent"),
        "{err}"
    );
    assert!(err.contains(&gated_on_env.url()), "{err}");
    let unauthorized = &gated_on_env.seen()[before..];
    assert!(
        !unauthorized.is_empty() && unauthorized.iter().all(|s| s.authorization.is_none()),
        "{unauthorized:?}"
    );

    // Offline with every server gone: the cached model loads; an uncached one is an
    // error that says offline mode is on.
    gated_on_file.stop();
    gated_on_env.stop();
    env.set("HF_HUB_OFFLINE", "1");
    load_checked(HubOptions::default())?;
    load_checked(HubOptions::default().with_cache_dir(cache.path()))?;
    let err = LanguageModel::load(
        REPO,
        &LoadOptions::default().with_hub(HubOptions::default().with_cache_dir(empty.path())),
    )
    .err()
    .ok_or("an uncached model resolved offline")?
    .to_string();
    assert!(err.contains("offline"), "{err}");
    Ok(())
}

#[test]
fn explicit_endpoint_and_token_win_over_the_environment() -> TestResult {
    let mut env = EnvGuard::clean();
    let mut gone = FakeHub::start("hf_unused")?;
    gone.stop();
    env.set("HF_ENDPOINT", gone.url());
    env.set("HF_TOKEN", "hf_wrong");
    let hub = FakeHub::start("hf_explicit")?;
    let cache = tempfile::tempdir()?;
    load_checked(
        quiet()
            .with_cache_dir(cache.path())
            .with_endpoint(format!("{}/", hub.url()))
            .with_token("hf_explicit"),
    )?;
    assert_all_sent(&hub, "Bearer hf_explicit")?;
    assert_cache_layout(cache.path())?;
    Ok(())
}

#[test]
fn a_bad_endpoint_is_an_error_naming_it() -> TestResult {
    let cache = tempfile::tempdir()?;
    let hub = quiet()
        .with_cache_dir(cache.path())
        .with_offline(false)
        .with_endpoint("huggingface.co");
    let err = LanguageModel::load(REPO, &LoadOptions::default().with_hub(hub))
        .err()
        .ok_or("downloaded from an endpoint with no scheme")?
        .to_string();
    assert!(
        err.contains(REPO) && err.contains("`huggingface.co`") && err.contains("with_endpoint"),
        "{err}"
    );
    Ok(())
}
