//! The Llama network, written once for every weight format: transformers'
//! `LlamaModel` + `LlamaForCausalLM` (`models/llama/modeling_llama.py`), run over
//! packed batches.
//!
//! The model is immutable and shared (`&self`, `Send + Sync`); per-request state (the
//! KV caches) is passed in.

mod attention;
mod block;
mod cpu_ops;
pub(crate) mod frozen;
mod kv_cache;
mod linear;
mod mlp;
pub(crate) mod rope;

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::batch::Batch;
use crate::config::ModelConfig;
use crate::loader::{Matrix, QuantizedMatmul, WeightSource};
use crate::lora::LoraAdapter;
use crate::Error;

use self::attention::{Attention, LayerContext, PackInfo};
use self::block::{Block, RmsNorm};
use self::linear::{Linear, LoraDelta};
use self::mlp::Mlp;
use self::rope::Rope;

pub use self::kv_cache::KvCache;

/// Which positions of each sequence an output is wanted for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Select {
    /// Not wanted.
    #[default]
    None,
    /// Only each sequence's last token.
    Last,
    /// Every token.
    All,
}

/// What a forward pass returns.
///
/// # Example
/// ```
/// use dear_core::{Outputs, Select};
/// let out = Outputs::last_logits().with_hidden(Select::Last);
/// assert_eq!(out.logits(), Select::Last);
/// assert_eq!(out.hidden(), Select::Last);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    hidden: Select,
    logits: Select,
    scores: bool,
}

impl Outputs {
    /// Logits of each sequence's last token (what generation needs).
    pub fn last_logits() -> Self {
        Self {
            hidden: Select::None,
            logits: Select::Last,
            scores: false,
        }
    }

    /// The sequence-classification head (`score`) on each sequence's last token, as
    /// transformers' `LlamaForSequenceClassification` pools it.
    pub fn last_scores() -> Self {
        Self {
            hidden: Select::None,
            logits: Select::None,
            scores: true,
        }
    }

    /// The final hidden state (after the last norm) of each sequence's last token
    /// (what a classification head needs).
    pub fn last_hidden() -> Self {
        Self {
            hidden: Select::Last,
            logits: Select::None,
            scores: false,
        }
    }

    /// Sets which hidden states are returned.
    #[must_use]
    pub fn with_hidden(mut self, select: Select) -> Self {
        self.hidden = select;
        self
    }

    /// Sets which logits are returned.
    #[must_use]
    pub fn with_logits(mut self, select: Select) -> Self {
        self.logits = select;
        self
    }

    /// Which hidden states are returned.
    pub fn hidden(&self) -> Select {
        self.hidden
    }

    /// Which logits are returned.
    pub fn logits(&self) -> Select {
        self.logits
    }
}

/// The result of a forward pass.
#[derive(Clone, Debug, Default)]
pub struct ForwardOutput {
    /// Final hidden states: `[num_sequences, hidden]` for [`Select::Last`],
    /// `[total_tokens, hidden]` for [`Select::All`]; f32.
    pub hidden: Option<Tensor>,
    /// Logits: `[num_sequences, vocab]` for [`Select::Last`], `[total_tokens, vocab]`
    /// for [`Select::All`]; f32.
    pub logits: Option<Tensor>,
    /// Classification scores: `[num_sequences, num_labels]`; f32.
    pub scores: Option<Tensor>,
}

/// An unmerged adapter loaded on a model, by position in its adapter table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdapterId(pub(crate) usize);

/// Per-call options of [`Llama::forward_with`].
#[derive(Clone, Copy, Default)]
pub struct ForwardOptions<'a> {
    adapter: Option<AdapterId>,
    prefixes: Option<(&'a [KvCache], &'a [usize])>,
    interrupt: Option<&'a (dyn Fn() -> bool + Sync)>,
}

impl std::fmt::Debug for ForwardOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardOptions")
            .field("adapter", &self.adapter)
            .field("prefixes", &self.prefixes)
            .field("interrupt", &self.interrupt.is_some())
            .finish()
    }
}

impl<'a> ForwardOptions<'a> {
    /// Applies an unmerged adapter (its LoRA deltas and its heads). Default: none.
    #[must_use]
    pub fn with_adapter(mut self, adapter: Option<AdapterId>) -> Self {
        self.adapter = adapter;
        self
    }

