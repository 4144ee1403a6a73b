//! Relevance judgments ("qrels"), read from BEIR or TREC files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::str::FromStr;

use super::error::EvalError;

/// The name used in errors for text parsed from memory.
pub(crate) const STRING_SOURCE: &str = "<string>";

/// Relevance judgments: query id → (document id → integer grade).
///
/// Grades are integers as in trec_eval. A grade `>=`
/// [`RELEVANCE_LEVEL`](super::RELEVANCE_LEVEL) (1) makes a document relevant; a grade of
/// 0 is judged non-relevant; a negative grade is, for trec_eval, "in the pool but not
/// judged": it is neither relevant nor part of the ideal ranking, so for the measures of
/// this module it behaves like 0.
///
/// Two file formats are read, detected from the first non-blank line:
///
/// * **BEIR** `qrels/<split>.tsv`: three tab-separated columns
///   `query-id corpus-id score`. The header line `query-id\tcorpus-id\tscore` is
///   skipped; a file without a header is accepted too (the first line is taken as a
///   header only when its third column is not an integer). Lines with three
///   space-separated columns and no tab are read as BEIR too.
/// * **TREC** qrels: four whitespace-separated columns `qid iter docid grade`; the
///   `iter` column is ignored, as trec_eval does (`get_qrels.c`), and so are lines that
///   start with `#` (in a BEIR file, only before the first line read).
///
/// Blank lines are skipped in both formats. A document judged twice for the same query
/// keeps the last grade read, as BEIR's loader does (it fills a Python dict) — trec_eval
/// itself refuses such files ("duplicate docs"); a warning is logged when the two grades
/// differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qrels {
    judgments: BTreeMap<String, BTreeMap<String, i32>>,
}

/// The two line formats [`Qrels`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `query-id \t corpus-id \t score`.
    Beir,
    /// `qid iter docid grade`.
    Trec,
}

/// The columns of a BEIR line: split on tabs when there is one, else on whitespace.
fn beir_fields(line: &str) -> Vec<&str> {
    if line.contains('\t') {
        line.split('\t').map(str::trim).collect()
    } else {
        line.split_whitespace().collect()
    }
}

impl Qrels {
    /// Empty judgments, to be filled with [`insert`](Self::insert).
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges `doc_id` for `query_id` with `grade`; returns the grade it replaces, if any.
    pub fn insert(
        &mut self,
        query_id: impl Into<String>,
        doc_id: impl Into<String>,
        grade: i32,
    ) -> Option<i32> {
        self.judgments
            .entry(query_id.into())
            .or_default()
            .insert(doc_id.into(), grade)
    }

