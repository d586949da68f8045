//! `prune_layer`: validation, then one of the four methods on one layer.

use faer::Par;
use rayon::prelude::*;

use crate::config::{n_outlier_rows, Method, PruneConfig};
use crate::error::{invalid, Result};
use crate::hessian::{factor, fix_dead};
use crate::magnitude::magnitude;
use crate::mask::outlier_rows;
use crate::scalar::Real;
use crate::sparsegpt::sparsegpt;
use crate::thanos::{self, thanos, Layer};
use crate::wanda::wanda;

/// What pruning produced besides the new weights.
#[derive(Debug)]
pub struct Pruned {
    /// Row-major c x b, true = pruned (the weight is exactly zero).
    pub mask: Vec<bool>,
    /// Damping finally used (0 for methods that do not factor H).
    pub damp: f64,
}

/// Prunes `w` (row-major c x b, y = W x) in place given the undamped
/// `h` = (2/n) sum X X^T (b x b), which is overwritten (dead inputs).
pub fn prune_layer<T: Real>(w: &mut [T], h: &mut [T], c: usize, b: usize, cfg: &PruneConfig) -> Result<Pruned> {
    check_input(w, h, c, b, cfg)?;
    let hdiag: Vec<f64> = (0..b).map(|j| h[j * b + j].to_f64()).collect();
    let hsqrt: Vec<T> = (0..b).map(|j| h[j * b + j].sqrt()).collect();
    match cfg.method {
        Method::Magnitude => Ok(Pruned { mask: magnitude(w, c, b, cfg), damp: 0.0 }),
        Method::Wanda => Ok(Pruned { mask: wanda(w, &hsqrt, &hdiag, c, b, cfg), damp: 0.0 }),
        Method::Thanos | Method::SparseGpt => {
            let outliers = outlier_rows(w, &hdiag, c, b, n_outlier_rows(cfg.alpha, c));
            let kept: Vec<(usize, Vec<T>)> =
                (0..c).filter(|&k| outliers[k]).map(|k| (k, w[k * b..(k + 1) * b].to_vec())).collect();
            fix_dead(w, h, b);
            let par = Par::rayon(0);
            // Thanos's first selection needs only W: it fills the factor's idle time.
            let (f, start) = rayon::join(
                || factor(h, b, cfg.damp, par),
                || match cfg.method {
                    Method::Thanos => thanos::start(w, &hsqrt, c, cfg),
                    _ => thanos::Start::default(),
                },
            );
            let f = f?;
            let layer = Layer { c, b, hsqrt: &hsqrt, factor: &f, par };
            let mask = match cfg.method {
                Method::Thanos => thanos(w, &layer, cfg, &hdiag, &outliers, start)?,
                _ => sparsegpt(w, &layer, cfg)?,
            };
            // Outlier rows stay bit-identical to the input, dead inputs included.
            for (k, row) in kept {
                w[k * b..(k + 1) * b].copy_from_slice(&row);
            }
            Ok(Pruned { mask, damp: f.damp })
        }
    }
}

fn check_input<T: Real>(w: &[T], h: &[T], c: usize, b: usize, cfg: &PruneConfig) -> Result<()> {
    cfg.validate(c, b)?;
    if w.len() != c * b || h.len() != b * b {
        return Err(invalid(format!(
            "weight must hold c*b = {} values and hessian b*b = {}, got {} and {}",
            c * b,
            b * b,
            w.len(),
            h.len()
        )));
    }
    // Both scans read every value (33M for a 4096 x 4096 layer): in parallel.
    if !w.par_iter().all(|x| x.is_finite()) {
        return Err(invalid("weight contains NaN or Inf values"));
    }
    if !h.par_iter().all(|x| x.is_finite()) {
        return Err(invalid("hessian contains NaN or Inf values"));
    }
    if (0..b).any(|j| h[j * b + j] < T::from_f64(0.0)) {
        return Err(invalid("hessian has a negative diagonal entry; it must be positive semi-definite"));
    }
    Ok(())
}
