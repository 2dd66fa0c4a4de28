# shellcheck shell=bash disable=SC2034
# Package facts that scripts/install_project.sh and scripts/make_wheelhouse.sh share (sourced).

# CI tests megatron-core 0.16.1 (on Python 3.11, where pip resolves no newer one: 0.17+ need
# 3.12). The image's Python is 3.12, and 0.16.1's cp312 wheel installs there (Requires-Python
# >= 3.10), so the image gets the version CI covers.
megatron_core=megatron-core==0.16.1

# What an environment carries for the accelerators (an extended regex over package names): torch,
# Transformer Engine, TensorRT-LLM, Apex and NVIDIA's CUDA libraries. The NGC image's builds stay as
# installed, and a wheelhouse leaves them out.
accelerator_packages='torch|torchvision|torchaudio|triton|pytorch-triton|transformer[-_]engine[-_a-z0-9]*|tensorrt[-_a-z0-9]*|apex|flash[-_]attn|nvidia-[-_a-z0-9]+|cuda-[-_a-z0-9]+'
