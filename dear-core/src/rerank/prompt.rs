//! Listwise prompts: the chat conversations a listwise reranker reads, reproduced
//! character for character from the reference code.
//!
//! Two formats ([`ListwisePrompt`]):
//!
//! - **`rankllm`**, what DeAR's listwise models are trained and evaluated with
//!   (`DataScienceUIBK/DeAR-Reranking`, `listwise_rerank/prompts.py`, `build_messages`): a
//!   RankGPT-style multi-turn conversation. A system message, a user turn announcing `n`
//!   passages and the query, an assistant acknowledgement, then one user turn `[i] passage`
//!   and one assistant turn `Received passage [i].` per passage (ids from 1), and a final user
//!   turn with the query, three reasoning steps and the output format. Each passage is
//!   cleaned as the reference cleans it: every `"Title: Content: "` (what an empty title
//!   leaves) is deleted, and the text is cut to its first 300 whitespace-separated words,
//!   joined by single spaces. Nothing else is changed: unlike castorini/rank_llm, DeAR does
//!   not rewrite `[N]` inside passages to `(N)` and does not run `ftfy`.
//! - **`plain`**, the single prompt of DeAR's README (`create_listwise_prompt`): one user
//!   message, passages numbered from 0, each cut to its first 300 characters (Unicode scalar
//!   values, as Python slices strings).
//!
//! The query is used as given, in both formats (no trimming, no truncation).
//!
//! "Whitespace" follows Python's `str.split()`: Unicode `White_Space` plus the four ASCII
//! separators U+001C..U+001F.
//!
//! [`listwise_prompt_ids`] renders the messages with the model's chat template (generation
//! prompt added) and tokenizes the text without adding special tokens, as transformers'
//! `apply_chat_template(tokenize=True)` does. (DeAR's `HFClient.chat` renders the same text
//! but then calls `tokenizer(prompt)`, which for Llama-3 tokenizers adds a second
//! `<|begin_of_text|>`; that duplicate is not reproduced.)

use serde::{Deserialize, Serialize};

use crate::rerank::permutation::IdBase;
use crate::rerank::types::Passage;
use crate::{ChatMessage, Error, LanguageModel};

/// Words kept per passage in the `rankllm` format (`max_tokens_per_passage` in DeAR,
/// counted in whitespace-separated words).
pub(crate) const RANKLLM_MAX_WORDS: usize = 300;

/// Characters kept per passage in the `plain` format (`max_length` in DeAR's README).
pub(crate) const PLAIN_MAX_CHARS: usize = 300;

/// `listwise_rerank/prompts.py`, `SYSTEM_PROMPT`.
const RANKLLM_SYSTEM: &str =
    "You are RankLLM, an assistant that ranks passages by relevance to the query.";

/// `prefix_messages`: the assistant's acknowledgement of the announcement.
const RANKLLM_ACK: &str = "Okay, please provide the passages.";

/// What an empty title leaves in DeAR's passage content (`convert_trec_to_json.py` writes
/// `"Title: {title} Content: {text}"`, and `build_messages` deletes this string).
const EMPTY_TITLE_PREFIX: &str = "Title: Content: ";

/// The format of a listwise prompt.
///
/// Serialized (and parsed by [`FromStr`](std::str::FromStr)) as `"rankllm"` or `"plain"`.
///
/// # Example
/// ```
/// use dear_core::ListwisePrompt;
/// let messages = ListwisePrompt::RankLlm.messages("what causes rain", &["Rain falls.", "Sun shines."]);
/// assert_eq!(messages.len(), 3 + 2 * 2 + 1);
/// assert_eq!(messages[3].content, "[1] Rain falls.");
/// assert_eq!(messages[4].content, "Received passage [1].");
/// assert_eq!(ListwisePrompt::Plain.messages("what causes rain", &["Rain falls."]).len(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListwisePrompt {
    /// DeAR's RankLLM conversation (`listwise_rerank/prompts.py`); ids from 1.
    RankLlm,
    /// DeAR's README single prompt (`create_listwise_prompt`); ids from 0.
    Plain,
}

