"""Hostile probes of the data commands: run with PYTHONPATH=<tree> python probe.py OUTDIR; prints one line per case."""
import io, json, os, shutil, stat, struct, sys, zlib, contextlib, traceback
from pathlib import Path
import numpy as np
from PIL import Image, ImageFilter
import nibabel as nib

OUT = Path(sys.argv[1]); shutil.rmtree(OUT, ignore_errors=True); OUT.mkdir(parents=True)
DATA = Path("/work/shared/data"); K = DATA / "kvasir_seg"
stems = sorted(p.stem for p in (K / "images").glob("*.jpg"))
def case(i): return {"image": str(K / "images" / f"{stems[i]}.jpg"), "label": str(K / "masks" / f"{stems[i]}.png")}
from transfuse_bundle.tools.cli.prepare_data import main as prep
from transfuse_bundle.data import load_datalist, evaluation_datalist, validate_datalist, inference_datalist
from transfuse_bundle.tools.tasks import config_parser
from monai.transforms import Compose

def short(text, n=230):
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."

def cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = prep(argv)
        except SystemExit as e:
            rc = e.code
    lines = [l for l in err.getvalue().splitlines() if l.strip()]
    return f"exit {rc}" + (f": {short(lines[-1])}" if lines else "")

def call(fn):
    try:
        return short(fn())
    except Exception as e:
        return f"{type(e).__name__}: {short(e)}"

folder = OUT / "kv"
for sub in ("images", "masks"):
    (folder / sub).mkdir(parents=True)
for i in range(6):
    os.symlink(case(i)["image"], folder / "images" / f"{stems[i]}.jpg"); os.symlink(case(i)["label"], folder / "masks" / f"{stems[i]}.png")

R = {}
# --- prepare-data --output
out = OUT / "l" / "datalist.json"
R["P1 rerun into own datalist"] = (cli([str(folder), "--output", str(out)]), cli([str(folder), "--output", str(out)]))[1]
d = json.loads(out.read_text()); d["training"] = d["training"][:1]; out.write_text(json.dumps(d))
R["P2 hand-edited datalist"] = cli([str(folder), "--output", str(out)]) + f" | kept: {json.loads(out.read_text()) == d}"
R["P3 same, --subset"] = cli([str(folder), "--output", str(out), "--subset", "2", "1", "1"]) + f" | kept: {json.loads(out.read_text()) == d}"
mine = OUT / "mine.json"; mine.write_text(json.dumps({"training": [case(0)]}))
R["P4 user's own datalist never written by the tool"] = cli([str(folder), "--output", str(mine)]) + f" | kept: {json.loads(mine.read_text())['training'] == [case(0)]}"
target = OUT / "elsewhere.json"; target.write_text(json.dumps({"training": [case(1)]}))
link = OUT / "l" / "link.json"; os.symlink(target, link)
R["P5 --output is a symlink to a datalist"] = cli([str(folder), "--output", str(link)]) + f" | target kept: {json.loads(target.read_text())['training'] == [case(1)]}"
R["P6 --overwrite on the symlink"] = cli([str(folder), "--output", str(link), "--overwrite"]) + f" | target kept: {json.loads(target.read_text())['training'] == [case(1)]}, link now file: {not link.is_symlink()}"
R["P7 --overwrite maybe"] = cli([str(folder), "--output", str(out), "--overwrite", "maybe"])
(OUT / "l" / ".transfuse_outputs.jsonl").write_text("garbage\n{\"file\": 3}\n")
R["P8 corrupt manifest, own datalist"] = cli([str(folder), "--output", str(OUT / "l" / "link.json")])
ro = OUT / "ro"; ro.mkdir(); (ro / "datalist.json").write_text(json.dumps({"training": []})); os.chmod(ro, 0o555)
R["P9 read-only folder with a datalist"] = cli([str(folder), "--output", str(ro / "datalist.json"), "--overwrite"])
os.chmod(ro, 0o755)
R["P10 --output .transfuse_outputs.jsonl"] = cli([str(folder), "--output", str(OUT / "l" / ".transfuse_outputs.jsonl")])
R["P11 --output into the dataset folder itself"] = cli([str(folder), "--output", str(folder / "datalist.json")]) + " | then load: " + call(lambda: len(load_datalist(folder)["training"]))

# --- datalist lists
def dl(content, name="d.json"):
    p = OUT / name; p.write_text(json.dumps(content)); return p
