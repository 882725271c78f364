//! The command-line interface: argument parsing (clap derive) and one file per subcommand.

mod annotate;
mod classify;
mod common;
mod embed;
mod info;
mod init;

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
    /// Create a randomly initialised model directory of a given architecture.
    Init(init::InitArgs),
    /// Describe a model: architecture, parameter count, head, labels, provenance.
    Info(info::InfoArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> genomamba::Result<()> {
    match cli.command {
        Command::Embed(a) => embed::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Annotate(a) => annotate::run(a),
        Command::Init(a) => init::run(a),
        Command::Info(a) => info::run(a),
    }
}
