"""Client-side commands: edit, demo, compare, install-plugin, and starting a daemon for them."""
