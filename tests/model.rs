//! The model against Hugging Face transformers, and chunked inference against one pass.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use genomamba::alphabet::tokenize;
use genomamba::infer::hidden_states;
use genomamba::model::weights::host_values;
use genomamba::model::{GenoModel, MambaConfig, ModelConfig, Precision};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

/// max |a - b| / max |b|
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    num / den
}

#[test]
fn hugging_face_checkpoints_match_transformers_hidden_states() {
    let device = Device::flex();
    let mut cases = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("config.json").is_file() {
            continue;
        }
        let model =
            GenoModel::load(&dir, &device).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        for seq in expected["sequences"].as_array().unwrap() {
            let dna = seq["dna"].as_str().unwrap();
            let tokens = tokenize(dna.as_bytes()).unwrap();
            let ids: Vec<u8> = seq["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(tokens, ids, "tokenizer disagrees with the fixture");
            let want: Vec<f64> = seq["hidden"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            for chunk in [1usize, 7, 64, 100_000] {
                let got = hidden_states(&model.backbone, &tokens, chunk, &device).unwrap();
                let err = rel_err(&got, &want);
                assert!(
                    err <= 1e-4,
                    "{}: chunk {chunk}: relative error {err:e} > 1e-4",
                    dir.display()
                );
            }
        }
        cases += 1;
    }
    assert!(
        cases >= 6,
        "expected at least 6 fixture checkpoints, found {cases}"
    );
}

fn test_dna() -> Vec<u8> {
    // Real-looking DNA with soft-masked runs, an N run and IUPAC codes, ~1.8 kb.
    let mut s = Vec::new();
    let unit = b"ACGTTGCAacgtgGGATCCNNNNNNNNNNNNNNNNNNNNttagcRYACGATCGATCGGGCTAGCTAGGCTTAAGCTTAG";
    let mut x: u32 = 12345;
    while s.len() < 1800 {
        s.extend_from_slice(unit);
        for _ in 0..40 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            s.push(b"ACGTacgt"[(x >> 16) as usize % 8]);
        }
    }
    s
}

#[test]
fn chunked_inference_equals_one_pass() {
    // Also with a codon-phase embedding, whose phase must be carried across chunk borders
    // (chunk sizes not divisible by 3 catch a phase restarted at every chunk).
    let device = Device::flex();
    let tokens = tokenize(&test_dna()).unwrap();
    let mut wholes = Vec::new();
    for phase in [0, 3] {
        let mut arch = MambaConfig::new(32, 3);
        arch.d_state = 8;
        arch.phase_period = phase;
        let model = GenoModel::init(ModelConfig::new(arch), 7, &device).unwrap();
        let whole = hidden_states(&model.backbone, &tokens, tokens.len(), &device).unwrap();
        let whole64: Vec<f64> = whole.iter().map(|v| *v as f64).collect();
        for chunk in [1usize, 3, 4, 7, 64, 1000, tokens.len() + 5] {
            let got = hidden_states(&model.backbone, &tokens, chunk, &device).unwrap();
            let err = rel_err(&got, &whole64);
            assert!(
                err <= 1e-5,
                "phase {phase} chunk {chunk}: relative error {err:e} > 1e-5"
            );
        }
        wholes.push(whole64);
    }
    // Same seed, same other tensors: the phase embedding alone changes the states.
    let no_phase: Vec<f32> = wholes[0].iter().map(|v| *v as f32).collect();
    assert!(rel_err(&no_phase, &wholes[1]) > 1e-3);
}

#[test]
fn half_precision_stays_close_to_f32_and_chunks_exactly() {
    // `--precision bf16|f16`: the blocks' activations and projections run in the half format;
    // the hidden states move by about the format's rounding and no more, and chunking (the
    // conv window and scan state carried across borders) still changes nothing.
    let device = Device::flex();
    let tokens = tokenize(&test_dna()).unwrap();
    let mut arch = MambaConfig::new(32, 3);
    arch.d_state = 8;
    let model = GenoModel::init(ModelConfig::new(arch.clone()), 5, &device).unwrap();
    let f32_states = hidden_states(&model.backbone, &tokens, tokens.len(), &device).unwrap();
    let f32_states: Vec<f64> = f32_states.iter().map(|v| *v as f64).collect();
    for (precision, tol) in [(Precision::Bf16, 3e-2), (Precision::F16, 4e-3)] {
        // A fresh copy each time: the weights are stored rounded to the format.
        let mut model = GenoModel::init(ModelConfig::new(arch.clone()), 5, &device).unwrap();
        model.backbone.set_precision(precision);
        let whole = hidden_states(&model.backbone, &tokens, tokens.len(), &device).unwrap();
        let err = rel_err(&whole, &f32_states);
        assert!(
            err <= tol && err > 1e-6,
            "{precision:?}: relative difference to f32 {err:e} not in (1e-6, {tol:e}]"
        );
        eprintln!("{precision:?}: relative difference to f32 {err:.2e}");
        let whole64: Vec<f64> = whole.iter().map(|v| *v as f64).collect();
        for chunk in [7usize, 500] {
            let got = hidden_states(&model.backbone, &tokens, chunk, &device).unwrap();
            let err = rel_err(&got, &whole64);
            assert!(err <= 1e-5, "{precision:?} chunk {chunk}: {err:e} > 1e-5");
        }
    }
}

