//! `thanos_rs._core`: Python bindings of thanos-core.
//!
//! Every function converts its arguments, releases the GIL, calls one core
//! function and maps the error. Inputs are copied before the GIL is released
//! (the kernels overwrite W and H anyway), so no other Python thread can
//! write into memory the kernel is reading; the exceptions,
//! `accumulate_hessian` and `mirror_hessian`, say why.

mod errors;

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use rayon::prelude::*;
use thanos_core::{Method, Pattern, PruneConfig, PruneError, Pruned, Real};

type LayerOut<'py> = (Bound<'py, PyAny>, Bound<'py, PyArray2<bool>>, f64);

/// Prunes one layer on the CPU. `weight` (c, b) and `hessian` (b, b) are
/// C-contiguous float32 or float64 arrays of the same dtype; `kind` is
/// "unstructured", "nm" or "structured". Returns (weight, mask, damp).
#[pyfunction]
#[pyo3(signature = (weight, hessian, method, kind, n, m, sparsity, alpha, block_size, damp))]
#[allow(clippy::too_many_arguments)]
fn prune_layer<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyAny>,
    hessian: &Bound<'py, PyAny>,
    method: &str,
    kind: &str,
    n: usize,
    m: usize,
    sparsity: f64,
    alpha: f64,
    block_size: usize,
    damp: f64,
) -> PyResult<LayerOut<'py>> {
    let cfg = config(method, kind, n, m, sparsity, alpha, block_size, damp).map_err(|e| errors::to_pyerr(py, e))?;
    if let Ok(w) = weight.extract::<PyReadonlyArray2<'py, f32>>() {
        let h = hessian.extract::<PyReadonlyArray2<'py, f32>>()?;
        return run(py, w, h, cfg);
    }
    let w = weight.extract::<PyReadonlyArray2<'py, f64>>()?;
    let h = hessian.extract::<PyReadonlyArray2<'py, f64>>()?;
    run(py, w, h, cfg)
}

#[allow(clippy::too_many_arguments)]
fn config(
    method: &str,
    kind: &str,
    n: usize,
    m: usize,
    sparsity: f64,
    alpha: f64,
    block_size: usize,
    damp: f64,
) -> thanos_core::Result<PruneConfig> {
    Ok(PruneConfig {
        method: Method::parse(method)?,
        pattern: Pattern::parse(kind, n, m)?,
        sparsity,
        alpha,
        block_size,
        damp,
    })
}

fn run<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, T>,
    h: PyReadonlyArray2<'py, T>,
    cfg: PruneConfig,
) -> PyResult<LayerOut<'py>> {
    let [c, b] = [w.shape()[0], w.shape()[1]];
    if h.shape() != [b, b] {
        return Err(errors::to_pyerr(
            py,
            PruneError::InvalidInput(format!("hessian must be ({b}, {b}), got {:?}", h.shape())),
        ));
    }
    let (mut wv, mut hv) = (copied(rows(py, "weight", &w)?), copied(rows(py, "hessian", &h)?));
    let (wv, pruned) =
        detach_call(py, move || thanos_core::prune_layer(&mut wv, &mut hv, c, b, &cfg).map(|p| (wv, p)))?;
    let Pruned { mask, damp } = pruned;
    Ok((wv.into_pyarray(py).reshape([c, b])?.into_any(), mask.into_pyarray(py).reshape([c, b])?, damp))
}

/// The values of a C-contiguous array (rust-numpy's `as_slice` also takes
/// Fortran order, which would be read transposed).
fn rows<'a, T: numpy::Element>(py: Python<'_>, name: &str, a: &'a PyReadonlyArray2<'_, T>) -> PyResult<&'a [T]> {
    if !a.is_c_contiguous() {
        return Err(not_c_contiguous(py, name));
    }
    Ok(a.as_slice()?)
}

/// [`rows`], writable.
fn rows_mut<'a, T: numpy::Element>(
    py: Python<'_>,
    name: &str,
    a: &'a mut PyReadwriteArray2<'_, T>,
) -> PyResult<&'a mut [T]> {
    if !a.is_c_contiguous() {
        return Err(not_c_contiguous(py, name));
    }
    Ok(a.as_slice_mut()?)
}

fn not_c_contiguous(py: Python<'_>, name: &str) -> PyErr {
    errors::to_pyerr(
        py,
        PruneError::InvalidInput(format!("{name} must be a C-contiguous array (numpy.ascontiguousarray)")),
    )
}

/// A copy made by all threads (each faults in its own pages): 64 MiB of a
/// 4096 x 4096 float32 input take one thread ~20 ms.
fn copied<T: Copy + Send + Sync>(src: &[T]) -> Vec<T> {
    src.par_iter().copied().collect()
}

