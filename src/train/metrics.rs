//! Validation metrics of classifiers: auROC and auPRC from scores, confusion-matrix
//! statistics (accuracy, Matthews correlation, F1), and a fixed-bin score histogram that
//! gives approximate auROC/auPRC over any number of points in constant memory.
//!
//! Exact auROC/auPRC sort the scores once (O(n log n), in parallel), which is fine up to
//! hundreds of millions of points; per-base validation over a genome can stream into
//! [`ScoreHistogram`]s instead and merge them across workers.

use std::collections::BTreeMap;

use rayon::slice::ParallelSliceMut;

use crate::{Error, Result};

/// Named metric values (`"accuracy"`, `"auroc"`, ...), serialisable with serde.
///
/// Undefined values are left out rather than stored as NaN, so the map always round-trips
/// through JSON.
pub type Metrics = BTreeMap<String, f64>;

/// Number of bins of [`ScoreHistogram::new`].
pub const DEFAULT_BINS: usize = 10_000;

/// Positive and negative counts of one group of equal scores.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    pos: u64,
    neg: u64,
}

/// Area under the ROC curve from groups sorted by ascending score (ties in one group).
///
/// Mann-Whitney: the fraction of (positive, negative) pairs in which the positive scores
/// higher, a tie counting one half.
fn auroc_of_groups(groups: impl Iterator<Item = Group>) -> Option<f64> {
    let (mut pos, mut neg) = (0u64, 0u64);
    // Twice the number of correctly ordered pairs (ties count 1 instead of 1/2), kept
    // exactly in integers as long as it fits, which covers any realistic data set.
    let mut twice_wins = 0u128;
    for g in groups {
        twice_wins += g.pos as u128 * (2 * neg as u128 + g.neg as u128);
        pos += g.pos;
        neg += g.neg;
    }
    if pos == 0 || neg == 0 {
        return None;
    }
    Some(twice_wins as f64 / (2.0 * pos as f64 * neg as f64))
}

/// Average precision from groups sorted by descending score (ties in one group).
///
/// AP = Σ (R_t − R_{t−1}) · P_t over the thresholds t (one per distinct score), the
/// step-wise sum without interpolation.
fn auprc_of_groups(groups: impl Iterator<Item = Group> + Clone) -> Option<f64> {
    let total_pos: u64 = groups.clone().map(|g| g.pos).sum();
    if total_pos == 0 {
        return None;
    }
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut ap = 0.0f64;
    for g in groups {
        tp += g.pos;
        fp += g.neg;
        if g.pos > 0 {
            ap += g.pos as f64 / total_pos as f64 * (tp as f64 / (tp + fp) as f64);
        }
    }
    Some(ap)
}

/// Scores paired with their class, sorted ascending by score (`f32::total_cmp`), then cut
/// into groups of equal scores.
fn sorted_groups(scores: &[f32], positives: &[bool]) -> Vec<Group> {
    assert_eq!(
        scores.len(),
        positives.len(),
        "scores and positives must have the same length"
    );
    let mut pairs: Vec<(f32, bool)> = scores
        .iter()
        .copied()
        .zip(positives.iter().copied())
        .collect();
    pairs.par_sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups = Vec::new();
    let mut i = 0;
    while i < pairs.len() {
        let s = pairs[i].0;
        let mut g = Group::default();
        while i < pairs.len() && same_score(pairs[i].0, s) {
            if pairs[i].1 {
                g.pos += 1;
            } else {
                g.neg += 1;
            }
            i += 1;
        }
        groups.push(g);
    }
    groups
}

