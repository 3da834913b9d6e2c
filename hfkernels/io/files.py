"""Image files: reading, writing, pairing two folders by file name, finding the shared data, and
the one rule every command that writes follows (:func:`check_outputs`).

Every error names the file (or files) at fault; nothing is dropped silently.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class PairingError(ValueError):
    """Two folders whose images do not pair up one to one by file name."""


class OutputError(ValueError):
    """An output that would replace an input, or an existing file, without being told to."""


def is_image(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def read_image(path, mode: str = "keep") -> torch.Tensor:
    """Read an 8/16-bit image as a float32 (C, H, W) tensor in [0, 1].

    mode: ``"rgb"`` (3 channels), ``"gray"`` (1 channel, ITU-R 601 luma as PIL computes it) or
    ``"keep"`` (1 channel for grayscale files, 3 for colour; alpha dropped).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if mode not in ("rgb", "gray", "keep"):
                raise ValueError(f"mode must be 'rgb', 'gray' or 'keep', got {mode!r}")
            if _high_depth(im.mode):
                # one gray channel of more than 8 bits: PIL's convert("RGB"/"L") would clip it to
                # 255 (a 16-bit image turns white), so it is scaled here and repeated for "rgb"
                arr = np.array(im)
            elif mode == "keep":
                arr = np.array(im.convert("L") if im.mode in ("L", "LA", "1", "P") and _is_gray(im)
                               else im.convert("RGB"))
            else:
                arr = np.array(im.convert("RGB" if mode == "rgb" else "L"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    if arr.dtype in (np.float32, np.float64):
        scale = 1.0
    elif arr.dtype == np.uint8:
        scale = 255.0
    else:  # I;16* (uint16) and I (int32) hold 16-bit samples
        scale = 65535.0
    t = torch.from_numpy(arr.astype(np.float32) / scale)
    if t.dim() == 2:
        t = t[None].expand(3, -1, -1).contiguous() if mode == "rgb" else t[None]
    else:
        t = t.permute(2, 0, 1).contiguous()
    return t


def _high_depth(pil_mode: str) -> bool:
    return pil_mode.startswith("I;16") or pil_mode in ("I", "F")


def _is_gray(im) -> bool:
    if im.mode == "P":
        pal = im.convert("RGB")
        a = np.asarray(pal)
        return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
    return True


def write_image(path, x: torch.Tensor) -> None:
    """Write a (C, H, W) or (1, C, H, W) tensor in [0, 1] (clamped) as an 8-bit image, atomically
    (a failed write leaves no half-written file; a symlink at ``path`` is replaced, not followed)."""
    x = x.detach()
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"write_image takes one image, got batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"image to write must be (1|3, H, W), got {tuple(x.shape)}")
    arr = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write image {path}: unknown file type {path.suffix!r} (use .png)")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    # atomically, under a new inode: a link at ``path`` is replaced, never written through
    write_output(path, buf.getvalue())


def list_images(folder) -> list[Path]:
    """Image files directly in ``folder``, sorted by name. Raises if it is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
    if not files:
        raise PairingError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


@dataclass
class Pairs:
    pairs: list[tuple[Path, Path]]
    only_a: list[Path]
    only_b: list[Path]


def match_pairs(folder_a, folder_b, strict: bool = True) -> Pairs:
    """Pair the images of two folders by file name (exact name, else same stem).

    With ``strict`` (default) any unmatched file raises :class:`PairingError` listing them all.
    """
    a, b = list_images(folder_a), list_images(folder_b)
    by_name = {p.name: p for p in b}
    by_stem: dict[str, list[Path]] = {}
    for p in b:
        by_stem.setdefault(p.stem, []).append(p)
    pairs, only_a, used = [], [], set()
    for p in a:
        q = by_name.get(p.name)
        if q is None and len(by_stem.get(p.stem, [])) == 1:
            q = by_stem[p.stem][0]
        if q is None or q in used:
            only_a.append(p)
        else:
            used.add(q)
            pairs.append((p, q))
    only_b = [p for p in b if p not in used]
    res = Pairs(pairs, only_a, only_b)
    if strict and (only_a or only_b):
        raise PairingError(describe_unmatched(folder_a, folder_b, res))
    return res


def describe_unmatched(folder_a, folder_b, res: Pairs) -> str:
    lines = [f"{len(res.only_a) + len(res.only_b)} image(s) have no partner:"]
    lines += [f"  only in {folder_a}: {p.name}" for p in res.only_a]
    lines += [f"  only in {folder_b}: {p.name}" for p in res.only_b]
    return "\n".join(lines)


def _resolved(path) -> Path:
    # symlinks and ".." are resolved so that two spellings of one file compare equal
    return Path(path).expanduser().resolve()


def _inode(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_stream(path) -> bool:
    """Whether ``path`` is (or links to) a character device or a pipe, e.g. ``/dev/stdout``:
    writing there replaces nothing."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, exclusively created file beside ``name``. Created with mode 0666 so the kernel
    applies the process umask, as for any ordinary file (``tempfile.mkstemp`` would force 0600
    and leave run folders unreadable by the group)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.
    The new file gets the permissions of any new file (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_json_file(path, expect: type | tuple | None = None, what: str = "file"):
    """``read_json(path)`` for a file that may be anything: ValueError naming the file for
    unreadable, non-UTF-8 or invalid JSON, or (``expect``) a top level of another type."""
    try:
        obj = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} is missing") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a folder, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not a JSON text file ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    if expect is not None and not isinstance(obj, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        kinds = {"dict": "a JSON object", "list": "a JSON list"}
        raise ValueError(f"{what} {path} must hold {kinds.get(names, names)}, got {type(obj).__name__}")
    return obj


def write_output(path, data: bytes) -> None:
    """Write a command's output file: atomically (:func:`atomic_write_bytes`) for a file,
    straight through for a stream such as ``/dev/stdout``."""
    if is_stream(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    atomic_write_bytes(path, data)


def _some(paths, n: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _not_in_inputs(option: str, out: Path, given_of: dict) -> Path:
    r = _resolved(out)
    hit = next((q for q in (r, *r.parents) if q in given_of), None)
    if hit is not None:
        where = "is the input" if hit == r else "lies inside the input folder"
        raise OutputError(f"{option} {out} {where} {given_of[hit]}: refusing to write over an input; "
                          "choose an output outside the inputs")
    return r


def check_output_folder(option: str, folder, inputs=()) -> None:
    """Raise :class:`OutputError` if the output folder ``folder`` is one of ``inputs`` or lies
    inside one (paths compared after resolving ``..`` and symlinks), or is an existing file."""
    folder = Path(folder)
    _not_in_inputs(option, folder, {_resolved(p): Path(p) for p in inputs if p is not None})
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, not a folder")


def check_outputs(outputs, inputs=(), *, overwrite: bool = False) -> None:
    """The rule for every file a command writes: refuse, before anything is written, any output
    that would destroy something.

    Args:
        outputs: ``(option, path)`` pairs, one per file about to be written; ``option`` names
            where the path came from in messages (e.g. ``"--out"``, ``"--json"``).
        inputs: files or folders the command reads (``None`` entries are skipped).
        overwrite: allow replacing existing outputs (never inputs).

    Raises :class:`OutputError` (a ValueError) naming the paths when an output is an input or
    lies inside an input folder (compared after resolving ``..`` and symlinks, and by inode, so
    a symlink or hard link to an input counts as the input); when two outputs are one file; when
    an output is an existing folder; or when it exists (a file or a link, dangling links
    included) and ``overwrite`` is false; or when a folder it would go into is a file.
    """
    given_of: dict[Path, Path] = {}
    by_inode: dict[tuple, Path] = {}
    for p in inputs:
        if p is None:
            continue
        given_of.setdefault(_resolved(p), Path(p))
        ino = _inode(p)
        if ino is not None:
            by_inode.setdefault(ino, Path(p))
    seen: dict[Path, str] = {}
    existing: dict[str, list[Path]] = {}
    for option, out in outputs:
        out = Path(out)
        r = _not_in_inputs(option, out, given_of)
        exists = os.path.lexists(out)
        ino = _inode(out) if exists else None
        if ino is not None and ino in by_inode:
            raise OutputError(f"{option} {out} is the same file as the input {by_inode[ino]} (a link to it): "
                              "refusing to write over an input; choose an output outside the inputs")
        if r in seen:
            other = seen[r]
            which = option if other == option else f"{other} and {option}"
            raise OutputError(f"{which} would write {out} twice; give each output its own name")
        seen[r] = option
        if out.is_dir():
            raise OutputError(f"{option} {out} is a folder, not a file name")
        blocker = next((q for q in out.parents if os.path.lexists(q) and not q.is_dir()), None)
        if blocker is not None:
            raise OutputError(f"{option} {out} cannot be written: {blocker} is a file, not a folder")
        if exists and not is_stream(out):
            existing.setdefault(option, []).append(out)
    if existing and not overwrite:
        n = sum(len(p) for p in existing.values())
        parts = "; ".join(f"{option} {_some(paths)}" for option, paths in existing.items())
        what = "already exists" if n == 1 else f"({n} files) already exist"
        raise OutputError(f"{parts} {what}; pass --overwrite to replace, or choose another name")


def header_size(path) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels; ValueError naming
    the file if it cannot be read."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return h, w


def check_pair_sizes(pairs) -> None:
    """Raise ValueError listing every ``(a, b)`` pair of files whose sizes differ or which cannot
    be read (headers only), so a command can refuse before writing anything."""
    problems = []
    for a, b in pairs:
        try:
            sa, sb = header_size(a), header_size(b)
        except ValueError as e:
            problems.append(str(e))
            continue
        if sa != sb:
            problems.append(f"size mismatch: {a} is {sa[0]}x{sa[1]}, {b} is {sb[0]}x{sb[1]} (HxW)")
    if problems:
        raise ValueError(f"{len(problems)} of {len(pairs)} pair(s) cannot be fused:\n  " + "\n  ".join(problems))


def data_root() -> Path | None:
    """The real-image folder: ``$HFK_DATA`` (None if that is not a folder), else a folder
    ``shared/data`` next to the checkout or next to the working directory; None if none exists."""
    env = os.environ.get("HFK_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None
