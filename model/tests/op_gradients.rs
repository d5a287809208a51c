//! Finite-difference checks (f64) of every custom op's hand-written backward.

use itera_model::ops::gradcheck::{check, Input, TVar};
use itera_model::ops::{self, Dropout};

fn assert_ok(name: &str, inputs: &[Input], f: &dyn Fn(Vec<TVar>) -> TVar) {
    if let Err(m) = check(inputs, f, 40) {
        panic!("{name}: gradient mismatch {m:?}");
    }
}

fn take3(v: Vec<TVar>) -> (TVar, TVar, TVar) {
    let mut it = v.into_iter();
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

#[test]
fn linear_and_matmul_add() {
    let inputs = [
        Input::uniform(6, 5, -1.0, 1.0, 1),
        Input::uniform(4, 5, -1.0, 1.0, 2),
        Input::uniform(1, 4, -1.0, 1.0, 3),
    ];
    assert_ok("linear", &inputs, &|v| {
        let (x, w, b) = take3(v);
        ops::linear(x, w, b)
    });
    assert_ok("linear_nobias", &inputs[..2], &|v| {
        let mut it = v.into_iter();
        ops::linear_nobias(it.next().unwrap(), it.next().unwrap())
    });
    let inputs = [
        Input::uniform(6, 4, -1.0, 1.0, 4),
        Input::uniform(6, 3, 0.0, 1.0, 5),
        Input::uniform(3, 4, -1.0, 1.0, 6),
    ];
    assert_ok("matmul_add", &inputs, &|v| {
        let (y, g, b) = take3(v);
        ops::matmul_add(y, g, b)
    });
}

#[test]
fn layer_norm() {
    let inputs = [
        Input::uniform(5, 7, -2.0, 2.0, 1),
        Input::uniform(1, 7, 0.5, 1.5, 2),
        Input::uniform(1, 7, -0.5, 0.5, 3),
    ];
    assert_ok("layer_norm", &inputs, &|v| {
        let (x, w, b) = take3(v);
        ops::layer_norm(x, w, b, 1e-5)
    });
}

#[test]
fn causal_conv_silu() {
    // 2 sequences of 5 tokens, Di = 3 channels read from a (10, 6) in_proj output.
    let inputs = [
        Input::uniform(10, 6, -1.0, 1.0, 1),
        Input::uniform(3, 4, -1.0, 1.0, 2),
        Input::uniform(1, 3, -0.5, 0.5, 3),
    ];
    assert_ok("conv_silu", &inputs, &|v| {
        let (x, w, b) = take3(v);
        ops::conv_silu(x, w, b, 5)
    });
}

#[test]
fn selective_scan() {
    let inputs = [
        Input::uniform(12, 1, 0.05, 0.5, 1),
        Input::uniform(1, 3, -0.5, 1.5, 2),
        Input::uniform(12, 3, -1.0, 1.0, 3),
    ];
    assert_ok("selective_scan", &inputs, &|v| {
        let (dt, a, bu) = take3(v);
        ops::selective_scan(dt, a, bu, 4)
    });
}

#[test]
fn gelu_softplus_mean_gate() {
    assert_ok("gelu", &[Input::uniform(4, 9, -3.0, 3.0, 1)], &|v| {
        ops::gelu(v.into_iter().next().unwrap())
    });
    assert_ok(
        "softplus_mean",
        &[Input::uniform(4, 9, -3.0, 3.0, 2)],
        &|v| ops::softplus_mean(v.into_iter().next().unwrap()),
    );
    let inputs = [
        Input::uniform(5, 3, -1.0, 1.0, 1),
        Input::uniform(1, 3, 0.5, 1.5, 2),
        Input::uniform(5, 3, -1.0, 1.0, 3),
        Input::uniform(5, 6, -2.0, 2.0, 4),
    ];
    assert_ok("ssm_gate", &inputs, &|v| {
        let mut it = v.into_iter();
        let (hc, d, u, xg) = (
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
        );
        ops::ssm_gate(hc, d, u, xg)
    });
}

#[test]
fn residual_dropout() {
    let inputs = [
        Input::uniform(6, 8, -1.0, 1.0, 1),
        Input::uniform(6, 8, -1.0, 1.0, 2),
    ];
    let dropout = Some(Dropout { p: 0.3, key: 99 });
    assert_ok("add_dropout", &inputs, &|v| {
        let mut it = v.into_iter();
        ops::add_dropout(it.next().unwrap(), it.next().unwrap(), dropout)
    });
}

#[test]
fn routing_and_experts() {
    // Distinct logits so the top-k choice is stable under the finite-difference step.
    let logits = Input {
        rows: 4,
        cols: 4,
        values: (0..16)
            .map(|i| ((i * 7) % 16) as f64 * 0.13 - 1.0)
            .collect(),
    };
    assert_ok("router_gates", std::slice::from_ref(&logits), &|v| {
        ops::router_gates(v.into_iter().next().unwrap(), 2)
    });
    assert_ok("balance_loss", std::slice::from_ref(&logits), &|v| {
        ops::balance_loss(v.into_iter().next().unwrap(), 2)
    });
    let inputs = [
        Input::uniform(4, 6, -2.0, 2.0, 1),
        Input::uniform(4, 3, 0.1, 1.0, 2),
    ];
    assert_ok("expert_gelu", &inputs, &|v| {
        let mut it = v.into_iter();
        ops::expert_gelu(it.next().unwrap(), it.next().unwrap())
    });
    let inputs = [
        Input::uniform(2, 3, -1.0, 1.0, 1),
        Input::uniform(3, 3, -1.0, 1.0, 2),
    ];
    assert_ok("concat_rows", &inputs, &|v| ops::concat_rows(v));
    let inputs = [
        Input::uniform(3, 2, -1.0, 1.0, 1),
        Input::uniform(3, 4, -1.0, 1.0, 2),
    ];
    assert_ok("concat_cols", &inputs, &|v| ops::concat_cols(v));
}

#[test]
fn embedding_and_head() {
    let tokens = vec![1u32, 4, 0, 4, 2, 3];
    let inputs = [
        Input::uniform(5, 3, -1.0, 1.0, 1),
        Input::uniform(4, 3, -1.0, 1.0, 2),
    ];
    let dropout = Some(Dropout { p: 0.25, key: 5 });
    assert_ok("embed", &inputs, &|v| {
        let mut it = v.into_iter();
        ops::embed(
            it.next().unwrap(),
            it.next().unwrap(),
            tokens.clone(),
            3,
            dropout,
        )
    });
    let inputs = [
        Input::uniform(6, 3, -1.0, 1.0, 3),
        Input::uniform(5, 3, -1.0, 1.0, 4),
    ];
    assert_ok("head_cross_entropy", &inputs, &|v| {
        let mut it = v.into_iter();
        ops::head_cross_entropy(it.next().unwrap(), it.next().unwrap(), tokens.clone())
    });
}
