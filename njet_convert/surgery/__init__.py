"""Model surgery for :func:`njet_convert.convert`: fx tracing, conv/pool swapping, safe-subsampling placement."""

from .convs import ConvPlan, plan_conv
from .heads import flatten_sites, pin_flattened_maps
from .joins import analyse_joins, fixed_tokens
from .modules import PadSame
from .selection import Selector
from .state import Point, SurgeryState
from .tracing import ConvertTracer, in_graph_modules, restore_unused, trace
from .transforms import FunctionalPools, PlaceSubsampling, SwapConvs, SwapPools, Transform, finalize_subsampling

__all__ = [
    "ConvPlan", "ConvertTracer", "FunctionalPools", "PadSame", "PlaceSubsampling", "Point", "Selector",
    "SurgeryState", "SwapConvs", "SwapPools", "Transform", "analyse_joins", "finalize_subsampling", "fixed_tokens",
    "flatten_sites", "in_graph_modules", "pin_flattened_maps", "plan_conv", "restore_unused", "trace",
]
