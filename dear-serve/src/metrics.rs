//! `/metrics`: requests by endpoint and status, latency histograms per endpoint and
//! per stage, tokens and cache hits per stage, fallbacks by stage and reason, the
//! queue, and how the pointwise scheduler batched concurrent requests.

use std::sync::Arc;
use std::time::Duration;

use dear_core::{RerankReport, Reranker, StageStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::admission::Admission;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    stage: String,
    reason: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The server's metrics and the registry that encodes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    stage_latency: Family<StageLabels, Histogram, fn() -> Histogram>,
    stage_tokens: Family<StageLabels, Counter>,
    stage_cached: Family<StageLabels, Counter>,
    stage_passages: Family<StageLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
}

/// Values read at scrape time: the queue and the scheduler's batching.
#[derive(Debug)]
struct Live {
    admission: Arc<Admission>,
    reranker: Arc<Reranker>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)
        };
        gauge(
            &mut encoder,
            "dear_queue_depth",
            "Requests waiting for a worker",
            self.admission.queued() as i64,
        )?;
        gauge(
            &mut encoder,
            "dear_requests_running",
            "Requests holding a worker",
            self.admission.running() as i64,
        )?;
        if let Some(stats) = self.reranker.pointwise().and_then(|p| p.batch_stats()) {
            for (name, help, v) in [
                (
                    "dear_pointwise_batch_rounds",
                    "Scoring rounds the pointwise scheduler ran (each packs every call waiting)",
                    stats.rounds,
                ),
                (
                    "dear_pointwise_batch_calls",
                    "Calls those rounds packed (calls / rounds: requests sharing a round)",
                    stats.calls,
                ),
                (
                    "dear_pointwise_batch_passages",
                    "Passages those rounds scored (passages / rounds: mean round size)",
                    stats.passages,
                ),
            ] {
                let c = ConstCounter::new(v);
                let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
                c.encode(m)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    pub(crate) fn new(admission: Arc<Admission>, reranker: Arc<Reranker>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let stage_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let stage_tokens = Family::<StageLabels, Counter>::default();
        let stage_cached = Family::<StageLabels, Counter>::default();
        let stage_passages = Family::<StageLabels, Counter>::default();
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "dear_http_requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "dear_http_request_duration_seconds",
            "Time from a request's arrival to its response, by endpoint",
            latency.clone(),
        );
        registry.register(
            "dear_stage_duration_seconds",
            "Time each stage that ran took, by stage",
            stage_latency.clone(),
        );
        registry.register(
            "dear_stage_tokens",
            "Tokens the model read, by stage (tokens/s: its rate over the duration sum's)",
            stage_tokens.clone(),
        );
        registry.register(
            "dear_stage_cache_hits",
            "Passages (pointwise) or windows (listwise) answered from the score cache",
            stage_cached.clone(),
        );
        registry.register(
            "dear_stage_passages",
            "Passages each stage was given",
            stage_passages.clone(),
        );
        registry.register(
            "dear_stage_fallbacks",
            "Stages that failed or ran late and kept the order before them, by reason",
            fallbacks.clone(),
        );
        registry.register_collector(Box::new(Live {
            admission,
            reranker,
        }));
        Self {
            registry,
            requests,
            latency,
            stage_latency,
            stage_tokens,
            stage_cached,
            stage_passages,
            fallbacks,
        }
    }

    /// Counts a response.
    pub(crate) fn request(&self, endpoint: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records what each stage of a reranking did.
    pub(crate) fn report(&self, report: &RerankReport) {
        for s in &report.stages {
            let stage = StageLabels {
                stage: s.stage.name().to_string(),
            };
            if matches!(s.status, StageStatus::Skipped(_)) {
                continue;
            }
            self.stage_latency
                .get_or_create(&stage)
                .observe(s.elapsed.as_secs_f64());
            self.stage_tokens
                .get_or_create(&stage)
                .inc_by(s.tokens as u64);
            self.stage_cached
                .get_or_create(&stage)
                .inc_by(s.cached as u64);
            self.stage_passages
                .get_or_create(&stage)
                .inc_by(s.passages as u64);
            if let Some(failure) = s.failure() {
                self.fallbacks
                    .get_or_create(&FallbackLabels {
                        stage: stage.stage.clone(),
                        reason: failure.kind().to_string(),
                    })
                    .inc();
            }
        }
    }

    /// The metrics in the OpenMetrics text format Prometheus scrapes.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
