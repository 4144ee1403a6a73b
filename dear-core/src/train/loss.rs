//! DeAR's stage-1 losses (`pointwise_reranker/rank_loss.py` and the dispatch in
//! `modeling.py`'s `DistillRerankerModel.forward`), on grouped student scores
//! `[groups, n]` whose first column is the positive, written with candle's
//! differentiable ops.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The main ranking loss of stage 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Cross-entropy of each group's softmax against its positive (DeAR's default).
    SoftmaxCe,
    /// RankNet on binary labels (positive 1, negatives 0).
    RanknetBinary,
    /// `0.5 · ranknet_binary + 0.5 · softmax_ce`.
    RanknetBinarySoftmaxCe,
    /// ListNet on binary labels.
    ListnetBinary,
    /// LambdaLoss (|ΔNDCG@5|-weighted pairwise logistic loss) on binary labels.
    LambdaLossBinary,
    /// RankNet with the teacher's score differences as soft targets.
    RanknetTeacher,
    /// ListNet against the softmax of the teacher's scores.
    ListnetTeacher,
    /// LambdaLoss with the teacher's scores as gains.
    LambdaLossTeacher,
}

impl LossType {
    /// Every loss type, in the order above.
    pub const ALL: [LossType; 8] = [
        LossType::SoftmaxCe,
        LossType::RanknetBinary,
        LossType::RanknetBinarySoftmaxCe,
        LossType::ListnetBinary,
        LossType::LambdaLossBinary,
        LossType::RanknetTeacher,
        LossType::ListnetTeacher,
        LossType::LambdaLossTeacher,
    ];

    /// DeAR's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            LossType::SoftmaxCe => "softmax_ce",
            LossType::RanknetBinary => "ranknet_binary",
            LossType::RanknetBinarySoftmaxCe => "ranknet_binary_softmax_ce",
            LossType::ListnetBinary => "listnet_binary",
            LossType::LambdaLossBinary => "lambda_loss_binary",
            LossType::RanknetTeacher => "ranknet_teacher",
            LossType::ListnetTeacher => "listnet_teacher",
            LossType::LambdaLossTeacher => "lambda_loss_teacher",
        }
    }

    /// Whether the loss reads the teacher's scores.
    pub fn needs_teacher(&self) -> bool {
        matches!(
            self,
            LossType::RanknetTeacher | LossType::ListnetTeacher | LossType::LambdaLossTeacher
        )
    }
}

impl fmt::Display for LossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LossType {
    type Err = Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        LossType::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown loss type {s:?} (one of: {})",
                    LossType::ALL.map(|l| l.name()).join(", ")
                ))
            })
    }
}

/// `log_softmax` over the last dimension (the shift is a constant for autograd: it
/// cancels in the value and in the gradient).
pub(crate) fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

fn softmax_rows(x: &[Vec<f32>]) -> Vec<Vec<f32>> {
    x.iter()
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let e: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// `log(1 + exp(x))`, stable: `max(x, 0) + log(1 + exp(-|x|))`.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// The strictly-upper-triangle pairs `(i, j)`, `i < j`, of `n` items.
fn pairs(n: usize) -> (Vec<u32>, Vec<u32>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            a.push(i as u32);
            b.push(j as u32);
        }
    }
    (a, b)
}

/// `s_i - s_j` for every pair, `[groups, pairs]`.
fn pair_diffs(s: &Tensor) -> candle_core::Result<Tensor> {
    let n = s.dim(1)?;
    let (a, b) = pairs(n);
    let dev = s.device();
    let ia = Tensor::new(a.as_slice(), dev)?;
    let ib = Tensor::new(b.as_slice(), dev)?;
    s.index_select(&ia, 1)? - s.index_select(&ib, 1)?
}

/// RankNet with soft targets `sigmoid(t_i - t_j)`: binary cross-entropy with logits
/// `s_i - s_j`, the mean over every pair `i < j` of every group.
pub(crate) fn rank_net(s: &Tensor, targets: &[Vec<f32>]) -> crate::Result<Tensor> {
    let d = pair_diffs(s)?;
    let n = s.dim(1)?;
    let p: Vec<f32> = targets
        .iter()
        .flat_map(|t| {
            let mut v = Vec::new();
            for i in 0..n {
                for j in i + 1..n {
                    v.push(1.0 / (1.0 + (-(t[i] - t[j])).exp()));
                }
            }
            v
        })
        .collect();
    let p = Tensor::from_vec(p, d.shape(), &Device::Cpu)?;
    // BCE with logits: max(d, 0) - d·p + log(1 + exp(-|d|)).
    Ok((softplus(&d)? - (d * p)?)?.mean_all()?)
}

