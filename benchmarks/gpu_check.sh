#!/usr/bin/env bash
# The GPU check on a machine without network: installs the few packages such a machine lacks
# from wheels brought along in .whl/ (made where there is network by `make gpu-wheels`), then
# runs benchmarks/gpu_check.py with this checkout's src/ on the path. Arguments go through:
#   bash benchmarks/gpu_check.sh OUT_DIR [--small] [--pretrained]
set -euo pipefail
cd "$(dirname "$0")/.."
site="${HARCLIP_SITE:-/tmp/harclip-site}"
if ! python3 -c "import open_clip, pydantic, ftfy, dvclive, peft" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: open_clip_torch, pydantic, ftfy, dvclive or peft is missing and .whl/ holds no" \
         "wheels; run \`make gpu-wheels\` where there is network and bring .whl/ along" >&2
    exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/gpu_check.py "$@"
