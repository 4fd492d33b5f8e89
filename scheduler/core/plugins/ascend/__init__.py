"""Huawei Ascend (MindCluster) placement rules as a scheduler plugin."""

from . import rules
from .plugin import AscendPlugin

__all__ = ["AscendPlugin", "rules"]
