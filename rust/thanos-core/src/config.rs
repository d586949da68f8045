//! What to prune and how much: the validated job description and the counts.
//!
//! The counts mirror `python/thanos_rs/spec.py` operation for operation, so
//! every backend removes exactly the same number of weights, rows and columns.
//! Rounding is half-up; `ceil` ignores float noise below 1e-9.

use crate::error::{invalid, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Thanos,
    SparseGpt,
    Wanda,
    Magnitude,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Unstructured,
    /// n zeros in every m consecutive weights of a row.
    NM {
        n: usize,
        m: usize,
    },
    /// Whole input columns.
    Structured,
}

#[derive(Clone, Copy, Debug)]
pub struct PruneConfig {
    pub method: Method,
    pub pattern: Pattern,
    /// Fraction of zeros (unstructured, structured; ignored for N:M).
    pub sparsity: f64,
    /// Thanos outlier-row fraction (N:M and structured).
    pub alpha: f64,
    pub block_size: usize,
    /// Initial damping, a fraction of mean(diag(H)).
    pub damp: f64,
}

impl Method {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "thanos" => Ok(Method::Thanos),
            "sparsegpt" => Ok(Method::SparseGpt),
            "wanda" => Ok(Method::Wanda),
            "magnitude" => Ok(Method::Magnitude),
            _ => Err(invalid(format!("unknown method {name:?}: choose one of thanos, sparsegpt, wanda, magnitude"))),
        }
    }
}

impl Pattern {
    /// `kind` is "unstructured", "nm" (with n, m) or "structured".
    pub fn parse(kind: &str, n: usize, m: usize) -> Result<Self> {
        match kind {
            "unstructured" => Ok(Pattern::Unstructured),
            "structured" => Ok(Pattern::Structured),
            "nm" if 0 < n && n < m => Ok(Pattern::NM { n, m }),
            "nm" => Err(invalid(format!("N:M pattern needs 0 < N < M, got {n}:{m}"))),
            _ => Err(invalid(format!("unknown pattern {kind:?}: use unstructured, structured or N:M"))),
        }
    }
}

impl PruneConfig {
    /// Checks everything that can be wrong before any work is done.
    pub fn validate(&self, c: usize, b: usize) -> Result<()> {
        if c == 0 || b == 0 {
            return Err(invalid(format!("weight must not be empty, got shape ({c}, {b})")));
        }
        if !(0.0..=1.0).contains(&self.sparsity) {
            return Err(invalid(format!("sparsity must be a fraction in [0, 1], got {}", self.sparsity)));
        }
        if !(0.0..1.0).contains(&self.alpha) {
            return Err(invalid(format!("alpha must be in [0, 1), got {}", self.alpha)));
        }
        if self.alpha > 0.0 && self.method != Method::Thanos {
            return Err(invalid("alpha (outlier rows) belongs to Thanos; other methods need alpha=0"));
        }
        if self.alpha > 0.0 && self.pattern == Pattern::Unstructured {
            return Err(invalid("alpha applies to N:M and structured patterns; use alpha=0 for unstructured"));
        }
        if self.block_size == 0 {
            return Err(invalid("block_size must be a positive integer"));
        }
        if !(self.damp > 0.0 && self.damp.is_finite()) {
            return Err(invalid(format!("damp must be a finite number > 0, got {}", self.damp)));
        }
        if let Pattern::NM { n, m } = self.pattern {
            if !(0 < n && n < m) {
                return Err(invalid(format!("N:M pattern needs 0 < N < M, got {n}:{m}")));
            }
            if !b.is_multiple_of(m) {
                return Err(invalid(format!(
                    "pattern {n}:{m} needs the input width to be a multiple of {m}, but the layer has {b} input columns"
                )));
            }
        }
        Ok(())
    }

    /// The block width actually used: a multiple of m for N:M, at most b.
    pub fn block_for(&self, b: usize) -> usize {
        let mut bs = self.block_size;
        if let Pattern::NM { m, .. } = self.pattern {
            bs = m.max(bs - bs % m);
        }
        bs.min(b).max(1)
    }
}

pub fn round_half_up(x: f64) -> usize {
    (x + 0.5).floor().max(0.0) as usize
}

pub fn ceil_count(x: f64) -> usize {
    (x - 1e-9).ceil().max(0.0) as usize
}

/// Unstructured: the exact number of zeros in a c x b layer.
pub fn target_zeros(p: f64, c: usize, b: usize) -> usize {
    round_half_up(p * (c * b) as f64)
}

/// Zeros owed to the first `i` units of size `unit` (rows for Wanda, blocks
/// for SparseGPT); differences add up exactly to the total.
pub fn cumulative_share(p: f64, unit: usize, i: usize) -> usize {
    round_half_up(p * (unit * i) as f64)
}

pub fn n_outlier_rows(alpha: f64, c: usize) -> usize {
    ceil_count(alpha * c as f64).min(c)
}

/// Thanos structured: columns removed from the non-outlier rows.
pub fn structured_columns(p: f64, alpha: f64, b: usize) -> usize {
    ceil_count(p * b as f64 / (1.0 - alpha)).min(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_half_up_and_ignore_float_noise() {
        assert_eq!(target_zeros(0.5, 3, 3), 5);
        assert_eq!(ceil_count(0.7 * 10.0), 7);
        assert_eq!(structured_columns(0.3, 0.0, 10), 3);
        assert_eq!(n_outlier_rows(0.1, 64), 7);
        let total: usize = (0..7).map(|k| cumulative_share(0.25, 10, k + 1) - cumulative_share(0.25, 10, k)).sum();
        assert_eq!(total, target_zeros(0.25, 7, 10));
    }

    #[test]
    fn nm_block_is_a_multiple_of_m() {
        let cfg = PruneConfig {
            method: Method::Thanos,
            pattern: Pattern::NM { n: 1, m: 3 },
            sparsity: 0.0,
            alpha: 0.0,
            block_size: 128,
            damp: 0.01,
        };
        assert_eq!(cfg.block_for(300), 126);
        assert_eq!(cfg.block_for(6), 6);
    }
}
