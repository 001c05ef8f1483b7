"""The command line: the load-test commands come with the load kit and only with it."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_LOAD = """
import importlib.abc, sys
class NoLoadKit(importlib.abc.MetaPathFinder):  # as in the runtime image, whose wheel has no load/
    def find_spec(self, name, path=None, target=None):
        if name == "load" or name.startswith("load."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoLoadKit())
from stream.cli import main
sys.exit(main(sys.argv[1:]))
"""


def giftstream(*args: str, load_kit: bool = True) -> subprocess.CompletedProcess[str]:
    code = "from stream.cli import main; import sys; sys.exit(main(sys.argv[1:]))" if load_kit else WITHOUT_LOAD
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_the_load_commands_are_offered_with_the_load_kit():
    assert "load" in giftstream("--help").stdout.split("{", 1)[1].split("}", 1)[0].split(",")


def test_without_the_load_kit_the_worker_commands_still_work():
    helped = giftstream("--help", load_kit=False)
    assert helped.returncode == 0, helped.stderr
    assert "load" not in helped.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    checked = giftstream("policy", load_kit=False)
    assert checked.returncode == 0, checked.stderr
