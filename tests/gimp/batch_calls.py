"""Runs inside gimp-console (python-fu-eval): call Underpaint procedures through the PDB, as a batch
user would, then save, reload and describe the results for pytest to check.

Driven by the JSON file named in the UNDERPAINT_BATCH_SPEC environment variable:
  {"picture": path, "out": dir, "procedures": [names to describe],
   "calls": [{"name", "procedure", "args": {...}, "selection": ..., "layers": [{"picture", "name", "hidden"}],
              "picture": path (instead of the spec's), "grayscale": bool, "indexed": bool,
              "hide_picture": bool (hide the picture's own layer),
              "drawables": "all" or "reversed" (every top-level layer, top to bottom or bottom to top),
                           "top" (the topmost layer), "channel" (a new channel), "selection" (the
                           selection mask), "mask" (a new white layer mask of the picture's layer);
                           default: the picture's layer,
              "then": [{"args": {...}, "drawables": "picture", "selected" (what GIMP has selected
                        after the previous run) or "named:<layer name>", "procedure": another
                        procedure, run with only these args}]: more runs on the same image, each
                        in entry["then"],
              "interactive": bool, "returns_image": bool,
              "display": bool (open an image window: GIMP runs with its UI)}]}
An argument given as {"layer": name} is the layer of that name (one of `layers`).
Writes `<out>/result.json` (always, even on errors: gimp-console exits 0 on caught exceptions) with,
per call: the PDB status, the error message, the duration and wall-clock start and end, the int and
string return values, and the reloaded .xcf's parasites and layer tree with every layer's pixels
dumped as raw RGBA files beside it. A call's "picture" may be an .xcf saved by an earlier run.
"""

import json
import os
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

BASE_TYPES = {
    Gimp.ImageBaseType.RGB: "rgb",
    Gimp.ImageBaseType.GRAY: "gray",
    Gimp.ImageBaseType.INDEXED: "indexed",
}

SPEC = json.load(open(os.environ["UNDERPAINT_BATCH_SPEC"]))
OUT = SPEC["out"]
PDB = Gimp.get_pdb()
NONINTERACTIVE = Gimp.RunMode.NONINTERACTIVE


def dump(drawable, path, fmt="R'G'B'A u8"):
    w, h = drawable.get_width(), drawable.get_height()
    data = drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return os.path.basename(path)


def parasites(item):
    out = {}
    for name in item.get_parasite_list() or []:
        data = item.get_parasite(name).get_data()  # signed chars for some binary parasites
        out[name] = bytes(value & 0xFF for value in data).decode("utf-8", "replace")
    return out


def describe(items, prefix, parent=None):
    """The layer tree, top to bottom, with each layer's pixels dumped."""
    rows = []
    for index, item in enumerate(items):
        _, x, y = item.get_offsets()
        row = {
            "name": item.get_name(),
            "parent": parent,
            "group": bool(item.is_group_layer()),
            "x": x,
            "y": y,
            "width": item.get_width(),
            "height": item.get_height(),
            "visible": bool(item.get_visible()),
            "parasites": parasites(item),
            "mask": item.get_mask() is not None,
        }
        if row["group"]:
            rows.append(row)
            rows.extend(describe(item.get_children(), f"{prefix}-{index}", item.get_name()))
            continue
        row["pixels"] = dump(item, os.path.join(OUT, f"{prefix}-{index}.rgba"))
        if row["mask"]:
            row["mask_pixels"] = dump(item.get_mask(), os.path.join(OUT, f"{prefix}-{index}-mask.y"), "Y u8")
        rows.append(row)
    return rows


def tree_names(items, parent=""):
    """Every layer's path, top to bottom ('Underpaint/Inpaint seed 7 (tiny)')."""
    names = []
    for item in items:
        names.append(parent + item.get_name())
        if item.is_group_layer():
            names.extend(tree_names(item.get_children(), parent + item.get_name() + "/"))
    return names


