//! Reading documents and queries from disk: BEIR JSONL files and folders of text.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::Passage;
use serde::Deserialize;

use crate::Error;

/// One JSON line of passages: BEIR's `{"_id", "title"?, "text"}`, or `"id"` for
/// `"_id"`; ids may be strings or numbers.
#[derive(Deserialize)]
struct PassageLine {
    #[serde(rename = "_id", alias = "id", default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    title: Option<String>,
    text: String,
}

fn id_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one line of passages; `id_required` for corpora (BEIR), where documents
/// are judged by id.
fn parse_passage(text: &str, id_required: bool) -> Result<Passage, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "expected a JSON object {{\"_id\" or \"id\", \"title\"?, \"text\"}}, found {}",
            json_kind(&value)
        ));
    }
    let line: PassageLine = serde_json::from_value(value)
        .map_err(|e| format!("not a passage {{\"_id\" or \"id\", \"title\"?, \"text\"}}: {e}"))?;
    let id = match &line.id {
        None | Some(serde_json::Value::Null) if !id_required => None,
        None | Some(serde_json::Value::Null) => return Err("`_id` is missing".into()),
        Some(v) => Some(id_string(v).ok_or("`_id` must be a non-empty string or a number")?),
    };
    Ok(Passage {
        id,
        title: line.title.filter(|t| !t.trim().is_empty()),
        text: line.text,
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Calls `each` with every line of a JSONL file (1-based line numbers), naming the
/// line of any error, rejecting lines that are not UTF-8.
fn for_each_line(
    path: &Path,
    mut each: impl FnMut(usize, &str) -> Result<(), String>,
) -> crate::Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let text = std::str::from_utf8(&buf).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            line,
            reason: format!("not UTF-8 ({e})"),
        })?;
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        each(line, text).map_err(|reason| Error::Input {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
    }
}

/// Reads a BEIR corpus (`{"_id", "title"?, "text"}` per line; `"id"` is accepted for
/// `"_id"`, ids may be numbers).
///
/// # Errors
/// [`Error::Io`] for an unreadable file; [`Error::Input`] naming the line that is not
/// UTF-8, not JSON, or lacks an id or `text`.
pub fn read_beir_corpus(path: &Path, mut each: impl FnMut(Passage)) -> crate::Result<()> {
    for_each_line(path, |_, text| {
        each(parse_passage(text, true)?);
        Ok(())
    })
}

/// Reads a file of passages, one JSON object per line, as [`read_beir_corpus`] does
/// but with the id optional (`{"id"?, "title"?, "text"}`). Blank lines are skipped.
///
/// # Errors
/// As [`read_beir_corpus`].
pub fn read_passages(path: &Path) -> crate::Result<Vec<Passage>> {
    let mut out = Vec::new();
    for_each_line(path, |_, text| {
        out.push(parse_passage(text, false)?);
        Ok(())
    })?;
    Ok(out)
}

#[derive(Deserialize)]
struct QueryLine {
    #[serde(rename = "_id")]
    id: serde_json::Value,
    text: String,
}

/// Reads BEIR queries (`{"_id", "text"}` per line) as (id, text) pairs in file order.
///
/// # Errors
/// As [`read_beir_corpus`].
pub fn read_beir_queries(path: &Path) -> crate::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for_each_line(path, |_, text| {
        let q: QueryLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let id = id_string(&q.id).ok_or("`_id` must be a non-empty string or a number")?;
        out.push((id, q.text));
        Ok(())
    })?;
    Ok(out)
}

/// Words per passage when a text file is split ([`read_text_folder`]).
pub const FOLDER_PASSAGE_WORDS: usize = 180;