    /// Shared prefixes: sequence `i` of the batch continues `caches[of_sequence[i]]`
    /// (its positions must start at that cache's length). The caches are read, never
    /// changed, so one prefix computed once serves any number of sequences.
    #[must_use]
    pub fn with_prefixes(mut self, caches: &'a [KvCache], of_sequence: &'a [usize]) -> Self {
        self.prefixes = Some((caches, of_sequence));
        self
    }

    /// Polled before each decoder layer: when it returns `true` the pass stops with
    /// [`Error::Cancelled`], so a deadline or a cancelled call costs at most one layer
    /// of work, not a whole pass. The KV caches of a stopped pass hold some layers'
    /// keys and not others': drop them.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use dear_core::ForwardOptions;
    /// let deadline = Instant::now() + Duration::from_millis(50);
    /// let late = move || Instant::now() >= deadline;
    /// let options = ForwardOptions::default().with_interrupt(&late);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn with_interrupt(mut self, interrupt: &'a (dyn Fn() -> bool + Sync)) -> Self {
        self.interrupt = Some(interrupt);
        self
    }
}

#[derive(Debug)]
struct AdapterSlot {
    name: String,
    score: Option<Linear>,
    lm_head: Option<Linear>,
}

#[derive(Debug)]
enum Embedding {
    /// `[vocab, hidden]`
    Dense(Tensor),
    /// `[vocab, hidden]`, rows dequantized on lookup.
    Quantized(Arc<QTensor>),
}

/// A Llama-family decoder.
#[derive(Debug)]
pub struct Llama {
    cfg: ModelConfig,
    /// The most positions a sequence may use: the declared context, or less
    /// ([`crate::LoadOptions::with_max_context`]).
    context: usize,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    score: Option<Linear>,
    adapters: Vec<AdapterSlot>,
    rope: Rope,
    device: Device,
    dtype: DType,
}

fn matrix_linear(
    m: Matrix,
    bias: Option<Tensor>,
    kernel: QuantizedMatmul,
) -> crate::Result<Linear> {
    match m {
        Matrix::Dense(w) => Linear::dense(w, bias),
        Matrix::Quantized(q) => Linear::quantized(q, bias, kernel),
    }
}

struct Builder<'a> {
    ws: &'a dyn WeightSource,
    adapters: &'a [Arc<LoraAdapter>],
    dtype: DType,
    kernel: QuantizedMatmul,
}

impl Builder<'_> {
    fn linear(
        &self,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> crate::Result<Linear> {
        let dtype = self.dtype;
        let bias = if bias {
            Some(
                self.ws
                    .dense(&format!("{prefix}.bias"), &[out_dim], dtype)?,
            )
        } else {
            None
        };
        let mut linear = matrix_linear(
            self.ws
                .matrix(&format!("{prefix}.weight"), (out_dim, in_dim), dtype)?,
            bias,
            self.kernel,
        )?;
        for (i, adapter) in self.adapters.iter().enumerate() {
            if let Some(w) = adapter.deltas.get(prefix) {
                linear.push_lora(LoraDelta {
                    adapter: i,
                    a: w.a.to_dtype(dtype)?,
                    b: w.b.to_dtype(dtype)?,
                    scale: w.scale,
                    bias: match adapter.biases.get(&format!("{prefix}.bias")) {
                        Some(b) => Some(b.to_dtype(dtype)?),
                        None => None,
                    },
                });
            }
        }
        Ok(linear)
    }
}

impl Llama {
    /// A network of `config`'s shape with random weights (N(0, 0.02²) matrices, unit
    /// norms), built in memory on `options`' device, quantized at build time with
    /// `options`' quantization (so large shapes fit in memory): for measuring the cost
    /// of model sizes that are not at hand. It has no tokenizer; feed it token ids.
    ///
    /// # Example
    /// ```
    /// use dear_core::{Llama, LoadOptions, ModelConfig, Quantization};
    /// let mut config = ModelConfig::llama_3_2_1b();
    /// config.num_layers = 1; // keep the example small
    /// config.vocab_size = 256;
    /// let llama = Llama::random(config, &LoadOptions::default().with_quantization(Quantization::Q4_0))?;
    /// assert_eq!(llama.config().hidden_size, 2048);
    /// # Ok::<(), dear_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for an inconsistent config; device and allocation errors.
    pub fn random(config: ModelConfig, options: &crate::LoadOptions) -> crate::Result<Self> {
        config.validate(std::path::Path::new("<random weights>"))?;
        let device = options.device().open()?;
        let quantization = options.quantization().ggml();
        let dtype = if quantization.is_some() {
            DType::F32
        } else {
            options.dtype().candle()
        };
        let source = crate::loader::random::RandomSource {
            config: config.clone(),
            device: device.clone(),
            quantization,
        };
        Self::load(
            &source,
            config,
            None,
            device,
            dtype,
            &[],
            options.quantized_matmul(),
        )
    }

