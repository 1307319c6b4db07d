"""Underpaint for Krita: a docker that sends the selection to a local Underpaint daemon and brings the
results back as new layers. Krita imports this package at start when the plugin is enabled.

Outside Krita (unit tests) the `krita` module is missing and nothing is registered.
"""

try:
    from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita
except ImportError:  # imported by tests outside Krita
    Krita = None

DOCKER_ID = "underpaint_docker"

if Krita is not None:
    import atexit

    from .docker import UnderpaintDocker, close_all_connections

    Krita.instance().addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, UnderpaintDocker)
    )
    # Quitting Krita cancels running jobs on the daemon (a plain function: it outlives the dockers).
    Krita.instance().notifier().applicationClosing.connect(close_all_connections)
    atexit.register(close_all_connections)
