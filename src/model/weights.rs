//! Weights on disk: `model.safetensors` with Hugging Face Mamba tensor names.
//!
//! Linear weights are stored as PyTorch does, `[out, in]`, and transposed to Burn's
//! `[in, out]` on load; the convolution weight is stored `[d_inner, 1, d_conv]`.
//! A `backbone.` prefix (from `MambaForCausalLM`) is accepted and stripped.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::config::MambaConfig;
use super::mamba::{Mamba, MambaBlock, RmsNorm, sizes_of};
use crate::{Error, Result};

/// Host copies of named tensors: shape and f32 values.
#[derive(Debug, Default)]
pub struct TensorMap {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    dir: std::path::PathBuf,
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| burn::tensor::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

impl TensorMap {
    /// Reads every tensor of a safetensors file.
    pub fn read(path: &Path, dir: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::model(
                dir,
                format!("cannot read {}: {e}", path.display()),
                "the directory needs model.safetensors next to config.json",
            )
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::model(
                dir,
                format!("{} is not a valid safetensors file: {e}", path.display()),
                "re-export the weights with safetensors",
            )
        })?;
        let mut tensors = HashMap::new();
        // By name, so that an error names the same tensor every run.
        let mut views = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in views {
            let values = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                Error::model(
                    dir,
                    format!("tensor '{name}' has unsupported dtype {:?}", view.dtype()),
                    "store weights as f32, f16, bf16 or f64",
                )
            })?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                // An f64 that is finite but past f32's range is said as itself, not as the
                // infinity it became.
                let wide = (view.dtype() == Dtype::F64)
                    .then(|| view.data().get(i * 8..i * 8 + 8))
                    .flatten()
                    .and_then(|b| b.try_into().ok())
                    .map(f64::from_le_bytes)
                    .filter(|v| v.is_finite());
                return Err(match wide {
                    Some(v) => Error::model(
                        dir,
                        format!(
                            "tensor '{name}' of {} holds {v:e} at element {i}, outside the range of f32 in which the model computes",
                            path.display()
                        ),
                        "use weights within f32's range (about ±3.4e38)",
                    ),
                    None => Error::model(
                        dir,
                        format!(
                            "tensor '{name}' of {} holds {} at element {i}",
                            path.display(),
                            values[i]
                        ),
                        "use weights from a run that did not diverge (a model is never saved with such values)",
                    ),
                });
            }
            let short = name.strip_prefix("backbone.").unwrap_or(&name).to_string();
            if tensors.contains_key(&short) {
                return Err(Error::model(
                    dir,
                    format!(
                        "tensor '{short}' is in {} twice (with and without the 'backbone.' prefix)",
                        path.display()
                    ),
                    "keep one of the two",
                ));
            }
            tensors.insert(short, (view.shape().to_vec(), values));
        }
        if tensors.contains_key("embeddings.weight") && tensors.contains_key("embedding.weight") {
            return Err(Error::model(
                dir,
                "the weights hold both 'embeddings.weight' and 'embedding.weight'",
                "keep one of the two",
            ));
        }
        Ok(TensorMap {
            tensors,
            dir: dir.to_path_buf(),
        })
    }

    /// An empty map (for building a file to save).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor.
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.insert(name.into(), (shape, values));
    }

    /// The first tensor (by name) that nothing has taken, other than a language-model head
    /// (`lm_head.*`, which Hugging Face causal-LM checkpoints may carry and no genomamba
    /// command uses).
    pub fn untaken(&self) -> Option<&str> {
        self.tensors
            .keys()
            .filter(|k| !k.starts_with("lm_head."))
            .min()
            .map(String::as_str)
    }

    /// The directory the weights came from.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (s, v) = self.tensors.remove(name).ok_or_else(|| {
            Error::model(
                &self.dir,
                format!("weights lack tensor '{name}'"),
                "the weights do not match config.json; use the model's own config",
            )
        })?;
        if s != shape {
            return Err(Error::model(
                &self.dir,
                format!("tensor '{name}' has shape {s:?}, config.json implies {shape:?}"),
                "the weights do not match config.json; use the model's own config",
            ));
        }
        Ok(v)
    }

    /// `Err` naming the first tensor (by name) that holds a NaN or an infinity, and where.
    pub fn check_finite(&self) -> std::result::Result<(), String> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in names {
            let values = &self.tensors[name].1;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "tensor '{name}' holds {} at element {i}",
                    values[i]
                ));
            }
        }
        Ok(())
    }

    /// Writes all tensors (f32) to `path`; refuses weights holding a NaN or an infinity.
    pub fn write(&self, path: &Path) -> Result<()> {
        // Such weights would be refused on load.
        self.check_finite().map_err(|what| {
            Error::Runtime(format!(
                "cannot save {}: {what} (the weights are out of range)",
                path.display()
            ))
        })?;
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = names
            .into_iter()
            .map(|n| {
                let (s, v) = &self.tensors[n];
                let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (n.clone(), s.clone(), b)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .filter_map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                    .ok()
                    .map(|v| (n.clone(), v))
            })
            .collect();
        let data = safetensors::serialize(views, None)
            .map_err(|e| Error::Runtime(format!("cannot serialise weights: {e}")))?;
        std::fs::write(path, data).map_err(|e| Error::io(path.display().to_string(), e))
    }
}

