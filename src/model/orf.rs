//! Open-reading-frame features: per base, the lengths of the stop-to-stop stretches that
//! contain it in each of the six reading frames.
//!
//! A protein-coding gene is a long stretch without an in-frame stop codon, in every genome
//! (bacterial code: TAA, TAG, TGA). A Mamba block, whose state decays along real, diagonal
//! dynamics, has no way to keep three reading frames apart, so per-position heads can take
//! these lengths as extra inputs (`HeadConfig::orf_features`): they are the one cue about
//! gene structure that does not depend on a genome's base composition.
//!
//! For every strand and frame the record is cut at the stop codons of that frame; a stop
//! codon belongs to the stretch it ends (the one before it in reading direction). Each base
//! gets, per frame, `ln(1 + length in bases) / 10` of its stretch; the six values are sorted
//! from longest to shortest, so the features do not depend on which frame or strand a gene
//! is on, and the reverse complement of a record gets the mirrored features. N and other
//! non-ACGT tokens are never part of a stop codon. Stretches cut by a record's ends are
//! measured to the end.

use crate::alphabet::{A, C, G, T};

/// Number of features per base.
pub const ORF_FEATURES: usize = 6;

/// Scale of the features: `ln(1 + length) / ORF_SCALE` (a 3 kb stretch gives 0.8).
const ORF_SCALE: f32 = 10.0;

fn forward_stop(t: &[u8]) -> bool {
    matches!((t[0], t[1], t[2]), (x, y, z) if x == T && ((y == A && (z == A || z == G)) || (y == G && z == A)))
}

fn reverse_stop(t: &[u8]) -> bool {
    // Reverse complements of TAA, TAG, TGA read on the forward strand: TTA, CTA, TCA.
    matches!((t[0], t[1], t[2]), (x, y, z) if z == A && ((y == T && (x == T || x == C)) || (x == T && y == C)))
}

/// Features of a record of tokens: `[len][ORF_FEATURES]`, row-major (24 bytes per base; see
/// [`OrfIndex`] to compute them for a stretch at a time instead).
pub fn orf_features(tokens: &[u8]) -> Vec<f32> {
    let index = OrfIndex::new(tokens);
    let mut out = Vec::with_capacity(tokens.len() * ORF_FEATURES);
    index.extend(0, tokens.len(), &mut out);
    out
}

/// The stretch borders of one strand and frame: 0, every cut, `n` (ascending).
fn borders(tokens: &[u8], reverse: bool, frame: usize) -> Vec<usize> {
    let n = tokens.len();
    let mut out = vec![0];
    for p in (frame..n.saturating_sub(2)).step_by(3) {
        let c = &tokens[p..p + 3];
        let stop = if reverse {
            reverse_stop(c)
        } else {
            forward_stop(c)
        };
        if stop {
            // Forward stretches end after their stop codon, reverse ones (read right to
            // left) begin with theirs.
            let b = if reverse { p } else { p + 3 };
            if b > 0 && b < n {
                out.push(b);
            }
        }
    }
    out.push(n);
    out.shrink_to_fit();
    out
}

/// A record's stretch borders in each strand and frame: one word per stop codon (a stop
/// codon comes about every 64 bases of random sequence in each of six frames, so about
/// 0.8 bytes per base), from which the features of any stretch of positions are computed
/// when needed. Training keeps one per record instead of the 24 bytes per base of
/// [`orf_features`].
#[derive(Debug, Clone)]
pub struct OrfIndex {
    borders: [Vec<usize>; ORF_FEATURES],
    len: usize,
}

impl OrfIndex {
    /// Finds the stop codons of `tokens` in all six frames.
    pub fn new(tokens: &[u8]) -> Self {
        let borders = std::array::from_fn(|i| borders(tokens, i >= 3, i % 3));
        OrfIndex {
            borders,
            len: tokens.len(),
        }
    }

