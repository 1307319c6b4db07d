"""Runs inside the chroot: a command (gimp-console) on a virtual X display while a "user" answers every
Underpaint dialog with the key given for its title (Return = OK, Escape = Cancel).

    python3 interactive.py OUT_DIR 'Underpaint Inpaint=Return' ... -- gimp-console-3.0 ...

Writes OUT_DIR/dialogs.txt (one "title<TAB>key" line per dialog answered) and exits with the
command's exit status. Xvfb gets a display number no other X server (host or chroot) uses.
"""

import os
import subprocess
import sys
import threading
import time


def _display_taken(number):
    """X displays are also abstract unix sockets, shared with the host and other chroots."""
    if os.path.exists(f"/tmp/.X{number}-lock"):
        return True
    with open("/proc/net/unix") as f:
        return f"/tmp/.X11-unix/X{number}\n" in f.read().replace(" ", "\n")


def start_xvfb(log):
    """Start Xvfb on a free display number (tries a few: another test may take one meanwhile)."""
    first = 200 + os.getpid() % 600
    for number in range(first, first + 40):
        if _display_taken(number):
            continue
        xvfb = subprocess.Popen(
            ["Xvfb", f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and xvfb.poll() is None:
            if os.path.exists(f"/tmp/.X11-unix/X{number}"):
                return xvfb, f":{number}"
            time.sleep(0.1)
        xvfb.kill()
        xvfb.wait()
    raise RuntimeError("could not start Xvfb on any display")


def xdotool(env, *args):
    try:
        proc = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return []
    return [line for line in proc.stdout.split("\n") if line] if proc.returncode == 0 else []


def answer_dialogs(env, keys, stop, answered, log_path):
    """Press the key for each dialog window titled 'Underpaint ...' until it closes.

    A new plug-in process may get the window id of the previous dialog: a window is known by its id,
    process and title.
    """

    def identity(wid):  # the next dialog may reuse the window id: tell them apart by process and title
        return xdotool(env, "getwindowpid", wid), xdotool(env, "getwindowname", wid)

    while not stop.is_set():
        for wid in xdotool(env, "search", "--name", "^Underpaint "):
            pid, name = identity(wid)
            title = (name or [""])[0]
            key = keys.get(title, "Escape")
            time.sleep(1.0)  # let the dialog finish mapping before it gets a key
            presses = 0
            while not stop.is_set() and identity(wid) == (pid, name):
                xdotool(env, "windowfocus", "--sync", wid)
                xdotool(env, "key", key)  # XTEST, like a keyboard: no window manager needed
                presses += 1
                time.sleep(1.0)
            answered.append(f"{title}\t{key}")
            with open(log_path, "a") as log:
                log.write(f"{title}\t{key}\t{presses} press(es)\n")
            break
        time.sleep(0.2)


def main(argv):
    out = argv[0]
    split = argv.index("--")
    keys = dict(item.split("=", 1) for item in argv[1:split])
    command = argv[split + 1 :]
    with open(os.path.join(out, "xvfb.log"), "wb") as log:
        xvfb, display = start_xvfb(log)
        env = dict(os.environ, DISPLAY=display)
        stop = threading.Event()
        answered = []
        thread = threading.Thread(
            target=answer_dialogs,
            args=(env, keys, stop, answered, os.path.join(out, "dialogs.log")),
            daemon=True,
        )
        thread.start()
        try:
            status = subprocess.run(command, env=env).returncode
        finally:
            stop.set()
            thread.join(20)
            xvfb.terminate()
            xvfb.wait(10)
    with open(os.path.join(out, "dialogs.txt"), "w") as f:
        f.write("".join(line + "\n" for line in answered))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
