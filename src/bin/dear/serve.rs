//! `dear serve`: the pipeline over HTTP (see the `dear-serve` crate for the endpoints).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use dear::dear_tantivy::PassageIndex;
use dear_serve::{ModelInfo, ServeConfig, Server};

use crate::pipeline::PipelineArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the line `listening on
    /// http://HOST:PORT` on stdout says which).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// An index (see `dear index`) for `POST /search`.
    #[arg(long)]
    index: Option<PathBuf>,
    /// Requests that run the model at once (more than the cores lets concurrent
    /// requests share the pointwise stage's batches).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Requests that may wait for a worker; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Most documents in one rerank request (413 beyond).
    #[arg(long, default_value_t = 1000)]
    max_documents: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// The longest deadline a request may ask for, in seconds.
    #[arg(long, default_value_t = 600.0)]
    max_deadline: f64,
    /// Threads that run HTTP (the model runs on its own threads).
    #[arg(long, default_value_t = 2)]
    http_threads: usize,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    if !(args.max_deadline.is_finite() && args.max_deadline > 0.0 && args.max_deadline <= 86_400.0)
    {
        bail!(
            "--max-deadline must be a number of seconds in (0, 86400], not {}",
            args.max_deadline
        );
    }
    if args.http_threads == 0 || args.http_threads > 256 {
        bail!("--http-threads must be between 1 and 256");
    }
    let options = args.pipeline.options()?;
    let config = ServeConfig {
        options,
        max_body_bytes: args.max_body_bytes,
        max_documents: args.max_documents,
        workers: args.workers,
        queue: args.queue,
        default_deadline: args.pipeline.timeout(),
        max_deadline: Duration::from_secs_f64(args.max_deadline),
        ..ServeConfig::default()
    };
    config.validate()?;
    let setup = args.pipeline.setup()?;
    let info = ModelInfo {
        model: setup.model().display().to_string(),
        pointwise_adapter: setup.pointwise_adapter().map(str::to_string),
        listwise_adapter: setup.listwise_adapter().map(str::to_string),
    };
    let index = match &args.index {
        Some(dir) => Some(
            PassageIndex::open(dir)
                .with_context(|| format!("opening the index at {}", dir.display()))?,
        ),
        None => None,
    };
    let reranker = Arc::new(args.pipeline.reranker()?);
    let mut server = Server::new(reranker, config)?.with_info(info);
    if let Some(index) = index {
        eprintln!("index: {} documents", index.num_docs());
        server = server.with_index(index);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.http_threads)
        .thread_name("dear-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("listening on {}", args.addr))?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
        drop(out);
        server
            .serve(listener, dear_serve::shutdown_signal())
            .await?;
        eprintln!("stopped: every request in flight was answered");
        Ok(())
    })
}
