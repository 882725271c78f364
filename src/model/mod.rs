//! The model: configuration, Mamba blocks with carried state, heads, weights on disk.
//!
//! A model directory holds `config.json` ([`ModelConfig`]) and `model.safetensors`; a
//! Hugging Face Mamba checkpoint directory (`"model_type": "mamba"`) loads as-is.

pub mod config;
pub mod init;
pub mod mamba;
pub mod orf;
pub mod state;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use config::MambaConfig;
pub use mamba::{Mamba, MambaBlock, Precision, Residual, reverse_start_phase};
pub use state::{LayerState, MambaState};
use weights::TensorMap;

use crate::io::output::{PendingPath, publish, temp_path, write_replacing};

use crate::{Error, Result};

/// What a model's head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// One label per sequence, from the mean of the final hidden states.
    Sequence,
    /// One label per position.
    Position,
}

/// The head of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Sequence or per-position.
    pub kind: HeadKind,
    /// Class names, in output order.
    pub labels: Vec<String>,
    /// Average the probabilities of each sequence and of its reverse complement: a
    /// strand-symmetric ensemble; for per-position heads it also gives every position both
    /// its left (forward strand) and its right context (reverse strand). Costs a second pass,
    /// and per-position heads then hold each record's probabilities until it ends.
    #[serde(default)]
    pub rc_average: bool,
    /// Per-position heads: the head reads the mean of the forward strand's hidden state at a
    /// position and the reverse strand's at the same position (both passes share the
    /// backbone), so every prediction sees the sequence on both sides. Trained that way.
    #[serde(default)]
    pub bidirectional: bool,
    /// Per-position bidirectional heads: the head also reads [`orf::ORF_FEATURES`]
    /// open-reading-frame lengths per base (see [`orf`]), computed from the whole record,
    /// after the hidden state: its weight is `[n_labels, d_model + 6]`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orf_features: bool,
}

impl HeadConfig {
    /// Inputs of the head besides the hidden state.
    pub fn extra_inputs(&self) -> usize {
        if self.orf_features {
            orf::ORF_FEATURES
        } else {
            0
        }
    }
}

/// `config.json` of a genomamba model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Always `"genomamba"`.
    pub format: String,
    /// The backbone.
    pub architecture: MambaConfig,
    /// Token vocabulary; always `"caduceus-char"` (see [`crate::alphabet`]).
    pub tokenizer: String,
    /// The head, if any.
    #[serde(default)]
    pub head: Option<HeadConfig>,
    /// Where the weights came from (free-form: command, data checksums, metrics).
    #[serde(default)]
    pub provenance: serde_json::Value,
}

/// Name of the tokenizer this crate implements.
pub const TOKENIZER: &str = "caduceus-char";
/// Value of [`ModelConfig::format`].
pub const FORMAT: &str = "genomamba";

impl ModelConfig {
    /// A config with no head and empty provenance.
    pub fn new(architecture: MambaConfig) -> Self {
        ModelConfig {
            format: FORMAT.into(),
            architecture,
            tokenizer: TOKENIZER.into(),
            head: None,
            provenance: serde_json::Value::Null,
        }
    }
}

/// A loaded model: backbone plus optional head, on one device.
#[derive(Debug)]
pub struct GenoModel {
    /// Configuration as read from (or to be written to) `config.json`.
    pub config: ModelConfig,
    /// The backbone.
    pub backbone: Mamba,
    /// The head's linear layer, `d_model -> n_labels`.
    pub head: Option<Linear>,
    /// Where it was loaded from, if anywhere.
    pub dir: Option<PathBuf>,
}

impl GenoModel {
    /// A freshly initialised model (official initialisation, seeded).
    pub fn init(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        config
            .architecture
            .validate()
            .map_err(|e| Error::usage(format!("invalid architecture: {e}"), "change the flags"))?;
        let mut map = init::init_tensors(&config.architecture, seed);
        if let Some(h) = &config.head {
            init::init_head(
                &mut map,
                h.labels.len(),
                config.architecture.d_model + h.extra_inputs(),
                seed,
            );
        }
        Self::from_map(config, &mut map, device, None)
    }

