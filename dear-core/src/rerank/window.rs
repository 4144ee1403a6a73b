//! The sliding-window driver of listwise reranking (RankGPT's `sliding_windows`, as
//! used by DeAR and RankLLM): windows of `window` candidates move from the bottom of
//! the ranked range to the top by `step`, each one reordering its slice of the current
//! ranking, so strong candidates bubble up across windows.
//!
//! What [`slide`] does mirrors:
//! - DeAR (DataScienceUIBK/DeAR-Reranking, `listwise_rerank/pipeline.py`):
//!   `sliding_windows` (the loop), `permutation_once` and `apply_permutation` (one window);
//! - RankLLM (castorini/rank_llm, `src/rank_llm/rerank/listwise/listwise_rankllm.py`):
//!   `ListwiseRankLLM.sliding_windows` / `_sliding_windows_batched_async` (the loop) and
//!   `receive_permutation` (one window).
//!
//! See [`WindowConfig::windows`] for the exact window sequence and how it relates to
//! each reference.

use serde::{Deserialize, Serialize};

use crate::rerank::permutation::is_permutation;
use crate::Error;

/// Sliding-window settings (RankGPT/RankLLM `sliding_windows`).
///
/// Positions are 0-based ranks in the list being reranked; the range reranked is
/// `rank_start..rank_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// First rank reranked.
    pub rank_start: usize,
    /// One past the last rank reranked (clamped to the number of candidates).
    pub rank_end: usize,
    /// Candidates per window.
    pub window: usize,
    /// How far each window moves up from the previous one.
    pub step: usize,
}

impl Default for WindowConfig {
    /// [`WindowConfig::top`]`(20)`.
    fn default() -> Self {
        Self::top(20)
    }
}

impl WindowConfig {
    /// DeAR's evaluation: 0, 30, 20, 10 (the defaults of DeAR's
    /// `listwise_rerank/main.py`): windows 10..30 then 0..20.
    pub fn dear_eval() -> Self {
        Self {
            rank_start: 0,
            rank_end: 30,
            window: 20,
            step: 10,
        }
    }

    /// The product default: one window over the top `n` (`top(20)` is 0, 20, 20, 10).
    /// `step` is half the window (at least 1), which matters only if `rank_end` is
    /// later raised. `top(0)` has no window (and fails [`validate`](Self::validate)).
    pub fn top(n: usize) -> Self {
        Self {
            rank_start: 0,
            rank_end: n,
            window: n,
            step: (n / 2).max(1),
        }
    }