    /// Reads a BEIR (`query-id\tcorpus-id\tscore`) or TREC (`qid iter docid grade`)
    /// qrels file; see [`Qrels`] for the formats.
    ///
    /// Errors name the file and the 1-based line (e.g. a grade that is not an integer).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
        Self::from_reader(BufReader::new(file), path)
    }

    /// Reads qrels from `reader`; `source` is the name errors give (usually the path).
    pub fn from_reader(reader: impl BufRead, source: impl AsRef<Path>) -> Result<Self, EvalError> {
        let source = source.as_ref();
        let mut qrels = Qrels::new();
        let mut format = None;
        for (index, line) in reader.lines().enumerate() {
            let number = index + 1;
            let line = line.map_err(|e| EvalError::reading(source, number, e))?;
            let line = if number == 1 {
                line.trim_start_matches('\u{feff}')
            } else {
                line.as_str()
            };
            if line.trim().is_empty() {
                continue;
            }
            let (query_id, doc_id, grade) = match format {
                // A comment before the first judgment (TREC style).
                None if line.trim_start().starts_with('#') => continue,
                None => {
                    let fields = beir_fields(line);
                    if fields.len() == 3 {
                        format = Some(Format::Beir);
                        match fields[2].parse::<i32>() {
                            Ok(grade) => (fields[0], fields[1], grade),
                            // The header `query-id corpus-id score`.
                            Err(_) => continue,
                        }
                    } else if line.split_whitespace().count() == 4 {
                        format = Some(Format::Trec);
                        trec_line(line, source, number)?
                    } else {
                        return Err(EvalError::parse(
                            source,
                            number,
                            format!(
                                "unrecognised qrels line {line:?}: expected BEIR \
                                 `query-id<TAB>corpus-id<TAB>score` or TREC `qid iter docid grade`"
                            ),
                        ));
                    }
                }
                Some(Format::Beir) => {
                    let fields = beir_fields(line);
                    if fields.len() != 3 {
                        return Err(EvalError::parse(
                            source,
                            number,
                            format!(
                                "expected 3 tab-separated columns `query-id corpus-id score`, found {}",
                                fields.len()
                            ),
                        ));
                    }
                    (fields[0], fields[1], grade(fields[2], source, number)?)
                }
                Some(Format::Trec) => {
                    if line.trim_start().starts_with('#') {
                        continue;
                    }
                    trec_line(line, source, number)?
                }
            };
            if query_id.is_empty() || doc_id.is_empty() {
                return Err(EvalError::parse(
                    source,
                    number,
                    "empty query or document id",
                ));
            }
            if let Some(previous) = qrels.insert(query_id, doc_id, grade) {
                if previous != grade {
                    tracing::warn!(
                        "{}:{number}: query '{query_id}' judges document '{doc_id}' again \
                         (grade {previous} replaced by {grade})",
                        source.display()
                    );
                }
            }
        }
        Ok(qrels)
    }

    /// The judged query ids, in byte order (trec_eval's `strcmp` order).
    pub fn queries(&self) -> impl Iterator<Item = &str> + '_ {
        self.judgments.keys().map(String::as_str)
    }

    /// The judgments of one query (document id → grade), if it has any.
    pub fn get(&self, query_id: &str) -> Option<&BTreeMap<String, i32>> {
        self.judgments.get(query_id)
    }

    /// The number of judged queries.
    pub fn len(&self) -> usize {
        self.judgments.len()
    }

    /// Whether no query is judged.
    pub fn is_empty(&self) -> bool {
        self.judgments.is_empty()
    }
}

impl FromStr for Qrels {
    type Err = EvalError;

    /// Parses qrels text; errors name the source `<string>`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_reader(text.as_bytes(), STRING_SOURCE)
    }
}

/// Parses the grade column.
fn grade(field: &str, source: &Path, line: usize) -> Result<i32, EvalError> {
    field.parse::<i32>().map_err(|_| {
        EvalError::parse(
            source,
            line,
            format!("the grade {field:?} is not an integer"),
        )
    })
}