/// ListNet: `KL(softmax(t) ‖ softmax(s))`, summed over items, averaged over groups
/// (`kl_div(..., reduction="batchmean")`).
pub(crate) fn list_net(s: &Tensor, targets: &[Vec<f32>]) -> crate::Result<Tensor> {
    let q = softmax_rows(targets);
    let groups = q.len();
    let q_log_q: f32 = q
        .iter()
        .flatten()
        .map(|&v| if v > 0.0 { v * v.ln() } else { 0.0 })
        .sum();
    let qt = Tensor::from_vec(q.concat(), s.shape(), &Device::Cpu)?;
    let cross = (log_softmax(s)? * qt)?.sum_all()?;
    Ok(((cross.neg()? + q_log_q as f64)? / groups as f64)?)
}

/// LambdaLoss as DeAR writes it: `-log σ(s_i - s_j) · |ΔNDCG_ij|`, the mean over the
/// pairs `i < j`, with gains `2^t - 1`, the ideal DCG of the top `k` targets, and
/// discounts `1 / log2(2 + rank)` from the student's current order (1-based ranks).
pub(crate) fn lambda_loss(s: &Tensor, targets: &[Vec<f32>], k: usize) -> crate::Result<Tensor> {
    let scores = s.to_vec2::<f32>()?;
    let n = s.dim(1)?;
    let mut weights = Vec::new();
    for (row, t) in scores.iter().zip(targets) {
        let mut ideal = t.clone();
        ideal.sort_by(|a, b| b.total_cmp(a));
        let idcg: f32 = ideal
            .iter()
            .take(k)
            .enumerate()
            .map(|(i, &g)| (2f32.powf(g) - 1.0) / ((i + 2) as f32).log2())
            .sum();
        // The student's ranks: stable descending order, ties by index.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut pos = vec![0f32; n];
        for (rank, &i) in order.iter().enumerate() {
            pos[i] = (rank + 1) as f32;
        }
        let disc: Vec<f32> = pos.iter().map(|p| 1.0 / (1.0 + p + 1.0).log2()).collect();
        let gain: Vec<f32> = t.iter().map(|g| 2f32.powf(*g) - 1.0).collect();
        for i in 0..n {
            for j in i + 1..n {
                let delta = ((gain[i] - gain[j]) * (disc[i] - disc[j])).abs();
                weights.push(delta / (idcg + 1e-8));
            }
        }
    }
    let d = pair_diffs(s)?;
    let w = Tensor::from_vec(weights, d.shape(), &Device::Cpu)?;
    // -log σ(d) = softplus(-d)
    Ok((softplus(&d.neg()?)? * w)?.mean_all()?)
}

/// Cross-entropy of each group against its first item, averaged over groups.
pub(crate) fn softmax_ce(s: &Tensor) -> crate::Result<Tensor> {
    Ok(log_softmax(s)?.narrow(1, 0, 1)?.mean_all()?.neg()?)
}

/// Knowledge distillation: `T² · KL(softmax(t/T) ‖ softmax(s/T))`, batchmean.
pub(crate) fn distillation(
    s: &Tensor,
    teacher: &[Vec<f32>],
    temperature: f64,
) -> crate::Result<Tensor> {
    let t: Vec<Vec<f32>> = teacher
        .iter()
        .map(|r| r.iter().map(|v| (*v as f64 / temperature) as f32).collect())
        .collect();
    Ok((list_net(&(s / temperature)?, &t)? * (temperature * temperature))?)
}

