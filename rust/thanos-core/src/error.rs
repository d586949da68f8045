//! The one error type of the core; the bindings map each variant to its own
//! Python exception.

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// An argument is invalid; the message says what to change.
    #[error("{0}")]
    InvalidInput(String),
    /// The damped Hessian still has no Cholesky factor after every retry.
    #[error(
        "Hessian is not positive definite even with damping {damp:e} x mean(diag(H)); \
         check that H = (2/n) X X^T was accumulated from finite activations, \
         or pass a larger damp"
    )]
    NotPositiveDefinite { damp: f64 },
}

pub type Result<T> = std::result::Result<T, PruneError>;

pub(crate) fn invalid(msg: impl Into<String>) -> PruneError {
    PruneError::InvalidInput(msg.into())
}