R["L1 'Validation' key"] = call(lambda: load_datalist(dl({"training": [case(0), case(1)], "Validation": [case(2)]}))["validation"])
R["L2 'val' key"] = call(lambda: load_datalist(dl({"training": [case(0), case(1)], "val": [case(2)]}))["validation"])
R["L3 'TRAINING' only"] = call(lambda: load_datalist(dl({"TRAINING": [case(0), case(1)]})))
R["L4 'holdout' list of cases"] = call(lambda: load_datalist(dl({"training": [case(0), case(1)], "holdout": [case(2)]})))
R["L5 MSD-style keys (name, labels, numTraining, test strings)"] = call(lambda: {k: len(v) for k, v in load_datalist(dl({"name": "x", "labels": {"0": "bg"}, "numTraining": 2, "training": [case(0), case(1)], "test": [case(2)["image"]]})).items()})
R["L6 same case in training and validation"] = call(lambda: load_datalist(dl({"training": [case(0), case(1)], "validation": [case(0)]})))
rel = OUT / "rel"; rel.mkdir(); os.symlink(K / "images", rel / "im"); os.symlink(K / "masks", rel / "ma")
R["L7 same case, relative path via a linked folder vs absolute"] = call(lambda: load_datalist(dl({"training": [case(0), case(1)], "validation": [{"image": f"im/{stems[0]}.jpg", "label": f"ma/{stems[0]}.png"}]}, "rel/d.json")))
R["L8 same case in training and test"] = call(lambda: evaluation_datalist(dl({"training": [case(0), case(1)], "test": [case(1)]})))
R["L9 same image, different label, in training and validation"] = call(lambda: load_datalist(dl({"training": [case(0), case(1)], "validation": [{"image": case(0)["image"], "label": case(3)["label"]}]})))
R["L10 same case twice in training"] = call(lambda: [str(p) for p in validate_datalist(load_datalist(dl({"training": [case(0), case(0), case(1)], "validation": [case(2)]})))])
R["L11 MONAI Label lists overlap (train#/validate#dataset#data)"] = call(lambda: [str(p) for p in validate_datalist({"training": [case(0), case(1)], "validation": [case(1)]})])
R["L12 training as an object"] = call(lambda: load_datalist(dl({"training": {"a": case(0)}})))
R["E1 evaluation of a test-only datalist"] = call(lambda: len(evaluation_datalist(dl({"test": [case(0), case(1)]}))))
R["E2 evaluation of a validation-only datalist"] = call(lambda: len(evaluation_datalist(dl({"validation": [case(0)]}))))
R["E3 evaluation of a test list without labels"] = call(lambda: evaluation_datalist(dl({"test": [case(0)["image"]]})))
R["E4 evaluation of a datalist with only empty lists"] = call(lambda: evaluation_datalist(dl({"training": [], "test": []})))
R["E5 inference of a test-only datalist"] = call(lambda: len(inference_datalist(dl({"test": [case(0)["image"]]}))))

# --- images
grey = np.asarray(Image.open(case(0)["image"]).convert("L"))
def loadimg(path, task="hip"):
    t = Compose(config_parser("train.json", task).get_parsed_content("load_image"))
    x = t({"image": str(path)})["image"]
    return f"read as {tuple(x.shape)}, max {float(x.max()):.0f}, mean {float(x.mean()):.1f} (8-bit original mean {grey.mean():.1f})"
def loadlabel(path, task="polyp"):
    t = Compose(config_parser("train.json", task).get_parsed_content("load_label"))
    x = t({"label": str(path)})["label"]
    return f"foreground {100 * float(x.mean()):.1f}% (true {100 * (np.asarray(Image.open(case(0)['label']).convert('L')) > 127).mean():.1f}%)"
def sbit(path, bits):
    b = path.read_bytes(); body = b"sBIT" + bytes([bits]); path.write_bytes(b[:33] + struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body)) + b[33:])
def check(image, label, **kw):
    return [str(p) for p in validate_datalist([{"image": str(image), "label": str(label)}], **kw)] or "accepted"
