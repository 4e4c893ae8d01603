"""Run many calibration batches through a network side by side, pausing all of them at each converted layer.

One forward pass per batch runs in its own thread; a hook on each converted layer hands the layer's input to the
caller and waits until the caller has refitted that layer, then the pass goes on with the refitted layer. So the
whole network is run once over the calibration data (not once per layer), every layer sees inputs produced by the
already-refitted layers before it, and only the inputs of the current layer (plus what each pass keeps alive, such
as residual branches) are held at a time. Only one thread computes at a time (no oversubscription of cores).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["LayerPipeline"]


class _Abort(Exception):
    """Unwinds a paused forward pass when the pipeline is closed early."""


class LayerPipeline:
    """Iterate ``(layer_name, [input of that layer for every batch])`` in the order ``names``; see module doc.

    Use as a context manager; after each item the caller refits the layer, then asks for the next item.
    ``capture="output"`` hands over each layer's output instead of its input; ``transform(name, batch_index,
    tensor)`` is applied to the captured tensor inside the paused pass (e.g. to keep only sampled positions).
    ``keep_outputs``: after the context exits, ``outputs()`` gives the model's outputs on the first ``keep_outputs``
    batches when their passes ran to their end (the outputs of the fully refitted network: the calibration compares
    them without another forward pass); the other outputs are not kept.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], batches: Sequence[Tensor], *,
                 capture: str = "input", transform: Callable[[str, int, Tensor], Tensor] | None = None,
                 keep_outputs: int = 0) -> None:
        self.model, self.names, self.batches = model, list(names), list(batches)
        modules = dict(model.named_modules())
        self.layers = {id(modules[n]): n for n in self.names}
        self.turn = threading.Lock()  # held by the one thread that computes
        self.cond = threading.Condition()
        self.inputs: dict[str, dict[int, Tensor]] = {n: {} for n in self.names}
        self.released: set[str] = set()
        self.done: set[int] = set()
        self.results: dict[int, object] = {}
        self.keep_outputs = keep_outputs
        self.errors: list[BaseException] = []
        self.aborted = False
        self.local = threading.local()
        self.transform = transform
        if capture == "input":
            self.hooks = [modules[n].register_forward_pre_hook(self._hook) for n in self.names]
        else:
            self.hooks = [modules[n].register_forward_hook(self._post_hook) for n in self.names]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(self.batches))]

    def __enter__(self) -> LayerPipeline:
        self.turn.acquire()  # the caller holds the turn while it is not waiting
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.cond:
            if len(self.released) < len(self.names):
                self.aborted = True
            self.released.update(self.names)
            self.cond.notify_all()
        self.turn.release()
        for t in self.threads:
            t.join()
        for h in self.hooks:
            h.remove()

    def __iter__(self) -> Iterator[tuple[str, list[Tensor]]]:
        for name in self.names:
            got = self._wait_inputs(name)
            yield name, got
            with self.cond:
                self.inputs[name].clear()
                self.released.add(name)
                self.cond.notify_all()

    def outputs(self) -> list | None:
        """The model's outputs on the first ``keep_outputs`` batches; ``None`` if a pass did not finish (closed early,
        error)."""
        kept = min(self.keep_outputs, len(self.batches))
        if self.aborted or self.errors or any(i not in self.results for i in range(kept)):
            return None
        return [self.results[i] for i in range(kept)]

    def _wait_inputs(self, name: str) -> list[Tensor]:
        self.turn.release()
        with self.cond:
            self.cond.wait_for(lambda: self.errors or all(i in self.inputs[name] or i in self.done
                                                          for i in range(len(self.batches))))
        self.turn.acquire()
        if self.errors:
            raise self.errors[0]
        return [self.inputs[name][i] for i in sorted(self.inputs[name])]

    def _post_hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self._pause(module, output)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self._pause(module, args[0])

    def _pause(self, module: nn.Module, tensor: Tensor) -> None:
        index = getattr(self.local, "index", None)
        name = self.layers.get(id(module))
        if index is None or name is None or name in self.local.seen:
            return
        self.local.seen.add(name)
        if self.transform is not None:
            tensor = self.transform(name, index, tensor)
        with self.cond:
            self.inputs[name][index] = tensor
            self.cond.notify_all()
        self.turn.release()
        with self.cond:
            self.cond.wait_for(lambda: name in self.released)
        self.turn.acquire()
        if self.aborted:
            raise _Abort

    def _run(self, index: int) -> None:
        self.local.index, self.local.seen = index, set()
        self.turn.acquire()
        try:
            with torch.no_grad():
                out = self.model(self.batches[index])
            if index < self.keep_outputs:
                self.results[index] = out
        except _Abort:
            pass
        except BaseException as error:  # handed to the caller
            with self.cond:
                self.errors.append(error)
        finally:
            with self.cond:
                self.done.add(index)
                self.cond.notify_all()
            self.turn.release()
