#!/usr/bin/env python
"""Fetch the public fusion data sets onto a machine with internet, in the layouts hfkernels reads.

Nothing in hfkernels downloads at run time; run this once, by hand, where you have git and the
internet, then point ``--data`` / ``--test`` (or ``HFK_DATA``) at the result:

    python python/fetch_datasets.py --dest data            # all sets
    python python/fetch_datasets.py --dest data msrs roadscene
    python python/fetch_datasets.py --list                 # show the sources, do nothing

Resulting layout (what ``hfkernels.io.datasets.find_sets`` recognises)::

    data/MSRS/{train,test}/{vi,ir}          data/RoadScene/{vi,ir}
    data/TNO/{vi,ir}                        data/Harvard/{CT,PET,SPECT}-MRI/{CT|PET|SPECT,MRI}

Sources are the data sets' public repositories (licences are theirs: read them before use);
they move now and then, so the script finds the folders inside a clone by name rather than by a
fixed path, and says what it linked. TNO is distributed through figshare as an archive: download
it by hand from the page below and pass ``--tno-archive PATH``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

SOURCES = {
    "msrs": ("https://github.com/Linfeng-Tang/MSRS", "MSRS: 1,083 train / 361 test road-scene pairs, 640x480"),
    "roadscene": ("https://github.com/hanna-xu/RoadScene", "RoadScene: 221 aligned visible/infrared pairs"),
    "harvard": ("https://github.com/xianming-gu/Havard-Medical-Image-Fusion-Datasets",
                "Harvard Whole Brain Atlas: CT-MRI, PET-MRI, SPECT-MRI pairs, 256x256"),
    "tno": ("https://figshare.com/articles/dataset/TNO_Image_Fusion_Dataset/1008029",
            "TNO Image Fusion Dataset (manual download, then --tno-archive)"),
}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def clone(url: str, where: Path) -> Path:
    if where.is_dir():
        print(f"  {where} exists, not cloning again")
        return where
    subprocess.run(["git", "clone", "--depth", "1", url, str(where)], check=True)
    return where


def dirs_named(root: Path, *names: str):
    low = {n.lower() for n in names}
    return sorted(p for p in root.rglob("*") if p.is_dir() and p.name.lower() in low)


def has_images(p: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_EXTS for f in p.iterdir() if f.is_file())


def link(src: Path, dst: Path, overwrite: bool = False) -> None:
    """Make ``dst`` a link to ``src``. An earlier link is replaced; a real file or folder there
    (perhaps someone's only copy of the data) only with ``overwrite``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink():
        dst.unlink()
    elif dst.exists():
        if not overwrite:
            raise FileExistsError(f"{dst} exists and is not a link; move it away, or pass --overwrite to delete it")
        dst.unlink() if dst.is_file() else shutil.rmtree(dst)
    dst.symlink_to(src.resolve(), target_is_directory=True)
    print(f"  {dst} -> {src}")


def fetch_msrs(dest: Path, cache: Path, overwrite: bool = False) -> None:
    repo = clone(SOURCES["msrs"][0], cache / "MSRS")
    for split in ("train", "test"):
        for sub, names in (("vi", ("vi", "visible")), ("ir", ("ir", "infrared"))):
            cands = [d for d in dirs_named(repo, *names) if d.parent.name.lower() == split and has_images(d)]
            if not cands:
                print(f"  warning: no {split}/{sub} folder found in {repo}; look inside and link it by hand")
                continue
            link(cands[0], dest / "MSRS" / split / sub, overwrite)


def fetch_roadscene(dest: Path, cache: Path, overwrite: bool = False) -> None:
    repo = clone(SOURCES["roadscene"][0], cache / "RoadScene")
    for sub, names in (("vi", ("crop_LR_visible",)), ("ir", ("cropinfrared",))):
        cands = [d for d in dirs_named(repo, *names) if has_images(d)]
        if cands:
            link(cands[0], dest / "RoadScene" / sub, overwrite)
        else:
            print(f"  warning: no {names[0]} folder in {repo}")


def fetch_harvard(dest: Path, cache: Path, overwrite: bool = False) -> None:
    repo = clone(SOURCES["harvard"][0], cache / "Harvard")
    for pair in ("CT-MRI", "PET-MRI", "SPECT-MRI"):
        first = pair.split("-")[0]
        found = False
        for d in dirs_named(repo, pair):
            a, b = dirs_named(d, first), dirs_named(d, "MRI")
            if a and b and has_images(a[0]) and has_images(b[0]):
                link(a[0], dest / "Harvard" / pair / first, overwrite)
                link(b[0], dest / "Harvard" / pair / "MRI", overwrite)
                found = True
                break
        if not found:
            print(f"  warning: no {pair} folder with {first}/ and MRI/ inside {repo}")


def fetch_tno(dest: Path, archive: Path | None, overwrite: bool = False) -> None:
    if archive is None:
        print(f"  TNO: download the archive from {SOURCES['tno'][0]} and rerun with --tno-archive PATH;")
        print("  or put matching visible/infrared images into data/TNO/vi and data/TNO/ir yourself")
        return
    out = dest / "TNO" / "_archive"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (an earlier extraction?); move it away, or pass --overwrite")
    with zipfile.ZipFile(archive) as z:
        z.extractall(out)
    print(f"  extracted {archive} to {out}: TNO ships scene folders; copy each scene's visible and "
          "infrared image into data/TNO/vi and data/TNO/ir under one shared file name")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sets", nargs="*", metavar="SET", help="msrs roadscene harvard tno (default: all)")
    p.add_argument("--dest", default="data", help="where the layout is made (default ./data)")
    p.add_argument("--cache", default=None, help="where clones go (default DEST/_sources)")
    p.add_argument("--tno-archive", type=Path, default=None)
    p.add_argument("--list", action="store_true", help="print the sources and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="replace real folders (not only earlier links) where a data set's link goes")
    args = p.parse_args(argv)
    if args.list:
        for k, (url, what) in SOURCES.items():
            print(f"{k:10} {what}\n{'':10} {url}")
        return 0
    unknown = [s for s in args.sets if s not in SOURCES]
    if unknown:
        p.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    dest = Path(args.dest)
    cache = Path(args.cache) if args.cache else dest / "_sources"
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.sets or list(SOURCES):
        print(f"{name}: {SOURCES[name][1]}")
        if name == "tno":
            fetch_tno(dest, args.tno_archive, args.overwrite)
        else:
            fetch = {"msrs": fetch_msrs, "roadscene": fetch_roadscene, "harvard": fetch_harvard}[name]
            fetch(dest, cache, args.overwrite)
    print(f"done: train with  hfkernels train --data {dest}/MSRS --data {dest}/RoadScene --test {dest}/MSRS "
          f"--test {dest}/Harvard   (or export HFK_DATA={dest})")
    return 0


if __name__ == "__main__":
    # stand-alone (it runs where hfkernels may not be installed): errors as one line, as the CLI
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("fetch_datasets.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except (OSError, subprocess.CalledProcessError, zipfile.BadZipFile) as e:
        print(f"fetch_datasets.py: error: {e}", file=sys.stderr)
        sys.exit(2)
