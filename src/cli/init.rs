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
    check_memory(config.architecture.num_params(), &a.output)?;
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

/// Bytes of memory that creating a model takes, per parameter: about four f32 copies of the
/// weights at the peak, and a little more (measured peak resident memory: 2.39 GiB for 160 M
/// parameters, `--d-model 1024 --n-layer 24`; 16-18 bytes per parameter for usual shapes, up
/// to 24 for deep and narrow ones, whose totals are small).
const INIT_BYTES_PER_PARAM: u64 = 18;

/// Refuses sizes whose creation would not fit the memory this machine (or its cgroup) has
/// available, which the kernel's OOM killer would otherwise end without a message.
fn check_memory(params: usize, output: &std::path::Path) -> Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let need = (params as u64).saturating_mul(INIT_BYTES_PER_PARAM);
    if need <= available {
        return Ok(());
    }
    let amount = |b: u64| {
        if b >= 10 << 30 {
            format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
        } else {
            format!("{} MiB", b >> 20)
        }
    };
    Err(Error::usage(
        format!(
            "a model of these sizes ({params} parameters) needs about {} of memory to create, and {} are available; {} was not written",
            amount(need),
            amount(available),
            output.display()
        ),
        "choose smaller sizes (--d-model, --n-layer, --expand, --d-state) or run where more memory is free",
    ))
}

/// Memory available to this process in bytes: the kernel's `MemAvailable` plus free swap,
/// capped by the cgroup's limit less its use and by the address-space limit where these are
/// set; `None` where not known.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| kb_field(&meminfo, name);
    let mut available = field("MemAvailable")?.saturating_add(field("SwapFree").unwrap_or(0));
    // The process's own cgroup (v2: the `0::` line of /proc/self/cgroup) and the root of
    // the hierarchy this process sees (a container's own).
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    for dir in [own.trim().trim_start_matches('/'), ""] {
        let cgroup = |name: &str| {
            let path = std::path::Path::new("/sys/fs/cgroup").join(dir).join(name);
            std::fs::read_to_string(path)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
            available = available.min(max.saturating_sub(current));
        }
    }
    // An address-space limit (`ulimit -v`) bounds it too, less the address space in use.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
    {
        let in_use = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| kb_field(&status, "VmSize"))
            .unwrap_or(0);
        available = available.min(limit.rlim_cur.saturating_sub(in_use));
    }
    Some(available)
}

/// The bytes of a `NAME:   N kB` line of a /proc file's text.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024))
}