    /// Checks that the settings make sense: `window` and `step` above 0, `step` at most
    /// `window` (RankLLM's rule; a larger step leaves candidates between windows that
    /// no window sees) and `rank_start < rank_end`. [`windows`](Self::windows) and
    /// [`slide`] never loop forever or panic on settings that fail this check.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field at fault.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(format!("listwise window: {msg}")));
        if self.window == 0 {
            return bad("`window` must be at least 1".into());
        }
        if self.step == 0 {
            return bad("`step` must be at least 1".into());
        }
        if self.step > self.window {
            return bad(format!(
                "`step` ({}) must not exceed `window` ({})",
                self.step, self.window
            ));
        }
        if self.rank_start >= self.rank_end {
            return bad(format!(
                "`rank_start` ({}) must be below `rank_end` ({})",
                self.rank_start, self.rank_end
            ));
        }
        Ok(())
    }

    /// The windows, in the order they run, as `(start, end)` ranges over the current
    /// ranking, for `len` candidates.
    ///
    /// The sequence is DeAR's loop (`sliding_windows` in `listwise_rerank/pipeline.py`,
    /// RankGPT's original): `end = rank_end`, `start = rank_end - window`, and while
    /// `start >= rank_start`: run `(start, end)`, then move both up by `step`. Each window
    /// is then cut to the candidates there are (`min(·, len)`, as Python's slicing
    /// does: DeAR does not clamp `rank_end` itself), and windows left with fewer than two
    /// candidates are skipped (they cannot reorder anything; DeAR would still call the
    /// model on them, with an identity result).
    ///
    /// DeAR's loop never reaches the top of the range in two cases; there this follows
    /// RankLLM's `sliding_windows` (`while end_pos > rank_start and start_pos + stride !=
    /// rank_start`, with `start_pos` clamped to `rank_start`):
    /// - a window larger than the range (`window > rank_end - rank_start`) is one window
    ///   over the range (DeAR runs none);
    /// - when `rank_end - rank_start - window` is not a multiple of `step`, DeAR stops
    ///   with ranks `rank_start..start` unseen; a last window `(rank_start, end - step)`
    ///   is added (0/25/20/10: 5..25 then 0..15; DeAR runs 5..25 only).
    ///
    /// RankLLM's loop itself differs in one corner, not followed: when
    /// `window == rank_end - rank_start + step` it runs no window at all. Its batched
    /// variant (`_sliding_windows_batched_async`) also cuts `rank_end` to `len` *before*
    /// placing the windows (25 candidates under 0/30/20/10: 5..25, 0..15), where DeAR and
    /// this function keep them anchored at `rank_end` (10..25, 0..20).
    ///
    /// Whenever `rank_end - rank_start - window` is a multiple of `step` (DeAR's and
    /// RankLLM's settings: 0/30/20/10, 0/100/20/10, 0/20/20/10) DeAR, RankLLM's
    /// `sliding_windows` and this function give the same windows.
    ///
    /// Degenerate settings: `window == 0`, `step == 0` or `rank_end <= rank_start` give no
    /// window; so do `len < 2` and `rank_start >= len - 1`. Windows that lie wholly
    /// beyond `len` are skipped without being enumerated, so a huge `rank_end` costs
    /// nothing.
    pub fn windows(&self, len: usize) -> Vec<(usize, usize)> {
        let (lo, hi, step) = (self.rank_start, self.rank_end, self.step);
        let mut out = Vec::new();
        if self.window == 0 || step == 0 || hi <= lo {
            return out;
        }
        let width = self.window.min(hi - lo);
        let mut push = |start: usize, end: usize| {
            let (start, end) = (start.min(len), end.min(len));
            if end >= start + 2 {
                out.push((start, end));
            }
        };
        let mut end = hi;
        // Skip the windows that start at or beyond `len` (all empty after cutting),
        // without passing the last window of DeAR's loop.
        let start = end - width;
        if start >= len {
            let k_empty = (start - len) / step + 1;
            let k_loop = (start - lo) / step;
            end -= k_empty.min(k_loop) * step;
        }
        // Invariant: end - width >= lo.
        loop {
            let start = end - width;
            push(start, end);
            if start == lo {
                break;
            }
            if start - lo >= step {
                // DeAR's loop goes on.
                end -= step;
                continue;
            }
            // DeAR's loop would stop here with lo..start unseen: RankLLM's last window.
            if end - lo > step {
                push(lo, end - step);
            }
            break;
        }
        out
    }
}

/// What one window did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// First rank of the window in the list as it stood.
    pub start: usize,
    /// One past its last rank.
    pub end: usize,
    /// The window's contents before it ran (entries of the order, best first).
    pub before: Vec<usize>,
    /// The permutation applied: positions within the window, best first. The identity
    /// when the ranker's answer was not a permutation of `0..end - start`.
    pub permutation: Vec<usize>,
}

impl WindowRecord {
    /// The window's contents after it ran.
    pub fn after(&self) -> Vec<usize> {
        self.permutation.iter().map(|&p| self.before[p]).collect()
    }
}

/// A [`slide`] stopped by an error: the error, and the work done before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped<E> {
    /// What `rank_window` returned.
    pub error: E,
    /// The order after the windows that finished.
    pub order: Vec<usize>,
    /// Their records.
    pub records: Vec<WindowRecord>,
}

