//! GGUF files with `general.architecture = llama`: metadata to config, quantized
//! tensors in every type candle supports, kept in their own type.
//!
//! GGUF names tensors the llama.cpp way (`blk.0.attn_q.weight`); this source answers
//! to transformers names and translates. llama.cpp's converter permutes the rows of
//! `q_proj`/`k_proj` for interleaved rotary embeddings; they are permuted back here
//! (whole rows of quantized blocks move, so this is exact), as transformers'
//! GGUF loader does, so the network uses one rotary convention for every format.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use parking_lot::Mutex;

use crate::config::{ModelConfig, RopeConfig, RopeScaling};
use crate::loader::{check_shape, quantize_matrix, Matrix, Quantization, WeightSource};
use crate::Error;

/// Reads a GGUF header (metadata and tensor directory), checking that every tensor's
/// data lies inside the file.
pub(crate) fn read_content(path: &Path) -> crate::Result<Content> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    // candle's reader trusts the header (it divides by `general.alignment`, for one):
    // a crafted file must end in an error, never a panic across dear's API.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut file)));
    let content = match read {
        Ok(r) => r.map_err(|e| Error::corrupt(path, e))?,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            return Err(Error::corrupt(
                path,
                format!("the GGUF header is inconsistent (the reader failed: {why})"),
            ));
        }
    };
    match content.metadata.get("general.alignment") {
        None => {}
        Some(Value::U32(a)) if a.is_power_of_two() => {}
        Some(Value::U64(a)) if a.is_power_of_two() => {}
        Some(other) => {
            return Err(Error::config(
                path,
                "general.alignment",
                format!("must be a power of two greater than 0, got {other:?}"),
            ))
        }
    }
    for (name, info) in &content.tensor_infos {
        // The dimensions come from the file: their product (and the byte count) must
        // not overflow, and an empty tensor is refused (no model has one, and candle
        // would view its dangling buffer as blocks).
        let dims = info.shape.dims();
        let elems = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                Error::corrupt(
                    path,
                    format!("tensor '{name}' has too many elements {dims:?}"),
                )
            })?;
        if elems == 0 {
            return Err(Error::corrupt(
                path,
                format!("tensor '{name}' is empty (shape {dims:?})"),
            ));
        }
        let block = info.ggml_dtype.block_size();
        if elems % block != 0 {
            return Err(Error::corrupt(
                path,
                format!("tensor '{name}' has {elems} elements, not a multiple of its block size {block}"),
            ));
        }
        let bytes = (elems / block)
            .checked_mul(info.ggml_dtype.type_size())
            .map_or(u64::MAX, |b| b as u64);
        let end = content
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(bytes);
        if end > len {
            return Err(Error::corrupt(
                path,
                format!("truncated: tensor '{name}' ends at byte {end}, the file has {len} bytes"),
            ));
        }
    }
    Ok(content)
}

/// Translates a transformers tensor name to its GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let module = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{module}.{suffix}"))
}

