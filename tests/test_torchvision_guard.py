"""The torchvision import guard (docs/design.md, "Import cost"): active only when torchvision's compiled extension
fails to load."""

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_guard_makes_torchvision_and_timm_importable_and_is_active_only_when_needed() -> None:
    plain = _run("import torchvision")
    extension_broken = plain.returncode != 0
    if extension_broken:
        assert "torchvision::" in plain.stderr  # the failure the guard exists for
    guarded = _run(
        """
        from njet_convert._torchvision_guard import ensure_torchvision, guard_was_needed
        ensure_torchvision()
        import timm, torch, torchvision
        out = torchvision.models.resnet18().eval()(torch.randn(1, 3, 32, 32))
        assert out.shape == (1, 1000)
        assert timm.create_model("resnet18").eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
        print(guard_was_needed())
        """
    )
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.strip() == str(extension_broken)


def test_guard_reraises_unrelated_errors() -> None:
    result = _run(
        """
        import builtins
        from njet_convert import _torchvision_guard as guard
        real_import = builtins.__import__
        def broken(name, *args, **kwargs):
            if name == "torchvision":
                raise RuntimeError("something else entirely")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = broken
        try:
            guard.ensure_torchvision()
        except RuntimeError as err:
            print("reraised:", err)
        """
    )
    assert "reraised: something else entirely" in result.stdout, result.stderr
