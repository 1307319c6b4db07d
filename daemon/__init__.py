"""The Underpaint daemon: warm diffusers pipelines behind the ZeroMQ protocol."""

__version__ = "0.1.0"
