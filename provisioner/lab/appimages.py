"""The sample app's images (vkp sample-app), built from this machine's Debian packages.

Like the lab's Kubernetes images (kubebuild.py), each is one layer holding files the host's
packages installed, with every shared library they load: the app image is Debian's python3
interpreter and standard library (dpkg's own file lists) plus the app's files; the redis
image is Debian's redis-server. They go into the same image tarballs directory the nodes
import at create-cluster, with their lines in its SHA256SUMS, under the lab's names
(vkp.local/sample-app/...). A record next to that directory holds the recipe's hash and each
tarball's SHA-256, so `vkp lab prepare` rebuilds only when the app, the packages or the recipe
changed, or when the Kubernetes build replaced the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner import sampleapp
from provisioner.bootstrap.artifacts import SUMS_FILE, sha256_file
from provisioner.errors import LabError
from provisioner.lab import image as guest_image
from provisioner.lab import kubebuild, oci

Log = Callable[[str], None]

PYTHON = Path("/usr/bin/python3")  # Debian's, whatever Python runs vkp
REDIS = Path("/usr/bin/redis-server")
RECORD = "sample-app-images.json"
# Parts of the standard library the app never imports: tests, the docs server's data, venv.
SKIP_DIRS = {"test", "pydoc_data", "venv", "idlelib", "turtledemo", "ensurepip", "lib2to3", "tkinter"}
APP_ENV = ["PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1", "LANG=C.UTF-8"]


def python_version() -> str:
    """ "3.11" for Debian 12's python3 (a link to python3.11)."""
    m = re.fullmatch(r"python(\d+\.\d+)", PYTHON.resolve().name)
    if not PYTHON.exists() or m is None:
        raise LabError(f"{PYTHON} is not Debian's python3 (it resolves to {PYTHON.resolve()})",
                       hint="apt-get install python3")  # fmt: skip
    return m.group(1)


def python_packages(version: str) -> tuple[str, ...]:
    return (f"python{version}-minimal", f"libpython{version}-minimal", f"libpython{version}-stdlib")


def _dpkg(args: list[str], what: str, hint: str) -> str:
    proc = subprocess.run(["dpkg-query", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"{what}: {proc.stderr.strip() or f'dpkg-query exit {proc.returncode}'}", hint=hint)
    return proc.stdout


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    out = _dpkg(["-W", "-f=${Package} ${Version}\n", *packages], "the sample app's Debian packages",
                f"apt-get install {' '.join(packages)}")  # fmt: skip
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def package_files(packages: tuple[str, ...]) -> list[Path]:
    """Files and links the packages installed (dpkg -L), without directories or docs."""
    out = _dpkg(["-L", *packages], f"the file lists of {', '.join(packages)}",
                f"apt-get install {' '.join(packages)}")  # fmt: skip
    paths = sorted({Path(p) for p in out.splitlines() if p.startswith("/")})
    return [p for p in paths if not p.is_dir() and not str(p).startswith("/usr/share/")]


@dataclass(frozen=True)
class Recipe:
    """What decides the images; its hash is in the record."""

    refs: tuple[str, ...]
    app: str  # SHA-256 over the app's files
    packages: tuple[tuple[str, str], ...]  # (package, version) of everything taken from dpkg
    skip_dirs: tuple[str, ...] = tuple(sorted(SKIP_DIRS))
    revision: int = 1

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def recipe() -> Recipe:
    app = hashlib.sha256()
    for name in sampleapp.APP_FILES:
        app.update(name.encode() + b"\0" + (sampleapp.APP_SOURCE / name).read_bytes())
    redis_pkgs = tuple(sorted({_owner(REDIS), _owner(REDIS.resolve())}))
    versions = package_versions((*python_packages(python_version()), *redis_pkgs))
    return Recipe(tuple(sampleapp.image_refs().values()), app.hexdigest(), tuple(sorted(versions.items())))


def _owner(path: Path) -> str:
    if not path.exists():
        raise LabError(f"{path} is missing: the sample app's redis image is Debian's redis-server",
                       hint="apt-get install redis-server (`vkp lab prepare` installs it)")  # fmt: skip
    out = _dpkg(["-S", str(path)], f"which package installed {path}", "apt-get install redis-server")
    return out.split(":", 1)[0].strip()


def _with_libraries(img: oci.Image, binaries: list[Path]) -> None:
    have = {e.path for e in img.entries}
    for b in binaries:
        for lib in kubebuild.shared_libraries(b):
            if str(lib) not in have:
                have.add(str(lib))
                # A real file at the path the loader asks for: a link to a path the image does
                # not have fails at exec with "no such file or directory".
                img.file(str(lib), lib.resolve(), 0o755)


def app_image(ref: str) -> oci.Image:
    """Debian's python3 and standard library, and the app's files in /app."""
    version = python_version()
    img = oci.Image(ref, entrypoint=[str(PYTHON)], env=[f"PATH={oci.DEFAULT_PATH}", *APP_ENV])
    stdlib = Path(f"/usr/lib/python{version}")
    interpreter = Path(f"/usr/bin/python{version}")
    extensions: list[Path] = []
    for p in package_files(python_packages(version)):
        inside = p.relative_to(stdlib).parts if p.is_relative_to(stdlib) else ()
        if inside and inside[0] in SKIP_DIRS:
            continue
        if not (p.is_relative_to(stdlib) or p.is_relative_to("/etc") or p == interpreter):
            continue  # binfmt registration and the like: nothing a process in the image reads
        if p.is_symlink():
            img.symlink(str(p), os.readlink(p))
        elif p.is_file():
            img.file(str(p), p, 0o755 if p.suffix == ".so" or p.parent.name == "bin" else 0o644)
            if p.suffix == ".so":
                extensions.append(p)
    img.symlink(str(PYTHON), f"python{version}")
    _with_libraries(img, [interpreter, *extensions])
    for name in sampleapp.APP_FILES:
        img.file(f"/app/{name}", sampleapp.APP_SOURCE / name, 0o644)
    img.directory("/tmp", 0o1777)
    return img


def redis_image(ref: str) -> oci.Image:
    """Debian's redis-server, a /data for its append-only file, and nothing else."""
    img = oci.Image(ref, entrypoint=[str(REDIS)])
    # /usr/bin/redis-server links to redis-check-rdb; the binary picks its mode by its own name,
    # so the real file goes in under the server's name.
    img.file(str(REDIS), REDIS.resolve(), 0o755)
    _with_libraries(img, [REDIS.resolve()])
    img.directory("/data", 0o777)
    img.directory("/tmp", 0o1777)
    return img


def file_name(ref: str) -> str:
    """vkp-sample-app_0.1.tar: named apart from the Kubernetes images in the same directory."""
    return "vkp-sample-" + kubebuild.image_file_name(ref)


def images() -> list[oci.Image]:
    refs = sampleapp.image_refs()
    return [app_image(refs["app"]), redis_image(refs["redis"])]


# -- the record and the tarballs directory ------------------------------------------------------


def read_sums(directory: Path) -> list[tuple[str, str]]:
    """(sha256, name) lines of directory's SHA256SUMS, in order; [] without one."""
    try:
        text = (directory / SUMS_FILE).read_text()
    except FileNotFoundError:
        return []
    pairs = (ln.split(None, 1) for ln in text.splitlines())
    return [(p[0], p[1].strip().lstrip("*")) for p in pairs if len(p) == 2]


def write_sums(directory: Path, ours: dict[str, str]) -> None:
    """SHA256SUMS with ours ({name: sha256}) in place of any earlier lines for those names."""
    kept = [(d, n) for d, n in read_sums(directory) if n not in ours]
    lines = [*kept, *((d, n) for n, d in sorted(ours.items()))]
    path = directory / SUMS_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(f"{d}  {n}\n" for d, n in lines))
    tmp.replace(path)


