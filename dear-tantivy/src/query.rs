//! What to search for: a tantivy query for the first stage, the text the models read,
//! and the fields passages are read from.

use std::collections::BTreeMap;

use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TokenStream;
use tantivy::{Index, Term};

use crate::{Error, PassageFields};

/// A search: any tantivy [`Query`] for BM25, the user's query text for the models,
/// and the [`PassageFields`] hits are read with.
///
/// # Example
/// ```
/// use dear_tantivy::{PassageFields, RerankQuery};
/// use dear_tantivy::tantivy::query::QueryParser;
/// use dear_tantivy::tantivy::Index;
/// let (schema, fields) = PassageFields::default_schema();
/// let index = Index::create_in_ram(schema);
/// dear_tantivy::register_analyzer(&index);
/// // With tantivy's query language:
/// let parser = QueryParser::for_index(&index, fields.searched());
/// let q = RerankQuery::parse(fields.clone(), &parser, "title:rust ownership")?;
/// assert_eq!(q.text(), "title:rust ownership");
/// // As a bag of words, the way BM25 baselines query (no syntax):
/// let q = RerankQuery::bag_of_words(fields, &index, "What is ownership?")?;
/// assert_eq!(q.text(), "What is ownership?");
/// # Ok::<(), dear_tantivy::Error>(())
/// ```
pub struct RerankQuery {
    query: Box<dyn Query>,
    text: String,
    fields: PassageFields,
}

impl std::fmt::Debug for RerankQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RerankQuery")
            .field("query", &self.query)
            .field("text", &self.text)
            .field("fields", &self.fields)
            .finish()
    }
}

impl RerankQuery {
    /// A search with any tantivy query; the models read `text`.
    pub fn new(fields: PassageFields, query: Box<dyn Query>, text: impl Into<String>) -> Self {
        Self {
            query,
            text: text.into(),
            fields,
        }
    }

    /// Parses `text` with tantivy's query language; the models read `text` as typed.
    ///
    /// # Errors
    /// [`Error::QueryParser`] when `text` does not parse.
    pub fn parse(fields: PassageFields, parser: &QueryParser, text: &str) -> crate::Result<Self> {
        let query = parser.parse_query(text)?;
        Ok(Self::new(fields, query, text))
    }

    /// A bag-of-words query (no syntax: any text is accepted): every term the fields'
    /// analyzers produce from `text`, in every searched field
    /// ([`PassageFields::searched`]), as SHOULD clauses whose BM25 scores add up. A
    /// term written `n` times weighs `n` times, as in Anserini's bag-of-words queries.
    ///
    /// # Errors
    /// [`Error::FieldType`] when a searched field is not an indexed text field.
    pub fn bag_of_words(fields: PassageFields, index: &Index, text: &str) -> crate::Result<Self> {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for field in fields.searched() {
            let counts = analyze(index, field, text)?;
            for (word, n) in counts {
                let term = Term::from_field_text(field, &word);
                let q: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                let q: Box<dyn Query> = if n > 1 {
                    Box::new(BoostQuery::new(q, n as f32))
                } else {
                    q
                };
                clauses.push((Occur::Should, q));
            }
        }
        Ok(Self::new(
            fields,
            Box::new(BooleanQuery::new(clauses)),
            text,
        ))
    }

    /// The text the models read.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first-stage query.
    pub fn query(&self) -> &dyn Query {
        self.query.as_ref()
    }

    /// The fields passages are read from.
    pub fn fields(&self) -> &PassageFields {
        &self.fields
    }
}

/// The terms `text` gives in `field` with their counts.
fn analyze(index: &Index, field: Field, text: &str) -> crate::Result<BTreeMap<String, usize>> {
    let schema = index.schema();
    let entry = schema.get_field_entry(field);
    let name = entry.name().to_string();
    let tokenizer_name = match entry.field_type() {
        tantivy::schema::FieldType::Str(options) => options
            .get_indexing_options()
            .map(|o| o.tokenizer().to_string())
            .ok_or_else(|| Error::FieldType {
                field: name.clone(),
                reason: "it is not indexed, so BM25 cannot search it".into(),
            })?,
        _ => {
            return Err(Error::FieldType {
                field: name,
                reason: "it is not a text field".into(),
            })
        }
    };
    let mut analyzer = index
        .tokenizers()
        .get(&tokenizer_name)
        .ok_or_else(|| Error::FieldType {
            field: name.clone(),
            reason: format!("its tokenizer '{tokenizer_name}' is not registered on the index"),
        })?;
    let mut counts = BTreeMap::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        *counts.entry(stream.token().text.clone()).or_insert(0) += 1;
    }
    Ok(counts)
}
