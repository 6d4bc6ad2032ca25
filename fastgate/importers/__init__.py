"""Importers: translate other frameworks' saved weights into fastgate's internal layout.

Importers only translate (gate order, transposes, bias layout, configuration); every
computation happens in the layers they build. The gate-order table lives in
:mod:`fastgate.layout`.
"""
