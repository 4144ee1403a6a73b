//! Reading a listwise model's answer for one window (`[4] > [1] > [2] …`, possibly
//! after reasoning inside `<think>…</think>`) into a full permutation of the window.
//!
//! The rules follow RankLLM (castorini/rank_llm), which DeAR's listwise stage copies:
//! - `clean_ranking_response` in `src/rank_llm/rerank/listwise/response_utils.py`
//!   (formerly `ListwiseRankLLM._clean_response`): keep the text after the last
//!   `</think>`, map look-alike digits (superscripts, subscripts, circled, full-width)
//!   to ASCII digits, keep digits and turn everything else into spaces;
//! - `ListwiseRankLLM.receive_permutation` and `_remove_duplicate` in
//!   `src/rank_llm/rerank/listwise/listwise_rankllm.py`: convert 1-based ids to
//!   0-based positions, keep the first occurrence of each id, drop ids outside the
//!   window, append the ids the model left out in their incoming order.
//!
//! DeAR's own copy (DataScienceUIBK/DeAR-Reranking, `listwise_rerank/prompts.py`,
//! `extract_after_think` and `parse_ranking_to_indices`) is the same except that it
//! cuts after the *first* `</think>` (case-insensitively) and has no look-alike digit
//! map. Here, as in RankLLM, the cut is after the last `</think>`.
//!
//! Two deliberate differences from both references, neither of which changes a
//! well-formed answer:
//! - an unterminated `<think>` (no `</think>` anywhere) is reasoning cut off by the
//!   token limit: everything after it is reasoning, and no id is read from it (the
//!   references would read the numbers inside the reasoning as a ranking);
//! - digit runs too long for `usize` are out of range (Python's `int` has no limit), and
//!   digits other than ASCII and RankLLM's look-alikes separate ids (Python's
//!   `isdigit` accepts every Unicode digit).

/// The ranking a listwise model produced for one window, plus what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRanking {
    /// 0-based positions within the window, best first; always a full permutation of 0..n.
    pub order: Vec<usize>,
    /// The reasoning inside `<think>…</think>` (or before `</think>`), trimmed, if any
    /// and not empty.
    pub reasoning: Option<String>,
    /// How many ids came from the model (the rest were appended in incoming order).
    pub parsed: usize,
}

impl ParsedRanking {
    /// Whether the model gave at least one usable id.
    pub fn has_ranking(&self) -> bool {
        self.parsed > 0
    }

    /// Whether the model ranked every position of the window itself.
    pub fn is_complete(&self) -> bool {
        self.parsed == self.order.len()
    }
}

/// Whether `p` holds at least one id that came from the model.
pub fn has_ranking(p: &ParsedRanking) -> bool {
    p.has_ranking()
}

/// How the prompt numbered the passages of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdBase {
    /// `[0]`, `[1]`, …
    Zero,
    /// `[1]`, `[2]`, … (RankGPT, RankLLM and DeAR).
    One,
}

impl IdBase {
    /// The identifier of the first passage: 0 or 1.
    pub fn first_id(self) -> usize {
        match self {
            IdBase::Zero => 0,
            IdBase::One => 1,
        }
    }
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Parses a generated ranking for a window of `n` passages.
///
/// Never fails and never panics: whatever the text, `order` is a permutation of
/// `0..n`, with the ids the model gave first (in its order) and the others after them
/// in their incoming order. See the module documentation for the exact rules.
pub fn parse_ranking(text: &str, n: usize, base: IdBase) -> ParsedRanking {
    let (reasoning, answer) = split_reasoning(text);
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for id in digit_runs(answer) {
        if order.len() == n {
            break;
        }
        // `None`: a number too large for usize, out of range like any other.
        let Some(id) = id else { continue };
        let Some(pos) = id.checked_sub(base.first_id()) else {
            continue; // `[0]` with 1-based ids.
        };
        if pos < n && !seen[pos] {
            seen[pos] = true;
            order.push(pos);
        }
    }
    let parsed = order.len();
    order.extend((0..n).filter(|&i| !seen[i]));
    ParsedRanking {
        order,
        reasoning,
        parsed,
    }
}

/// Splits a generation into (reasoning, the text the ranking is read from).
fn split_reasoning(text: &str) -> (Option<String>, &str) {
    let non_empty = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    };
    if let Some(close) = text.rfind(THINK_CLOSE) {
        let head = &text[..close];
        let reasoning = match head.find(THINK_OPEN) {
            Some(open) => &head[open + THINK_OPEN.len()..],
            // Chat templates that put `<think>` in the prompt: the output starts inside it.
            None => head,
        };
        (non_empty(reasoning), &text[close + THINK_CLOSE.len()..])
    } else if let Some(open) = text.find(THINK_OPEN) {
        // Cut off while thinking: no ranking was written.
        (non_empty(&text[open + THINK_OPEN.len()..]), "")
    } else {
        (None, text)
    }
}

