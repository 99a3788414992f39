"""The lab's Kubernetes: built here from Debian's source package, laid out like a mirror.

No registry reachable from this machine serves Kubernetes server binaries or images, but
Debian's bookworm source package `kubernetes` is the whole upstream v1.20.2 tree (with
vendor/). This module fetches it with apt's own client (a sources list of the lab's own,
under the lab's cache: the machine's apt configuration is left alone), builds kubeadm,
kubelet, kubectl and the control-plane commands with Debian's Go, builds pause from the
tree's build/pause, makes OCI image tarballs under the names kubeadm v1.20.2 asks for, and
writes everything into the lab's artifacts directory in the layout a `local:` artifact
source reads, each file with its SHA-256, so the Kubernetes phase installs and verifies
the lab's build exactly as it would a mirror's.

Two caches, each keyed by a recipe hash: the Go build (minutes) and the assembled
artifacts (seconds), so changing how an image is put together does not recompile anything.
Every step logs to a file of its own; a failure names the step and that file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner.bootstrap.artifacts import sha256_file
from provisioner.errors import LabError
from provisioner.lab import image as guest_image
from provisioner.lab import oci
from provisioner.spec import k8s_minor

Log = Callable[[str], None]

VERSION = "1.20.2"
SUITE = "bookworm"
SOURCE_PACKAGE = "kubernetes"
# Debian's revision of that upstream release; its own patches are applied, as Debian would.
SOURCE_VERSION_RE = re.compile(r"\+really1\.20\.2-")
IMAGE_REPOSITORY = "k8s.gcr.io"  # what `kubeadm config images list` prints for v1.20.2
PAUSE_VERSION = "3.2"
COMMANDS = (
    "kubelet",  # first: it compiles most of the shared packages, the others reuse them
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubeadm",
    "kubectl",
)
NODE_BINARIES = ("kubeadm", "kubelet", "kubectl")
# No step takes a tenth of this on 2 cores (kubelet, cold: 206 s); a hung download or build is
# stopped and reported instead of holding `vkp lab prepare` forever.
STEP_TIMEOUT = 1800.0
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# The sample workload: Debian's busybox-static (its wget segfaults; nc, httpd, sh work).
WORKLOAD_IMAGE = "lab.vkp.internal/busybox:debian-12"
CNI_PLUGIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
# kube-proxy's iptables mode runs these; the legacy backend is the one the guests use too.
IPTABLES_NAMES = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                  "ip6tables-restore")  # fmt: skip
XTABLES_MULTI = Path("/usr/sbin/xtables-legacy-multi")
XTABLES_EXTENSIONS = Path("/usr/lib/x86_64-linux-gnu/xtables")


@dataclass(frozen=True)
class GoRecipe:
    """What decides the compiled binaries; its hash names the Go build's cache directory."""

    version: str = VERSION
    suite: str = SUITE
    package: str = SOURCE_PACKAGE
    commands: tuple[str, ...] = COMMANDS
    tags: str = "selinux,notest"
    # vendor/github.com/modern-go/reflect2 v1.0.1 panics under Go >= 1.18 when json-iterator
    # encodes a map (kubeadm init crashed writing the kubelet config): Debian's 1.0.2 replaces it.
    reflect2_from: str = "/usr/share/gocode/src/github.com/modern-go/reflect2"
    revision: int = 1

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ArtifactRecipe:
    """What decides the artifacts directory's content, given the binaries."""

    go: str  # GoRecipe.hash()
    image_repository: str = IMAGE_REPOSITORY
    pause_version: str = PAUSE_VERSION
    workload_image: str = WORKLOAD_IMAGE
    revision: int = 1

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Layout:
    """Where the artifacts live under the lab's artifacts directory (a `local:` source)."""

    root: Path

    @property
    def binaries(self) -> Path:
        return self.root / f"v{VERSION}" / "bin" / "linux" / "amd64"

    @property
    def images(self) -> Path:
        return self.root / "images" / f"v{VERSION}"

    def cni_dir(self, version: str) -> Path:
        return self.root / "cni-plugins" / f"v{version}"

    @property
    def record(self) -> Path:
        return self.root / "lab-build.json"


