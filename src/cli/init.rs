//! `genomamba init`: a randomly initialised model directory.

use std::path::PathBuf;

use burn::tensor::Device;
use clap::Args;

use genomamba::model::{GenoModel, HeadConfig, HeadKind, ModelConfig};
use genomamba::{Error, Result};

use super::common::{ArchArgs, check_output_dir};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Model directory to create.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// Head: none, sequence (classify) or position (annotate).
    #[arg(long, default_value = "none")]
    pub head: String,
    /// Class names of the head, comma-separated (for `position`, the first is the background).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace an existing model directory.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: InitArgs) -> Result<()> {
    let arch = a.arch.config();
    arch.validate()
        .map_err(|e| Error::usage(format!("invalid architecture: {e}"), "change the flag"))?;
    let head = match a.head.as_str() {
        "none" => {
            if !a.labels.is_empty() {
                return Err(Error::usage(
                    "--labels given without a head",
                    "add --head sequence or --head position",
                ));
            }
            None
        }
        kind @ ("sequence" | "position") => {
            if a.labels.len() < 2 {
                return Err(Error::usage(
                    "a head needs at least two classes",
                    "pass --labels A,B",
                ));
            }
            genomamba::model::config::check_labels(&a.labels)?;
            Some(HeadConfig {
                kind: if kind == "sequence" {
                    HeadKind::Sequence
                } else {
                    HeadKind::Position
                },
                labels: a.labels.clone(),
                rc_average: false,
                bidirectional: false,
                orf_features: false,
            })
        }
        other => {
            return Err(Error::usage(
                format!("unknown head '{other}'"),
                "use --head none, sequence or position",
            ));
        }
    };
    check_output_dir(&a.output, "", "a model is a directory: choose another -o")?;
    if a.output.join("config.json").exists() && !a.force {
        return Err(Error::usage(
            format!("{} already holds a model", a.output.display()),
            "choose another directory or pass --force to replace it",
        ));
    }
    let mut config = ModelConfig::new(arch);
    config.head = head;
    config.provenance = serde_json::json!({
        "created_by": format!("genomamba {}", env!("CARGO_PKG_VERSION")),
        "command": super::common::command_line(),
        "weights": "random (official Mamba initialisation)",
        "seed": a.seed,
    });
    let model = GenoModel::init(config, a.seed, &Device::flex())?;
    model.save(&a.output)?;
    if a.force {
        // A replaced trained model's log and checkpoint describe a model that is gone; left
        // in place, `train --resume` would go on with the old run.
        let checkpoint = genomamba::train::trainer::checkpoint_dir(&a.output);
        let log = a.output.join("metrics.jsonl");
        let mut removed = Vec::new();
        if checkpoint.is_dir() {
            std::fs::remove_dir_all(&checkpoint)
                .map_err(|e| Error::io(checkpoint.display().to_string(), e))?;
            removed.push("checkpoint/");
        }
        if log.is_file() {
            std::fs::remove_file(&log).map_err(|e| Error::io(log.display().to_string(), e))?;
            removed.push("metrics.jsonl");
        }
        if !removed.is_empty() {
            eprintln!(
                "genomamba: note: removed the replaced model's {}",
                removed.join(" and ")
            );
        }
    }
    eprintln!(
        "genomamba: wrote {} ({} parameters)",
        a.output.display(),
        model.num_params()
    );
    Ok(())
}
