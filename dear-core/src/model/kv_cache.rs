//! Per-sequence key/value state for incremental decoding. It belongs to a request,
//! not to the model: the model is shared as `&self` and each sequence brings its own
//! `&mut KvCache`.

use candle_core::Tensor;

/// Growable storage for one layer's keys or values: `[capacity, kv_heads, head_dim]`,
/// of which the first `len` rows are filled.
#[derive(Debug)]
struct Buffer {
    data: Tensor,
    len: usize,
}

impl Buffer {
    fn new(first: &Tensor) -> crate::Result<Self> {
        let rows = first.dim(0)?;
        let mut dims = first.dims().to_vec();
        dims[0] = rows.max(16).next_power_of_two();
        let data = Tensor::zeros(dims, first.dtype(), first.device())?;
        data.slice_set(first, 0, 0)?;
        Ok(Self { data, len: rows })
    }

    fn append(&mut self, rows: &Tensor) -> crate::Result<()> {
        let n = rows.dim(0)?;
        let cap = self.data.dim(0)?;
        if self.len + n > cap {
            let mut dims = self.data.dims().to_vec();
            dims[0] = (self.len + n).next_power_of_two();
            let grown = Tensor::zeros(dims, self.data.dtype(), self.data.device())?;
            grown.slice_set(&self.data.narrow(0, 0, self.len)?, 0, 0)?;
            self.data = grown;
        }
        self.data.slice_set(rows, 0, self.len)?;
        self.len += n;
        Ok(())
    }

    fn current(&self) -> crate::Result<Tensor> {
        Ok(self.data.narrow(0, 0, self.len)?)
    }

    fn deep_clone(&self) -> crate::Result<Self> {
        Ok(Self {
            data: self.data.narrow(0, 0, self.len)?.copy()?,
            len: self.len,
        })
    }
}

/// The keys and values one sequence has seen so far, for every layer.
///
/// Create one per sequence with [`KvCache::new`] and pass it to the model's forward
/// pass; the tokens of each call are appended.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Buffer, Buffer)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tokens stored (the position the next token will take).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been stored yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A deep copy (the copy and the original can then grow independently).
    ///
    /// # Errors
    /// When the tensors cannot be copied (device out of memory).
    pub fn try_clone(&self) -> crate::Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.deep_clone()?, v.deep_clone()?))),
                None => Ok(None),
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            len: self.len,
        })
    }

    /// Appends this layer's new keys and values and returns everything stored for it.
    ///
    /// `k, v: [new_tokens, kv_heads, head_dim]` → `([len, kv_heads, head_dim], [len, kv_heads, head_dim])`.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> crate::Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        match &mut self.layers[layer] {
            Some((kb, vb)) => {
                kb.append(k)?;
                vb.append(v)?;
                Ok((kb.current()?, vb.current()?))
            }
            slot @ None => {
                let kb = Buffer::new(k)?;
                let vb = Buffer::new(v)?;
                let out = (kb.current()?, vb.current()?);
                *slot = Some((kb, vb));
                Ok(out)
            }
        }
    }

    /// Everything stored for a layer: `([len, kv_heads, head_dim], [len, kv_heads, head_dim])`.
    pub(crate) fn layer(&self, layer: usize) -> crate::Result<(Tensor, Tensor)> {
        match self.layers.get(layer) {
            Some(Some((k, v))) => Ok((k.current()?, v.current()?)),
            _ => Err(crate::Error::InvalidArgument(format!(
                "the KV cache holds nothing for layer {layer}"
            ))),
        }
    }

    /// Records that `n` tokens went through every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
