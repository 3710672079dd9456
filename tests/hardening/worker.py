"""The worker process: makes the calls one at a time, so that an abort, a segfault or a hang fails the
example that caused it instead of ending the test run."""

from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, Optional

from .registry import Recipe

#: The tests directory, which the worker puts on its path to import this package.
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import os, pickle, sys
proto_in = os.fdopen(os.dup(0), "rb")
proto_out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # stray prints go to stderr, never into the protocol
sys.path.insert(0, {tests!r})
import hardening
while True:
    try:
        op, payload = pickle.load(proto_in)
    except EOFError:
        break
    if op == "run":
        reply = hardening.run_recipe(payload)
    elif op == "exec":
        name, kwargs = payload
        try:
            reply = {{"status": "ok", "value": getattr(hardening, name)(**kwargs)}}
        except BaseException as e:
            import traceback
            reply = {{"status": "raised", "type": type(e).__name__, "message": str(e),
                      "why": traceback.format_exc()}}
    pickle.dump(reply, proto_out)
    proto_out.flush()
"""


class WorkerDied(AssertionError):
    pass


def _limit_address_space(limit: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


class Worker:
    """A child Python process that runs recipes. A crash or a hang becomes a `WorkerDied` failure that
    names the recipe; the next call starts a fresh child.

    ``address_space`` caps the child's virtual memory (RLIMIT_AS) so that a regression that allocates
    without limit fails inside the child instead of pushing the machine into the OOM killer.
    """

    def __init__(
        self,
        env: Optional[Dict[str, str]] = None,
        address_space: Optional[int] = 8 << 30,
        timeout: float = 120.0,
    ):
        self.env = dict(os.environ, **(env or {}))
        self.address_space = address_space
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None
        self.stderr = None

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD.format(tests=TESTS_DIR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=self.env,
            preexec_fn=_limit_address_space(self.address_space) if self.address_space else None,
        )

    def _stderr_tail(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return self.stderr.read()[-3000:].decode(errors="replace")

    def request(self, op: str, payload: Any, timeout: Optional[float] = None) -> Dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        what = f"{op} {payload!r}"[:2000]
        try:
            pickle.dump((op, payload), proc.stdin)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], timeout or self.timeout)
            if not ready:
                self.close()
                raise WorkerDied(f"no answer within {timeout or self.timeout} s (hang or deadlock): {what}")
            return pickle.load(proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            code = proc.wait()
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            tail = self._stderr_tail()
            self.proc = None
            raise WorkerDied(f"the worker died ({how}) on {what}\n--- its stderr ---\n{tail}") from None

    def run(self, recipe: Recipe) -> Dict[str, Any]:
        return self.request("run", recipe)

    def exec(self, name: str, timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """Call ``hardening.<name>(**kwargs)`` in the worker; its return value (picklable) comes back."""
        reply = self.request("exec", (name, kwargs), timeout)
        if reply["status"] != "ok":
            raise AssertionError(f"{name} raised {reply['type']}: {reply['message']}\n{reply.get('why', '')}")
        return reply["value"]

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
