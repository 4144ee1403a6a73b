//! A ready-made passage index: dear's schema ([`PassageFields::default_schema`]),
//! in RAM or in a folder, with id-keyed upserts.

use std::collections::HashSet;
use std::path::Path;

use dear_core::Passage;
use tantivy::directory::MmapDirectory;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, Term};

use crate::{register_analyzer, Error, PassageFields, RerankQuery};

/// A tantivy index of passages with dear's schema.
///
/// # Example
/// ```
/// use dear_core::Passage;
/// use dear_tantivy::PassageIndex;
/// let index = PassageIndex::create_in_ram()?;
/// let mut writer = index.writer()?;
/// writer.upsert(&Passage::new("Ownership rules.").with_id("a"))?;
/// writer.upsert(&Passage::new("Ownership rules, again.").with_id("a"))?; // replaces "a"
/// writer.upsert(&Passage::new("Borrowing.").with_id("b"))?;
/// writer.commit()?;
/// assert_eq!(index.num_docs(), 2);
/// # Ok::<(), dear_tantivy::Error>(())
/// ```
#[derive(Clone)]
pub struct PassageIndex {
    index: Index,
    reader: IndexReader,
    fields: PassageFields,
}

impl std::fmt::Debug for PassageIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassageIndex")
            .field("fields", &self.fields)
            .field("docs", &self.num_docs())
            .finish()
    }
}

impl PassageIndex {
    /// A new index in RAM.
    ///
    /// # Errors
    /// tantivy errors.
    pub fn create_in_ram() -> crate::Result<Self> {
        let (schema, _) = PassageFields::default_schema();
        Self::from_index(Index::create_in_ram(schema))
    }

    /// Opens the index in `dir`, or creates one there (and the folder) if it has none.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be made; [`Error::FieldNotFound`] when the
    /// index there was not made by dear; tantivy errors.
    pub fn open_or_create(dir: &Path) -> crate::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let directory =
            MmapDirectory::open(dir).map_err(|e| Error::Tantivy(tantivy::TantivyError::from(e)))?;
        let (schema, _) = PassageFields::default_schema();
        Self::from_index(Index::open_or_create(directory, schema)?)
    }

    /// Opens the existing index in `dir`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the folder when there is no index in it; as
    /// [`open_or_create`](Self::open_or_create).
    pub fn open(dir: &Path) -> crate::Result<Self> {
        if !dir.join("meta.json").is_file() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no tantivy index here (build one with `dear index`)",
                ),
            ));
        }
        Self::from_index(Index::open_in_dir(dir)?)
    }

    fn from_index(index: Index) -> crate::Result<Self> {
        register_analyzer(&index);
        let fields =
            PassageFields::from_schema(&index.schema(), Some("id"), Some("title"), &["text"])?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            fields,
        })
    }

    /// The tantivy index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The passage fields.
    pub fn fields(&self) -> &PassageFields {
        &self.fields
    }

    /// A searcher over the last commit.
    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    /// Live documents at the last commit.
    pub fn num_docs(&self) -> u64 {
        self.searcher().num_docs()
    }

    /// A bag-of-words BM25 query over title and text ([`RerankQuery::bag_of_words`]).
    ///
    /// # Errors
    /// As [`RerankQuery::bag_of_words`].
    pub fn query(&self, text: &str) -> crate::Result<RerankQuery> {
        RerankQuery::bag_of_words(self.fields.clone(), &self.index, text)
    }

    /// A writer (one at a time per index; 64 MB of indexing memory).
    ///
    /// # Errors
    /// tantivy errors (another writer holds the index lock).
    pub fn writer(&self) -> crate::Result<PassageWriter> {
        Ok(PassageWriter {
            writer: self.index.writer(64 << 20)?,
            reader: self.reader.clone(),
            fields: self.fields.clone(),
            pending: HashSet::new(),
        })
    }
}

/// Adds passages to a [`PassageIndex`]; visible to searchers after
/// [`commit`](Self::commit).
pub struct PassageWriter {
    writer: IndexWriter,
    reader: IndexReader,
    fields: PassageFields,
    pending: HashSet<String>,
}

impl std::fmt::Debug for PassageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassageWriter").finish_non_exhaustive()
    }
}

impl PassageWriter {
    /// Adds `passage`, replacing any document with the same id (in the index or
    /// added earlier in this commit). Returns whether the id was already there.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a passage without an id; tantivy errors.
    pub fn upsert(&mut self, passage: &Passage) -> crate::Result<bool> {
        let id = passage
            .id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::InvalidOption("a passage to index needs an id".into()))?;
        let f = &self.fields;
        let (Some(id_field), Some(&text_field)) = (f.id(), f.text().first()) else {
            return Err(Error::InvalidOption(
                "this index's fields have no id or text field to write".into(),
            ));
        };
        let term = Term::from_field_text(id_field, id);
        let existed =
            !self.pending.insert(id.to_string()) || self.reader.searcher().doc_freq(&term)? > 0;
        self.writer.delete_term(term);
        let mut document = doc!(id_field => id, text_field => passage.text.as_str());
        if let (Some(field), Some(title)) = (f.title(), passage.title.as_deref()) {
            document.add_text(field, title);
        }
        self.writer.add_document(document)?;
        Ok(existed)
    }

    /// Makes everything added so far searchable.
    ///
    /// # Errors
    /// tantivy errors.
    pub fn commit(&mut self) -> crate::Result<()> {
        self.writer.commit()?;
        self.reader.reload()?;
        self.pending.clear();
        Ok(())
    }
}