/// Releases the GIL around a core call and maps its error or panic.
fn detach_call<R: Send>(py: Python<'_>, f: impl FnOnce() -> thanos_core::Result<R> + Send) -> PyResult<R> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(errors::to_pyerr(py, e)),
        Err(payload) => Err(errors::panic_to_pyerr(py, payload)),
    }
}

/// tr(dW H dW^T) / tr(W H W^T) for `weight`, `pruned` (c, b) and `hessian`
/// (b, b), C-contiguous arrays of one dtype (float32 or float64).
#[pyfunction]
fn relative_loss<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyAny>,
    pruned: &Bound<'py, PyAny>,
    hessian: &Bound<'py, PyAny>,
) -> PyResult<f64> {
    if let Ok(w) = weight.extract::<PyReadonlyArray2<'py, f32>>() {
        return loss_of(py, w, pruned.extract()?, hessian.extract()?);
    }
    loss_of::<f64>(py, weight.extract()?, pruned.extract()?, hessian.extract()?)
}

fn loss_of<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, T>,
    w_new: PyReadonlyArray2<'py, T>,
    h: PyReadonlyArray2<'py, T>,
) -> PyResult<f64> {
    let [c, b] = [w.shape()[0], w.shape()[1]];
    if w_new.shape() != [c, b] || h.shape() != [b, b] {
        let msg = format!(
            "loss needs weights of one shape (c, b) and a (b, b) hessian, got {:?}, {:?} and {:?}",
            w.shape(),
            w_new.shape(),
            h.shape()
        );
        return Err(errors::to_pyerr(py, PruneError::InvalidInput(msg)));
    }
    let (wv, nv, hv) =
        (copied(rows(py, "weight", &w)?), copied(rows(py, "pruned", &w_new)?), copied(rows(py, "hessian", &h)?));
    detach_call(py, move || thanos_core::relative_loss(&wv, &nv, &hv, c, b))
}

/// `hessian <- keep * hessian + add * inputs^T inputs` on the upper triangle
/// of `hessian` (b, b) in place, for `inputs` (tokens, b) of its dtype
/// (float32 or float64); `mirror_hessian` completes it. Unlike the other
/// functions, nothing is copied: `hessian` is an accumulator's own buffer,
/// and `inputs` a layer's input read inside a forward hook, which waits for
/// this call (copying them would cost a tenth of the work).
#[pyfunction]
fn accumulate_hessian<'py>(
    py: Python<'py>,
    hessian: &Bound<'py, PyAny>,
    inputs: &Bound<'py, PyAny>,
    keep: f64,
    add: f64,
) -> PyResult<()> {
    if let Ok(h) = hessian.extract::<PyReadwriteArray2<'py, f32>>() {
        return accumulate_into(py, h, inputs.extract()?, keep, add);
    }
    accumulate_into::<f64>(py, hessian.extract()?, inputs.extract()?, keep, add)
}

fn accumulate_into<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    mut h: PyReadwriteArray2<'py, T>,
    x: PyReadonlyArray2<'py, T>,
    keep: f64,
    add: f64,
) -> PyResult<()> {
    let b = h.shape()[1];
    if h.shape() != [b, b] || x.shape()[1] != b {
        let msg = format!("hessian must be (b, b) and inputs (tokens, b), got {:?} and {:?}", h.shape(), x.shape());
        return Err(errors::to_pyerr(py, PruneError::InvalidInput(msg)));
    }
    let xs = rows(py, "inputs", &x)?;
    let hs = rows_mut(py, "hessian", &mut h)?;
    detach_call(py, move || thanos_core::accumulate(hs, xs, b, keep, add))
}

/// Copies the upper triangle of `hessian` (b, b) onto the lower one, in place
/// (an accumulator's own buffer, like `accumulate_hessian`'s: not copied).
#[pyfunction]
fn mirror_hessian<'py>(py: Python<'py>, hessian: &Bound<'py, PyAny>) -> PyResult<()> {
    if let Ok(h) = hessian.extract::<PyReadwriteArray2<'py, f32>>() {
        return mirror_in(py, h);
    }
    mirror_in::<f64>(py, hessian.extract()?)
}

fn mirror_in<'py, T: Real + numpy::Element>(py: Python<'py>, mut h: PyReadwriteArray2<'py, T>) -> PyResult<()> {
    let b = h.shape()[0];
    let hs = rows_mut(py, "hessian", &mut h)?;
    detach_call(py, move || thanos_core::mirror(hs, b))
}

/// Number of threads the kernels use (rayon's global pool; set
/// RAYON_NUM_THREADS before the first call to change it).
#[pyfunction]
fn num_threads() -> usize {
    rayon::current_num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(prune_layer, m)?)?;
    m.add_function(wrap_pyfunction!(relative_loss, m)?)?;
    m.add_function(wrap_pyfunction!(accumulate_hessian, m)?)?;
    m.add_function(wrap_pyfunction!(mirror_hessian, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
