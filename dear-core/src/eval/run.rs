//! Runs: ranked lists of scored documents per query, in TREC run format.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use super::error::EvalError;
use super::qrels::STRING_SOURCE;

/// A run: query id → ranked list of `(document id, score)`.
///
/// A run holds each list in the order it was given (inserted, or read from a file), and
/// never holds the same document twice for a query, nor a NaN score: trec_eval refuses
/// runs with duplicate documents (`form_res_rels.c`, "duplicate docs").
///
/// **Evaluation ignores the held order.** Like trec_eval, [`evaluate`](super::evaluate)
/// and the metric functions rank a query's documents by score, descending, breaking
/// ties by document id in *descending* byte order (`comp_sim_docno` in
/// `form_res_rels.c`). Give scores that decrease strictly along the list if the list's
/// order is the one to evaluate (for a reranked list without scores, e.g. `n - i` for
/// position `i` of `n`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    lists: BTreeMap<String, Vec<(String, f64)>>,
}

impl Run {
    /// An empty run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the ranked list of `query_id` (replacing any list it had).
    ///
    /// The list is kept in the given order; see [`Run`] for how it is ranked for
    /// evaluation. An empty list is kept too: [`evaluate`](super::evaluate) then counts
    /// the query, with all measures 0 (as pytrec_eval does for an empty dict); note that
    /// a TREC file cannot hold an empty list, so [`write_trec`](Self::write_trec) writes
    /// nothing for it and trec_eval, reading that file, would skip the query.
    ///
    /// Fails, leaving the run unchanged, if a document appears twice or a score is NaN.
    pub fn insert(
        &mut self,
        query_id: impl Into<String>,
        ranked: Vec<(String, f64)>,
    ) -> Result<(), EvalError> {
        let query_id = query_id.into();
        let mut seen = HashSet::with_capacity(ranked.len());
        for (doc_id, score) in &ranked {
            if score.is_nan() {
                return Err(EvalError::NanScore {
                    query_id,
                    doc_id: doc_id.clone(),
                });
            }
            if !seen.insert(doc_id.as_str()) {
                return Err(EvalError::DuplicateDoc {
                    query_id,
                    doc_id: doc_id.clone(),
                });
            }
        }
        self.lists.insert(query_id, ranked);
        Ok(())
    }

    /// The ranked list of one query, in the order the run holds it.
    pub fn get(&self, query_id: &str) -> Option<&[(String, f64)]> {
        self.lists.get(query_id).map(Vec::as_slice)
    }