def save_and_describe(image, name):
    """Save as .xcf, load it back (what a user would reopen) and describe that."""
    xcf = os.path.join(OUT, f"{name}.xcf")
    Gimp.file_save(NONINTERACTIVE, image, Gio.File.new_for_path(xcf), None)
    again = Gimp.file_load(NONINTERACTIVE, Gio.File.new_for_path(xcf))
    composite = Gimp.Layer.new_from_visible(again, again, "composite")
    info = {
        "xcf": os.path.basename(xcf),
        "base_type": BASE_TYPES[again.get_base_type()],
        "width": again.get_width(),
        "height": again.get_height(),
        "layers": describe(again.get_layers(), name),
        "parasites": parasites(again),
        "composite": dump(composite, os.path.join(OUT, f"{name}-composite.rgba")),
    }
    composite.delete()
    again.delete()
    return info


def make_selection(image, how):
    if how is None:
        Gimp.Selection.none(image)
        return
    kind, x, y, w, h, feather = how
    op = Gimp.ChannelOps.REPLACE
    if kind == "ellipse":
        image.select_ellipse(op, x, y, w, h)
    else:
        image.select_rectangle(op, x, y, w, h)
    if feather:
        Gimp.Selection.feather(image, feather)


def pick_drawables(image, layer, how):
    """The drawables a call passes, as `how` names them (see the module doc)."""
    if how == "all":
        return list(image.get_layers())
    if how == "reversed":
        return list(image.get_layers())[::-1]
    if how == "top":
        return [image.get_layers()[0]]
    if how == "selected":
        return list(image.get_selected_layers())
    if how and how.startswith("named:"):
        return [image.get_layer_by_name(how.removeprefix("named:"))]
    if how == "channel":
        channel = Gimp.Channel.new(image, "spot", image.get_width(), image.get_height(), 50.0,
                                   Gegl.Color.new("red"))  # fmt: skip
        image.insert_channel(channel, None, 0)
        return [channel]
    if how == "selection":
        return [image.get_selection()]
    if how == "mask":
        if not layer.has_alpha():
            layer.add_alpha()
        mask = layer.create_mask(Gimp.AddMaskType.WHITE)
        layer.add_mask(mask)
        return [mask]
    return [layer]


def run_procedure(call, image, drawables, args, interactive):
    procedure = PDB.lookup_procedure(call["procedure"])
    config = procedure.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE if interactive else NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    for key, value in args.items():
        config.set_property(key, value)
    started, started_at = time.monotonic(), time.time()
    values = procedure.run(config)
    seconds, ended_at = time.monotonic() - started, time.time()
    status = values.index(0)
    success = status == Gimp.PDBStatusType.SUCCESS
    returned = [values.index(i) for i in range(1, values.length())] if success else []
    return values, {
        "status": status.value_nick if hasattr(status, "value_nick") else str(status),
        "success": success,
        "error": PDB.get_last_error() if not success else "",
        "seconds": seconds,
        "started_at": started_at,  # wall clock, to compare with what the test did meanwhile
        "ended_at": ended_at,
        "returned": [v for v in returned if isinstance(v, (int, str))],
    }