fn tensor1(v: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn tensor2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A Linear layer from a PyTorch `[out, in]` weight (and optional bias).
fn linear(
    map: &mut TensorMap,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
    device: &Device,
) -> Result<Linear> {
    let w = map.take(&format!("{prefix}.weight"), &[out, inp])?;
    let weight = tensor2(w, [out, inp], device).transpose();
    let bias = if bias {
        Some(Param::from_tensor(tensor1(
            map.take(&format!("{prefix}.bias"), &[out])?,
            device,
        )))
    } else {
        None
    };
    Ok(Linear {
        weight: Param::from_tensor(weight),
        bias,
    })
}

/// Name of the position-phase embedding tensor, `[phase_period, d_model]` (ours; Hugging
/// Face's Mamba has none).
pub const PHASE_TENSOR: &str = "phase_embeddings.weight";

/// Builds the backbone from tensors named as Hugging Face's `MambaModel` names them.
pub fn mamba_from_tensors(
    cfg: &MambaConfig,
    map: &mut TensorMap,
    device: &Device,
) -> Result<Mamba> {
    let (d, di, n, r, k) = (
        cfg.d_model,
        cfg.d_inner(),
        cfg.d_state,
        cfg.dt_rank(),
        cfg.d_conv,
    );
    let emb_name = if map.contains("embeddings.weight") {
        "embeddings.weight"
    } else {
        "embedding.weight"
    };
    let emb = map.take(emb_name, &[cfg.vocab_size, d])?;
    let phase = if cfg.phase_period > 0 {
        let w = map.take(PHASE_TENSOR, &[cfg.phase_period, d])?;
        Some(Param::from_tensor(tensor2(
            w,
            [cfg.phase_period, d],
            device,
        )))
    } else {
        None
    };
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let p = format!("layers.{i}.mixer");
        let norm = RmsNorm {
            weight: Param::from_tensor(tensor1(
                map.take(&format!("layers.{i}.norm.weight"), &[d])?,
                device,
            )),
            eps: cfg.norm_eps,
        };
        let in_proj = linear(map, &format!("{p}.in_proj"), 2 * di, d, cfg.bias, device)?;
        let conv = map.take(&format!("{p}.conv1d.weight"), &[di, 1, k])?;
        let conv_weight = tensor2(conv, [di, k], device).transpose();
        let conv_bias = if cfg.conv_bias {
            Some(Param::from_tensor(tensor1(
                map.take(&format!("{p}.conv1d.bias"), &[di])?,
                device,
            )))
        } else {
            None
        };
        let x_proj = linear(map, &format!("{p}.x_proj"), r + 2 * n, di, false, device)?;
        let dt_proj = linear(map, &format!("{p}.dt_proj"), di, r, false, device)?;
        let dt_bias = tensor1(map.take(&format!("{p}.dt_proj.bias"), &[di])?, device);
        let a_log = tensor2(map.take(&format!("{p}.A_log"), &[di, n])?, [di, n], device);
        let dskip = tensor1(map.take(&format!("{p}.D"), &[di])?, device);
        let out_proj = linear(map, &format!("{p}.out_proj"), d, di, cfg.bias, device)?;
        layers.push(MambaBlock {
            norm,
            in_proj,
            conv_weight: Param::from_tensor(conv_weight),
            conv_bias,
            x_proj,
            dt_proj,
            dt_bias: Param::from_tensor(dt_bias),
            a_log: Param::from_tensor(a_log),
            d: Param::from_tensor(dskip),
            out_proj,
            sizes: sizes_of(cfg),
            precision: Default::default(),
            no_bias: None,
        });
    }
    // A layer tensor left over (a layer past n_layer, say) means config.json describes other
    // weights: running without it would silently drop part of the model.
    if let Some(extra) = map
        .tensors
        .keys()
        .filter(|k| k.starts_with("layers."))
        .min()
    {
        return Err(Error::model(
            &map.dir,
            format!(
                "weights hold tensor '{extra}', which config.json (n_layer {}) does not describe",
                cfg.n_layer
            ),
            "the weights do not match config.json; use the model's own config",
        ));
    }
    let norm_f = RmsNorm {
        weight: Param::from_tensor(tensor1(map.take("norm_f.weight", &[d])?, device)),
        eps: cfg.norm_eps,
    };
    Ok(Mamba {
        embedding: Param::from_tensor(tensor2(emb, [cfg.vocab_size, d], device)),
        phase,
        layers,
        norm_f,
    })
}