/// The value of a character as a decimal digit: ASCII digits and the look-alikes that
/// RankLLM's `clean_ranking_response` translates (its table maps U+1F100..U+1F109 to
/// 0..9 in order, although those are "digit zero full stop", "digit zero comma",
/// "digit one comma", …; that mapping is kept as is).
fn digit_value(c: char) -> Option<usize> {
    let d = match c {
        '0'..='9' => c as u32 - '0' as u32,
        '\u{2070}' => 0,                                  // ⁰
        '\u{00B9}' => 1,                                  // ¹
        '\u{00B2}' => 2,                                  // ²
        '\u{00B3}' => 3,                                  // ³
        '\u{2074}'..='\u{2079}' => c as u32 - 0x2070,     // ⁴…⁹
        '\u{2080}'..='\u{2089}' => c as u32 - 0x2080,     // ₀…₉
        '\u{2460}'..='\u{2468}' => c as u32 - 0x2460 + 1, // ①…⑨
        '\u{2776}'..='\u{277E}' => c as u32 - 0x2776 + 1, // ❶…❾
        '\u{FF10}'..='\u{FF19}' => c as u32 - 0xFF10,     // ０…９
        '\u{1F100}'..='\u{1F109}' => c as u32 - 0x1F100,  // 🄀…🄉
        _ => return None,
    };
    Some(d as usize)
}

/// The numbers written in `text`, in order: maximal runs of digits, every other
/// character a separator. A run too large for `usize` yields `None`.
fn digit_runs(text: &str) -> impl Iterator<Item = Option<usize>> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        // Skip separators up to the next digit.
        let first = loop {
            let c = chars.next()?;
            if let Some(d) = digit_value(c) {
                break d;
            }
        };
        let mut value = Some(first);
        while let Some(d) = chars.peek().copied().and_then(digit_value) {
            chars.next();
            value = value
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(d));
        }
        Some(value)
    })
}

