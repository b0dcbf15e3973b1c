"""Remote reward path: client <-> rewards.server on loopback, retries, clear errors."""
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from rewards import RemoteRewardClient, RewardError, RewardManager, RewardSpec
from rewards.server import make_server


def length_scorer(prompts, responses, labels):
    return [float(len(r)) + (0.5 if l == "bonus" else 0.0) for r, l in zip(responses, labels)]


@pytest.fixture
def server():
    calls = []

    def scorer(prompts, responses, labels):
        calls.append(len(responses))
        if responses and responses[0] == "explode":
            raise RuntimeError("model on fire")
        return length_scorer(prompts, responses, labels)

    with make_server(scorer, port=0) as srv:  # serving from a background thread
        srv.calls = calls
        yield srv


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def test_round_trip_in_batches(server):
    client = RemoteRewardClient(server.url, batch_size=3)
    responses = ["a", "bb", "ccc", "dddd", "eeeee"]
    scores = client.score(["p"] * 5, responses, ["x", "bonus", "x", "x", "x"])
    assert scores == [1.0, 2.5, 3.0, 4.0, 5.0]
    assert server.calls == [3, 2]
    assert server.server_address[0] == "127.0.0.1"


def test_health_and_bad_requests(server):
    with urllib.request.urlopen(server.url + "/health", timeout=5) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    client = RemoteRewardClient(server.url, retries=0)
    with pytest.raises(RewardError, match=r"rejected the request: HTTP 400 .*one length"):
        client._post({"prompts": ["a"], "responses": ["a", "b"]})
    with pytest.raises(RewardError, match=r"unreachable after 1 attempt\(s\): HTTP 500 .*model on fire"):
        client.score(["p"], ["explode"], [None])
    assert client._post({"prompts": ["p"], "responses": ["abc"]}) == {"scores": [3.0]}  # labels may be omitted
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "/nowhere", timeout=5)
    assert err.value.code == 404 and "use POST /score" in json.loads(err.value.read())["error"]


def test_as_reward_spec(server):
    spec = RewardSpec("rm", "remote", weight=0.5, kwargs={"url": server.url, "batch_size": 2})
    with RewardManager([spec, RewardSpec("em", "exact_match")]) as rm:
        res = rm.score(["q1", "q2", "q3"], ["a", "bb", "ccc"], ["a", "x", "y"])
    assert res.components["rm"] == [1.0, 2.0, 3.0]
    assert res.scores == pytest.approx([1.5, 1.0, 1.5])


def test_unreachable_server_fails_fast_with_url():
    url = f"http://127.0.0.1:{closed_port()}"
    client = RemoteRewardClient(url, timeout_s=0.5, retries=2, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=rf"reward server at {url}/score unreachable after 3 attempt\(s\): ConnectionRefusedError"):
        client.score(["p"], ["r"], ["l"])
    assert time.monotonic() - t0 < 3


def test_unreachable_server_through_manager_policies():
    url = f"http://127.0.0.1:{closed_port()}"
    spec = RewardSpec("rm", "remote", kwargs={"url": url, "retries": 1, "backoff_s": 0.01, "timeout_s": 0.5})
    with RewardManager([spec]) as rm, pytest.raises(RewardError, match=rf"reward 'rm' \(fn='remote'\) failed on a batch of 2 samples.*{url}/score unreachable"):
        rm.score(["p", "p"], ["a", "b"], ["x", "y"])
    with RewardManager([spec], on_error="score", error_score=-1.0) as rm:
        res = rm.score(["p", "p"], ["a", "b"], ["x", "y"])
    assert res.components["rm"] == [-1.0, -1.0] and res.errors == 2


def test_retry_then_success():
    # The server comes up while the client is backing off.
    port = closed_port()
    started = {}

    def start_later():
        time.sleep(0.3)
        srv = make_server(length_scorer, port=port)
        started["srv"] = srv
        srv.serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    client = RemoteRewardClient(f"http://127.0.0.1:{port}/score", timeout_s=1, retries=5, backoff_s=0.1)
    try:
        assert client.score(["p"], ["abc"], [None]) == [3.0]
    finally:
        for _ in range(50):
            if "srv" in started:
                break
            time.sleep(0.05)
        started["srv"].shutdown()
        started["srv"].server_close()


def test_client_rejects_bad_url():
    with pytest.raises(ValueError, match="http://host:port"):
        RemoteRewardClient("localhost:8000")
