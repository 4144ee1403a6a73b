//! The types a search engine and the reranker exchange: plain strings and numbers,
//! no tensors and no engine types.

use serde::{Deserialize, Serialize};

/// A search query, as the user typed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The query text the model reads.
    pub text: String,
}

impl Query {
    /// A query from its text.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }
}

/// A candidate passage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    /// The caller's identifier, carried through untouched.
    #[serde(default, alias = "_id")]
    pub id: Option<String>,
    /// An optional title (DeAR's input puts it before the text).
    #[serde(default)]
    pub title: Option<String>,
    /// The passage text.
    pub text: String,
}

impl Passage {
    /// A passage with text only.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            id: None,
            title: None,
            text: text.into(),
        }
    }

    /// Sets the title.
    #[must_use]
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Sets the identifier.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The passage for display on one line of at most `max` characters: `"{title}: {text}"`
    /// when the title has something other than whitespace, else the text ([`crate::corpus::one_line`]).
    pub fn one_line(&self, max: usize) -> String {
        match self.title.as_deref().filter(|t| !t.trim().is_empty()) {
            Some(title) => crate::corpus::one_line(&format!("{title}: {}", self.text), max),
            None => crate::corpus::one_line(&self.text, max),
        }
    }
}

impl From<&str> for Passage {
    /// A passage with text only.
    fn from(text: &str) -> Self {
        Passage::new(text)
    }
}

impl From<String> for Passage {
    /// A passage with text only.
    fn from(text: String) -> Self {
        Passage::new(text)
    }
}

impl From<&String> for Passage {
    /// A passage with text only.
    fn from(text: &String) -> Self {
        Passage::new(text.as_str())
    }
}

impl From<(&str, &str)> for Passage {
    /// A passage from `(title, text)`.
    fn from((title, text): (&str, &str)) -> Self {
        Passage::new(text).with_title(title)
    }
}
