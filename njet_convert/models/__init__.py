"""The paper's architectures, registered in timm's registry on import (filled in by the model-zoo work)."""

__all__: list[str] = []
