"""Editor plugins (Krita, GIMP 3) shipped as data; `underpaint install-plugin` copies them."""
