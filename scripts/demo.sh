#!/usr/bin/env bash
# The offline demo, end to end: a local Hub-compatible server on 127.0.0.1, `hubsdd publish` of the
# demo recipe to it, `hubsdd pull` back with verification, then load and generate with stock
# transformers beside the base model. Called by `make demo` after the set-up; the venv's bin is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-.demo}"
RECIPE="${RECIPE:-recipes/smollm2-135m-demo.yaml}"
MODEL_REPO="hubsdd-demo/SmolLM2-135M-Instruct-26L-sdd"
mkdir -p "$DEMO_DIR"
rm -f "$DEMO_DIR/url"

# A throwaway token for the local server only; it is never written anywhere but the server's memory.
export HF_TOKEN="hf_demo_$(python -c 'import secrets; print(secrets.token_hex(8))')"
python -m hubsdd.testing.hub --storage "$DEMO_DIR/hub" --port 0 \
    --token "$HF_TOKEN:hubsdd-demo" --ready-file "$DEMO_DIR/url" > "$DEMO_DIR/hub-server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$DEMO_DIR/url" ] && break; sleep 0.1; done
[ -s "$DEMO_DIR/url" ] || { echo "hub server did not start; see $DEMO_DIR/hub-server.log" >&2; exit 1; }

export HF_ENDPOINT="$(cat "$DEMO_DIR/url")"
export HF_HUB_DISABLE_XET=1
export HF_HOME="$PWD/$DEMO_DIR/hf-home"     # keep the demo's downloads out of ~/.cache
echo "== local Hub at $HF_ENDPOINT"

# A throwaway signing key for the demo (kept across runs, so the pinned signer stays the same), and
# the trust file `hubsdd pull` pins it in, both inside the demo's folder.
export HUBSDD_TRUST_FILE="$PWD/$DEMO_DIR/known_signers.json"
SIGNING_KEY="$DEMO_DIR/demo-signing-key.pem"
[ -s "$SIGNING_KEY" ] || python - "$SIGNING_KEY" <<'PY'
import os, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, pem)
os.close(fd)
PY

start=$(date +%s)
echo "== hubsdd publish $RECIPE (signed with a demo key)"
hubsdd publish "$RECIPE" --signing-key "$SIGNING_KEY"

echo "== hubsdd pull $MODEL_REPO (verifies the signature; the first pull pins the signer)"
rm -rf "$DEMO_DIR/pulled"
hubsdd pull "$MODEL_REPO" --local-dir "$DEMO_DIR/pulled"

echo "== the base model and the released model, same prompts, greedy (stock transformers)"
python - "runs/smollm2-135m-sdd-demo/base/model" "$DEMO_DIR/pulled" <<'PY'
import sys
import textwrap

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

logging.disable_progress_bar()

PROMPTS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "What is the capital of France?",
    "Give one tip for staying healthy.",
]


def replies(path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    out = []
    for text in PROMPTS:
        inputs = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        ids = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        out.append(tok.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    size = f"{model.config.num_hidden_layers} layers, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    return size, out


base_size, base = replies(sys.argv[1])
release_size, release = replies(sys.argv[2])
width = 60
print(f"{'base (' + base_size + ')':<{width}}  | released ({release_size})")
for prompt, a, b in zip(PROMPTS, base, release):
    print("-" * (2 * width + 3))
    print(f"prompt: {prompt}")
    left, right = textwrap.wrap(a, width) or [""], textwrap.wrap(b, width) or [""]
    for i in range(max(len(left), len(right))):
        print(f"{left[i] if i < len(left) else '':<{width}}  | {right[i] if i < len(right) else ''}")
PY
echo "== demo finished in $(( $(date +%s) - start ))s (pipeline + publish + pull); release card: runs/smollm2-135m-sdd-demo/card/model/README.md"
