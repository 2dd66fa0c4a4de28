"""Running untrusted programs: namespaces, Landlock, seccomp, rlimits and cgroups around a
stdlib-only harness. Standard library only (nothing from the rest of the package), so the reward
workers and the launcher can use its pieces without importing the trainer."""

from megatron_prorl.sandbox.sandbox import Limits, Sandbox, SandboxUnavailable

__all__ = ["Limits", "Sandbox", "SandboxUnavailable"]
