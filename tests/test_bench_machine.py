"""bench/machine.py's steal reading (benchmarks are run by hand; what they
print of the machine is tested here)."""

import os
import sys

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
