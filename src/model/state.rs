//! The recurrent state carried across chunk borders: state is data.

use burn::tensor::Tensor;

/// The state of one block after some prefix of the sequence.
#[derive(Debug, Clone)]
pub struct LayerState {
    /// The last `d_conv - 1` inputs of the convolution, `[batch, d_conv - 1, d_inner]`.
    pub conv: Tensor<3>,
    /// The SSM state, `[batch, d_inner, d_state]`.
    pub ssm: Tensor<3>,
}

/// The state of every block.
#[derive(Debug, Clone)]
pub struct MambaState {
    /// One entry per layer, in order.
    pub layers: Vec<LayerState>,
    /// Per batch row, the phase (position modulo the model's phase period) of the next
    /// position; all zero for models without a phase embedding.
    pub phase: Vec<usize>,
}