    /// The query ids of the run, in byte order.
    pub fn queries(&self) -> impl Iterator<Item = &str> + '_ {
        self.lists.keys().map(String::as_str)
    }

    /// The number of queries in the run.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Whether the run has no query.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Reads a TREC run file: lines `qid Q0 docid rank score tag`, whitespace-separated.
    ///
    /// As in trec_eval (`get_trec_results.c`): the `Q0` and `rank` columns are ignored,
    /// columns after the tag are ignored, blank lines and lines starting with `#` are
    /// skipped, and a query's lines need not be contiguous. Each list is held in file
    /// order. Errors name the file and the 1-based line: fewer than six columns, a score
    /// that is not a number (or NaN), a document listed twice for a query.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
        Self::from_reader(BufReader::new(file), path)
    }

    /// Reads a TREC run from `reader`; `source` is the name errors give (usually the
    /// path). See [`from_path`](Self::from_path).
    pub fn from_reader(reader: impl BufRead, source: impl AsRef<Path>) -> Result<Self, EvalError> {
        let source = source.as_ref();
        let mut lists: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        // (query, doc) → line of first occurrence.
        let mut first_line: HashMap<(String, String), usize> = HashMap::new();
        for (index, line) in reader.lines().enumerate() {
            let number = index + 1;
            let line = line.map_err(|e| EvalError::reading(source, number, e))?;
            let line = line.trim_start_matches('\u{feff}');
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 {
                return Err(EvalError::parse(
                    source,
                    number,
                    format!(
                        "expected 6 whitespace-separated columns `qid Q0 docid rank score tag`, found {}",
                        fields.len()
                    ),
                ));
            }
            let (query_id, doc_id) = (fields[0], fields[2]);
            let score: f64 = fields[4].parse().map_err(|_| {
                EvalError::parse(
                    source,
                    number,
                    format!("the score {:?} is not a number", fields[4]),
                )
            })?;
            if score.is_nan() {
                return Err(EvalError::parse(source, number, "the score is NaN"));
            }
            let key = (query_id.to_owned(), doc_id.to_owned());
            if let Some(first) = first_line.get(&key) {
                return Err(EvalError::parse(
                    source,
                    number,
                    format!(
                        "document '{doc_id}' is listed again for query '{query_id}' \
                         (first at line {first}); trec_eval refuses duplicate documents"
                    ),
                ));
            }
            first_line.insert(key, number);
            lists
                .entry(query_id.to_owned())
                .or_default()
                .push((doc_id.to_owned(), score));
        }
        Ok(Run { lists })
    }

    /// Writes the run in TREC format, one line `qid Q0 docid rank score tag` per document.
    ///
    /// Queries come in byte order of their ids; within a query, documents come in the
    /// order the run holds, with `rank` counting from 1. The score column is the score
    /// the caller gave, written in the shortest form that reads back to the same `f64`,
    /// so [`Run::from_path`] restores the run exactly. trec_eval ignores `rank` and sorts
    /// by score (ties: document id descending), so the file evaluates in the held order
    /// only if the scores decrease strictly along each list — that is the caller's to
    /// ensure (see [`Run`]). Output is buffered internally.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if a query id, document id or `tag` is
    /// empty or contains whitespace (the format could not be read back).
    pub fn write_trec(&self, w: impl Write, tag: &str) -> io::Result<()> {
        check_token("tag", tag)?;
        let mut w = BufWriter::new(w);
        for (query_id, list) in &self.lists {
            check_token("query id", query_id)?;
            for (index, (doc_id, score)) in list.iter().enumerate() {
                check_token("document id", doc_id)?;
                writeln!(w, "{query_id} Q0 {doc_id} {} {score} {tag}", index + 1)?;
            }
        }
        w.flush()
    }

    /// Writes the run to a file with [`write_trec`](Self::write_trec).
    pub fn write_trec_path(&self, path: impl AsRef<Path>, tag: &str) -> Result<(), EvalError> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| EvalError::io(path, e))?;
        self.write_trec(file, tag)
            .map_err(|e| EvalError::io(path, e))
    }
}

impl FromStr for Run {
    type Err = EvalError;

    /// Parses TREC run text; errors name the source `<string>`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_reader(text.as_bytes(), STRING_SOURCE)
    }
}

