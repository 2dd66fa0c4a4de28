# megatron-prorl for GPU clusters (Docker, or enroot/pyxis through slurm/prorl_4node.sh).
#
# Base: TensorRT-LLM's release image 1.3.0rc24, the TensorRT-LLM release the GPU rollout engine
# is written against (megatron_prorl/rollout/trtllm.py). TensorRT-LLM builds that image FROM the
# NGC PyTorch image (docker/Dockerfile.multi: BASE_IMAGE=nvcr.io/nvidia/pytorch), whose line for
# 1.3.0rc24 is the NGC PyTorch 26.05 stack (TensorRT-LLM PR 15087; main moved on to 26.08 with
# PR 18126): NGC's PyTorch build with Transformer Engine and Apex, CUDA 13.2 (the 1.3.0rc24
# installation guide), Python 3.12 (Dockerfile.multi PYTHON_VERSION). scripts/image_versions.env
# states the image's versions and where each comes from; this FROM line names its image_base (a
# test checks). The image's Transformer Engine is newer than megatron-core 0.16.1 declares support
# for (< 2.12), so the image gets megatron-core 0.17.0 (scripts/packages.sh). install_project.sh
# keeps NGC's builds as installed; scripts/check_image_versions.py then fails the build where the
# image's versions are not the ones CI's image lane tests.
FROM nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc24

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/megatron-prorl
COPY pyproject.toml README.md ./
COPY megatron_prorl megatron_prorl
COPY checkpoint_convert checkpoint_convert
COPY configs configs
COPY scripts scripts
COPY slurm slurm

# The same install steps CI runs (scripts/install.sh calls install_project.sh), plus bubblewrap
# for the reward sandbox. Non-editable: the code in site-packages is the image's; a job that
# mounts a checkout and runs `python -m megatron_prorl.cli` from it runs the checkout's code.
# The test extra brings pytest, so `bash scripts/gpu_selftest.sh` runs from a mounted checkout;
# the trtllm extra brings ray for TensorRT-LLM's Ray orchestrator (pinned in pyproject.toml).
RUN bash scripts/install_system_deps.sh \
    && PYTHON=python3 bash scripts/install_project.sh test,trtllm \
    && python3 scripts/check_image_versions.py image
