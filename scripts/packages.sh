# shellcheck shell=bash disable=SC2034
# Package facts that scripts/install_project.sh and scripts/make_wheelhouse.sh share (sourced).

# shellcheck source=scripts/image_versions.env
source "$(dirname "${BASH_SOURCE[0]}")/image_versions.env"  # $image_megatron_core, ...

# The megatron-core to install into the Python $1: on 3.12 and up the image's (the first release
# whose declared Transformer Engine range admits the image's TE; scripts/image_versions.env), on
# older Pythons 0.16.1, the newest pip finds there (0.17+ need 3.12), which CI's 3.11 lane tests.
megatron_core_for() {
  if "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    echo "megatron-core==$image_megatron_core"
  else
    echo "megatron-core==0.16.1"
  fi
}

# What an environment carries for the accelerators (an extended regex over package names): torch,
# Transformer Engine, TensorRT-LLM, Apex and NVIDIA's CUDA libraries. The NGC image's builds stay as
# installed, and a wheelhouse leaves them out.
accelerator_packages='torch|torchvision|torchaudio|triton|pytorch-triton|transformer[-_]engine[-_a-z0-9]*|tensorrt[-_a-z0-9]*|apex|flash[-_]attn|nvidia-[-_a-z0-9]+|cuda-[-_a-z0-9]+'
