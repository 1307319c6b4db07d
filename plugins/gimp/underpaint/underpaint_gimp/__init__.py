"""Underpaint's GIMP 3 plug-in, as a package beside the `underpaint.py` entry script.

The modules split along what needs GIMP: `modes`, `presets`, `region`, `request`, `placement` and `job`
are plain Python (unit-tested outside GIMP); `gimp_io`, `procedures` and `dialog` use GIMP's GObject
introspection API.
The daemon protocol comes from the vendored `underpaint_protocol` folder beside this package.
"""

__version__ = "0.1.0"
CLIENT_NAME = f"underpaint-gimp/{__version__}"
