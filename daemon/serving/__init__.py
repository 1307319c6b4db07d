"""The server side: the I/O loop, the fair job queue, the device worker and the warm model cache."""
