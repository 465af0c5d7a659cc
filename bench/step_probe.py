"""Run a training program unchanged (a script path or ``-m module``) and record what the side-by-side bench needs.

    python bench/step_probe.py --record R.json [--capture C.pt --capture-steps 2] -- PROGRAM [ARGS ...]

``PROGRAM`` is a file path (executed with ``runpy.run_path``, as ``python PROGRAM`` would) or ``-m MODULE``. Before it
runs, this process installs class-level instruments, so the program needs no edit:

- a global optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``): the wall-clock
  time at the end of every optimizer step, after ``torch.cuda.synchronize()`` on a GPU. Consecutive stamps bound one
  whole loop iteration (data, forward, reference, backward, clipping, update, logging).
- ``accelerate.Accelerator.backward``: the value of every loss handed to it.
- with ``--capture``: ``DDPMScheduler.add_noise`` and ``UNet2DConditionModel.forward`` for the first
  ``--capture-steps`` steps: latents, noise, timesteps, every UNet call's inputs and output (policy, then reference)
  and the trainable (LoRA) weights at the step's first UNet call; saved with ``torch.save`` after the last captured
  backward. The bench recomputes those steps with our code (see ``peer_loss_check.py``).

At exit ``R.json`` gets: ``step_end_unix_s`` (one per optimizer step), ``losses``, ``started_unix_s`` (this process
entering Python code), ``program_done_unix_s``, ``peak_rss_bytes`` (``ru_maxrss`` of this process) and
``cuda_peak_bytes`` (``torch.cuda.max_memory_allocated``; ``null`` without CUDA) and ``torch_threads``.

Where the program imports ``wandb`` and it is not installed (diffusers' DPO script imports it at the top and uses it
only with ``--report_to wandb``), ``--placeholder-wandb`` installs an empty module under that name; the record says so.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.machinery
import importlib.util
import json
import resource
import runpy
import sys
import time
import types

STARTED_UNIX_S = time.time()


class Recorder:
    """Step-end stamps and losses of the running program, plus the optional first-steps capture."""

    def __init__(self, capture_path: str | None, capture_steps: int) -> None:
        self.step_end_unix_s: list[float] = []
        self.losses: list[float] = []
        self.capture_path, self.capture_steps = capture_path, capture_steps
        self.captured: list[dict] = []

    @property
    def capturing(self) -> bool:
        return self.capture_path is not None and len(self.losses) < self.capture_steps

    def on_optimizer_step(self, optimizer, args, kwargs) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_end_unix_s.append(time.time())

    def on_backward(self, loss) -> None:
        self.losses.append(float(loss.detach().float()))
        if self.capture_path is not None and self.captured and len(self.losses) <= self.capture_steps:
            self.captured[-1]["loss"] = self.losses[-1]
            if len(self.losses) == self.capture_steps:
                import torch

                torch.save(self.captured, self.capture_path)

    def on_add_noise(self, latents, noise, timesteps) -> None:
        self.captured.append({"latents": _cpu(latents), "noise": _cpu(noise), "timesteps": _cpu(timesteps), "unet": []})

    def on_unet_call(self, unet, sample, timestep, encoder_hidden_states, output) -> None:
        import torch

        calls = self.captured[-1]["unet"]
        record = {
            "sample": _cpu(sample),
            "timestep": _cpu(timestep),
            "encoder_hidden_states": _cpu(encoder_hidden_states),
            "output": _cpu(output),
            "grad_enabled": torch.is_grad_enabled(),
        }
        if not calls:
            record["trainable"] = {n: _cpu(p) for n, p in unet.named_parameters() if p.requires_grad}
        calls.append(record)

    def write(self, path: str, notes: list[str]) -> None:
        import torch

        cuda = torch.cuda.is_available()
        record = {
            "started_unix_s": STARTED_UNIX_S,
            "program_done_unix_s": time.time(),
            "step_end_unix_s": self.step_end_unix_s,
            "losses": self.losses,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "torch_threads": torch.get_num_threads(),
            "notes": notes,
        }
        with open(path, "w") as handle:
            json.dump(record, handle)


def _cpu(value):
    return value.detach().to("cpu", copy=True)


def install(recorder: Recorder) -> None:
    """The class-level instruments described in the module docstring."""
    import accelerate
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(recorder.on_optimizer_step)
    backward = accelerate.Accelerator.backward

    def recorded_backward(self, loss, **kwargs):
        backward(self, loss, **kwargs)
        recorder.on_backward(loss)

    accelerate.Accelerator.backward = recorded_backward
    if recorder.capture_path is None:
        return
    add_noise, unet_forward = DDPMScheduler.add_noise, UNet2DConditionModel.forward

    def recorded_add_noise(self, original_samples, noise, timesteps):
        if recorder.capturing:
            recorder.on_add_noise(original_samples, noise, timesteps)
        return add_noise(self, original_samples, noise, timesteps)

    def recorded_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        output = unet_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)
        if recorder.capturing and recorder.captured:
            tensor = output.sample if kwargs.get("return_dict", True) else output[0]
            recorder.on_unet_call(self, sample, timestep, encoder_hidden_states, tensor)
        return output

    DDPMScheduler.add_noise = recorded_add_noise
    UNet2DConditionModel.forward = recorded_forward


def install_placeholder_wandb() -> str:
    """An empty ``wandb`` module (with a spec, so ``importlib.util.find_spec`` works); returns the note to record."""
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    sys.modules["wandb"] = module
    return "wandb is not installed: an empty placeholder module stood in for it (used only with --report_to wandb)"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("step_probe: expected '-- PROGRAM [ARGS ...]' after the probe's own options")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="step_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", required=True, help="JSON file written at exit")
    parser.add_argument("--capture", default=None, help="torch.save file of the first steps' tensors")
    parser.add_argument("--capture-steps", type=int, default=2)
    parser.add_argument("--placeholder-wandb", action="store_true")
    program = argv[split + 1 :]
    if not program or (program[0] == "-m" and len(program) < 2):
        raise SystemExit("step_probe: no program after '--' (a script path or '-m MODULE')")
    return parser.parse_args(argv[:split]), program


def main() -> None:
    args, program = parse_args(sys.argv[1:])
    notes = []
    if args.placeholder_wandb and importlib.util.find_spec("wandb") is None:
        notes.append(install_placeholder_wandb())
    recorder = Recorder(args.capture, args.capture_steps)
    install(recorder)
    atexit.register(recorder.write, args.record, notes)
    if program[0] == "-m":
        sys.argv = [program[1], *program[2:]]
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(program)
        runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    main()
