//! A ready-made passage index: dear's schema ([`PassageFields::default_schema`]),
//! in RAM or in a folder, with id-keyed upserts.

use std::collections::HashSet;
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use dear_core::Passage;
use serde::{Deserialize, Serialize};
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
        // Opening the segments reads their headers: a damaged file can make tantivy
        // panic here, which becomes an error naming the damage.
        let reader = std::panic::catch_unwind(AssertUnwindSafe(|| {
            index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()
        }))
        .map_err(|payload| {
            Error::Corrupt(format!(
                "opening its segments panicked ({}); `dear index --check` names the damaged files",
                crate::error::panic_message(payload.as_ref())
            ))
        })??;
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

    /// A writer (one at a time per index; 64 MB of indexing memory). The index's files
    /// are checked first: nothing is written on top of an index that is damaged.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the damaged files; tantivy errors (another writer
    /// holds the index lock).
    pub fn writer(&self) -> crate::Result<PassageWriter> {
        let corrupt = self.corrupt_files()?;
        if !corrupt.is_empty() {
            return Err(IndexCheck {
                documents: 0,
                segments: 0,
                corrupt_files: corrupt,
                problems: Vec::new(),
            }
            .into_error());
        }
        let sources = self.sources()?;
        Ok(PassageWriter {
            writer: self.index.writer(64 << 20)?,
            reader: self.reader.clone(),
            fields: self.fields.clone(),
            pending: HashSet::new(),
            sources,
            current: None,
        })
    }

    /// What the index was built from, as its writers recorded it (see
    /// [`PassageWriter::begin_source`]); empty for an index written without sources.
    ///
    /// # Errors
    /// tantivy errors reading the index's metadata.
    pub fn sources(&self) -> crate::Result<IndexSources> {
        let payload = self.index.load_metas()?.payload;
        Ok(payload
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default())
    }

    /// Checks the index: every file's checksum, then every segment's stored documents
    /// (read back one by one), with any panic of the reader caught.
    ///
    /// # Errors
    /// tantivy errors that prevent the check itself (unreadable metadata).
    pub fn check(&self) -> crate::Result<IndexCheck> {
        check_index(&self.index)
    }

    /// Checks the index in `dir` without opening it for search first, so that an index
    /// too damaged to open is still described (see [`check`](Self::check)).
    ///
    /// # Errors
    /// [`Error::Io`] when `dir` holds no index; tantivy errors reading its metadata.
    pub fn check_folder(dir: &Path) -> crate::Result<IndexCheck> {
        if !dir.join("meta.json").is_file() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no tantivy index here"),
            ));
        }
        let index = std::panic::catch_unwind(|| Index::open_in_dir(dir)).map_err(|payload| {
            Error::Corrupt(format!(
                "reading its metadata panicked ({})",
                crate::error::panic_message(payload.as_ref())
            ))
        })??;
        check_index(&index)
    }

    /// The index files whose checksum does not match.
    fn corrupt_files(&self) -> crate::Result<Vec<PathBuf>> {
        corrupt_files(&self.index)
    }
}

/// The files of `index` whose checksum does not match (a panic while checking counts
/// as the metadata being damaged).
fn corrupt_files(index: &Index) -> crate::Result<Vec<PathBuf>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| index.validate_checksum())) {
        Ok(found) => {
            let mut files: Vec<PathBuf> = found?.into_iter().collect();
            files.sort();
            Ok(files)
        }
        Err(_) => Ok(vec![PathBuf::from("meta.json")]),
    }
}

/// [`PassageIndex::check`] on a tantivy index.
fn check_index(index: &Index) -> crate::Result<IndexCheck> {
    let corrupt_files = corrupt_files(index)?;
    let segments = index.searchable_segment_metas()?.len();
    let mut check = IndexCheck {
        documents: 0,
        segments,
        corrupt_files,
        problems: Vec::new(),
    };
    let read =
        std::panic::catch_unwind(AssertUnwindSafe(|| -> crate::Result<(u64, Vec<String>)> {
            let reader: IndexReader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()?;
            let searcher = reader.searcher();
            let mut documents = 0u64;
            let mut problems = Vec::new();
            for (ord, segment) in searcher.segment_readers().iter().enumerate() {
                documents += u64::from(segment.num_docs());
                let store = segment
                    .get_store_reader(1)
                    .map_err(tantivy::TantivyError::from)?;
                for doc in segment.doc_ids_alive() {
                    if let Err(e) = store.get::<tantivy::TantivyDocument>(doc) {
                        problems.push(format!("segment {ord}, document {doc}: {e}"));
                        break;
                    }
                }
            }
            Ok((documents, problems))
        }));
    match read {
        Ok(Ok((documents, problems))) => {
            check.documents = documents;
            check.problems = problems;
        }
        Ok(Err(e)) => check
            .problems
            .push(format!("reading the index failed: {e}")),
        Err(payload) => check.problems.push(format!(
            "reading the index panicked: {}",
            crate::error::panic_message(payload.as_ref())
        )),
    }
    Ok(check)
}

