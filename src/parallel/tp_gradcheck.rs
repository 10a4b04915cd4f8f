//! Finite-difference checks of the tensor-parallel model: every communication region (the
//! vocab-parallel embedding's reduce, each block's copy and reduce regions, the head's copy
//! region and the vocab-parallel cross-entropy's gather) must have the backward that is the
//! derivative of its forward. The TP model runs on threads with an in-process communicator;
//! for each global tensor, ⟨∂L/∂θ, d⟩ from backward (shards reassembled) is compared with the
//! central difference of the TP forward's loss along a random direction d.

use super::shard::{repad, StageLayout};
use super::stage::StageModel;
use super::Tp;
use crate::backend::cpu::Cpu;
use crate::backend::prelude::*;
use crate::comm::threads::ThreadComm;
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const B: usize = 2;
const T: usize = 5;

fn cfg(tp: usize) -> Gpt2Config {
    Gpt2Config::new(150, 8, 16, 2, 4).with_tp_padding(tp)
}

/// Loss (mean over tokens) and the global gradient of the TP model on `tp` threads, its LM
/// head computed `rows` rows at a time (0 = automatic: all `B·T` at once at this size).
fn loss_and_grad(
    tp: usize,
    rows: usize,
    params: &[f32],
    tok: &[u32],
    tgt: &[u32],
) -> (f64, Vec<f32>) {
    let c = cfg(tp);
    let global = ParamLayout::new(&c);
    let comms = ThreadComm::group(tp);
    let results: Vec<(f64, StageLayout, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                let global = &global;
                s.spawn(move || {
                    let ly = StageLayout::new(&c, global, tp, r, 1, 0).unwrap();
                    let mut local = vec![0.0f32; ly.total];
                    ly.extract(global, params, &mut local);
                    let model =
                        StageModel::new(c, ly.clone(), Cpu::new(1)).with_head_chunk_rows(rows);
                    let local = model.be.upload_vec(local).unwrap();
                    let mut acts = model.acts(B, T).unwrap();
                    acts.tokens.copy_from_slice(tok);
                    acts.targets.copy_from_slice(tgt);
                    let tpc = Tp::of(&comm);
                    let scale = 1.0 / (B * T) as f32;
                    let mut grads = model.be.zeros(ly.total).unwrap();
                    let mut sc = model.scratch(B, T).unwrap();
                    let loss = model
                        .forward(&local, &mut acts, &mut sc, Some((&mut grads, scale)), &tpc)
                        .unwrap();
                    model
                        .backward(&local, &mut grads, &acts, &mut sc, &tpc, None)
                        .unwrap();
                    (loss, ly, grads.into_vec())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut g = vec![f32::NAN; global.total];
    for (_, ly, grads) in &results {
        ly.insert(&global, grads, &mut g);
    }
    // Replicated tensors must get identical gradients on every TP rank.
    for (_, ly, grads) in &results[1..] {
        let mut again = g.clone();
        ly.insert(&global, grads, &mut again);
        assert_eq!(again, g, "replicated gradients differ across TP ranks");
    }
    (results[0].0, g)
}

#[test]
fn tensor_parallel_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let tok: Vec<u32> = (0..B * T).map(|_| rng.next_u32() % 150).collect();
    let tgt: Vec<u32> = (0..B * T).map(|_| rng.next_u32() % 150).collect();
    // tp = 4 runs the LM head in chunks of 3 rows (the last one 1), one all-gather each.
    for (tp, rows) in [(2usize, 0usize), (4, 3)] {
        let c = cfg(tp);
        let global = ParamLayout::new(&c);
        let mut p = vec![0.0f32; global.total];
        global.init(&c, 11, &mut p);
        // Non-trivial LayerNorms and biases, so every region carries signal.
        for e in &global.entries {
            if e.shape.len() == 1 {
                for x in &mut p[e.offset..e.offset + e.len] {
                    *x += 0.3 * ((rng.next_u32() % 1000) as f32 / 500.0 - 1.0);
                }
            }
        }
        let (_, g) = loss_and_grad(tp, rows, &p, &tok, &tgt);
        // The unsharded model (its own vocabulary padding) for comparison.
        let l1 = ParamLayout::new(&cfg(1));
        let (_, g1) = loss_and_grad(1, 0, &repad(&global, &p, &l1), &tok, &tgt);
        let g1 = repad(&l1, &g1, &global);
        for e in &global.entries {
            let d: Vec<f32> = (0..e.len)
                .map(|_| (rng.next_u32() % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let eps = 1e-2f32;
            let at = |sign: f32| {
                let mut q = p.clone();
                for (x, dd) in q[e.offset..e.offset + e.len].iter_mut().zip(&d) {
                    *x += sign * eps * dd;
                }
                loss_and_grad(tp, rows, &q, &tok, &tgt).0
            };
            let fd = (at(1.0) - at(-1.0)) / (2.0 * eps as f64);
            let dot = |g: &[f32]| -> f64 {
                g[e.offset..e.offset + e.len]
                    .iter()
                    .zip(&d)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum()
            };
            let (an, an1) = (dot(&g), dot(&g1));
            let tol = 2e-2 * an.abs().max(fd.abs()).max(1e-3);
            assert!(
                (fd - an).abs() <= tol,
                "tp={tp} {}: finite difference {fd} vs backward {an}",
                e.name
            );
            assert!(
                (an - an1).abs() <= 1e-4 * an1.abs().max(1e-3),
                "tp={tp} {}: TP gradient {an} vs unsharded {an1}",
                e.name
            );
        }
    }
}

/// With tp = pp = 1 the stage's loss and gradients do not depend on how many rows its LM head
/// computes at once (the reference: all of them, the `[N, Vp]` logits at once, which the HF
/// parity tests check).
#[test]
fn head_chunks_do_not_change_the_unsharded_stage() {
    use crate::parallel::whole::Whole;
    let c = cfg(1);
    let global = ParamLayout::new(&c);
    let mut p = vec![0.0f32; global.total];
    global.init(&c, 4, &mut p);
    let tok: Vec<u32> = (0..B * T).map(|i| (i * 37 % 150) as u32).collect();
    let tgt: Vec<u32> = (0..B * T).map(|i| (i * 53 % 150) as u32).collect();
    let model = Whole::new(c, crate::backend::cpu::Cpu::new(1), B * T).unwrap();
    let mut slot = model.slot(B, T).unwrap();
    let scale = 1.0 / (B * T) as f32;
    let pb = model.be().upload(&p).unwrap();
    let mut gw = model.be().zeros(global.total).unwrap();
    let want = model
        .loss(&mut slot, &pb, &tok, &tgt, Some((&mut gw, scale)))
        .unwrap();
    for rows in [0, 1, 3, B * T - 1, B * T, 4 * B * T] {
        let (loss, g) = loss_and_grad(1, rows, &p, &tok, &tgt);
        assert!(
            (loss - want).abs() <= 1e-6 * want.abs(),
            "rows {rows}: {loss} vs {want}"
        );
        for (a, b) in g.iter().zip(gw.iter()) {
            assert!(
                (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
                "rows {rows}: {a} vs {b}"
            );
        }
    }
}
