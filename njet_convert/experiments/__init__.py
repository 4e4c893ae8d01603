"""Small-scale reproductions of the paper's central experiments (σ follows input scale, scale robustness,
multi-scale segmentation, ASPP weight sharing). Each module has a ``run(config)`` that returns result rows and
``benchmarks/science.py`` prints them as tables next to the paper's numbers."""

__all__: list[str] = []