    fn from_map(
        config: ModelConfig,
        map: &mut TensorMap,
        device: &Device,
        dir: Option<PathBuf>,
    ) -> Result<Self> {
        let backbone = weights::mamba_from_tensors(&config.architecture, map, device)?;
        // How errors name the configuration: by its path when it was read from one.
        let cfg = dir.as_ref().map_or_else(
            || "the model's config.json".to_string(),
            |d| d.join("config.json").display().to_string(),
        );
        if let Some(h) = &config.head
            && h.orf_features
            && !(h.kind == HeadKind::Position && h.bidirectional)
        {
            return Err(Error::usage(
                format!("{cfg} sets head.orf_features without a bidirectional per-position head"),
                "set head.bidirectional to true (and kind to position), or orf_features to false",
            ));
        }
        if let Some(h) = &config.head
            && h.bidirectional
            && h.kind != HeadKind::Position
        {
            return Err(Error::usage(
                format!(
                    "{cfg} sets head.bidirectional on a sequence head (it applies to per-position heads)"
                ),
                "set head.bidirectional to false (head.rc_average gives a sequence head both strands)",
            ));
        }
        if let Some(h) = &config.head {
            let fix = "list two or more distinct class names without spaces, control characters, '=' or ',' in config.json's head.labels";
            if h.labels.len() < 2 {
                return Err(Error::usage(
                    format!("{cfg} gives its head {} class name(s)", h.labels.len()),
                    fix,
                ));
            }
            config::check_labels(&h.labels).map_err(|e| match e {
                Error::Usage { what, .. } => Error::usage(format!("{cfg} head: {what}"), fix),
                other => other,
            })?;
        }
        let head = match &config.head {
            Some(h) => Some(weights::head_from_tensors(
                map,
                h.labels.len(),
                config.architecture.d_model + h.extra_inputs(),
                device,
            )?),
            None => None,
        };
        // A tensor left over would be part of a model that config.json does not describe
        // (a bias of the final norm, a head the config lacks): running without it would give
        // other outputs than the model's own, without a word.
        if let Some(extra) = map.untaken() {
            let why = if extra.starts_with("head.") && config.head.is_none() {
                " (it gives no head)"
            } else {
                ""
            };
            return Err(Error::model(
                map.dir(),
                format!("weights hold tensor '{extra}', which config.json does not describe{why}"),
                "the weights do not match config.json; use the model's own config",
            ));
        }
        Ok(GenoModel {
            config,
            backbone,
            head,
            dir,
        })
    }

    /// Loads a model directory (genomamba's or a Hugging Face Mamba checkpoint).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let fix_dir = "give a model directory holding config.json and model.safetensors (made by init or train, or a Hugging Face Mamba checkpoint)";
        if !dir.is_dir() {
            return Err(Error::model(dir, "not a directory", fix_dir));
        }
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| Error::model(dir, format!("cannot read config.json: {e}"), fix_dir))?;
        // A byte-order mark (some Windows editors write one) is not part of the JSON.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::model(
                dir,
                format!("config.json is not valid JSON: {e}"),
                "repair or regenerate config.json",
            )
        })?;
        let config = if value.get("model_type").is_some() {
            let mt = value
                .get("model_type")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if mt != "mamba" {
                return Err(Error::model(
                    dir,
                    format!("model_type '{mt}' is not supported"),
                    "only Mamba (v1) checkpoints (\"model_type\": \"mamba\") load",
                ));
            }
            let arch = MambaConfig::from_hf(&value, &cfg_path.display().to_string())?;
            let mut c = ModelConfig::new(arch);
            c.provenance =
                serde_json::json!({"source": "huggingface", "dir": dir.display().to_string()});
            c
        } else {
            let c: ModelConfig = serde_json::from_value(value).map_err(|e| {
                Error::model(
                    dir,
                    format!("config.json is not a genomamba config: {e}"),
                    "regenerate it with `genomamba init`",
                )
            })?;
            if c.format != FORMAT {
                return Err(Error::model(
                    dir,
                    format!("config.json has unknown format '{}'", c.format),
                    format!(
                        "set \"format\": \"{FORMAT}\" in config.json if the model was made for genomamba"
                    ),
                ));
            }
            if c.tokenizer != TOKENIZER {
                return Err(Error::model(
                    dir,
                    format!(
                        "config.json has tokenizer '{}'; genomamba reads one token per base ('{TOKENIZER}')",
                        c.tokenizer
                    ),
                    "use a model trained on single-base tokens; this one cannot be run here",
                ));
            }
            c.architecture
                .validate()
                .map_err(|e| Error::model(dir, e, "repair config.json"))?;
            c
        };
        let weights = dir.join("model.safetensors");
        match std::fs::metadata(&weights) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(Error::model(
                    dir,
                    "model.safetensors is not a regular file (a pipe or a directory?)",
                    "put the weights file itself next to config.json",
                ));
            }
            Err(_) => {
                return Err(Error::model(
                    dir,
                    "model.safetensors is missing",
                    "copy the weights next to config.json, or create a model with `genomamba init`",
                ));
            }
        }
        let mut map = TensorMap::read(&weights, dir)?;
        Self::from_map(config, &mut map, device, Some(dir.to_path_buf()))
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if needed). Both files
    /// are written to temporary names first and renamed into place; the parts of `dir` made
    /// here are removed again if that fails or the process is interrupted before.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let made =
            PendingPath::make_dir(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        let mut map = TensorMap::new();
        weights::mamba_to_tensors(&self.backbone, &mut map);
        if let Some(h) = &self.head {
            weights::head_to_tensors(h, &mut map);
        }
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| Error::Runtime(format!("cannot serialise config: {e}")))?;
        // Pending until both are renamed, together: an error or an interruption removes the
        // temporary files, and never leaves new weights beside an old config.
        let tmp_w = PendingPath::new(temp_path(&dir.join("model.safetensors")));
        map.write(tmp_w.path())?;
        let tmp_c = PendingPath::new(temp_path(&dir.join("config.json")));
        std::fs::write(tmp_c.path(), json + "\n")
            .map_err(|e| Error::io(tmp_c.path().display().to_string(), e))?;
        let renames = [
            (tmp_w.path().to_path_buf(), dir.join("model.safetensors")),
            (tmp_c.path().to_path_buf(), dir.join("config.json")),
        ];
        // Dropped in order on failure: the files, then the directories made, deepest first.
        let mut pending = vec![tmp_w, tmp_c];
        pending.extend(made);
        publish(pending, || {
            renames.iter().try_for_each(|(tmp, dest)| {
                std::fs::rename(tmp, dest).map_err(|e| Error::io(dest.display().to_string(), e))
            })
        })
    }

    /// `Err` naming the first tensor (by name) that holds a NaN or an infinity, and where.
    pub fn check_finite(&self) -> std::result::Result<(), String> {
        let mut map = TensorMap::new();
        weights::mamba_to_tensors(&self.backbone, &mut map);
        if let Some(h) = &self.head {
            weights::head_to_tensors(h, &mut map);
        }
        map.check_finite()
    }

    /// Rewrites `dir/config.json` alone (written to a temporary name, then renamed): for a
    /// saved model whose provenance changes while its weights do not.
    pub fn save_config(config: &ModelConfig, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(config)
            .map_err(|e| Error::Runtime(format!("cannot serialise config: {e}")))?;
        write_replacing(&dir.join("config.json"), (json + "\n").as_bytes())
    }

    /// Class probabilities from final hidden states.
    ///
    /// # Shapes
    /// - hidden: `[..., d_model]` -> `[..., n_labels]`
    pub fn head_probs<const D: usize>(&self, hidden: Tensor<D>) -> Option<Tensor<D>> {
        self.head
            .as_ref()
            .map(|h| softmax(h.forward(hidden), D - 1))
    }

    /// Number of parameters (backbone and head).
    pub fn num_params(&self) -> usize {
        let head = self
            .config
            .head
            .as_ref()
            .map(|h| h.labels.len() * (self.config.architecture.d_model + h.extra_inputs() + 1))
            .unwrap_or(0);
        self.config.architecture.num_params() + head
    }
}