def read_record(artifacts: Path) -> dict[str, object] | None:
    try:
        data = json.loads((artifacts / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(record: dict[str, object] | None, directory: Path, recipe_hash: str) -> bool:
    """The record's tarballs are there, unchanged, and listed in SHA256SUMS, for this recipe."""
    if record is None or record.get("recipe") != recipe_hash:
        return False
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return False
    listed = {n: d for d, n in read_sums(directory)}
    return all(
        listed.get(n) == digest and (directory / n).is_file() and sha256_file(directory / n) == digest
        for n, digest in files.items()
    )


def build(artifacts: Path, cache: Path, log: Log) -> dict[str, object]:
    """Build (or reuse) the sample app's image tarballs in the lab's image tarballs directory.

    cache holds the lock the Kubernetes build takes: both write that directory's SHA256SUMS.
    """
    directory = kubebuild.Layout(artifacts).images
    wanted = recipe().hash()
    record = read_record(artifacts)
    if is_current(record, directory, wanted):
        return record  # type: ignore[return-value]
    cache.mkdir(parents=True, exist_ok=True)
    with guest_image.build_lock(cache / "build.lock"):
        record = read_record(artifacts)
        if is_current(record, directory, wanted):
            return record  # type: ignore[return-value]
        started = time.monotonic()
        log("building the sample app's images from Debian's python3 and redis-server")
        directory.mkdir(parents=True, exist_ok=True)
        (artifacts / RECORD).unlink(missing_ok=True)  # not "built" until the sums are written
        refs: dict[str, str] = {}
        files: dict[str, str] = {}
        for img in images():
            path = directory / file_name(img.ref)
            oci.write(img, path)
            files[path.name] = sha256_file(path)
            refs[img.ref] = path.name
        write_sums(directory, files)
        done: dict[str, object] = {
            "recipe": wanted,
            "images": refs,
            "files": files,
            "bytes": sum((directory / n).stat().st_size for n in files),
            "seconds": round(time.monotonic() - started, 1),
        }
        (artifacts / RECORD).write_text(json.dumps(done, indent=2) + "\n")
        log(f"sample app images ready in {directory} ({done['seconds']}s): {', '.join(refs)}")
        return done
