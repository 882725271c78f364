//! Streaming writers for per-position predictions: BED6 segments and run-length bedGraph.
//!
//! Both take positions in order (0-based, within one chromosome at a time) and write
//! 0-based half-open intervals, as BED and bedGraph define them. Rows come out sorted by
//! start within each chromosome, so `bedtools merge` accepts them unchanged.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

use crate::Result;
use crate::io::output::Output;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    start: u64,
    end: u64,
    label: usize,
    score: u32,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    start: u64,
    end: u64,
    sum: f64,
}

/// Merges consecutive positions whose class probability passes a threshold into BED6 rows
/// (`chrom start end label score strand`, strand `.` unless [`BedSegmenter::set_strand`] says
/// otherwise); score is the mean probability x 1000, rounded.
pub struct BedSegmenter {
    labels: Vec<String>,
    strand: char,
    emit: Vec<bool>,
    threshold: f32,
    chrom: String,
    open: Vec<Option<Open>>,
    done: BinaryHeap<Reverse<Row>>,
}

impl BedSegmenter {
    /// `emit[i]` says whether label `i` gets segments.
    pub fn new(labels: Vec<String>, emit: Vec<bool>, threshold: f32) -> Self {
        let n = labels.len();
        BedSegmenter {
            labels,
            strand: '.',
            emit,
            threshold,
            chrom: String::new(),
            open: vec![None; n],
            done: BinaryHeap::new(),
        }
    }

    /// Starts a new chromosome (flushing the previous one).
    pub fn start_chrom(&mut self, out: &mut Output, chrom: &str) -> Result<()> {
        self.finish(out)?;
        self.chrom = chrom.to_string();
        Ok(())
    }

    /// The strand column of the rows written from now on (`+`, `-` or `.`): call it after
    /// [`BedSegmenter::start_chrom`], which writes what is pending.
    pub fn set_strand(&mut self, strand: char) {
        self.strand = strand;
    }

    /// Feeds one position's probabilities (`probs.len()` = number of labels).
    pub fn push(&mut self, out: &mut Output, pos: u64, probs: &[f32]) -> Result<()> {
        for (i, &p) in probs.iter().enumerate() {
            if !self.emit.get(i).copied().unwrap_or(false) {
                continue;
            }
            let pass = p >= self.threshold;
            match (&mut self.open[i], pass) {
                (Some(o), true) if o.end == pos => {
                    o.end = pos + 1;
                    o.sum += p as f64;
                }
                (slot, true) => {
                    if let Some(o) = slot.take() {
                        self.done.push(Reverse(close(o, i)));
                    }
                    *slot = Some(Open {
                        start: pos,
                        end: pos + 1,
                        sum: p as f64,
                    });
                }
                (slot, false) => {
                    if let Some(o) = slot.take() {
                        self.done.push(Reverse(close(o, i)));
                    }
                }
            }
        }
        // Everything that starts before the earliest open segment can be written now.
        let min_open = self.open.iter().flatten().map(|o| o.start).min();
        while let Some(Reverse(r)) = self.done.peek() {
            if min_open.is_some_and(|m| r.start > m) {
                break;
            }
            let Some(Reverse(r)) = self.done.pop() else {
                break;
            };
            self.write_row(out, &r)?;
        }
        Ok(())
    }

    fn write_row(&self, out: &mut Output, r: &Row) -> Result<()> {
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            self.chrom, r.start, r.end, self.labels[r.label], r.score, self.strand
        );
        out.write_all(line.as_bytes())
    }

    /// Closes open segments and writes everything pending for the current chromosome.
    pub fn finish(&mut self, out: &mut Output) -> Result<()> {
        for i in 0..self.open.len() {
            if let Some(o) = self.open[i].take() {
                self.done.push(Reverse(close(o, i)));
            }
        }
        while let Some(Reverse(r)) = self.done.pop() {
            self.write_row(out, &r)?;
        }
        Ok(())
    }
}

fn close(o: Open, label: usize) -> Row {
    let mean = o.sum / (o.end - o.start) as f64;
    Row {
        start: o.start,
        end: o.end,
        label,
        score: (mean * 1000.0).round().clamp(0.0, 1000.0) as u32,
    }
}

