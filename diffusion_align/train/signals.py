"""Pre-emption: SIGTERM or SIGINT during training ends in a checkpoint at the next optimizer-step boundary and a
clean exit.

Clusters stop jobs with SIGTERM (SLURM at the time limit or on pre-emption, Kubernetes on eviction, ``torchrun`` when
a peer fails) and users with Ctrl-C (SIGINT). While :class:`StopSignals` is active the first such signal only sets
:attr:`StopSignals.received`; the loop finishes the optimizer step under way (a checkpoint mid-accumulation would
lose the accumulated gradients), writes a checkpoint, and :func:`~diffusion_align.train.loop.run` raises
:class:`TrainingInterrupted`, which exits the process with status 128 + the signal number (143 for SIGTERM, 130 for
SIGINT: "stopped by a signal", so ``diffalign train ... && next-step`` does not go on) and prints no traceback. The
same command resumes from that checkpoint. A second signal acts at once, as it would without this module (give the
step time to finish: SLURM's ``--signal=B:TERM@120`` sends SIGTERM two minutes before the kill).

Inside a submitit job (``hydra/launcher=slurm``) submitit's pre-emption / time-limit signal (``SIGUSR2``) is caught the
same way; after the checkpoint, :meth:`StopSignals.hand_over` passes it on to submitit's own handler, which requeues
the job; the requeued job resumes from the checkpoint (see :mod:`diffusion_align.cluster`).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from diffusion_align.cluster import preemption_signal

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after writing a checkpoint; uncaught, it exits with ``128 + signum``.

    Attributes:
        signum: the signal received.
        step: optimizer steps completed (the checkpoint's step).
        checkpoint: the checkpoint directory to resume from.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    def __str__(self) -> str:
        return (f"stopped by {signal.Signals(self.signum).name} after step {self.step}; "
                f"checkpoint {self.checkpoint} (run the same command to resume)")


class StopSignals:
    """Context manager: SIGTERM / SIGINT set :attr:`received` instead of stopping the process at once.

    Only the main thread can catch signals; in another thread (a notebook's worker thread, say) the handlers are not
    installed and the signals keep their usual effect, which is logged.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._original: dict[int, object] = {}
        preempt = preemption_signal()
        self.signals = STOP_SIGNALS + ((preempt,) if preempt is not None else ())

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.info("training outside the main thread: SIGTERM/SIGINT stop it without a checkpoint")
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._original = dict(self._previous)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        self._restore()  # a second signal acts at once
        log.warning("received %s: the run stops after this optimizer step, with a checkpoint (send it again to "
                    "stop now, without one)", signal.Signals(signum).name)

    def hand_over(self) -> None:
        """Pass the received signal to the handler it displaced, if that was a function (submitit's requeue).

        Call it after the checkpoint is written. SIGTERM/SIGINT displaced Python's defaults and are not passed on.
        """
        handler = self._original.get(self.received) if self.received is not None else None
        if self.received not in STOP_SIGNALS and callable(handler):
            log.info("handing %s over to %r (requeue)", signal.Signals(self.received).name, handler)
            handler(self.received, None)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
