//! Fusing a model stage's scores with the first stage's: a small student reranker is
//! often best as a correction to BM25 rather than a replacement for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How the pointwise stage's order is made from its scores and the first stage's.
///
/// - [`Fusion::Off`]: the pointwise scores alone (DeAR's way).
/// - [`Fusion::Interpolate`]: `weight · s' + (1 − weight) · f'`, where `s'` and `f'`
///   are the pointwise and first-stage scores min-max normalised over the candidates
///   scored (a constant list normalises to 0). The fused score is in `[0, 1]` and is
///   the hits' relevance.
/// - [`Fusion::Rrf`]: reciprocal-rank fusion, `1 / (k + rank_s) + 1 / (k + rank_f)`
///   (ranks from 1), scaled by `(k + 1) / 2` into `(0, 1]` for the relevance.
///
/// Ties keep the first-stage order. Parsed from `off`, `interpolate:W` (W in
/// `[0, 1]`) and `rrf:K` (K ≥ 0).
///
/// # Example
/// ```
/// use dear_core::Fusion;
/// let fusion: Fusion = "interpolate:0.5".parse()?;
/// // BM25 prefers the first passage, the model the second, more strongly.
/// let fused = fusion.fuse(&[12.0, 10.0, 2.0], &[0.1, 3.0, -4.0]);
/// assert_eq!(fused, vec![0.5 + 0.5 * (4.1 / 7.0), 0.5 + 0.5 * 0.8, 0.0]);
/// assert_eq!(fusion.to_string(), "interpolate:0.5");
/// assert!("interpolate:2".parse::<Fusion>().is_err());
/// # Ok::<(), dear_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Fusion {
    /// The pointwise scores alone.
    #[default]
    Off,
    /// Min-max normalised linear interpolation; `weight` is the model's share.
    Interpolate {
        /// The pointwise stage's weight, in `[0, 1]` (1 = the model alone, 0 = BM25).
        weight: f32,
    },
    /// Reciprocal-rank fusion with constant `k` (60 is the usual choice).
    Rrf {
        /// The rank offset: larger flattens the difference between top ranks.
        k: f32,
    },
}

impl Fusion {
    /// Checks the parameter's range.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the parameter and its value.
    pub fn validate(&self) -> crate::Result<()> {
        match *self {
            Fusion::Off => Ok(()),
            Fusion::Interpolate { weight } if (0.0..=1.0).contains(&weight) => Ok(()),
            Fusion::Interpolate { weight } => Err(Error::InvalidArgument(format!(
                "fusion weight must be in [0, 1], not {weight}"
            ))),
            Fusion::Rrf { k } if k.is_finite() && k >= 0.0 => Ok(()),
            Fusion::Rrf { k } => Err(Error::InvalidArgument(format!(
                "fusion rrf k must be a finite number >= 0, not {k}"
            ))),
        }
    }

    /// Whether the model's scores are used alone.
    pub fn is_off(&self) -> bool {
        matches!(self, Fusion::Off)
    }

    /// The fused score of each candidate from its first-stage score and its model
    /// score (same length; with [`Fusion::Off`], the model scores). Non-finite
    /// inputs count as the lowest score of their list.
    pub fn fuse(&self, first: &[f32], model: &[f32]) -> Vec<f32> {
        let n = first.len().min(model.len());
        match *self {
            Fusion::Off => model[..n].to_vec(),
            Fusion::Interpolate { weight } => {
                let f = min_max(&first[..n]);
                let s = min_max(&model[..n]);
                f.iter()
                    .zip(&s)
                    .map(|(f, s)| weight * s + (1.0 - weight) * f)
                    .collect()
            }
            Fusion::Rrf { k } => {
                let rf = ranks(&first[..n]);
                let rs = ranks(&model[..n]);
                let scale = (k + 1.0) / 2.0;
                rf.iter()
                    .zip(&rs)
                    .map(|(&a, &b)| scale * (1.0 / (k + a as f32) + 1.0 / (k + b as f32)))
                    .collect()
            }
        }
    }
}

/// Scores mapped linearly onto `[0, 1]` (non-finite ones to 0; all equal → all 0).
fn min_max(x: &[f32]) -> Vec<f32> {
    let finite = x.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f32::INFINITY, f32::min);
    let hi = finite.fold(f32::NEG_INFINITY, f32::max);
    let span = hi - lo;
    x.iter()
        .map(|&v| {
            if v.is_finite() && span > 0.0 && span.is_finite() {
                (v - lo) / span
            } else {
                0.0
            }
        })
        .collect()
}

/// 1-based ranks by descending score; ties and non-finite scores in list order.
fn ranks(x: &[f32]) -> Vec<usize> {
    let key = |v: f32| if v.is_finite() { v } else { f32::NEG_INFINITY };
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| key(x[b]).total_cmp(&key(x[a])));
    let mut r = vec![0; x.len()];
    for (rank, &i) in order.iter().enumerate() {
        r[i] = rank + 1;
    }
    r
}

