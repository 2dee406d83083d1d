"""bench/machine.py's steal reading and served workers (benchmarks are run by
hand; what they print of the machine and how they pair runs is tested here)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import machine  # pylint: disable=wrong-import-position


def _stat(path, user, idle, steal):
  # cpu user nice system idle iowait irq softirq steal guest guest_nice
  path.write_text(f"cpu  {user} 0 10 {idle} 0 0 0 {steal} 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")


def test_steal_share_is_the_stolen_part_of_the_ticks_between_calls(tmp_path, monkeypatch):
  monkeypatch.setattr(machine, "_previous_times", None)
  stat = tmp_path / "stat"
  _stat(stat, user=100, idle=500, steal=20)
  assert machine.cpu_times(str(stat)) == (20, 630)  # guest time is in user already
  assert machine.steal_share(str(stat)) is None  # nothing to compare with yet
  _stat(stat, user=160, idle=520, steal=40)  # 100 ticks more, 20 of them stolen
  assert machine.steal_share(str(stat)) == 0.2
  assert machine.steal_share(str(stat)) is None  # no tick since
  assert machine.steal_share(str(tmp_path / "missing")) is None
  assert machine.cpu_times(str(tmp_path / "missing")) is None


def test_describe_adds_the_steal_from_its_second_line_on(monkeypatch):
  # Fixed readings: the machine's own ticks move between two calls.
  readings = iter([(100, 1000), (105, 1050)])
  monkeypatch.setattr(machine, "cpu_times", lambda *_: next(readings))
  monkeypatch.setattr(machine, "_previous_times", None)
  assert "stolen" not in machine.describe()
  assert machine.describe().endswith("since the line before 10.0%")


# A served worker for the tests below: each measurement says when it began
# and ended and burns `seconds` of CPU in between.
_SERVED = """
import os, sys, time
sys.path.insert(0, {bench!r})
import machine

def measure():
  start = time.monotonic()
  while time.monotonic() - start < {seconds}:
    pass
  return {{"pid": os.getpid(), "start": start, "end": time.monotonic()}}

if {fail}:
  sys.exit("cannot set up: no model here")
machine.serve(measure, name=sys.argv[1])
"""


def _served(tmp_path, *, seconds=0.0, fail=False):
  script = tmp_path / f"served_{seconds}_{fail}.py"
  script.write_text(_SERVED.format(bench=os.path.dirname(machine.__file__), seconds=seconds,
                                   fail=fail))
  return str(script)


def test_paired_measures_each_right_after_the_other_alternating_which_first(tmp_path):
  script = _served(tmp_path, seconds=0.3)
  with machine.Worker(script, "a") as a, machine.Worker(script, "b") as b:
    assert a.ready == {"name": "a", "ready": True} and b.ready["name"] == "b"
    runs = machine.paired(a, b, 3, settle_seconds=0.05)
    pids = (a.proc.pid, b.proc.pid)
  assert len(runs) == 3
  for i, (ra, rb, idle) in enumerate(runs):
    assert (ra["pid"], rb["pid"]) == pids
    first, second = (ra, rb) if i % 2 == 0 else (rb, ra)  # a b, b a, a b
    # Under a second apart (settle_seconds and a line each way), not a
    # start-up apart; 2 s leaves room for a loaded machine.
    assert first["end"] <= second["start"] < first["end"] + 2.0
    # Each burned 0.3 s of CPU while the other waited on its input.
    assert idle < 0.1
  assert runs[0][0]["end"] <= runs[1][1]["start"]  # pairs one after the other


def test_a_worker_that_does_not_start_says_why(tmp_path):
  with pytest.raises(RuntimeError, match=r"ended without answering \(exit status 1\)"
                     r"(.|\n)*cannot set up: no model here"):
    machine.Worker(_served(tmp_path, fail=True), "a")


def test_cpu_seconds_counts_this_process_and_is_zero_for_no_process():
  before = machine.cpu_seconds(os.getpid())
  deadline = machine.time.process_time() + 0.2
  while machine.time.process_time() < deadline:
    pass
  assert machine.cpu_seconds(os.getpid()) - before >= 0.15
  assert machine.cpu_seconds(2**22 + 12345) == 0.0  # above pid_max's default


@pytest.mark.parametrize("bf16,fused,amx,left_out", [
    (True, True, True, []),
    (True, True, False, ["ours_fused_bf16"]),  # AVX512_BF16 without AMX
    (False, True, False, ["ours_bf16", "ours_fused_bf16"]),
    (False, False, False, ["ours_fused", "ours_bf16", "ours_fused_bf16"]),
])
def test_measurable_impls_leave_out_what_this_cpu_cannot_run(monkeypatch, bf16, fused, amx,
                                                            left_out):
  from dataspec import decode_ops  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(machine, "cpu_has_bfloat16", lambda: bf16)
  monkeypatch.setattr(decode_ops, "runs_here", lambda: fused)
  monkeypatch.setattr(decode_ops, "amx_runs_here", lambda: amx)
  impls = ["ours", "ours_fused", "ours_bf16", "ours_fused_bf16", "torch"]
  kept, note = machine.measurable_impls(impls, explicit=False)
  assert kept == [i for i in impls if i not in left_out]
  assert all(i in note for i in left_out) and (note == "") == (not left_out)
  assert machine.measurable_impls(impls, explicit=True) == (impls, "")
