//! Sampling and the generation loop: greedy equals argmax, seeds reproduce, degenerate
//! settings fall back to greedy, and sampled frequencies follow the softmax (chi-square).

use itera_model::decode::{
    argmax, generate, reference, DecodeError, Decoder, Precision, Sampler, SamplingConfig, Weights,
};
use itera_model::ModelConfig;

fn small() -> (ModelConfig, Weights) {
    let config = ModelConfig {
        vocab_size: 200,
        hidden_size: 32,
        num_layers: 2,
        max_seq_length: 40,
        ..ModelConfig::tiny()
    };
    let weights = Weights::random(&config, 21).unwrap();
    (config, weights)
}

fn sampled(
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: u64,
) -> SamplingConfig {
    SamplingConfig {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

#[test]
fn decode_greedy_generation_is_the_argmax_of_the_reference() {
    let (_, weights) = small();
    let decoder = Decoder::new(&weights, Precision::F32);
    let prompt = [5, 17, 3];
    let out = generate(
        &decoder,
        &prompt,
        10,
        &SamplingConfig::greedy(),
        |_| true,
        None,
    )
    .unwrap();
    assert_eq!(out.len(), 10);
    let mut seq = prompt.to_vec();
    for &tok in &out {
        let logits = reference::forward(&weights, &seq).unwrap();
        let last = logits.last().unwrap();
        let best = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)));
        assert_eq!(tok as usize, best.unwrap());
        seq.push(tok);
    }
}

#[test]
fn decode_seeds_reproduce_and_degenerate_settings_are_greedy() {
    let (_, weights) = small();
    let decoder = Decoder::new(&weights, Precision::F16);
    let prompt = [1, 2];
    let run = |cfg: &SamplingConfig| generate(&decoder, &prompt, 30, cfg, |_| true, None).unwrap();
    let greedy = run(&SamplingConfig::greedy());
    // Random weights give sharp distributions at T=1; T=3 makes sampling visibly random.
    let a = run(&sampled(3.0, None, None, 7));
    assert_eq!(
        a,
        run(&sampled(3.0, None, None, 7)),
        "same seed, same tokens"
    );
    assert_ne!(
        a,
        run(&sampled(3.0, None, None, 8)),
        "another seed, other tokens"
    );
    assert_ne!(a, greedy);
    assert_eq!(
        run(&sampled(3.0, Some(1), None, 7)),
        greedy,
        "top-k 1 is greedy"
    );
    assert_eq!(
        run(&sampled(3.0, None, Some(1e-6), 7)),
        greedy,
        "tiny top-p is greedy"
    );
    assert_eq!(
        run(&sampled(1e-4, None, None, 7)),
        greedy,
        "temperature -> 0 is greedy"
    );
    let k5 = run(&sampled(3.0, Some(5), Some(0.9), 9));
    assert_eq!(k5, run(&sampled(3.0, Some(5), Some(0.9), 9)));
}

#[test]
fn decode_generation_stops_on_callback_stop_token_and_full_context() {
    let (config, weights) = small();
    let decoder = Decoder::new(&weights, Precision::F32);
    let greedy = SamplingConfig::greedy();
    let all = generate(&decoder, &[4], 100, &greedy, |_| true, None).unwrap();
    // Context 40: 40 tokens fed (1 prompt + 39 generated) and one more predicted.
    assert_eq!(all.len(), config.max_seq_length);
    let mut seen = Vec::new();
    let three = generate(
        &decoder,
        &[4],
        100,
        &greedy,
        |t| {
            seen.push(t);
            seen.len() < 3
        },
        None,
    )
    .unwrap();
    assert_eq!(three, all[..3]);
    assert_eq!(seen, all[..3]);
    let stop = all[5];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let stopped = generate(&decoder, &[4], 100, &greedy, |_| true, Some(stop)).unwrap();
    assert_eq!(stopped, all[..first], "ends before the stop token");
    assert_eq!(
        generate(&decoder, &[], 5, &greedy, |_| true, None).unwrap_err(),
        DecodeError::EmptyPrompt
    );
    let err = generate(
        &decoder,
        &[1],
        5,
        &sampled(-1.0, None, None, 0),
        |_| true,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("temperature"), "{err}");
    for bad in [
        sampled(1.0, Some(0), None, 0),
        sampled(1.0, None, Some(0.0), 0),
        sampled(1.0, None, Some(1.5), 0),
    ] {
        assert!(matches!(
            Sampler::new(&bad),
            Err(DecodeError::InvalidSampling { .. })
        ));
    }
}