/// Host values of a tensor.
pub fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

fn put_linear(map: &mut TensorMap, prefix: &str, l: &Linear) {
    let w = l.weight.val();
    let [inp, out] = w.dims();
    map.insert(
        format!("{prefix}.weight"),
        vec![out, inp],
        host_values(w.transpose()),
    );
    if let Some(b) = &l.bias {
        map.insert(format!("{prefix}.bias"), vec![out], host_values(b.val()));
    }
}

/// The backbone's tensors under Hugging Face names (the inverse of [`mamba_from_tensors`]).
pub fn mamba_to_tensors(m: &Mamba, map: &mut TensorMap) {
    let e = m.embedding.val();
    let [v, d] = e.dims();
    map.insert("embeddings.weight", vec![v, d], host_values(e));
    if let Some(p) = &m.phase {
        let w = p.val();
        let dims = w.dims().to_vec();
        map.insert(PHASE_TENSOR, dims, host_values(w));
    }
    for (i, l) in m.layers.iter().enumerate() {
        let p = format!("layers.{i}.mixer");
        map.insert(
            format!("layers.{i}.norm.weight"),
            vec![d],
            host_values(l.norm.weight.val()),
        );
        put_linear(map, &format!("{p}.in_proj"), &l.in_proj);
        let cw = l.conv_weight.val();
        let [k, di] = cw.dims();
        map.insert(
            format!("{p}.conv1d.weight"),
            vec![di, 1, k],
            host_values(cw.transpose()),
        );
        if let Some(b) = &l.conv_bias {
            map.insert(format!("{p}.conv1d.bias"), vec![di], host_values(b.val()));
        }
        put_linear(map, &format!("{p}.x_proj"), &l.x_proj);
        put_linear(map, &format!("{p}.dt_proj"), &l.dt_proj);
        map.insert(
            format!("{p}.dt_proj.bias"),
            vec![di],
            host_values(l.dt_bias.val()),
        );
        let a = l.a_log.val();
        let n = a.dims()[1];
        map.insert(format!("{p}.A_log"), vec![di, n], host_values(a));
        map.insert(format!("{p}.D"), vec![di], host_values(l.d.val()));
        put_linear(map, &format!("{p}.out_proj"), &l.out_proj);
    }
    map.insert("norm_f.weight", vec![d], host_values(m.norm_f.weight.val()));
}

/// A head's linear layer from the map (`head.weight` `[n_labels, d_model]`, `head.bias`).
pub fn head_from_tensors(
    map: &mut TensorMap,
    n_labels: usize,
    d_model: usize,
    device: &Device,
) -> Result<Linear> {
    linear(map, "head", n_labels, d_model, true, device)
}

/// Stores a head's linear layer.
pub fn head_to_tensors(head: &Linear, map: &mut TensorMap) {
    put_linear(map, "head", head);
}