p = OUT / "x12.png"; Image.fromarray((grey.astype(np.uint32) * 4095 // 255).astype(np.uint16)).save(p)
R["I1 12-bit X-ray in a 16-bit PNG"] = call(lambda: loadimg(p))
p = OUT / "x12s.png"; Image.fromarray((grey.astype(np.uint32) * 4095 // 255).astype(np.uint16)).save(p); sbit(p, 12)
R["I2 12-bit X-ray with sBIT 12"] = call(lambda: loadimg(p))
p = OUT / "x16.png"; Image.fromarray(grey.astype(np.uint16) * 257).save(p)
R["I3 full-range 16-bit PNG"] = call(lambda: loadimg(p))
p = OUT / "x8in16.png"; Image.fromarray(grey.astype(np.uint16)).save(p)
R["I4 8-bit values in a 16-bit PNG"] = call(lambda: loadimg(p))
p = OUT / "x10dim.png"; Image.fromarray((grey.astype(np.uint32) * 900 // 255).astype(np.uint16)).save(p)
R["I5 12-bit X-ray using only 0-900, no sBIT"] = call(lambda: loadimg(p))
p = OUT / "f01.tif"; Image.fromarray(grey.astype(np.float32) / 255.0, mode="F").save(p)
R["I6 float TIFF with values 0-1"] = call(lambda: loadimg(p))
p = OUT / "fnan.tif"; a = grey.astype(np.float32); a[:5, :5] = np.nan; Image.fromarray(a, mode="F").save(p)
R["I7 float TIFF with NaN pixels"] = call(lambda: loadimg(p))
p = OUT / "rgb16.png"
import zlib as _z
def png16rgb(path, arr):  # 16-bit RGB PNG written by hand (PIL cannot write it)
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", _z.crc32(t + d))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) + chunk(b"IDAT", _z.compress(raw)) + chunk(b"IEND", b""))
png16rgb(p, np.dstack([(grey.astype(np.uint32) * 4095 // 255).astype(np.uint16)] * 3))
R["I8 12-bit data in a 16-bit RGB PNG"] = call(lambda: loadimg(p))
R["I9 validation of I8"] = call(lambda: check(p, case(0)["label"]))
# --- masks
mask = np.asarray(Image.open(case(0)["label"]).convert("L"))
p = OUT / "alpha.png"; Image.fromarray(np.dstack([np.full(mask.shape + (3,), 255, np.uint8), mask]), mode="RGBA").save(p)
R["M1 mask in alpha, RGB white"] = call(lambda: loadlabel(p)); R["M1v validation of M1"] = call(lambda: check(case(0)["image"], p))
p = OUT / "la.png"; Image.fromarray(np.dstack([np.zeros_like(mask), mask]), mode="LA").save(p)
R["M2 LA mask, grey black, mask in alpha"] = call(lambda: loadlabel(p))
p = OUT / "opaque.png"; Image.fromarray(np.dstack([mask, mask, mask, np.full_like(mask, 255)]), mode="RGBA").save(p)
R["M3 RGBA mask fully opaque"] = call(lambda: loadlabel(p))
p = OUT / "transparent.png"; Image.fromarray(np.dstack([np.full(mask.shape + (3,), 255, np.uint8), np.zeros_like(mask)]), mode="RGBA").save(p)
R["M4 RGBA all white, all transparent"] = call(lambda: check(case(0)["image"], p))
p = OUT / "pal.png"; im = Image.fromarray((mask > 127).astype(np.uint8), mode="L").convert("P"); im.putpalette([0, 0, 0, 255, 0, 0]); im.save(p)
R["M5 palette mask (indices 0/1, red)"] = call(lambda: loadlabel(p))
p = OUT / "grey127.png"; Image.fromarray(np.where(mask > 127, 127, 0).astype(np.uint8)).save(p)
R["M6 mask foreground filled with 127"] = call(lambda: check(case(0)["image"], p))
p = OUT / "grey160.png"; Image.fromarray(np.where(mask > 127, 160, 0).astype(np.uint8)).save(p)
R["M7 mask foreground filled with 160"] = call(lambda: check(case(0)["image"], p))
p = OUT / "blur.png"; Image.fromarray(mask).filter(ImageFilter.GaussianBlur(8)).save(p)
R["M8 blurred (soft) mask"] = call(lambda: check(case(0)["image"], p))
p = OUT / "m12.png"; Image.fromarray(np.where(mask > 127, 4095, 0).astype(np.uint16)).save(p)
R["M9 12-bit 0/4095 mask"] = call(lambda: check(case(0)["image"], p)) + " | " + call(lambda: loadlabel(p))
p = OUT / "m300.png"; Image.fromarray(np.where(mask > 127, 300, 0).astype(np.uint16)).save(p)
R["M10 16-bit 0/300 mask"] = call(lambda: check(case(0)["image"], p))
p = OUT / "m12grey.png"; a = np.where(mask > 127, 2000, 0).astype(np.uint16); a[:2, :2] = 4095; Image.fromarray(a).save(p)
R["M11 12-bit mask, foreground 2000 of 4095"] = call(lambda: check(case(0)["image"], p))
p = OUT / "m01.png"; Image.fromarray((mask > 127).astype(np.uint8)).save(p)
R["M12 0/1 mask"] = call(lambda: check(case(0)["image"], p)) + " | " + call(lambda: loadlabel(p))
p = OUT / "mjpg.jpg"; Image.fromarray(mask).save(p, quality=60)
R["M13 mask saved as JPEG quality 60"] = call(lambda: check(case(0)["image"], p))
for k, v in R.items():
    print(f"{k}\t{v}")