/// The outcome of [`PassageIndex::check`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexCheck {
    /// Live documents read back.
    pub documents: u64,
    /// Searchable segments.
    pub segments: usize,
    /// Files whose checksum does not match their content.
    pub corrupt_files: Vec<PathBuf>,
    /// Other damage found while reading (a document that does not decode, a panic).
    pub problems: Vec<String>,
}

impl IndexCheck {
    /// Whether the index is intact.
    pub fn is_ok(&self) -> bool {
        self.corrupt_files.is_empty() && self.problems.is_empty()
    }

    /// The error this check stands for ([`Error::Corrupt`]).
    pub fn into_error(self) -> Error {
        let mut what: Vec<String> = self
            .corrupt_files
            .iter()
            .map(|f| format!("checksum mismatch in {}", f.display()))
            .collect();
        what.extend(self.problems);
        Error::Corrupt(what.join("; "))
    }
}

/// What an index was built from: the corpora its writers named, in order, and whether
/// anything else was written. Kept in tantivy's commit payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSources {
    /// The corpora written into the index.
    pub corpora: Vec<CorpusSource>,
    /// Whether passages were written outside any named corpus.
    #[serde(default)]
    pub other_writes: bool,
}

/// One corpus written into an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusSource {
    /// A name for messages (the corpus file's name).
    pub name: String,
    /// The corpus's [`corpus_fingerprint`].
    pub fingerprint: String,
    /// Whether every passage of it was committed.
    pub complete: bool,
}

impl IndexSources {
    /// Whether the index holds exactly the corpus with this fingerprint, completely.
    pub fn is_exactly(&self, fingerprint: &str) -> bool {
        !self.other_writes
            && self.corpora.len() == 1
            && self.corpora[0].fingerprint == fingerprint
            && self.corpora[0].complete
    }
}

impl std::fmt::Display for IndexSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.corpora.is_empty() {
            return f.write_str(if self.other_writes {
                "passages from no named corpus"
            } else {
                "no recorded corpus"
            });
        }
        let parts: Vec<String> = self
            .corpora
            .iter()
            .map(|c| {
                format!(
                    "{} ({}{})",
                    c.name,
                    c.fingerprint,
                    if c.complete { "" } else { ", incomplete" }
                )
            })
            .collect();
        write!(f, "{}", parts.join(", "))?;
        if self.other_writes {
            f.write_str(" and passages from no named corpus")?;
        }
        Ok(())
    }
}

/// A fingerprint of a corpus file's bytes (64-bit FNV-1a and the length): equal files
/// give equal fingerprints, so an index can say which corpus it holds.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn corpus_fingerprint(path: &Path) -> crate::Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        len += n as u64;
    }
    Ok(format!("fnv1a64:{hash:016x}:{len}"))
}

/// Adds passages to a [`PassageIndex`]; visible to searchers after
/// [`commit`](Self::commit).
pub struct PassageWriter {
    writer: IndexWriter,
    reader: IndexReader,
    fields: PassageFields,
    pending: HashSet<String>,
    sources: IndexSources,
    /// The index in `sources.corpora` of the corpus being written, if any.
    current: Option<usize>,
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
        if self.current.is_none() {
            self.sources.other_writes = true;
        }
        Ok(existed)
    }

    /// Names the corpus the next upserts come from (its file name and
    /// [`corpus_fingerprint`]). Every commit records it as incomplete until
    /// [`finish_source`](Self::finish_source): an interrupted run is visible, and a rerun
    /// of the same corpus (upserts replace what the first run committed) completes it.
    pub fn begin_source(&mut self, name: &str, fingerprint: &str) {
        let at = match self
            .sources
            .corpora
            .iter()
            .position(|c| c.fingerprint == fingerprint)
        {
            Some(at) => at,
            None => {
                self.sources.corpora.push(CorpusSource {
                    name: name.to_string(),
                    fingerprint: fingerprint.to_string(),
                    complete: false,
                });
                self.sources.corpora.len() - 1
            }
        };
        self.sources.corpora[at].complete = false;
        self.current = Some(at);
    }

    /// Marks the corpus named by [`begin_source`](Self::begin_source) complete and
    /// commits.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub fn finish_source(&mut self) -> crate::Result<()> {
        if let Some(at) = self.current.take() {
            self.sources.corpora[at].complete = true;
        }
        self.commit()
    }

    /// Makes everything added so far searchable (and durable).
    ///
    /// # Errors
    /// tantivy errors.
    pub fn commit(&mut self) -> crate::Result<()> {
        let payload = serde_json::to_string(&self.sources)
            .map_err(|e| Error::InvalidOption(format!("index sources: {e}")))?;
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        self.pending.clear();
        Ok(())
    }
}
