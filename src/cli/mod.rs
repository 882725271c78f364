//! The command-line interface: argument parsing (clap derive) and one file per subcommand.

mod annotate;
mod baseline;
mod classify;
mod common;
mod embed;
mod info;
mod init;
mod train;

use clap::{Parser, Subcommand};

/// Mamba state-space models over DNA at single-nucleotide resolution.
#[derive(Debug, Parser)]
#[command(name = "genomamba", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hidden states of the final layer (after the final norm), pooled per record or per position.
    Embed(embed::EmbedArgs),
    /// Sequence-level prediction with the model's classification head.
    Classify(classify::ClassifyArgs),
    /// Per-position prediction with the model's per-position head: BED6, bedGraph, TSV.
    Annotate(annotate::AnnotateArgs),
    /// Train or fine-tune a model on labeled data (per-class FASTA, TSV, or FASTA + BED).
    Train(Box<train::TrainArgs>),
    /// The k-mer logistic-regression baseline on the same data and split as `train`.
    Baseline(baseline::BaselineArgs),
    /// Create a randomly initialised model directory of a given architecture.
    Init(init::InitArgs),
    /// Describe a model: architecture, parameter count, head, labels, provenance.
    Info(info::InfoArgs),
}

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// With `GENOMAMBA_TIMING` set, prints to stderr how long after the start of `main` the process
/// reached `what` (to see where a run's fixed time goes; the first call starts the clock).
pub fn mark(what: &str) {
    if std::env::var_os("GENOMAMBA_TIMING").is_some() {
        let t = START.get_or_init(std::time::Instant::now).elapsed();
        eprintln!("genomamba: timing: {:.3} s {what}", t.as_secs_f64());
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> genomamba::Result<()> {
    match cli.command {
        Command::Embed(a) => embed::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Annotate(a) => annotate::run(a),
        Command::Train(a) => train::run(*a),
        Command::Baseline(a) => baseline::run(a),
        Command::Init(a) => init::run(a),
        Command::Info(a) => info::run(a),
    }
}
