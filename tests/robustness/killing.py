"""Run ``diffalign`` commands as real processes, kill them at random points with SIGKILL, resume them, and check the
outcome.

Two launchers run the same ``diffusion_align.cli.main`` in a process of its own:

* :class:`ConsoleLauncher`: the installed ``diffalign`` console script, a fresh interpreter per run (what a user
  or a cluster runs; pays the ~15 s import of torch/diffusers each time);
* :class:`ForkLauncher`: a child forked from a multiprocessing fork server that imported the package once, so a
  run starts in a second or two (the CI-sized tests use it).

A kill point kills a run either right after a chosen checkpoint (or shard) appears on disk, or after a random
wall-clock delay; either can land anywhere: in start-up, in a step, in the middle of a save.
"""

from __future__ import annotations

import abc
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# every launched process: no Hub, one intra-op thread (the cores are shared; results are then bitwise repeatable)
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
             "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
PRELOAD = ["diffusion_align.cli", "diffusion_align.train.loop", "diffusion_align.generate.run"]


def child_env() -> dict[str, str]:
    """This process's environment plus :data:`CHILD_ENV` (``DIFFALIGN_CACHE`` and the like carry over)."""
    return {**os.environ, **CHILD_ENV}


class Run(abc.ABC):
    """One launched ``diffalign`` process; its stdout and stderr go to ``log``."""

    log: Path

    @abc.abstractmethod
    def poll(self) -> int | None:
        """The exit status (128 + signal number when a signal ended it), or ``None`` while running."""

    @abc.abstractmethod
    def kill(self) -> int:
        """SIGKILL (no handler runs, nothing is flushed) and reap; returns the exit status."""

    @abc.abstractmethod
    def send(self, signum: int) -> None:
        """Deliver ``signum`` to the process."""

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"diffalign run did not end within {timeout:.0f} s; log {self.log}")
            time.sleep(0.05)
        return status

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ConsoleRun(Run):
    def __init__(self, args: list[str], log: Path) -> None:
        executable = shutil.which("diffalign")
        if executable is None:
            raise FileNotFoundError("the diffalign console script is not on PATH (pip install -e .)")
        self.log = log
        with open(log, "ab") as sink:
            self.process = subprocess.Popen([executable, *args], stdout=sink, stderr=subprocess.STDOUT,
                                            env=child_env())

    def poll(self) -> int | None:
        code = self.process.poll()
        return None if code is None else (128 - code if code < 0 else code)  # -9 -> 137, as a shell reports

    def kill(self) -> int:
        self.process.kill()
        self.process.wait()
        return self.poll()

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)


def _forked_main(args: list[str], log: str, env: dict[str, str]) -> None:
    """The body of a :class:`ForkLauncher` child: the console script's ``main`` with output to ``log``."""
    os.environ.update(env)
    sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    import torch

    torch.set_num_threads(1)
    from diffusion_align.cli import main

    main(args)


class ForkRun(Run):
    def __init__(self, context, args: list[str], log: Path) -> None:
        self.log = log
        self.process = context.Process(target=_forked_main, args=(args, str(log), child_env()))
        self.process.start()

    def poll(self) -> int | None:
        code = self.process.exitcode
        return None if code is None else (128 - code if code < 0 else code)  # -9 -> 137, as a shell reports

    def kill(self) -> int:
        self.process.kill()
        self.process.join()
        return self.poll()

    def send(self, signum: int) -> None:
        os.kill(self.process.pid, signum)


class ConsoleLauncher:
    name = "console script"

    def start(self, args: list[str], log: Path) -> Run:
        return ConsoleRun(args, log)


class ForkLauncher:
    """Children of one fork server that imported :data:`PRELOAD` (started, and waited for, on construction)."""

    name = "fork server"

    def __init__(self, log: Path) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        warm_up = self.start(["--help"], log)  # the server imports the package once, here, not in a timed run
        if warm_up.wait(timeout=300) != 0:
            raise AssertionError(f"diffalign --help failed in a fork-server child:\n{warm_up.output()[-3000:]}")

    def start(self, args: list[str], log: Path) -> Run:
        return ForkRun(self.context, args, log)


@dataclass
class Workload:
    """A resumable command and how to read its progress from disk.

    Attributes:
        args: the ``diffalign`` arguments (the same for the first run and every resume).
        total: units of work in a full run (optimizer steps, shards).
        unit_done: whether unit ``k`` (1-based) is complete on disk (checkpoint-k, the k-th shard's marker).
        last_output_started: whether the final outputs are being written (the LoRA file, the last marker).
        describe: what is complete on disk now, and how many hidden temporaries lie there.
    """

    args: list[str]
    total: int
    unit_done: Callable[[int], bool]
    last_output_started: Callable[[], bool]
    describe: Callable[[], tuple[str, int]]
    started: float = 0.0  # time.monotonic() at the start of the current run

    def units_done(self) -> int:
        return max((k for k in range(1, self.total + 1) if self.unit_done(k)), default=0)


