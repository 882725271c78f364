//! `genomamba info`: what a model directory holds.

use std::path::PathBuf;

use burn::tensor::Device;
use clap::Args;

use genomamba::Result;
use genomamba::model::GenoModel;

/// Arguments of `info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model directory.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let m = GenoModel::load(&a.model, &Device::flex())?;
    let c = &m.config.architecture;
    let mut s = String::new();
    s.push_str(&format!("model\t{}\n", a.model.display()));
    s.push_str("architecture\tmamba-1\n");
    s.push_str(&format!("d_model\t{}\n", c.d_model));
    s.push_str(&format!("n_layer\t{}\n", c.n_layer));
    s.push_str(&format!("d_state\t{}\n", c.d_state));
    s.push_str(&format!("expand\t{} (d_inner {})\n", c.expand, c.d_inner()));
    s.push_str(&format!("d_conv\t{}\n", c.d_conv));
    s.push_str(&format!("dt_rank\t{}\n", c.dt_rank()));
    s.push_str(&format!("vocab_size\t{}\n", c.vocab_size));
    s.push_str(&format!("bias\t{}\nconv_bias\t{}\n", c.bias, c.conv_bias));
    s.push_str(&format!("norm_eps\t{}\n", c.norm_eps));
    if c.phase_period > 0 {
        s.push_str(&format!("phase_period\t{}\n", c.phase_period));
    }
    s.push_str(&format!("tokenizer\t{}\n", m.config.tokenizer));
    s.push_str(&format!("parameters\t{}\n", m.num_params()));
    match &m.config.head {
        Some(h) => {
            s.push_str(&format!("head\t{:?}\n", h.kind).to_lowercase());
            s.push_str(&format!("labels\t{}\n", h.labels.join(",")));
            s.push_str(&format!("rc_average\t{}\n", h.rc_average));
            s.push_str(&format!("bidirectional\t{}\n", h.bidirectional));
            s.push_str(&format!("orf_features\t{}\n", h.orf_features));
        }
        None => s.push_str("head\tnone\n"),
    }
    if !m.config.provenance.is_null() {
        s.push_str(&format!("provenance\t{}\n", m.config.provenance));
    }
    use std::io::Write;
    std::io::stdout()
        .write_all(s.as_bytes())
        .map_err(|e| genomamba::Error::io("stdout", e))
}
