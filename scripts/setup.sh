#!/usr/bin/env bash
# Set up fmlp on a fresh Debian/Ubuntu machine: the Fashion-MNIST package, Graphviz (to
# render computation graphs) and a virtualenv in .venv with fmlp, its dev tools and the peers
# fmlp bench compares it with (flax, equinox, the CPU build of torch 2.13.0, sklearn), and
# pandas and pyarrow to read tables, jax2onnx and onnxruntime for ONNX export, optuna for
# fmlp sweep --search.
# Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v dot >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist graphviz \
    >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,bench,tables,onnx,search]"
