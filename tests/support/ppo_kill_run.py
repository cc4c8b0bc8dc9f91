"""Runs `rotax ppo ...` and SIGKILLs its own process in the middle of update KILL (0-based),
right after that update's rollout — a deterministic point inside a running update.

Usage: python tests/support/ppo_kill_run.py KILL -- <arguments of `rotax`>
"""

import os
import signal
import sys

from rotax import cli
from rotax.rl.ppo import loop as ppo_loop

kill_at = int(sys.argv[1])
argv = sys.argv[sys.argv.index("--") + 1:]
original = ppo_loop.build_buffer
calls = 0


def build_buffer_then_die(*args, **kwargs):
    global calls
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    calls += 1
    return original(*args, **kwargs)


ppo_loop.build_buffer = build_buffer_then_die
sys.exit(cli.main(argv))
