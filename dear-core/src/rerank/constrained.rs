//! The grammar of a well-formed listwise answer, `[a] > [b] > … > [z]`, over the ids
//! of one window, used to constrain decoding: at every step only tokens whose text
//! keeps the output a prefix of a full permutation of not-yet-used ids are allowed, so
//! the answer is always complete and valid and no token is wasted.

/// Checks prefixes of `[id] > [id] > …` for a window of `n` ids starting at `first`.
#[derive(Clone, Debug)]
pub(crate) struct RankingGrammar {
    n: usize,
    first: usize,
}

/// Where a prefix stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Not a prefix of any valid answer.
    Invalid,
    /// A proper prefix: more must follow.
    Partial,
    /// A complete answer: every id once, the last bracket closed.
    Complete,
}

impl RankingGrammar {
    pub(crate) fn new(n: usize, first: usize) -> Self {
        Self { n, first }
    }

    fn id_ok(&self, id: usize) -> bool {
        id >= self.first && id < self.first + self.n
    }

    /// Whether some unused id starts with the digits `digits`.
    fn digits_can_grow(&self, digits: &str, used: &[bool]) -> bool {
        (self.first..self.first + self.n)
            .filter(|id| !used[id - self.first])
            .any(|id| id.to_string().starts_with(digits))
    }

    /// Classifies `text` as a prefix of `[a] > [b] > …`.
    pub(crate) fn check(&self, text: &str) -> Progress {
        if self.n == 0 {
            return if text.is_empty() {
                Progress::Complete
            } else {
                Progress::Invalid
            };
        }
        let mut used = vec![false; self.n];
        let mut count = 0;
        let mut rest = text;
        loop {
            // Expect "[" (after a separator when not first).
            if count > 0 {
                let sep = " > ";
                if rest.len() < sep.len() {
                    return if sep.starts_with(rest) && count < self.n {
                        Progress::Partial
                    } else if rest.is_empty() && count == self.n {
                        Progress::Complete
                    } else {
                        Progress::Invalid
                    };
                }
                match rest.strip_prefix(sep) {
                    Some(r) if count < self.n => rest = r,
                    _ => return Progress::Invalid,
                }
            }
            let Some(r) = rest.strip_prefix('[') else {
                return if rest.is_empty() {
                    Progress::Partial
                } else {
                    Progress::Invalid
                };
            };
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            let after = &r[digits.len()..];
            if digits.is_empty() {
                return if after.is_empty() {
                    Progress::Partial
                } else {
                    Progress::Invalid
                };
            }
            if digits.len() > 1 && digits.starts_with('0') {
                return Progress::Invalid;
            }
            if after.is_empty() {
                return if self.digits_can_grow(&digits, &used) {
                    Progress::Partial
                } else {
                    Progress::Invalid
                };
            }
            let Some(after) = after.strip_prefix(']') else {
                return Progress::Invalid;
            };
            let Ok(id) = digits.parse::<usize>() else {
                return Progress::Invalid;
            };
            if !self.id_ok(id) || used[id - self.first] {
                return Progress::Invalid;
            }
            used[id - self.first] = true;
            count += 1;
            rest = after;
            if rest.is_empty() {
                return if count == self.n {
                    Progress::Complete
                } else {
                    Progress::Partial
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_prefixes_of_permutations() {
        let g = RankingGrammar::new(3, 1);
        assert_eq!(g.check(""), Progress::Partial);
        assert_eq!(g.check("["), Progress::Partial);
        assert_eq!(g.check("[2"), Progress::Partial);
        assert_eq!(g.check("[2]"), Progress::Partial);
        assert_eq!(g.check("[2] "), Progress::Partial);
        assert_eq!(g.check("[2] >"), Progress::Partial);
        assert_eq!(g.check("[2] > [3] > [1]"), Progress::Complete);
        assert_eq!(g.check("[2] > [3] > [1] "), Progress::Invalid);
        assert_eq!(g.check("[2] > [2]"), Progress::Invalid);
        assert_eq!(g.check("[0]"), Progress::Invalid);
        assert_eq!(g.check("[4]"), Progress::Invalid);
        assert_eq!(g.check("2"), Progress::Invalid);
        assert_eq!(g.check("[2]>"), Progress::Invalid);
    }

    #[test]
    fn multi_digit_ids() {
        let g = RankingGrammar::new(20, 1);
        assert_eq!(g.check("[1"), Progress::Partial); // 1 or 10..19
        assert_eq!(g.check("[2"), Progress::Partial); // 2 or 20
        assert_eq!(g.check("[21"), Progress::Invalid);
        assert_eq!(g.check("[05]"), Progress::Invalid);
        let zero = RankingGrammar::new(12, 0);
        assert_eq!(zero.check("[0] > [11"), Progress::Partial);
        assert_eq!(zero.check("[12]"), Progress::Invalid);
        // Once 1 and 10..19 are used, "[1" can no longer grow.
        let all: Vec<String> = (10..20).map(|i| format!("[{i}]")).collect();
        let text = format!("[1] > {}", all.join(" > "));
        assert_eq!(g.check(&text), Progress::Partial);
        assert_eq!(g.check(&format!("{text} > [1")), Progress::Invalid);
    }
}
