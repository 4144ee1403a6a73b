//! Finding and opening model files: Hugging Face directories (`config.json` +
//! safetensors), GGUF files, and hub ids resolved through the Hugging Face cache.
//!
//! Whatever the format, the network is built from one [`WeightSource`], which hands out
//! tensors by their transformers names (`model.layers.0.self_attn.q_proj.weight`) so
//! that the model code reads like `modeling_llama.py` and LoRA adapters (written
//! against those names) apply to every format.

mod gguf;
mod hub;
pub(crate) mod random;
pub(crate) mod safetensors;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::config::ModelConfig;
use crate::device::Device;
use crate::Error;

pub(crate) use self::gguf::{read_content, GgufMeta};
pub(crate) use self::hub::resolve_hub_model;
pub use self::hub::HubOptions;

/// The format the weight matrices are converted to at load time.
///
/// Dense (safetensors) weights are quantized to the chosen type. GGUF weights keep the
/// type they were stored with under [`Quantization::None`]; any other choice converts
/// them (dequantized, then re-quantized, or kept dense), so the same weights can be
/// compared across formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quantization {
    /// Keep the weights as stored: dense in [`LoadOptions::dtype`], GGUF blocks as
    /// they are.
    #[default]
    None,
    /// Dense in [`LoadOptions::dtype`], GGUF blocks dequantized at load.
    Dense,
    /// 8-bit blocks of 32 (ggml `q8_0`).
    Q8_0,
    /// 4-bit blocks of 32 with a scale (ggml `q4_0`).
    Q4_0,
    /// 4-bit k-quants, super-blocks of 256 (ggml `q4_K`).
    Q4K,
}

impl Quantization {
    pub(crate) fn ggml(self) -> Option<GgmlDType> {
        match self {
            Quantization::None | Quantization::Dense => None,
            Quantization::Q8_0 => Some(GgmlDType::Q8_0),
            Quantization::Q4_0 => Some(GgmlDType::Q4_0),
            Quantization::Q4K => Some(GgmlDType::Q4K),
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = Error;

    /// Parses `none`, `dense`, `q8_0`, `q4_0` or `q4_k`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Quantization::None),
            "dense" => Ok(Quantization::Dense),
            "q8_0" => Ok(Quantization::Q8_0),
            "q4_0" => Ok(Quantization::Q4_0),
            "q4_k" | "q4k" => Ok(Quantization::Q4K),
            _ => Err(Error::InvalidArgument(format!(
                "unknown quantization {s:?} (use none, dense, q8_0, q4_0 or q4_k)"
            ))),
        }
    }
}

/// The dtype of dense weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightDType {
    /// 32-bit floats (the default: exact on every CPU).
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (what DeAR's checkpoints are stored in).
    BF16,
}

impl WeightDType {
    /// The usual dtype on `device`: f32 on the CPU, bf16 on CUDA (as DeAR's reference
    /// runs its models on a GPU).
    pub fn default_for(device: Device) -> Self {
        match device {
            Device::Cpu => WeightDType::F32,
            Device::Cuda(_) => WeightDType::BF16,
        }
    }

    pub(crate) fn candle(self) -> DType {
        match self {
            WeightDType::F32 => DType::F32,
            WeightDType::F16 => DType::F16,
            WeightDType::BF16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for WeightDType {
    type Err = Error;

    /// Parses `f32`, `f16` or `bf16`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(WeightDType::F32),
            "f16" | "float16" => Ok(WeightDType::F16),
            "bf16" | "bfloat16" => Ok(WeightDType::BF16),
            _ => Err(Error::InvalidArgument(format!(
                "unknown dtype {s:?} (use f32, f16 or bf16)"
            ))),
        }
    }
}

/// How products with block-quantized weights are computed on the CPU.
///
/// The weights are always used exactly as stored; the choice is how the activations
/// enter the product.
///
/// # Example
/// ```
/// use dear_core::{LoadOptions, QuantizedMatmul};
/// let options = LoadOptions::default().with_quantized_matmul(QuantizedMatmul::Int8);
/// assert_eq!(options.quantized_matmul(), QuantizedMatmul::Int8);
/// assert_eq!("int16".parse::<QuantizedMatmul>()?, QuantizedMatmul::Int16);
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QuantizedMatmul {
    /// Activations rounded to two 8-bit planes per block of 32 (~15 significant
    /// bits), integer dot products with the blocks: results within ~1e-4 (relative)
    /// of f32 arithmetic. The default.
    #[default]
    Int16,
    /// Activations rounded to 8 bits per block of 32, as llama.cpp does: fastest,
    /// with llama.cpp's rounding error.
    Int8,
    /// Activations stay f32; many-row products dequantize the weights to f32 and run
    /// an f32 GEMM, small ones expand each block on the fly. The slow reference path.
    Dequantize,
}

impl std::str::FromStr for QuantizedMatmul {
    type Err = Error;

