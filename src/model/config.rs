//! Architecture configuration (ours and Hugging Face's `MambaConfig`), saved as `config.json`.

use serde::{Deserialize, Serialize};

use crate::alphabet::VOCAB_SIZE;
use crate::{Error, Result};

/// Mamba-1 architecture. Derived sizes follow the official implementation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MambaConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of residual blocks.
    pub n_layer: usize,
    /// SSM state size per channel (N).
    #[serde(default = "default_d_state")]
    pub d_state: usize,
    /// Expansion factor: `d_inner = expand * d_model`.
    #[serde(default = "default_expand")]
    pub expand: usize,
    /// Width of the causal depthwise convolution.
    #[serde(default = "default_d_conv")]
    pub d_conv: usize,
    /// Rank of the Δ projection; `None` means `ceil(d_model / 16)`.
    #[serde(default)]
    pub dt_rank: Option<usize>,
    /// Rows of the embedding table.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Bias on the convolution.
    #[serde(default = "default_true")]
    pub conv_bias: bool,
    /// Bias on `in_proj` and `out_proj`.
    #[serde(default)]
    pub bias: bool,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Period of a learned position-phase embedding added to the token embedding: position
    /// `p` of a record gets row `p mod phase_period` (3 = codon phase). 0 = none (the Mamba
    /// default). It lets the diagonal, real-valued SSM tell reading frames apart, which
    /// it cannot do from the bases alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub phase_period: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// Largest supported [`MambaConfig::phase_period`].
pub const MAX_PHASE_PERIOD: usize = 64;

/// The most parameters a model may have: 2^34 (64 GiB of f32 weights), beyond any machine
/// this runs on; larger sizes are refused by [`MambaConfig::validate`].
pub const MAX_PARAMS: u128 = 1 << 34;

/// The most layers a model may have (the largest published Mamba models have 64).
pub const MAX_LAYERS: usize = 1024;

/// Whether a class name is usable (non-empty, no whitespace or control characters, no `=`
/// or `,`): it must fit `--class NAME=PATH`, `--labels A,B` and a TSV column name `p_NAME`.
pub fn valid_class_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == ',')
}

/// Checks that class names are valid and distinct.
pub fn check_labels(labels: &[String]) -> crate::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for l in labels {
        if !valid_class_name(l) || !seen.insert(l) {
            return Err(crate::Error::usage(
                format!("bad or repeated class name '{l}'"),
                "use distinct class names without spaces, '=' or ','",
            ));
        }
    }
    Ok(())
}

fn default_d_state() -> usize {
    16
}
fn default_expand() -> usize {
    2
}
fn default_d_conv() -> usize {
    4
}
fn default_vocab() -> usize {
    VOCAB_SIZE
}
fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-5
}

impl MambaConfig {
    /// A configuration with the official defaults for everything but width and depth.
    pub fn new(d_model: usize, n_layer: usize) -> Self {
        MambaConfig {
            d_model,
            n_layer,
            d_state: default_d_state(),
            expand: default_expand(),
            d_conv: default_d_conv(),
            dt_rank: None,
            vocab_size: VOCAB_SIZE,
            conv_bias: true,
            bias: false,
            norm_eps: default_eps(),
            phase_period: 0,
        }
    }

    /// `expand * d_model` (saturating: [`Self::validate`] refuses sizes where it would
    /// not fit).
    pub fn d_inner(&self) -> usize {
        self.expand.saturating_mul(self.d_model)
    }

    /// Rank of the Δ projection.
    pub fn dt_rank(&self) -> usize {
        self.dt_rank.unwrap_or(self.d_model.div_ceil(16))
    }

