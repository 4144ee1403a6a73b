//! Causal attention over packed variable-length sequences with grouped-query heads
//! (Llama's `repeat_kv`), in f32: the prefill, shared-prefix and decode attention of
//! `model::attention`, replacing candle-nn's `flash_attn_varlen_cpu`.
//!
//! # Algorithm (SIMD levels)
//! Flash attention, blocked: the query rows of one sequence and one kv head — its
//! positions × the `hq / hkv` query heads of the group, folded into one row dimension
//! so every K/V row is read once for the whole group — are cut into *tiles* of 48
//! rows (AVX-512; 24 with AVX2). A tile walks its visible keys in blocks of 64 with
//! an online softmax (running max, sum and rescale per row), never materialising more
//! than a 64 × 48 score block; fully masked blocks are never visited and only the
//! blocks crossing the diagonal are masked. Tiles run in parallel on the rayon pool,
//! the costliest (latest causal rows) first from a shared queue; when there are too
//! few tiles for the threads (decode: one query row per sequence) the keys of each
//! tile are split into chunks whose partial softmax states are merged afterwards.
//! Tiles of few rows — decode steps, where a tile holds all query heads of one
//! position so that whole K / V rows stream from memory — use a second kernel whose
//! lanes run over the head dim instead (`attention_x86::rows`).
//! The kernel itself is in `attention_x86.rs`: its SIMD lanes run over query rows,
//! Q is packed transposed and pre-scaled by `scale · log2 e`, and the softmax is
//! computed in base 2 with a vector `exp2` (Cephes' polynomial after rounding to the
//! nearest integer, 2ⁿ built in the exponent bits: measured within 1 ulp of libm on
//! `[-126, 0]` (tests allow 2), exactly 0 below -127, for -∞ and for NaN).
//!
//! # Reference
//! [`Isa::Scalar`] is a plain implementation of transformers' eager attention: scores
//! scaled, causal mask, softmax in f32 over the whole visible row (max subtracted),
//! then the matmul with V. The SIMD levels are tested against it.

use std::ops::Range;

use rayon::prelude::*;

use super::Isa;

#[cfg(target_arch = "x86_64")]
#[path = "attention_x86.rs"]
mod x86;

/// One sequence of a packed batch: its query rows and its key/value rows. The queries
/// are the last `q.len()` positions of the `k.len()` keys (causal: query `i` sees keys
/// `0..=k.len() - q.len() + i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqSpan {
    /// Token rows of `q` (and of `out`) holding this sequence's queries.
    pub q: Range<usize>,
    /// Token rows of `k` and `v` holding this sequence's keys and values (a cached or
    /// shared prefix first, then the tokens of the queries).
    pub k: Range<usize>,
}

impl SeqSpan {
    /// A sequence whose queries and keys are the same token rows (plain prefill).
    pub fn square(tokens: Range<usize>) -> Self {
        SeqSpan {
            q: tokens.clone(),
            k: tokens,
        }
    }
}

/// Causal grouped-query attention of packed sequences, at the CPU's best [`Isa`].
///
/// `q: [tokens_q, hq, d]`, `k` and `v: [tokens_k, hkv, d]` (row-major, contiguous);
/// `out: [tokens_q, hq, d]`. Query head `h` reads kv head `h / (hq / hkv)`
/// (transformers' `repeat_kv`). Each query row gets the softmax of `scale · q · kᵀ`
/// over its visible keys (see [`SeqSpan`]), in f32, times `v`. Rows of `out` that no
/// span covers are left as they are; empty spans produce nothing.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] naming the problem when the head counts, the
/// slice lengths or the spans do not fit together (spans out of range, with more
/// queries than keys, or sharing query rows), `d` is 0 or `scale` is not finite.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[SeqSpan],
    hq: usize,
    hkv: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
) -> crate::Result<()> {
    attention_with(Isa::detect(), q, k, v, spans, hq, hkv, d, scale, out)
}

/// [`attention`] at a given [`Isa`] (tests and benchmarks compare them).
///
/// # Errors
/// As [`attention`], and when the CPU cannot run `isa`.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[SeqSpan],
    hq: usize,
    hkv: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
) -> crate::Result<()> {
    let dims = validate(q, k, v, spans, hq, hkv, d, scale, out)?;
    if !Isa::available().contains(&isa) {
        return Err(bad(format!("this CPU cannot run {isa:?} kernels")));
    }
    if spans.iter().all(|s| s.q.is_empty()) {
        return Ok(());
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => blocked(isa, q, k, v, spans, &dims, out),
        _ => reference(q, k, v, spans, &dims, out),
    }
    Ok(())
}