@dataclass
class Timing:
    """From an uninterrupted run: seconds until the first unit is complete, and seconds per unit after it."""

    startup: float
    per_unit: float


@dataclass
class KillPoint:
    """What one kill hit: how it was aimed, and what the disk held right after it."""

    aim: str
    status: int
    latest: str
    hidden_leftovers: int


@dataclass
class KillReport:
    points: list[KillPoint] = field(default_factory=list)
    final_status: int | None = None
    seconds: float = 0.0

    def table(self) -> str:
        lines = [f"{'#':>3}  {'aim':<44} {'status':>6}  {'complete after kill':<22} {'hidden temporaries':>18}"]
        for i, p in enumerate(self.points, 1):
            lines.append(f"{i:>3}  {p.aim:<44} {p.status:>6}  {p.latest:<22} {p.hidden_leftovers:>18}")
        killed = sum(p.status == 137 for p in self.points)
        lines.append(f"{killed} of {len(self.points)} runs killed by SIGKILL; final resume exit status "
                     f"{self.final_status}; {self.seconds:.0f} s in all")
        return "\n".join(lines)


def wait_until(ready: Callable[[], bool], run: Run, timeout: float) -> bool:
    """Poll ``ready`` until it holds (True) or ``run`` ends or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        if ready():
            return True
        time.sleep(0.005)
    return False


def aim(index: int, points: int, work: Workload, timing: Timing, rng: random.Random) -> tuple[str, Callable]:
    """Where kill ``index`` of ``points`` lands: the last one as the final outputs are being written; the others
    in turn during start-up (model load, data scan, resume), right after a unit is saved, or mid-work (inside a
    step or a shard, or the save that ends it: a random time after this run's first unit).

    A timed kill also fires once a few more units are complete, whichever comes first: start-up and unit times
    vary with the machine's load, and a run must never finish before its kill.
    """
    done = work.units_done()
    first, cap = min(work.total, done + 1), min(work.total, done + 3)
    if index == points - 1:
        return "while the final outputs are written", work.last_output_started
    if index % 3 == 0:
        delay = rng.uniform(0.0, timing.startup)
        return (f"start-up: {delay:.2f} s in, or at unit {first}",
                lambda: time.monotonic() - work.started >= delay or work.unit_done(first))
    if index % 3 == 1:
        k = min(work.total, done + rng.randint(1, 3))
        return f"right after unit {k} is on disk", lambda: work.unit_done(k)
    delay, seen = rng.uniform(0.0, 2 * timing.per_unit), []

    def mid_work() -> bool:
        if not seen:
            if work.unit_done(first):
                seen.append(time.monotonic())
            return False
        return time.monotonic() - seen[0] >= delay or work.unit_done(cap) or work.last_output_started()

    return f"mid-work: {delay:.2f} s after unit {first}, or at {cap}", mid_work


def kill_and_resume(launcher, work: Workload, logs: Path, points: int, rng: random.Random, timing: Timing,
                    timeout: float = 300.0) -> KillReport:
    """Start ``work`` ``points`` times, each killed by SIGKILL at a random point (:func:`aim`), then once more to
    completion (exit status 0 required)."""
    report, started = KillReport(), time.monotonic()
    for index in range(points):
        work.started = time.monotonic()
        run = launcher.start(work.args, logs / f"kill-{index:02d}.log")
        description, ready = aim(index, points, work, timing, rng)
        wait_until(ready, run, timeout)
        status = run.kill() if run.poll() is None else run.poll()
        latest, hidden = work.describe()
        report.points.append(KillPoint(description, status, latest, hidden))
    final = launcher.start(work.args, logs / "final.log")
    report.final_status = final.wait(timeout)
    report.seconds = time.monotonic() - started
    if report.final_status != 0:
        raise AssertionError(f"the final resume failed ({report.final_status}):\n{final.output()[-3000:]}")
    return report


def timed_run(launcher, work: Workload, log: Path, timeout: float = 300.0) -> Timing:
    """Run ``work`` uninterrupted (exit status 0 required) and time its start-up and its units."""
    started = time.monotonic()
    run = launcher.start(work.args, log)
    wait_until(lambda: work.unit_done(1), run, timeout)
    first = time.monotonic() - started
    status = run.wait(timeout)
    if status != 0:
        raise AssertionError(f"diffalign {work.args[0]} failed ({status}):\n{run.output()[-3000:]}")
    return Timing(startup=first, per_unit=max(time.monotonic() - started - first, 0.0) / max(work.total - 1, 1))


def wait_for_output(run: Run, pattern: str, timeout: float) -> re.Match:
    """The first match of ``pattern`` in the run's output, waiting for it while the run lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, run.output())
        if match:
            return match
        if run.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"'{pattern}' never appeared (status {run.poll()}):\n{run.output()[-3000:]}")
