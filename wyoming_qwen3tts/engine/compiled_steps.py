"""--compile: the talker's and code predictor's one-token steps through torch.compile with freezing.

Every frame is one talker step and 15 predictor steps of ~50 small ops per
layer; inductor fuses them, and freezing turns the weights into constants it
can prepack for its matrix kernels. Only the one-token step is compiled: a
prompt runs once per sentence, and its token count would cost a compile of its own.

Measured on 2 threads, real 0.6B dimensions, on AVX2 without VNNI or bf16 (per step, eager ->
compiled): float32 talker 167 -> 114 ms, predictor frame 440 -> 342 ms; bfloat16 (emulated there)
89 -> 88 ms. On AVX-512 with native bf16 the bfloat16 talker went 70 -> 53 ms (issue 11). The
int8 kernels gain nothing: FBGEMM's packed weights break the graph at every layer (52 -> 38 ms
eager) and weight-only int8 compiled no faster. So only float weights are compiled. The price is
start-up: some 3 to 4 minutes of compiling on 2 cores, and a C++ compiler on the machine.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from .torch_steps import DecoderStack, TorchSteps

_LOGGER = logging.getLogger(__name__)

# Above 0 and 1, which torch.compile would specialise on; the real steps start at 2 or later.
_WARM_POSITION = 2


class CompileFailed(RuntimeError):
    """torch.compile could not build the steps (most often: no C++ compiler); the message says why."""


def _compile_stack(stack: DecoderStack) -> None:
    """Replace stack's one-token step with a compiled one and compile it now, on a scratch cache.

    dynamic=True from the first call: positions and cache lengths vary with every
    sentence, and each new value must not cost a recompile.
    """
    import torch._inductor.config as inductor_config  # only with --compile

    stack.one_token = torch.compile(stack.eager_one_token, dynamic=True)
    hidden = stack.layers[0].input_norm.shape[0]
    try:
        # Inputs made as the real steps make theirs (inference tensors), or the first real step recompiles.
        # Freezing is read while this first call compiles (torch.compile's options= did not reach it).
        with torch.inference_mode(), inductor_config.patch(freezing=True):
            cache = stack.new_cache(_WARM_POSITION + 2)
            for cached in (*cache.keys, *cache.values):
                cached.zero_()
            x = torch.zeros(1, 1, hidden, dtype=stack.dtype)
            stack.one_token(x, _WARM_POSITION, cache.keys, cache.values)
    except Exception as err:
        stack.one_token = stack.eager_one_token
        raise CompileFailed(f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}") from err


def compile_steps(steps: TorchSteps) -> float:
    """Compile both stacks' one-token steps; return the seconds it took.

    Raises CompileFailed with the steps left as they were.
    """
    started = time.monotonic()
    _compile_stack(steps.talker_stack)
    try:
        _compile_stack(steps.predictor_stack)
    except CompileFailed:
        steps.talker_stack.one_token = steps.talker_stack.eager_one_token
        raise
    return time.monotonic() - started


def compile_if_useful(steps: TorchSteps, int8_kernel: str | None, cache_dir: Path) -> str:
    """Apply --compile where it was measured to help; return what happened, for the load log line.

    What inductor compiles is kept in cache_dir (under --data-dir, unless TORCHINDUCTOR_CACHE_DIR
    names another place): later starts reuse it instead of the temporary directory a reboot
    or a new container empties.
    """
    if int8_kernel:
        _LOGGER.warning(
            "--compile skipped: the talker and code predictor have int8 weights (%s), which torch.compile "
            "makes no faster; it applies to --quantize none",
            int8_kernel,
        )
        return "not compiled (int8 weights)"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir.resolve()))
    _LOGGER.info(
        "Compiling the talker and code predictor steps (--compile; minutes on a few cores the first time, "
        "cached in %s)",
        os.environ["TORCHINDUCTOR_CACHE_DIR"],
    )
    try:
        seconds = compile_steps(steps)
    except CompileFailed as err:
        _LOGGER.error(
            "--compile failed, running uncompiled: %s. torch.compile needs a C++ compiler (g++); "
            "install one or drop --compile",
            err,
        )
        return "not compiled (compile failed)"
    _LOGGER.info("Compiled the steps in %.0f s", seconds)
    return f"steps compiled in {seconds:.0f} s"
