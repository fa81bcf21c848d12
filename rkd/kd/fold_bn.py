"""Fold eval-mode BatchNorm into the convolution before it: a copy of the model that computes the same, with fewer ops.

torch.fx finds the pairs (a Conv2d whose output goes only to a BatchNorm2d); torch's own `fuse_conv_bn_eval` does
the maths; the copy keeps its class and methods (`forward_features`, `forward_head`, ...), the BatchNorm becomes an
Identity.
"""
from __future__ import annotations

import copy
from collections import Counter

import torch.fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_bn_pairs(model: nn.Module) -> list:
    """(conv name, BatchNorm name) for each plain BatchNorm2d fed only by a Conv2d, each module called once.

    Raises ValueError when torch.fx cannot trace `model.forward`.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # fx raises several types for data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx to find conv→BatchNorm pairs: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1
                and modules[node.target].track_running_stats
                and calls[source.target] == 1 and calls[node.target] == 1):
            pairs.append((source.target, node.target))
    return pairs


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every conv→BatchNorm2d pair folded into one conv (with bias)."""
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in conv_bn_pairs(folded):
        _replace(folded, conv_name, fuse_conv_bn_eval(folded.get_submodule(conv_name), folded.get_submodule(bn_name)))
        _replace(folded, bn_name, nn.Identity())
    return folded
