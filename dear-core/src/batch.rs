//! Packed batches: the tokens of many sequences of different lengths laid end to end,
//! with per-token positions and cumulative sequence lengths (`cu_seqlens`), so that
//! every linear layer runs once over the whole pack and no padding is computed.

/// A packed batch of token sequences.
///
/// Sequence `i` occupies tokens `cu_seqlens[i]..cu_seqlens[i + 1]`.
///
/// # Example
/// ```
/// use dear_core::Batch;
/// let mut batch = Batch::new();
/// batch.push(&[1, 2, 3], 0)?;
/// batch.push(&[4, 5], 7)?; // continues a sequence whose cache holds 7 tokens
/// assert_eq!(batch.cu_seqlens(), &[0, 3, 5]);
/// assert_eq!(batch.positions(), &[0, 1, 2, 7, 8]);
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    input_ids: Vec<u32>,
    positions: Vec<u32>,
    cu_seqlens: Vec<u32>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            input_ids: Vec::new(),
            positions: Vec::new(),
            cu_seqlens: vec![0],
        }
    }

    /// A batch of sequences that each start at position 0.
    ///
    /// # Errors
    /// [`crate::Error::EmptyInput`] when a sequence has no token.
    pub fn from_sequences<S: AsRef<[u32]>>(sequences: &[S]) -> crate::Result<Self> {
        let mut batch = Self::new();
        for s in sequences {
            batch.push(s.as_ref(), 0)?;
        }
        Ok(batch)
    }

    /// Appends a sequence whose first token sits at `start_position` (the length of
    /// the sequence's KV cache when continuing one).
    ///
    /// # Errors
    /// [`crate::Error::EmptyInput`] when `tokens` is empty.
    pub fn push(&mut self, tokens: &[u32], start_position: usize) -> crate::Result<()> {
        if tokens.is_empty() {
            return Err(crate::Error::EmptyInput(format!(
                "sequence {} of the batch has no tokens",
                self.num_sequences()
            )));
        }
        if self.cu_seqlens.is_empty() {
            self.cu_seqlens.push(0);
        }
        self.input_ids.extend_from_slice(tokens);
        self.positions
            .extend((0..tokens.len()).map(|i| (start_position + i) as u32));
        self.cu_seqlens.push(self.input_ids.len() as u32);
        Ok(())
    }

    /// All token ids, sequence after sequence. `[total_tokens]`
    pub fn input_ids(&self) -> &[u32] {
        &self.input_ids
    }

    /// The position of every token within its own sequence. `[total_tokens]`
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// Cumulative sequence lengths. `[num_sequences + 1]`, starting at 0.
    pub fn cu_seqlens(&self) -> &[u32] {
        &self.cu_seqlens
    }

    /// The number of sequences.
    pub fn num_sequences(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// The total number of tokens.
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The length of sequence `i`.
    pub fn seq_len(&self, i: usize) -> usize {
        (self.cu_seqlens[i + 1] - self.cu_seqlens[i]) as usize
    }

    /// The token range of sequence `i`.
    pub(crate) fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[i] as usize..self.cu_seqlens[i + 1] as usize
    }

    /// The index (in the pack) of each sequence's last token. `[num_sequences]`
    pub(crate) fn last_indices(&self) -> Vec<u32> {
        self.cu_seqlens[1..].iter().map(|c| c - 1).collect()
    }

    /// The largest position any token takes, plus one.
    pub(crate) fn max_position(&self) -> usize {
        self.positions.iter().max().map_or(0, |p| *p as usize + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_sequences() -> crate::Result<()> {
        let b = Batch::from_sequences(&[vec![5u32, 6, 7], vec![8], vec![9, 10]])?;
        assert_eq!(b.input_ids(), &[5, 6, 7, 8, 9, 10]);
        assert_eq!(b.positions(), &[0, 1, 2, 0, 0, 1]);
        assert_eq!(b.cu_seqlens(), &[0, 3, 4, 6]);
        assert_eq!(b.last_indices(), vec![2, 3, 5]);
        assert_eq!(b.num_sequences(), 3);
        assert_eq!(b.seq_len(2), 2);
        assert_eq!(b.max_position(), 3);
        assert!(Batch::from_sequences(&[Vec::<u32>::new()]).is_err());
        Ok(())
    }
}
