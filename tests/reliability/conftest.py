"""The reliability tests' tally: each test adds its counts; with DIFFLAB_RELIABILITY_REPORT
set, the session writes them there as JSON (docs/reliability.md quotes that file)."""

import json
import os
import sys
import time

import pytest

_TALLY: dict[str, dict] = {}


@pytest.fixture
def tally():
    """`tally(section, **counts)` adds counts (numbers add up, anything else is kept)."""

    def add(section: str, **counts) -> None:
        entry = _TALLY.setdefault(section, {})
        for key, value in counts.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                entry[key] = entry.get(key, 0) + value
            else:
                entry[key] = value

    return add


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("DIFFLAB_RELIABILITY_REPORT")
    if not path or not _TALLY:
        return
    report = {
        "command": " ".join(["python -m pytest", *sys.argv[1:]]),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "exit_status": int(exitstatus),
        **_TALLY,
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