/// Runs the windows of `cfg` ([`WindowConfig::windows`]) bottom-up over `order`
/// (indices of incoming candidates, best first).
///
/// For each window `(start, end)`, `rank_window(&order[start..end])` returns the
/// window's ranking as positions within the window, best first (a permutation of
/// `0..end - start`), and the slice is rearranged so that its `j`-th entry becomes the
/// old entry at position `permutation[j]` (DeAR's `apply_permutation`, RankLLM's
/// `receive_permutation`).
///
/// `slide` repairs nothing: callers pass a full permutation, such as
/// [`parse_ranking`](crate::rerank::permutation::parse_ranking)`(…).order`, which
/// always is one. Anything else (wrong length, an index out of range, a repeated
/// index) leaves that window's slice unchanged and is recorded as the identity; it
/// never panics.
///
/// Returns the final order and one record per window, in the order they ran (one
/// record per call of `rank_window`).
///
/// # Errors
/// The first error `rank_window` returns, in a [`Stopped`] that keeps the order and
/// records of the windows finished before it; no later window runs.
pub fn slide<E>(
    mut order: Vec<usize>,
    cfg: &WindowConfig,
    mut rank_window: impl FnMut(&[usize]) -> Result<Vec<usize>, E>,
) -> Result<(Vec<usize>, Vec<WindowRecord>), Stopped<E>> {
    let windows = cfg.windows(order.len());
    let mut records = Vec::with_capacity(windows.len());
    for (start, end) in windows {
        let before = order[start..end].to_vec();
        let answer = match rank_window(&before) {
            Ok(answer) => answer,
            Err(error) => {
                return Err(Stopped {
                    error,
                    order,
                    records,
                })
            }
        };
        let permutation = if is_permutation(&answer, before.len()) {
            answer
        } else {
            (0..before.len()).collect()
        };
        for (slot, &p) in order[start..end].iter_mut().zip(&permutation) {
            *slot = before[p];
        }
        records.push(WindowRecord {
            start,
            end,
            before,
            permutation,
        });
    }
    Ok((order, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DeAR's `sliding_windows` loop transcribed as literally as possible, with
    /// Python's slice semantics (ends cut to `len`, empty slices skipped); used as the
    /// independent reference in the tests below.
    fn dear_windows(cfg: &WindowConfig, len: usize) -> Vec<(usize, usize)> {
        let (rank_start, rank_end) = (cfg.rank_start as i64, cfg.rank_end as i64);
        let (window, step) = (cfg.window as i64, cfg.step as i64);
        let mut out = Vec::new();
        let mut end_pos = rank_end;
        let mut start_pos = rank_end - window;
        while start_pos >= rank_start {
            start_pos = start_pos.max(rank_start);
            let (s, e) = ((start_pos as usize).min(len), (end_pos as usize).min(len));
            if e > s {
                out.push((s, e));
            }
            end_pos -= step;
            start_pos -= step;
        }
        out
    }

    /// RankLLM's synchronous `sliding_windows` loop, literally.
    fn rankllm_sync_windows(cfg: &WindowConfig) -> Vec<(usize, usize)> {
        let (rank_start, rank_end) = (cfg.rank_start as i64, cfg.rank_end as i64);
        let (window, stride) = (cfg.window as i64, cfg.step as i64);
        let mut out = Vec::new();
        let mut end_pos = rank_end;
        let mut start_pos = rank_end - window;
        while end_pos > rank_start && start_pos + stride != rank_start {
            start_pos = start_pos.max(rank_start);
            out.push((start_pos as usize, end_pos as usize));
            end_pos -= stride;
            start_pos -= stride;
        }
        out
    }

    /// The reference's permutation step applied to a plain list.
    fn apply(order: &mut [usize], start: usize, end: usize, perm: &[usize]) {
        let cut = order[start..end].to_vec();
        for (j, &x) in perm.iter().enumerate() {
            order[start + j] = cut[x];
        }
    }

    /// A ranker that sorts a window by a hidden relevance score, best first (ties by
    /// position, stable).
    fn by_score(score: &[f64], window: &[usize]) -> Vec<usize> {
        let mut pos: Vec<usize> = (0..window.len()).collect();
        pos.sort_by(|&a, &b| score[window[b]].total_cmp(&score[window[a]]));
        pos
    }

    fn cfg(rank_start: usize, rank_end: usize, window: usize, step: usize) -> WindowConfig {
        WindowConfig {
            rank_start,
            rank_end,
            window,
            step,
        }
    }

    fn no_error(
        f: impl Fn(&[usize]) -> Vec<usize>,
    ) -> impl FnMut(&[usize]) -> Result<Vec<usize>, ()> {
        move |w| Ok(f(w))
    }

    #[test]
    fn dear_eval_over_100_candidates() {
        let c = WindowConfig::dear_eval();
        assert_eq!(c, cfg(0, 30, 20, 10));
        assert_eq!(c.windows(100), vec![(10, 30), (0, 20)]);
        assert_eq!(c.windows(100), dear_windows(&c, 100));
        assert_eq!(c.windows(100), rankllm_sync_windows(&c));

        // A scripted ranker that reverses each window; check what each window sees
        // against the reference loop run by hand.
        let incoming: Vec<usize> = (0..100).collect();
        let mut seen = Vec::new();
        let (order, records) = slide(incoming.clone(), &c, |w: &[usize]| {
            seen.push(w.to_vec());
            Ok::<_, ()>((0..w.len()).rev().collect())
        })
        .unwrap();

        let mut expected = incoming;
        let mut expected_seen = Vec::new();
        for (s, e) in dear_windows(&c, 100) {
            expected_seen.push(expected[s..e].to_vec());
            let perm: Vec<usize> = (0..e - s).rev().collect();
            apply(&mut expected, s, e, &perm);
        }
        assert_eq!(seen, expected_seen);
        assert_eq!(seen[0], (10..30).collect::<Vec<_>>());
        // The second window sees 0..10 then the reversed 29..20 that moved up.
        let mut second: Vec<usize> = (0..10).collect();
        second.extend((20..30).rev());
        assert_eq!(seen[1], second);
        assert_eq!(order, expected);
        assert_eq!(&order[30..], &(30..100).collect::<Vec<_>>()[..]);

        assert_eq!(records.len(), 2);
        assert_eq!((records[0].start, records[0].end), (10, 30));
        assert_eq!((records[1].start, records[1].end), (0, 20));
        assert_eq!(records[0].before, seen[0]);
        assert_eq!(records[1].before, seen[1]);
        assert_eq!(records[1].after(), order[0..20].to_vec());
    }

    #[test]
    fn hidden_relevance_bubbles_up() {
        // Relevance hidden from the driver; the ranker sorts each window by it.
        let n = 100;
        let score: Vec<f64> = (0..n).map(|i| ((i * 37 + 11) % 101) as f64).collect();
        for c in [
            WindowConfig::dear_eval(),
            cfg(0, 100, 20, 10),
            WindowConfig::top(20),
            cfg(0, 100, 10, 5),
        ] {
            let incoming: Vec<usize> = (0..n).collect();
            let (order, records) =
                slide(incoming.clone(), &c, no_error(|w| by_score(&score, w))).unwrap();
            let mut expected = incoming;
            for (s, e) in dear_windows(&c, n) {
                let perm = by_score(&score, &expected[s..e]);
                apply(&mut expected, s, e, &perm);
            }
            assert_eq!(order, expected, "{c:?}");
            assert_eq!(records.len(), dear_windows(&c, n).len());
        }
        // Over the whole list with window 20 / step 10, the top 10 are the 10 best of all.
        let c = cfg(0, 100, 20, 10);
        let (order, _) = slide((0..n).collect(), &c, no_error(|w| by_score(&score, w))).unwrap();
        let mut best: Vec<usize> = (0..n).collect();
        best.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
        assert_eq!(&order[..10], &best[..10]);
    }

    #[test]
    fn a_hundred_candidates_window_20_step_10() {
        let c = cfg(0, 100, 20, 10);
        let expected: Vec<(usize, usize)> = (0..9).map(|k| (80 - 10 * k, 100 - 10 * k)).collect();
        assert_eq!(expected.first(), Some(&(80, 100)));
        assert_eq!(expected.last(), Some(&(0, 20)));
        assert_eq!(c.windows(100), expected);
        assert_eq!(c.windows(100), dear_windows(&c, 100));
        assert_eq!(c.windows(100), rankllm_sync_windows(&c));
        // rank_end beyond the candidates: windows are anchored at rank_end and cut, as
        // DeAR's slicing does.
        assert_eq!(c.windows(95), dear_windows(&c, 95));
        assert_eq!(c.windows(95)[0], (80, 95));
        assert_eq!(c.windows(25), vec![(20, 25), (10, 25), (0, 20)]);
        assert_eq!(c.windows(25), dear_windows(&c, 25));
        let c = WindowConfig::dear_eval();
        assert_eq!(c.windows(25), vec![(10, 25), (0, 20)]);
        assert_eq!(c.windows(25), dear_windows(&c, 25));
    }

    #[test]
    fn fewer_candidates_than_the_window() {
        for c in [
            WindowConfig::dear_eval(),
            WindowConfig::top(20),
            cfg(0, 100, 20, 10),
        ] {
            assert_eq!(c.windows(5), vec![(0, 5)], "{c:?}");
            assert_eq!(c.windows(5), dear_windows(&c, 5));
            let (order, records) = slide(
                vec![4, 3, 2, 1, 0],
                &c,
                no_error(|w| (0..w.len()).rev().collect()),
            )
            .unwrap();
            assert_eq!(order, vec![0, 1, 2, 3, 4]);
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].before, vec![4, 3, 2, 1, 0]);
        }
        // A last window of one candidate is skipped (DeAR would call the model on it).
        let c = WindowConfig::dear_eval();
        assert_eq!(c.windows(11), vec![(0, 11)]);
        assert_eq!(dear_windows(&c, 11), vec![(10, 11), (0, 11)]);
    }

    #[test]
    fn zero_one_and_two_candidates() {
        let c = WindowConfig::dear_eval();
        assert!(c.windows(0).is_empty());
        assert!(c.windows(1).is_empty());
        assert_eq!(c.windows(2), vec![(0, 2)]);
        let mut calls = 0;
        let (order, records) = slide(Vec::new(), &c, |_: &[usize]| {
            calls += 1;
            Ok::<_, ()>(vec![])
        })
        .unwrap();
        assert!(order.is_empty() && records.is_empty());
        let (order, records) = slide(vec![7], &c, |_: &[usize]| {
            calls += 1;
            Ok::<_, ()>(vec![0])
        })
        .unwrap();
        assert_eq!(order, vec![7]);
        assert!(records.is_empty());
        assert_eq!(calls, 0);
        let (order, records) = slide(vec![7, 9], &c, no_error(|_| vec![1, 0])).unwrap();
        assert_eq!(order, vec![9, 7]);
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_failing_ranker_stops_the_pass_and_keeps_the_finished_windows() {
        let c = cfg(0, 100, 20, 10);
        let mut calls = 0;
        // Windows 80..100 and 70..90 reverse their slice; the third fails.
        let result = slide((0..100).collect(), &c, |w: &[usize]| {
            calls += 1;
            if calls == 3 {
                Err(format!("window at {} failed", w[0]))
            } else {
                Ok((0..w.len()).rev().collect())
            }
        });
        assert_eq!(calls, 3);
        let Err(stopped) = result else {
            panic!("the third window's error must stop the pass");
        };
        assert_eq!(stopped.error, "window at 60 failed");
        let mut expected: Vec<usize> = (0..100).collect();
        expected[80..100].reverse();
        expected[70..90].reverse();
        assert_eq!(stopped.order, expected);
        let spans: Vec<(usize, usize)> = stopped.records.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(spans, [(80, 100), (70, 90)]);
    }

    #[test]
    fn window_larger_than_the_range() {
        // One window over the range (DeAR's loop and RankLLM's sync loop run none).
        let c = cfg(0, 10, 20, 10);
        assert_eq!(c.windows(100), vec![(0, 10)]);
        assert!(dear_windows(&c, 100).is_empty());
        // RankLLM's corner: window == range + step runs nothing.
        assert!(rankllm_sync_windows(&c).is_empty());
        let c = cfg(0, 10, 20, 5);
        assert_eq!(c.windows(100), vec![(0, 10)]);
        assert_eq!(rankllm_sync_windows(&c), vec![(0, 10)]);
        let c = cfg(5, 15, 20, 5);
        assert_eq!(c.windows(100), vec![(5, 15)]);
        assert_eq!(c.windows(12), vec![(5, 12)]);
        let (order, _) = slide(
            (0..20).collect(),
            &c,
            no_error(|w| (0..w.len()).rev().collect()),
        )
        .unwrap();
        let mut expected: Vec<usize> = (0..20).collect();
        expected[5..15].reverse();
        assert_eq!(order, expected);
    }

    #[test]
    fn unaligned_range_reaches_the_top() {
        // 25 - 20 is not a multiple of 10: DeAR's loop runs 5..25 only; RankLLM's
        // adds 0..15.
        let c = cfg(0, 25, 20, 10);
        assert_eq!(c.windows(100), vec![(5, 25), (0, 15)]);
        assert_eq!(dear_windows(&c, 100), vec![(5, 25)]);
        assert_eq!(rankllm_sync_windows(&c), vec![(5, 25), (0, 15)]);
        let c = cfg(3, 30, 20, 10);
        assert_eq!(c.windows(100), vec![(10, 30), (3, 20)]);
    }

    #[test]
    fn rank_start_above_zero() {
        let c = cfg(10, 50, 20, 10);
        assert_eq!(c.windows(100), vec![(30, 50), (20, 40), (10, 30)]);
        assert_eq!(c.windows(100), dear_windows(&c, 100));
        assert_eq!(c.windows(100), rankllm_sync_windows(&c));
        assert_eq!(c.windows(25), vec![(20, 25), (10, 25)]);
        assert!(c.windows(10).is_empty());
        assert!(c.windows(11).is_empty());
    }

    #[test]
    fn aligned_settings_agree_with_the_references() {
        for rank_start in 0..6 {
            for span in 1..60 {
                for window in 1..25 {
                    for step in 1..=window {
                        let c = cfg(rank_start, rank_start + span, window, step);
                        let width = window.min(span);
                        let aligned = (span - width) % step == 0;
                        for len in [0, 1, 7, rank_start + span / 2, rank_start + span, 200] {
                            let w = c.windows(len);
                            if aligned && window <= span {
                                // DeAR's loop, with windows of one candidate skipped.
                                let dear: Vec<_> = dear_windows(&c, len)
                                    .into_iter()
                                    .filter(|(s, e)| e - s >= 2)
                                    .collect();
                                assert_eq!(w, dear, "{c:?} len={len}");
                            }
                            // Always: ordered bottom-up, inside the range, and the top of
                            // the range is covered whenever there is something to rank.
                            for &(s, e) in &w {
                                assert!(rank_start <= s && e <= len.min(rank_start + span));
                                assert!(e - s >= 2 && e - s <= width);
                            }
                            assert!(w.windows(2).all(|p| p[1].0 < p[0].0));
                            let reaches_top = width >= 2 && (step < width || aligned);
                            if reaches_top && len.min(rank_start + span) >= rank_start + 2 {
                                assert_eq!(
                                    w.last().map(|x| x.0),
                                    Some(rank_start),
                                    "{c:?} len={len}"
                                );
                            }
                        }
                        // RankLLM's loop, over enough candidates, everywhere but its
                        // corner (windows of one candidate skipped).
                        if window != span + step {
                            let rankllm: Vec<_> = rankllm_sync_windows(&c)
                                .into_iter()
                                .filter(|(s, e)| e - s >= 2)
                                .collect();
                            assert_eq!(c.windows(200), rankllm, "{c:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn degenerate_settings_terminate() {
        assert!(cfg(0, 30, 0, 10).windows(100).is_empty());
        assert!(cfg(0, 30, 20, 0).windows(100).is_empty());
        assert!(cfg(30, 30, 20, 10).windows(100).is_empty());
        assert!(cfg(40, 30, 20, 10).windows(100).is_empty());
        assert!(WindowConfig::top(0).windows(100).is_empty());
        // A step larger than the window leaves gaps, but terminates.
        assert_eq!(
            cfg(0, 30, 5, 10).windows(100),
            vec![(25, 30), (15, 20), (5, 10)]
        );
        // A huge rank_end is not enumerated window by window. usize::MAX - 20 ends in
        // 5, so the windows start at ...25, 15, 5, then RankLLM's last window 0..15.
        let c = cfg(0, usize::MAX, 20, 10);
        assert_eq!(c.windows(30), vec![(25, 30), (15, 30), (5, 25), (0, 15)]);
        let c = cfg(0, usize::MAX, 20, 1);
        assert_eq!(c.windows(30).len(), 29);
        let c = cfg(0, usize::MAX, usize::MAX, usize::MAX);
        assert_eq!(c.windows(50), vec![(0, 50)]);
        let (order, _) = slide(
            (0..3).collect(),
            &c,
            no_error(|w| (0..w.len()).rev().collect()),
        )
        .unwrap();
        assert_eq!(order, vec![2, 1, 0]);
    }

    #[test]
    fn validate_settings() {
        assert!(WindowConfig::dear_eval().validate().is_ok());
        assert!(WindowConfig::top(20).validate().is_ok());
        assert!(WindowConfig::top(1).validate().is_ok());
        assert_eq!(WindowConfig::top(20), cfg(0, 20, 20, 10));
        assert_eq!(WindowConfig::default(), WindowConfig::top(20));
        for bad in [
            cfg(0, 30, 0, 10),
            cfg(0, 30, 20, 0),
            cfg(0, 30, 5, 10),
            cfg(30, 30, 20, 10),
            WindowConfig::top(0),
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn invalid_permutations_leave_the_window_unchanged() {
        let c = WindowConfig::top(4);
        for answer in [
            vec![],
            vec![1, 0],
            vec![0, 1, 2, 3, 4],
            vec![0, 0, 1, 2],
            vec![4, 1, 2, 3],
        ] {
            let (order, records) = slide(vec![10, 11, 12, 13], &c, |_: &[usize]| {
                Ok::<_, ()>(answer.clone())
            })
            .unwrap();
            assert_eq!(order, vec![10, 11, 12, 13], "{answer:?}");
            assert_eq!(records[0].permutation, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn records_serialize() {
        let r = WindowRecord {
            start: 10,
            end: 13,
            before: vec![5, 6, 7],
            permutation: vec![2, 0, 1],
        };
        assert_eq!(r.after(), vec![7, 5, 6]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<WindowRecord>(&json).unwrap(), r);
        let c: WindowConfig =
            serde_json::from_str(r#"{"rank_start":0,"rank_end":30,"window":20,"step":10}"#)
                .unwrap();
        assert_eq!(c, WindowConfig::dear_eval());
    }
}