impl fmt::Display for Fusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fusion::Off => write!(f, "off"),
            Fusion::Interpolate { weight } => write!(f, "interpolate:{weight}"),
            Fusion::Rrf { k } => write!(f, "rrf:{k}"),
        }
    }
}

impl FromStr for Fusion {
    type Err = Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let (method, value) = match t.split_once(':') {
            Some((m, v)) => (m.trim(), Some(v.trim())),
            None => (t.as_str(), None),
        };
        let number = |what: &str| -> crate::Result<f32> {
            let v = value.ok_or_else(|| {
                Error::InvalidArgument(format!("fusion '{s}': give the {what} as {method}:N"))
            })?;
            v.parse::<f32>().map_err(|_| {
                Error::InvalidArgument(format!("fusion '{s}': the {what} '{v}' is not a number"))
            })
        };
        let fusion = match method {
            "off" | "none" if value.is_none() => Fusion::Off,
            "interpolate" | "interp" | "linear" => Fusion::Interpolate {
                weight: number("weight")?,
            },
            "rrf" => Fusion::Rrf {
                k: match value {
                    None => 60.0,
                    Some(_) => number("k")?,
                },
            },
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown fusion '{s}' (expected off, interpolate:W or rrf:K)"
                )))
            }
        };
        fusion.validate()?;
        Ok(fusion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_normalises_both_lists() {
        let f = Fusion::Interpolate { weight: 0.25 };
        let fused = f.fuse(&[3.0, 1.0, 2.0], &[-1.0, 1.0, 0.0]);
        assert_eq!(fused, vec![0.75, 0.25, 0.5]);
        // The ends of the weight range are the two lists' own orders.
        let first = [5.0, 9.0, 1.0];
        let model = [0.3, -2.0, 4.0];
        assert_eq!(
            Fusion::Interpolate { weight: 0.0 }.fuse(&first, &model),
            vec![0.5, 1.0, 0.0]
        );
        let only_model = Fusion::Interpolate { weight: 1.0 }.fuse(&first, &model);
        assert_eq!(only_model, vec![2.3 / 6.0, 0.0, 1.0]);
    }

    #[test]
    fn constant_and_non_finite_scores_are_lowest() {
        let f = Fusion::Interpolate { weight: 0.5 };
        // A constant first stage leaves the model's order.
        assert_eq!(f.fuse(&[1.0, 1.0], &[0.0, 2.0]), vec![0.0, 0.5]);
        assert_eq!(
            f.fuse(&[1.0, 2.0, 3.0], &[f32::NAN, 1.0, 0.0]),
            vec![0.0, 0.75, 0.5]
        );
        assert_eq!(Fusion::Off.fuse(&[1.0, 2.0], &[3.0, 4.0]), vec![3.0, 4.0]);
    }

    #[test]
    fn rrf_adds_reciprocal_ranks() {
        let f = Fusion::Rrf { k: 0.0 };
        // first ranks [1, 2, 3], model ranks [3, 1, 2]; scaled by 1/2.
        let fused = f.fuse(&[3.0, 2.0, 1.0], &[0.0, 5.0, 4.0]);
        let expect = [1.0 + 1.0 / 3.0, 0.5 + 1.0, 1.0 / 3.0 + 0.5].map(|v: f32| v / 2.0);
        for (a, b) in fused.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{fused:?}");
        }
        // Top in both lists: relevance 1.
        let top = Fusion::Rrf { k: 60.0 }.fuse(&[2.0, 1.0], &[2.0, 1.0])[0];
        assert!((top - 1.0).abs() < 1e-6, "{top}");
    }

    #[test]
    fn parses_prints_and_checks_ranges() -> crate::Result<()> {
        for text in ["off", "interpolate:0.3", "rrf:60"] {
            let f: Fusion = text.parse()?;
            assert_eq!(f.to_string(), text);
            assert_eq!(f.to_string().parse::<Fusion>()?, f);
        }
        assert_eq!("rrf".parse::<Fusion>()?, Fusion::Rrf { k: 60.0 });
        assert_eq!(
            " Interp:1 ".parse::<Fusion>()?,
            Fusion::Interpolate { weight: 1.0 }
        );
        for (bad, says) in [
            ("interpolate:1.5", "[0, 1]"),
            ("interpolate:NaN", "[0, 1]"),
            ("interpolate", "weight"),
            ("interpolate:x", "not a number"),
            ("rrf:-1", "rrf k"),
            ("rrf:inf", "rrf k"),
            ("borda", "unknown fusion"),
            ("off:3", "unknown fusion"),
        ] {
            let err = bad.parse::<Fusion>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let json = serde_json::to_string(&Fusion::Interpolate { weight: 0.5 })
            .map_err(|e| Error::Internal(e.to_string()))?;
        assert_eq!(json, r#"{"method":"interpolate","weight":0.5}"#);
        Ok(())
    }
}