#[test]
fn fused_residual_add_and_norm_equal_the_blockwise_forward() {
    // `Mamba::forward` adds each block's output to the residual stream fused with the next
    // block's norm (`add_rms_norm`); running the blocks one by one (`MambaBlock::forward`: norm,
    // mixer, add) and the final norm must give the same hidden states, in f32 and with f16
    // activations (the norm rounded to f16 once either way).
    let device = Device::flex();
    let dna = test_dna();
    let tokens = tokenize(&dna[..600]).unwrap();
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    for precision in [Precision::F32, Precision::F16] {
        let mut arch = MambaConfig::new(32, 3);
        arch.d_state = 8;
        let mut model = GenoModel::init(ModelConfig::new(arch), 11, &device).unwrap();
        model.backbone.set_precision(precision);
        let m = &model.backbone;
        let ids: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(ids.clone(), [1, tokens.len()]), &device);
        let (fused, _) = m.forward(ids.clone(), m.zero_state(1, &device));
        let mut x = m.embed(ids);
        for (layer, st) in m.layers.iter().zip(m.zero_state(1, &device).layers) {
            x = layer.forward(x, st).0;
        }
        let want = m.norm_f.forward(x);
        let want: Vec<f64> = host_values(want).iter().map(|v| *v as f64).collect();
        let err = rel_err(&host_values(fused), &want);
        assert!(err <= 1e-6, "{precision:?}: fused vs blockwise {err:e}");
    }
}

