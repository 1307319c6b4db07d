"""Workers behind one endpoint: the pool interface (base.py), the front end's scheduler (dispatch.py),
the local backend (local.py: a worker thread, or one child process per device, with runtime.py on the
worker's side) and the Ray backend (raypool.py: one actor per GPU; imported only with `serve --ray`,
so the daemon needs no Ray unless it uses it). docs/STUDIO.md says how to run them.
"""
