//! `dear serve` end to end: the real binary on a loopback port, called with reqwest.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dear::dear_core::{default_model_path, DearSetup, RerankOptions, Stages};
use reqwest::blocking::Client;
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn tiny_classifier() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dear-core/tests/golden/lora/tiny-seqcls")
}

/// A `dear serve` process, killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(args: &[&str]) -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dear"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(120))?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected first line: {line:?}"))?
            .to_string();
        Ok(Self { child, url })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("an HTTP client")
}

fn post(c: &Client, url: &str, body: &Value) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let r = c.post(url).json(body).send()?;
    let status = r.status().as_u16();
    Ok((status, r.json()?))
}

fn healthy(c: &Client, s: &Served) -> TestResult {
    let r = c.get(s.url("/health")).send()?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>()?["status"], "ok");
    Ok(())
}

const DOCS: [&str; 5] = [
    "Rain forms when water droplets in clouds coalesce and fall.",
    "Paris is the capital of France.",
    "Clouds are made of tiny droplets of water or ice.",
    "The stock market closed higher on Friday.",
    "Precipitation includes rain, snow and hail.",
];
const QUERY: &str = "what causes rain";

#[test]
fn rerank_shapes_match_the_library_and_bad_input_names_the_field() -> TestResult {
    let model = tiny_classifier();
    let model_arg = model.to_string_lossy().to_string();
    let s = Served::start(&[
        "--model",
        &model_arg,
        "--max-documents",
        "30",
        "--max-body-bytes",
        "8192",
    ])?;
    let c = client();

    // The library, in process, on the same model: the pointwise stage alone.
    let reranker = DearSetup::new(&model).build()?;
    let options = RerankOptions::default().with_stages(Stages {
        pointwise: true,
        listwise: false,
    });
    let lib = reranker.rank(QUERY, DOCS, &options)?;
    let lib_pairs: Vec<(u64, f64)> = lib
        .results
        .iter()
        .map(|r| (r.index as u64, f64::from(r.relevance_score)))
        .collect();

    // Cohere v2.
    let (status, v2) = post(
        &c,
        &s.url("/v2/rerank"),
        &json!({"model": "dear", "query": QUERY, "documents": DOCS}),
    )?;
    assert_eq!(status, 200, "{v2}");
    let pairs: Vec<(u64, f64)> = v2["results"]
        .as_array()
        .ok_or("no results")?
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap_or(99),
                r["relevance_score"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    assert_eq!(pairs.len(), DOCS.len());
    for ((i, a), (j, b)) in pairs.iter().zip(&lib_pairs) {
        assert_eq!(
            i, j,
            "order differs from the library: {pairs:?} vs {lib_pairs:?}"
        );
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        assert!((0.0..=1.0).contains(a));
    }
    assert!(
        pairs.windows(2).all(|w| w[0].1 >= w[1].1),
        "not sorted: {pairs:?}"
    );
    assert_eq!(v2["meta"]["api_version"]["version"], "2");
    assert!(v2["meta"]["tokens"]["input_tokens"]
        .as_u64()
        .is_some_and(|t| t > 0));
    assert!(v2["id"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(v2["dear"]["fallbacks"], json!([]));

    // top_n cuts; objects with a title are documents too.
    let (status, top) = post(
        &c,
        &s.url("/v2/rerank"),
        &json!({"query": QUERY, "documents": DOCS, "top_n": 2}),
    )?;
    assert_eq!(status, 200);
    assert_eq!(top["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(top["results"][0]["index"].as_u64(), Some(lib_pairs[0].0));
    let (status, objects) = post(
        &c,
        &s.url("/v2/rerank"),
        &json!({"query": QUERY, "documents": [{"text": "Rain falls.", "title": "Weather"}, {"text": "Paris."}]}),
    )?;
    assert_eq!(status, 200, "{objects}");

    // Cohere v1 / Jina: documents come back when asked.
    let (status, v1) = post(
        &c,
        &s.url("/v1/rerank"),
        &json!({"model": "x", "query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": true}),
    )?;
    assert_eq!(status, 200, "{v1}");
    let first = &v1["results"][0];
    let index = first["index"].as_u64().ok_or("no index")? as usize;
    assert_eq!(first["document"]["text"], DOCS[index]);
    assert_eq!(v1["model"], model_arg.as_str());
    // The same query and documents again: the score cache answered, the model read
    // nothing.
    assert_eq!(v1["usage"]["total_tokens"], 0);
    assert_eq!(v1["dear"]["stages"]["stages"][1]["cached"], 5);

    // TEI: relevance by default, the raw score when asked.
    let (status, tei) = post(
        &c,
        &s.url("/rerank"),
        &json!({"query": QUERY, "texts": DOCS, "raw_scores": true, "return_text": true}),
    )?;
    assert_eq!(status, 200, "{tei}");
    let tei = tei.as_array().ok_or("TEI answers an array")?;
    assert_eq!(tei.len(), DOCS.len());
    for (t, l) in tei.iter().zip(&lib.results) {
        assert_eq!(t["index"].as_u64(), Some(l.index as u64));
        assert!((t["score"].as_f64().unwrap_or(f64::NAN) - f64::from(l.score)).abs() < 1e-5);
        assert_eq!(t["text"], DOCS[l.index]);
    }

    // Concurrent requests (8 clients x 25 documents of their own, so that the score
    // cache cannot answer) get what the library gives each one alone.
    let sets: Vec<Vec<String>> = (0..8)
        .map(|k| {
            (0..25)
                .map(|i| format!("{} ({i}, client {k})", DOCS[i % 5]))
                .collect()
        })
        .collect();
    let handles: Vec<_> = sets
        .iter()
        .map(|docs| {
            let (url, body) = (
                s.url("/v2/rerank"),
                json!({"query": QUERY, "documents": docs}),
            );
            std::thread::spawn(move || post(&client(), &url, &body).map_err(|e| e.to_string()))
        })
        .collect();
    for (h, docs) in handles.into_iter().zip(&sets) {
        let (status, got) = h.join().map_err(|_| "client thread panicked")??;
        assert_eq!(status, 200);
        let alone = reranker.rank(QUERY, docs, &options)?;
        let got = got["results"].as_array().ok_or("no results")?;
        assert_eq!(got.len(), alone.results.len());
        for (a, b) in got.iter().zip(&alone.results) {
            assert_eq!(a["index"].as_u64(), Some(b.index as u64));
            let x = a["relevance_score"].as_f64().unwrap_or(f64::NAN);
            assert!((x - f64::from(b.relevance_score)).abs() < 1e-5);
        }
    }

    // A deadline that has passed: the input order, flagged (field or header).
    let (status, late) = post(
        &c,
        &s.url("/v2/rerank"),
        &json!({"query": QUERY, "documents": DOCS, "deadline_ms": 0.001}),
    )?;
    assert_eq!(status, 200);
    let order: Vec<u64> = late["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["index"].as_u64())
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
    assert_eq!(late["dear"]["fallbacks"][0]["stage"], "pointwise");
    assert_eq!(late["dear"]["fallbacks"][0]["reason"], "deadline");
    let r = c
        .post(s.url("/rerank"))
        .header("x-dear-deadline-ms", "0.001")
        .json(&json!({"query": QUERY, "texts": DOCS}))
        .send()?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-dear-fallback"], "pointwise=deadline");

    // Bad input: a 4xx JSON error naming the field, and the server stays up.
    let too_many: Vec<String> = (0..31).map(|i| format!("doc {i}")).collect();
    let huge = "x".repeat(9000);
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a""#.to_vec(),
            400,
            None,
        ),
        ("/v2/rerank", b"\xff\xfe{}".to_vec(), 400, None),
        ("/v2/rerank", b"".to_vec(), 400, None),
        ("/v2/rerank", br#"[1, 2]"#.to_vec(), 422, Some("body")),
        (
            "/v2/rerank",
            br#"{"documents": ["a"]}"#.to_vec(),
            422,
            Some("query"),
        ),
        (
            "/v2/rerank",
            br#"{"query": 7, "documents": ["a"]}"#.to_vec(),
            422,
            Some("query"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a", 3]}"#.to_vec(),
            422,
            Some("documents[1]"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": []}"#.to_vec(),
            422,
            Some("documents"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a", "  "]}"#.to_vec(),
            422,
            Some("documents[1]"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": [{"title": "t"}]}"#.to_vec(),
            422,
            Some("documents[0].text"),
        ),
        (
            "/v2/rerank",
            br#"{"query": " ", "documents": ["a"]}"#.to_vec(),
            422,
            Some("query"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a"], "top_n": 0}"#.to_vec(),
            422,
            Some("top_n"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a"], "top_n": "2"}"#.to_vec(),
            422,
            Some("top_n"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a"], "deadline_ms": "soon"}"#.to_vec(),
            422,
            Some("deadline_ms"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a"], "deadline_ms": 1e300}"#.to_vec(),
            422,
            Some("deadline_ms"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a"], "stages": "pointwise,rerank"}"#.to_vec(),
            422,
            Some("stages"),
        ),
        (
            "/v2/rerank",
            br#"{"query": "q", "documents": ["a"], "max_tokens_per_doc": -1}"#.to_vec(),
            422,
            Some("max_tokens_per_doc"),
        ),
        (
            "/v2/rerank",
            serde_json::to_vec(&json!({"query": "q", "documents": too_many}))?,
            413,
            Some("documents"),
        ),
        (
            "/v2/rerank",
            serde_json::to_vec(&json!({"query": "q", "documents": [huge]}))?,
            413,
            None,
        ),
        (
            "/v1/rerank",
            br#"{"query": "q"}"#.to_vec(),
            422,
            Some("documents"),
        ),
        (
            "/rerank",
            br#"{"query": "q", "texts": "abc"}"#.to_vec(),
            422,
            Some("texts"),
        ),
        ("/search", br#"{"query": "q"}"#.to_vec(), 404, None),
        ("/nowhere", b"{}".to_vec(), 404, None),
    ];
    for (path, body, want, field) in &cases {
        let r = c
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()?;
        let status = r.status().as_u16();
        let v: Value = r.json()?;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(status, *want, "{path} {shown:.80}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["error_type"].as_str().is_some(), "{v}");
        assert_eq!(v["field"].as_str(), *field, "{path} {shown:.80}: {v}");
        healthy(&c, &s)?;
    }
    let r = c.get(s.url("/v2/rerank")).send()?;
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.json::<Value>()?["error_type"], "method_not_allowed");

    // /info and /metrics say what happened.
    let info: Value = c.get(s.url("/info")).send()?.json()?;
    assert_eq!(info["limits"]["max_documents"], 30);
    assert_eq!(info["stages"]["rerank_default"], "first,pointwise");
    let metrics = c.get(s.url("/metrics")).send()?.text()?;
    for needle in [
        "dear_http_requests_total{endpoint=\"/v2/rerank\",status=\"422\"} 14",
        "dear_http_requests_total{endpoint=\"/v2/rerank\",status=\"413\"} 2",
        "dear_stage_duration_seconds_count{stage=\"pointwise\"}",
        "dear_stage_fallbacks_total{stage=\"pointwise\",reason=\"deadline\"} 2",
        "dear_pointwise_batch_rounds_total",
        "dear_queue_depth 0",
    ] {
        assert!(metrics.contains(needle), "no {needle:?} in\n{metrics}");
    }
    let calls = metric(&metrics, "dear_pointwise_batch_calls_total");
    let rounds = metric(&metrics, "dear_pointwise_batch_rounds_total");
    assert!(
        calls >= 8.0 && rounds >= 1.0 && rounds <= calls,
        "{rounds} rounds, {calls} calls"
    );
    Ok(())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

#[test]
fn search_endpoint_gives_what_the_cli_gives() -> TestResult {
    let dir = tempfile::tempdir()?;
    let corpus = dir.path().join("corpus.jsonl");
    let lines: Vec<String> = DOCS
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"_id": format!("d{i}"), "title": "", "text": t}).to_string())
        .collect();
    std::fs::write(&corpus, lines.join("\n"))?;
    let index = dir.path().join("index");
    let dear = env!("CARGO_BIN_EXE_dear");
    let out = Command::new(dear)
        .arg("index")
        .arg("--corpus")
        .arg(&corpus)
        .arg("--index")
        .arg(&index)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = tiny_classifier();
    let cli = Command::new(dear)
        .arg("search")
        .arg("--index")
        .arg(&index)
        .arg("--model")
        .arg(&model)
        .args(["--top-k", "3", "--json", "rain droplets water"])
        .output()?;
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: Value = serde_json::from_slice(&cli.stdout)?;

    let s = Served::start(&[
        "--model",
        &model.to_string_lossy(),
        "--index",
        &index.to_string_lossy(),
    ])?;
    let (status, served) = post(
        &client(),
        &s.url("/search"),
        &json!({"query": "rain droplets water", "top_k": 3}),
    )?;
    assert_eq!(status, 200, "{served}");
    let ids = |v: &Value| -> Vec<String> {
        v["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["passage"]["id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(ids(&served), ids(&cli));
    assert_eq!(ids(&served).len(), 3);
    assert_eq!(served["total"], cli["total"]);
    let pw = |v: &Value| -> Vec<f64> {
        v["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["pointwise_score"].as_f64())
            .collect()
    };
    assert_eq!(pw(&served).len(), 3);
    for (a, b) in pw(&served).iter().zip(pw(&cli)) {
        assert!((a - b).abs() < 1e-5);
    }
    let stages: Vec<&str> = served["report"]["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(stages, ["first", "pointwise", "listwise"]);
    Ok(())
}

/// The default model makes a request slow enough to hold the only worker: a second
/// request is turned away with 429, and SIGTERM lets the first finish, then exits 0.
#[test]
fn a_full_queue_answers_429_and_sigterm_finishes_in_flight_work() -> TestResult {
    let model = default_model_path();
    if !model.exists() {
        return Err(format!("{} is missing: run scripts/fetch-model.sh", model.display()).into());
    }
    let s = Served::start(&["--workers", "1", "--queue", "0"])?;
    let c = client();
    let docs: Vec<String> = (0..48)
        .map(|i| {
            format!(
                "{} Passage {i} repeats it with more words to read. {}",
                DOCS[i % 5],
                DOCS[(i + 2) % 5]
            )
        })
        .collect();
    let slow = {
        let (url, body) = (
            s.url("/v2/rerank"),
            json!({"query": QUERY, "documents": docs}),
        );
        std::thread::spawn(move || post(&client(), &url, &body).map_err(|e| e.to_string()))
    };
    // Wait until it holds the worker.
    let started = Instant::now();
    loop {
        let m = c.get(s.url("/metrics")).send()?.text()?;
        if m.contains("dear_requests_running 1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first request never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = c
        .post(s.url("/v2/rerank"))
        .json(&json!({"query": QUERY, "documents": DOCS}))
        .send()?;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=60).contains(&retry));
    assert_eq!(r.json::<Value>()?["error_type"], "overloaded");

    // SIGTERM while the first is still running: it is answered, then the process exits 0.
    let pid = s.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(kill.success());
    let (status, body) = slow.join().map_err(|_| "client thread panicked")??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(48));
    assert_eq!(body["dear"]["fallbacks"], json!([]));
    let mut s = s;
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(code) = s.child.try_wait()? {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code.code(), Some(0));
    assert!(
        c.get(s.url("/health")).send().is_err(),
        "still accepting after SIGTERM"
    );
    Ok(())
}

/// `$.a[*].b` (or `$.a[*].b.c`): the part of JSONPath that Elasticsearch's
/// `json_parser` settings and ml-commons' Cohere post-process use here.
fn json_path<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some((array, field)) = path
        .strip_prefix("$.")
        .and_then(|rest| rest.split_once("[*]."))
    else {
        return Vec::new();
    };
    v[array]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| field.split('.').fold(item, |x, k| &x[k]))
        .collect()
}

fn fixture_json(name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/deploy")
        .join(name);
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// The requests Elasticsearch's custom inference service and OpenSearch's ml-commons
/// connector send (rendered from docs/deploy.md's settings as those engines render
/// them) get the responses their parsers read.
#[test]
fn elasticsearch_and_opensearch_connectors_get_the_shapes_they_parse() -> TestResult {
    let model = tiny_classifier();
    let s = Served::start(&["--model", &model.to_string_lossy()])?;
    let c = client();
    let host = s.url.trim_start_matches("http://").to_string();

    // Elasticsearch: PUT _inference/rerank/dear {"service": "custom", ...}.
    let es = fixture_json("elasticsearch-custom-rerank.json")?;
    let settings = &es["service_settings"];
    let top_n = es["task_settings"]["parameters"]["top_n"]
        .as_u64()
        .ok_or("no top_n")?;
    let rendered = settings["request"]
        .as_str()
        .ok_or("no request template")?
        .replace("${query}", &serde_json::to_string(QUERY)?)
        .replace("${input}", &serde_json::to_string(&DOCS)?)
        .replace("${top_n}", &top_n.to_string());
    let body: Value = serde_json::from_str(&rendered)?;
    let url = settings["url"]
        .as_str()
        .ok_or("no url")?
        .replace("127.0.0.1:8080", &host);
    let (status, response) = post(&c, &url, &body)?;
    assert_eq!(status, 200, "{response}");
    let parser = &settings["response"]["json_parser"];
    let indexes = json_path(&response, parser["reranked_index"].as_str().unwrap_or(""));
    let scores = json_path(&response, parser["relevance_score"].as_str().unwrap_or(""));
    assert_eq!(indexes.len() as u64, top_n);
    assert_eq!(scores.len() as u64, top_n);
    assert!(indexes
        .iter()
        .all(|i| i.as_u64().is_some_and(|i| (i as usize) < DOCS.len())));
    let scores: Vec<f64> = scores.iter().filter_map(|s| s.as_f64()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]) && scores.iter().all(|s| (0.0..=1.0).contains(s))
    );

    // OpenSearch: an ml-commons connector whose Cohere pre-process turns
    // {"query_text", "text_docs"} into query, documents and top_n (= every document).
    let os = fixture_json("opensearch-ml-connector.json")?;
    let action = &os["actions"][0];
    let quoted = serde_json::to_string(QUERY)?;
    let rendered = action["request_body"]
        .as_str()
        .ok_or("no request_body")?
        .replace(
            "${parameters.model}",
            os["parameters"]["model"].as_str().unwrap_or(""),
        )
        .replace("${parameters.query}", &quoted[1..quoted.len() - 1])
        .replace("${parameters.documents}", &serde_json::to_string(&DOCS)?)
        .replace("${parameters.top_n}", &DOCS.len().to_string());
    let body: Value = serde_json::from_str(&rendered)?;
    let url = action["url"]
        .as_str()
        .ok_or("no url")?
        .replace("${parameters.endpoint}", &host);
    let (status, response) = post(&c, &url, &body)?;
    assert_eq!(status, 200, "{response}");
    // The post-process puts each document's relevance_score at its index: every
    // document must come back exactly once.
    let mut seen: Vec<u64> = json_path(&response, "$.results[*].index")
        .iter()
        .filter_map(|i| i.as_u64())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..DOCS.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        json_path(&response, "$.results[*].relevance_score").len(),
        DOCS.len()
    );
    Ok(())
}