    /// The record's length in bases.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the record is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The features of positions `start..end` (clamped to the record), in order, one row of
    /// [`ORF_FEATURES`] values per position.
    pub fn rows(&self, start: usize, end: usize) -> impl Iterator<Item = [f32; ORF_FEATURES]> + '_ {
        let end = end.min(self.len);
        let start = start.min(end);
        // Per strand and frame, the index of the stretch holding `start`: the last border at
        // or before it.
        let mut at: [usize; ORF_FEATURES] = std::array::from_fn(|i| {
            self.borders[i]
                .partition_point(|&b| b <= start)
                .saturating_sub(1)
        });
        (start..end).map(move |pos| {
            let mut row = [0.0f32; ORF_FEATURES];
            for ((slot, b), k) in row.iter_mut().zip(&self.borders).zip(at.iter_mut()) {
                while b[*k + 1] <= pos {
                    *k += 1;
                }
                *slot = (1.0 + (b[*k + 1] - b[*k]) as f32).ln() / ORF_SCALE;
            }
            row.sort_by(|x, y| y.total_cmp(x));
            row
        })
    }

    /// Appends the features of positions `start..end` to `out` (row-major).
    pub fn extend(&self, start: usize, end: usize, out: &mut Vec<f32>) {
        out.reserve(end.min(self.len).saturating_sub(start) * ORF_FEATURES);
        for row in self.rows(start, end) {
            out.extend_from_slice(&row);
        }
    }
}

