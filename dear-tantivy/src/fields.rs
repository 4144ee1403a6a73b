//! Which stored fields of a document make the passage the model reads.

use dear_core::Passage;
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, TantivyDocument};

use crate::Error;

/// The name under which [`PassageFields::default_schema`] registers its English
/// analyzer (simple tokenizer, lowercasing, Lucene's English stop words, English
/// stemming: the analysis BM25 baselines such as Anserini's use).
pub const ENGLISH_ANALYZER: &str = "dear_en";

/// Maps a document's stored fields to a [`Passage`]: an identifier, an optional
/// title and the text.
///
/// # Example
/// ```
/// use dear_tantivy::PassageFields;
/// let (schema, fields) = PassageFields::default_schema();
/// assert_eq!(schema.get_field_name(fields.text), "text");
/// let same = PassageFields::from_schema(&schema, "id", Some("title"), "text")?;
/// assert_eq!(same, fields);
/// # Ok::<(), dear_tantivy::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PassageFields {
    /// The caller's document identifier (a stored string field).
    pub id: Field,
    /// The title, if documents have one (a stored text field).
    pub title: Option<Field>,
    /// The passage text (a stored text field).
    pub text: Field,
}

impl PassageFields {
    /// Fields by handle.
    pub fn new(id: Field, title: Option<Field>, text: Field) -> Self {
        Self { id, title, text }
    }

    /// Fields by name, checked to exist and to be stored.
    ///
    /// # Errors
    /// [`Error::FieldNotFound`] or [`Error::FieldType`] naming the field.
    pub fn from_schema(
        schema: &Schema,
        id: &str,
        title: Option<&str>,
        text: &str,
    ) -> crate::Result<Self> {
        let get = |name: &str| -> crate::Result<Field> {
            let field = schema
                .get_field(name)
                .map_err(|_| Error::FieldNotFound(name.to_string()))?;
            if !schema.get_field_entry(field).is_stored() {
                return Err(Error::FieldType {
                    field: name.to_string(),
                    reason: "it is not stored, so the passage cannot be read back".into(),
                });
            }
            Ok(field)
        };
        Ok(Self {
            id: get(id)?,
            title: title.map(get).transpose()?,
            text: get(text)?,
        })
    }

    /// The schema dear's own indexes use: `id` (raw string, indexed so that
    /// re-indexing an id replaces it, stored), `title` and `text` (English analyzer
    /// [`ENGLISH_ANALYZER`] with positions, stored). An index made with it needs
    /// [`register_analyzer`] called on it (done by [`PassageIndex`](crate::PassageIndex)).
    pub fn default_schema() -> (Schema, PassageFields) {
        let mut builder = Schema::builder();
        let text_options = TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(ENGLISH_ANALYZER)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_stored();
        let id = builder.add_text_field("id", STRING | STORED);
        let title = builder.add_text_field("title", text_options.clone());
        let text = builder.add_text_field("text", text_options);
        (builder.build(), PassageFields::new(id, Some(title), text))
    }

    /// The fields BM25 searches: the title (if any) and the text.
    pub fn searched(&self) -> Vec<Field> {
        self.title.into_iter().chain([self.text]).collect()
    }

    /// The passage stored in `doc` (missing title or text read as empty, a missing id
    /// as `None`).
    pub fn passage(&self, doc: &TantivyDocument) -> Passage {
        let get = |f: Field| {
            doc.get_first(f)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Passage {
            id: get(self.id),
            title: self.title.and_then(get).filter(|t| !t.is_empty()),
            text: get(self.text).unwrap_or_default(),
        }
    }
}

/// Registers [`ENGLISH_ANALYZER`] on `index` (needed once per opened index whose
/// schema names it; harmless otherwise).
pub fn register_analyzer(index: &Index) {
    let analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(
            StopWordFilter::new(Language::English)
                .unwrap_or_else(|| StopWordFilter::remove(Vec::<String>::new())),
        )
        .filter(Stemmer::new(Language::English))
        .build();
    index.tokenizers().register(ENGLISH_ANALYZER, analyzer);
}
