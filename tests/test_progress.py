"""Progress reporting: a tqdm bar on a terminal, sparse plain lines in a log file."""

import io
from types import SimpleNamespace

from tqdm import tqdm

from efficientdet import progress as progress_mod
from efficientdet.utils.progress import LogProgress, progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_no_carriage_returns_and_few_lines(capsys):
    bar = progress_bar(range(1000), "epoch 1/3")  # stderr is captured: not a terminal
    assert isinstance(bar, LogProgress)
    seen = 0
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
        seen += 1
    bar.close()
    err = capsys.readouterr().err
    assert seen == 1000 and "\r" not in err and len(err.splitlines()) <= 2


def test_interval_zero_writes_one_line_per_update():
    log = io.StringIO()
    bar = progress_bar(desc="predict", total=3, interval_s=0.0, unit="img", file=log)
    with bar:
        for _ in range(3):
            bar.set_postfix(loss=0.123456, lr="0.01")
            bar.update(1)
        bar.write("a.jpg: cannot read image")
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in log.getvalue()
    assert lines[0].startswith("predict: 1/3 img") and lines[2].startswith("predict: 3/3 img")
    assert lines[2].endswith("loss=0.1235 lr=0.01") and lines[3] == "a.jpg: cannot read image"


def test_time_between_lines(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_mod, "time", SimpleNamespace(monotonic=lambda: now[0]))  # a clock the test moves
    log = io.StringIO()
    bar = progress_bar(range(10), "epoch 2/5", interval_s=30.0, file=log)
    for _ in bar:
        now[0] += 10.0  # each item takes 10 s: a line after the 3rd, 6th and 9th
    lines = log.getvalue().splitlines()
    assert lines == ["epoch 2/5: 3/10 it  30s", "epoch 2/5: 6/10 it  60s", "epoch 2/5: 9/10 it  90s"]


def test_disabled_writes_nothing_but_messages():
    log = io.StringIO()
    bar = progress_bar(range(5), "x", enabled=False, interval_s=0.0, file=log)
    assert list(bar) == [0, 1, 2, 3, 4]
    bar.write("only this")
    assert log.getvalue() == "only this\n"


def test_a_terminal_gets_a_tqdm_bar():
    bar = progress_bar(range(3), "epoch 1/1", file=FakeTerminal())
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    bar.close()
