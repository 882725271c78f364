//! `genomamba annotate`: per-position predictions as BED6 segments, bedGraph and TSV.

use clap::Args;

use genomamba::io::fastx::RecordMeta;
use genomamba::io::output::Output;
use genomamba::io::segments::{BedGraphWriter, BedSegmenter};
use genomamba::model::orf::{ORF_FEATURES, orf_feature_blocks};
use genomamba::model::{HeadKind, HostHead, softmax_in_place};
use genomamba::train::trainer::Strands;
use genomamba::{Error, Result};

use super::classify::argmax;
use super::common::{
    InputArgs, RecordSink, RegionItem, check_finite, check_some_records, report_skipped,
};

/// The most decimals `--digits` gives (an f32 holds about 7 significant digits).
const MAX_DIGITS: usize = 9;

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
    /// Probability a position needs to join a BED segment (default 0.5).
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// Class whose probability goes to the bedGraph (default: the second class, which follows
    /// `background` in heads that `train` makes).
    #[arg(long)]
    pub track: Option<String>,
    /// Decimals of bedGraph values (runs of equal rounded values merge; default 3) and of
    /// the TSV's probabilities (default 4).
    #[arg(long)]
    pub digits: Option<usize>,
}

pub fn run(a: AnnotateArgs) -> Result<()> {
    if a.bed.is_none() && a.bedgraph.is_none() && a.tsv.is_none() {
        return Err(Error::usage(
            "annotate has no output",
            "give at least one of --bed FILE, --bedgraph FILE, --tsv FILE",
        ));
    }
    if a.track.is_some() && a.bedgraph.is_none() {
        return Err(Error::usage(
            "--track chooses the class of the bedGraph, and no --bedgraph was given",
            "add --bedgraph FILE, or drop --track",
        ));
    }
    if a.threshold.is_some() && a.bed.is_none() {
        return Err(Error::usage(
            "--threshold chooses the segments of the BED, and no --bed was given",
            "add --bed FILE, or drop --threshold",
        ));
    }
    if a.digits.is_some() && a.bedgraph.is_none() && a.tsv.is_none() {
        return Err(Error::usage(
            "--digits sets the decimals of the bedGraph and the TSV, and neither was given",
            "add --bedgraph FILE or --tsv FILE, or drop --digits",
        ));
    }
    let threshold = a.threshold.unwrap_or(0.5);
    if let Some(digits) = a.digits
        && digits > MAX_DIGITS
    {
        return Err(Error::usage(
            format!("--digits {digits} is more than an f32 probability holds"),
            format!("use at most {MAX_DIGITS}"),
        ));
    }
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Error::usage(
            format!("--threshold {threshold} is not a probability"),
            "use a value between 0 and 1",
        ));
    }
    let outputs = [
        ("--bed", &a.bed),
        ("--bedgraph", &a.bedgraph),
        ("--tsv", &a.tsv),
    ];
    let outputs: Vec<(&str, &str)> = outputs
        .iter()
        .filter_map(|(flag, path)| path.as_deref().map(|p| (*flag, p)))
        .collect();
    let (device, model) = a.input.setup(&outputs)?;
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
                "train one with `genomamba train`, or create one with `genomamba init -o DIR --head position --labels background,X`",
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
    // With --bed-strand, rows say which strand the model read (BED column 6, a TSV column).
    let stranded = a.input.bed_strand;
    let bed = a.bed.as_deref().map(Output::create).transpose()?;
    let bg = a.bedgraph.as_deref().map(Output::create).transpose()?;
    let mut tsv = a.tsv.as_deref().map(Output::create).transpose()?;
    // A closed stdout (`--bed - | head`) must not cost the other outputs (files, or a
    // device whose errors must still be seen).
    let outputs: Vec<&Output> = [&bed, &bg, &tsv].into_iter().flatten().collect();
    if outputs.len() > 1 {
        for o in outputs.iter().filter(|o| o.is_stream()) {
            o.keep_going_when_closed();
        }
    }
    if let Some(t) = &mut tsv {
        let mut h = String::from(if stranded {
            "chrom\tposition\tstrand\tlabel"
        } else {
            "chrom\tposition\tlabel"
        });
        for l in &labels {
            h.push_str(&format!("\tp_{l}"));
        }
        h.push('\n');
        t.write_all(h.as_bytes())?;
    }
    let emit: Vec<bool> = (0..n).map(|i| i > 0 || n == 1).collect();
    let head = model
        .host_head()
        .ok_or_else(|| Error::Runtime("the model's head has no weights".into()))?;
    let strands = Strands::of(model.config.head.as_ref());
    let rc = strands != Strands::Forward;
    let spool = spool_bytes();
    if !rc {
        check_spill_dir(a.input.regions()?, n, spool)?;
    }
    let pb = a.input.progress("annotate");
    let mut sink = AnnotateSink {
        head,
        labels: labels.clone(),
        track,
        bed: bed.map(|o| (o, BedSegmenter::new(labels.clone(), emit, threshold))),
        bg: bg.map(|o| (o, BedGraphWriter::new(a.digits.unwrap_or(3)))),
        tsv,
        tsv_digits: a.digits.unwrap_or(4),
        probs: vec![0.0; n],
        line: String::new(),
        rc,
        stranded,
        streaming: false,
        spool,
        logits: strands == Strands::AverageStates,
        orf: model.config.head.as_ref().is_some_and(|h| h.orf_features),
        header_warned: false,
    };
    let skipped = a.input.drive(&model, &device, &pb, &mut sink, rc)?;
    check_some_records(&skipped)?;
    let AnnotateSink { bed, bg, tsv, .. } = sink;
    let (bed, bg) = (bed.map(|(o, _)| o), bg.map(|(o, _)| o));
    Output::commit_all([bed, bg, tsv].into_iter().flatten().collect())?;
    pb.finish_and_clear();
    report_skipped(&skipped);
    Ok(())
}

