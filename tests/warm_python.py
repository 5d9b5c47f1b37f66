"""A warmed-up Python for the tests' console commands: the user's command without the interpreter start.

Starting an interpreter that imports torch and MONAI costs ~10 s of a 2-core machine, and the suite runs dozens of
``python -m monai.bundle ...`` and ``python scripts/X.py`` commands whose subject is what the command does (its
files, exit status and console lines), not the start. :class:`WarmPythons` keeps, per pytest worker, processes
that have imported them (one per interpreter and environment); each command runs in a child forked from the one of
its interpreter and environment (``os.fork``), with the command's arguments, working folder, environment and its own
stdout/stderr files, as ``python`` would run it (``runpy``: ``-m``, ``-c`` or a script).

The server imported what it imports with the command's own environment (all of it but the thread counts, which the
child sets again), so what imports read from it (``PYTHONPATH``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``) is the
command's. Commands whose subject is the interpreter's start run fresh (``run_command(..., fresh=True)``: the
console's noise at import, the README's exact command), and so does any command with an interpreter option.

Run as a script, this file is the server: it imports :data:`PRELOAD`, then reads one JSON request per line on stdin,
forks a child per request and answers ``{"pid": N}`` then ``{"exit": CODE}`` on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# what the bundle's commands import before their work starts (the interpreter start the children skip)
PRELOAD = ("torch", "monai", "monai.bundle.scripts", "ignite.engine", "transfuse_bundle.engines", "transfuse_bundle.networks",
           "transfuse_bundle.data", "transfuse_bundle.metrics", "transfuse_bundle.handlers")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # read again in the child (torch.set_num_threads)


def _exit_code(exit_: SystemExit) -> int:
    """The process status ``python`` gives a ``SystemExit``: None -> 0, an int as is, anything else printed -> 1."""
    if exit_.code is None or isinstance(exit_.code, int):
        return exit_.code or 0
    print(exit_.code, file=sys.stderr)
    return 1


def _run_argv(argv: list[str]) -> None:
    """Runs ``python ARGV`` in this process as the interpreter would: ``-m MODULE``, ``-c CODE`` or ``SCRIPT``."""
    import runpy

    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        sys.argv = list(argv)
        sys.path[0] = str(Path(argv[0]).resolve().parent)
        runpy.run_path(argv[0], run_name="__main__")


def _child(request: dict) -> None:
    """The forked child: takes the command's stdin (none), stdout/stderr files, folder and environment, runs it and
    exits with its status after the interpreter's own shutdown steps (threads joined, atexit handlers)."""
    import atexit
    import threading

    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if "torch" in sys.modules:  # its OpenMP read the server's thread count at import
            sys.modules["torch"].set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
        _run_argv(request["argv"])
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_)
    except BaseException:  # what the interpreter does with an uncaught exception (the bundle's hook prints refusals)
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        try:
            threading._shutdown()  # type: ignore[attr-defined]  (the interpreter waits for non-daemon threads)
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    """The server loop (see the module docstring)."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # e.g. the zoo tests' plain interpreter, which has no transfuse_bundle of its own
            pass
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the server's own prints (e.g. warnings at import) go to its log, never into a reply
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            _child(request)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def _environment_key(env: dict) -> frozenset:
    """What of an environment a warm server's imports may have read: all of it but the thread counts (set again in
    each child) and pytest's name of the running test."""
    return frozenset((k, v) for k, v in env.items() if k not in (*THREAD_VARIABLES, "PYTEST_CURRENT_TEST"))


class WarmPython:
    """One server (``python`` running this file with ``env``) and its client: ``run`` as ``subprocess.run`` would."""

    def __init__(self, python: str, env: dict, scratch: Path):
        self.python, self.key, self.scratch = python, _environment_key(env), scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self._log = open(scratch / "server.log", "w")
        self.proc = subprocess.Popen([python, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=env, bufsize=0, start_new_session=True)
        self._pending = b""
        self._count = 0

    def _reply(self, deadline: float | None) -> dict:
        import select

        while b"\n" not in self._pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], wait)[0]:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the warm Python server ended; log:\n{(self.scratch / 'server.log').read_text()[-3000:]}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, cmd: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """Runs ``cmd`` in a forked child; raises ``subprocess.TimeoutExpired`` (the child killed) past ``timeout``."""
        self._count += 1
        out, err = self.scratch / f"{self._count}.out", self.scratch / f"{self._count}.err"
        request = {"argv": cmd[1:], "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        deadline = time.monotonic() + timeout
        pid = self._reply(None)["pid"]
        try:
            code = self._reply(deadline)["exit"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._reply(None)
            raise subprocess.TimeoutExpired(cmd, timeout, out.read_bytes(), err.read_bytes()) from None
        result = subprocess.CompletedProcess(cmd, code, out.read_text(errors="replace"), err.read_text(errors="replace"))
        out.unlink()
        err.unlink()
        return result

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


class WarmPythons:
    """The warm servers of one pytest worker, one per (interpreter, environment), at most ``size`` (the least recently
    used stops first). A server starts at the first command of its kind: that command costs what a fresh interpreter
    costs, the next ones of the kind ~0.3 s."""

    def __init__(self, scratch: Path, size: int = 4):
        self.scratch, self.size = scratch, size
        self.servers: list[WarmPython] = []  # least recently used first

    def find(self, cmd: list[str], env: dict) -> WarmPython | None:
        """The server for ``cmd`` (a ``python`` with no option but ``-m``/``-c``) and ``env``, started if needed;
        None for any other command."""
        if len(cmd) < 2 or not Path(cmd[0]).name.startswith("python") or (cmd[1].startswith("-") and cmd[1] not in ("-m", "-c")):
            return None
        key = _environment_key(env)
        for server in self.servers:
            if server.python == cmd[0] and server.key == key and server.proc.poll() is None:
                self.servers.remove(server)
                break
        else:
            if len(self.servers) >= self.size:
                self.servers.pop(0).stop()
            server = WarmPython(cmd[0], env, self.scratch / f"server{len(os.listdir(self.scratch))}")
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()


if __name__ == "__main__":
    serve()