/// Typed access to a GGUF file's metadata, for the model config and the tokenizer.
///
/// A missing key reads as `Ok(None)`; a value of another type than asked for (or an
/// integer out of range) is an [`Error::Config`] naming the file, the key, and the
/// type expected and found. Integers of any width are accepted where an integer is
/// asked for.
pub(crate) struct GgufMeta<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> GgufMeta<'a> {
    /// The metadata of `content`, read from the file at `path` (named in errors).
    pub(crate) fn new(content: &'a Content, path: &'a Path) -> Self {
        Self { content, path }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        Error::config(
            self.path,
            key,
            format!("expected {expected}, found {}", type_name(found)),
        )
    }

    /// A string value.
    pub(crate) fn string(&self, key: &str) -> crate::Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// A non-negative integer that fits a `usize`.
    pub(crate) fn usize(&self, key: &str) -> crate::Result<Option<usize>> {
        self.integer_as(key, "an unsigned integer")
    }

    /// A token id: a non-negative integer that fits a `u32`.
    pub(crate) fn u32(&self, key: &str) -> crate::Result<Option<u32>> {
        self.integer_as(key, "a token id (an unsigned 32-bit integer)")
    }

    fn integer_as<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> crate::Result<Option<T>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let n = integer(value).ok_or_else(|| self.wrong_type(key, expected, value))?;
        T::try_from(n).map(Some).map_err(|_| {
            Error::config(
                self.path,
                key,
                format!("{n} is out of range for {expected}"),
            )
        })
    }

    /// A floating-point number (f32 or f64).
    pub(crate) fn f64(&self, key: &str) -> crate::Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.wrong_type(key, "a floating-point number", other)),
        }
    }

    /// A boolean (or an integer, non-zero meaning true, as some converters write it).
    pub(crate) fn bool(&self, key: &str) -> crate::Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(value) => integer(value)
                .map(|v| Some(v != 0))
                .ok_or_else(|| self.wrong_type(key, "a boolean", value)),
        }
    }

    /// An array of any values.
    pub(crate) fn array(&self, key: &str) -> crate::Result<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items.as_slice())),
            Some(other) => Err(self.wrong_type(key, "an array", other)),
        }
    }

    /// An array of strings.
    pub(crate) fn strings(&self, key: &str) -> crate::Result<Option<Vec<String>>> {
        self.items(key, "an array of strings", |item| match item {
            Value::String(text) => Some(text.clone()),
            _ => None,
        })
    }

    /// An array of integers of any width (that fit an `i64`).
    pub(crate) fn ints(&self, key: &str) -> crate::Result<Option<Vec<i64>>> {
        self.items(key, "an array of integers", |item| {
            integer(item).and_then(|v| i64::try_from(v).ok())
        })
    }

    /// An array of numbers, floating-point or integer.
    pub(crate) fn floats(&self, key: &str) -> crate::Result<Option<Vec<f64>>> {
        self.items(key, "an array of numbers", |item| match item {
            Value::F32(v) => Some(f64::from(*v)),
            Value::F64(v) => Some(*v),
            other => integer(other).map(|v| v as f64),
        })
    }

    /// Every item of an array through `convert`; an item it refuses is a type error.
    fn items<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl Fn(&Value) -> Option<T>,
    ) -> crate::Result<Option<Vec<T>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|item| {
                convert(item).ok_or_else(|| {
                    Error::config(
                        self.path,
                        key,
                        format!(
                            "expected {expected}, found an item of type {}",
                            type_name(item)
                        ),
                    )
                })
            })
            .collect::<crate::Result<Vec<_>>>()
            .map(Some)
    }
}

/// An integer metadata value of any width.
fn integer(value: &Value) -> Option<i128> {
    match value {
        Value::U8(v) => Some(i128::from(*v)),
        Value::I8(v) => Some(i128::from(*v)),
        Value::U16(v) => Some(i128::from(*v)),
        Value::I16(v) => Some(i128::from(*v)),
        Value::U32(v) => Some(i128::from(*v)),
        Value::I32(v) => Some(i128::from(*v)),
        Value::U64(v) => Some(i128::from(*v)),
        Value::I64(v) => Some(i128::from(*v)),
        _ => None,
    }
}

/// The GGUF type of a metadata value, for error messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F32(_) => "f32",
        Value::F64(_) => "f64",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Array(_) => "array",
    }
}

/// Quantized weights from a GGUF file.
pub(crate) struct GgufSource {
    path: PathBuf,
    content: Content,
    file: Mutex<File>,
    device: Device,
    /// What the matrices are converted to at load (none: kept as stored).
    requantize: Quantization,
}