/// Writes per-position predictions as they stream in.
struct AnnotateSink {
    head: HostHead,
    labels: Vec<String>,
    track: usize,
    bed: Option<(Output, BedSegmenter)>,
    bg: Option<(Output, BedGraphWriter)>,
    tsv: Option<Output>,
    /// Decimals of the TSV's probabilities.
    tsv_digits: usize,
    probs: Vec<f32>,
    line: String,
    /// Combine both strands (heads with `rc_average` or `bidirectional`).
    rc: bool,
    /// Rows name the strand read (`--bed-strand`).
    stranded: bool,
    /// A record is writing its rows as they arrive (see [`Record`]).
    streaming: bool,
    /// [`spool_bytes`].
    spool: usize,
    /// Buffer logits and average them (bidirectional heads), not probabilities.
    logits: bool,
    /// The head reads ORF features (bidirectional heads only).
    orf: bool,
    /// A record named like a BED header line was warned about (once a run).
    header_warned: bool,
}

/// A record's state while it runs.
///
/// Records run in batches, several at a time, with rows arriving chunk by chunk for each
/// record of the batch in turn; the BED and bedGraph writers follow one chromosome at a time.
/// So one record at a time (the first of a batch, or a long record) writes its rows as they
/// arrive, and the others hold theirs until they end, when the records end in order.
struct Record {
    /// This record writes its rows as they arrive (forward strand, one strand only).
    direct: bool,
    /// The rows held until the record ends, `n_labels` per position in the order read:
    /// probabilities (or logits, for bidirectional heads).
    held: Vec<f32>,
    /// The earlier rows of a region read on its minus strand (see [`Spill`]); `held` then
    /// has the latest.
    spill: Option<Spill>,
}

/// Rows of a region read on its minus strand, moved out of memory past [`spool_bytes`]: they
/// are written from the last row back, so they need no random access, and a temporary file
/// read back from its end keeps memory bounded.
struct Spill(std::fs::File);

/// Values converted and written at a time by [`Spill::push`] (256 KiB).
const SPILL_PIECE: usize = 1 << 16;

/// Bytes read back at a time by [`Spill::for_each_back`], at most.
const SPILL_READ: usize = 1 << 20;

/// What I/O errors on a [`Spill`] name.
const SPILL: &str = "a temporary file for a minus-strand region's rows";

/// The error for a [`Spill`] that cannot be made.
fn no_spill(e: std::io::Error) -> Error {
    Error::usage(
        format!(
            "cannot make {SPILL} in {}: {e}",
            std::env::temp_dir().display()
        ),
        "set TMPDIR to a directory you can write to",
    )
}

/// Makes, before any work, the temporary file that a minus-strand region long enough to
/// spill will need, so that an unwritable `TMPDIR` is refused at once rather than when that
/// region is reached (`n` values per position, `spool` bytes held in memory).
fn check_spill_dir(regions: &[RegionItem], n: usize, spool: usize) -> Result<()> {
    let spills = regions.iter().any(|item| {
        let len = item
            .region
            .end
            .map_or(0, |end| end.saturating_sub(item.region.start));
        item.reverse && len.saturating_mul(4 * n as u64) >= spool as u64
    });
    if spills {
        tempfile::tempfile().map_err(no_spill)?;
    }
    Ok(())
}