    /// Parses `int16`, `int8` or `dequantize`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "int16" | "i16" => Ok(QuantizedMatmul::Int16),
            "int8" | "i8" => Ok(QuantizedMatmul::Int8),
            "dequantize" | "f32" => Ok(QuantizedMatmul::Dequantize),
            _ => Err(Error::InvalidArgument(format!(
                "unknown quantized matmul {s:?} (use int16, int8 or dequantize)"
            ))),
        }
    }
}

/// How to load a model.
///
/// # Example
/// ```
/// use dear_core::{Device, LoadOptions, Quantization, WeightDType};
/// let options = LoadOptions::default()
///     .with_device(Device::Cpu)
///     .with_dtype(WeightDType::F32)
///     .with_quantization(Quantization::Q8_0);
/// assert_eq!(options.quantization(), Quantization::Q8_0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    device: Device,
    dtype: WeightDType,
    quantization: Quantization,
    quantized_matmul: QuantizedMatmul,
    hub: HubOptions,
    adapters: Vec<AdapterSpec>,
    max_context: Option<usize>,
}

/// The context [`LoadOptions`] allow by default: 32,768 tokens, four times what a
/// DeAR listwise window of 20 passages needs. Memory grows with the tokens a sequence
/// holds (an 8B Llama's f32 KV cache alone takes 128 KiB per token), so a model that
/// declares 131,072 positions is not run that far unless the caller asks.
pub const DEFAULT_MAX_CONTEXT: usize = 32_768;

/// How a LoRA adapter is applied (see `crate::lora`, which applies it; the mode is
/// chosen here, with the adapter, in [`LoadOptions`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterMode {
    /// Folded into the base weights at load (before quantization). One per model.
    #[default]
    Merged,
    /// Kept apart and applied per call, so several adapters can share one base.
    Unmerged,
}

/// A LoRA adapter to load with a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSpec {
    /// Directory or hub id holding `adapter_config.json` + `adapter_model.safetensors`.
    pub source: String,
    /// The name calls select it by (unmerged mode). Default: the folder name.
    pub name: Option<String>,
    /// Merged into the weights, or applied per call.
    pub mode: AdapterMode,
}

