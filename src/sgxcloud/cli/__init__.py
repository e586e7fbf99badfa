"""Command-line front ends.  Thin: parse, call the library, render.

The library (``sgxcloud.nova``, ``sgxcloud.cas``, ``sgxcloud.cleanroom``)
never imports from here.
"""