    /// Checks the sizes for values the model cannot be built with.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let checks = [
            (self.d_model == 0, "d_model must be at least 1"),
            (self.n_layer == 0, "n_layer must be at least 1"),
            (self.n_layer > MAX_LAYERS, "n_layer must be at most 1024"),
            (self.d_state == 0, "d_state must be at least 1"),
            (self.expand == 0, "expand must be at least 1"),
            (self.d_conv == 0, "d_conv must be at least 1"),
            (self.dt_rank() == 0, "dt_rank must be at least 1"),
            (
                self.vocab_size < 12,
                "vocab_size must cover the DNA tokens (at least 12)",
            ),
            (
                !(self.norm_eps > 0.0 && self.norm_eps <= 1.0),
                "norm_eps must be a positive number of at most 1 (usually 1e-5)",
            ),
            (
                self.phase_period > MAX_PHASE_PERIOD,
                "phase_period must be at most 64",
            ),
        ];
        for (bad, msg) in checks {
            if bad {
                return Err(msg.to_string());
            }
        }
        // Each size alone within the parameter limit keeps the 128-bit count below from
        // overflowing (a product of three such sizes, times the layers, is below 2^113).
        for (name, value) in [
            ("d_model", self.d_model),
            ("d_state", self.d_state),
            ("expand", self.expand),
            ("d_conv", self.d_conv),
            ("dt_rank", self.dt_rank()),
            ("vocab_size", self.vocab_size),
        ] {
            if value as u128 > MAX_PARAMS {
                return Err(format!(
                    "{name} {value} is larger than the {MAX_PARAMS} parameters supported"
                ));
            }
        }
        // Sizes no machine holds are refused here, not met by an allocation that aborts.
        let params = self.num_params_wide();
        if params > MAX_PARAMS {
            return Err(format!(
                "these sizes make {params} parameters ({:.0} GiB in f32), more than the {MAX_PARAMS} supported",
                params as f64 * 4.0 / (1u64 << 30) as f64
            ));
        }
        Ok(())
    }

    /// Number of parameters of the backbone (embedding, blocks, final norm); `usize::MAX`
    /// for sizes past it.
    pub fn num_params(&self) -> usize {
        usize::try_from(self.num_params_wide()).unwrap_or(usize::MAX)
    }

    /// [`Self::num_params`] in 128 bits, saturating (sizes that [`Self::validate`] accepts
    /// never come near).
    fn num_params_wide(&self) -> u128 {
        let w = |x: usize| x as u128;
        // Saturating arithmetic in the formula below: `Sat(a) * b` and so on.
        #[derive(Clone, Copy)]
        struct Sat(u128);
        impl std::ops::Mul for Sat {
            type Output = Sat;
            fn mul(self, o: Sat) -> Sat {
                Sat(self.0.saturating_mul(o.0))
            }
        }
        impl std::ops::Add for Sat {
            type Output = Sat;
            fn add(self, o: Sat) -> Sat {
                Sat(self.0.saturating_add(o.0))
            }
        }
        let w = |x: usize| Sat(w(x));
        let (d, n, k) = (w(self.d_model), w(self.d_state), w(self.d_conv));
        let di = d * w(self.expand);
        let r = w(self.dt_rank());
        let two = Sat(2);
        let (bias, conv_bias) = (Sat(self.bias.into()), Sat(self.conv_bias.into()));
        let block = d // norm
            + d * two * di + bias * two * di // in_proj
            + di * k + conv_bias * di // conv
            + di * (r + two * n) // x_proj
            + r * di + di // dt_proj
            + di * n + di // A_log, D
            + di * d + bias * d; // out_proj
        ((w(self.vocab_size) + w(self.phase_period)) * d + w(self.n_layer) * block + d).0
    }

    /// Reads a Hugging Face `MambaConfig` (`"model_type": "mamba"`), honouring every field
    /// that changes the math and refusing values this implementation does not support.
    pub fn from_hf(v: &serde_json::Value, path: &str) -> Result<Self> {
        let bad = |what: String| {
            Error::input(
                path,
                what,
                "use a Hugging Face Mamba (v1) config.json or a genomamba model directory",
            )
        };
        let get_usize = |key: &str, default: Option<usize>| -> Result<usize> {
            match v.get(key) {
                Some(x) => x
                    .as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(format!("field '{key}' must be a non-negative integer"))),
                None => default.ok_or_else(|| bad(format!("missing field '{key}'"))),
            }
        };
        let get_bool = |key: &str, default: bool| -> Result<bool> {
            match v.get(key) {
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| bad(format!("field '{key}' must be true or false"))),
                None => Ok(default),
            }
        };
        let d_model = get_usize("hidden_size", None)?;
        let expand = get_usize("expand", Some(2))?;
        if let Some(inter) = v.get("intermediate_size").and_then(|x| x.as_u64())
            && Some(inter) != (expand as u64).checked_mul(d_model as u64)
        {
            return Err(bad(format!(
                "intermediate_size {inter} is not expand x hidden_size ({expand} x {d_model})"
            )));
        }
        let dt_rank = match v.get("time_step_rank") {
            None => None,
            Some(serde_json::Value::String(s)) if s == "auto" => None,
            Some(x) => Some(x.as_u64().map(|x| x as usize).ok_or_else(|| {
                bad("field 'time_step_rank' must be \"auto\" or an integer".into())
            })?),
        };
        if let Some(act) = v.get("hidden_act").and_then(|x| x.as_str())
            && act != "silu"
            && act != "swish"
        {
            return Err(bad(format!(
                "hidden_act '{act}' is not supported (only silu)"
            )));
        }
        let norm_eps = v
            .get("layer_norm_epsilon")
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| bad("field 'layer_norm_epsilon' must be a number".into()))
            })
            .transpose()?
            .unwrap_or(1e-5);
        let cfg = MambaConfig {
            d_model,
            n_layer: get_usize("num_hidden_layers", None)?,
            d_state: get_usize("state_size", Some(16))?,
            expand,
            d_conv: get_usize("conv_kernel", Some(4))?,
            dt_rank,
            vocab_size: get_usize("vocab_size", None)?,
            conv_bias: get_bool("use_conv_bias", true)?,
            bias: get_bool("use_bias", false)?,
            norm_eps,
            phase_period: 0,
        };
        // The message in this file's own field names.
        cfg.validate().map_err(|msg| {
            let mut msg = msg;
            for (ours, theirs) in [
                ("d_model", "hidden_size"),
                ("n_layer", "num_hidden_layers"),
                ("d_state", "state_size"),
                ("d_conv", "conv_kernel"),
                ("dt_rank", "time_step_rank"),
                ("norm_eps", "layer_norm_epsilon"),
            ] {
                msg = msg.replace(ours, theirs);
            }
            bad(msg)
        })?;
        Ok(cfg)
    }
}
