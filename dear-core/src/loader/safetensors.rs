//! Memory-mapped safetensors checkpoints (one file or shards listed by
//! `model.safetensors.index.json`), in f32, f16 or bf16.
//!
//! This file holds the crate's only `unsafe`: the memory map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::loader::{check_shape, quantize_matrix, Matrix, Quantization, WeightSource};
use crate::Error;

/// The weight files of a Hugging Face model directory, in load order.
///
/// # Errors
/// [`Error::ModelNotFound`] when the directory has no safetensors weights (a
/// PyTorch `.bin` checkpoint is named as unsupported); [`Error::Json`] for a broken
/// index; [`Error::ModelNotFound`] for a shard the index lists but the folder lacks.
pub(crate) fn weight_files(dir: &Path) -> crate::Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::json(&index, e))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::json(&index, "no `weight_map` object"))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let path = dir.join(&shard);
            if !path.is_file() {
                return Err(Error::ModelNotFound {
                    path,
                    message: format!("shard listed in {} is missing", index.display()),
                });
            }
            files.push(path);
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let message = if dir.join("pytorch_model.bin").is_file() {
        "only safetensors weights are supported, found pytorch_model.bin (convert it with `safetensors`)"
    } else {
        "no model.safetensors or model.safetensors.index.json"
    };
    Err(Error::ModelNotFound {
        path: dir.to_path_buf(),
        message: message.into(),
    })
}

/// Opens one safetensors file with a memory map, validating its header.
pub(crate) fn mmap(path: &Path) -> crate::Result<MmapedSafetensors> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(Error::io(path, e));
    }
    // SAFETY: the map is read-only and lives as long as the tensors created from it
    // are being copied out; the file must not be truncated or rewritten while the
    // model loads, which is the same contract every safetensors loader has. The header
    // and every tensor's offsets are validated against the file length by the
    // safetensors crate before any tensor is read.
    let st = unsafe { MmapedSafetensors::new(path) };
    st.map_err(|e| Error::corrupt(path, e))
}

/// Dense weights from safetensors files, quantized at load when asked.
pub(crate) struct SafetensorsSource {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
    device: Device,
    quantization: Quantization,
}

impl SafetensorsSource {
    pub(crate) fn open(
        dir: &Path,
        weights: &[PathBuf],
        device: Device,
        quantization: Quantization,
    ) -> crate::Result<Self> {
        let mut files = Vec::with_capacity(weights.len());
        let mut index = HashMap::new();
        for (i, path) in weights.iter().enumerate() {
            let st = mmap(path)?;
            for (name, _) in st.tensors() {
                index.insert(name, i);
            }
            files.push((path.clone(), st));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            index,
            device,
            quantization,
        })
    }

    fn load(&self, name: &str) -> crate::Result<Tensor> {
        let i = *self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.dir.clone(),
        })?;
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| Error::corrupt(path, e))?;
        match view.dtype() {
            safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16 => {}
            other => {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "tensor '{name}' has dtype {other:?}; only f32, f16 and bf16 are supported"
                    ),
                ))
            }
        }
        st.load(name, &self.device)
            .map_err(|e| Error::corrupt(path, e))
    }
}

impl WeightSource for SafetensorsSource {
    fn stored_quantization(&self, _name: &str) -> Option<candle_core::quantized::GgmlDType> {
        self.quantization.ggml()
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn dense(&self, name: &str, shape: &[usize], dtype: DType) -> crate::Result<Tensor> {
        let t = self.load(name)?;
        check_shape(name, shape, t.dims())?;
        Ok(t.to_dtype(dtype)?)
    }

    fn matrix(&self, name: &str, shape: (usize, usize), dtype: DType) -> crate::Result<Matrix> {
        let t = self.load(name)?;
        check_shape(name, &[shape.0, shape.1], t.dims())?;
        match self.quantization.ggml() {
            Some(q) => quantize_matrix(name, &t, q, dtype),
            None => Ok(Matrix::Dense(t.to_dtype(dtype)?)),
        }
    }
}
