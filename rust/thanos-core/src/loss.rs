//! The layer loss every method reports: tr(dW H dW^T) / tr(W H W^T).

use rayon::prelude::*;

use crate::scalar::Real;

/// Relative loss of `w_new` against `w` under the (undamped) `h`, in f64.
pub fn relative_loss<T: Real>(w: &[T], w_new: &[T], h: &[T], b: usize) -> f64 {
    let quad = |row: &dyn Fn(usize) -> f64| -> f64 {
        (0..b)
            .map(|i| {
                let ri = row(i);
                if ri == 0.0 {
                    return 0.0;
                }
                ri * (0..b).map(|j| h[i * b + j].to_f64() * row(j)).sum::<f64>()
            })
            .sum()
    };
    let (num, den) = w
        .par_chunks(b)
        .zip(w_new.par_chunks(b))
        .map(|(r0, r1)| {
            let d = quad(&|j| r1[j].to_f64() - r0[j].to_f64());
            let n = quad(&|j| r0[j].to_f64());
            (d, n)
        })
        .reduce(|| (0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}
