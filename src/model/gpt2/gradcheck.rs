//! Finite-difference checks of every layer's backward pass.
//!
//! For a layer y = f(x, θ) and a fixed random r, the scalar L = Σ r ⊙ y (summed in f64) has
//! gradient ∂L/∂x = backward(dy = r). Along a random direction d, the central difference
//! (L(x + εd) − L(x − εd)) / 2ε must equal ⟨∂L/∂x, d⟩; checked for every input and parameter.

use crate::backend::cpu::kernels::attention::{self, AttnDims};
use crate::backend::cpu::kernels::{embedding, layernorm, linear, loss, mlp};
use crate::backend::cpu::matmul::Gemm;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = (rng.next_u32() as f64 + 1.0) / 4294967296.0;
            let u2 = rng.next_u32() as f64 / 4294967296.0;
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * scale
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Checks ⟨grad, d⟩ against the central difference of `loss` around `x` along random d.
fn check_dir(name: &str, x: &[f32], grad: &[f32], loss: &mut dyn FnMut(&[f32]) -> f64, seed: u64) {
    check_dir_eps(name, x, grad, loss, seed, 1e-3)
}

/// [`check_dir`] with step `eps` along a unit-variance random direction.
fn check_dir_eps(
    name: &str,
    x: &[f32],
    grad: &[f32],
    loss: &mut dyn FnMut(&[f32]) -> f64,
    seed: u64,
    eps: f32,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for trial in 0..2 {
        let d = randn(&mut rng, x.len(), 1.0);
        let xp: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a + eps * b).collect();
        let xm: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a - eps * b).collect();
        let fd = (loss(&xp) - loss(&xm)) / (2.0 * eps as f64);
        let an = dot(grad, &d);
        let tol = 1e-2 * an.abs().max(fd.abs()).max(1e-2);
        assert!(
            (fd - an).abs() <= tol,
            "{name} (trial {trial}): finite difference {fd} vs backward {an}"
        );
    }
}

#[test]
fn layernorm_backward() {
    let (n, c) = (6, 16);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = randn(&mut rng, n * c, 1.0);
    let w = randn(&mut rng, c, 1.0);
    let b = randn(&mut rng, c, 0.5);
    let r = randn(&mut rng, n * c, 1.0);
    let f = |x: &[f32], w: &[f32], b: &[f32]| {
        let (mut y, mut m, mut s) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm::forward(&mut y, &mut m, &mut s, x, w, b);
        (dot(&y, &r), m, s)
    };
    let (_, m, s) = f(&x, &w, &b);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm::backward(&mut dx, &mut dw, &mut db, &r, &x, &w, &m, &s);
    check_dir("layernorm dx", &x, &dx, &mut |v| f(v, &w, &b).0, 2);
    check_dir("layernorm dw", &w, &dw, &mut |v| f(&x, v, &b).0, 3);
    check_dir("layernorm db", &b, &db, &mut |v| f(&x, &w, v).0, 4);
}

#[test]
fn linear_backward() {
    let (n, ic, oc) = (5, 12, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = randn(&mut rng, n * ic, 1.0);
    let w = randn(&mut rng, ic * oc, 0.3);
    let b = randn(&mut rng, oc, 0.1);
    let r = randn(&mut rng, n * oc, 1.0);
    let f = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut y = vec![0.0; n * oc];
        linear::forward(&mut y, x, w, b, n, ic, oc, &Gemm::builtin(1));
        dot(&y, &r)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; ic * oc], vec![0.0; oc]);
    linear::backward(
        &mut dx,
        &mut dw,
        &mut db,
        &r,
        &x,
        &w,
        n,
        ic,
        oc,
        &Gemm::builtin(1),
    );
    check_dir("linear dx", &x, &dx, &mut |v| f(v, &w, &b), 6);
    check_dir("linear dw", &w, &dw, &mut |v| f(&x, v, &b), 7);
    check_dir("linear db", &b, &db, &mut |v| f(&x, &w, v), 8);
}

#[test]
fn gelu_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = randn(&mut rng, 300, 2.0);
    let r = randn(&mut rng, 300, 1.0);
    let f = |x: &[f32]| {
        let mut y = vec![0.0; x.len()];
        mlp::gelu_forward(&mut y, x);
        dot(&y, &r)
    };
    let mut dx = vec![0.0; 300];
    mlp::gelu_backward(&mut dx, &x, &r);
    check_dir("gelu", &x, &dx, &mut |v| f(v), 10);
}

#[test]
fn attention_backward() {
    let d = AttnDims {
        b: 2,
        t: 5,
        c: 12,
        nh: 3,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let qkv = randn(&mut rng, d.b * d.t * 3 * d.c, 1.0);
    let r = randn(&mut rng, d.b * d.t * d.c, 1.0);
    let f = |qkv: &[f32]| {
        let (mut y, mut att) = (
            vec![0.0; d.b * d.t * d.c],
            vec![0.0; d.b * d.nh * d.t * d.t],
        );
        attention::forward(&mut y, &mut att, qkv, d, &Gemm::builtin(1));
        (dot(&y, &r), att)
    };
    let (_, att) = f(&qkv);
    let mut dqkv = vec![0.0; qkv.len()];
    attention::backward(&mut dqkv, &r, &qkv, &att, d, &Gemm::builtin(1));
    check_dir("attention dqkv", &qkv, &dqkv, &mut |v| f(v).0, 12);
}

#[test]
fn embedding_backward() {
    let (vp, p, c, t) = (10, 6, 4, 3);
    let tok = [3u32, 1, 3, 9, 0, 3];
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let wte = randn(&mut rng, vp * c, 1.0);
    let wpe = randn(&mut rng, p * c, 1.0);
    let r = randn(&mut rng, tok.len() * c, 1.0);
    let f = |wte: &[f32], wpe: &[f32]| {
        let mut y = vec![0.0; tok.len() * c];
        embedding::forward(&mut y, &tok, wte, wpe, t, c);
        dot(&y, &r)
    };
    let (mut dwte, mut dwpe) = (vec![0.0; vp * c], vec![0.0; p * c]);
    embedding::backward(&mut dwte, &mut dwpe, &r, &tok, t, c);
    check_dir("embedding dwte", &wte, &dwte, &mut |v| f(v, &wpe), 14);
    check_dir("embedding dwpe", &wpe, &dwpe, &mut |v| f(&wte, v), 15);
}

#[test]
fn cross_entropy_backward_masks_padding() {
    let (n, v, vp) = (4, 7, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let z = randn(&mut rng, n * vp, 2.0);
    let y = [0u32, 6, 3, 3];
    let f = |z: &[f32]| {
        let (mut zz, mut l) = (z.to_vec(), vec![0.0; n]);
        loss::softmax_xent(&mut zz, &mut l, &y, vp, v, None);
        l.iter().map(|&x| x as f64).sum::<f64>()
    };
    let (mut dz, mut l) = (z.clone(), vec![0.0; n]);
    loss::softmax_xent(&mut dz, &mut l, &y, vp, v, Some(1.0));
    assert!(
        (0..n).all(|i| dz[i * vp + v] == 0.0),
        "padded logits get no gradient"
    );
    check_dir("cross-entropy dlogits", &z, &dz, &mut |v| f(v), 17);
}