fn bad(msg: String) -> crate::Error {
    crate::Error::InvalidArgument(format!("attention: {msg}"))
}

/// Problem sizes shared by every tile.
#[derive(Clone, Copy, Debug)]
struct Dims {
    hq: usize,
    hkv: usize,
    d: usize,
    /// Query heads per kv head.
    group: usize,
    scale: f32,
}

/// The longest key span: causal limits and key indices are compared as f32 lanes.
const MAX_KEYS: usize = 1 << 24;

/// Checks every argument; returns the sizes.
#[allow(clippy::too_many_arguments)]
fn validate(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[SeqSpan],
    hq: usize,
    hkv: usize,
    d: usize,
    scale: f32,
    out: &[f32],
) -> crate::Result<Dims> {
    if d == 0 {
        return Err(bad("head dim d must be > 0".into()));
    }
    if hq == 0 || hkv == 0 {
        return Err(bad(format!(
            "need at least one query and one kv head (hq = {hq}, hkv = {hkv})"
        )));
    }
    if !hq.is_multiple_of(hkv) {
        return Err(bad(format!(
            "hq = {hq} query heads is not a multiple of hkv = {hkv} kv heads"
        )));
    }
    if !scale.is_finite() {
        return Err(bad(format!("scale {scale} is not finite")));
    }
    let (Some(q_row), Some(k_row)) = (hq.checked_mul(d), hkv.checked_mul(d)) else {
        return Err(bad("head counts × head dim overflow".into()));
    };
    if !q.len().is_multiple_of(q_row) {
        return Err(bad(format!(
            "q has {} values, not a multiple of hq · d = {q_row}",
            q.len()
        )));
    }
    if !k.len().is_multiple_of(k_row) {
        return Err(bad(format!(
            "k has {} values, not a multiple of hkv · d = {k_row}",
            k.len()
        )));
    }
    if v.len() != k.len() {
        return Err(bad(format!(
            "v has {} values but k has {}",
            v.len(),
            k.len()
        )));
    }
    if out.len() != q.len() {
        return Err(bad(format!(
            "out has {} values but q has {}",
            out.len(),
            q.len()
        )));
    }
    let (tq, tk) = (q.len() / q_row, k.len() / k_row);
    for (i, s) in spans.iter().enumerate() {
        if s.q.start > s.q.end || s.q.end > tq {
            return Err(bad(format!(
                "span {i}: query rows {:?} outside the {tq} query tokens",
                s.q
            )));
        }
        if s.k.start > s.k.end || s.k.end > tk {
            return Err(bad(format!(
                "span {i}: key rows {:?} outside the {tk} key tokens",
                s.k
            )));
        }
        if s.q.len() > s.k.len() {
            return Err(bad(format!(
                "span {i}: {} queries but only {} keys (queries are the last positions \
                 of the keys)",
                s.q.len(),
                s.k.len()
            )));
        }
        if s.k.len() >= MAX_KEYS {
            return Err(bad(format!(
                "span {i}: {} keys, more than the supported {MAX_KEYS}",
                s.k.len()
            )));
        }
    }
    let mut order: Vec<usize> = (0..spans.len())
        .filter(|&i| !spans[i].q.is_empty())
        .collect();
    order.sort_by_key(|&i| spans[i].q.start);
    for w in order.windows(2) {
        if spans[w[0]].q.end > spans[w[1]].q.start {
            return Err(bad(format!(
                "spans {} and {} share query rows ({:?} and {:?})",
                w[0], w[1], spans[w[0]].q, spans[w[1]].q
            )));
        }
    }
    Ok(Dims {
        hq,
        hkv,
        d,
        group: hq / hkv,
        scale,
    })
}

/// Which span each query token belongs to (`usize::MAX`: none).
fn span_of_tokens(spans: &[SeqSpan], tq: usize) -> Vec<usize> {
    let mut of = vec![usize::MAX; tq];
    for (i, s) in spans.iter().enumerate() {
        of[s.q.clone()].fill(i);
    }
    of
}

