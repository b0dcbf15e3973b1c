"""Environments the agent-loop tests load by file path ("tests/workers/agent_envs.py:Name"),
as a user would load theirs."""
import asyncio
import time


class EchoTurns:
    """Answers every turn with a fixed observation; done after `turns` policy turns."""

    def __init__(self, turns: int = 3, observation: str = " ok:"):
        self.turns, self.observation, self.seen = turns, observation, 0

    def reset(self, sample):
        return ""

    def step(self, action):
        self.seen += 1
        return self.observation, 0.25, self.seen >= self.turns, {}


class AsyncEcho(EchoTurns):
    async def reset(self, sample):
        await asyncio.sleep(0)
        return ""

    async def step(self, action):
        await asyncio.sleep(0.01)
        return super().step(action)


class Raises(EchoTurns):
    def step(self, action):
        raise RuntimeError("the environment broke")


class Hangs(EchoTurns):
    def step(self, action):
        time.sleep(30)
        return super().step(action)


class Garbage(EchoTurns):
    def step(self, action):
        return {"observation": 3}


class Floods(EchoTurns):
    def step(self, action):
        return "x" * 100_000, 0.0, False, {}


class NeverDone(EchoTurns):
    def step(self, action):
        return " more:", 0.0, False, {}


class WaitsForOthers(EchoTurns):
    """The trajectory of prompt `blocked` waits (in its step) until another trajectory has
    been through two steps: a loop that held the batch while one trajectory waits on its
    environment would never get there, and the blocked one would time out."""
    others_done = None  # a threading.Event shared by the instances in one process

    def __init__(self, blocked: str, turns: int = 2):
        import threading

        super().__init__(turns)
        if WaitsForOthers.others_done is None:
            WaitsForOthers.others_done = threading.Event()
        self.blocked, self.prompt = blocked, None

    def reset(self, sample):
        self.prompt = sample["prompt"]
        return ""

    def step(self, action):
        if self.prompt == self.blocked and self.seen == 0:
            if not WaitsForOthers.others_done.wait(timeout=20):
                raise RuntimeError("no other trajectory moved while this one waited")
        elif self.seen == 1:
            WaitsForOthers.others_done.set()
        return super().step(action)


class SlowTool(EchoTurns):
    """Two policy turns; the tool between them takes 3 s (a weight update lands meanwhile)."""

    def __init__(self):
        super().__init__(turns=2)

    def step(self, action):
        if self.seen == 0:
            time.sleep(3.0)
        return super().step(action)
