//! `genomamba baseline`: the k-mer logistic-regression baseline on the same data and the same
//! validation split as `genomamba train` (same flags, same seed), so that a trained model can
//! be judged next to it.

use clap::Args;

use genomamba::alphabet::token_char;
use genomamba::io::output::Output;
use genomamba::train::kmer::{KmerConfig, KmerModel};
use genomamba::train::trainer::{argmax, sequence_scores};
use genomamba::{Error, Result};

use super::common::{SeqDataArgs, check_outputs};
use super::train::load_sequence_sets;

/// Arguments of `baseline`.
#[derive(Debug, Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub data: SeqDataArgs,
    /// Fraction held out (stratified, seeded) when no validation files are given.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Seed of the split (use the one given to `train`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// k-mer length (canonical k-mers: a k-mer and its reverse complement count as one).
    #[arg(short, long, default_value_t = 6)]
    pub k: usize,
    /// L2 penalty of the logistic regression.
    #[arg(long, default_value_t = 1e-3)]
    pub l2: f64,
    /// Validation predictions as TSV: id (FILE:ID for per-class FASTA files), true label,
    /// predicted label, then p_<class> per class.
    #[arg(long)]
    pub predictions: Option<String>,
    /// Metrics as JSON (`-` for stdout, the default).
    #[arg(short = 'o', long = "output", default_value = "-")]
    pub output: String,
    /// CPU threads for counting k-mers and fitting (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn ascii(tokens: &[u8]) -> Vec<u8> {
    tokens.iter().map(|&t| token_char(t) as u8).collect()
}

pub fn run(a: BaselineArgs) -> Result<()> {
    if !(1..=genomamba::train::kmer::MAX_K).contains(&a.k) {
        return Err(Error::usage(
            format!("-k {} is out of range", a.k),
            format!(
                "use a k-mer length between 1 and {}",
                genomamba::train::kmer::MAX_K
            ),
        ));
    }
    super::common::set_threads(a.threads)?;
    let mut outputs = vec![("-o", a.output.as_str())];
    outputs.extend(a.predictions.as_deref().map(|p| ("--predictions", p)));
    check_outputs(&a.data.paths(), &outputs)?;
    let (train, val, split) = load_sequence_sets(&a.data, a.val_fraction, a.seed)?;
    let n_classes = train.labels.len();
    let seqs: Vec<Vec<u8>> = train.examples.iter().map(|e| ascii(&e.tokens)).collect();
    let refs: Vec<&[u8]> = seqs.iter().map(|s| s.as_slice()).collect();
    let labels: Vec<usize> = train.examples.iter().map(|e| e.label).collect();
    let cfg = KmerConfig {
        k: a.k,
        l2: a.l2,
        ..KmerConfig::default()
    };
    let t0 = std::time::Instant::now();
    let model = KmerModel::fit(&refs, &labels, n_classes, &cfg)?;
    let fit_s = t0.elapsed().as_secs_f64();
    let mut probs = Vec::with_capacity(val.examples.len() * n_classes);
    for e in &val.examples {
        probs.extend(model.predict_proba(&ascii(&e.tokens)));
    }
    let val_labels: Vec<usize> = val.examples.iter().map(|e| e.label).collect();
    let scores = sequence_scores(&probs, &val_labels, n_classes);
    if let Some(path) = &a.predictions {
        let mut out = Output::create(path)?;
        let mut text = String::from("id\tlabel\tpredicted");
        for l in &train.labels {
            text.push_str(&format!("\tp_{l}"));
        }
        text.push('\n');
        for (i, e) in val.examples.iter().enumerate() {
            let p = &probs[i * n_classes..(i + 1) * n_classes];
            text.push_str(&format!(
                "{}\t{}\t{}",
                e.origin,
                train.labels[e.label],
                train.labels[argmax(p)]
            ));
            for v in p {
                text.push_str(&format!("\t{v:.6}"));
            }
            text.push('\n');
        }
        out.write_all(text.as_bytes())?;
        out.commit()?;
    }
    let report = serde_json::json!({
        "baseline": format!("canonical {}-mer frequencies + L2 logistic regression (l2 {})", a.k, a.l2),
        "labels": train.labels,
        "train": train.examples.len(),
        "val": val.examples.len(),
        "split": split,
        "validation": scores,
        "fit_seconds": fit_s,
    });
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Runtime(format!("cannot serialise report: {e}")))?
        + "\n";
    let mut out = Output::create(&a.output)?;
    out.write_all(text.as_bytes())?;
    out.commit()
}