def ldflags() -> str:
    """-X flags that give the binaries their version, as Kubernetes' own build does.

    The vendor/-prefixed paths are the ones the binaries link (GOPATH mode); without them
    kubeadm reports v0.0.0 and asks for the wrong images.
    """
    flags = ["-s", "-w"]
    for pkg in ("component-base/version", "client-go/pkg/version"):
        p = f"k8s.io/kubernetes/vendor/k8s.io/{pkg}"
        flags += [
            f"-X {p}.gitVersion=v{VERSION}",
            f"-X {p}.gitMajor=1",  # every release vkp takes is 1.Y.Z
            f"-X {p}.gitMinor={k8s_minor(VERSION)}",
            f"-X {p}.gitTreeState=clean",
        ]
    return " ".join(flags)


# -- steps with logs ---------------------------------------------------------------------------


class _Steps:
    def __init__(self, logs: Path, log: Log) -> None:
        self.logs = logs
        self.log = log
        self.timings: dict[str, float] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
            what: str = "", timeout: float = STEP_TIMEOUT) -> None:  # fmt: skip
        path = self.logs / f"{name}.log"
        started = time.monotonic()
        self.log(f"kubernetes build: {what or name} ...")
        with open(path, "ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            try:
                proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, check=False, timeout=timeout)  # fmt: skip
                status = f"exit {proc.returncode}" if proc.returncode else ""
            except subprocess.TimeoutExpired:
                status = f"not finished after {timeout:.0f} s, stopped"
        took = time.monotonic() - started
        self.timings[name] = self.timings.get(name, 0.0) + took
        if status:
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            raise LabError(
                f"building Kubernetes v{VERSION} failed at step `{name}` ({status}):\n{tail}",
                hint=f"the whole log is {path}; fix the cause and run `vkp lab prepare` again "
                "(finished steps are cached)",
            )
        self.log(f"kubernetes build: {what or name} done ({took:.0f}s)")

    @contextmanager
    def timed(self, name: str, what: str) -> Iterator[None]:
        started = time.monotonic()
        self.log(f"kubernetes build: {what} ...")
        try:
            yield
        except LabError:
            raise
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise LabError(
                f"building Kubernetes v{VERSION} failed at step `{name}`: {exc}",
                hint=f"logs are in {self.logs}",
            ) from exc
        took = time.monotonic() - started
        self.timings[name] = self.timings.get(name, 0.0) + took
        self.log(f"kubernetes build: {what} done ({took:.0f}s)")


# -- the source ----------------------------------------------------------------------------------


