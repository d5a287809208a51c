#!/usr/bin/env bash
# Benchmark: wall time of a fully cached rerun of a 200-stage shell pipeline.
# Generates the pipeline (20 layers x 10 stages, each stage reads one stage of the
# previous layer), runs it once to fill the store, then times 11 cached reruns and
# prints the median.
#
#   benches/cached_rerun.sh            # builds the release binary first
#   ITERA=path/to/itera benches/cached_rerun.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${ITERA:-}" ]]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin itera
  target="${CARGO_TARGET_DIR:-$root/target}"
  ITERA="$target/release/itera"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
{
  printf '[pipeline]\nname = "bench200"\nseed = 1\n'
  for layer in $(seq 0 19); do
    for i in $(seq 0 9); do
      name="s${layer}_${i}"
      printf '\n[stages.%s]\nkind = "shell"\n' "$name"
      if (( layer > 0 )); then
        printf 'inputs = { prev = "s%d_%d" }\n' $((layer - 1)) "$i"
        printf 'command = "cat {inputs.prev}/v > {out}/v; echo %s >> {out}/v"\n' "$name"
      else
        printf 'command = "echo %s > {out}/v"\n' "$name"
      fi
      printf 'outputs = ["v"]\n'
    done
  done
} > "$work/pipeline.toml"
cd "$work"
"$ITERA" --progress quiet run pipeline.toml --jobs 2 > /dev/null 2>&1
times=()
for _ in $(seq 1 11); do
  start=$(date +%s%N)
  "$ITERA" --progress quiet run pipeline.toml > /dev/null 2>&1
  end=$(date +%s%N)
  times+=( $(( (end - start) / 1000000 )) )
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | sed -n 6p)
echo "cached rerun of 200 stages: median ${median} ms over 11 runs (all: $(echo $sorted | tr '\n' ' '); $(nproc) cores)"
"$ITERA" runs -n 1