impl GgufSource {
    /// Opens a GGUF file. With `requantize` other than [`Quantization::None`], every
    /// matrix is converted at load: dequantized, then quantized to that type (or kept
    /// dense for [`Quantization::Dense`]), so one file gives the same weights in each
    /// format.
    pub(crate) fn open(
        path: &Path,
        device: Device,
        requantize: Quantization,
    ) -> crate::Result<Self> {
        let content = read_content(path)?;
        let arch = GgufMeta::new(&content, path)
            .string("general.architecture")?
            .ok_or_else(|| {
                Error::config(
                    path,
                    "general.architecture",
                    "missing from the GGUF metadata",
                )
            })?;
        if arch != "llama" {
            return Err(Error::UnsupportedArchitecture {
                architecture: arch.to_string(),
                path: path.to_path_buf(),
            });
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            device,
            requantize,
        })
    }

    /// The model config, from `llama.*` metadata.
    pub(crate) fn config(&self) -> crate::Result<ModelConfig> {
        let (c, p) = (&self.content, self.path.as_path());
        let meta = GgufMeta::new(c, p);
        let need = |key: &str| -> crate::Result<usize> {
            meta.usize(key)?
                .ok_or_else(|| Error::config(p, key, "missing from the GGUF metadata"))
        };
        let hidden_size = need("llama.embedding_length")?;
        let num_heads = need("llama.attention.head_count")?;
        if num_heads == 0 {
            return Err(Error::config(
                p,
                "llama.attention.head_count",
                "must be greater than 0",
            ));
        }
        let head_dim = match meta.usize("llama.attention.key_length")? {
            Some(d) => d,
            None => hidden_size / num_heads,
        };
        let vocab_size = match meta.usize("llama.vocab_size")? {
            Some(v) => v,
            None => match meta.array("tokenizer.ggml.tokens")? {
                Some(tokens) => tokens.len(),
                None => match c
                    .tensor_infos
                    .get("token_embd.weight")
                    .and_then(|info| info.shape.dims().first())
                {
                    Some(&rows) => rows,
                    None => return Err(Error::config(p, "llama.vocab_size", "missing")),
                },
            },
        };
        let scaling = match meta.string("llama.rope.scaling.type")? {
            None | Some("none") => RopeScaling::Default,
            Some("linear") => {
                let factor = meta.f64("llama.rope.scaling.factor")?.unwrap_or(1.0) as f32;
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(Error::config(
                        p,
                        "llama.rope.scaling.factor",
                        format!("must be a finite number greater than 0, got {factor}"),
                    ));
                }
                RopeScaling::Linear { factor }
            }
            Some(other) => {
                return Err(Error::config(
                    p,
                    "llama.rope.scaling.type",
                    format!("unsupported rope scaling {other:?} (supported: none, linear)"),
                ))
            }
        };
        let cfg = ModelConfig {
            vocab_size,
            hidden_size,
            intermediate_size: need("llama.feed_forward_length")?,
            num_layers: need("llama.block_count")?,
            num_heads,
            num_kv_heads: meta
                .usize("llama.attention.head_count_kv")?
                .unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: meta
                .f64("llama.attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope: RopeConfig {
                theta: meta.f64("llama.rope.freq_base")?.unwrap_or(10_000.0) as f32,
                scaling,
            },
            max_position_embeddings: meta.usize("llama.context_length")?.unwrap_or(2048),
            tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
            attention_bias: c.tensor_infos.contains_key("blk.0.attn_q.bias"),
            mlp_bias: c.tensor_infos.contains_key("blk.0.ffn_up.bias"),
            num_labels: None,
            bos_token_id: meta.u32("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: meta
                .u32("tokenizer.ggml.eos_token_id")?
                .into_iter()
                .collect(),
            pad_token_id: meta.u32("tokenizer.ggml.padding_token_id")?,
        };
        cfg.validate(p)?;
        // The layer count must be the layers the file holds (no allocation is sized
        // from a number the tensors do not back).
        let layers_in_file = c
            .tensor_infos
            .keys()
            .filter_map(|n| {
                n.strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        if cfg.num_layers != layers_in_file {
            return Err(Error::config(
                p,
                "llama.block_count",
                format!(
                    "{} layers, but the file holds tensors for {layers_in_file}",
                    cfg.num_layers
                ),
            ));
        }
        if let Some(rope_dim) = meta.usize("llama.rope.dimension_count")? {
            if rope_dim != head_dim {
                return Err(Error::config(
                    p,
                    "llama.rope.dimension_count",
                    format!("partial rotary embeddings ({rope_dim} of {head_dim} dims) are not supported"),
                ));
            }
        }
        Ok(cfg)
    }

    /// llama.cpp's `rope_freqs.weight` (Llama-3.1 frequency factors), when present.
    /// It must hold one finite, positive divisor per rotary frequency (`head_dim / 2`).
    pub(crate) fn rope_freq_divisors(&self, cfg: &ModelConfig) -> crate::Result<Option<Vec<f32>>> {
        let head_dim = cfg.head_dim;
        if !self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Ok(None);
        }
        let t = self.read("rope_freqs.weight", &Device::Cpu)?;
        let divisors = t
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if divisors.len() != head_dim / 2 {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "tensor 'rope_freqs.weight' holds {} values, the model has {} rotary frequencies",
                    divisors.len(),
                    head_dim / 2
                ),
            ));
        }
        if let Some(bad) = divisors.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
            return Err(Error::corrupt(
                &self.path,
                format!("tensor 'rope_freqs.weight' holds {bad}; frequency divisors must be finite and greater than 0"),
            ));
        }
        let frequencies = crate::model::rope::inverse_frequencies(&cfg.rope, head_dim);
        if frequencies
            .iter()
            .zip(&divisors)
            .any(|(f, d)| !(f / d).is_finite())
        {
            return Err(Error::corrupt(
                &self.path,
                "tensor 'rope_freqs.weight' makes a rotary frequency infinite",
            ));
        }
        Ok(Some(divisors))
    }

    fn read(&self, gguf: &str, device: &Device) -> crate::Result<QTensor> {
        let mut file = self.file.lock();
        self.content
            .tensor(&mut *file, gguf, device)
            .map_err(|e| Error::corrupt(&self.path, format!("tensor '{gguf}': {e}")))
    }

    fn lookup(&self, name: &str) -> crate::Result<String> {
        gguf_name(name)
            .filter(|g| self.content.tensor_infos.contains_key(g))
            .ok_or_else(|| Error::MissingTensor {
                name: gguf_name(name).unwrap_or_else(|| name.to_string()),
                path: self.path.clone(),
            })
    }

    /// The number of heads whose rows llama.cpp permuted in this tensor, if any.
    fn permuted_heads(&self, name: &str) -> crate::Result<Option<usize>> {
        let meta = GgufMeta::new(&self.content, &self.path);
        let heads = |key: &str| meta.usize(key);
        if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias") {
            return heads("llama.attention.head_count");
        }
        if name.ends_with("self_attn.k_proj.weight") || name.ends_with("self_attn.k_proj.bias") {
            return Ok(
                heads("llama.attention.head_count_kv")?.or(heads("llama.attention.head_count")?)
            );
        }
        Ok(None)
    }

    /// Reads a tensor, undoing llama.cpp's q/k row permutation.
    fn read_hf_layout(&self, name: &str) -> crate::Result<QTensor> {
        let gguf = self.lookup(name)?;
        match self.permuted_heads(name)? {
            None => self.read(&gguf, &self.device),
            Some(heads) => {
                let t = self.read(&gguf, &Device::Cpu)?;
                unpermute_rows(&t, heads, &self.device)
                    .map_err(|e| Error::corrupt(&self.path, format!("tensor '{gguf}': {e}")))
            }
        }
    }
}

