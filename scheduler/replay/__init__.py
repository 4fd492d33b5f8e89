"""Trace replay: the FGD paper's openb packing experiment (``xpod replay openb``)."""
