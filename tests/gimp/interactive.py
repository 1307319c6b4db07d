"""Runs inside the chroot: a command (gimp-console) on a virtual X display while a "user" answers every
Underpaint dialog with the keys given for its title (Return = OK, Escape = Cancel; several keys are
pressed in turn, e.g. 'alt+m Down Return'; the word 'shot' photographs the whole screen there).

    python3 interactive.py OUT_DIR 'Underpaint Inpaint=Return' ... -- gimp-console-3.0 ...

Before answering, each dialog is photographed into OUT_DIR/dialog-<n>.png with its size in
OUT_DIR/dialogs.json. Writes OUT_DIR/dialogs.txt (one "title<TAB>keys" line per dialog answered) and
exits with the command's exit status. Xvfb gets a display number no other X server (host or chroot)
uses.
"""

import json
import os
import subprocess
import sys
import threading
import time

SCREEN = (1280, 1024)  # the virtual display's size


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
            ["Xvfb", f":{number}", "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
            stdout=log,
            stderr=log,
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


def photograph(env, wid, path):
    """Save the dialog window (or with wid 'screen', the whole screen) as a PNG; return its geometry."""
    code = (
        "import sys, gi\n"
        "gi.require_version('Gdk', '3.0')\n"
        "from gi.repository import Gdk, GdkX11\n"
        "display = GdkX11.X11Display.get_default()\n"
        "window = Gdk.get_default_root_window()\n"
        "if sys.argv[1] != 'screen':\n"
        "    window = GdkX11.X11Window.foreign_new_for_display(display, int(sys.argv[1]))\n"
        "x, y = window.get_origin()[1:]\n"
        "w, h = window.get_width(), window.get_height()\n"
        "shot = Gdk.pixbuf_get_from_window(Gdk.get_default_root_window(), x, y, w, h)\n"
        "shot.savev(sys.argv[2], 'png', [], [])\n"
        "print(x, y, w, h)\n"
    )
    try:
        done = subprocess.run(
            ["python3", "-c", code, wid, path], env=env, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return None
    words = done.stdout.split()
    return [int(v) for v in words] if done.returncode == 0 and len(words) == 4 else None


def answer_dialogs(env, keys, stop, answered, log_path, shots):
    """Photograph each dialog window titled 'Underpaint ...', then press its keys until it closes.

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
            time.sleep(1.5)  # let the dialog finish mapping (and ask the daemon) before it gets a key
            shot = os.path.join(os.path.dirname(log_path), f"dialog-{len(answered) + 1}.png")
            geometry = photograph(env, wid, shot)
            shots.append({"title": title, "png": os.path.basename(shot), "geometry": geometry})
            presses = 0
            while not stop.is_set() and identity(wid) == (pid, name):
                xdotool(env, "windowfocus", "--sync", wid)
                for one in key.split():  # XTEST, like a keyboard: no window manager needed
                    if one == "shot":  # the screen as it is now (an open drop-down list...)
                        photograph(env, "screen", f"{shot[:-4]}-{presses}.png")
                    else:
                        xdotool(env, "key", one)
                    time.sleep(0.3)
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
        answered, shots = [], []
        thread = threading.Thread(
            target=answer_dialogs,
            args=(env, keys, stop, answered, os.path.join(out, "dialogs.log"), shots),
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
    with open(os.path.join(out, "dialogs.json"), "w") as f:
        json.dump({"screen": SCREEN, "dialogs": shots}, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
