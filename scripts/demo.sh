#!/usr/bin/env bash
# The offline demo, end to end: a local Hub-compatible server on 127.0.0.1, `hubsdd publish` of the
# demo recipe to it, `hubsdd pull` back with verification, then load and generate with stock
# transformers. Called by `make demo` after the set-up; the venv's bin is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-.demo}"
RECIPE="${RECIPE:-recipes/smollm2-135m-demo.yaml}"
MODEL_REPO="hubsdd-demo/SmolLM2-135M-Instruct-26L-sdd"
mkdir -p "$DEMO_DIR"
rm -f "$DEMO_DIR/url"

# A throwaway token for the local server only; it is never written anywhere but the server's memory.
export HF_TOKEN="hf_demo_$(python -c 'import secrets; print(secrets.token_hex(8))')"
python -m hubsdd.testing.hub_server --storage "$DEMO_DIR/hub" --port 0 \
    --token "$HF_TOKEN:hubsdd-demo" --ready-file "$DEMO_DIR/url" > "$DEMO_DIR/hub-server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$DEMO_DIR/url" ] && break; sleep 0.1; done
[ -s "$DEMO_DIR/url" ] || { echo "hub server did not start; see $DEMO_DIR/hub-server.log" >&2; exit 1; }

export HF_ENDPOINT="$(cat "$DEMO_DIR/url")"
export HF_HUB_DISABLE_XET=1
export HF_HOME="$PWD/$DEMO_DIR/hf-home"     # keep the demo's downloads out of ~/.cache
echo "== local Hub at $HF_ENDPOINT"

start=$(date +%s)
echo "== hubsdd publish $RECIPE"
hubsdd publish "$RECIPE"

echo "== hubsdd pull $MODEL_REPO"
rm -rf "$DEMO_DIR/pulled"
hubsdd pull "$MODEL_REPO" --local-dir "$DEMO_DIR/pulled"

echo "== load with stock transformers and generate"
python - "$DEMO_DIR/pulled" <<'PY'
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
msgs = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]
inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
print(f"{model.config.num_hidden_layers} layers, {sum(p.numel() for p in model.parameters())/1e6:.1f}M parameters")
print("prompt:", msgs[0]["content"])
print("reply: ", tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
PY
echo "== demo finished in $(( $(date +%s) - start ))s (pipeline + publish + pull); release card: runs/smollm2-135m-sdd-demo/card/model/README.md"