/// Hands the features of `tokens` to `sink` in consecutive blocks of up to `block` positions
/// (`sink(start, features of start..start + k)`), holding only the stretch borders (one word
/// per stop codon) and one block.
pub fn orf_feature_blocks(tokens: &[u8], block: usize, sink: &mut dyn FnMut(usize, &[f32])) {
    let index = OrfIndex::new(tokens);
    let block = block.max(1);
    let mut buf = Vec::with_capacity(block.min(tokens.len()) * ORF_FEATURES);
    let mut start = 0;
    while start < tokens.len() {
        let end = (start + block).min(tokens.len());
        buf.clear();
        index.extend(start, end, &mut buf);
        sink(start, &buf);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alphabet::{reverse_complement_tokens, tokenize};

    /// `len` pseudo-random letters drawn from `letters` (stop-codon-rich on purpose).
    fn dna(len: usize, seed: u32, letters: &[u8; 8]) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                letters[(x >> 16) as usize % 8]
            })
            .collect()
    }

    fn len_of(v: f32) -> f32 {
        (v * ORF_SCALE).exp() - 1.0
    }

    #[test]
    fn a_gene_is_one_long_stretch() {
        // ATG + 99 sense codons + TAA, flanked by stops in every frame on both strands.
        let flank = "TAATAGTGATTATCATCTA";
        let mut s = String::from(flank);
        s.push_str("ATG");
        for i in 0..99 {
            s.push_str(["GCT", "GAA", "CGC", "AAA"][i % 4]);
        }
        s.push_str("TAA");
        s.push_str(flank);
        let t = tokenize(s.as_bytes()).unwrap();
        let f = orf_features(&t);
        let start = flank.len();
        // Inside the gene the longest stretch covers at least the whole gene (303 bases with
        // its stop codon).
        let mid = start + 150;
        let longest = len_of(f[mid * ORF_FEATURES]);
        assert!(
            (303.0..=s.len() as f32 + 0.5).contains(&longest),
            "{longest}"
        );
        // Sorted, longest first.
        for row in f.chunks_exact(ORF_FEATURES) {
            assert!(row.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    /// Stretch length of base `i` in one strand and frame, by walking out from the base.
    fn brute(s: &[u8], i: usize, reverse: bool, frame: usize) -> usize {
        let n = s.len();
        let is_stop = |p: usize| {
            p + 3 <= n && p % 3 == frame % 3 && {
                let w = std::str::from_utf8(&s[p..p + 3]).unwrap();
                if reverse {
                    ["TTA", "CTA", "TCA"].contains(&w)
                } else {
                    ["TAA", "TAG", "TGA"].contains(&w)
                }
            }
        };
        // A stop codon starting at p closes the stretch [.., p + 3) forward and opens
        // [p, ..) in reverse.
        let cut = |b: usize| -> bool {
            if reverse {
                is_stop(b)
            } else {
                b >= 3 && is_stop(b - 3)
            }
        };
        let mut a = i;
        while a > 0 && !cut(a) {
            a -= 1;
        }
        let mut b = i + 1;
        while b < n && !cut(b) {
            b += 1;
        }
        b - a
    }

    #[test]
    fn matches_a_base_by_base_walk() {
        let s = dna(400, 99, b"ACGTTAAN");
        let f = orf_features(&tokenize(&s).unwrap());
        for i in 0..s.len() {
            let mut want: Vec<f32> = [false, true]
                .iter()
                .flat_map(|&r| (0..3).map(move |fr| (r, fr)))
                .map(|(r, fr)| (1.0 + brute(&s, i, r, fr) as f32).ln() / ORF_SCALE)
                .collect();
            want.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(
                &f[i * ORF_FEATURES..(i + 1) * ORF_FEATURES],
                &want[..],
                "base {i}"
            );
        }
    }

    #[test]
    fn reverse_complement_mirrors_the_features() {
        for len in [0usize, 1, 2, 3, 5, 100, 301, 1000] {
            let s = dna(len, 7 + len as u32, b"ACGTTAGN");
            let t = tokenize(&s).unwrap();
            let f = orf_features(&t);
            let r = orf_features(&reverse_complement_tokens(&t));
            assert_eq!(f.len(), len * ORF_FEATURES);
            for i in 0..len {
                let j = len - 1 - i;
                assert_eq!(
                    &f[i * ORF_FEATURES..(i + 1) * ORF_FEATURES],
                    &r[j * ORF_FEATURES..(j + 1) * ORF_FEATURES],
                    "len {len} base {i}"
                );
            }
        }
    }

    #[test]
    fn blocks_give_the_whole_record() {
        let s = dna(1000, 3, b"ACGTTAGA");
        let t = tokenize(&s).unwrap();
        let whole = orf_features(&t);
        for block in [1, 7, 64, 999, 1000, 5000] {
            let mut got = Vec::new();
            let mut next = 0;
            orf_feature_blocks(&t, block, &mut |start, f| {
                assert_eq!(start, next);
                next += f.len() / ORF_FEATURES;
                got.extend_from_slice(f);
            });
            assert_eq!(got, whole, "block {block}");
        }
    }

    #[test]
    fn any_stretch_of_the_index_matches_the_whole_record() {
        for (len, seed) in [(0usize, 1u32), (1, 2), (4, 3), (999, 4), (2000, 5)] {
            let s = dna(len, seed, b"ACGTTAGA");
            let t = tokenize(&s).unwrap();
            let whole = orf_features(&t);
            let index = OrfIndex::new(&t);
            assert_eq!(index.len(), len);
            let cuts = [
                0,
                1,
                2,
                3,
                63,
                64,
                500,
                len / 2,
                len.saturating_sub(1),
                len,
                len + 5,
            ];
            for &a in &cuts {
                for &b in &cuts {
                    let mut got = Vec::new();
                    index.extend(a, b, &mut got);
                    let (a, b) = (a.min(len), b.min(len));
                    let want = if a < b {
                        &whole[a * ORF_FEATURES..b * ORF_FEATURES]
                    } else {
                        &[][..]
                    };
                    assert_eq!(got, want, "len {len} stretch {a}..{b}");
                }
            }
        }
    }

    #[test]
    fn no_stop_means_one_stretch_per_frame() {
        let t = tokenize(b"GGGGGGGGGGCCCCCCCCCC").unwrap();
        let f = orf_features(&t);
        assert!(f.iter().all(|&v| (len_of(v) - 20.0).abs() < 1e-3));
    }
}
