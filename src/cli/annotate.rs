//! `genomamba annotate`: per-position predictions as BED6 segments, bedGraph and TSV.

use clap::Args;

use genomamba::infer::run_batch_tensor;
use genomamba::io::output::Output;
use genomamba::io::segments::{BedGraphWriter, BedSegmenter};
use genomamba::model::HeadKind;
use genomamba::model::weights::host_values;
use genomamba::{Error, Result};

use super::classify::argmax;
use super::common::{InputArgs, progress, report_skipped};

/// Arguments of `annotate`.
#[derive(Debug, Args)]
pub struct AnnotateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// BED6 of merged segments whose class probability passes --threshold (every class but
    /// the first, which is the background).
    #[arg(long)]
    pub bed: Option<String>,
    /// Per-base probability of one class (--track), run-length merged.
    #[arg(long)]
    pub bedgraph: Option<String>,
    /// Per-position rows: chrom, 1-based position, label, p_<label> per class.
    #[arg(long)]
    pub tsv: Option<String>,
    /// Probability a position needs to join a BED segment.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Class whose probability goes to the bedGraph (default: the second class, or the only one).
    #[arg(long)]
    pub track: Option<String>,
    /// Decimals of bedGraph values (runs of equal rounded values merge).
    #[arg(long, default_value_t = 3)]
    pub digits: usize,
}

pub fn run(a: AnnotateArgs) -> Result<()> {
    if a.bed.is_none() && a.bedgraph.is_none() && a.tsv.is_none() {
        return Err(Error::usage(
            "annotate has no output",
            "give at least one of --bed FILE, --bedgraph FILE, --tsv FILE",
        ));
    }
    if !(0.0..=1.0).contains(&a.threshold) {
        return Err(Error::usage(
            format!("--threshold {} is not a probability", a.threshold),
            "use a value between 0 and 1",
        ));
    }
    let (device, model) = a.input.setup()?;
    let labels = match &model.config.head {
        Some(h) if h.kind == HeadKind::Position => h.labels.clone(),
        Some(_) => {
            return Err(Error::model(
                &a.input.model,
                "this model has a sequence head, not a per-position one",
                "use `genomamba classify` with it, or a model with a per-position head",
            ));
        }
        None => {
            return Err(Error::model(
                &a.input.model,
                "this model has no per-position head",
                "train one with `genomamba train`, or create one with `genomamba init --head position --labels background,X`",
            ));
        }
    };
    let n = labels.len();
    let track = match &a.track {
        Some(t) => labels.iter().position(|l| l == t).ok_or_else(|| {
            Error::usage(
                format!("--track '{t}' is not a class of this model"),
                format!("use one of: {}", labels.join(", ")),
            )
        })?,
        None => usize::from(n > 1),
    };
    let mut bed = a.bed.as_deref().map(Output::create).transpose()?;
    let mut bg = a.bedgraph.as_deref().map(Output::create).transpose()?;
    let mut tsv = a.tsv.as_deref().map(Output::create).transpose()?;
    if let Some(t) = &mut tsv {
        let mut h = String::from("chrom\tposition\tlabel");
        for l in &labels {
            h.push_str(&format!("\tp_{l}"));
        }
        h.push('\n');
        t.write_all(h.as_bytes())?;
    }
    let emit: Vec<bool> = (0..n).map(|i| i > 0 || n == 1).collect();
    let mut seg = BedSegmenter::new(labels.clone(), emit, a.threshold);
    let mut graph = BedGraphWriter::new(a.digits);
    let pb = progress(a.input.quiet, "annotate");
    let mut skipped = 0;
    let mut line = String::new();
    a.input.for_each_batch(&mut skipped, &mut |batch| {
        let seqs: Vec<&[u8]> = batch.iter().map(|r| r.tokens.as_slice()).collect();
        // Records of a multi-record batch all fit in one chunk, so chunks arrive record by
        // record for long records and all at once for short ones: output stays in order.
        let mut started = vec![false; batch.len()];
        run_batch_tensor(
            &model.backbone,
            &seqs,
            a.input.chunk_size,
            &device,
            &mut |start, hidden| {
                let [_, len, _] = hidden.dims();
                let probs = model
                    .head_probs(hidden)
                    .map(host_values)
                    .ok_or_else(|| Error::Runtime("model head vanished".into()))?;
                for (b, rec) in batch.iter().enumerate() {
                    if !started[b] {
                        started[b] = true;
                        if let Some(o) = &mut bed {
                            seg.start_chrom(o, &rec.chrom)?;
                        }
                        if let Some(o) = &mut bg {
                            graph.start_chrom(o, &rec.chrom)?;
                        }
                    }
                    let valid = seqs[b].len().saturating_sub(start).min(len);
                    for t in 0..valid {
                        let p = &probs[(b * len + t) * n..(b * len + t + 1) * n];
                        let pos = rec.offset + (start + t) as u64;
                        if let Some(o) = &mut bed {
                            seg.push(o, pos, p)?;
                        }
                        if let Some(o) = &mut bg {
                            graph.push(o, pos, p[track])?;
                        }
                        if let Some(o) = &mut tsv {
                            use std::fmt::Write;
                            line.clear();
                            let _ =
                                write!(line, "{}\t{}\t{}", rec.chrom, pos + 1, labels[argmax(p)]);
                            for v in p {
                                let _ = write!(line, "\t{v:.4}");
                            }
                            line.push('\n');
                            o.write_all(line.as_bytes())?;
                        }
                    }
                    if start + len >= seqs[b].len() {
                        if let Some(o) = &mut bed {
                            seg.finish(o)?;
                        }
                        if let Some(o) = &mut bg {
                            graph.finish(o)?;
                        }
                    }
                }
                pb.inc((len * seqs.len()) as u64);
                Ok(())
            },
        )
    })?;
    for o in [bed, bg, tsv].into_iter().flatten() {
        o.commit()?;
    }
    pb.finish_and_clear();
    report_skipped(skipped, a.input.quiet);
    Ok(())
}