impl LoadOptions {
    /// The device to load onto. Default: [`Device::Cpu`].
    #[must_use]
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The dtype of dense weights and activations. Default: f32. Quantized weights
    /// always compute with f32 activations.
    #[must_use]
    pub fn with_dtype(mut self, dtype: WeightDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The format weight matrices are converted to at load. Default: none (as stored).
    #[must_use]
    pub fn with_quantization(mut self, quantization: Quantization) -> Self {
        self.quantization = quantization;
        self
    }

    /// Hub resolution settings (cache folder, offline mode, revision).
    #[must_use]
    pub fn with_hub(mut self, hub: HubOptions) -> Self {
        self.hub = hub;
        self
    }

    /// Adds a PEFT LoRA adapter (a directory or a hub id). At most one can be
    /// [`AdapterMode::Merged`](crate::AdapterMode::Merged); any number unmerged, each
    /// selected per call by its name (the folder name).
    #[must_use]
    pub fn with_adapter(mut self, source: impl Into<String>, mode: AdapterMode) -> Self {
        self.adapters.push(AdapterSpec {
            source: source.into(),
            name: None,
            mode,
        });
        self
    }

    /// Adds an adapter under an explicit name.
    #[must_use]
    pub fn with_named_adapter(
        mut self,
        name: impl Into<String>,
        source: impl Into<String>,
        mode: AdapterMode,
    ) -> Self {
        self.adapters.push(AdapterSpec {
            source: source.into(),
            name: Some(name.into()),
            mode,
        });
        self
    }

    /// The adapters to load.
    pub fn adapters(&self) -> &[AdapterSpec] {
        &self.adapters
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dense dtype.
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// The quantization.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// How products with quantized weights are computed on the CPU. Default:
    /// [`QuantizedMatmul::Int16`].
    #[must_use]
    pub fn with_quantized_matmul(mut self, kernel: QuantizedMatmul) -> Self {
        self.quantized_matmul = kernel;
        self
    }

    /// How products with quantized weights are computed.
    pub fn quantized_matmul(&self) -> QuantizedMatmul {
        self.quantized_matmul
    }

    /// The hub settings.
    pub fn hub(&self) -> &HubOptions {
        &self.hub
    }

    /// Caps the positions one sequence may use at `tokens` (prompt, generated tokens
    /// and KV cache together); a model that declares fewer keeps its own. Default:
    /// [`DEFAULT_MAX_CONTEXT`]. Prompts past the cap are refused with
    /// [`Error::ContextOverflow`] (by byte length before tokenizing when they are far
    /// past it), so a hostile or careless prompt cannot grow memory without bound.
    /// Loading fails for 0.
    ///
    /// ```
    /// use dear_core::LoadOptions;
    /// let options = LoadOptions::default().with_max_context(131_072);
    /// assert_eq!(options.max_context(), 131_072);
    /// assert_eq!(LoadOptions::default().max_context(), dear_core::DEFAULT_MAX_CONTEXT);
    /// ```
    #[must_use]
    pub fn with_max_context(mut self, tokens: usize) -> Self {
        self.max_context = Some(tokens);
        self
    }

    /// The context cap.
    pub fn max_context(&self) -> usize {
        self.max_context.unwrap_or(DEFAULT_MAX_CONTEXT)
    }
}

/// The files of a model, once located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ModelFiles {
    /// A Hugging Face layout: a directory with `config.json`, tokenizer files and
    /// safetensors weights (possibly spread over shards listed by an index).
    HfDir { dir: PathBuf, weights: Vec<PathBuf> },
    /// One GGUF file holding weights, config and tokenizer.
    Gguf(PathBuf),
}

/// Locates a model given as a GGUF file, a Hugging Face directory or a hub id.
///
/// # Errors
/// [`Error::ModelNotFound`] when `spec` is neither an existing path nor a hub id;
/// hub resolution errors otherwise.
pub(crate) fn locate(spec: &str, hub: &HubOptions) -> crate::Result<ModelFiles> {
    let path = resolve_path(spec, hub)?;
    if path.is_dir() {
        return locate_dir(&path);
    }
    Ok(ModelFiles::Gguf(path))
}

/// A local file or folder for `spec`: an existing path (a `.gguf` file or a folder),
/// or a hub id resolved to its snapshot folder.
///
/// # Errors
/// [`Error::ModelNotFound`] when `spec` is neither; hub errors.
pub(crate) fn resolve_path(spec: &str, hub: &HubOptions) -> crate::Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_file() {
        return if has_extension(path, "gguf") {
            Ok(path.to_path_buf())
        } else {
            Err(Error::ModelNotFound {
                path: path.to_path_buf(),
                message: "a model file must be a .gguf; for safetensors give the directory holding config.json".into(),
            })
        };
    }
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if looks_like_hub_id(spec) {
        return resolve_hub_model(spec, hub);
    }
    Err(Error::ModelNotFound {
        path: path.to_path_buf(),
        message: "no such file or directory, and not a hub id of the form `org/name`".into(),
    })
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

pub(crate) fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A Hugging Face directory: `config.json` plus `model.safetensors` or an index of
/// shards; or a directory whose only model file is one `.gguf`.
pub(crate) fn locate_dir(dir: &Path) -> crate::Result<ModelFiles> {
    let config = dir.join("config.json");
    if !config.is_file() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| has_extension(p, "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => Ok(ModelFiles::Gguf(one.clone())),
            [] => Err(Error::ModelNotFound {
                path: dir.to_path_buf(),
                message: "no config.json (and no .gguf file) in this directory".into(),
            }),
            _ => Err(Error::ModelNotFound {
                path: dir.to_path_buf(),
                message: format!(
                    "no config.json and {} .gguf files: give the one to load",
                    ggufs.len()
                ),
            }),
        };
    }
    let weights = safetensors::weight_files(dir)?;
    Ok(ModelFiles::HfDir {
        dir: dir.to_path_buf(),
        weights,
    })
}

/// A matrix for a linear layer or an embedding: dense, or quantized blocks.
#[derive(Clone, Debug)]
pub(crate) enum Matrix {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

/// Hands out a model's tensors by their transformers names.
pub(crate) trait WeightSource {
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;

    /// A dense tensor (norm weight, bias), checked against `shape`, in `dtype`.
    fn dense(&self, name: &str, shape: &[usize], dtype: DType) -> crate::Result<Tensor>;

    /// A `[rows, cols]` matrix for a linear layer or an embedding, checked against
    /// `shape`; quantized when the source or the options say so, else dense in `dtype`.
    fn matrix(&self, name: &str, shape: (usize, usize), dtype: DType) -> crate::Result<Matrix>;

