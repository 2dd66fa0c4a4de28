"""Run by test_sandbox.py as an unprivileged user (no cgroups, no uid drop): a few hostile
programs through each sandbox mode; prints one JSON line per mode."""

from __future__ import annotations

import json
import os
import sys

from megatron_prorl.config import RewardsConfig
from megatron_prorl.domains.code import verify_code
from megatron_prorl.sandbox.sandbox import Sandbox, SandboxUnavailable

PROGRAMS = {
    "network": "import socket\ntry:\n    socket.create_connection(('127.0.0.1', PORT), timeout=1)\n"
               "    print('ESCAPED')\nexcept OSError:\n    print('BLOCKED')",
    "write": "try:\n    open('HOST/escaped.txt', 'w').write('x')\n    print('ESCAPED')\n"
             "except OSError:\n    print('BLOCKED')",
    "kill": "import os, signal\ntry:\n    os.kill(PARENT, signal.SIGKILL)\n    print('ESCAPED')\n"
            "except OSError:\n    print('BLOCKED')",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
}


def main() -> None:
    port, host_dir = sys.argv[1], sys.argv[2]
    cfg = RewardsConfig(code_timeout_s=1.0, code_memory_mb=512, code_max_processes=32)
    gt = {"inputs": ["\n"], "outputs": ["ESCAPED\n"]}
    for mode in ("bwrap", "rlimit"):
        try:
            box = Sandbox(mode)
        except SandboxUnavailable as exc:
            print(json.dumps({"mode": mode, "unavailable": str(exc)}), flush=True)
            continue
        rewards = {}
        for name, code in PROGRAMS.items():
            code = code.replace("PORT", port).replace("HOST", host_dir).replace("PARENT", str(os.getpid()))
            rewards[name] = verify_code(f"```python\n{code}\n```", gt, cfg, sandbox=box).reward
        print(json.dumps({"mode": mode, "uid": os.getuid(), "describe": box.describe(), "rewards": rewards}),
              flush=True)


if __name__ == "__main__":
    main()
