"""Removes an engine's containers when the engine dies, however it dies.

A container does not die with the client that started it: podman's conmon (or dockerd) keeps it.
So each container runtime starts this small process in a session of its own, and tells it through
a pipe which containers exist (`+name`, `-name`). The pipe's other end is held by the engine
alone; when the engine ends, even by SIGKILL, the kernel closes it, and this process removes what
is left and exits.

    python -c "import sys; from workflows.engine.reaper import main; main(sys.argv[1])" podman
"""

from __future__ import annotations

import subprocess
import sys
from typing import IO


class Reaper:
    """The engine's side: start the reaper once, then tell it each container created and removed."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self._proc: subprocess.Popen[str] | None = None

    def _pipe(self) -> IO[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from workflows.engine.reaper import main; main(sys.argv[1])",
                    self.engine,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # a kill of the engine's process group must not take it too
            )
        assert self._proc.stdin is not None
        return self._proc.stdin

    def created(self, name: str) -> None:
        self._tell(f"+{name}")

    def removed(self, name: str) -> None:
        self._tell(f"-{name}")

    def _tell(self, line: str) -> None:
        pipe = self._pipe()
        pipe.write(line + "\n")
        pipe.flush()


def main(engine: str) -> None:
    alive: set[str] = set()
    for line in sys.stdin:
        name = line[1:].strip()
        if line.startswith("+"):
            alive.add(name)
        elif line.startswith("-"):
            alive.discard(name)
    # End of input: the engine has ended, cleanly or not. Whatever it did not remove goes now.
    for name in sorted(alive):
        now = ["--time", "0"] if engine == "podman" else []  # docker's --force kills at once anyway
        subprocess.run([engine, "rm", "--force", *now, name], capture_output=True)
        print(f"reaper: removed container {name}: its engine exited", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
