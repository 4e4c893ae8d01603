"""Reading weights into a model: ``.pth``/``.pt`` state dicts (``torch.load(weights_only=True)``), checkpoint dicts
holding ``state_dict``/``model``, and ``.safetensors``; hub weights for ``--pretrained`` with a clear offline error.

Every problem a user can cause (missing or corrupt file, a checkpoint for another network, a shape mismatch, no
network for a download) raises :class:`~njet_convert.errors.UserError` with one line naming the file or key.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import UserError, first_line

__all__ = ["LoadResult", "is_offline_error", "load_checkpoint", "network_available", "pretrained_or_exit",
           "read_state_dict"]

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "net", "params")
PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "backbone.")


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did: keys loaded, missing from the file, unexpected in it, prefix stripped."""

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was loaded and what did not match."""
        text = f"loaded {self.loaded} tensors from {self.path}"
        if self.stripped:
            text += f" (stripped prefix {', '.join(repr(p) for p in self.stripped)})"
        if self.missing:
            text += f"; {len(self.missing)} missing (kept their initial values, first {self.missing[0]!r})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected (ignored, first {self.unexpected[0]!r})"
        return text


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a checkpoint file, unwrapped from ``{'state_dict': ...}``/``{'model': ...}`` containers."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {str(path)!r}")
    if path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is a directory; pass the weights file inside it")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    state = _unwrap(raw, path)
    if not state:
        raise UserError(f"checkpoint {str(path)!r} holds no tensors")
    return state


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {str(path)!r}: not a valid safetensors file "
                        f"({first_line(err, limit=160)})") from None


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise UserError(f"checkpoint {str(path)!r} holds Python objects that weights_only=True refuses to load; "
                            "save its state_dict() (or convert it to .safetensors)") from None
        raise UserError(f"cannot read checkpoint {str(path)!r}: corrupt or not a PyTorch file") from None
    except Exception as err:  # the unpickler fails in many ways on damaged files (IndexError, KeyError, ...)
        raise UserError(f"cannot read {str(path)!r}: corrupt or not a PyTorch checkpoint "
                        f"({first_line(err, limit=160)})") from None


def _unwrap(raw: object, path: Path) -> dict[str, Tensor]:
    if isinstance(raw, nn.Module):  # only possible through a custom loader; accept it
        raw = raw.state_dict()
    if not isinstance(raw, Mapping):
        raise UserError(f"checkpoint {str(path)!r} holds a {type(raw).__name__}, not a state dict")
    for key in NESTED_KEYS:
        inner = raw.get(key)
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            return {str(k): v for k, v in inner.items() if torch.is_tensor(v)}
    return {str(k): v for k, v in raw.items() if torch.is_tensor(v)}


def _strip_prefixes(state: dict[str, Tensor], wanted: set[str]) -> tuple[dict[str, Tensor], list[str]]:
    """Remove wrapper prefixes ('module.' of DataParallel, '_orig_mod.' of torch.compile, ...) that every key has."""
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        if set(state) & wanted:
            break
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
                break
    return state, stripped


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> LoadResult:
    """Load a checkpoint file into ``model`` (in place); UserError on a shape mismatch or when nothing matches."""
    state = read_state_dict(path)
    own = model.state_dict()
    state, stripped = _strip_prefixes(state, set(own))
    common = [k for k in own if k in state]
    if not common:
        raise UserError(f"checkpoint {str(path)!r} matches none of the model's {len(own)} tensors (first checkpoint "
                        f"key {next(iter(state))!r}, first model key {next(iter(own), None)!r}): wrong model?")
    for key in common:
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise UserError(f"checkpoint {str(path)!r}: shape mismatch at {key!r}: file {tuple(state[key].shape)} vs "
                            f"model {tuple(own[key].shape)} (another variant or --num-classes?)")
    bad = next((k for k in common if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())), None)
    if bad is not None:
        raise UserError(f"checkpoint {str(path)!r} holds NaN/Inf values (first in {bad!r}): a diverged or damaged "
                        "training run; use an earlier checkpoint")
    model.load_state_dict({k: state[k] for k in common}, strict=False)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    return LoadResult(str(path), len(common), missing, unexpected, stripped)


def network_available(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` resolves and accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_OFFLINE_NAMES = ("connect", "offline", "localentrynotfound", "timeout", "urlerror", "httperror", "gaierror",
                  "resolve", "network", "proxy", "ssl")


def is_offline_error(err: BaseException) -> bool:
    """Whether ``err`` (or its cause chain) looks like a failed download: URLError, a hub connection error, ..."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        name = type(err).__name__.lower()
        if isinstance(err, ConnectionError | TimeoutError | socket.gaierror) or any(s in name for s in _OFFLINE_NAMES):
            return True
        if "name or service not known" in str(err).lower() or "internet connection" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def pretrained_or_exit(build: Callable[[], nn.Module], name: str, host: str = "huggingface.co") -> nn.Module:
    """Run ``build()`` (a hub download of ``name``'s weights); UserError pointing to --checkpoint when offline.

    When ``host`` is unreachable the Hugging Face hub is switched to offline mode first, so cached weights still
    load and a missing file fails at once instead of after a minute of retries.
    """
    if not network_available(host):
        try:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            pass
    try:
        return build()
    except Exception as err:
        if is_offline_error(err) or isinstance(err, FileNotFoundError):
            raise UserError(f"cannot download the pretrained weights of {name!r} (no network?): download them where "
                            "there is network and pass the file with --checkpoint PATH") from None
        raise