/// Transformers' eager attention, one query row at a time (parallel over tokens):
/// scaled scores of the visible keys, max-subtracted softmax in f32, then `· v`.
fn reference(q: &[f32], k: &[f32], v: &[f32], spans: &[SeqSpan], dm: &Dims, out: &mut [f32]) {
    let (hq, hkv, d, g) = (dm.hq, dm.hkv, dm.d, dm.group);
    let span_of = span_of_tokens(spans, q.len() / (hq * d));
    out.par_chunks_mut(hq * d)
        .enumerate()
        .for_each(|(tok, orow)| {
            let Some(s) = spans.get(span_of[tok]) else {
                return;
            };
            // Keys 0..=last of the span are visible to this query.
            let last = s.k.len() - s.q.len() + (tok - s.q.start);
            let mut p = vec![0f32; last + 1];
            for head in 0..hq {
                let kh = head / g;
                let qv = &q[(tok * hq + head) * d..][..d];
                let krow = |j: usize| &k[((s.k.start + j) * hkv + kh) * d..][..d];
                let mut max = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let dot: f32 = qv.iter().zip(krow(j)).map(|(a, b)| a * b).sum();
                    *pj = dot * dm.scale;
                    max = max.max(*pj);
                }
                let mut sum = 0f32;
                for pj in p.iter_mut() {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                let o = &mut orow[head * d..][..d];
                o.fill(0.0);
                for (j, pj) in p.iter().enumerate() {
                    let w = pj / sum;
                    let vrow = &v[((s.k.start + j) * hkv + kh) * d..][..d];
                    for (oc, vc) in o.iter_mut().zip(vrow) {
                        *oc += w * vc;
                    }
                }
            }
        });
}

#[cfg(target_arch = "x86_64")]
/// A block of query rows of one span and kv head: positions `p0..p1` (relative to the
/// span's first query) × query heads `a..b` of the group, row-major (position-major),
/// against the span's keys `k0..k1`. A decode tile holds every query head of one
/// position instead (`h = 0`, `a..b = 0..hq`, rows of several kv heads).
#[derive(Clone, Copy, Debug)]
struct Tile {
    /// Token row of the span's first query.
    q_tok0: usize,
    /// Token row of the span's first key.
    k_tok0: usize,
    /// `lk - lq`: query position `p` sees keys `0..=offset + p`.
    offset: usize,
    /// The kv head.
    h: usize,
    p0: usize,
    p1: usize,
    a: usize,
    b: usize,
    k0: usize,
    k1: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    fn rows(&self) -> usize {
        (self.p1 - self.p0) * (self.b - self.a)
    }

    /// Roughly the multiply-adds of `Q · Kᵀ` in the tile, in units of the head dim
    /// (for scheduling).
    fn cost(&self) -> usize {
        self.rows().max(8) * (self.k1 - self.k0)
    }
}

#[cfg(target_arch = "x86_64")]
/// Where a tile's result goes: its output rows (normalised), or a partial softmax
/// state `[row][m, l, o_0 .. o_d]` (base-2 max, sum and unnormalised output) to merge.
enum Sink<'a, 'b> {
    Out(&'a mut [&'b mut [f32]]),
    Partial(&'a mut [f32]),
}