def _apt(cache: Path) -> list[str]:
    return [
        "apt-get",
        "-q",
        "-o", f"Dir::Etc::SourceList={cache / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={cache / 'lists'}",
        "-o", f"Dir::Cache={cache / 'cache'}",
        # The download lands in the lab's cache, which the unprivileged _apt user cannot write.
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def fetch_source(cache: Path, steps: _Steps) -> tuple[Path, Path]:
    """(orig tarball, debian tarball) of bookworm's kubernetes source, fetched once."""
    apt_dir = cache / "apt"
    src_dir = cache / "source"
    found = _source_files(src_dir)
    if found:
        return found
    for d in (apt_dir / "lists" / "partial", apt_dir / "cache" / "archives" / "partial", src_dir):
        d.mkdir(parents=True, exist_ok=True)
    mirror = guest_image.apt_mirror(suite=SUITE)
    (apt_dir / "sources.list").write_text(f"deb-src {mirror} {SUITE} main\n")
    steps.run("apt-update", [*_apt(apt_dir), "update"], what=f"apt-get update (deb-src {mirror} {SUITE})")
    steps.run("apt-source", [*_apt(apt_dir), "source", "--download-only", SOURCE_PACKAGE], cwd=src_dir,
              what=f"fetching Debian's {SOURCE_PACKAGE} source package")  # fmt: skip
    found = _source_files(src_dir)
    if not found:
        raise LabError(
            f"Debian's {SUITE} {SOURCE_PACKAGE} source package is not Kubernetes v{VERSION} "
            f"(got {sorted(p.name for p in src_dir.iterdir())})",
            hint=f"the lab builds v{VERSION} from {SUITE}'s package; check the mirror {mirror}",
        )
    return found


def _source_files(src_dir: Path) -> tuple[Path, Path] | None:
    if not src_dir.is_dir():
        return None
    dscs = [p for p in src_dir.glob(f"{SOURCE_PACKAGE}_*.dsc") if SOURCE_VERSION_RE.search(p.name)]
    if len(dscs) != 1:
        return None
    origs = list(src_dir.glob(f"{SOURCE_PACKAGE}_*.orig.tar.gz"))
    debs = list(src_dir.glob(f"{SOURCE_PACKAGE}_*.debian.tar.xz"))
    return (origs[0], debs[0]) if len(origs) == 1 and len(debs) == 1 else None


def _unpack(orig: Path, debian: Path, gopath: Path, steps: _Steps, recipe: GoRecipe) -> Path:
    tree = gopath / "src" / "k8s.io" / "kubernetes"
    if tree.exists():
        shutil.rmtree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    scratch = gopath / "unpack"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    steps.run("unpack", ["tar", "-xzf", str(orig), "-C", str(scratch)], what="unpacking the source")
    (top,) = [p for p in scratch.iterdir() if p.is_dir()]
    top.rename(tree)
    steps.run("unpack-debian", ["tar", "-xJf", str(debian), "-C", str(scratch)])
    patches = scratch / "debian" / "patches"
    series = patches / "series"
    names = [ln.strip() for ln in series.read_text().splitlines()] if series.is_file() else []
    names = [n for n in names if n and not n.startswith("#")]
    script = 'for p in "$@"; do echo "== $p"; patch -p1 -i "$p" || exit 1; done'
    steps.run("debian-patches", ["sh", "-c", script, "sh", *(str(patches / n) for n in names)], cwd=tree,
              what=f"applying Debian's {len(names)} patches")  # fmt: skip
    shutil.rmtree(scratch)
    vendored = tree / "vendor/github.com/modern-go/reflect2"
    shutil.rmtree(vendored)
    shutil.copytree(recipe.reflect2_from, vendored)
    (vendored / "go.mod").unlink(missing_ok=True)  # GOPATH mode: a go.mod in vendor/ is noise
    return tree


def _go_env(gopath: Path, gocache: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Kubernetes 1.20 builds in GOPATH mode (hack/lib/init.sh); module mode wants go.mod updates.
    env.update(GOPATH=str(gopath), GO111MODULE="off", GOCACHE=str(gocache), GOFLAGS="", CGO_ENABLED="0")
    env.pop("GOROOT", None)
    return env


def build_binaries(cache: Path, steps: _Steps) -> Path:
    """The compiled commands and pause in cache/go-<hash>/bin, built if not cached."""
    recipe = GoRecipe()
    out = cache / f"go-{recipe.hash()}"
    bin_dir = out / "bin"
    if (out / "recipe.json").is_file():
        return bin_dir
    orig, debian = fetch_source(cache, steps)
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    gopath = work / "gopath"
    tree = _unpack(orig, debian, gopath, steps, recipe)
    env = _go_env(gopath, cache / "go-cache")
    # kube-apiserver needs the generated OpenAPI definitions, which the tarball does not carry.
    steps.run("gen-openapi", ["make", "gen_openapi"], cwd=tree, env=env,
              what="generating OpenAPI definitions")  # fmt: skip
    staging = work / "bin"
    staging.mkdir()
    for i, cmd in enumerate(recipe.commands, 1):
        steps.run(
            f"go-build-{cmd}",
            ["go", "build", "-trimpath", "-tags", recipe.tags, "-ldflags", ldflags(),
             "-o", str(staging / cmd), f"./cmd/{cmd}"],
            cwd=tree,
            env=env,
            what=f"go build {cmd} ({i}/{len(recipe.commands)})" + (", the longest" if i == 1 else ""),
        )  # fmt: skip
    steps.run("pause", ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION={PAUSE_VERSION}", "-o",
                        str(staging / "pause"), str(tree / "build/pause/linux/pause.c")],
              what=f"building pause {PAUSE_VERSION}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(bin_dir, ignore_errors=True)
    staging.rename(bin_dir)
    done = {**asdict(recipe), "timings": steps.timings}
    (out / "recipe.json").write_text(json.dumps(done, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # the tree is 1 GB; the Go cache keeps rebuilds warm
    return bin_dir


# -- images --------------------------------------------------------------------------------------


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects binary loads, as the dynamic loader resolves them here (ldd)."""
    res = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    libs = []
    for line in res.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _with_libraries(img: oci.Image, binaries: list[Path]) -> None:
    seen: set[str] = set()
    for b in binaries:
        for lib in shared_libraries(b):
            if str(lib) in seen:
                continue
            seen.add(str(lib))
            # The ELF interpreter and every library as real files: a symlink to a path the
            # image does not have fails with "no such file or directory" at exec.
            img.file(str(lib), lib.resolve(), 0o755)


def kube_proxy_image(bin_dir: Path) -> oci.Image:
    img = oci.Image(f"{IMAGE_REPOSITORY}/kube-proxy:v{VERSION}")
    img.file("/usr/local/bin/kube-proxy", bin_dir / "kube-proxy")
    img.file("/usr/sbin/xtables-legacy-multi", XTABLES_MULTI)
    for name in IPTABLES_NAMES:
        img.symlink(f"/usr/sbin/{name}", "xtables-legacy-multi")
    extensions = sorted(XTABLES_EXTENSIONS.glob("*.so"))
    for ext in extensions:
        img.file(str(XTABLES_EXTENSIONS / ext.name), ext, 0o644)
    _with_libraries(img, [XTABLES_MULTI, *extensions])
    img.directory("/run", 0o755)
    img.directory("/tmp", 0o1777)
    return img


def workload_image() -> oci.Image:
    img = oci.Image(WORKLOAD_IMAGE, cmd=["sh"])
    busybox = Path("/bin/busybox")
    img.file("/bin/busybox", busybox)
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    for applet in sorted(set(listed.split()) - {"busybox"}):
        img.symlink(f"/bin/{applet}", "busybox")
    img.directory("/tmp", 0o1777)
    img.directory("/www", 0o755)
    return img


def images(bin_dir: Path) -> list[oci.Image]:
    out = []
    for cmd in CONTROL_PLANE:
        img = oci.Image(f"{IMAGE_REPOSITORY}/{cmd}:v{VERSION}")
        img.file(f"/usr/local/bin/{cmd}", bin_dir / cmd)
        img.directory("/tmp", 0o1777)
        out.append(img)
    out.append(kube_proxy_image(bin_dir))
    out.append(oci.Image(f"{IMAGE_REPOSITORY}/pause:{PAUSE_VERSION}", entrypoint=["/pause"]))
    out[-1].file("/pause", bin_dir / "pause")
    out.append(workload_image())
    return out


def image_file_name(ref: str) -> str:
    name = ref.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.replace(":", "_")) + ".tar"


# -- CNI plugins ---------------------------------------------------------------------------------


def cni_plugins_version() -> str:
    """Upstream version of Debian's containernetworking-plugins (1.1.1+ds1-3 -> 1.1.1)."""
    res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    m = re.match(r"(?:\d+:)?(\d+\.\d+\.\d+)", res.stdout.strip())
    if res.returncode != 0 or m is None:
        raise LabError("cannot tell the version of Debian's containernetworking-plugins",
                       hint="apt-get install containernetworking-plugins")  # fmt: skip
    return m.group(1)


def write_cni_tarball(dest: Path, version: str) -> Path:
    """cni-plugins-linux-amd64-v{version}.tgz with ./NAME members, as upstream publishes it."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"cni-plugins-linux-amd64-v{version}.tgz"
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for plugin in sorted(CNI_PLUGIN_DIR.iterdir()):
            if plugin.is_file():
                info = tar.gettarinfo(str(plugin), arcname=f"./{plugin.name}")
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                with plugin.open("rb") as f:
                    tar.addfile(info, f)
    tmp.replace(path)
    return path


# -- assembly ------------------------------------------------------------------------------------


def _write_sum(path: Path) -> str:
    digest = sha256_file(path)
    # dl.k8s.io's .sha256 files hold the bare digest; sha256sum's format names the file too.
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def read_record(artifacts: Path) -> dict[str, object] | None:
    try:
        data = json.loads(Layout(artifacts).record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build(cache: Path, artifacts: Path, log: Log) -> dict[str, object]:
    """Build (or reuse) the lab's Kubernetes and lay it out in artifacts; return the record."""
    recipe = ArtifactRecipe(GoRecipe().hash())
    record = read_record(artifacts)
    if record is not None and record.get("recipe") == recipe.hash():
        return record
    cache.mkdir(parents=True, exist_ok=True)
    with guest_image.build_lock(cache / "build.lock"):
        record = read_record(artifacts)
        if record is not None and record.get("recipe") == recipe.hash():
            return record
        started = time.monotonic()
        steps = _Steps(cache / "logs" / time.strftime("%Y%m%dT%H%M%S"), log)
        log(f"building the lab's Kubernetes v{VERSION} from Debian's source (once; about 10 minutes cold)")
        bin_dir = build_binaries(cache, steps)
        record = _assemble(bin_dir, artifacts, recipe, steps)
        record["seconds"] = round(time.monotonic() - started, 1)
        Layout(artifacts).record.write_text(json.dumps(record, indent=2) + "\n")
        log(f"kubernetes build: artifacts ready in {artifacts} ({record['seconds']}s)")
        return record


def _assemble(bin_dir: Path, artifacts: Path, recipe: ArtifactRecipe, steps: _Steps) -> dict[str, object]:
    lay = Layout(artifacts)
    Layout(artifacts).record.unlink(missing_ok=True)  # not "built" until everything below is
    files: dict[str, str] = {}
    with steps.timed("binaries", "kubeadm, kubelet, kubectl with their .sha256"):
        lay.binaries.mkdir(parents=True, exist_ok=True)
        for name in NODE_BINARIES:
            dest = lay.binaries / name
            tmp = dest.with_name(name + ".part")
            shutil.copyfile(bin_dir / name, tmp)
            os.chmod(tmp, 0o755)
            tmp.replace(dest)
            files[str(dest.relative_to(artifacts))] = _write_sum(dest)
    refs = {}
    with steps.timed("images", "OCI image tarballs"):
        shutil.rmtree(lay.images, ignore_errors=True)
        lay.images.mkdir(parents=True)
        sums = []
        for img in images(bin_dir):
            path = lay.images / image_file_name(img.ref)
            oci.write(img, path)
            digest = sha256_file(path)
            sums.append(f"{digest}  {path.name}\n")
            files[str(path.relative_to(artifacts))] = digest
            refs[img.ref] = path.name
        (lay.images / "SHA256SUMS").write_text("".join(sums))
    cni_version = cni_plugins_version()
    with steps.timed("cni-plugins", f"CNI plugins v{cni_version} tarball"):
        tgz = write_cni_tarball(lay.cni_dir(cni_version), cni_version)
        files[str(tgz.relative_to(artifacts))] = _write_sum(tgz)
    return {
        "recipe": recipe.hash(),
        "version": VERSION,
        "image_repository": IMAGE_REPOSITORY,
        "images": refs,
        "workload_image": WORKLOAD_IMAGE,
        "cni_plugins_version": cni_version,
        "files": files,
        "timings": steps.timings,
        "bytes": sum((artifacts / f).stat().st_size for f in files),
    }