impl ListwisePrompt {
    /// The name used in JSON and on the command line: `"rankllm"` or `"plain"`.
    pub fn name(self) -> &'static str {
        match self {
            ListwisePrompt::RankLlm => "rankllm",
            ListwisePrompt::Plain => "plain",
        }
    }

    /// How the prompt numbers passages, which is what the ranking parser needs: from 1
    /// for `rankllm`, from 0 for `plain`.
    pub fn id_base(self) -> IdBase {
        match self {
            ListwisePrompt::RankLlm => IdBase::One,
            ListwisePrompt::Plain => IdBase::Zero,
        }
    }

    /// The chat messages for `query` and `passages`, each passage already as the text the
    /// prompt shows (see [`listwise_passage_text`] for how DeAR builds it from a title and a
    /// text). Passages are cleaned and cut here, as the reference does.
    pub fn messages(self, query: &str, passages: &[&str]) -> Vec<ChatMessage> {
        match self {
            ListwisePrompt::RankLlm => rankllm_messages(query, passages),
            ListwisePrompt::Plain => vec![ChatMessage::user(plain_prompt(query, passages))],
        }
    }
}

impl std::fmt::Display for ListwisePrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ListwisePrompt {
    type Err = Error;

    /// Parses `rankllm` or `plain`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "rankllm" => Ok(ListwisePrompt::RankLlm),
            "plain" => Ok(ListwisePrompt::Plain),
            other => Err(Error::InvalidArgument(format!(
                "unknown listwise prompt '{other}': expected 'rankllm' or 'plain'"
            ))),
        }
    }
}

/// A passage as DeAR's listwise prompts read it: `"Title: {title} Content: {text}"` when the
/// title has something other than whitespace, the text alone otherwise, with every run of
/// whitespace collapsed to one space and none at either end.
///
/// This is `convert_trec_to_json.py`'s `content` (`" ".join(content.split())`) with the
/// title test of castorini/rank_llm's `convert_doc_to_prompt_content` (`if doc["title"]`).
/// DeAR writes the prefix for empty titles too, but `build_messages` then deletes the
/// `"Title: Content: "` it leaves, so the `rankllm` messages are the same either way, and the
/// `plain` prompt does not show an empty prefix.
///
/// Title and text are each read up to their first 8,192 characters: both prompts keep
/// far less (300 words, or 300 characters), so real passages are unchanged, and a huge
/// passage (a 50 MB line without spaces) costs no more than a long one.
pub fn listwise_passage_text(passage: &Passage) -> String {
    let text = prefix_chars(&passage.text, MAX_PASSAGE_CHARS);
    match passage.title.as_deref() {
        Some(title)
            if py_words(prefix_chars(title, MAX_PASSAGE_CHARS))
                .next()
                .is_some() =>
        {
            collapse_whitespace(
                &format!(
                    "Title: {} Content: {text}",
                    prefix_chars(title, MAX_PASSAGE_CHARS)
                ),
                usize::MAX,
            )
        }
        _ => collapse_whitespace(text, usize::MAX),
    }
}

/// The most characters of a passage's title or text the listwise prompts read.
pub(crate) const MAX_PASSAGE_CHARS: usize = 1 << 13;

/// The first `max` characters of `text`.
fn prefix_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Token ids of the listwise prompt for `query` and `passages`: the messages of `prompt`
/// (each passage through [`listwise_passage_text`]) rendered with the model's chat template,
/// generation prompt added, and tokenized without adding special tokens, as transformers'
/// `apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` does.
///
/// # Errors
/// [`Error::ChatTemplate`] when the model has no chat template or rendering fails; tokenizer
/// errors.
pub fn listwise_prompt_ids(
    lm: &LanguageModel,
    prompt: ListwisePrompt,
    query: &str,
    passages: &[Passage],
) -> crate::Result<Vec<u32>> {
    let texts: Vec<String> = passages.iter().map(listwise_passage_text).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    lm.chat_ids(&prompt.messages(query, &refs), true)
}