impl Spill {
    /// Moves `rows` (whole rows) to the end of the file, made at the first call.
    fn push(spill: &mut Option<Spill>, rows: &mut Vec<f32>) -> Result<()> {
        use std::io::Write;
        let file = match spill {
            Some(s) => &mut s.0,
            None => {
                &mut spill
                    .insert(Spill(tempfile::tempfile().map_err(no_spill)?))
                    .0
            }
        };
        // A piece at a time: a copy of all the rows would double what they hold.
        let mut bytes = Vec::with_capacity(SPILL_PIECE * 4);
        for piece in rows.chunks(SPILL_PIECE) {
            bytes.clear();
            bytes.extend(piece.iter().flat_map(|v| v.to_le_bytes()));
            file.write_all(&bytes).map_err(|e| Error::io(SPILL, e))?;
        }
        rows.clear();
        Ok(())
    }

    /// Calls `f` on each row of `n` values, from the last back, reading about `block` bytes
    /// at a time.
    fn for_each_back(
        &self,
        n: usize,
        block: usize,
        f: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let row_bytes = 4 * n as u64;
        let block = (block as u64 / row_bytes).max(1) * row_bytes;
        let mut end = self.0.metadata().map_err(|e| Error::io(SPILL, e))?.len();
        let (mut bytes, mut values) = (Vec::new(), Vec::new());
        while end > 0 {
            let start = end.saturating_sub(block);
            bytes.resize((end - start) as usize, 0);
            self.0
                .read_exact_at(&mut bytes, start)
                .map_err(|e| Error::io(SPILL, e))?;
            values.clear();
            values.extend(
                (bytes.chunks_exact(4)).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            for row in values.chunks_exact(n).rev() {
                f(row)?;
            }
            end = start;
        }
        Ok(())
    }
}

/// Bytes of held rows past which a minus-strand region's rows go to a [`Spill`]: 16 MiB, or
/// `GENOMAMBA_ANNOTATE_SPOOL` bytes (for tests).
fn spool_bytes() -> usize {
    genomamba::infer::env_count("GENOMAMBA_ANNOTATE_SPOOL", |b| b > 0).unwrap_or(16 << 20)
}

impl AnnotateSink {
    /// Points the BED and bedGraph writers at a record's chromosome and strand.
    fn start_record(&mut self, meta: &RecordMeta) -> Result<()> {
        if meta.chrom.is_empty() {
            return Err(Error::input(
                &meta.source,
                "the record has no name (its header is empty), and annotate's rows need one for their chromosome column",
                "name the record after its '>' or '@'",
            )
            .in_record(meta.label()));
        }
        if (self.bed.is_some() || self.bg.is_some())
            && !self.header_warned
            && genomamba::io::bed::skipped_by_bed_readers(&meta.chrom)
        {
            self.header_warned = true;
            super::warn(&format!(
                "{}: record '{}' starts like a BED header line ('#', 'track' or 'browser'), so bedtools and tabix skip its rows in the BED and bedGraph; rename the record to keep them",
                meta.source,
                genomamba::error::shorten(&meta.chrom, 60)
            ));
        }
        if let Some((o, seg)) = &mut self.bed {
            seg.start_chrom(o, &meta.chrom)?;
            if self.stranded {
                seg.set_strand(strand_of(meta));
            }
        }
        if let Some((o, g)) = &mut self.bg {
            g.start_chrom(o, &meta.chrom)?;
        }
        Ok(())
    }

    /// Writes the prediction `p` of chromosome position `pos` to every output.
    fn emit(&mut self, meta: &RecordMeta, pos: u64, p: &[f32]) -> Result<()> {
        use std::fmt::Write;
        // Checked as written: after both strands are combined, ORF features added and the
        // softmax taken, any of which can overflow.
        check_finite(p, meta, |_| Some(format!("{}:{}", meta.chrom, pos + 1)))?;
        if let Some((o, seg)) = &mut self.bed {
            seg.push(o, pos, p)?;
        }
        if let Some((o, g)) = &mut self.bg {
            g.push(o, pos, p[self.track])?;
        }
        if let Some(o) = &mut self.tsv {
            self.line.clear();
            let _ = write!(self.line, "{}\t{}", meta.chrom, pos + 1);
            if self.stranded {
                let _ = write!(self.line, "\t{}", strand_of(meta));
            }
            let _ = write!(self.line, "\t{}", self.labels[argmax(p)]);
            for v in p {
                let _ = write!(self.line, "\t{v:.*}", self.tsv_digits);
            }
            self.line.push('\n');
            o.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }
}

impl RecordSink for AnnotateSink {
    /// Rows are held (see [`Record`]) by records that wait for another to end, by records
    /// whose strands are combined (the forward strand's rows averaged with the reverse
    /// strand's), and by regions read on the minus strand (written from their last position
    /// back, so that rows stay in chromosome order).
    type Acc = Record;

