//! Which stored fields of a document make the passage the model reads: any schema.

use dear_core::Passage;
use tantivy::schema::{
    Field, FieldType, IndexRecordOption, OwnedValue, Schema, TextFieldIndexing, TextOptions, Value,
    STORED, STRING,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocAddress, Index, TantivyDocument};

use crate::Error;

/// The name under which [`PassageFields::default_schema`] registers its English
/// analyzer (simple tokenizer, lowercasing, Lucene's English stop words, English
/// stemming: the analysis BM25 baselines such as Anserini's use).
pub const ENGLISH_ANALYZER: &str = "dear_en";

/// Maps a document of any schema to the [`Passage`] the models read: an identifier
/// (a stored field of any type, or none: then the document's address), an optional
/// title field and one or more text fields. Every value of a multi-valued field is
/// kept; values and fields are joined with a blank line, in the order given.
///
/// # Example
/// ```
/// use dear_tantivy::PassageFields;
/// use dear_tantivy::tantivy::schema::{Schema, STORED, TEXT};
/// let mut builder = Schema::builder();
/// let id = builder.add_u64_field("id", STORED);
/// let head = builder.add_text_field("abstract", TEXT | STORED);
/// let body = builder.add_text_field("body", TEXT | STORED);
/// let schema = builder.build();
/// let fields = PassageFields::from_schema(&schema, Some("id"), None, &["abstract", "body"])?;
/// assert_eq!(fields.text(), &[head, body]);
/// assert_eq!(fields.id(), Some(id));
/// # Ok::<(), dear_tantivy::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PassageFields {
    id: Option<Field>,
    title: Option<Field>,
    text: Vec<Field>,
}

impl PassageFields {
    /// The passage text from `text` (one or more fields, joined in order).
    pub fn new(text: impl IntoIterator<Item = Field>) -> Self {
        Self {
            id: None,
            title: None,
            text: text.into_iter().collect(),
        }
    }

    /// Sets the id field (any stored type); without one, ids are document addresses
    /// (`segment:doc`).
    #[must_use]
    pub fn with_id(mut self, field: Field) -> Self {
        self.id = Some(field);
        self
    }

    /// Sets the title field (DeAR's input puts it before the text).
    #[must_use]
    pub fn with_title(mut self, field: Field) -> Self {
        self.title = Some(field);
        self
    }

    /// Fields by name, checked to exist and to be stored; text and title fields must
    /// be text fields.
    ///
    /// # Errors
    /// [`Error::FieldNotFound`] or [`Error::FieldType`] naming the field;
    /// [`Error::InvalidOption`] for an empty list of text fields.
    pub fn from_schema(
        schema: &Schema,
        id: Option<&str>,
        title: Option<&str>,
        text: &[&str],
    ) -> crate::Result<Self> {
        if text.is_empty() {
            return Err(Error::InvalidOption(
                "at least one text field is needed to make a passage".into(),
            ));
        }
        let get = |name: &str, textual: bool| -> crate::Result<Field> {
            let field = schema
                .get_field(name)
                .map_err(|_| Error::FieldNotFound(name.to_string()))?;
            let entry = schema.get_field_entry(field);
            if !entry.is_stored() {
                return Err(Error::FieldType {
                    field: name.to_string(),
                    reason: "it is not stored, so the passage cannot be read back".into(),
                });
            }
            if textual && !matches!(entry.field_type(), FieldType::Str(_)) {
                return Err(Error::FieldType {
                    field: name.to_string(),
                    reason: "it is not a text field".into(),
                });
            }
            Ok(field)
        };
        Ok(Self {
            id: id.map(|n| get(n, false)).transpose()?,
            title: title.map(|n| get(n, true)).transpose()?,
            text: text
                .iter()
                .map(|n| get(n, true))
                .collect::<crate::Result<_>>()?,
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
        let fields = PassageFields::new([text]).with_id(id).with_title(title);
        (builder.build(), fields)
    }

    /// The id field, if any.
    pub fn id(&self) -> Option<Field> {
        self.id
    }

    /// The title field, if any.
    pub fn title(&self) -> Option<Field> {
        self.title
    }

    /// The text fields.
    pub fn text(&self) -> &[Field] {
        &self.text
    }

    /// The fields a bag-of-words BM25 query searches: the title (if any) and the text
    /// fields.
    pub fn searched(&self) -> Vec<Field> {
        self.title
            .into_iter()
            .chain(self.text.iter().copied())
            .collect()
    }

    /// The passage stored in `doc` at `address`: the id field's first value as text
    /// (numbers in decimal, dates in microseconds since the Unix epoch, bytes in hex), or `segment:doc` when
    /// there is no id field or value; the title's values; every value of the text
    /// fields. Missing values read as empty.
    pub fn passage(&self, doc: &TantivyDocument, address: DocAddress) -> Passage {
        let joined = |f: Field| -> String {
            doc.get_all(f)
                .filter_map(|v| v.as_str())
                .filter(|s| !s.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n\n")
        };
        let id = self
            .id
            .and_then(|f| doc.get_first(f))
            .and_then(|v| value_text(&OwnedValue::from(v)))
            .unwrap_or_else(|| format!("{}:{}", address.segment_ord, address.doc_id));
        let text = self
            .text
            .iter()
            .map(|&f| joined(f))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        Passage {
            id: Some(id),
            title: self.title.map(joined).filter(|t| !t.is_empty()),
            text,
        }
    }
}

/// A stored value as id text.
fn value_text(v: &OwnedValue) -> Option<String> {
    match v {
        OwnedValue::Str(s) if !s.is_empty() => Some(s.clone()),
        OwnedValue::U64(n) => Some(n.to_string()),
        OwnedValue::I64(n) => Some(n.to_string()),
        OwnedValue::F64(n) => Some(n.to_string()),
        OwnedValue::Bool(b) => Some(b.to_string()),
        OwnedValue::Date(d) => Some(d.into_timestamp_micros().to_string()),
        OwnedValue::Bytes(b) if !b.is_empty() => {
            Some(b.iter().map(|x| format!("{x:02x}")).collect())
        }
        OwnedValue::Facet(f) => Some(f.to_string()),
        OwnedValue::IpAddr(ip) => Some(ip.to_string()),
        _ => None,
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
