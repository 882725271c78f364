//! Helpers shared by the integration tests.

use std::path::Path;

/// `m` with every value of tensor `name` replaced by `value`.
pub fn set_tensor(m: &Path, name: &str, value: f32) {
    let path = m.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor(name).unwrap();
    let values: Vec<u8> = (0..w.data().len() / 4)
        .flat_map(|_| value.to_le_bytes())
        .collect();
    let edited =
        safetensors::tensor::TensorView::new(w.dtype(), w.shape().to_vec(), &values).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    tensors.push((name.into(), edited));
    std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
}