/// `prompts.py`, `build_messages(query, hits, max_tokens_per_passage=300)`.
fn rankllm_messages(query: &str, passages: &[&str]) -> Vec<ChatMessage> {
    let n = passages.len();
    let mut messages = Vec::with_capacity(4 + 2 * n);
    // `prefix_messages(query, num)`.
    messages.push(ChatMessage::system(RANKLLM_SYSTEM));
    messages.push(ChatMessage::user(format!(
        "I will provide you with {n} passages, each indicated by number identifier [].\n\
         Rank the passages based on their relevance to query: {query}."
    )));
    messages.push(ChatMessage::assistant(RANKLLM_ACK));
    for (index, passage) in passages.iter().enumerate() {
        let id = index + 1;
        // `hit["content"].replace("Title: Content: ", "").strip()`, then
        // `" ".join(text.split()[:max_tokens_per_passage])` (the strip is subsumed by split).
        let text = passage.replace(EMPTY_TITLE_PREFIX, "");
        let snippet = collapse_whitespace(&text, RANKLLM_MAX_WORDS);
        messages.push(ChatMessage::user(format!("[{id}] {snippet}")));
        messages.push(ChatMessage::assistant(format!("Received passage [{id}].")));
    }
    messages.push(ChatMessage::user(rankllm_post_prompt(query, n)));
    messages
}

/// `prompts.py`, `post_prompt(query, num)`.
fn rankllm_post_prompt(query: &str, n: usize) -> String {
    format!(
        "Search Query: {query}.\n\
         Rank the {n} passages above based on their relevance to the search query. \
         The passages should be listed in descending order using identifiers.\n\
         Please follow the steps below:\n\
         Step 1. List the information requirements to answer the query.\n\
         Step 2. For each requirement, find the passages containing that information.\n\
         Step 3. Rank passages that best cover clear and diverse information. Include all passages.\n\
         Output format strictly: [2] > [1] > [3] ... Only output the ranking using identifiers; no explanations."
    )
}

/// DeAR's README, `create_listwise_prompt(query, documents, max_length=300)`.
fn plain_prompt(query: &str, passages: &[&str]) -> String {
    let n = passages.len();
    let doc_list = passages
        .iter()
        .enumerate()
        .map(|(index, doc)| {
            // `doc[:max_length]`: code points, not bytes.
            let cut: String = doc.chars().take(PLAIN_MAX_CHARS).collect();
            format!("[{index}] {cut}")
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "I will provide you with {n} passages, each indicated by a number identifier [].\n\
         Rank the passages based on their relevance to the search query: {query}.\n\
         \n\
         {doc_list}\n\
         \n\
         Search Query: {query}.\n\
         Rank the passages above based on their relevance to the search query. \
         Output the ranking as a list of numbers."
    )
}

/// Python's `str.isspace()`: Unicode `White_Space` plus U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `text.split()`: the words between runs of whitespace.
fn py_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_py_space).filter(|word| !word.is_empty())
}

