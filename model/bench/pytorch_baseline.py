#!/usr/bin/env python3
"""PyTorch eager baseline for `cargo run --release -p itera-model --example bench_train`.

The same Itera-Lite model (docs/MODEL.md: hidden 128, 4 layers, state 8, conv 4, expand 2,
4 experts of 64, top-2 on the odd layers, tied head), the same batch (B=32, T=128, V=2000,
the same token ids), the same step (two micro-batches, AdamW, global-norm clipping) and
the same figures: training tokens/s (median of several steps) at 1 and 2 threads, and
batched scoring (forward only) tokens/s.

    python3 -m pip install torch numpy
    python3 model/bench/pytorch_baseline.py            # 9 steps, scan as a matrix
    python3 model/bench/pytorch_baseline.py --scan loop

The scan runs either as a Python loop over the sequence (`--scan loop`, what a direct
transcription of the recurrence does) or in closed form as masked (T x T) matrices per
state (`--scan matrix`, the default and the faster of the two in eager mode): with one
step size per token, h_t = sum_{s<=t} exp(A (cum_t - cum_s)) dt_s (B u)_s.
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Ssm(nn.Module):
    def __init__(self, d, di, n, k, scan):
        super().__init__()
        self.di, self.k, self.scan = di, k, scan
        self.in_proj = nn.Linear(d, 2 * di)
        self.conv_w = nn.Parameter(torch.randn(di, k) * 0.2)
        self.conv_b = nn.Parameter(torch.zeros(di))
        self.dt_proj = nn.Linear(di, di)
        self.a_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)))
        self.b = nn.Parameter(torch.randn(n, di) * di**-0.5)
        self.c = nn.Parameter(torch.randn(di, n) * n**-0.5)
        self.d = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d)

    def forward(self, a):  # a: (B, T, D)
        bsz, t, _ = a.shape
        x, g = self.in_proj(a).split(self.di, dim=-1)
        # Causal depthwise convolution.
        xc = F.pad(x.transpose(1, 2), (self.k - 1, 0))
        c = F.conv1d(xc, self.conv_w.unsqueeze(1), self.conv_b, groups=self.di)
        u = F.silu(c.transpose(1, 2))  # (B, T, Di)
        dt = F.softplus(self.dt_proj(u)).mean(-1)  # (B, T)
        a_vec = -torch.exp(self.a_log)  # (N)
        bu = u @ self.b.t()  # (B, T, N)
        if self.scan == "loop":
            h = torch.zeros(bsz, a_vec.shape[0], dtype=a.dtype)
            hs = []
            for s in range(t):
                d = dt[:, s : s + 1]
                h = torch.exp(d * a_vec) * h + d * bu[:, s]
                hs.append(h)
            h = torch.stack(hs, 1)  # (B, T, N)
        else:
            cum = dt.cumsum(1)  # (B, T)
            diff = cum.unsqueeze(2) - cum.unsqueeze(1)  # (B, T_t, T_s)
            mask = torch.ones(t, t, dtype=torch.bool).tril()
            decay = torch.exp(diff.unsqueeze(1) * a_vec.view(1, -1, 1, 1))  # (B, N, T, T)
            decay = decay.masked_fill(~mask, 0.0)
            src = (dt.unsqueeze(-1) * bu).transpose(1, 2).unsqueeze(-1)  # (B, N, T, 1)
            h = (decay @ src).squeeze(-1).transpose(1, 2)  # (B, T, N)
        y = h @ self.c.t() + self.d * u
        return self.out_proj(y * F.silu(g))


class Ffn(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Moe(nn.Module):
    def __init__(self, d, f, experts, top_k):
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(Ffn(d, f) for _ in range(experts))
        self.top_k = top_k

    def forward(self, x):  # x: (M, D)
        logits = self.router(x)
        probs = logits.softmax(-1)
        top, idx = logits.topk(self.top_k, dim=-1)
        gates = top.softmax(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, gates[rows, slot].unsqueeze(1) * expert(x[rows]))
        # Switch-Transformer balance loss: X * sum_e f_e P_e.
        share = F.one_hot(idx, logits.shape[1]).float().sum(1).mean(0) / self.top_k
        aux = logits.shape[1] * (share * probs.mean(0)).sum()
        return out, aux


class Model(nn.Module):
    def __init__(self, vocab, d=128, layers=4, n=8, k=4, expand=2, experts=4, f=64, top_k=2,
                 seq=128, scan="matrix"):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList()
        for layer in range(layers):
            ffn = Moe(d, f, experts, top_k) if layer % 2 == 1 else Ffn(d, f * top_k)
            self.blocks.append(nn.ModuleList([nn.LayerNorm(d), Ssm(d, expand * d, n, k, scan),
                                              nn.LayerNorm(d), ffn]))
        self.final_norm = nn.LayerNorm(d)

    def forward(self, tokens, targets):
        bsz, t = tokens.shape
        x = self.embed(tokens) + self.pos(torch.arange(t))
        aux = []
        for ssm_norm, ssm, ffn_norm, ffn in self.blocks:
            x = x + ssm(ssm_norm(x))
            b = ffn_norm(x).reshape(bsz * t, -1)
            if isinstance(ffn, Moe):
                f, a = ffn(b)
                aux.append(a)
            else:
                f = ffn(b)
            x = x + f.reshape(bsz, t, -1)
        logits = self.final_norm(x) @ self.embed.weight.t()
        ce = F.cross_entropy(logits.reshape(bsz * t, -1), targets.reshape(-1))
        return ce + 0.01 * torch.stack(aux).mean(), ce


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("steps", nargs="?", type=int, default=9)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--scan", choices=["matrix", "loop"], default="matrix")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    v, bsz, t = args.vocab, args.batch, args.seq
    # The benchmark's token ids: ((i * 7919 + 13) % V), B sequences of T + 1.
    ids = torch.tensor([(i * 7919 + 13) % v for i in range(bsz * (t + 1))]).view(bsz, t + 1)
    with open("/proc/loadavg") as f:
        print("load average:", " ".join(f.read().split()[:3]))
    print(f"torch {torch.__version__}, scan {args.scan}, shape: B={bsz} T={t} V={v}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = Model(v, seq=max(t, 128), scan=args.scan)
        if threads == args.threads[0]:
            print("parameters:", sum(p.numel() for p in model.parameters()))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        half = (bsz + 1) // 2
        rates = []
        cpu0 = 0.0
        for i in range(args.steps + 2):
            if i == 2:
                cpu0 = time.process_time()
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            for part in (ids[:half], ids[half:]):
                loss, _ = model(part[:, :-1], part[:, 1:])
                (loss * (part.shape[0] / bsz)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if i >= 2:
                rates.append(bsz * t / (time.perf_counter() - start))
        cpu = (time.process_time() - cpu0) / args.steps
        score_ids = torch.tensor([(i * 31 + 7) % v for i in range(bsz * t * 4 + 1)])
        score_rates = []
        with torch.no_grad():
            for _ in range(5):
                start = time.perf_counter()
                for b in range(4):
                    chunk = score_ids[b * bsz * t : (b + 1) * bsz * t + 1]
                    model(chunk[:-1].view(bsz, t), chunk[1:].view(bsz, t))
                score_rates.append(4 * bsz * t / (time.perf_counter() - start))
        print(
            f"threads {threads}: training {statistics.median(rates):.0f} tok/s (median of "
            f"{args.steps} steps; {cpu:.3f} CPU s/step), scoring "
            f"{statistics.median(score_rates):.0f} tok/s"
        )


if __name__ == "__main__":
    main()