/// The main loss of `kind` on grouped scores `[groups, n]` (positive first).
///
/// # Errors
/// [`Error::InvalidArgument`] when a teacher loss gets no teacher scores or the
/// teacher's shape differs.
pub(crate) fn main_loss(
    kind: LossType,
    s: &Tensor,
    teacher: Option<&[Vec<f32>]>,
) -> crate::Result<Tensor> {
    let (groups, n) = s.dims2()?;
    let binary: Vec<Vec<f32>> = (0..groups)
        .map(|_| (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect())
        .collect();
    let teacher = || -> crate::Result<&[Vec<f32>]> {
        let t = teacher.ok_or_else(|| {
            Error::InvalidArgument(format!("the loss {kind} needs teacher scores"))
        })?;
        if t.len() != groups || t.iter().any(|r| r.len() != n) {
            return Err(Error::InvalidArgument(format!(
                "teacher scores are not [{groups}, {n}]"
            )));
        }
        Ok(t)
    };
    match kind {
        LossType::SoftmaxCe => softmax_ce(s),
        LossType::RanknetBinary => rank_net(s, &binary),
        LossType::RanknetBinarySoftmaxCe => {
            Ok(((rank_net(s, &binary)? * 0.5)? + (softmax_ce(s)? * 0.5)?)?)
        }
        LossType::ListnetBinary => list_net(s, &binary),
        LossType::LambdaLossBinary => lambda_loss(s, &binary, 5),
        LossType::RanknetTeacher => rank_net(s, teacher()?),
        LossType::ListnetTeacher => list_net(s, teacher()?),
        LossType::LambdaLossTeacher => lambda_loss(s, teacher()?, 5),
    }
}

/// DeAR's total: `(1 - α) · main + α · T² · KL` when teacher scores are given, else
/// the main loss alone.
pub(crate) fn total_loss(
    kind: LossType,
    s: &Tensor,
    teacher: Option<&[Vec<f32>]>,
    temperature: f64,
    alpha: f64,
) -> crate::Result<Tensor> {
    let main = main_loss(kind, s, teacher)?;
    match teacher {
        Some(t) => Ok(((main * (1.0 - alpha))? + (distillation(s, t, temperature)? * alpha)?)?),
        None => Ok(main),
    }
}

/// Supervised fine-tuning on an answer: the mean cross-entropy of `logits`
/// (`[answer tokens, vocab]`, row `t` predicting `targets[t]`), transformers'
/// `ForCausalLMLoss` over the tokens whose label is not -100.
#[allow(dead_code)] // stage 2's trainer reads it; golden-tested against PyTorch now
pub(crate) fn answer_cross_entropy(logits: &Tensor, targets: &[u32]) -> crate::Result<Tensor> {
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    let picked = log_softmax(logits)?.gather(&idx, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// FIRST's ranking loss on the logits of the first answer token (`[vocab]`): with
/// `s_c` the logit of candidate `c`'s identifier token and `r_c` its 1-based rank in
/// the target order, `(1/M) Σ_{r_i < r_j} softplus(s_j − s_i) / (r_i + r_j)` over the
/// `M = n(n−1)/2` pairs (gangiswag/llm-reranker `rank_net(weighted=True)`: BCE with
/// logits, weights `1/(r_i + r_j)`, mean reduction).
///
/// # Errors
/// [`Error::InvalidArgument`] when `order` is not a permutation of the identifiers.
#[allow(dead_code)] // stage 2's trainer reads it; golden-tested against PyTorch now
pub(crate) fn first_token_loss(
    logits: &Tensor,
    identifiers: &[u32],
    order: &[usize],
) -> crate::Result<Tensor> {
    let n = identifiers.len();
    let mut rank = vec![0usize; n];
    let mut seen = vec![false; n];
    if order.len() != n
        || order
            .iter()
            .any(|&c| c >= n || std::mem::replace(&mut seen[c], true))
    {
        return Err(Error::InvalidArgument(format!(
            "the target order {order:?} is not a permutation of {n} candidates"
        )));
    }
    for (pos, &c) in order.iter().enumerate() {
        rank[c] = pos + 1;
    }
    let ids = Tensor::new(identifiers, logits.device())?;
    let s = logits.flatten_all()?.index_select(&ids, 0)?;
    let (mut better, mut worse, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        for j in 0..n {
            if rank[i] < rank[j] {
                better.push(i as u32);
                worse.push(j as u32);
                weights.push(1.0 / (rank[i] + rank[j]) as f32);
            }
        }
    }
    let dev = logits.device();
    let d = (s.index_select(&Tensor::new(worse.as_slice(), dev)?, 0)?
        - s.index_select(&Tensor::new(better.as_slice(), dev)?, 0)?)?;
    let w = Tensor::new(weights.as_slice(), dev)?;
    Ok((softplus(&d)? * w)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn losses_have_their_closed_forms_on_a_small_case() -> crate::Result<()> {
        let s = Tensor::new(&[[2f32, 0.0, 1.0]], &Device::Cpu)?;
        // softmax_ce = -log(e² / (e² + 1 + e))
        let e = std::f32::consts::E;
        let ce = -(e * e / (e * e + 1.0 + e)).ln();
        assert!((scalar(&softmax_ce(&s)?) - ce).abs() < 1e-6);
        // ranknet binary: pairs (0,1) d=2 p=σ(1); (0,2) d=1 p=σ(1); (1,2) d=-1 p=σ(0)=.5
        let bce = |d: f32, p: f32| d.max(0.0) - d * p + (1.0 + (-d.abs()).exp()).ln();
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let rn = (bce(2.0, sig(1.0)) + bce(1.0, sig(1.0)) + bce(-1.0, 0.5)) / 3.0;
        let got = scalar(&main_loss(LossType::RanknetBinary, &s, None)?);
        assert!((got - rn).abs() < 1e-6, "{got} vs {rn}");
        // KL of identical distributions is zero.
        let kl = distillation(&s, &[vec![2.0, 0.0, 1.0]], 2.0)?;
        assert!(scalar(&kl).abs() < 1e-6);
        assert!(main_loss(LossType::ListnetTeacher, &s, None).is_err());
        Ok(())
    }

    #[test]
    fn names_round_trip() {
        for l in LossType::ALL {
            assert_eq!(l.name().parse::<LossType>().unwrap(), l);
        }
        assert!("hinge".parse::<LossType>().is_err());
    }
}