/// `" ".join(text.split()[:max_words])`.
fn collapse_whitespace(text: &str, max_words: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for (index, word) in py_words(text).take(max_words).enumerate() {
        if index > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(messages: &[ChatMessage]) -> Vec<(&str, &str)> {
        messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn rankllm_conversation_is_exact() {
        let messages = ListwisePrompt::RankLlm.messages("q?", &["alpha", "beta"]);
        assert_eq!(
            contents(&messages),
            vec![
                (
                    "system",
                    "You are RankLLM, an assistant that ranks passages by relevance to the query."
                ),
                (
                    "user",
                    "I will provide you with 2 passages, each indicated by number identifier [].\n\
                     Rank the passages based on their relevance to query: q?."
                ),
                ("assistant", "Okay, please provide the passages."),
                ("user", "[1] alpha"),
                ("assistant", "Received passage [1]."),
                ("user", "[2] beta"),
                ("assistant", "Received passage [2]."),
                (
                    "user",
                    "Search Query: q?.\nRank the 2 passages above based on their relevance to the \
                     search query. The passages should be listed in descending order using \
                     identifiers.\nPlease follow the steps below:\nStep 1. List the information \
                     requirements to answer the query.\nStep 2. For each requirement, find the \
                     passages containing that information.\nStep 3. Rank passages that best cover \
                     clear and diverse information. Include all passages.\nOutput format \
                     strictly: [2] > [1] > [3] ... Only output the ranking using identifiers; no \
                     explanations."
                ),
            ]
        );
    }

    #[test]
    fn plain_prompt_is_exact() {
        let messages = ListwisePrompt::Plain.messages("q?", &["alpha", "beta"]);
        assert_eq!(
            contents(&messages),
            vec![(
                "user",
                "I will provide you with 2 passages, each indicated by a number identifier [].\n\
                 Rank the passages based on their relevance to the search query: q?.\n\n\
                 [0] alpha\n[1] beta\n\n\
                 Search Query: q?.\nRank the passages above based on their relevance to the \
                 search query. Output the ranking as a list of numbers."
            )]
        );
    }

    #[test]
    fn rankllm_cuts_to_300_words_and_keeps_brackets() {
        let long: String = (0..310).map(|i| format!("w{i}\n\t ")).collect();
        let text = format!("  see [3]{long}");
        let messages = ListwisePrompt::RankLlm.messages("q", &[&text]);
        let shown = &messages[3].content;
        let words: Vec<&str> = shown.split(' ').collect();
        assert_eq!(words.len(), 1 + 300, "[1] + 300 words");
        assert_eq!(&words[..4], &["[1]", "see", "[3]w0", "w1"]);
        assert_eq!(words[300], "w298");
    }

    #[test]
    fn rankllm_deletes_every_empty_title_prefix() {
        let messages = ListwisePrompt::RankLlm.messages(
            "q",
            &[
                "Title: Content: body Title: Content: more",
                "Title:  Content: two spaces",
            ],
        );
        assert_eq!(messages[3].content, "[1] body more");
        // Only the exact single-spaced string is deleted (DeAR's content is normalized first).
        assert_eq!(messages[5].content, "[2] Title: Content: two spaces");
    }

    #[test]
    fn plain_cuts_characters_not_bytes() {
        let text = "é".repeat(301);
        let messages = ListwisePrompt::Plain.messages("q", &[&text, "x"]);
        let expected = format!("[0] {}\n[1] x\n", "é".repeat(300));
        assert!(messages[0].content.contains(&expected));
    }

    #[test]
    fn passage_text_follows_the_reference() {
        let p = Passage::new("  body\n text ").with_title(" A  title ");
        assert_eq!(
            listwise_passage_text(&p),
            "Title: A title Content: body text"
        );
        assert_eq!(
            listwise_passage_text(&Passage::new(" a\u{1c}b\u{a0}c ")),
            "a b c"
        );
        for title in ["", " \t\u{1f}"] {
            let p = Passage::new("body").with_title(title);
            assert_eq!(listwise_passage_text(&p), "body");
            // DeAR's own route (prefix always written, then deleted) gives the same message.
            let dear = collapse_whitespace(&format!("Title: {title} Content: body"), usize::MAX);
            assert_eq!(
                ListwisePrompt::RankLlm.messages("q", &[&dear]),
                ListwisePrompt::RankLlm.messages("q", &[&listwise_passage_text(&p)])
            );
        }
    }

    #[test]
    fn query_is_used_as_given() {
        let messages = ListwisePrompt::RankLlm.messages("  a  b ", &[]);
        assert!(messages[1].content.ends_with("query:   a  b ."));
        assert!(messages[3]
            .content
            .starts_with("Search Query:   a  b .\nRank the 0 passages"));
    }

    #[test]
    fn names_and_id_bases() -> crate::Result<()> {
        for prompt in [ListwisePrompt::RankLlm, ListwisePrompt::Plain] {
            assert_eq!(prompt.name().parse::<ListwisePrompt>()?, prompt);
            let json = serde_json::to_string(&prompt)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            assert_eq!(json, format!("\"{prompt}\""));
        }
        assert_eq!(ListwisePrompt::RankLlm.id_base(), IdBase::One);
        assert_eq!(ListwisePrompt::Plain.id_base(), IdBase::Zero);
        assert!("RankLLM".parse::<ListwisePrompt>().is_err());
        Ok(())
    }

    #[test]
    fn python_whitespace_matches_str_isspace() {
        // The code points for which CPython's str.isspace() is true.
        let python: Vec<u32> = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ]
        .to_vec();
        let ours: Vec<u32> = (0..=0x10ffffu32)
            .filter_map(char::from_u32)
            .filter(|&c| is_py_space(c))
            .map(u32::from)
            .collect();
        assert_eq!(ours, python);
    }
}