/// Equal scores for tie grouping (`-0.0` equals `0.0`; NaNs equal each other).
fn same_score(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

/// Area under the ROC curve of `scores` (higher means more likely positive).
///
/// Rank-based (Mann-Whitney U): the probability that a random positive scores higher than a
/// random negative, ties counted one half. `None` when either class is absent. NaN scores
/// are ordered by [`f32::total_cmp`] (a positive NaN above everything).
///
/// # Panics
/// When `scores` and `positives` differ in length.
///
/// ```
/// use genomamba::train::metrics::auroc;
/// let a = auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
/// assert!((a - 0.75).abs() < 1e-12);
/// ```
pub fn auroc(scores: &[f32], positives: &[bool]) -> Option<f64> {
    auroc_of_groups(sorted_groups(scores, positives).into_iter())
}

/// Area under the precision-recall curve of `scores`, as average precision.
///
/// Step-wise: AP = Σ_t (R_t − R_{t−1}) · P_t over the distinct scores t from high to low,
/// where all points with an equal score enter together (ties grouped). `None` when there
/// are no positives; with no negatives it is 1.
///
/// # Panics
/// When `scores` and `positives` differ in length.
pub fn auprc(scores: &[f32], positives: &[bool]) -> Option<f64> {
    let groups = sorted_groups(scores, positives);
    auprc_of_groups(groups.iter().rev().copied())
}

/// Counts of scores in fixed bins over [0, 1], split by class: streaming, mergeable,
/// approximate auROC / auPRC in memory that does not grow with the number of points.
///
/// Scores are quantised to their bin; the areas are the exact areas of the quantised
/// scores (points of one bin count as tied), so with 10,000 bins they differ from the exact
/// values by at most the mass of pairs that fall in a shared bin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScoreHistogram {
    pos: Vec<u64>,
    neg: Vec<u64>,
}

impl Default for ScoreHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl ScoreHistogram {
    /// An empty histogram with [`DEFAULT_BINS`] bins.
    pub fn new() -> Self {
        Self {
            pos: vec![0; DEFAULT_BINS],
            neg: vec![0; DEFAULT_BINS],
        }
    }

    /// An empty histogram with `bins` bins over [0, 1].
    pub fn with_bins(bins: usize) -> Result<Self> {
        if bins == 0 {
            return Err(Error::usage(
                "a score histogram needs at least one bin",
                "give a positive number of bins",
            ));
        }
        Ok(Self {
            pos: vec![0; bins],
            neg: vec![0; bins],
        })
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.pos.len()
    }

    /// Bin of a score: scores are clamped to [0, 1], bin `i` holds [i/n, (i+1)/n) and the
    /// last bin also holds 1. NaN goes to the lowest bin.
    fn bin(&self, score: f32) -> usize {
        let n = self.pos.len();
        let s = f64::from(score).clamp(0.0, 1.0);
        // `as usize` maps NaN to 0.
        ((s * n as f64) as usize).min(n - 1)
    }

    /// Counts one point.
    pub fn add(&mut self, score: f32, positive: bool) {
        let b = self.bin(score);
        if positive {
            self.pos[b] += 1;
        } else {
            self.neg[b] += 1;
        }
    }

    /// Counts many points.
    ///
    /// # Panics
    /// When `scores` and `positives` differ in length.
    pub fn add_all(&mut self, scores: &[f32], positives: &[bool]) {
        assert_eq!(
            scores.len(),
            positives.len(),
            "scores and positives must have the same length"
        );
        for (&s, &p) in scores.iter().zip(positives) {
            self.add(s, p);
        }
    }

    /// Adds the counts of `other` (same number of bins) to this histogram.
    pub fn merge(&mut self, other: &ScoreHistogram) -> Result<()> {
        if other.bins() != self.bins() {
            return Err(Error::usage(
                format!(
                    "cannot merge score histograms of {} and {} bins",
                    self.bins(),
                    other.bins()
                ),
                "build both histograms with the same number of bins",
            ));
        }
        for (a, b) in self.pos.iter_mut().zip(&other.pos) {
            *a += b;
        }
        for (a, b) in self.neg.iter_mut().zip(&other.neg) {
            *a += b;
        }
        Ok(())
    }

    /// Number of positive points counted.
    pub fn positives(&self) -> u64 {
        self.pos.iter().sum()
    }

    /// Number of negative points counted.
    pub fn negatives(&self) -> u64 {
        self.neg.iter().sum()
    }