    /// The block type a matrix is (or will be) held in, `None` when dense: what a
    /// merged adapter re-quantizes to.
    fn stored_quantization(&self, name: &str) -> Option<GgmlDType>;
}

/// Checks a tensor's shape against the config.
pub(crate) fn check_shape(name: &str, expected: &[usize], actual: &[usize]) -> crate::Result<()> {
    if expected != actual {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// Quantizes a dense matrix to `dtype`, falling back to q8_0 (blocks of 32), then to
/// dense, when the row length is not a multiple of the block size (llama.cpp does the
/// same for tensors a k-quant cannot hold).
pub(crate) fn quantize_matrix(
    name: &str,
    weight: &Tensor,
    dtype: GgmlDType,
    dense_dtype: DType,
) -> crate::Result<Matrix> {
    let cols = weight.dim(1)?;
    let chosen = if cols % dtype.block_size() == 0 {
        Some(dtype)
    } else if cols % GgmlDType::Q8_0.block_size() == 0 {
        tracing::debug!(
            tensor = name,
            cols,
            ?dtype,
            "row length not a multiple of the block size: using q8_0"
        );
        Some(GgmlDType::Q8_0)
    } else {
        tracing::debug!(
            tensor = name,
            cols,
            "row length not a multiple of 32: kept dense"
        );
        None
    };
    match chosen {
        Some(q) => {
            let w = weight.to_dtype(DType::F32)?;
            Ok(Matrix::Quantized(Arc::new(QTensor::quantize(&w, q)?)))
        }
        None => Ok(Matrix::Dense(weight.to_dtype(dense_dtype)?)),
    }
}

/// A model's config and weights, opened but not yet built into a network.
pub(crate) struct OpenedModel {
    pub(crate) config: ModelConfig,
    pub(crate) weights: Box<dyn WeightSource>,
    /// GGUF `rope_freqs.weight`, when the file has one.
    pub(crate) rope_freq_divisors: Option<Vec<f32>>,
}

/// Opens the weights and reads the config of located model files.
pub(crate) fn open(files: &ModelFiles, options: &LoadOptions) -> crate::Result<OpenedModel> {
    let device = options.device().open()?;
    match files {
        ModelFiles::HfDir { dir, weights } => {
            let cfg = crate::config::read_hf_config(&dir.join("config.json"))?;
            let source =
                safetensors::SafetensorsSource::open(dir, weights, device, options.quantization())?;
            Ok(OpenedModel {
                config: cfg,
                weights: Box::new(source),
                rope_freq_divisors: None,
            })
        }
        ModelFiles::Gguf(path) => {
            let source = gguf::GgufSource::open(path, device, options.quantization())?;
            let cfg = source.config()?;
            let freqs = source.rope_freq_divisors(&cfg)?;
            Ok(OpenedModel {
                config: cfg,
                weights: Box::new(source),
                rope_freq_divisors: freqs,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("abdoelsayed/dear-8b-reranker-ce-v1"));
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!looks_like_hub_id("model.gguf"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("../x"));
        assert!(!looks_like_hub_id("/abs/path"));
    }

    #[test]
    fn parses_options() -> crate::Result<()> {
        assert_eq!("q4_k".parse::<Quantization>()?, Quantization::Q4K);
        assert_eq!("bf16".parse::<WeightDType>()?, WeightDType::BF16);
        assert!("q3".parse::<Quantization>().is_err());
        Ok(())
    }

    #[test]
    fn quantization_falls_back_by_row_length() -> crate::Result<()> {
        let dev = candle_core::Device::Cpu;
        let kind = |cols: usize, q: GgmlDType| -> crate::Result<Option<GgmlDType>> {
            let w = Tensor::randn(0f32, 1.0, (4, cols), &dev)?;
            Ok(match quantize_matrix("w", &w, q, DType::F32)? {
                Matrix::Quantized(t) => Some(t.dtype()),
                Matrix::Dense(_) => None,
            })
        };
        assert_eq!(kind(512, GgmlDType::Q4K)?, Some(GgmlDType::Q4K));
        assert_eq!(kind(576, GgmlDType::Q4K)?, Some(GgmlDType::Q8_0));
        assert_eq!(kind(64, GgmlDType::Q8_0)?, Some(GgmlDType::Q8_0));
        assert_eq!(kind(40, GgmlDType::Q8_0)?, None);
        Ok(())
    }

    #[test]
    fn missing_paths_are_named() {
        let err = locate("/definitely/not/here", &HubOptions::default()).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("/definitely/not/here"), "{msg}");
    }
}
