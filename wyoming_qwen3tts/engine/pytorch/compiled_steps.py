"""--compile: the talker's and code predictor's one-token steps through torch.compile with freezing.

Every frame is one talker step and 15 predictor steps of ~50 small ops per
layer; inductor fuses them, and freezing turns the weights into constants it
can prepack for its matrix kernels. Only the one-token step is compiled: a
prompt runs once per sentence, and its token count would cost a compile of its own.

It was measured a few per cent faster in float32, for minutes of compiling at every start (freezing
bakes the weights into the compiled graph, which inductor's cache does not keep) and more peak memory;
int8 weights gain nothing (FBGEMM's packed weights break the graph at every layer). So only float
weights are compiled, and only when asked: the figures are in docs/configuration.md, "Compiled steps".
"""

from __future__ import annotations

import logging
import time

import torch

from .steps import DecoderStack, TorchSteps

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
    hidden = stack.layers[0].input_norm.width
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


def compile_if_useful(steps: TorchSteps, int8_kernel: str | None) -> str:
    """Apply --compile where it was measured to help; return what happened, for the load log line."""
    if int8_kernel:
        _LOGGER.warning(
            "--compile skipped: the talker and code predictor have int8 weights (%s), which torch.compile "
            "makes no faster; it applies to --quantize none",
            int8_kernel,
        )
        return "not compiled (int8 weights)"
    _LOGGER.info("Compiling the talker and code predictor steps (--compile: minutes on a few cores)")
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
