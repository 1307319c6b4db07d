#!/usr/bin/env python3
"""Underpaint for GIMP 3: Filters > Underpaint > Inpaint Selection, Refine, ControlNet, Instruct,
Generate, Variation, Depth to Image, Mix Layers, Compare Models, Upscale, each also callable from Python
or Script-Fu (plug-in-underpaint-*).

GIMP runs this file; the code lives in the `underpaint_gimp` package beside it and the daemon protocol
in the vendored `underpaint_protocol` folder, so this folder goes first on sys.path.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from underpaint_gimp.procedures import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv)