/// Inverse of llama.cpp's `permute(w, n_head)`: GGUF row `h*hd + 2j + t` holds
/// transformers row `h*hd + t*hd/2 + j`. Rows are whole quantized blocks, so the bytes
/// of each row move as they are.
fn unpermute_rows(t: &QTensor, heads: usize, device: &Device) -> crate::Result<QTensor> {
    let dims = t.shape().dims().to_vec();
    let Some((&rows, rest)) = dims.split_first() else {
        return Err(Error::InvalidArgument(
            "a scalar cannot be split into heads".into(),
        ));
    };
    let row_elems: usize = rest.iter().product();
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::InvalidArgument(format!(
            "{rows} rows cannot be split into {heads} heads of even size"
        )));
    }
    let dtype = t.dtype();
    let row_bytes = row_elems / dtype.block_size() * dtype.type_size();
    let data = t.data()?;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let src = h * hd + 2 * j + s;
                let dst = h * hd + s * half + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), device, dtype)?;
    Ok(QTensor::new(storage, dims)?)
}

fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl WeightSource for GgufSource {
    fn stored_quantization(&self, name: &str) -> Option<GgmlDType> {
        let info = self.content.tensor_infos.get(&gguf_name(name)?)?;
        match self.requantize {
            Quantization::None => (!is_float(info.ggml_dtype)).then_some(info.ggml_dtype),
            Quantization::Dense => None,
            q => q.ggml(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }

    fn dense(&self, name: &str, shape: &[usize], dtype: DType) -> crate::Result<Tensor> {
        let t = self.read_hf_layout(name)?;
        check_shape(name, shape, t.shape().dims())?;
        Ok(t.dequantize(&self.device)?.to_dtype(dtype)?)
    }

    fn matrix(&self, name: &str, shape: (usize, usize), dtype: DType) -> crate::Result<Matrix> {
        let t = self.read_hf_layout(name)?;
        check_shape(name, &[shape.0, shape.1], t.shape().dims())?;
        let target = match self.requantize {
            Quantization::None if is_float(t.dtype()) => Quantization::Dense,
            q => q,
        };
        match target.ggml() {
            None if target == Quantization::None => Ok(Matrix::Quantized(Arc::new(t))),
            None => Ok(Matrix::Dense(t.dequantize(&self.device)?.to_dtype(dtype)?)),
            Some(q) if q == t.dtype() => Ok(Matrix::Quantized(Arc::new(t))),
            Some(q) => quantize_matrix(name, &t.dequantize(&self.device)?, q, dtype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_translate() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.o_proj.weight").as_deref(),
            Some("blk.12.attn_output.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(gguf_name("score.weight"), None);
    }

    /// A header with `general.alignment` 0 (candle's reader divides by it) or not a
    /// power of two is a named error, not a panic.
    #[test]
    fn a_crafted_alignment_is_an_error() -> crate::Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Internal(e.to_string()))?;
        for (i, alignment) in [0u32, 3].into_iter().enumerate() {
            let path = dir.path().join(format!("a{i}.gguf"));
            let mut f = File::create(&path).map_err(|e| Error::io(&path, e))?;
            let arch = Value::String("llama".into());
            let align = Value::U32(alignment);
            candle_core::quantized::gguf_file::write(
                &mut f,
                &[
                    ("general.architecture", &arch),
                    ("general.alignment", &align),
                ],
                &[],
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
            drop(f);
            let err = read_content(&path).unwrap_err().to_string();
            assert!(
                err.contains("general.alignment") || err.contains("inconsistent"),
                "{alignment}: {err}"
            );
        }
        Ok(())
    }

    fn content(metadata: Vec<(&str, Value)>) -> Content {
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        }
    }

    /// A value of the wrong type is an error naming the key and both types, the same
    /// for every accessor (the config's and the tokenizer's); a missing key is `None`.
    #[test]
    fn wrong_typed_metadata_is_an_error() {
        let c = content(vec![
            ("general.architecture", Value::U32(7)),
            ("llama.block_count", Value::String("12".into())),
            ("llama.rope.freq_base", Value::I32(10_000)),
            ("tokenizer.ggml.bos_token_id", Value::I64(-1)),
            (
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::String("a".into()), Value::U8(1)]),
            ),
            ("tokenizer.ggml.add_bos_token", Value::String("yes".into())),
        ]);
        let path = Path::new("model.gguf");
        let meta = GgufMeta::new(&c, path);
        let message = |r: crate::Result<()>| match r {
            Err(Error::Config {
                path: p,
                field,
                message,
            }) => {
                assert_eq!(p, path);
                format!("{field}: {message}")
            }
            other => panic!("expected a config error, got {other:?}"),
        };
        let cases = [
            (
                meta.string("general.architecture").map(drop),
                "general.architecture: expected a string, found u32",
            ),
            (
                meta.usize("llama.block_count").map(drop),
                "llama.block_count: expected an unsigned integer, found string",
            ),
            (
                meta.f64("llama.rope.freq_base").map(drop),
                "llama.rope.freq_base: expected a floating-point number, found i32",
            ),
            (
                meta.u32("tokenizer.ggml.bos_token_id").map(drop),
                "tokenizer.ggml.bos_token_id: -1 is out of range for a token id (an unsigned 32-bit integer)",
            ),
            (
                meta.strings("tokenizer.ggml.tokens").map(drop),
                "tokenizer.ggml.tokens: expected an array of strings, found an item of type u8",
            ),
            (
                meta.bool("tokenizer.ggml.add_bos_token").map(drop),
                "tokenizer.ggml.add_bos_token: expected a boolean, found string",
            ),
        ];
        for (result, expected) in cases {
            assert_eq!(message(result), expected);
        }
        assert!(matches!(meta.string("general.name"), Ok(None)));
    }

    /// Permuting rows the llama.cpp way and back is the identity.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> crate::Result<()> {
        let (heads, hd, cols) = (3usize, 4usize, 32usize);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        // llama.cpp: gguf[h, j, t] = hf[h, t, j]
        let mut gguf = vec![0f32; rows * cols];
        for h in 0..heads {
            for j in 0..hd / 2 {
                for t in 0..2 {
                    let src = h * hd + t * (hd / 2) + j;
                    let dst = h * hd + 2 * j + t;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let dev = Device::Cpu;
        let q = QTensor::quantize(&Tensor::from_vec(gguf, (rows, cols), &dev)?, GgmlDType::F32)?;
        let back = unpermute_rows(&q, heads, &dev)?.dequantize(&dev)?;
        assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, hf);
        Ok(())
    }
}