/// Pearson chi-square of `counts` against `probs` (cells with zero probability must be empty).
fn chi_square(counts: &[usize], probs: &[f64], n: usize) -> f64 {
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &p)| {
            if p == 0.0 {
                assert_eq!(c, 0, "a token outside the allowed set was drawn");
                0.0
            } else {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            }
        })
        .sum()
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / t).exp())
        .collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|x| x / z).collect()
}

#[test]
fn decode_sampled_frequencies_follow_the_distribution() {
    let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0, 2.5, 0.0, 1.5];
    let n = 40_000;
    let draw = |cfg: SamplingConfig| {
        let mut s = Sampler::new(&cfg).unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(&logits) as usize] += 1;
        }
        counts
    };
    // 7 degrees of freedom: P(chi2 > 24.3) = 0.001.
    for t in [1.0, 0.5, 2.0] {
        let probs = softmax(&logits, t);
        let chi = chi_square(&draw(sampled(t as f32, None, None, 3)), &probs, n);
        assert!(chi < 24.3, "T={t}: chi-square {chi}");
    }
    // top-k 3: tokens 3, 5, 1 renormalized (2 degrees of freedom: 13.8).
    let mut probs = softmax(&logits, 1.0);
    for (i, p) in probs.iter_mut().enumerate() {
        if ![3, 5, 1].contains(&i) {
            *p = 0.0;
        }
    }
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    let chi = chi_square(&draw(sampled(1.0, Some(3), None, 4)), &probs, n);
    assert!(chi < 13.8, "top-k: chi-square {chi}");
    // top-p 0.7: softmax sorted is 0.40 (3), 0.24 (5), 0.15 (1): the nucleus is those three.
    let chi = chi_square(&draw(sampled(1.0, None, Some(0.7), 5)), &probs, n);
    assert!(chi < 13.8, "top-p: chi-square {chi}");
    assert_eq!(argmax(&logits), 3);
}

#[test]
fn decode_argmax_takes_the_first_of_ties_in_any_lane() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    for len in [1, 15, 16, 17, 40, 100] {
        for at in [0, len / 2, len - 1] {
            let mut v: Vec<f32> = (0..len).map(|i| (i % 7) as f32 * 0.1).collect();
            v[at] = 5.0;
            if at + 3 < len {
                v[at + 3] = 5.0; // a later tie in another lane loses
            }
            v[len - 1] = if at == len - 1 { 5.0 } else { f32::NAN };
            assert_eq!(argmax(&v), at as u32, "len {len}, max at {at}");
        }
    }
}

#[test]
fn decode_top_p_and_top_k_on_a_large_vocabulary() {
    // A vocabulary large enough that the nucleus search widens several times.
    let logits: Vec<f32> = (0..5000)
        .map(|i| ((i * 7919) % 5000) as f32 * 1e-4)
        .collect();
    let probs = softmax(&logits, 1.0);
    let mut order: Vec<usize> = (0..5000).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut cum = 0.0;
    let nucleus: Vec<usize> = order
        .iter()
        .take_while(|&&i| {
            // 0.501: a margin for f32 rounding at the nucleus boundary.
            let inside = cum < 0.501;
            cum += probs[i];
            inside
        })
        .cloned()
        .collect();
    let mut s = Sampler::new(&sampled(1.0, None, Some(0.5), 1)).unwrap();
    let mut k = Sampler::new(&sampled(1.0, Some(100), None, 1)).unwrap();
    for _ in 0..2000 {
        assert!(nucleus.contains(&(s.sample(&logits) as usize)));
        assert!(order[..100].contains(&(k.sample(&logits) as usize)));
    }
}
