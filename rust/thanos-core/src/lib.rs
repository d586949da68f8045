//! thanos-core: one-shot pruning kernels for one linear layer `y = W x`
//! (Thanos, SparseGPT, Wanda, magnitude), as specified in ALGORITHM.md.
//!
//! Pure Rust: slices plus dimensions in, `Result<_, PruneError>` out. The
//! Python bindings live in the `thanos-py` crate.

mod accumulate;
mod config;
mod error;
mod hessian;
mod layer;
mod loss;
mod magnitude;
mod mask;
mod obs;
mod scalar;
mod scan;
mod sets;
mod simd;
mod solve;
mod sparsegpt;
#[cfg(test)]
mod testing;
mod thanos;
mod update;
mod wanda;

pub use accumulate::{accumulate, mirror};
pub use config::{
    ceil_count, cumulative_share, n_outlier_rows, round_half_up, structured_columns, target_zeros, Method, Pattern,
    PruneConfig,
};
pub use error::{PruneError, Result};
pub use hessian::{factor, fix_dead, Factor, MAX_DAMP_RETRIES};
pub use layer::{prune_layer, Pruned};
pub use loss::relative_loss;
pub use scalar::Real;
