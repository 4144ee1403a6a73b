//! Long passages for the pointwise stage: split a passage that runs past the stage's
//! budget into overlapping token windows, score each, keep the best (MaxP, Dai &
//! Callan 2019; Elasticsearch's `text_similarity_reranker` does the same with its
//! chunked fields).

use crate::{Error, Passage, Tokenizer};

/// Opt-in chunking of long passages for the pointwise stage (MaxP).
///
/// DeAR reads the first 193 tokens of a passage and truncates the rest; that stays the
/// default. With chunking, a passage whose text runs past the stage's budget is cut
/// into windows of `tokens` tokens (default: the stage's own budget, so each window is
/// read whole) that overlap by `overlap` tokens; every window is scored with the
/// passage's title, and the passage takes its best window's score. The hit says which
/// chunk won ([`RerankedHit::best_chunk`](crate::RerankedHit::best_chunk)). At most
/// `max_chunks` windows are scored per passage (the text after them is not read), so
/// a huge passage costs bounded time.
///
/// # Example
/// ```
/// use dear_core::{Chunking, RerankOptions};
/// let options = RerankOptions::default().with_chunking(Chunking::max_p().with_overlap(48));
/// assert_eq!(options.chunking().map(|c| c.overlap()), Some(48));
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    tokens: Option<usize>,
    overlap: usize,
    max_chunks: usize,
}

impl Chunking {
    /// MaxP with windows of the stage's budget, 32 tokens of overlap, at most 16
    /// windows per passage.
    pub fn max_p() -> Self {
        Self {
            tokens: None,
            overlap: 32,
            max_chunks: 16,
        }
    }

    /// Window size in tokens. Default: the stage's budget (DeAR: 193 tokens less the
    /// input format and the title).
    #[must_use]
    pub fn with_tokens(mut self, tokens: usize) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Tokens shared by consecutive windows. Default: 32.
    #[must_use]
    pub fn with_overlap(mut self, overlap: usize) -> Self {
        self.overlap = overlap;
        self
    }

    /// Most windows scored per passage. Default: 16.
    #[must_use]
    pub fn with_max_chunks(mut self, n: usize) -> Self {
        self.max_chunks = n;
        self
    }

    /// The window size, if set.
    pub fn tokens(&self) -> Option<usize> {
        self.tokens
    }

    /// The overlap.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    /// The most windows per passage.
    pub fn max_chunks(&self) -> usize {
        self.max_chunks
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the setting at fault.
    pub fn validate(&self) -> crate::Result<()> {
        if self.tokens == Some(0) {
            return Err(Error::InvalidArgument(
                "chunking: tokens must be at least 1".into(),
            ));
        }
        if self.max_chunks == 0 {
            return Err(Error::InvalidArgument(
                "chunking: max_chunks must be at least 1".into(),
            ));
        }
        if let Some(t) = self.tokens {
            if self.overlap >= t {
                return Err(Error::InvalidArgument(format!(
                    "chunking: overlap ({}) must be smaller than the window ({t} tokens)",
                    self.overlap
                )));
            }
        }
        Ok(())
    }

    /// The byte spans of `text`'s windows of `size` tokens (this chunking's own size
    /// if set), or one span over the whole text when it fits.
    pub(crate) fn spans(
        &self,
        text: &str,
        size: usize,
        tokenizer: &Tokenizer,
    ) -> crate::Result<Vec<(usize, usize)>> {
        let size = self.tokens.unwrap_or(size).max(1);
        // Windows overlap by at most size - 1 tokens, so each one moves forward.
        let stride = size - self.overlap.min(size - 1);
        // No token covers 64 characters: tokenizing past what the windows can reach
        // changes none of their tokens.
        let reach = (self.max_chunks - 1)
            .saturating_mul(stride)
            .saturating_add(size + 1)
            .saturating_mul(64);
        let cut = match text.char_indices().nth(reach) {
            Some((i, _)) => &text[..i],
            None => text,
        };
        let encoding = tokenizer
            .inner()
            .encode(cut, false)
            .map_err(|e| Error::tokenizer("chunking a passage", e))?;
        let offsets = encoding.get_offsets();
        if offsets.len() <= size && cut.len() == text.len() {
            return Ok(vec![(0, text.len())]);
        }
        let mut spans = Vec::new();
        let mut first = 0;
        while first < offsets.len() && spans.len() < self.max_chunks {
            let last = (first + size).min(offsets.len()) - 1;
            let start = if first == 0 { 0 } else { offsets[first].0 };
            let end = offsets[last].1;
            let (start, end) = (boundary(text, start), boundary(text, end.max(start)));
            spans.push((start, end));
            if last + 1 == offsets.len() {
                break;
            }
            first += stride;
        }
        Ok(spans)
    }
}

impl Default for Chunking {
    /// [`Chunking::max_p`].
    fn default() -> Self {
        Self::max_p()
    }
}

/// The nearest char boundary at or below `i`, within `text`.
fn boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `passage` with its text cut to `span`.
pub(crate) fn chunk_of(passage: &Passage, (start, end): (usize, usize)) -> Passage {
    Passage {
        id: passage.id.clone(),
        title: passage.title.clone(),
        text: passage.text[start..end].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let err = Chunking::max_p().with_tokens(0).validate().unwrap_err();
        assert!(err.to_string().contains("tokens"), "{err}");
        let err = Chunking::max_p()
            .with_tokens(10)
            .with_overlap(10)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        let err = Chunking::max_p().with_max_chunks(0).validate().unwrap_err();
        assert!(err.to_string().contains("max_chunks"), "{err}");
        assert!(Chunking::max_p().validate().is_ok());
    }

    #[test]
    fn boundaries_stay_on_chars() {
        let t = "aé";
        assert_eq!(boundary(t, 2), 1);
        assert_eq!(boundary(t, 9), 3);
    }
}
