"""workers.partial.UpdateGate with threads standing in for the generation loop and the
sync (pure logic, no engine): an update waits for the loop's pause point, the loop waits
for the update's end, a loop that starts during an update waits for it."""
import threading
import time

from workers.partial import UpdateGate


def test_update_waits_for_the_loop_to_pause_and_the_loop_for_the_update():
    gate, log, stop = UpdateGate(), [], threading.Event()

    def loop():
        with gate.generating():
            while not stop.is_set():
                gate.pause_point(lambda: log.append("pause"), lambda: log.append("resume"))
                time.sleep(0.01)

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(0.05)
    gate.begin_update()
    log.append("update")  # the loop is parked in its pause point now
    time.sleep(0.05)
    assert log == ["pause", "update"]
    gate.end_update()
    time.sleep(0.05)
    stop.set()
    thread.join(2)
    assert log == ["pause", "update", "resume"]


def test_update_without_a_generation_does_not_wait_and_a_new_loop_waits_for_it():
    gate, started = UpdateGate(), []
    gate.begin_update()  # nothing generating: returns at once

    def loop():
        with gate.generating():
            started.append(time.monotonic())

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(0.1)
    assert not started  # never steps a half-loaded model
    ended = time.monotonic()
    gate.end_update()
    thread.join(2)
    assert started and started[0] >= ended
