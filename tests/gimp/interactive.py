"""Runs inside the chroot: a command (gimp-console) on a virtual X display while a "user" answers every
Underpaint dialog with the keys given for its title (Return = OK, Escape = Cancel; several keys are
pressed in turn, e.g. 'alt+m Down Return'; the word 'shot' photographs the whole screen there,
'wait:SECONDS' pauses, 'type:WORD' types a word, 'snap:NAME.png' photographs the dialog as it is now,
'paint:X1,Y1,X2,Y2' drags the brush across the picture in GIMP's image window, when GIMP runs with its UI).

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


def canvas_origin(env, picture):
    """Where pixel (0, 0) of the picture is on the screen (its image window at 100 %): a run of its
    pixels is looked for in a screenshot, row by row."""
    code = (
        "import sys, gi\n"
        "gi.require_version('Gdk', '3.0')\n"
        "from gi.repository import Gdk, GdkPixbuf\n"
        "shot = Gdk.pixbuf_get_from_window(Gdk.get_default_root_window(), 0, 0, *map(int, sys.argv[2:4]))\n"
        "image = GdkPixbuf.Pixbuf.new_from_file(sys.argv[1])\n"
        "def row(pixbuf, y, x, n):\n"
        "    data, step, ch = pixbuf.get_pixels(), pixbuf.get_rowstride(), pixbuf.get_n_channels()\n"
        "    line = data[y * step + x * ch : y * step + (x + n) * ch]\n"
        "    return b''.join(line[i : i + 3] for i in range(0, len(line), ch))\n"
        "x0, y0, n = 10, image.get_height() - 30, 24\n"
        "wanted = row(image, y0, x0, n)\n"
        "for y in range(shot.get_height()):\n"
        "    line = row(shot, y, 0, shot.get_width())\n"
        "    at = line.find(wanted)\n"
        "    while at >= 0 and at % 3:\n"
        "        at = line.find(wanted, at + 1)\n"
        "    if at >= 0:\n"
        "        print(at // 3 - x0, y - y0)\n"
        "        break\n"
    )
    done = subprocess.run(["python3", "-c", code, picture, *map(str, SCREEN)], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    words = done.stdout.split()
    if len(words) != 2:
        raise RuntimeError(f"the picture is not on the screen: {done.stdout} {done.stderr}")
    return int(words[0]), int(words[1])


def paint(env, dialog, line):
    """Move the dialog off the canvas, then drag the active brush from (x1, y1) to (x2, y2) of the
    picture (image coordinates) in GIMP's image window, as a painter does; focus the dialog again."""
    xdotool(env, "windowmove", dialog, str(SCREEN[0] // 2), str(SCREEN[1] // 3))
    time.sleep(0.5)
    picture = json.load(open(os.environ["UNDERPAINT_BATCH_SPEC"]))["picture"]
    ox, oy = canvas_origin(env, picture)
    (window, *_) = xdotool(env, "search", "--name", "GIMP$") or [""]
    xdotool(env, "windowfocus", "--sync", window)
    x1, y1, x2, y2 = line
    xdotool(env, "mousemove", str(ox + x1), str(oy + y1))
    xdotool(env, "mousedown", "1")
    for i in range(1, 21):
        xdotool(env, "mousemove", str(ox + x1 + (x2 - x1) * i // 20), str(oy + y1 + (y2 - y1) * i // 20))
        time.sleep(0.03)
    xdotool(env, "mouseup", "1")
    time.sleep(0.3)
    xdotool(env, "windowfocus", "--sync", dialog)


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
                    elif one.startswith("wait:"):  # let the dialog work (Live paints meanwhile)
                        time.sleep(float(one.removeprefix("wait:")))
                    elif one.startswith("type:"):  # type a word into the focused field
                        xdotool(env, "type", "--delay", "50", one.removeprefix("type:"))
                    elif one.startswith("paint:"):  # drag the brush over the canvas (GIMP with its UI)
                        paint(env, wid, [int(v) for v in one.removeprefix("paint:").split(",")])
                    elif one.startswith("snap:"):  # photograph the dialog as it is now
                        photograph(
                            env, wid, os.path.join(os.path.dirname(log_path), one.removeprefix("snap:"))
                        )
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