/// Whether `order` is a permutation of `0..n`: it has length `n` and holds each of
/// `0..n` exactly once.
pub(crate) fn is_permutation(order: &[usize], n: usize) -> bool {
    if order.len() != n {
        return false;
    }
    let mut seen = vec![false; n];
    order
        .iter()
        .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_of_0_to_n() {
        assert!(is_permutation(&[], 0));
        assert!(is_permutation(&[2, 0, 1], 3));
        assert!(!is_permutation(&[0, 1], 3));
        assert!(!is_permutation(&[0, 1, 1], 3));
        assert!(!is_permutation(&[0, 1, 3], 3));
        assert!(!is_permutation(&[0, 1, 2, 0], 3));
    }

    fn order(text: &str, n: usize) -> Vec<usize> {
        parse_ranking(text, n, IdBase::One).order
    }

    #[test]
    fn well_formed_answer() {
        let p = parse_ranking("[2] > [3] > [1]", 3, IdBase::One);
        assert_eq!(p.order, vec![1, 2, 0]);
        assert_eq!(p.parsed, 3);
        assert_eq!(p.reasoning, None);
        assert!(p.has_ranking() && has_ranking(&p) && p.is_complete());
    }

    #[test]
    fn zero_based_ids() {
        let p = parse_ranking("[2] > [0] > [1]", 3, IdBase::Zero);
        assert_eq!(p.order, vec![2, 0, 1]);
        assert_eq!(p.parsed, 3);
        // 3 is out of range for a 0-based window of 3.
        let p = parse_ranking("[3] > [1]", 3, IdBase::Zero);
        assert_eq!(p.order, vec![1, 0, 2]);
        assert_eq!(p.parsed, 1);
    }

    #[test]
    fn empty_and_words_only() {
        for text in [
            "",
            "   \n",
            "I cannot rank these passages.",
            "[] > [ ] > []",
        ] {
            let p = parse_ranking(text, 4, IdBase::One);
            assert_eq!(p.order, vec![0, 1, 2, 3], "{text:?}");
            assert_eq!(p.parsed, 0);
            assert!(!p.has_ranking());
        }
    }

    #[test]
    fn repeated_ids_keep_the_first_occurrence() {
        let p = parse_ranking("[3] > [1] > [3] > [1] > [2]", 4, IdBase::One);
        assert_eq!(p.order, vec![2, 0, 1, 3]);
        assert_eq!(p.parsed, 3);
        assert!(!p.is_complete());
    }

    #[test]
    fn out_of_range_ids_are_dropped() {
        let p = parse_ranking("[5] > [2] > [4] > [40] > [1]", 3, IdBase::One);
        assert_eq!(p.order, vec![1, 0, 2]);
        assert_eq!(p.parsed, 2);
    }

    #[test]
    fn zero_with_one_based_ids_is_dropped() {
        let p = parse_ranking("[0] > [2] > [00]", 3, IdBase::One);
        assert_eq!(p.order, vec![1, 0, 2]);
        assert_eq!(p.parsed, 1);
    }

    #[test]
    fn huge_numbers_are_out_of_range_without_overflow() {
        let text = "[99999999999999999999] > [2] > [18446744073709551617] > [1] > [000000000000000000000000003]";
        let p = parse_ranking(text, 3, IdBase::One);
        assert_eq!(p.order, vec![1, 0, 2]);
        assert_eq!(p.parsed, 3);
        let p = parse_ranking(
            "18446744073709551615 > 18446744073709551616",
            2,
            IdBase::Zero,
        );
        assert_eq!(p.order, vec![0, 1]);
        assert_eq!(p.parsed, 0);
        let long = "9".repeat(10_000);
        assert_eq!(parse_ranking(&long, 5, IdBase::One).parsed, 0);
    }

    #[test]
    fn ids_glued_without_separators() {
        assert_eq!(order("[2][1][3]", 3), vec![1, 0, 2]);
        assert_eq!(order("2>1>3", 3), vec![1, 0, 2]);
        assert_eq!(order("[2]>[1]>[3]", 3), vec![1, 0, 2]);
        assert_eq!(order("2, 3, 1", 3), vec![1, 2, 0]);
        assert_eq!(order("2 > 1 > 3", 3), vec![1, 0, 2]);
        // Digits written together are one number, as in RankLLM: "213" is out of range.
        let p = parse_ranking("213", 3, IdBase::One);
        assert_eq!((p.order, p.parsed), (vec![0, 1, 2], 0));
    }

    #[test]
    fn extra_text_around_the_ranking() {
        let text = "Sure! Here is the ranking:\n\n[3] > [1] > [2]\n\nHope this helps.";
        assert_eq!(order(text, 3), vec![2, 0, 1]);
        // Numbers in the prose count too (as in RankLLM): "Passage 2" adds 2 first.
        let text = "Passage 2 is best. Ranking: [2] > [3] > [1]";
        assert_eq!(order(text, 3), vec![1, 2, 0]);
    }

    #[test]
    fn reasoning_is_kept_and_not_parsed() {
        let text = "<think>\nPassage [3] mentions the answer; [1] is off topic.\n</think>\n\n[3] > [2] > [1]";
        let p = parse_ranking(text, 3, IdBase::One);
        assert_eq!(p.order, vec![2, 1, 0]);
        assert_eq!(p.parsed, 3);
        assert_eq!(
            p.reasoning.as_deref(),
            Some("Passage [3] mentions the answer; [1] is off topic.")
        );
    }

    #[test]
    fn reasoning_without_an_opening_tag() {
        // Templates that put `<think>` in the prompt: the output starts inside it.
        let p = parse_ranking("[1] seems weak.\n</think>\n[2] > [1]", 2, IdBase::One);
        assert_eq!(p.order, vec![1, 0]);
        assert_eq!(p.reasoning.as_deref(), Some("[1] seems weak."));
    }

    #[test]
    fn empty_reasoning_is_none() {
        let p = parse_ranking("<think>\n\n</think>\n\n[2] > [1]", 2, IdBase::One);
        assert_eq!(p.order, vec![1, 0]);
        assert_eq!(p.reasoning, None);
    }

    #[test]
    fn the_last_closing_tag_wins() {
        let text = "<think>first [2]</think> more [2] thoughts </think> [3] > [1]";
        let p = parse_ranking(text, 3, IdBase::One);
        assert_eq!(p.order, vec![2, 0, 1]);
        assert_eq!(p.parsed, 2);
        assert_eq!(
            p.reasoning.as_deref(),
            Some("first [2]</think> more [2] thoughts")
        );
    }

    #[test]
    fn unterminated_think_has_no_ranking() {
        let text = "<think>\nLet me compare [2] and [1]. Passage [3] is";
        let p = parse_ranking(text, 3, IdBase::One);
        assert_eq!(p.order, vec![0, 1, 2]);
        assert_eq!(p.parsed, 0);
        assert!(!p.has_ranking());
        assert_eq!(
            p.reasoning.as_deref(),
            Some("Let me compare [2] and [1]. Passage [3] is")
        );
    }

    #[test]
    fn look_alike_digits_as_in_rankllm() {
        assert_eq!(order("[３] > [１] > [２]", 3), vec![2, 0, 1]);
        assert_eq!(order("② > ③ > ①", 3), vec![1, 2, 0]);
        assert_eq!(order("²>¹>³", 3), vec![1, 0, 2]);
        assert_eq!(order("[₁₂] > [1]", 12), {
            let mut v = vec![11];
            v.extend(0..11);
            v
        });
    }

    #[test]
    fn multibyte_text_does_not_break_slicing() {
        let text = "<think>日本語の説明 [1]</think>順位：[2] > [1] — fin ✓";
        let p = parse_ranking(text, 2, IdBase::One);
        assert_eq!(p.order, vec![1, 0]);
        assert_eq!(p.reasoning.as_deref(), Some("日本語の説明 [1]"));
    }

    #[test]
    fn tiny_windows() {
        let p = parse_ranking("[1] > [2]", 0, IdBase::One);
        assert_eq!((p.order, p.parsed), (vec![], 0));
        let p = parse_ranking("", 0, IdBase::Zero);
        assert_eq!((p.order, p.parsed), (vec![], 0));
        let p = parse_ranking("[1]", 1, IdBase::One);
        assert_eq!((p.order, p.parsed), (vec![0], 1));
        let p = parse_ranking("[2] > [1]", 1, IdBase::One);
        assert_eq!((p.order, p.parsed), (vec![0], 1));
        let p = parse_ranking("nothing", 1, IdBase::One);
        assert_eq!((p.order, p.parsed), (vec![0], 0));
    }

    #[test]
    fn always_a_permutation() {
        let texts = [
            "",
            "[1]",
            "[20] > [19] > [20] > [0] > [21] > [5]",
            "<think>x",
            "</think>",
            "<think></think>",
            "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21",
            "[12][3][7][3][99999999999999999999999]",
        ];
        for text in texts {
            for n in 0..=21 {
                for base in [IdBase::Zero, IdBase::One] {
                    let p = parse_ranking(text, n, base);
                    let mut sorted = p.order.clone();
                    sorted.sort_unstable();
                    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{text:?} n={n}");
                    assert!(p.parsed <= n);
                }
            }
        }
    }
}