/// Reads every `.txt` and `.md` file under `dir` (recursively, in path order) and
/// splits each into passages of whole paragraphs of about
/// [`FOLDER_PASSAGE_WORDS`] words (a longer paragraph is split between words). A
/// passage's id is the file's path relative to `dir` and its index, `guide/intro.md#0`;
/// its title is the file's first Markdown heading, or its file name.
///
/// # Errors
/// [`Error::Io`] for unreadable folders or files; [`Error::Input`] for a file that is
/// not UTF-8.
pub fn read_text_folder(dir: &Path, mut each: impl FnMut(Passage)) -> crate::Result<()> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| Error::Input {
            path: path.clone(),
            line: 0,
            reason: format!("not UTF-8 ({e})"),
        })?;
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let title = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim().to_string())
            .filter(|t| !t.is_empty())
            .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()));
        for (i, chunk) in split_passages(&text, FOLDER_PASSAGE_WORDS)
            .into_iter()
            .enumerate()
        {
            each(Passage {
                id: Some(format!("{rel}#{i}")),
                title: title.clone(),
                text: chunk,
            });
        }
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> crate::Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            if !entry.file_name().to_string_lossy().starts_with('.') {
                collect_files(&path, out)?;
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("txt" | "md")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits text into passages of whole paragraphs (blank-line separated) of about
/// `words` words; whitespace is normalised.
fn split_passages(text: &str, words: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for paragraph in text.split("\n\n") {
        let para: Vec<&str> = paragraph.split_whitespace().collect();
        if para.is_empty() {
            continue;
        }
        if !current.is_empty() && current.len() + para.len() > words {
            out.push(current.join(" "));
            current.clear();
        }
        for chunk in para.chunks(words) {
            if current.len() + chunk.len() > words {
                out.push(current.join(" "));
                current.clear();
            }
            current.extend_from_slice(chunk);
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

/// Whether `c` must not reach a terminal raw: control characters (escape sequences
/// start with one) and the Unicode bidirectional controls (they reorder what follows).
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` safe to print on a terminal: control and bidirectional-control characters
/// written as `\u{…}` escapes, everything else as is.
///
/// ```
/// assert_eq!(dear_core::corpus::terminal_safe("a\u{1b}[2Jb\u{202e}c"), "a\\u{1b}[2Jb\\u{202e}c");
/// assert_eq!(dear_core::corpus::terminal_safe("plain"), "plain");
/// ```
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unsafe_on_terminal) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_on_terminal(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `text` on one line (whitespace runs collapsed to one space, none at either end), at
/// most `max` characters; an ellipsis (`…`, counted in `max`) marks a cut. Control and
/// bidirectional-control characters are escaped ([`terminal_safe`]): the result is for
/// display.
///
/// ```
/// assert_eq!(dear_core::corpus::one_line("a  b\n c", 10), "a b c");
/// assert_eq!(dear_core::corpus::one_line("abcdef", 4), "abc…");
/// ```
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = terminal_safe(&flat).into_owned();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_grouped_and_long_ones_split() {
        let long = ["w"; 25].join(" ");
        let text = format!("a b c\n\nd e\n\n\n{long}\n\nz");
        let out = split_passages(&text, 10);
        assert_eq!(out[0], "a b c d e");
        assert_eq!(out[1], ["w"; 10].join(" "));
        assert_eq!(out[2], ["w"; 10].join(" "));
        assert_eq!(out[3], ["w"; 5].join(" ") + " z");
        assert_eq!(out.len(), 4);
        assert!(split_passages(" \n\n ", 10).is_empty());
    }

    #[test]
    fn beir_lines_are_read_and_bad_lines_named() -> crate::Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = dir.path().join("corpus.jsonl");
        std::fs::write(
            &path,
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"x\"}\n\n{\"_id\": 7, \"text\": \"y\"}\n",
        )
        .map_err(|e| Error::io(&path, e))?;
        let mut got = Vec::new();
        read_beir_corpus(&path, |p| got.push(p))?;
        assert_eq!(got[0], Passage::new("x").with_id("d1").with_title("T"));
        assert_eq!(got[1], Passage::new("y").with_id("7"));

        std::fs::write(
            &path,
            "{\"_id\": \"d1\", \"text\": \"x\"}\n{\"_id\": \"d2\"}\n",
        )
        .map_err(|e| Error::io(&path, e))?;
        let err = read_beir_corpus(&path, |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("corpus.jsonl:2:") && err.contains("text"),
            "{err}"
        );

        std::fs::write(&path, b"{\"_id\": \"d1\", \"text\": \"\xff\"}\n")
            .map_err(|e| Error::io(&path, e))?;
        let err = read_beir_corpus(&path, |_| {}).unwrap_err().to_string();
        assert!(err.contains(":1:") && err.contains("UTF-8"), "{err}");
        Ok(())
    }

    #[test]
    fn folders_give_titled_passages_with_path_ids() -> crate::Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("guide")).map_err(|e| Error::io(root, e))?;
        std::fs::write(
            root.join("guide/intro.md"),
            "# Getting started\n\nInstall it.",
        )
        .map_err(|e| Error::io(root, e))?;
        std::fs::write(root.join("notes.txt"), "plain notes").map_err(|e| Error::io(root, e))?;
        std::fs::write(root.join("image.png"), "not text").map_err(|e| Error::io(root, e))?;
        let mut got = Vec::new();
        read_text_folder(root, |p| got.push(p))?;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id.as_deref(), Some("guide/intro.md#0"));
        assert_eq!(got[0].title.as_deref(), Some("Getting started"));
        assert_eq!(got[0].text, "# Getting started Install it.");
        assert_eq!(got[1].id.as_deref(), Some("notes.txt#0"));
        assert_eq!(got[1].title.as_deref(), Some("notes.txt"));
        Ok(())
    }
}