    fn begin(&mut self, meta: &RecordMeta) -> Result<Record> {
        let direct = !self.streaming;
        if direct {
            self.streaming = true;
            self.start_record(meta)?;
        }
        Ok(Record {
            direct,
            held: Vec::new(),
            spill: None,
        })
    }

    fn rows(
        &mut self,
        acc: &mut Record,
        meta: &RecordMeta,
        start: usize,
        rows: &[f32],
        d: usize,
    ) -> Result<()> {
        let mut probs = std::mem::take(&mut self.probs);
        for (t, h) in rows.chunks_exact(d).enumerate() {
            self.head.values(h, &mut probs, self.logits);
            if self.rc || meta.minus_strand || !acc.direct {
                acc.held.extend_from_slice(&probs);
                // Held only to be written backwards: memory stays bounded.
                if meta.minus_strand && !self.rc && acc.held.len() * 4 >= self.spool {
                    Spill::push(&mut acc.spill, &mut acc.held)?;
                }
            } else {
                // BED coordinates are those of the chromosome (a region's offset added).
                self.emit(meta, meta.offset + (start + t) as u64, &probs)?;
            }
        }
        self.probs = probs;
        Ok(())
    }

    fn rows_rc(
        &mut self,
        acc: &mut Record,
        _: &RecordMeta,
        start: usize,
        rows: &[f32],
        d: usize,
    ) -> Result<()> {
        // Position j of the reverse complement is position len - 1 - j of the record.
        let n = self.labels.len();
        let acc = &mut acc.held;
        let len = acc.len() / n;
        let mut probs = std::mem::take(&mut self.probs);
        for (t, h) in rows.chunks_exact(d).enumerate() {
            self.head.values(h, &mut probs, self.logits);
            let p = len - 1 - (start + t);
            // Halves first: the sum of two large finite values could overflow.
            for (a, q) in acc[p * n..(p + 1) * n].iter_mut().zip(&probs) {
                *a = 0.5 * *a + 0.5 * q;
            }
        }
        self.probs = probs;
        Ok(())
    }

    fn whole_record(&mut self, acc: &mut Record, tokens: &[u8]) -> Result<()> {
        // Heads that read ORF features get them from the whole record, once both strands'
        // logits are in (the head is affine: its feature part adds to the averaged logits).
        if !self.orf {
            return Ok(());
        }
        // Streamed in blocks: the features of a whole chromosome would take 24 bytes a base.
        let n = self.labels.len();
        let head = &self.head;
        orf_feature_blocks(tokens, 1 << 16, &mut |start, f| {
            let rows = &mut acc.held[start * n..(start + f.len() / ORF_FEATURES) * n];
            for (row, x) in rows.chunks_exact_mut(n).zip(f.chunks_exact(ORF_FEATURES)) {
                head.add_extra(x, row);
            }
        });
        Ok(())
    }

    fn end(&mut self, acc: Record, meta: &RecordMeta, _: usize) -> Result<()> {
        let n = self.labels.len();
        if acc.direct {
            self.streaming = false;
        } else {
            self.start_record(meta)?;
        }
        let Record {
            held: mut acc,
            spill,
            ..
        } = acc;
        if self.logits {
            acc.chunks_exact_mut(n).for_each(softmax_in_place);
        }
        if meta.minus_strand {
            // Position i of the minus strand is the region's base len - 1 - i: read backwards,
            // the rows come in chromosome order. The latest rows are in memory, the earlier
            // ones in the spill file, read back from its end a block at a time.
            let mut pos = meta.offset;
            for p in acc.chunks_exact(n).rev() {
                self.emit(meta, pos, p)?;
                pos += 1;
            }
            // Done with: the spill is read back in blocks of its own.
            drop(acc);
            if let Some(spill) = spill {
                spill.for_each_back(n, self.spool.min(SPILL_READ), &mut |p| {
                    self.emit(meta, pos, p)?;
                    pos += 1;
                    Ok(())
                })?;
            }
        } else {
            for (t, p) in acc.chunks_exact(n).enumerate() {
                self.emit(meta, meta.offset + t as u64, p)?;
            }
        }
        if let Some((o, seg)) = &mut self.bed {
            seg.finish(o)?;
        }
        if let Some((o, g)) = &mut self.bg {
            g.finish(o)?;
        }
        Ok(())
    }
}

/// The strand a record was read on, as BED writes it.
fn strand_of(meta: &RecordMeta) -> char {
    if meta.minus_strand { '-' } else { '+' }
}