    fn groups(&self) -> impl DoubleEndedIterator<Item = Group> + Clone + '_ {
        self.pos
            .iter()
            .zip(&self.neg)
            .map(|(&pos, &neg)| Group { pos, neg })
    }

    /// Approximate auROC (see [`auroc`]); `None` when either class is absent.
    pub fn auroc(&self) -> Option<f64> {
        auroc_of_groups(self.groups())
    }

    /// Approximate auPRC as average precision (see [`auprc`]); `None` without positives.
    pub fn auprc(&self) -> Option<f64> {
        auprc_of_groups(self.groups().rev())
    }
}

/// Counts of (predicted, actual) class pairs for `n_classes` classes.
///
/// Rows are actual classes, columns predicted ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfusionMatrix {
    n_classes: usize,
    /// `counts[actual * n_classes + predicted]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix for `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            counts: vec![0; n_classes * n_classes],
        }
    }

    /// A matrix counted from `(predicted, actual)` pairs; an error when a class index is out
    /// of range.
    pub fn from_pairs(
        n_classes: usize,
        pairs: impl IntoIterator<Item = (usize, usize)>,
    ) -> Result<Self> {
        let mut m = Self::new(n_classes);
        for (p, a) in pairs {
            m.try_add(p, a)?;
        }
        Ok(m)
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Counts one prediction.
    ///
    /// # Panics
    /// When `predicted` or `actual` is not below `n_classes` (a caller's bug: class indices
    /// come from labels already checked against the class list); see [`Self::try_add`].
    pub fn add(&mut self, predicted: usize, actual: usize) {
        assert!(
            predicted < self.n_classes && actual < self.n_classes,
            "class index ({predicted}, {actual}) out of range for {} classes",
            self.n_classes
        );
        self.counts[actual * self.n_classes + predicted] += 1;
    }

    /// Counts one prediction; an error when a class index is out of range.
    pub fn try_add(&mut self, predicted: usize, actual: usize) -> Result<()> {
        if predicted >= self.n_classes || actual >= self.n_classes {
            return Err(Error::usage(
                format!(
                    "class index (predicted {predicted}, actual {actual}) out of range for {} classes",
                    self.n_classes
                ),
                "use class indices below the number of classes",
            ));
        }
        self.counts[actual * self.n_classes + predicted] += 1;
        Ok(())
    }

    /// Adds the counts of `other` (same number of classes).
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.n_classes != self.n_classes {
            return Err(Error::usage(
                format!(
                    "cannot merge confusion matrices of {} and {} classes",
                    self.n_classes, other.n_classes
                ),
                "count both with the same classes",
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// Number of points of class `actual` predicted as `predicted` (0 when out of range).
    pub fn count(&self, predicted: usize, actual: usize) -> u64 {
        if predicted >= self.n_classes || actual >= self.n_classes {
            return 0;
        }
        self.counts[actual * self.n_classes + predicted]
    }

    /// Number of points counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Points of class `class` (row sum).
    fn actual_total(&self, class: usize) -> u64 {
        (0..self.n_classes).map(|p| self.count(p, class)).sum()
    }

    /// Points predicted as `class` (column sum).
    fn predicted_total(&self, class: usize) -> u64 {
        (0..self.n_classes).map(|a| self.count(class, a)).sum()
    }

    fn correct(&self) -> u64 {
        (0..self.n_classes).map(|c| self.count(c, c)).sum()
    }

    /// Fraction predicted correctly (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            return 0.0;
        }
        self.correct() as f64 / n as f64
    }

    /// Matthews correlation coefficient, multi-class (Gorodkin 2004, R_K):
    ///
    /// MCC = (c·s − Σ_k p_k·t_k) / √((s² − Σ_k p_k²) · (s² − Σ_k t_k²)),
    ///
    /// with c the correct predictions, s the total, p_k the predictions of class k and t_k
    /// its true occurrences. Equals the binary MCC for two classes; 0 when undefined (a
    /// zero denominator: one class predicted or present only).
    pub fn mcc(&self) -> f64 {
        let s = self.total() as f64;
        let c = self.correct() as f64;
        let (mut pt, mut pp, mut tt) = (0.0f64, 0.0f64, 0.0f64);
        for k in 0..self.n_classes {
            let p = self.predicted_total(k) as f64;
            let t = self.actual_total(k) as f64;
            pt += p * t;
            pp += p * p;
            tt += t * t;
        }
        let den = ((s * s - pp) * (s * s - tt)).sqrt();
        if den == 0.0 || !den.is_finite() {
            return 0.0;
        }
        (c * s - pt) / den
    }

    /// Binary MCC of `positive_class` against all others (one-vs-rest); 0 when undefined.
    pub fn binary_mcc(&self, positive_class: usize) -> f64 {
        let (tp, fp, fn_, tn) = self.one_vs_rest(positive_class);
        let (tp, fp, fn_, tn) = (tp as f64, fp as f64, fn_ as f64, tn as f64);
        let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
        if den == 0.0 || !den.is_finite() {
            return 0.0;
        }
        (tp * tn - fp * fn_) / den
    }

    /// (TP, FP, FN, TN) of `class` against all others.
    fn one_vs_rest(&self, class: usize) -> (u64, u64, u64, u64) {
        let tp = self.count(class, class);
        let fp = self.predicted_total(class) - tp;
        let fn_ = self.actual_total(class) - tp;
        let tn = self.total() - tp - fp - fn_;
        (tp, fp, fn_, tn)
    }

    /// Precision of `class`: TP / (TP + FP); 0 when it is never predicted.
    pub fn precision(&self, class: usize) -> f64 {
        let (tp, fp, _, _) = self.one_vs_rest(class);
        ratio(tp, tp + fp)
    }

    /// Recall of `class`: TP / (TP + FN); 0 when it never occurs.
    pub fn recall(&self, class: usize) -> f64 {
        let (tp, _, fn_, _) = self.one_vs_rest(class);
        ratio(tp, tp + fn_)
    }

    /// F1 of `class`: 2·TP / (2·TP + FP + FN); 0 when the class is neither predicted nor
    /// present.
    pub fn f1(&self, class: usize) -> f64 {
        let (tp, fp, fn_, _) = self.one_vs_rest(class);
        ratio(2 * tp, 2 * tp + fp + fn_)
    }

    /// Unweighted mean of [`Self::f1`] over all `n_classes` classes (0 without classes).
    pub fn macro_f1(&self) -> f64 {
        if self.n_classes == 0 {
            return 0.0;
        }
        (0..self.n_classes).map(|c| self.f1(c)).sum::<f64>() / self.n_classes as f64
    }

    /// `accuracy`, `mcc` and `f1` (macro) as [`Metrics`].
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        m.insert("accuracy".into(), self.accuracy());
        m.insert("mcc".into(), self.mcc());
        m.insert("f1".into(), self.macro_f1());
        m
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auroc_matches_hand_count() {
        // Positives 0.35, 0.8; negatives 0.1, 0.4. Pairs: (0.35>0.1) yes, (0.35>0.4) no,
        // (0.8>0.1) yes, (0.8>0.4) yes -> 3/4.
        let a = auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!(close(a, 0.75), "{a}");
        // Perfect and reversed.
        assert!(close(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]).unwrap(),
            1.0
        ));
        assert!(close(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]).unwrap(),
            0.0
        ));
    }

    #[test]
    fn auroc_counts_ties_half() {
        // All tied: 0.5.
        assert!(close(
            auroc(&[0.5; 4], &[true, false, true, false]).unwrap(),
            0.5
        ));
        // Pos {0.5, 0.9}, neg {0.5, 0.1}: pairs (0.5,0.5)=0.5, (0.5,0.1)=1, (0.9,*)=2 -> 3.5/4.
        let a = auroc(&[0.5, 0.9, 0.5, 0.1], &[true, true, false, false]).unwrap();
        assert!(close(a, 0.875), "{a}");
    }

    #[test]
    fn auroc_none_without_a_class() {
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auroc(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(auroc(&[], &[]), None);
    }

    #[test]
    fn auprc_matches_hand_computation() {
        // Descending: 0.9 P, 0.8 N, 0.7 P, 0.1 N. Thresholds with new positives:
        // 0.9: P=1/1, dR=1/2; 0.7: P=2/3, dR=1/2 -> AP = 0.5 + 1/3.
        let ap = auprc(&[0.1, 0.7, 0.8, 0.9], &[false, true, false, true]).unwrap();
        assert!(close(ap, 0.5 + 1.0 / 3.0), "{ap}");
        assert!(close(auprc(&[0.2, 0.9], &[false, true]).unwrap(), 1.0));
        assert_eq!(auprc(&[0.2, 0.9], &[false, false]), None);
        assert!(close(auprc(&[0.2, 0.9], &[true, true]).unwrap(), 1.0));
    }

    #[test]
    fn auprc_groups_ties() {
        // 0.9 P; then a tie at 0.5 of one P and one N (entering together); then 0.1 N.
        // 0.9: P=1, dR=1/2; 0.5: tp=2, fp=1, P=2/3, dR=1/2 -> 0.5 + 1/3, whatever the
        // order of the tied points in the input.
        for (s, p) in [
            ([0.9, 0.5, 0.5, 0.1], [true, true, false, false]),
            ([0.9, 0.5, 0.5, 0.1], [true, false, true, false]),
        ] {
            let ap = auprc(&s, &p).unwrap();
            assert!(close(ap, 0.5 + 1.0 / 3.0), "{ap}");
        }
        // All tied: AP = prevalence.
        assert!(close(
            auprc(&[0.3; 4], &[true, false, false, false]).unwrap(),
            0.25
        ));
    }

    #[test]
    fn histogram_equals_exact_on_quantised_scores() {
        // Scores on bin centres of 10 bins: the histogram is exact.
        let scores: Vec<f32> = (0..200)
            .map(|i| ((i * 7919) % 10) as f32 / 10.0 + 0.05)
            .collect();
        let pos: Vec<bool> = (0..200)
            .map(|i| (i * 31 + (i * 7919) % 10) % 3 == 0)
            .collect();
        let mut h = ScoreHistogram::with_bins(10).unwrap();
        h.add_all(&scores, &pos);
        assert_eq!(h.positives() + h.negatives(), 200);
        let (ea, ep) = (auroc(&scores, &pos).unwrap(), auprc(&scores, &pos).unwrap());
        assert!(close(h.auroc().unwrap(), ea), "{:?} vs {ea}", h.auroc());
        assert!(close(h.auprc().unwrap(), ep), "{:?} vs {ep}", h.auprc());
    }

    #[test]
    fn histogram_hand_values_and_merge() {
        let mut a = ScoreHistogram::new();
        a.add(0.1, false);
        a.add(0.4, false);
        let mut b = ScoreHistogram::new();
        b.add(0.35, true);
        b.add(0.8, true);
        assert_eq!(b.auroc(), None);
        a.merge(&b).unwrap();
        assert!(close(a.auroc().unwrap(), 0.75));
        // Descending 0.8 P, 0.4 N, 0.35 P, 0.1 N: AP = 1/2·1 + 1/2·2/3.
        assert!(close(a.auprc().unwrap(), 0.5 + 1.0 / 3.0));
        // Out-of-range scores clamp into the end bins; 1.0 is in the last bin.
        let mut c = ScoreHistogram::with_bins(4).unwrap();
        c.add(-3.0, false);
        c.add(1.0, true);
        c.add(7.0, true);
        c.add(f32::NAN, false);
        assert_eq!(c.pos, vec![0, 0, 0, 2]);
        assert_eq!(c.neg, vec![2, 0, 0, 0]);
        assert!(a.merge(&c).is_err());
        assert!(ScoreHistogram::with_bins(0).is_err());
    }

    #[test]
    fn confusion_binary_metrics() {
        // actual 1 predicted 1: 6 (TP); actual 0 predicted 1: 2 (FP);
        // actual 1 predicted 0: 1 (FN); actual 0 predicted 0: 11 (TN).
        let mut pairs = Vec::new();
        pairs.extend(std::iter::repeat_n((1, 1), 6));
        pairs.extend(std::iter::repeat_n((1, 0), 2));
        pairs.extend(std::iter::repeat_n((0, 1), 1));
        pairs.extend(std::iter::repeat_n((0, 0), 11));
        let m = ConfusionMatrix::from_pairs(2, pairs).unwrap();
        assert_eq!(m.total(), 20);
        assert!(close(m.accuracy(), 17.0 / 20.0));
        // MCC = (6·11 − 2·1) / √(8·7·13·12) = 64 / √8736.
        let expect = 64.0 / 8736f64.sqrt();
        assert!(close(m.binary_mcc(1), expect), "{}", m.binary_mcc(1));
        assert!(close(m.mcc(), expect), "{}", m.mcc());
        // Binary MCC is symmetric in the choice of positive class.
        assert!(close(m.binary_mcc(0), expect));
        // F1(1) = 12 / (12 + 2 + 1); F1(0) = 22 / (22 + 1 + 2).
        assert!(close(m.f1(1), 12.0 / 15.0));
        assert!(close(m.f1(0), 22.0 / 25.0));
        assert!(close(m.macro_f1(), (12.0 / 15.0 + 22.0 / 25.0) / 2.0));
        assert!(close(m.precision(1), 6.0 / 8.0));
        assert!(close(m.recall(1), 6.0 / 7.0));
        let metrics = m.metrics();
        assert!(close(metrics["accuracy"], 0.85));
        let json = serde_json::to_string(&metrics).unwrap();
        let back: Metrics = serde_json::from_str(&json).unwrap();
        assert_eq!(back, metrics);
    }

    #[test]
    fn confusion_multiclass_mcc() {
        // Rows actual, columns predicted:
        //   [[3, 1, 0],
        //    [0, 2, 2],
        //    [1, 0, 1]]
        // s = 10, c = 6, t = (4, 4, 2), p = (4, 3, 3).
        // num = 6·10 − (16 + 12 + 6) = 26; den = √((100 − 34)(100 − 36)) = √(66·64).
        let rows = [[3usize, 1, 0], [0, 2, 2], [1, 0, 1]];
        let mut m = ConfusionMatrix::new(3);
        for (a, row) in rows.iter().enumerate() {
            for (p, &n) in row.iter().enumerate() {
                for _ in 0..n {
                    m.add(p, a);
                }
            }
        }
        assert_eq!(m.count(1, 0), 1);
        assert!(close(m.accuracy(), 0.6));
        let expect = 26.0 / (66.0f64 * 64.0).sqrt();
        assert!(close(m.mcc(), expect), "{}", m.mcc());
        // F1: class 0: 6/(6+1+1); class 1: 4/(4+1+2); class 2: 2/(2+2+1).
        let f = [6.0 / 8.0, 4.0 / 7.0, 2.0 / 5.0];
        for (c, &v) in f.iter().enumerate() {
            assert!(close(m.f1(c), v), "class {c}: {}", m.f1(c));
        }
        assert!(close(m.macro_f1(), f.iter().sum::<f64>() / 3.0));
        // Class 2 vs rest: TP 1, FP 2, FN 1, TN 6 -> (6 − 2) / √(3·2·8·7).
        assert!(close(m.binary_mcc(2), 4.0 / 336f64.sqrt()));
    }

    #[test]
    fn confusion_undefined_cases() {
        let empty = ConfusionMatrix::new(2);
        assert_eq!(empty.accuracy(), 0.0);
        assert_eq!(empty.mcc(), 0.0);
        assert_eq!(empty.macro_f1(), 0.0);
        // Everything predicted as one class: MCC undefined -> 0.
        let m = ConfusionMatrix::from_pairs(2, [(0, 0), (0, 1), (0, 0)]).unwrap();
        assert_eq!(m.mcc(), 0.0);
        assert_eq!(m.binary_mcc(1), 0.0);
        assert_eq!(m.f1(1), 0.0);
        assert!(ConfusionMatrix::from_pairs(2, [(2, 0)]).is_err());
        let mut a = ConfusionMatrix::new(2);
        assert!(a.merge(&ConfusionMatrix::new(3)).is_err());
        a.merge(&m).unwrap();
        assert_eq!(a.total(), 3);
    }
}
