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
fn linear() {
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
    // 9 sequences of 5 tokens (three blocks of the backward's 4 sequences), Di = 3
    // channels read from a (45, 6) in_proj output, with and without its bias.
    let inputs = [
        Input::uniform(45, 6, -1.0, 1.0, 1),
        Input::uniform(3, 4, -1.0, 1.0, 2),
        Input::uniform(1, 3, -0.5, 0.5, 3),
        Input::uniform(1, 6, -0.5, 0.5, 4),
    ];
    assert_ok("conv_silu", &inputs[..3], &|v| {
        let (x, w, b) = take3(v);
        ops::conv_silu(x, w, b, None, 5)
    });
    assert_ok("conv_silu with the input bias", &inputs, &|v| {
        let mut it = v.into_iter();
        let mut next = || it.next().unwrap();
        let (x, w, b, ib) = (next(), next(), next(), next());
        ops::conv_silu(x, w, b, Some(ib), 5)
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
    let two = |v: Vec<TVar>| {
        let mut it = v.into_iter();
        (it.next().unwrap(), it.next())
    };
    // 70 rows: two blocks of 64 for the bias gradients' partial sums.
    let x = [
        Input::uniform(70, 9, -3.0, 3.0, 1),
        Input::uniform(1, 9, -1.0, 1.0, 6),
    ];
    for inputs in [&x[..1], &x[..]] {
        assert_ok("gelu", inputs, &|v| {
            let (x, b) = two(v);
            ops::gelu(x, b)
        });
        assert_ok("softplus_mean", inputs, &|v| {
            let (z, b) = two(v);
            ops::softplus_mean(z, b)
        });
    }
    // 70 rows: two blocks of the kernel's 64, so the partial sums are combined too.
    let (m, n, di) = (70, 3, 5);
    let inputs = [
        Input::uniform(m, n, -1.0, 1.0, 1),
        Input::uniform(di, n, -1.0, 1.0, 5),
        Input::uniform(1, di, 0.5, 1.5, 2),
        Input::uniform(m, di, -1.0, 1.0, 3),
        Input::uniform(m, 2 * di, -2.0, 2.0, 4),
        Input::uniform(1, 2 * di, -0.5, 0.5, 6),
    ];
    for inputs in [&inputs[..5], &inputs[..]] {
        assert_ok("ssm_output", inputs, &|v| {
            let mut it = v.into_iter();
            let mut next = || it.next().unwrap();
            let (h, c, d, u, xg) = (next(), next(), next(), next(), next());
            ops::ssm_output(h, c, d, u, xg, it.next())
        });
    }
}

#[test]
fn residual_dropout() {
    let inputs = [
        Input::uniform(70, 8, -1.0, 1.0, 1),
        Input::uniform(70, 8, -1.0, 1.0, 2),
        Input::uniform(1, 8, -1.0, 1.0, 3),
    ];
    for dropout in [None, Some(Dropout { p: 0.3, key: 99 })] {
        for inputs in [&inputs[..2], &inputs[..]] {
            assert_ok("add_dropout", inputs, &|v| {
                let mut it = v.into_iter();
                let (x, d) = (it.next().unwrap(), it.next().unwrap());
                ops::add_dropout(x, d, it.next(), dropout)
            });
        }
    }
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
    // Experts on the rows routed to them: 5 rows, 3 experts (width 4, hidden 3), gates
    // with zeros where a row is not routed (one row routed nowhere, one expert to all).
    let (m, d, f, x) = (5, 4, 3, 3);
    // The zeros come from a fixed mask applied inside the checked function: a zero gate
    // is "not routed", a choice, not a point to differentiate at (the router's backward
    // multiplies its gradient by zero).
    let mut mask = vec![1.0; m * x];
    for (r, e) in [(0, 1), (1, 2), (2, 1), (3, 2), (4, 0), (4, 1), (4, 2)] {
        mask[r * x + e] = 0.0;
    }
    let mut inputs = vec![
        Input::uniform(m, d, -1.5, 1.5, 1),
        Input::uniform(m, x, 0.1, 1.0, 2),
    ];
    for e in 0..x as u64 {
        inputs.extend([
            Input::uniform(f, d, -1.0, 1.0, 10 + e),
            Input::uniform(1, f, -0.5, 0.5, 20 + e),
            Input::uniform(d, f, -1.0, 1.0, 30 + e),
            Input::uniform(1, d, -0.5, 0.5, 40 + e),
        ]);
    }
    assert_ok("moe_experts", &inputs, &|v| {
        let mut it = v.into_iter();
        let (xs, g) = (it.next().unwrap(), it.next().unwrap());
        let mask = mask.clone();
        let g = ops::custom_op(
            "mask",
            vec![g],
            (m, x),
            |v| (v[0].iter().zip(&mask).map(|(a, b)| a * b).collect(), mask),
            |a, mask| {
                for ((g, o), k) in a.grads[0].acc().iter_mut().zip(a.grad_out).zip(&mask) {
                    *g += o * k;
                }
            },
        );
        let experts = (0..x)
            .map(|_| ops::Expert {
                up_w: it.next().unwrap(),
                up_b: it.next().unwrap(),
                down_w: it.next().unwrap(),
                down_b: it.next().unwrap(),
            })
            .collect();
        ops::moe_experts(xs, g, experts)
    });
}

#[test]
fn embedding_and_head() {
    // Token 4 twice, token 5 absent (its gradient stays zero).
    let tokens = vec![1u32, 4, 0, 4, 2, 3];
    let inputs = [
        Input::uniform(6, 3, -1.0, 1.0, 1),
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

#[test]
fn the_checker_catches_a_wrong_backward() {
    // y = x^2 with the derivative off by a factor of 2 (the kind of bug dfdx's
    // accurate_gelu has): the check must fail.
    let wrong = |v: Vec<TVar>| {
        let x = v.into_iter().next().unwrap();
        let shape = ops::dims(&x);
        ops::custom_op(
            "square_wrong",
            vec![x],
            shape,
            |d| (d[0].iter().map(|x| x * x).collect(), ()),
            |a, ()| {
                for ((g, &x), &go) in a.grads[0].acc().iter_mut().zip(a.inputs[0]).zip(a.grad_out) {
                    *g += x * go;
                }
            },
        )
    };
    assert!(check(&[Input::uniform(2, 3, 0.5, 1.0, 1)], &wrong, 10).is_err());
}