#[test]
fn padding_a_batch_does_not_change_a_record() {
    let device = Device::flex();
    let model = GenoModel::init(ModelConfig::new(MambaConfig::new(16, 2)), 3, &device).unwrap();
    let a = tokenize(b"ACGTACGGTTNNacgtAC").unwrap();
    let b = tokenize(&test_dna()[..300]).unwrap();
    let alone = hidden_states(&model.backbone, &a, 5, &device).unwrap();
    let d = 16;
    let mut batched = Vec::new();
    genomamba::infer::run_batch(
        &model.backbone,
        &[&a, &b],
        5,
        &device,
        false,
        false,
        &mut |c| {
            for t in 0..c.len {
                if c.start + t < a.len() {
                    batched.extend_from_slice(c.at(0, t));
                }
            }
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(batched.len(), a.len() * d);
    let alone64: Vec<f64> = alone.iter().map(|v| *v as f64).collect();
    assert!(rel_err(&batched, &alone64) <= 1e-5);
}

/// `(start, len, hidden states)` of every chunk `run_batch` hands on for `records`.
fn batch_chunks(
    model: &GenoModel,
    records: &[&[u8]],
    chunk: usize,
    reverse: bool,
    pad: bool,
) -> Vec<(usize, usize, Vec<f32>)> {
    let mut out = Vec::new();
    genomamba::infer::run_batch(
        &model.backbone,
        records,
        chunk,
        &Device::flex(),
        reverse,
        pad,
        &mut |c| {
            out.push((c.start, c.len, c.values.to_vec()));
            Ok(())
        },
    )
    .unwrap();
    out
}

/// A GPU runs a record's last chunk padded to a whole chunk (one shape for every chunk), and
/// a batch of whole records padded to one of few lengths: the hidden states handed on must
/// be those of the unpadded run, chunk by chunk, in both directions, and for the pieces of a
/// long record.
#[test]
fn padding_the_last_chunk_changes_no_hidden_state() {
    let device = Device::flex();
    let mut arch = MambaConfig::new(16, 2);
    arch.phase_period = 3;
    let model = GenoModel::init(ModelConfig::new(arch), 5, &device).unwrap();
    let a = tokenize(&test_dna()[..23]).unwrap();
    let b = tokenize(&test_dna()[100..117]).unwrap();
    let chunks = |pad: bool, reverse: bool| batch_chunks(&model, &[&a, &b], 10, reverse, pad);
    for reverse in [false, true] {
        let (plain, padded) = (chunks(false, reverse), chunks(true, reverse));
        // Chunks of 10, 10 and 3 positions either way.
        let shape: Vec<(usize, usize)> = padded.iter().map(|(s, l, _)| (*s, *l)).collect();
        assert_eq!(shape, vec![(0, 10), (10, 10), (20, 3)]);
        for ((_, _, p), (_, _, q)) in plain.iter().zip(&padded) {
            let p64: Vec<f64> = p.iter().map(|v| *v as f64).collect();
            let err = rel_err(q, &p64);
            assert!(
                err <= 1e-6,
                "reverse {reverse}: padded last chunk differs by {err:e}"
            );
        }
    }
    // Whole records within one chunk run padded to one of few lengths (23 to 24 here).
    for reverse in [false, true] {
        let plain = batch_chunks(&model, &[&a, &b], 100, reverse, false);
        let padded = batch_chunks(&model, &[&a, &b], 100, reverse, true);
        assert_eq!(padded.len(), 1);
        assert_eq!((padded[0].0, padded[0].1), (0, 23));
        let p64: Vec<f64> = plain[0].2.iter().map(|v| *v as f64).collect();
        let err = rel_err(&padded[0].2, &p64);
        assert!(
            err <= 1e-6,
            "reverse {reverse}: padded batch differs by {err:e}"
        );
    }
    // The pieces of a long record: the last one (3 positions) padded to 10.
    let m = &model.backbone;
    let (_, state) = genomamba::infer::run_piece_tensor(m, &a[..20], None, &device, 0);
    let (last, _) =
        genomamba::infer::run_piece_tensor(m, &a[20..], Some(state.clone()), &device, 0);
    let (padded, _) = genomamba::infer::run_piece_tensor(m, &a[20..], Some(state), &device, 10);
    assert_eq!(padded.dims(), [3, 16]);
    let want: Vec<f64> = host_values(last).iter().map(|v| *v as f64).collect();
    assert!(rel_err(&host_values(padded), &want) <= 1e-6);
}

/// Records of several chunks run with the blocks in groups on several threads (the default
/// on GPUs) give exactly what the one-thread loop gives, chunk by chunk: both directions, a
/// padded last chunk, a phase embedding, 2 and 3 groups of 3 blocks and more groups than
/// blocks; and an error from the sink
/// stops the run (the worker thread does not hang).
#[test]
fn pipelined_chunks_equal_the_one_thread_loop() {
    let device = Device::flex();
    let mut arch = MambaConfig::new(16, 3);
    arch.phase_period = 3;
    let model = GenoModel::init(ModelConfig::new(arch), 9, &device).unwrap();
    let a = tokenize(&test_dna()[..95]).unwrap();
    let b = tokenize(&test_dna()[300..371]).unwrap();
    let chunks = |stages: usize, pad: bool, reverse: bool| {
        genomamba::infer::set_pipeline(Some(stages));
        batch_chunks(&model, &[&a, &b], 16, reverse, pad)
    };
    for pad in [false, true] {
        for reverse in [false, true] {
            let one = chunks(1, pad, reverse);
            assert_eq!(one.len(), 6, "chunks of 16 over 95 positions");
            for stages in [2, 3, 5] {
                let got = chunks(stages, pad, reverse);
                assert_eq!(one, got, "{stages} stages, pad {pad} reverse {reverse}");
            }
        }
    }
    genomamba::infer::set_pipeline(Some(3));
    let mut seen = 0;
    let stopped = genomamba::infer::run_batch(
        &model.backbone,
        &[&a],
        16,
        &device,
        false,
        false,
        &mut |_| {
            seen += 1;
            if seen == 2 {
                Err(genomamba::Error::usage("stop here", "nothing to fix"))
            } else {
                Ok(())
            }
        },
    );
    genomamba::infer::set_pipeline(None);
    assert!(stopped.is_err(), "the sink's error is returned");
    assert_eq!(seen, 2, "no chunk is handed on after the error");
}

/// A long record's pieces through [`PieceRunner`] with the blocks in 1, 2, 3 and more groups
/// than blocks give exactly the hidden states and final state of the plain piece loop, the
/// last piece padded, each piece's states handed back once it has left the last group.
#[test]
fn piece_runner_equals_the_piece_loop() {
    use genomamba::infer::{PieceRunner, run_piece_tensor};
    let device = Device::flex();
    let mut arch = MambaConfig::new(16, 3);
    arch.phase_period = 3;
    let model = GenoModel::init(ModelConfig::new(arch), 11, &device).unwrap();
    let m = &model.backbone;
    let a = tokenize(&test_dna()[..95]).unwrap();
    let pieces: Vec<(usize, &[u8])> = a.chunks(16).enumerate().map(|(i, p)| (i * 16, p)).collect();
    let state_values = |s: genomamba::model::MambaState| {
        let mut v: Vec<f32> = Vec::new();
        for l in s.layers {
            v.extend(host_values(l.conv));
            v.extend(host_values(l.ssm));
        }
        (v, s.phase)
    };
    let mut want = Vec::new();
    let mut state = None;
    for (i, (start, p)) in pieces.iter().enumerate() {
        let pad = if i + 1 == pieces.len() { 16 } else { 0 };
        let (h, next) = run_piece_tensor(m, p, state.take(), &device, pad);
        want.push((*start, host_values(h)));
        state = Some(next);
    }
    let want_state = state_values(state.unwrap());
    for stages in [1, 2, 3, 5] {
        let mut runner = PieceRunner::with_groups(m, None, &device, stages);
        let mut got = Vec::new();
        for (i, (start, p)) in pieces.iter().enumerate() {
            let pad = if i + 1 == pieces.len() { 16 } else { 0 };
            let out = runner.push(*start, p, pad);
            // Hidden states come back `groups - 1` pieces late.
            let late = stages.min(3) - 1;
            assert_eq!(
                out.len(),
                usize::from(i >= late),
                "{stages} groups, piece {i}"
            );
            got.extend(out.into_iter().map(|(s, h)| (s, host_values(h))));
        }
        let (rest, end) = runner.finish();
        got.extend(rest.into_iter().map(|(s, h)| (s, host_values(h))));
        assert_eq!(got, want, "{stages} groups: hidden states");
        assert_eq!(
            state_values(end),
            want_state,
            "{stages} groups: final state"
        );
    }
}

#[test]
fn saved_model_reloads_identically() {
    let device = Device::flex();
    let mut arch = MambaConfig::new(16, 2);
    arch.phase_period = 3;
    let mut cfg = ModelConfig::new(arch);
    cfg.head = Some(genomamba::model::HeadConfig {
        kind: genomamba::model::HeadKind::Sequence,
        labels: vec!["a".into(), "b".into()],
        rc_average: true,
        bidirectional: false,
        orf_features: false,
    });
    let m = GenoModel::init(cfg, 11, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let m2 = GenoModel::load(dir.path(), &device).unwrap();
    assert_eq!(m.config, m2.config);
    let t = tokenize(b"ACGTNNACGTTTGACA").unwrap();
    let h1 = hidden_states(&m.backbone, &t, 4, &device).unwrap();
    let h2 = hidden_states(&m2.backbone, &t, 4, &device).unwrap();
    assert_eq!(h1, h2);
    assert!(m2.head.is_some());
}

#[test]
fn orf_features_need_a_bidirectional_position_head() {
    // A saved ORF-feature head reloads with its wider weight; a config that asks for the
    // features on a forward-only head is refused with a usage error.
    let device = Device::flex();
    let mut cfg = ModelConfig::new(MambaConfig::new(16, 2));
    cfg.head = Some(genomamba::model::HeadConfig {
        kind: genomamba::model::HeadKind::Position,
        labels: vec!["background".into(), "coding".into()],
        rc_average: false,
        bidirectional: true,
        orf_features: true,
    });
    let m = GenoModel::init(cfg, 2, &device).unwrap();
    assert_eq!(m.head.as_ref().unwrap().weight.val().dims(), [16 + 6, 2]);
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let m2 = GenoModel::load(dir.path(), &device).unwrap();
    assert_eq!(m.config, m2.config);
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["head"]["bidirectional"] = serde_json::json!(false);
    std::fs::write(&path, v.to_string()).unwrap();
    let err = GenoModel::load(dir.path(), &device).unwrap_err();
    assert!(err.to_string().contains("orf_features"), "{err}");
}