#[cfg(target_arch = "x86_64")]
/// A unit of parallel work.
enum Item<'a> {
    /// A whole tile and its output rows.
    Whole(Tile, Vec<&'a mut [f32]>),
    /// One key chunk of a split tile and its partial state.
    Part(Tile, &'a mut [f32]),
}

#[cfg(target_arch = "x86_64")]
impl Item<'_> {
    fn cost(&self) -> usize {
        match self {
            Item::Whole(t, _) | Item::Part(t, _) => t.cost(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// Below this many multiply-adds (of `Q · Kᵀ`), the calling thread does everything.
const SERIAL_COST: usize = 1 << 18;
#[cfg(target_arch = "x86_64")]
/// A split tile's key chunks are at least this long.
const MIN_CHUNK_KEYS: usize = 256;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Per-thread scratch of the tile kernel (Qᵀ, score block, Oᵀ, row states).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The blocked SIMD attention: plan tiles, hand out output rows, run, merge splits.
#[cfg(target_arch = "x86_64")]
fn blocked(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[SeqSpan],
    dm: &Dims,
    out: &mut [f32],
) {
    let (hq, d, g) = (dm.hq, dm.d, dm.group);
    let rt = x86::tile_rows(isa);
    // Tiles, span by span and kv head by kv head: whole groups of heads for as many
    // positions as fit, or (huge groups) part of a group of one position.
    let mut tiles: Vec<Tile> = Vec::new();
    // Per span: (first tile, tiles per kv head, positions per tile, tiles per position).
    let mut plan = vec![(0usize, 0usize, 0usize, 0usize); spans.len()];
    for (si, s) in spans.iter().enumerate() {
        let (lq, lk) = (s.q.len(), s.k.len());
        if lq == 0 {
            continue;
        }
        let base = Tile {
            q_tok0: s.q.start,
            k_tok0: s.k.start,
            offset: lk - lq,
            h: 0,
            p0: 0,
            p1: 0,
            a: 0,
            b: g,
            k0: 0,
            k1: 0,
        };
        let first = tiles.len();
        if lq == 1 && g < hq && x86::rows_kernel_fits(isa, hq, d) {
            // Decode: one tile of every head, so that a thread streams whole K / V
            // rows (split into key chunks across the threads below).
            tiles.push(Tile {
                p0: 0,
                p1: 1,
                b: hq,
                k1: lk,
                ..base
            });
            plan[si] = (first, 0, 1, 0);
        } else if g <= rt {
            let per = rt / g;
            for h in 0..dm.hkv {
                for p0 in (0..lq).step_by(per) {
                    let p1 = (p0 + per).min(lq);
                    tiles.push(Tile {
                        h,
                        p0,
                        p1,
                        k1: base.offset + p1,
                        ..base
                    });
                }
            }
            plan[si] = (first, lq.div_ceil(per), per, 0);
        } else {
            let per = g.div_ceil(rt);
            for h in 0..dm.hkv {
                for p in 0..lq {
                    for a in (0..g).step_by(rt) {
                        tiles.push(Tile {
                            h,
                            p0: p,
                            p1: p + 1,
                            a,
                            b: (a + rt).min(g),
                            k1: base.offset + p + 1,
                            ..base
                        });
                    }
                }
            }
            plan[si] = (first, lq * per, 1, per);
        }
    }
    // Hand each tile its output rows, in its row order (position-major, then head).
    let span_of = span_of_tokens(spans, q.len() / (hq * d));
    let mut rows: Vec<Vec<&mut [f32]>> =
        tiles.iter().map(|t| Vec::with_capacity(t.rows())).collect();
    for (idx, row) in out.chunks_exact_mut(d).enumerate() {
        let (tok, head) = (idx / hq, idx % hq);
        let Some(s) = spans.get(span_of[tok]) else {
            continue;
        };
        let (first, per_head, per_tile, per_pos) = plan[span_of[tok]];
        let pos = tok - s.q.start;
        let (h, jj) = (head / g, head % g);
        let ti = if per_pos == 0 {
            first + h * per_head + pos / per_tile
        } else {
            first + h * per_head + pos * per_pos + jj / rt
        };
        rows[ti].push(row);
    }
    // Work items; with too few tiles for the threads, split the keys of long tiles.
    let threads = rayon::current_num_threads();
    let total: usize = tiles.iter().map(Tile::cost).sum::<usize>() * d;
    let parallel = threads > 1 && total >= SERIAL_COST;
    let chunks_of = |t: &Tile| -> usize {
        if !parallel || tiles.len() >= 4 * threads {
            return 1;
        }
        let want = (4 * threads).div_ceil(tiles.len());
        want.min((t.k1 - t.k0) / MIN_CHUNK_KEYS).max(1)
    };
    let part_len: usize = tiles
        .iter()
        .map(|t| {
            let c = chunks_of(t);
            if c > 1 {
                c * t.rows() * (d + 2)
            } else {
                0
            }
        })
        .sum();
    let mut partials = vec![0f32; part_len];
    let mut items: Vec<Item> = Vec::with_capacity(tiles.len());
    // (tile, output rows, chunks, offset in `partials`) of the split tiles.
    let mut splits: Vec<(Tile, Vec<&mut [f32]>, usize, usize)> = Vec::new();
    {
        let mut rest: &mut [f32] = &mut partials;
        let mut at = 0;
        for (t, r) in tiles.iter().zip(rows) {
            let c = chunks_of(t);
            if c == 1 {
                items.push(Item::Whole(*t, r));
                continue;
            }
            splits.push((*t, r, c, at));
            let keys = t.k1 - t.k0;
            let step = keys.div_ceil(c).div_ceil(64) * 64;
            let mut k0 = t.k0;
            for _ in 0..c {
                let k1 = (k0 + step).min(t.k1);
                let n = t.rows() * (d + 2);
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n);
                rest = tail;
                at += n;
                if k0 < k1 {
                    items.push(Item::Part(Tile { k0, k1, ..*t }, mine));
                } else {
                    // An empty chunk: a neutral state (max -∞, sum 0).
                    for row in mine.chunks_exact_mut(d + 2) {
                        row[0] = f32::NEG_INFINITY;
                    }
                }
                k0 = k1;
            }
        }
    }
    let run = |item: Item, scratch: &mut Vec<f32>| match item {
        Item::Whole(t, mut r) => x86::run_tile(isa, &t, dm, q, k, v, scratch, Sink::Out(&mut r)),
        Item::Part(t, p) => x86::run_tile(isa, &t, dm, q, k, v, scratch, Sink::Partial(p)),
    };
    let with_scratch = |f: &mut dyn FnMut(&mut Vec<f32>)| {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => f(&mut s),
            Err(_) => f(&mut Vec::new()),
        })
    };
    if !parallel {
        with_scratch(&mut |s| {
            for item in items.drain(..) {
                run(item, s);
            }
        });
    } else {
        // Cheapest first, popped from the back: the longest causal tiles start first.
        items.sort_by_key(Item::cost);
        let queue = std::sync::Mutex::new(items);
        let next = || queue.lock().ok().and_then(|mut q| q.pop());
        rayon::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|_| {
                    with_scratch(&mut |s| {
                        while let Some(item) = next() {
                            run(item, s);
                        }
                    })
                });
            }
        });
    }
    // Merge the key chunks of split tiles.
    for (t, mut r, c, at) in splits {
        let nr = t.rows();
        let part = &partials[at..at + c * nr * (d + 2)];
        for (ri, row) in r.iter_mut().enumerate() {
            let state = |ci: usize| &part[(ci * nr + ri) * (d + 2)..][..d + 2];
            let m = (0..c)
                .map(|ci| state(ci)[0])
                .fold(f32::NEG_INFINITY, f32::max);
            row.fill(0.0);
            let mut l = 0f32;
            for ci in 0..c {
                let st = state(ci);
                if st[0] == f32::NEG_INFINITY {
                    continue;
                }
                let w = (st[0] - m).exp2();
                l += w * st[1];
                for (o, x) in row.iter_mut().zip(&st[2..]) {
                    *o += w * x;
                }
            }
            let inv = 1.0 / l;
            row.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic N(0, 1) samples (xorshift64* + Box–Muller).
    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f64 + 0.5) / (1u64 << 24) as f64
        };
        (0..n)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }

    struct Case {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        spans: Vec<SeqSpan>,
        hq: usize,
        hkv: usize,
        d: usize,
    }

    /// Packs sequences of `(lq, lk)` (queries = last lq of lk keys) back to back.
    fn case(lens: &[(usize, usize)], hq: usize, hkv: usize, d: usize, seed: u64) -> Case {
        let mut spans = Vec::new();
        let (mut tq, mut tk) = (0, 0);
        for &(lq, lk) in lens {
            spans.push(SeqSpan {
                q: tq..tq + lq,
                k: tk..tk + lk,
            });
            tq += lq;
            tk += lk;
        }
        Case {
            q: randn(tq * hq * d, seed),
            k: randn(tk * hkv * d, seed + 1),
            v: randn(tk * hkv * d, seed + 2),
            spans,
            hq,
            hkv,
            d,
        }
    }

    fn run(isa: Isa, c: &Case) -> crate::Result<Vec<f32>> {
        let mut out = vec![f32::NAN; c.q.len()];
        let scale = 1.0 / (c.d as f32).sqrt();
        attention_with(
            isa, &c.q, &c.k, &c.v, &c.spans, c.hq, c.hkv, c.d, scale, &mut out,
        )?;
        Ok(out)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                if x.is_nan() || y.is_nan() {
                    f32::INFINITY
                } else {
                    (x - y).abs()
                }
            })
            .fold(0.0, f32::max)
    }

    fn check_all_levels(c: &Case, what: &str) -> crate::Result<()> {
        let want = run(Isa::Scalar, c)?;
        assert!(
            want.iter().all(|x| x.is_finite()),
            "{what}: reference not finite"
        );
        for isa in Isa::available() {
            let got = run(isa, c)?;
            let diff = max_diff(&got, &want);
            assert!(
                diff <= 1e-5,
                "{what}: {isa:?} differs from the reference by {diff}"
            );
        }
        Ok(())
    }

    /// Every level matches the reference on packed spans of awkward lengths, with and
    /// without a key prefix, for several GQA ratios and head dims.
    #[test]
    fn every_level_matches_reference() -> crate::Result<()> {
        let lens_square: Vec<(usize, usize)> =
            [1, 5, 63, 64, 65, 130].iter().map(|&n| (n, n)).collect();
        let lens_prefix = [
            (1, 1),
            (1, 7),
            (5, 70),
            (63, 64),
            (64, 200),
            (65, 66),
            (130, 131),
        ];
        for (hq, hkv) in [(9, 3), (4, 4), (8, 2), (3, 1), (2, 1)] {
            for d in [64, 40, 72, 13] {
                for (name, lens) in [("square", &lens_square[..]), ("prefix", &lens_prefix[..])] {
                    let c = case(lens, hq, hkv, d, (hq * 131 + d) as u64);
                    check_all_levels(&c, &format!("{name} hq={hq} hkv={hkv} d={d}"))?;
                }
            }
        }
        Ok(())
    }

    /// Groups bigger than a tile (a tile holds part of the heads of one position).
    #[test]
    fn huge_groups_match_reference() -> crate::Result<()> {
        let c = case(&[(3, 3), (2, 9), (1, 1)], 64, 1, 16, 7);
        check_all_levels(&c, "hq=64 hkv=1")?;
        let c = case(&[(4, 10)], 50, 2, 24, 8);
        check_all_levels(&c, "hq=50 hkv=2")
    }

    /// Decode shapes: one query against a long cache, alone (key chunks split across
    /// threads and merged) and batched; and spans given out of order with gaps.
    #[test]
    fn decode_and_unordered_spans_match_reference() -> crate::Result<()> {
        let c = case(&[(1, 2100)], 9, 3, 64, 11);
        check_all_levels(&c, "decode 1×2100")?;
        let c = case(&[(1, 700), (1, 3), (2, 1500), (1, 64)], 9, 3, 64, 12);
        check_all_levels(&c, "decode batch")?;
        // Few tiles with many keys: split into key chunks, the last one masked.
        let c = case(&[(16, 3000)], 9, 3, 64, 14);
        check_all_levels(&c, "16 queries × 3000 keys")?;
        let c = case(&[(1, 1800)], 2, 2, 72, 15);
        check_all_levels(&c, "decode hq = hkv")?;
        // Llama-3 8B heads (32 / 8, d = 128) and a 2-position decode step.
        let c = case(&[(1, 900), (2, 70), (1, 33)], 32, 8, 128, 16);
        check_all_levels(&c, "decode d = 128")?;
        let c = case(&[(2, 2100), (1, 5)], 4, 1, 32, 17);
        check_all_levels(&c, "decode d = 32")?;
        let mut c = case(&[(3, 5), (4, 4), (2, 9)], 6, 2, 32, 13);
        c.spans.reverse();
        // A gap: token rows 0..3 belong to no span and must stay as they are.
        c.spans.pop();
        for isa in Isa::available() {
            let got = run(isa, &c)?;
            assert!(
                got[..3 * 6 * 32].iter().all(|x| x.is_nan()),
                "{isa:?} wrote a gap"
            );
            let want = run(Isa::Scalar, &c)?;
            let diff = max_diff(&got[3 * 6 * 32..], &want[3 * 6 * 32..]);
            assert!(diff <= 1e-5, "{isa:?}: {diff}");
        }
        Ok(())
    }

    /// A long prompt (many tiles, parallel, several key blocks per diagonal).
    #[test]
    fn long_prompt_matches_reference() -> crate::Result<()> {
        let c = case(&[(700, 700), (300, 450)], 9, 3, 64, 21);
        check_all_levels(&c, "long prompt")
    }

    /// The reference is candle-nn's `flash_attn_varlen_cpu` (what the model used).
    #[test]
    fn reference_matches_candle() -> crate::Result<()> {
        use candle_core::{Device, Tensor};
        let (hq, hkv, d) = (9, 3, 64);
        let lens = [(7, 7), (64, 64), (33, 33), (1, 1), (100, 100)];
        let c = case(&lens, hq, hkv, d, 99);
        let dev = Device::Cpu;
        let tq = c.q.len() / (hq * d);
        let tk = c.k.len() / (hkv * d);
        let qt = Tensor::from_slice(&c.q, (tq, hq, d), &dev)?;
        let kt = Tensor::from_slice(&c.k, (tk, hkv, d), &dev)?;
        let vt = Tensor::from_slice(&c.v, (tk, hkv, d), &dev)?;
        let seqlens: Vec<u32> = lens.iter().map(|l| l.0 as u32).collect();
        let seqlens = Tensor::new(seqlens.as_slice(), &dev)?;
        let scale = 1.0 / (d as f32).sqrt();
        let want = candle_nn::attention::flash_attn_varlen_cpu(
            &qt, &kt, &vt, None, &seqlens, &seqlens, 100, 100, scale, true, None, None,
        )?
        .flatten_all()?
        .to_vec1::<f32>()?;
        let got = run(Isa::Scalar, &c)?;
        let diff = max_diff(&got, &want);
        assert!(diff <= 1e-5, "reference vs candle: {diff}");
        // And with a key prefix (queries the last of the keys).
        let lens = [(5, 40), (1, 9), (30, 31)];
        let c = case(&lens, hq, hkv, d, 98);
        let tq = c.q.len() / (hq * d);
        let tk = c.k.len() / (hkv * d);
        let qt = Tensor::from_slice(&c.q, (tq, hq, d), &dev)?;
        let kt = Tensor::from_slice(&c.k, (tk, hkv, d), &dev)?;
        let vt = Tensor::from_slice(&c.v, (tk, hkv, d), &dev)?;
        let sq: Vec<u32> = lens.iter().map(|l| l.0 as u32).collect();
        let sk: Vec<u32> = lens.iter().map(|l| l.1 as u32).collect();
        let want = candle_nn::attention::flash_attn_varlen_cpu(
            &qt,
            &kt,
            &vt,
            None,
            &Tensor::new(sq.as_slice(), &dev)?,
            &Tensor::new(sk.as_slice(), &dev)?,
            30,
            40,
            scale,
            true,
            None,
            None,
        )?
        .flatten_all()?
        .to_vec1::<f32>()?;
        let diff = max_diff(&run(Isa::Scalar, &c)?, &want);
        assert!(diff <= 1e-5, "reference vs candle with prefix: {diff}");
        Ok(())
    }

    /// One query over one key returns that key's value exactly; equal scores average
    /// the values.
    #[test]
    fn single_key_and_uniform_scores() -> crate::Result<()> {
        let (hq, hkv, d) = (4, 2, 40);
        let q = randn(hq * d, 1);
        let k = randn(hkv * d, 2);
        let v = randn(hkv * d, 3);
        for isa in Isa::available() {
            let mut out = vec![0.0; q.len()];
            attention_with(
                isa,
                &q,
                &k,
                &v,
                &[SeqSpan::square(0..1)],
                hq,
                hkv,
                d,
                0.3,
                &mut out,
            )?;
            for h in 0..hq {
                assert_eq!(
                    &out[h * d..][..d],
                    &v[(h / 2) * d..][..d],
                    "{isa:?} head {h}"
                );
            }
        }
        // Zero queries: every key scores 0, the output is the mean of the visible values.
        let (n, hq, hkv, d) = (70, 3, 1, 16);
        let q = vec![0.0; n * hq * d];
        let k = randn(n * hkv * d, 4);
        let v = randn(n * hkv * d, 5);
        for isa in Isa::available() {
            let mut out = vec![0.0; q.len()];
            attention_with(
                isa,
                &q,
                &k,
                &v,
                &[SeqSpan::square(0..n)],
                hq,
                hkv,
                d,
                1.0,
                &mut out,
            )?;
            for i in 0..n {
                for c in 0..d {
                    let mean = (0..=i).map(|j| v[j * d + c]).sum::<f32>() / (i + 1) as f32;
                    for h in 0..hq {
                        let got = out[(i * hq + h) * d + c];
                        assert!(
                            (got - mean).abs() <= 1e-5,
                            "{isa:?} row {i}: {got} vs {mean}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Every bad argument is an error naming it, never a panic.
    #[test]
    fn bad_inputs_are_named_errors() {
        let (hq, hkv, d) = (4, 2, 8);
        let q = vec![0.0; 3 * hq * d];
        let kv = vec![0.0; 5 * hkv * d];
        let mut out = vec![0.0; q.len()];
        let ok = [SeqSpan { q: 0..3, k: 0..5 }];
        let err = |r: crate::Result<()>| r.unwrap_err().to_string();
        let e = err(attention(&q, &kv, &kv, &ok, 4, 3, d, 1.0, &mut out));
        assert!(e.contains("not a multiple of hkv"), "{e}");
        let e = err(attention(&q, &kv, &kv, &ok, hq, hkv, 0, 1.0, &mut out));
        assert!(e.contains("d must be > 0"), "{e}");
        let e = err(attention(&q, &kv, &kv, &ok, 0, 0, d, 1.0, &mut out));
        assert!(e.contains("at least one"), "{e}");
        let e = err(attention(&q[1..], &kv, &kv, &ok, hq, hkv, d, 1.0, &mut out));
        assert!(e.contains("q has"), "{e}");
        let e = err(attention(
            &q,
            &kv[1..],
            &kv[1..],
            &ok,
            hq,
            hkv,
            d,
            1.0,
            &mut out,
        ));
        assert!(e.contains("k has"), "{e}");
        let e = err(attention(
            &q,
            &kv,
            &kv[..hkv * d],
            &ok,
            hq,
            hkv,
            d,
            1.0,
            &mut out,
        ));
        assert!(e.contains("v has"), "{e}");
        let e = err(attention(&q, &kv, &kv, &ok, hq, hkv, d, 1.0, &mut out[1..]));
        assert!(e.contains("out has"), "{e}");
        let e = err(attention(&q, &kv, &kv, &ok, hq, hkv, d, f32::NAN, &mut out));
        assert!(e.contains("scale"), "{e}");
        // The error for one span (query rows, key rows) over otherwise valid arguments.
        let mut span_err = |qr: Range<usize>, kr: Range<usize>| {
            err(attention(
                &q,
                &kv,
                &kv,
                &[SeqSpan { q: qr, k: kr }],
                hq,
                hkv,
                d,
                1.0,
                &mut out,
            ))
        };
        let e = span_err(0..4, 0..5);
        assert!(e.contains("span 0: query rows"), "{e}");
        let e = span_err(0..1, 2..6);
        assert!(e.contains("span 0: key rows"), "{e}");
        #[allow(clippy::reversed_empty_ranges)]
        let e = span_err(2..1, 0..5);
        assert!(e.contains("query rows"), "{e}");
        let e = span_err(0..3, 0..2);
        assert!(e.contains("3 queries but only 2 keys"), "{e}");
        let two = [SeqSpan { q: 0..2, k: 0..2 }, SeqSpan { q: 1..3, k: 2..5 }];
        let e = err(attention(&q, &kv, &kv, &two, hq, hkv, d, 1.0, &mut out));
        assert!(e.contains("share query rows"), "{e}");
        // Empty spans are fine and write nothing.
        let mut untouched = vec![7.0; q.len()];
        attention(
            &q,
            &kv,
            &kv,
            &[SeqSpan { q: 1..1, k: 0..0 }],
            hq,
            hkv,
            d,
            1.0,
            &mut untouched,
        )
        .unwrap();
        assert!(untouched.iter().all(|x| *x == 7.0));
        attention(&q, &kv, &kv, &[], hq, hkv, d, 1.0, &mut untouched).unwrap();
    }

    /// The vector `exp2` is within 2 ulp of libm on `[-126, 0]`, exactly 1 at 0 and
    /// exactly 0 below -127, for -∞ and for NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_exp2_is_accurate() {
        let mut xs: Vec<f32> = (0..1_300_000)
            .map(|i| -126.0 + i as f32 * 9.69e-5)
            .collect();
        xs.retain(|x| *x <= 0.0);
        xs.extend([
            0.0,
            -0.5,
            -1e-9,
            -127.5,
            -200.0,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(-1.0);
        }
        for isa in Isa::available().into_iter().filter(|i| *i != Isa::Scalar) {
            let got = x86::exp2_lanes(isa, &xs);
            let mut worst = 0u32;
            for (x, y) in xs.iter().zip(&got) {
                if *x >= -126.0 {
                    let want = (*x as f64).exp2() as f32;
                    let ulps = (y.to_bits() as i64 - want.to_bits() as i64).unsigned_abs();
                    worst = worst.max(ulps as u32);
                } else if x.is_nan() || *x <= -126.5 {
                    assert_eq!(*y, 0.0, "{isa:?} exp2({x})");
                }
            }
            assert!(worst <= 2, "{isa:?}: worst {worst} ulp");
            assert_eq!(x86::exp2_lanes(isa, &[0.0; 16])[0], 1.0);
        }
    }
}
