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
#[command(name = "genomamba", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. A negative number after an option is taken as its value (and refused
/// by that option's own check), not as an unknown flag. `--version` prints the program's
/// name (clap's own would be `genomamba-embed`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hidden states of the final layer (after the final norm), pooled per record or per position.
    #[command(allow_negative_numbers = true, display_name = "genomamba")]
    Embed(embed::EmbedArgs),
    /// Sequence-level prediction with the model's classification head.
    #[command(allow_negative_numbers = true, display_name = "genomamba")]
    Classify(classify::ClassifyArgs),
    /// Per-position prediction with the model's per-position head: BED6, bedGraph, TSV.
    #[command(allow_negative_numbers = true, display_name = "genomamba")]
    Annotate(annotate::AnnotateArgs),
    /// Train or fine-tune a model on labeled data (per-class FASTA, TSV, or FASTA + BED).
    #[command(allow_negative_numbers = true, display_name = "genomamba")]
    Train(Box<train::TrainArgs>),
    /// The k-mer logistic-regression baseline on the same data and split as `train`.
    #[command(allow_negative_numbers = true, display_name = "genomamba")]
    Baseline(baseline::BaselineArgs),
    /// Create a randomly initialised model directory of a given architecture.
    #[command(allow_negative_numbers = true, display_name = "genomamba")]
    Init(init::InitArgs),
    /// Describe a model: architecture, parameter count, head, labels, provenance.
    #[command(allow_negative_numbers = true, display_name = "genomamba")]
    Info(info::InfoArgs),
}

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Prints a warning on stderr, as one line (control characters in quoted user text escaped).
pub fn warn(text: &str) {
    eprintln!("genomamba: warning: {}", genomamba::error::one_line(text));
}

/// What the line printed on an interruption adds, asked when the signal comes (`train` says
/// how to continue once a checkpoint exists).
type Hint = Box<dyn Fn() -> Option<String> + Send>;

static INTERRUPTED_HINT: std::sync::Mutex<Option<Hint>> = std::sync::Mutex::new(None);

/// Sets what an interruption's line adds (see [`interrupted_hint`]).
pub fn set_interrupted_hint(hint: Hint) {
    let mut h = INTERRUPTED_HINT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *h = Some(hint);
}

/// What an interruption's line adds, if anything. Called with the pending outputs held
/// (`genomamba::io::output::remove_pending`), so no output is being published meanwhile.
pub fn interrupted_hint() -> Option<String> {
    INTERRUPTED_HINT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .and_then(|h| h())
}

/// With `GENOMAMBA_TIMING` set, prints to stderr how long after the start of `main` the process
/// reached `what` (to see where a run's fixed time goes; the first call starts the clock).
pub fn mark(what: &str) {
    if std::env::var_os("GENOMAMBA_TIMING").is_some() {
        let t = START.get_or_init(std::time::Instant::now).elapsed();
        eprintln!("genomamba: timing: {:.3} s {what}", t.as_secs_f64());
    }
}

/// Sets Burn's default device from the command's `--device`: the CPU backend (`BURN_DEVICE=
/// flex`) for a CPU run, Burn's own choice (`BURN_DEVICE` removed) for a GPU run, whatever
/// the environment held. Burn makes a resumed optimizer's state on its default device (its
/// first step moves it), and in a build with GPU support that default is the GPU: a CPU run
/// then needed a CUDA driver, and panicked on a machine without one; a `BURN_DEVICE` naming a
/// backend this build lacks panicked too. Must be called before any other thread starts (it
/// changes the environment).
pub fn set_default_device(cli: &Cli) {
    let device = match &cli.command {
        Command::Embed(a) => a.input.device.as_str(),
        Command::Classify(a) => a.input.device.as_str(),
        Command::Annotate(a) => a.input.device.as_str(),
        Command::Train(a) => a.device.as_str(),
        Command::Baseline(_) | Command::Init(_) | Command::Info(_) => "cpu",
    };
    let cpu = device.parse::<genomamba::device::DeviceSpec>().ok()
        == Some(genomamba::device::DeviceSpec::Cpu);
    // SAFETY: no other thread runs yet (see above), so none reads the environment now.
    unsafe {
        if cpu {
            std::env::set_var("BURN_DEVICE", "flex");
        } else {
            std::env::remove_var("BURN_DEVICE");
        }
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