def run_call(call):
    image = Gimp.file_load(NONINTERACTIVE, Gio.File.new_for_path(call.get("picture") or SPEC["picture"]))
    if call.get("grayscale"):
        image.convert_grayscale()
    if call.get("indexed"):
        image.convert_indexed(Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 32, False,
                              False, "")  # fmt: skip
    layer = image.get_layers()[0]
    layer.set_visible(not call.get("hide_picture"))
    named = {}
    for extra in call.get("layers") or []:
        added = Gimp.file_load_layer(NONINTERACTIVE, image, Gio.File.new_for_path(extra["picture"]))
        added.set_name(extra["name"])
        added.set_visible(not extra.get("hidden"))
        image.insert_layer(added, None, 0)
        named[extra["name"]] = added
    args = {
        key: named[value["layer"]] if isinstance(value, dict) else value
        for key, value in (call.get("args") or {}).items()
    }
    drawables = pick_drawables(image, layer, call.get("drawables"))
    if all(d.is_layer() for d in drawables):
        image.set_selected_layers(drawables)
    make_selection(image, call.get("selection"))
    dump(image.get_selection(), os.path.join(OUT, f"{call['name']}-selection.y"), "Y u8")
    layers_before = len(image.get_layers())
    before = dump(layer, os.path.join(OUT, f"{call['name']}-before.rgba"))

    display = Gimp.Display.new(image) if call.get("display") else None  # GIMP with its UI: a window
    values, entry = run_procedure(call, image, drawables, args, call.get("interactive"))
    entry["before"] = before  # the picture's layer as it was before the call
    entry["then"] = []
    for index, more in enumerate(call.get("then") or []):
        if more.get("paint"):  # the painter paints: a rectangle of one colour on the picture's layer
            x, y, w, h, rgb = more["paint"]
            layer.get_buffer().set(Gegl.Rectangle.new(x, y, w, h), "R'G'B'A u8", bytes([*rgb, 255]) * (w * h))
            layer.update(x, y, w, h)
            entry["then"].append({"painted": more["paint"], "layers": tree_names(image.get_layers())})
            continue
        again = pick_drawables(image, layer, more.get("drawables") or "picture")
        if more.get("procedure"):  # another procedure: only its own arguments
            _, done = run_procedure(more, image, again, more.get("args", {}), False)
        else:
            _, done = run_procedure(call, image, again, {**args, **more.get("args", {})}, False)
        done["drawables"] = [d.get_name() for d in again]
        done["layers"] = tree_names(image.get_layers())
        live = [item for item in image.get_layers() if item.get_name() == "Underpaint live"]
        if live:  # Live's layer as this step left it
            _, lx, ly = live[0].get_offsets()
            path = os.path.join(OUT, f"{call['name']}-then{index}-live.rgba")
            done["live"] = {"x": lx, "y": ly, "width": live[0].get_width(), "height": live[0].get_height(),
                            "pixels": dump(live[0], path), "parasites": parasites(live[0])}  # fmt: skip
        entry["then"].append(done)
    entry["layers_before"] = layers_before
    entry["top_level_after"] = len(image.get_layers())
    entry["image"] = save_and_describe(image, call["name"])
    if entry["success"] and call.get("returns_image"):
        new_image = values.index(1)
        entry["new_image"] = save_and_describe(new_image, call["name"] + "-new") if new_image else None
        if new_image:
            new_image.delete()
    if display is not None:
        display.delete()
    image.delete()
    return entry


def describe_procedure(name):
    """What GIMP registered: menu placement, label, image types and the typed arguments."""
    procedure = PDB.lookup_procedure(name)
    if procedure is None:
        return None
    return {
        "menu_paths": list(procedure.get_menu_paths()),
        "menu_label": procedure.get_menu_label(),
        "image_types": procedure.get_image_types(),
        "sensitivity": int(procedure.get_sensitivity_mask()),
        "arguments": {a.name: a.value_type.name for a in procedure.get_arguments()},
        "returns": [v.name for v in procedure.get_return_values()],
    }


def main():
    result = {"calls": {}, "procedures": {}, "done": False}
    try:
        for name in SPEC.get("procedures") or []:
            result["procedures"][name] = describe_procedure(name)
        for call in SPEC["calls"]:
            try:
                result["calls"][call["name"]] = run_call(call)
            except Exception:
                result["calls"][call["name"]] = {"exception": traceback.format_exc()}
        result["done"] = True
    except Exception:
        result["exception"] = traceback.format_exc()
    with open(os.path.join(OUT, "result.json.tmp"), "w") as f:
        json.dump(result, f, indent=1)
    os.rename(os.path.join(OUT, "result.json.tmp"), os.path.join(OUT, "result.json"))


main()
