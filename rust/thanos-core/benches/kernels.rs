//! Criterion benches of the layer kernels on a synthetic layer with
//! heavy-tailed input features (like real LLM activations).
//!
//! `cargo bench` runs a 1024-wide layer by default; set THANOS_BENCH_SIZE
//! (e.g. 4096) for Llama-sized layers.

use criterion::{criterion_group, criterion_main, Criterion};
use thanos_core::{prune_layer, Method, Pattern, PruneConfig};

/// Deterministic pseudo-random numbers (xorshift), uniform in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// H = 2 X X^T / n with per-feature scales spanning two orders of magnitude.
fn hessian(b: usize) -> Vec<f32> {
    let n = b;
    let scale = noise(b, 7);
    let mut x = noise(b * n, 11);
    for (i, row) in x.chunks_mut(n).enumerate() {
        let s = (3.0 * scale[i]).exp();
        row.iter_mut().for_each(|v| *v *= s);
    }
    let xm = faer::MatRef::from_row_major_slice(&x, b, n);
    let mut h = vec![0.0f32; b * b];
    faer::linalg::matmul::matmul(
        faer::MatMut::from_row_major_slice_mut(&mut h, b, b),
        faer::Accum::Replace,
        xm,
        xm.transpose(),
        2.0 / n as f32,
        faer::Par::rayon(0),
    );
    h
}

fn bench(c: &mut Criterion) {
    let size: usize = std::env::var("THANOS_BENCH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let w0 = noise(size * size, 3);
    let h0 = hessian(size);
    let mut group = c.benchmark_group(format!("layer_{size}x{size}_f32"));
    group.sample_size(10);
    let cases = [
        (Method::Thanos, Pattern::Unstructured, "thanos/unstructured50"),
        (Method::Thanos, Pattern::NM { n: 2, m: 4 }, "thanos/2:4"),
        (Method::Thanos, Pattern::Structured, "thanos/structured30"),
        (Method::SparseGpt, Pattern::Unstructured, "sparsegpt/unstructured50"),
        (Method::SparseGpt, Pattern::NM { n: 2, m: 4 }, "sparsegpt/2:4"),
        (Method::Wanda, Pattern::Unstructured, "wanda/unstructured50"),
        (Method::Magnitude, Pattern::Unstructured, "magnitude/unstructured50"),
    ];
    for (method, pattern, name) in cases {
        let sparsity = if pattern == Pattern::Structured { 0.3 } else { 0.5 };
        let cfg = PruneConfig { method, pattern, sparsity, alpha: 0.0, block_size: 128, damp: 0.01 };
        group.bench_function(name, |bench| {
            bench.iter_batched(
                || (w0.clone(), h0.clone()),
                |(mut w, mut h)| prune_layer(&mut w, &mut h, size, size, &cfg).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
