#!/usr/bin/env bash
# End-to-end check of the user's main job: the real pipelines/phase8.toml on the shared
# TinyStories samples, with no network. The samples are imported into a private Hugging
# Face cache (`itera hub import`), the hub is switched off (HF_HUB_OFFLINE=1), and only
# `--set` overrides shorten training. Then the outputs are checked, a second identical
# run must execute nothing, and `itera rerun --verify` must reproduce every digest.
#
# Usage: ci/phase8-e2e.sh PATH/TO/itera   (from the repository root)
set -euo pipefail
ITERA=$(realpath "$1")
DATA=$(realpath ../shared/data/tinystories)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_CACHE="$WORK/hf-cache" HF_HUB_OFFLINE=1 ITERA_RUNS_DIR="$WORK/runs"

"$ITERA" hub import roneneldan/TinyStories \
  --file "TinyStories-train.txt=$DATA/train-sample-00.txt" \
  --file "TinyStories-valid.txt=$DATA/valid-part-00.txt"

SETS=(--set train.steps=12 --set train.schedule.warmup_steps=3 --set train.eval_every=6 --set train.eval_tokens=4096
      --set train.checkpoint_every=6 --set evaluate.eval_tokens=8192
      --set evaluate.speed_runs=3 --set evaluate.max_new_tokens=16)
"$ITERA" --progress lines run pipelines/phase8.toml "${SETS[@]}"

RUN="$ITERA_RUNS_DIR/latest"
python3 - "$RUN" <<'PY'
import json, math, os, sys, unicodedata
run = sys.argv[1]
rec = json.load(open(os.path.join(run, "run.json")))
store = os.path.join(os.path.dirname(os.path.realpath(run)), "store")
def out(stage):
    key = rec["stages"][stage]["key"]
    return os.path.join(store, key, "out")
report = out("report")
assert os.path.getsize(os.path.join(report, "report.md")) > 500, "report.md missing or empty"
ev = json.load(open(os.path.join(out("evaluate"), "eval.json")))
def walk(x, path="eval"):
    if isinstance(x, float):
        assert math.isfinite(x), f"{path} is not finite: {x}"
    elif isinstance(x, dict):
        for k, v in x.items(): walk(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x): walk(v, f"{path}[{i}]")
walk(ev)
f32 = os.path.getsize(os.path.join(out("train"), "model.safetensors"))
f16 = os.path.getsize(os.path.join(out("half"), "model.safetensors"))
assert f16 <= 0.51 * f32, f"FP16 weights {f16} B are more than 0.51x the FP32 {f32} B"
for stage, most in (("int8", 0.30), ("int4", 0.20), ("mixed", 0.62)):
    size = os.path.getsize(os.path.join(out(stage), "model.safetensors"))
    assert size <= most * f32, f"{stage} weights {size} B are more than {most}x the FP32 {f32} B"
    q = json.load(open(os.path.join(out(stage), "quantization.json")))
    assert q["scheme"] == stage and q["file_bytes_after"] == size, q
md = open(os.path.join(report, "report.md")).read()
assert "## Compression" in md and "recommended for" in md, "report.md has no compression table"
rj = json.load(open(os.path.join(report, "report.json")))
assert [r["format"] for r in rj["compression"]] == ["F32", "F16", "int8", "int4", "mixed"], rj["compression"]
models = ev["models"]
assert [m["dtype"] for m in models] == ["F32", "F16", "int8", "int4", "mixed"], [m["dtype"] for m in models]
ref, half = models[0], models[1]
rel = abs(half["val_loss"] - ref["val_loss"]) / ref["val_loss"]
assert rel < 0.01, f"FP16 validation loss differs by {rel:.4%} from FP32"
vocab = set(json.load(open(os.path.join(out("tokenize"), "tokenizer.json")))["model"]["vocab"])
def pieces(word):
    run = ""
    for ch in word:
        if unicodedata.category(ch).startswith("P"):
            if run: yield run
            run = ""
            yield ch
        else:
            run += ch
    if run: yield run
n = 0
for m in models:
    for g in m["generations"]:
        for key in ("greedy", "sampled"):
            t = g[key]
            assert isinstance(t, str) and t.strip(), f"empty {key} generation for {g['prompt']!r}"
            # The word tokenizer's pieces: whitespace-separated, every punctuation mark
            # apart (the decoder writes "Lily." and "Lily's").
            words = [p for w in t.split() for p in pieces(w)]
            unknown = [w for w in words if w not in vocab]
            assert not unknown, f"{key} generation for {g['prompt']!r} has pieces outside the vocabulary: {unknown[:5]}"
            n += 1
assert n >= 10, f"expected greedy and sampled generations for every prompt and model, found {n}"
print(f"phase8 outputs ok: FP16/FP32 size {f16/f32:.3f}, val loss delta {rel:.4%}, {n} generations")
PY

start=$(date +%s%N)
"$ITERA" --progress quiet run pipelines/phase8.toml "${SETS[@]}" 2>&1 | tee "$WORK/second.txt"
end=$(date +%s%N)
grep -q " 0 ran" "$WORK/second.txt" || { echo "second identical run executed stages"; exit 1; }
ms=$(( (end - start) / 1000000 ))
echo "second identical run: ${ms} ms"
[ "$ms" -lt 1000 ] || { echo "second identical run took ${ms} ms (>= 1 s)"; exit 1; }

"$ITERA" --progress lines rerun latest --verify
echo "phase8 end-to-end: ok"