/// Parses a TREC qrels line `qid iter docid grade`.
fn trec_line<'a>(
    line: &'a str,
    source: &Path,
    number: usize,
) -> Result<(&'a str, &'a str, i32), EvalError> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() != 4 {
        return Err(EvalError::parse(
            source,
            number,
            format!(
                "expected 4 whitespace-separated columns `qid iter docid grade`, found {}",
                fields.len()
            ),
        ));
    }
    Ok((fields[0], fields[2], grade(fields[3], source, number)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beir_with_header() {
        let qrels: Qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td1\t0\n"
            .parse()
            .unwrap();
        assert_eq!(qrels.len(), 2);
        assert!(!qrels.is_empty());
        assert_eq!(qrels.queries().collect::<Vec<_>>(), ["q1", "q2"]);
        let q1 = qrels.get("q1").unwrap();
        assert_eq!(q1.len(), 2);
        assert_eq!(q1["d1"], 1);
        assert_eq!(q1["d2"], 2);
        assert_eq!(qrels.get("q2").unwrap()["d1"], 0);
        assert!(qrels.get("query-id").is_none());
        assert!(qrels.get("q3").is_none());
    }

    #[test]
    fn beir_without_header_keeps_first_line() {
        let qrels: Qrels = "q1\td1\t1\nq2\td2\t3\n".parse().unwrap();
        assert_eq!(qrels.len(), 2);
        assert_eq!(qrels.get("q1").unwrap()["d1"], 1);
        assert_eq!(qrels.get("q2").unwrap()["d2"], 3);
    }

    #[test]
    fn beir_ids_with_spaces_crlf_and_blank_lines() {
        let qrels: Qrels = "query-id\tcorpus-id\tscore\r\n\r\nq 1\tdoc one\t2\r\n\nq2\td2\t-1\r\n"
            .parse()
            .unwrap();
        assert_eq!(qrels.get("q 1").unwrap()["doc one"], 2);
        assert_eq!(qrels.get("q2").unwrap()["d2"], -1);
    }

    #[test]
    fn trec_format() {
        let qrels: Qrels = "# comment\n1 0 d1 2\n1 0 d2 0\n\n2\t0\td3\t1\n"
            .parse()
            .unwrap();
        assert_eq!(qrels.len(), 2);
        assert_eq!(qrels.get("1").unwrap()["d1"], 2);
        assert_eq!(qrels.get("1").unwrap()["d2"], 0);
        assert_eq!(qrels.get("2").unwrap()["d3"], 1);
    }

    #[test]
    fn non_integer_grade_names_the_line() {
        // Line 1 is the header, line 2 fine, line 3 bad.
        let err = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1.5\n"
            .parse::<Qrels>()
            .unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("<string>:3: "), "{message}");
        assert!(message.contains("\"1.5\" is not an integer"), "{message}");
        match err {
            EvalError::Parse { line, .. } => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }

        // Without header, a bad grade on line 2 (line 1 set the format).
        let err = "q1\td1\t1\nq1\td2\tx\n".parse::<Qrels>().unwrap_err();
        assert!(err.to_string().starts_with("<string>:2: "), "{err}");

        // TREC: a bad grade and a wrong column count.
        let err = "1 0 d1 1\n1 0 d2 one\n".parse::<Qrels>().unwrap_err();
        assert!(err.to_string().starts_with("<string>:2: "), "{err}");
        let err = "1 0 d1 1\n1 0 d2 1\n1 0 d3\n".parse::<Qrels>().unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("<string>:3: "), "{message}");
        assert!(
            message.contains("4 whitespace-separated columns"),
            "{message}"
        );

        // BEIR: a wrong column count.
        let err = "q1\td1\t1\nq1\td2\t1\textra\n"
            .parse::<Qrels>()
            .unwrap_err();
        assert!(err.to_string().starts_with("<string>:2: "), "{err}");

        // Neither format.
        let err = "\nq1 d1\n".parse::<Qrels>().unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("<string>:2: unrecognised"), "{message}");
    }

    #[test]
    fn from_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.tsv");
        std::fs::write(
            &path,
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n",
        )
        .unwrap();
        let message = Qrels::from_path(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}:3: ", path.display())),
            "{message}"
        );

        std::fs::write(&path, "query-id\tcorpus-id\tscore\nq1\td1\t1\n").unwrap();
        let qrels = Qrels::from_path(&path).unwrap();
        assert_eq!(qrels.get("q1").unwrap()["d1"], 1);

        let missing = dir.path().join("missing.tsv");
        let err = Qrels::from_path(&missing).unwrap_err();
        assert!(matches!(err, EvalError::Io { .. }));
        assert!(err.to_string().contains("missing.tsv"), "{err}");
    }

    #[test]
    fn repeated_judgment_keeps_the_last_grade() {
        let qrels: Qrels = "q1\td1\t1\nq1\td1\t2\n".parse().unwrap();
        assert_eq!(qrels.get("q1").unwrap()["d1"], 2);
        assert_eq!(qrels.get("q1").unwrap().len(), 1);
    }

    #[test]
    fn insert_builds_judgments() {
        let mut qrels = Qrels::new();
        assert!(qrels.is_empty());
        assert_eq!(qrels.insert("q", "d", 1), None);
        assert_eq!(qrels.insert("q", "d", 2), Some(1));
        assert_eq!(qrels.len(), 1);
        assert_eq!(qrels.get("q").unwrap()["d"], 2);
    }
}