/// Run-length bedGraph of one probability track: consecutive positions whose value, rounded
/// to `digits` decimals, is equal become one row.
pub struct BedGraphWriter {
    digits: usize,
    chrom: String,
    run: Option<(u64, u64, String)>,
}

impl BedGraphWriter {
    /// Values rounded to `digits` decimals.
    pub fn new(digits: usize) -> Self {
        BedGraphWriter {
            digits,
            chrom: String::new(),
            run: None,
        }
    }

    /// Starts a new chromosome (flushing the previous one).
    pub fn start_chrom(&mut self, out: &mut Output, chrom: &str) -> Result<()> {
        self.finish(out)?;
        self.chrom = chrom.to_string();
        Ok(())
    }

    /// Feeds one position's value.
    pub fn push(&mut self, out: &mut Output, pos: u64, value: f32) -> Result<()> {
        let v = format!("{:.*}", self.digits, value);
        match &mut self.run {
            Some((_, end, val)) if *end == pos && *val == v => *end = pos + 1,
            _ => {
                self.finish(out)?;
                self.run = Some((pos, pos + 1, v));
            }
        }
        Ok(())
    }

    /// Writes the pending run.
    pub fn finish(&mut self, out: &mut Output) -> Result<()> {
        if let Some((s, e, v)) = self.run.take() {
            writeln!(out, "{}\t{s}\t{e}\t{v}", self.chrom)
                .map_err(|e| crate::Error::io(out.dest().to_string(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_bed(probs: &[[f32; 3]], thr: f32) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.bed");
        let mut out = Output::create(p.to_str().unwrap()).unwrap();
        let labels = vec!["bg".to_string(), "a".into(), "b".into()];
        let mut s = BedSegmenter::new(labels, vec![false, true, true], thr);
        s.start_chrom(&mut out, "c").unwrap();
        for (i, pr) in probs.iter().enumerate() {
            s.push(&mut out, 100 + i as u64, pr).unwrap();
        }
        s.finish(&mut out).unwrap();
        out.commit().unwrap();
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn segments_merge_and_sort() {
        let probs = [
            [0.9, 0.1, 0.0],
            [0.2, 0.8, 0.0],
            [0.2, 0.6, 0.6],
            [0.1, 0.1, 0.8],
            [0.9, 0.0, 0.1],
            [0.0, 1.0, 0.0],
        ];
        let bed = run_bed(&probs, 0.5);
        assert_eq!(
            bed,
            "c\t101\t103\ta\t700\t.\nc\t102\t104\tb\t700\t.\nc\t105\t106\ta\t1000\t.\n"
        );
    }

    #[test]
    fn strand_column_follows_set_strand() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.bed");
        let mut out = Output::create(p.to_str().unwrap()).unwrap();
        let labels = vec!["bg".to_string(), "a".into()];
        let mut s = BedSegmenter::new(labels, vec![false, true], 0.5);
        s.start_chrom(&mut out, "c").unwrap();
        s.push(&mut out, 5, &[0.1, 0.9]).unwrap();
        s.push(&mut out, 6, &[0.3, 0.7]).unwrap();
        // Pending rows are written by start_chrom, before the strand changes.
        s.start_chrom(&mut out, "c").unwrap();
        s.set_strand('-');
        s.push(&mut out, 9, &[0.0, 1.0]).unwrap();
        s.finish(&mut out).unwrap();
        out.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "c\t5\t7\ta\t800\t.\nc\t9\t10\ta\t1000\t-\n"
        );
    }

    #[test]
    fn bedgraph_merges_equal_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.bg");
        let mut out = Output::create(p.to_str().unwrap()).unwrap();
        let mut g = BedGraphWriter::new(2);
        g.start_chrom(&mut out, "c").unwrap();
        for (i, v) in [0.5, 0.501, 0.7, 0.7, 0.2].iter().enumerate() {
            g.push(&mut out, i as u64, *v).unwrap();
        }
        g.start_chrom(&mut out, "d").unwrap();
        g.push(&mut out, 0, 0.1).unwrap();
        g.finish(&mut out).unwrap();
        out.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "c\t0\t2\t0.50\nc\t2\t4\t0.70\nc\t4\t5\t0.20\nd\t0\t1\t0.10\n"
        );
    }
}
