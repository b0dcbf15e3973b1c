"""The environment of bench_async.py: a tool of fixed latency.

Turn 1 is the policy's answer to a tiny addition prompt; the "tool" then takes
`latency_s` (a sleep: a remote call, a test run, a search) and answers " ok:"; turn 2
ends the trajectory. Reward 1 for a right first answer. A long tail: with `tail_every`
k > 0, every k-th environment made in the process waits `tail_s` instead (a slow
sandbox, a long test suite)."""
import itertools
import time

_MADE = itertools.count()


class SleepyTool:
    def __init__(self, latency_s: float = 1.0, tail_s: float = 0.0, tail_every: int = 0):
        slow = tail_every > 0 and next(_MADE) % tail_every == 0
        self.latency_s, self.turns = (tail_s if slow else latency_s), 0

    def reset(self, sample):
        self.label = str(sample["label"])
        return ""

    def step(self, action):
        self.turns += 1
        if self.turns == 1:
            time.sleep(self.latency_s)
            return " ok:", float(action.strip() == self.label), False, {}
        return "", 0.0, True, {}