/// A TREC column must be a non-empty token without whitespace.
fn check_token(what: &str, token: &str) -> io::Result<()> {
    if token.is_empty() || token.chars().any(char::is_whitespace) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the {what} {token:?} cannot be written in TREC format (empty or contains whitespace)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(&str, f64)]) -> Vec<(String, f64)> {
        items.iter().map(|&(d, s)| (d.to_owned(), s)).collect()
    }

    #[test]
    fn reads_trec_run_ignoring_rank_and_extra_columns() {
        let text = "# a comment\n\
                    q1 Q0 d1 5 1.5 bm25\n\
                    q2 Q0 d9 1 7 bm25 extra columns\n\
                    \n\
                    q1 Q0 d2 1 2.5 bm25\n";
        let run: Run = text.parse().unwrap();
        assert_eq!(run.len(), 2);
        assert!(!run.is_empty());
        assert_eq!(run.queries().collect::<Vec<_>>(), ["q1", "q2"]);
        // File order is kept; the rank column (5, 1) is ignored.
        assert_eq!(run.get("q1").unwrap(), list(&[("d1", 1.5), ("d2", 2.5)]));
        assert_eq!(run.get("q2").unwrap(), list(&[("d9", 7.0)]));
        assert!(run.get("q3").is_none());
    }

    #[test]
    fn trec_round_trip() {
        let mut run = Run::new();
        run.insert("q2", list(&[("b", 3.0), ("a", 0.1 + 0.2), ("c", -1e-7)]))
            .unwrap();
        run.insert("q1", list(&[("x", 10.0)])).unwrap();
        let mut out = Vec::new();
        run.write_trec(&mut out, "dear").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "q1 Q0 x 1 10 dear\n\
             q2 Q0 b 1 3 dear\n\
             q2 Q0 a 2 0.30000000000000004 dear\n\
             q2 Q0 c 3 -0.0000001 dear\n"
        );
        let back: Run = text.parse().unwrap();
        assert_eq!(back, run);
        // Bit-exact scores.
        assert_eq!(
            back.get("q2").unwrap()[1].1.to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.trec");
        let mut run = Run::new();
        run.insert("1", list(&[("d1", 2.0), ("d2", 1.0)])).unwrap();
        run.write_trec_path(&path, "tag").unwrap();
        assert_eq!(Run::from_path(&path).unwrap(), run);
    }

    #[test]
    fn write_rejects_whitespace() {
        let mut run = Run::new();
        run.insert("q 1", list(&[("d", 1.0)])).unwrap();
        let err = run.write_trec(Vec::new(), "t").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let mut run = Run::new();
        run.insert("q", list(&[("d", 1.0)])).unwrap();
        assert!(run.write_trec(Vec::new(), "my tag").is_err());
        assert!(run.write_trec(Vec::new(), "").is_err());
    }

    #[test]
    fn malformed_lines_are_named() {
        let err = "q1 Q0 d1 1 1.0 t\nq1 Q0 d2 2 1.0\n"
            .parse::<Run>()
            .unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("<string>:2: expected 6"), "{message}");

        let err = "q1 Q0 d1 1 high t\n".parse::<Run>().unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("<string>:1: "), "{message}");
        assert!(message.contains("\"high\" is not a number"), "{message}");

        let err = "q1 Q0 d1 1 NaN t\n".parse::<Run>().unwrap_err();
        assert!(err.to_string().starts_with("<string>:1: "), "{err}");
    }

    #[test]
    fn duplicate_documents_are_refused() {
        // In a file: named with both lines, even when not adjacent.
        let text = "q1 Q0 d1 1 3 t\nq2 Q0 d1 1 3 t\nq1 Q0 d1 2 2 t\n";
        let err = text.parse::<Run>().unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("<string>:3: "), "{message}");
        assert!(message.contains("first at line 1"), "{message}");
        match err {
            EvalError::Parse { line, .. } => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }

        // Through insert: refused, run unchanged.
        let mut run = Run::new();
        run.insert("q", list(&[("a", 1.0)])).unwrap();
        let err = run
            .insert("q", list(&[("a", 2.0), ("b", 1.0), ("a", 0.5)]))
            .unwrap_err();
        assert!(matches!(err, EvalError::DuplicateDoc { ref doc_id, .. } if doc_id == "a"));
        assert_eq!(run.get("q").unwrap(), list(&[("a", 1.0)]));
    }

    #[test]
    fn nan_scores_are_refused() {
        let mut run = Run::new();
        let err = run.insert("q", list(&[("a", f64::NAN)])).unwrap_err();
        assert!(matches!(err, EvalError::NanScore { .. }));
        assert!(run.is_empty());
    }

    #[test]
    fn insert_replaces_a_list() {
        let mut run = Run::new();
        run.insert("q", list(&[("a", 1.0)])).unwrap();
        run.insert("q", list(&[("b", 1.0)])).unwrap();
        assert_eq!(run.len(), 1);
        assert_eq!(run.get("q").unwrap(), list(&[("b", 1.0)]));
    }
}