/// A head's weights on the host, for applying it to hidden states already copied back from
/// the device (a `d_model x n_labels` product per position: cheap next to the backbone).
#[derive(Debug, Clone)]
pub struct HostHead {
    /// `[n_labels][d_model]`, row-major.
    w: Vec<f32>,
    b: Vec<f32>,
    d: usize,
}

impl HostHead {
    /// Number of classes.
    pub fn n_labels(&self) -> usize {
        self.b.len()
    }

    /// Logits (before the softmax) of one hidden state into `out` (`n_labels` values). With
    /// extra inputs (see [`Self::add_extra`]) only the hidden-state part and the bias.
    pub fn logits(&self, h: &[f32], out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            let row = &self.w[i * self.d..(i + 1) * self.d];
            let mut acc = self.b[i];
            for (w, x) in row.iter().zip(h) {
                acc += w * x;
            }
            *o = acc;
        }
    }

    /// Logits (`logits == true`) or probabilities of one hidden state into `out`.
    pub fn values(&self, h: &[f32], out: &mut [f32], logits: bool) {
        if logits {
            self.logits(h, out);
        } else {
            self.probs(h, out);
        }
    }

    /// Adds the head's contribution of extra inputs `f` (the last `f.len()` columns of its
    /// weight, e.g. ORF features) to logits in `out`.
    pub fn add_extra(&self, f: &[f32], out: &mut [f32]) {
        let k = f.len().min(self.d);
        for (i, o) in out.iter_mut().enumerate() {
            let row = &self.w[(i + 1) * self.d - k..(i + 1) * self.d];
            *o += row.iter().zip(f).map(|(w, x)| w * x).sum::<f32>();
        }
    }

    /// Softmax class probabilities of one hidden state into `out` (`n_labels` values).
    pub fn probs(&self, h: &[f32], out: &mut [f32]) {
        self.logits(h, out);
        softmax_in_place(out);
    }
}

/// Turns logits into probabilities, in place.
pub fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for o in v.iter_mut() {
        *o = (*o - max).exp();
        sum += *o;
    }
    for o in v.iter_mut() {
        *o /= sum;
    }
}

impl GenoModel {
    /// The head's weights on the host, if the model has a head.
    pub fn host_head(&self) -> Option<HostHead> {
        self.head.as_ref().map(HostHead::from_linear)
    }
}

impl HostHead {
    /// Copies a head's linear layer (`d_model -> n_labels`) to the host.
    pub fn from_linear(h: &Linear) -> HostHead {
        let w = h.weight.val(); // [d_model, n_labels]
        let [d, n] = w.dims();
        let b = match &h.bias {
            Some(b) => weights::host_values(b.val()),
            None => vec![0.0; n],
        };
        HostHead {
            w: weights::host_values(w.transpose()),
            b,
            d,
        }
    }
}