    /// Builds the network from a weight source. `dtype` is the activation dtype.
    pub(crate) fn load(
        ws: &dyn WeightSource,
        cfg: ModelConfig,
        rope_freq_divisors: Option<&[f32]>,
        device: Device,
        dtype: DType,
        adapters: &[Arc<LoraAdapter>],
        kernel: QuantizedMatmul,
    ) -> crate::Result<Self> {
        let b = Builder {
            ws,
            adapters,
            dtype,
            kernel,
        };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q_dim = cfg.num_heads * cfg.head_dim;
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let embed = ws.matrix("model.embed_tokens.weight", (cfg.vocab_size, h), dtype)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let ab = cfg.attention_bias;
            let mb = cfg.mlp_bias;
            let linear = |name: &str, i: usize, o: usize, bias: bool| {
                b.linear(&format!("{p}.{name}"), i, o, bias)
            };
            layers.push(Block {
                input_layernorm: RmsNorm {
                    weight: ws.dense(&format!("{p}.input_layernorm.weight"), &[h], dtype)?,
                    eps: cfg.rms_norm_eps,
                },
                self_attn: Attention {
                    q_proj: linear("self_attn.q_proj", h, q_dim, ab)?,
                    k_proj: linear("self_attn.k_proj", h, kv_dim, ab)?,
                    v_proj: linear("self_attn.v_proj", h, kv_dim, ab)?,
                    o_proj: linear("self_attn.o_proj", q_dim, h, ab)?,
                    num_heads: cfg.num_heads,
                    num_kv_heads: cfg.num_kv_heads,
                    head_dim: cfg.head_dim,
                },
                post_attention_layernorm: RmsNorm {
                    weight: ws.dense(
                        &format!("{p}.post_attention_layernorm.weight"),
                        &[h],
                        dtype,
                    )?,
                    eps: cfg.rms_norm_eps,
                },
                mlp: Mlp {
                    gate_proj: linear("mlp.gate_proj", h, i, mb)?,
                    up_proj: linear("mlp.up_proj", h, i, mb)?,
                    down_proj: linear("mlp.down_proj", i, h, mb)?,
                },
            });
        }
        let norm = RmsNorm {
            weight: ws.dense("model.norm.weight", &[h], dtype)?,
            eps: cfg.rms_norm_eps,
        };
        let untied = ws.contains("lm_head.weight");
        let lm_head = if untied || !cfg.tie_word_embeddings {
            b.linear("lm_head", h, cfg.vocab_size, false)?
        } else {
            match &embed {
                Matrix::Dense(w) => Linear::dense(w.clone(), None)?,
                Matrix::Quantized(q) => Linear::quantized(q.clone(), None, kernel)?,
            }
        };
        let embed_tokens = match embed {
            Matrix::Dense(w) => Embedding::Dense(w),
            Matrix::Quantized(q) if h % q.dtype().block_size() == 0 => Embedding::Quantized(q),
            Matrix::Quantized(q) => Embedding::Dense(q.dequantize(&device)?.to_dtype(dtype)?),
        };
        let score = if ws.contains("score.weight") {
            let labels = cfg.num_labels.unwrap_or(1);
            Some(Linear::dense(
                ws.dense("score.weight", &[labels, h], dtype)?,
                None,
            )?)
        } else {
            None
        };
        let mut slots = Vec::with_capacity(adapters.len());
        for adapter in adapters {
            for name in adapter.saved.keys() {
                if name != "score.weight" && name != "lm_head.weight" {
                    return Err(Error::InvalidArgument(format!(
                        "adapter '{}' replaces '{name}', which only merged mode supports",
                        adapter.name
                    )));
                }
            }
            let head = |name: &str| -> crate::Result<Option<Linear>> {
                match adapter.saved.get(name) {
                    Some(t) => Ok(Some(Linear::dense(t.to_dtype(dtype)?, None)?)),
                    None => Ok(None),
                }
            };
            slots.push(AdapterSlot {
                name: adapter.name.clone(),
                score: head("score.weight")?,
                lm_head: head("lm_head.weight")?,
            });
        }
        let rope = Rope::new(&cfg.rope, cfg.head_dim, rope_freq_divisors);
        Ok(Self {
            context: cfg.max_position_embeddings,
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            score,
            adapters: slots,
            rope,
            device,
            dtype,
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The most tokens (positions) one sequence may hold, its KV cache included: the
    /// declared `max_position_embeddings`, capped by
    /// [`crate::LoadOptions::with_max_context`]. A longer sequence is refused with
    /// [`Error::ContextOverflow`] before any work.
    pub fn context_len(&self) -> usize {
        self.context
    }

    /// Caps [`Llama::context_len`] at `max` positions (never above the declared context).
    pub(crate) fn cap_context(&mut self, max: usize) {
        self.context = self.cfg.max_position_embeddings.min(max);
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The unmerged adapter loaded under `name`.
    pub fn adapter(&self, name: &str) -> Option<AdapterId> {
        self.adapters
            .iter()
            .position(|a| a.name == name)
            .map(AdapterId)
    }

    /// The adapter called `name` (`None` for the base alone).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the loaded adapters when none is called `name`.
    pub fn adapter_named(&self, name: Option<&str>) -> crate::Result<Option<AdapterId>> {
        match name {
            None => Ok(None),
            Some(name) => self.adapter(name).map(Some).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no unmerged adapter named '{name}' (loaded: {:?})",
                    self.adapter_names()
                ))
            }),
        }
    }

    /// The names of the unmerged adapters, in [`AdapterId`] order.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.iter().map(|a| a.name.as_str()).collect()
    }

    /// The number of labels of the classification head a call with `adapter` uses,
    /// `None` when there is no head.
    pub fn score_labels(&self, adapter: Option<AdapterId>) -> Option<usize> {
        self.score_head(adapter).map(|h| h.out_dim())
    }

    fn score_head(&self, adapter: Option<AdapterId>) -> Option<&Linear> {
        adapter
            .and_then(|a| self.adapters.get(a.0))
            .and_then(|s| s.score.as_ref())
            .or(self.score.as_ref())
    }

    fn check_batch(&self, batch: &Batch, caches: &[KvCache]) -> crate::Result<()> {
        if batch.is_empty() {
            return Err(Error::EmptyInput("the batch has no tokens".into()));
        }
        if !caches.is_empty() && caches.len() != batch.num_sequences() {
            return Err(Error::InvalidArgument(format!(
                "{} KV caches for a batch of {} sequences",
                caches.len(),
                batch.num_sequences()
            )));
        }
        let max = self.context;
        if batch.max_position() > max {
            return Err(Error::ContextOverflow {
                what: "a sequence of the batch".into(),
                tokens: batch.max_position(),
                max,
            });
        }
        if let Some(bad) = batch
            .input_ids()
            .iter()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Runs the packed batch through the network.
    ///
    /// `caches` is empty (each sequence attends to itself only) or holds one cache per
    /// sequence, whose stored tokens precede the sequence's tokens; the new tokens are
    /// appended to it. Positions come from the batch.
    ///
    /// Shapes: see [`ForwardOutput`].
    ///
    /// # Errors
    /// [`Error::EmptyInput`] for an empty batch, [`Error::ContextOverflow`] when a
    /// position exceeds the context window, [`Error::InvalidArgument`] for a token id
    /// outside the vocabulary or a cache count that does not match.
    pub fn forward(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        outputs: Outputs,
    ) -> crate::Result<ForwardOutput> {
        self.forward_with(batch, caches, outputs, ForwardOptions::default())
    }

    /// [`Llama::forward`] with an adapter and/or shared prefixes.
    ///
    /// # Errors
    /// As [`Llama::forward`]; also [`Error::InvalidArgument`] for an unknown adapter,
    /// prefixes combined with caches, or classification scores without a head.
    pub fn forward_with(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        outputs: Outputs,
        options: ForwardOptions,
    ) -> crate::Result<ForwardOutput> {
        if self.device.is_cpu() && rayon::current_thread_index().is_none() {
            // The CPU kernels split every product and attention over the rayon pool.
            // Called from outside it, each of those hundreds of splits per pass would
            // hand its work to the pool and sleep until it is done; run the whole pass
            // on a pool thread instead, so the splits are cheap work-stealing joins.
            return rayon::scope(|_| self.forward_pass(batch, caches, outputs, options));
        }
        self.forward_pass(batch, caches, outputs, options)
    }

    /// The body of [`Llama::forward_with`].
    fn forward_pass(
        &self,
        batch: &Batch,
        caches: &mut [KvCache],
        outputs: Outputs,
        options: ForwardOptions,
    ) -> crate::Result<ForwardOutput> {
        self.check_batch(batch, caches)?;
        if let Some(a) = options.adapter {
            if a.0 >= self.adapters.len() {
                return Err(Error::InvalidArgument(format!(
                    "no adapter with id {}",
                    a.0
                )));
            }
        }
        if let Some((prefixes, of_sequence)) = options.prefixes {
            if !caches.is_empty() {
                return Err(Error::InvalidArgument(
                    "shared prefixes and per-sequence caches cannot be combined".into(),
                ));
            }
            if of_sequence.len() != batch.num_sequences()
                || of_sequence.iter().any(|p| *p >= prefixes.len())
            {
                return Err(Error::InvalidArgument(format!(
                    "{} prefix indices for {} sequences and {} prefixes",
                    of_sequence.len(),
                    batch.num_sequences(),
                    prefixes.len()
                )));
            }
        }
        if outputs.scores && self.score_head(options.adapter).is_none() {
            return Err(Error::InvalidArgument(
                "classification scores asked for, but neither the model nor the adapter has a `score` head".into(),
            ));
        }
        let ctx = LayerContext {
            adapter: options.adapter.map(|a| a.0),
            prefixes: options.prefixes,
        };
        let ids = Tensor::new(batch.input_ids(), &self.device)?;
        let mut x = match &self.embed_tokens {
            Embedding::Dense(w) => w.index_select(&ids, 0)?,
            Embedding::Quantized(q) => q.embedding(&ids)?.to_dtype(self.dtype)?,
        };
        let tables = self
            .rope
            .tables(batch.positions(), self.dtype, &self.device)?;
        let n = batch.num_sequences();
        let pack = PackInfo::new((0..n).map(|i| batch.range(i)).collect())?;
        for (l, block) in self.layers.iter().enumerate() {
            if options.interrupt.is_some_and(|stop| stop()) {
                return Err(Error::Cancelled);
            }
            x = block.forward(&x, &tables, &pack, caches, l, &ctx)?;
        }
        for (i, cache) in caches.iter_mut().enumerate() {
            cache.advance(batch.seq_len(i));
        }
        let want_all = outputs.hidden == Select::All || outputs.logits == Select::All;
        let adapter = options.adapter.map(|a| a.0);
        let lm_head = options
            .adapter
            .and_then(|a| self.adapters.get(a.0))
            .and_then(|s| s.lm_head.as_ref())
            .unwrap_or(&self.lm_head);
        let last_idx = Tensor::new(batch.last_indices().as_slice(), &self.device)?;
        // Only the rows something is wanted for go through the final norm and head.
        let (rows, rows_are_last) = if want_all {
            (x, false)
        } else {
            (x.index_select(&last_idx, 0)?, true)
        };
        let normed = self.norm.forward(&rows)?;
        let pick = |sel: Select, t: &Tensor| -> crate::Result<Option<Tensor>> {
            match sel {
                Select::None => Ok(None),
                Select::All => Ok(Some(t.clone())),
                Select::Last if rows_are_last => Ok(Some(t.clone())),
                Select::Last => Ok(Some(t.index_select(&last_idx, 0)?)),
            }
        };
        let hidden = pick(outputs.hidden, &normed)?;
        let logits = match outputs.logits {
            Select::None => None,
            sel => {
                let src = pick(sel, &normed)?.unwrap_or(normed.clone());
                Some(lm_head.forward(&src, adapter)?.to_dtype(DType::F32)?)
            }
        };
        let scores = match (outputs.scores, self.score_head(options.adapter)) {
            (true, Some(head)) => {
                let last = pick(Select::Last, &normed)?.unwrap_or(normed.clone());
                Some(head.forward(&last, None)?.to_dtype(DType::F32)?)
            }
            _ => None,
        };
        Ok(ForwardOutput {
            hidden: match hidden {
                Some(h) => Some(h.to_dtype(DType::F32)?),
                None => None,
            },
            logits,
            scores,
        })
    }
}
